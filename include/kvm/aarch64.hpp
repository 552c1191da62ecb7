#pragma once
/// \file
/// arm64 host glue for the KVM HAL: `preferred_init` (KVM_ARM_PREFERRED_TARGET and the
/// feature capabilities), `required_init` (typed `vcpu_features`, an error for a missing
/// capability), the SVE vector lengths (`get/set_sve_vector_lengths`) and `init_with_features`
/// (init, vector lengths, finalize), the `arm_vcpu_init`/`arm_vcpu_finalize` calls
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

/// Typed vCPU features of `KVM_ARM_VCPU_INIT` (KVM API 4.82) that `required_init` requests only
/// when the host has their capability, and refuses clearly otherwise.
struct vcpu_features {
    bool power_off = false; ///< start powered off (a secondary vCPU waiting for PSCI CPU_ON); needs no capability
    bool pmu_v3 = false;    ///< `KVM_ARM_VCPU_PMU_V3` (KVM_CAP_ARM_PMU_V3): the PMUv3 registers
    bool sve = false;       ///< `KVM_ARM_VCPU_SVE` (KVM_CAP_ARM_SVE): Z/P/FFR; needs `KVM_ARM_VCPU_FINALIZE`
    /// `KVM_ARM_VCPU_PTRAUTH_ADDRESS` + `_GENERIC` (both capabilities; KVM API 4.82: "both or
    /// neither"): the pointer-authentication keys.
    bool ptrauth = false;
};

/// `KVM_ARM_PREFERRED_TARGET` plus PSCI 0.2 and every feature of `want`. Unlike `preferred_init`
/// (which leaves out what the host lacks), a feature whose capability the VM does not report is an
/// error: "KVM_CHECK_EXTENSION" ENOTSUP with the capability number and a detail naming it.
template <class Sys>
[[nodiscard]] result<::vcpu::aarch64::vcpu_init> required_init(const basic_vm<Sys>& vm, vcpu_features want) noexcept {
    namespace f = ::vcpu::aarch64::feature;
    auto init = preferred_init(vm, {.power_off = want.power_off});
    if (!init) return init.err();
    auto need = [&](long cap, const char* missing) -> result<void> {
        auto r = vm.check_extension(cap);
        if (!r) return r.err();
        if (*r <= 0) return error{"KVM_CHECK_EXTENSION", ENOTSUP, missing}.with("cap", cap);
        return ok();
    };
    if (want.pmu_v3) {
        VCPU_TRY_VOID(need(KVM_CAP_ARM_PMU_V3, "PMU v3 requested, the host lacks KVM_CAP_ARM_PMU_V3"));
        init->with(f::pmu_v3);
    }
    if (want.sve) {
        VCPU_TRY_VOID(need(KVM_CAP_ARM_SVE, "SVE requested, the host lacks KVM_CAP_ARM_SVE"));
        init->with(f::sve);
    }
    if (want.ptrauth) {
        VCPU_TRY_VOID(need(KVM_CAP_ARM_PTRAUTH_ADDRESS, "PtrAuth requested, the host lacks KVM_CAP_ARM_PTRAUTH_ADDRESS"));
        VCPU_TRY_VOID(need(KVM_CAP_ARM_PTRAUTH_GENERIC, "PtrAuth requested, the host lacks KVM_CAP_ARM_PTRAUTH_GENERIC"));
        init->with(f::ptrauth_address).with(f::ptrauth_generic);
    }
    return init;
}

/// The SVE vector lengths of a vCPU, as `KVM_REG_ARM64_SVE_VLS` holds them (KVM API 4.68): 512
/// bits, bit `vq - 1` set when the vector length `vq * 128` bits is enabled (vq 1..512).
struct sve_vector_lengths {
    std::uint64_t words[8] = {}; ///< the register's bits, word 0 first

    /// True when `vq` (1..512) is in the set.
    [[nodiscard]] constexpr bool has(unsigned vq) const noexcept {
        return vq >= 1 && vq <= 512 && ((words[(vq - 1) / 64] >> ((vq - 1) % 64)) & 1) != 0;
    }
    /// Adds `vq` (1..512; others are ignored).
    constexpr sve_vector_lengths& with(unsigned vq) noexcept {
        if (vq >= 1 && vq <= 512) words[(vq - 1) / 64] |= std::uint64_t{1} << ((vq - 1) % 64);
        return *this;
    }
    /// The largest `vq` in the set (0 when empty).
    [[nodiscard]] constexpr unsigned max_vq() const noexcept {
        for (unsigned vq = 512; vq >= 1; --vq)
            if (has(vq)) return vq;
        return 0;
    }
    /// Equal sets.
    friend constexpr bool operator==(const sve_vector_lengths&, const sve_vector_lengths&) = default;
};
static_assert(sizeof(sve_vector_lengths) == 64);

