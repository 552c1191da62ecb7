#pragma once
/// \file
/// `aarch64_vcpu_state`: the whole state of one arm64 KVM vCPU — every register
/// `KVM_GET_REG_LIST` reports and the MP state — saved, loaded and serialized by the generic
/// `basic_reg_list_state` (kvm/reg_list_state.hpp) with the arm64 restore rules below.
/// docs/state.md, "AArch64 and RISC-V".
///
/// ```
/// auto st = vcpu::kvm::save_state(cpu);                  // complete_pending_io, then every register
/// auto blob = st->serialize();                           // "vcpua64s", version 1, hashed
/// auto back = vcpu::kvm::aarch64_vcpu_state::deserialize(blob);
/// auto ok = vcpu::kvm::load_state(other_cpu, *back);     // vCPU initialised with the same features
/// ```
///
/// The ids are restated from arm64 `<asm/kvm.h>` (checked against it when compiled for arm64),
/// so this header compiles on every host. State-transfer path: allocates.

#include <arch/aarch64/abi.hpp>
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/registers.hpp>
#include <kvm/aarch64.hpp>
#include <kvm/reg_list_state.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstdint>

#if defined(__aarch64__)
#include <asm/kvm.h>
#endif

namespace vcpu::kvm {

/// arm64 ONE_REG id classes the restore rules look at (arm64 `<asm/kvm.h>`).
namespace aarch64_ids {
/// `KVM_REG_ARM_COPROC_MASK`: the register class of an arm64 id.
inline constexpr std::uint64_t coproc_mask = 0x000000000fff0000ULL;
/// @{
/// Register classes: `KVM_REG_ARM_DEMUX` (CCSIDR by cache level), `KVM_REG_ARM64_SYSREG`,
/// `KVM_REG_ARM_FW` (PSCI version, SMCCC workaround levels), `KVM_REG_ARM64_SVE` (Z, P, FFR and
/// the vector-length set) and `KVM_REG_ARM_FW_FEAT_BMAP` (the hypercall services the guest may
/// use, Linux >= 6.0).
inline constexpr std::uint64_t demux = std::uint64_t{0x0011} << 16, sysreg = std::uint64_t{0x0013} << 16,
                               fw = std::uint64_t{0x0014} << 16, sve = std::uint64_t{0x0015} << 16,
                               fw_feat_bmap = std::uint64_t{0x0016} << 16;
/// @}
/// `KVM_REG_SIZE_U512`.
inline constexpr std::uint64_t size_u512 = 0x0060000000000000ULL;
/// `KVM_REG_ARM64_SVE_VLS`: the set of SVE vector lengths (512 bits; bit vq-1 = VL vq*128 bits).
inline constexpr std::uint64_t sve_vls = ::vcpu::aarch64::reg_arm64 | sve | size_u512 | 0xffff;
/// The `ARM64_SYS_REG(op0, op1, crn, crm, op2)` id (64-bit).
[[nodiscard]] constexpr std::uint64_t sys_reg(unsigned op0, unsigned op1, unsigned crn, unsigned crm,
                                              unsigned op2) noexcept {
    return ::vcpu::aarch64::reg_arm64 | ::vcpu::aarch64::reg_size_u64 | sysreg |
           (std::uint64_t{op0} << 14) | (std::uint64_t{op1} << 11) | (std::uint64_t{crn} << 7) |
           (std::uint64_t{crm} << 3) | op2;
}
/// @{
/// The virtual timer as KVM exposes it: `KVM_REG_ARM_TIMER_CTL` (CNTV_CTL_EL0),
/// `KVM_REG_ARM_TIMER_CNT` (the guest's virtual count; its encoding is CNTV_CVAL's — a
/// historical swap the UAPI keeps) and `KVM_REG_ARM_TIMER_CVAL` (encoded as CNTVCT).
inline constexpr std::uint64_t timer_ctl = sys_reg(3, 3, 14, 3, 1), timer_cnt = sys_reg(3, 3, 14, 3, 2),
                               timer_cval = sys_reg(3, 3, 14, 0, 2);
/// @}
/// @{
/// The physical timer (`KVM_REG_ARM_PTIMER_CTL`, `_CNT`, `_CVAL`), listed by newer kernels.
inline constexpr std::uint64_t ptimer_ctl = sys_reg(3, 3, 14, 2, 1), ptimer_cnt = sys_reg(3, 3, 14, 0, 1),
                               ptimer_cval = sys_reg(3, 3, 14, 2, 2);
/// @}
static_assert(timer_ctl == ::vcpu::aarch64::timer_ctl.id && timer_cnt == ::vcpu::aarch64::timer_cnt.id &&
              timer_cval == ::vcpu::aarch64::timer_cval.id);
} // namespace aarch64_ids

/// The arm64 restore rules of `basic_reg_list_state` (KVM API 4.68 "KVM_SET_ONE_REG" and 4.82
/// "KVM_ARM_VCPU_INIT"; Documentation/virt/kvm/arm/hypercalls.rst; measured on Linux 6.1 in the
/// emulated machine, tests/guest/xarch_state.cpp):
///
/// | phase | registers | how | why |
/// | --- | --- | --- | --- |
/// | 0 | `KVM_REG_ARM_FW*` (PSCI version, SMCCC workarounds, hypercall bitmaps), `KVM_REG_ARM64_SVE_VLS` | write if differs | firmware interface and vector lengths shape what the other registers mean; the bitmaps are refused (EBUSY) once the VM ran, VLS (EPERM) once the vCPU is finalized (hypercalls.rst; API 4.68 "KVM_REG_ARM64_SVE_VLS") |
/// | 1 | ID space: system registers with op0 = 3, CRn = 0 (MIDR, MPIDR, ID_AA64*, CTR_EL0, CLIDR...), `KVM_REG_ARM_DEMUX` (CCSIDR) | write if differs | KVM accepts only values the host supports (invariant ones: only their own value), and the feature registers must be in place before the registers they gate |
/// | 2 | everything else: core (X, SP, PC, PSTATE, V, FPSR/FPCR), EL1 system registers, SVE Z/P/FFR, PMU | write | |
/// | 3, 4, 5 | timer count (`TIMER_CNT`, `PTIMER_CNT`), then compare value (`*_CVAL`), then control (`*_CTL`) | write | the count sets the guest's counter offset the compare value is measured against; the control (enable, mask) comes last, so an enabled timer is never compared with a count or compare value from the fresh vCPU — a timer pending at save is pending after load, and one armed ahead fires after the same remaining ticks |
struct aarch64_state_rules {
    /// "vcpua64s".
    static constexpr std::array<char, 8> magic{'v', 'c', 'p', 'u', 'a', '6', '4', 's'};
    /// `KVM_REG_ARM64`.
    static constexpr std::uint64_t arch_bits = ::vcpu::aarch64::reg_arm64;
    /// Op of the errors `load` makes itself.
    static constexpr const char* load_op = "aarch64_vcpu_state::load";
    /// Op of the errors `deserialize` makes.
    static constexpr const char* deserialize_op = "aarch64_vcpu_state::deserialize";

