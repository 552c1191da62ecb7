#pragma once
/// \file
/// `vcpu_state_of<Arch>`: the type that holds one KVM vCPU's whole state for architecture `Arch`,
/// so code generic over the architecture (VM snapshots) can name it:
///
/// | `Arch` | state type | header |
/// | --- | --- | --- |
/// | `arch::x86_64` | `x86_64_vcpu_state` (x86-64 hosts only) | kvm/x86_64_state.hpp |
/// | `arch::aarch64` | `aarch64_vcpu_state` | kvm/aarch64_state.hpp |
/// | `arch::riscv64` | `riscv64_vcpu_state` | kvm/riscv64_state.hpp |
///
/// Every state type has the same shape: `static result<S> save(hal_vcpu<Sys, Arch>&)`,
/// `result<void> load(hal_vcpu<Sys, Arch>&) const`, `std::vector<std::byte> serialize() const`,
/// `static result<S> deserialize(std::span<const std::byte>)`; and `save_state(cpu)` /
/// `load_state(cpu, s)` take a `basic_vcpu`.

#include <arch/aarch64/arch.hpp>
#include <arch/riscv64/arch.hpp>
#include <kvm/aarch64_state.hpp>
#include <kvm/riscv64_state.hpp>
#include <kvm/x86_64_state.hpp>
#include <vcpu/config.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>
#endif

namespace vcpu::kvm {

/// The vCPU state type of `Arch` (see the file comment); undefined for an arch without one.
template <class Arch>
struct vcpu_state_of;

/// arm64: every `KVM_GET_REG_LIST` register and the MP state.
template <>
struct vcpu_state_of<::vcpu::arch::aarch64> {
    using type = aarch64_vcpu_state; ///< the state type
};
/// riscv64: every `KVM_GET_REG_LIST` register and the MP state.
template <>
struct vcpu_state_of<::vcpu::arch::riscv64> {
    using type = riscv64_vcpu_state; ///< the state type
};
#if defined(__x86_64__)
/// x86-64 (x86-64 hosts): regs, sregs, XSAVE, XCRs, LAPIC, MSRs, events, debug registers, TSC.
template <>
struct vcpu_state_of<::vcpu::arch::x86_64> {
    using type = x86_64_vcpu_state; ///< the state type
};
#endif

/// `typename vcpu_state_of<Arch>::type`.
template <class Arch>
using vcpu_state_t = typename vcpu_state_of<Arch>::type;

} // namespace vcpu::kvm
