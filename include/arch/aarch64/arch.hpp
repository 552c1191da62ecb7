#pragma once
/// \file
/// `vcpu::arch::aarch64`: the AArch64 architecture policy — register file
/// over ONE_REG ids, exit decoders for `kvm_run` and for EL2 syndromes, and
/// boot states — for `basic_vcpu<arch::aarch64, Hal>`.

#include <arch/aarch64/abi.hpp>
#include <arch/aarch64/exits.hpp>
#include <arch/aarch64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/meta.hpp>

#include <string_view>
#include <utility>

namespace vcpu::arch {

/// The AArch64 architecture (Armv8-A, A64 guests) as a stateless policy.
/// Models `RegisterFile`, `ExitDecoder<aarch64, kvm::run_view>` (with kvm/exits.hpp) and
/// `ExitDecoder<aarch64, vcpu::aarch64::el2_syndrome>`.
struct aarch64 {
    /// The architecture's name (for messages and traces).
    static constexpr std::string_view name = "aarch64";

    /// KVM/arm64 moves registers one at a time: no blocks, no keyed banks.
    using register_blocks = type_list<>;
    /// No keyed banks.
    using keyed_banks = type_list<>;
    /// Every register is reached by its ONE_REG id.
    static constexpr bool uses_one_reg = true;

    /// Every named register descriptor (a tuple), for dumps.
    static constexpr const auto& registers = ::vcpu::aarch64::all_registers;
    /// X0-X30, reachable through `gpr(i)`.
    static constexpr unsigned gpr_count = 31;
    /// X`i` (ESR_EL2 SRT/Rt numbering). Precondition: i < 31 (31 is XZR/SP,
    /// which decoders handle themselves); larger values are clamped to X30.
    [[nodiscard]] static constexpr auto gpr(unsigned i) noexcept {
        return ::vcpu::aarch64::xregs[i < 31 ? i : 30];
    }
    /// The program counter: PC.
    static constexpr auto pc = ::vcpu::aarch64::pc;

    /// Every exit type the AArch64 decoders produce (`vcpu::aarch64::exit_types`; docs/exits.md).
    using exit_types = ::vcpu::aarch64::exit_types;
};

} // namespace vcpu::arch

/// A bare-metal EL2 guest exit (ESR_EL2 + FAR_EL2 + HPFAR_EL2 + GPRs) decodes through `aarch64::decode`.
template <>
struct vcpu::exit_decoder<vcpu::arch::aarch64, vcpu::aarch64::el2_syndrome> {
    /// Decodes `r` with `aarch64::decode`, handing one typed exit to `visit`.
    template <class Visitor>
    [[gnu::always_inline]] static void decode(const aarch64::el2_syndrome& r, Visitor&& visit) noexcept {
        aarch64::decode(r, std::forward<Visitor>(visit));
    }
};