    /// The phase and write rule of register `id` (table above).
    [[nodiscard]] static reg_rule rule(std::uint64_t id) noexcept {
        namespace ids = aarch64_ids;
        const std::uint64_t cls = id & ids::coproc_mask;
        if (cls == ids::fw || cls == ids::fw_feat_bmap || id == ids::sve_vls) return {0, reg_restore::write_if_differs};
        if (cls == ids::demux) return {1, reg_restore::write_if_differs};
        if (cls == ids::sysreg) {
            if (id == ids::timer_cnt || id == ids::ptimer_cnt) return {3, reg_restore::write};
            if (id == ids::timer_cval || id == ids::ptimer_cval) return {4, reg_restore::write};
            if (id == ids::timer_ctl || id == ids::ptimer_ctl) return {5, reg_restore::write};
            const unsigned op0 = (id >> 14) & 3, crn = (id >> 7) & 0xf;
            if (op0 == 3 && crn == 0) return {1, reg_restore::write_if_differs};
        }
        return {2, reg_restore::write};
    }
};
static_assert(RegListRules<aarch64_state_rules>);

/// Everything KVM holds for one arm64 vCPU: every `KVM_GET_REG_LIST` register and the MP state.
/// Same shape as `x86_64_vcpu_state`: `save`, `load`, `serialize`, `deserialize`.
using aarch64_vcpu_state = basic_reg_list_state<aarch64_state_rules>;

/// `aarch64_vcpu_state::save` for an arm64 `basic_vcpu`.
template <class Hal>
[[nodiscard]] result<aarch64_vcpu_state> save_state(::vcpu::basic_vcpu<::vcpu::arch::aarch64, Hal>& cpu) {
    return aarch64_vcpu_state::save(cpu.hal());
}
/// `aarch64_vcpu_state::load` for an arm64 `basic_vcpu`.
template <class Hal>
[[nodiscard]] result<void> load_state(::vcpu::basic_vcpu<::vcpu::arch::aarch64, Hal>& cpu,
                                      const aarch64_vcpu_state& s) {
    return s.load(cpu.hal());
}

} // namespace vcpu::kvm

#if defined(__aarch64__)
namespace vcpu::kvm::aarch64_state_layout {
namespace ids = ::vcpu::kvm::aarch64_ids;
static_assert(ids::coproc_mask == KVM_REG_ARM_COPROC_MASK);
static_assert(ids::demux == KVM_REG_ARM_DEMUX && ids::sysreg == KVM_REG_ARM64_SYSREG && ids::fw == KVM_REG_ARM_FW &&
              ids::sve == KVM_REG_ARM64_SVE);
#ifdef KVM_REG_ARM_FW_FEAT_BMAP
static_assert(ids::fw_feat_bmap == KVM_REG_ARM_FW_FEAT_BMAP);
#endif
static_assert(ids::size_u512 == KVM_REG_SIZE_U512 && ids::sve_vls == KVM_REG_ARM64_SVE_VLS);
static_assert(ids::timer_ctl == KVM_REG_ARM_TIMER_CTL && ids::timer_cnt == KVM_REG_ARM_TIMER_CNT &&
              ids::timer_cval == KVM_REG_ARM_TIMER_CVAL);
#ifdef KVM_REG_ARM_PTIMER_CTL
static_assert(ids::ptimer_ctl == KVM_REG_ARM_PTIMER_CTL && ids::ptimer_cnt == KVM_REG_ARM_PTIMER_CNT &&
              ids::ptimer_cval == KVM_REG_ARM_PTIMER_CVAL);
#endif
} // namespace vcpu::kvm::aarch64_state_layout
#endif
