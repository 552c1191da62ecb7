#pragma once
/// \file
/// arm64 host glue for the KVM HAL: `preferred_init` (KVM_ARM_PREFERRED_TARGET and the
/// feature capabilities), the `arm_vcpu_init`/`arm_vcpu_finalize` calls
/// `vcpu::aarch64::kvm_boot` makes through the HAL, and — when compiled for
/// arm64 — proof that the arch-neutral mirrors in include/arch/aarch64/abi.hpp
/// equal the kernel's `<asm/kvm.h>`.
///
/// The ioctls are in the one table (kvm/ioctls.hpp, `arm_*` entries); they are generic
/// `<linux/kvm.h>` codes, so this header compiles on every host; issuing them is only
/// meaningful on arm64 KVM.
///
/// ```
/// auto vm = sys.create_vm();                                  // kvm/system.hpp
/// auto init = kvm::aarch64::preferred_init(*vm, {.pmu_v3 = true});
/// auto cpu = vm->create_vcpu<arch::aarch64>(0);
/// cpu->init(aarch64::kvm_boot{*init, entry, dtb});
/// ```

#include <arch/aarch64/abi.hpp>
#include <arch/aarch64/init.hpp>
#include <kvm/exits_aarch64.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

#if defined(__aarch64__)
#include <asm/kvm.h>
#endif

namespace vcpu::kvm::aarch64 {


/// `KVM_ARM_PREFERRED_TARGET`, then the feature bits of `want` whose
/// capability the VM reports (`KVM_CAP_ARM_PMU_V3`, `KVM_CAP_ARM_SVE`,
/// `KVM_CAP_ARM_PTRAUTH_ADDRESS` and `_GENERIC`); power-off needs none.
/// PSCI 0.2 is required (`KVM_CAP_ARM_PSCI_0_2`, ENOTSUP without it).
template <class Sys>
[[nodiscard]] result<::vcpu::aarch64::vcpu_init> preferred_init(const basic_vm<Sys>& vm,
                                                                ::vcpu::aarch64::kvm_features want = {}) noexcept {
    namespace f = ::vcpu::aarch64::feature;
    ::vcpu::aarch64::vcpu_init init{};
    if (auto r = vm.ioctl(ioctls::vm::arm_preferred_target, &init); !r) return r.err();
    auto has = [&](long cap) -> result<bool> {
        auto r = vm.check_extension(cap);
        if (!r) return r.err();
        return *r > 0;
    };
    auto psci = has(KVM_CAP_ARM_PSCI_0_2);
    if (!psci) return psci.err();
    if (!*psci) return error{"KVM_CHECK_EXTENSION", ENOTSUP, "KVM_CAP_ARM_PSCI_0_2 is missing"};
    init.with(f::psci_0_2);
    if (want.power_off) init.with(f::power_off);
    if (want.pmu_v3) {
        auto c = has(KVM_CAP_ARM_PMU_V3);
        if (!c) return c.err();
        if (*c) init.with(f::pmu_v3);
    }
    if (want.sve) {
        auto c = has(KVM_CAP_ARM_SVE);
        if (!c) return c.err();
        if (*c) init.with(f::sve);
    }
    if (want.ptrauth) {
        auto a = has(KVM_CAP_ARM_PTRAUTH_ADDRESS);
        if (!a) return a.err();
        auto g = has(KVM_CAP_ARM_PTRAUTH_GENERIC);
        if (!g) return g.err();
        if (*a && *g) init.with(f::ptrauth_address).with(f::ptrauth_generic);
    }
    return init;
}

} // namespace vcpu::kvm::aarch64

namespace vcpu::kvm {

/// `KVM_ARM_VCPU_INIT` on a KVM HAL vCPU (the customisation point
/// `vcpu::aarch64::kvm_boot` calls; found by argument-dependent lookup).
template <class Sys, class Arch>
[[nodiscard]] result<void> arm_vcpu_init(hal_vcpu<Sys, Arch>& v, const ::vcpu::aarch64::vcpu_init& i) noexcept {
    auto copy = i; // the kernel only reads it
    auto r = v.ioctl(ioctls::vcpu::arm_vcpu_init, &copy);
    if (!r) return r.err();
    return ok();
}

/// `KVM_ARM_VCPU_FINALIZE(feature)` (only `KVM_ARM_VCPU_SVE` exists).
template <class Sys, class Arch>
[[nodiscard]] result<void> arm_vcpu_finalize(hal_vcpu<Sys, Arch>& v, std::uint32_t feature) noexcept {
    int what = static_cast<int>(feature);
    auto r = v.ioctl(ioctls::vcpu::arm_vcpu_finalize, &what);
    if (!r) return r.err();
    return ok();
}

} // namespace vcpu::kvm