/// `KVM_REG_ARM64_SVE_VLS`: the id of the vector-length set (arm64 `<asm/kvm.h>`).
inline constexpr std::uint64_t sve_vls_reg = ::vcpu::aarch64::reg_arm64 | 0x0060000000000000ULL |
                                             (std::uint64_t{0x0015} << ::vcpu::aarch64::reg_coproc_shift) | 0xffff;

} // namespace vcpu::kvm::aarch64

namespace vcpu::kvm {

/// The SVE vector lengths of `v` (`KVM_GET_ONE_REG` of `KVM_REG_ARM64_SVE_VLS`): after
/// `KVM_ARM_VCPU_INIT` with SVE, the host's set until changed. Errors: "KVM_GET_ONE_REG" (ENOENT:
/// the vCPU has no SVE).
template <class Sys, class Arch>
[[nodiscard]] result<aarch64::sve_vector_lengths> get_sve_vector_lengths(hal_vcpu<Sys, Arch>& v) noexcept {
    aarch64::sve_vector_lengths l;
    auto r = v.get_one_reg(aarch64::sve_vls_reg, std::as_writable_bytes(std::span(l.words)));
    if (!r) return r.err();
    return l;
}

/// Restricts the SVE vector lengths of `v` to `l` (a subset of the host's), between
/// `KVM_ARM_VCPU_INIT` and `arm_vcpu_finalize(v, KVM_ARM_VCPU_SVE)` (KVM API 4.68
/// "KVM_REG_ARM64_SVE_VLS"). Errors: "KVM_SET_ONE_REG" with EPERM "after finalize" or EINVAL "not
/// a set the host supports", the vCPU id and the set's largest vq.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_sve_vector_lengths(hal_vcpu<Sys, Arch>& v, const aarch64::sve_vector_lengths& l) noexcept {
    auto r = v.set_one_reg(aarch64::sve_vls_reg, std::as_bytes(std::span(l.words)));
    if (!r)
        return error{r.err().op, r.err().code,
                     r.err().code == EPERM ? "SVE vector lengths can only change before KVM_ARM_VCPU_FINALIZE"
                                           : "SVE vector lengths refused (not a set the host supports?)"}
            .with("vcpu_id", v.id())
            .with("max_vq", l.max_vq());
    return ok();
}


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

/// `KVM_ARM_VCPU_INIT` with `init`, then, when it requests SVE, the vector lengths `vls` (when
/// given) and `KVM_ARM_VCPU_FINALIZE(KVM_ARM_VCPU_SVE)` (KVM API 4.82, 4.120): the order KVM
/// requires. The features' registers (PMU, SVE Z/P/FFR, PtrAuth keys) are then in
/// `KVM_GET_REG_LIST`. Errors: the failing call's.
template <class Sys, class Arch>
[[nodiscard]] result<void> init_with_features(hal_vcpu<Sys, Arch>& v, const ::vcpu::aarch64::vcpu_init& init,
                                              const aarch64::sve_vector_lengths* vls = nullptr) noexcept {
    VCPU_TRY_VOID(arm_vcpu_init(v, init));
    if (init.has(::vcpu::aarch64::feature::sve)) {
        if (vls != nullptr) VCPU_TRY_VOID(set_sve_vector_lengths(v, *vls));
        VCPU_TRY_VOID(arm_vcpu_finalize(v, ::vcpu::aarch64::feature::sve));
    }
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
static_assert(::vcpu::kvm::aarch64::sve_vls_reg == KVM_REG_ARM64_SVE_VLS);
static_assert(a::feature::power_off == KVM_ARM_VCPU_POWER_OFF &&
              a::feature::el1_32bit == KVM_ARM_VCPU_EL1_32BIT &&
              a::feature::psci_0_2 == KVM_ARM_VCPU_PSCI_0_2 &&
              a::feature::pmu_v3 == KVM_ARM_VCPU_PMU_V3 && a::feature::sve == KVM_ARM_VCPU_SVE &&
              a::feature::ptrauth_address == KVM_ARM_VCPU_PTRAUTH_ADDRESS &&
              a::feature::ptrauth_generic == KVM_ARM_VCPU_PTRAUTH_GENERIC);
} // namespace vcpu::kvm::aarch64_layout
#endif
