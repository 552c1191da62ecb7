#pragma once
/// \file
/// AArch64 boot state for KVM (`CpuInitFor` model `kvm_boot`), as a minimal
/// KVM VMM (kvmtool, QEMU) does it: `KVM_ARM_PREFERRED_TARGET` (a VM
/// ioctl, done beforehand by `vcpu::kvm::aarch64::preferred_init`), then
/// `KVM_ARM_VCPU_INIT` with PSCI 0.2 and the optional features whose
/// capability is present (KVM API §4.82), `KVM_ARM_VCPU_FINALIZE` for SVE
/// (§4.120), then the Linux arm64 boot protocol's registers
/// (Documentation/arch/arm64/booting.rst §4 "Call the kernel image"):
/// PC = entry, X0 = DTB address, X1-X3 = 0, PSTATE = EL1h with DAIF masked.
///
/// The HAL calls are named concept steps (`InitsArmVcpu`,
/// `FinalizesArmVcpu`): a HAL vCPU either has members
/// `arm_vcpu_init(const vcpu_init&)` / `arm_vcpu_finalize(std::uint32_t)`
/// (the mock HAL records them), or free functions of those names found by
/// argument-dependent lookup (the KVM HAL's, in include/kvm/aarch64.hpp).

#include <arch/aarch64/abi.hpp>
#include <arch/aarch64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <concepts>
#include <cstdint>
#include <type_traits>

namespace vcpu::aarch64 {

/// Optional vCPU features a VMM asks for; each is used only when KVM reports
/// its capability (see `vcpu::kvm::aarch64::preferred_init`).
struct kvm_features {
    bool power_off = false;       ///< secondary vCPU: start OFF until PSCI CPU_ON
    bool pmu_v3 = false;          ///< KVM_CAP_ARM_PMU_V3
    bool sve = false;             ///< KVM_CAP_ARM_SVE
    bool ptrauth = false;         ///< KVM_CAP_ARM_PTRAUTH_ADDRESS + _GENERIC
};

/// Named step: the HAL vCPU initialises an arm64 vCPU with a target and
/// features (KVM: `KVM_ARM_VCPU_INIT`), as a member `h.arm_vcpu_init(init)`
/// or a free function `arm_vcpu_init(h, init)` found by ADL.
template <class H>
concept InitsArmVcpu = requires(H& h, const vcpu_init& i) {
    { h.arm_vcpu_init(i) } noexcept -> std::same_as<result<void>>;
} || requires(H& h, const vcpu_init& i) {
    { arm_vcpu_init(h, i) } noexcept -> std::same_as<result<void>>;
};

/// Named step: the HAL vCPU finalizes a configurable feature after init
/// (KVM: `KVM_ARM_VCPU_FINALIZE`, needed for SVE), as a member or by ADL.
template <class H>
concept FinalizesArmVcpu = requires(H& h, std::uint32_t f) {
    { h.arm_vcpu_finalize(f) } noexcept -> std::same_as<result<void>>;
} || requires(H& h, std::uint32_t f) {
    { arm_vcpu_finalize(h, f) } noexcept -> std::same_as<result<void>>;
};

/// **ArmVcpuHal** — the arm64 HAL operations beyond `HalFor` that
/// `kvm_boot` calls on `cpu.hal()`; each is reported by name when missing.
template <class H>
concept ArmVcpuHal = InitsArmVcpu<H> && FinalizesArmVcpu<H>;

namespace detail {
template <class H>
[[nodiscard]] result<void> call_vcpu_init(H& h, const vcpu_init& i) noexcept {
    if constexpr (requires { h.arm_vcpu_init(i); }) return h.arm_vcpu_init(i);
    else return arm_vcpu_init(h, i); // found by ADL in the HAL's namespace
}
template <class H>
[[nodiscard]] result<void> call_vcpu_finalize(H& h, std::uint32_t f) noexcept {
    if constexpr (requires { h.arm_vcpu_finalize(f); }) return h.arm_vcpu_finalize(f);
    else return arm_vcpu_finalize(h, f);
}
} // namespace detail

/// Boots a KVM/arm64 vCPU: `KVM_ARM_VCPU_INIT` with `init` (target and
/// features; PSCI 0.2 is always added), `KVM_ARM_VCPU_FINALIZE(SVE)` when
/// SVE is requested, then PC, X0-X3 and PSTATE. Models `CpuInitFor`.
struct kvm_boot {
    vcpu_init init{};            ///< from `KVM_ARM_PREFERRED_TARGET` (+ features)
    std::uint64_t entry = 0;     ///< guest physical entry point (PC)
    std::uint64_t dtb = 0;       ///< X0: device tree blob address
    std::uint64_t pstate = pstate_bits::el1h_daif_masked;

    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        using hal_vcpu = std::remove_cvref_t<decltype(cpu.hal())>;
        static_assert(InitsArmVcpu<hal_vcpu>,
                      "aarch64::kvm_boot: the HAL vCPU does not model InitsArmVcpu: it needs "
                      "`arm_vcpu_init(const vcpu_init&) noexcept -> result<void>` (member or ADL)");
        static_assert(FinalizesArmVcpu<hal_vcpu>,
                      "aarch64::kvm_boot: the HAL vCPU does not model FinalizesArmVcpu: it needs "
                      "`arm_vcpu_finalize(std::uint32_t) noexcept -> result<void>` (member or ADL)");
        vcpu_init i = init;
        i.with(feature::psci_0_2);
        auto& h = cpu.hal();
        if (auto r = detail::call_vcpu_init(h, i); !r) return r;
        if (i.has(feature::sve))
            if (auto r = detail::call_vcpu_finalize(h, feature::sve); !r) return r;
        if (i.has(feature::power_off)) return ok(); // CPU_ON sets PC and context
        if (auto r = cpu.set(pc, entry); !r) return r;
        if (auto r = cpu.set(x0, dtb); !r) return r;
        for (const auto& x : {x1, x2, x3})
            if (auto r = cpu.set(x, 0); !r) return r;
        return cpu.set(aarch64::pstate, pstate);
    }
};

} // namespace vcpu::aarch64