#if defined(__aarch64__)
// On arm64, the restated ABI must be the kernel's (arm64 <asm/kvm.h>, <asm/ptrace.h>).
namespace vcpu::kvm::aarch64_layout {
namespace a = ::vcpu::aarch64;
static_assert(a::reg_arm64 == KVM_REG_ARM64);
static_assert(a::reg_size_u32 == KVM_REG_SIZE_U32 && a::reg_size_u64 == KVM_REG_SIZE_U64 &&
              a::reg_size_u128 == KVM_REG_SIZE_U128 && a::reg_size_shift == KVM_REG_SIZE_SHIFT);
static_assert(a::reg_coproc_shift == KVM_REG_ARM_COPROC_SHIFT);
static_assert(a::reg_core == KVM_REG_ARM_CORE && a::reg_sysreg == KVM_REG_ARM64_SYSREG &&
              a::reg_fw == KVM_REG_ARM_FW);
static_assert(a::sysreg_op0_shift == KVM_REG_ARM64_SYSREG_OP0_SHIFT &&
              a::sysreg_op1_shift == KVM_REG_ARM64_SYSREG_OP1_SHIFT &&
              a::sysreg_crn_shift == KVM_REG_ARM64_SYSREG_CRN_SHIFT &&
              a::sysreg_crm_shift == KVM_REG_ARM64_SYSREG_CRM_SHIFT &&
              a::sysreg_op2_shift == KVM_REG_ARM64_SYSREG_OP2_SHIFT);
static_assert(a::nr_spsr == KVM_NR_SPSR);
static_assert(sizeof(a::core_regs_layout) == sizeof(::kvm_regs));
static_assert(offsetof(a::core_regs_layout, regs) == offsetof(::kvm_regs, regs.regs));
static_assert(offsetof(a::core_regs_layout, sp) == offsetof(::kvm_regs, regs.sp));
static_assert(offsetof(a::core_regs_layout, pc) == offsetof(::kvm_regs, regs.pc));
static_assert(offsetof(a::core_regs_layout, pstate) == offsetof(::kvm_regs, regs.pstate));
static_assert(offsetof(a::core_regs_layout, sp_el1) == offsetof(::kvm_regs, sp_el1));
static_assert(offsetof(a::core_regs_layout, elr_el1) == offsetof(::kvm_regs, elr_el1));
static_assert(offsetof(a::core_regs_layout, spsr) == offsetof(::kvm_regs, spsr));
static_assert(offsetof(a::core_regs_layout, fp_regs) == offsetof(::kvm_regs, fp_regs));
static_assert(offsetof(a::fpsimd_layout, fpsr) == offsetof(::user_fpsimd_state, fpsr));
static_assert(offsetof(a::fpsimd_layout, fpcr) == offsetof(::user_fpsimd_state, fpcr));
static_assert(sizeof(a::vcpu_init) == sizeof(::kvm_vcpu_init));
static_assert(ioctls::vm::arm_preferred_target.code == KVM_ARM_PREFERRED_TARGET);
static_assert(ioctls::vcpu::arm_vcpu_init.code == KVM_ARM_VCPU_INIT);
static_assert(sizeof(a::debug_exit_layout) == sizeof(::kvm_debug_exit_arch));
static_assert(a::debug_hsr_high_valid == KVM_DEBUG_ARCH_HSR_HIGH_VALID);
// The ids the register file builds equal the kernel macros'.
#define VCPU_ARM_CORE(field) (KVM_REG_ARM64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(field))
static_assert(a::xregs[0].id == (VCPU_ARM_CORE(regs.regs[0]) | KVM_REG_SIZE_U64));
static_assert(a::xregs[30].id == (VCPU_ARM_CORE(regs.regs[30]) | KVM_REG_SIZE_U64));
static_assert(a::sp.id == (VCPU_ARM_CORE(regs.sp) | KVM_REG_SIZE_U64));
static_assert(a::pc.id == (VCPU_ARM_CORE(regs.pc) | KVM_REG_SIZE_U64));
static_assert(a::pstate.id == (VCPU_ARM_CORE(regs.pstate) | KVM_REG_SIZE_U64));
static_assert(a::sp_el1.id == (VCPU_ARM_CORE(sp_el1) | KVM_REG_SIZE_U64));
static_assert(a::elr_el1.id == (VCPU_ARM_CORE(elr_el1) | KVM_REG_SIZE_U64));
static_assert(a::spsr_el1.id == (VCPU_ARM_CORE(spsr[KVM_SPSR_EL1]) | KVM_REG_SIZE_U64));
static_assert(a::vregs[0].id == (VCPU_ARM_CORE(fp_regs.vregs[0]) | KVM_REG_SIZE_U128));
static_assert(a::vregs[31].id == (VCPU_ARM_CORE(fp_regs.vregs[31]) | KVM_REG_SIZE_U128));
static_assert(a::fpsr.id == (VCPU_ARM_CORE(fp_regs.fpsr) | KVM_REG_SIZE_U32));
static_assert(a::fpcr.id == (VCPU_ARM_CORE(fp_regs.fpcr) | KVM_REG_SIZE_U32));
#undef VCPU_ARM_CORE
static_assert(a::sctlr_el1.id == ARM64_SYS_REG(3, 0, 1, 0, 0));
static_assert(a::mpidr_el1.id == ARM64_SYS_REG(3, 0, 0, 0, 5));
static_assert(a::timer_ctl.id == KVM_REG_ARM_TIMER_CTL);
static_assert(a::timer_cnt.id == KVM_REG_ARM_TIMER_CNT);
static_assert(a::timer_cval.id == KVM_REG_ARM_TIMER_CVAL);
static_assert(a::psci_version_reg.id == KVM_REG_ARM_PSCI_VERSION);
static_assert(a::feature::power_off == KVM_ARM_VCPU_POWER_OFF &&
              a::feature::el1_32bit == KVM_ARM_VCPU_EL1_32BIT &&
              a::feature::psci_0_2 == KVM_ARM_VCPU_PSCI_0_2 &&
              a::feature::pmu_v3 == KVM_ARM_VCPU_PMU_V3 && a::feature::sve == KVM_ARM_VCPU_SVE &&
              a::feature::ptrauth_address == KVM_ARM_VCPU_PTRAUTH_ADDRESS &&
              a::feature::ptrauth_generic == KVM_ARM_VCPU_PTRAUTH_GENERIC);
} // namespace vcpu::kvm::aarch64_layout
#endif
