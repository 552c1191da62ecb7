#pragma once
/// \file
/// AArch64 KVM ABI mirrors: the arm64 `<asm/kvm.h>` constants and structs the
/// AArch64 architecture needs, restated so it compiles on every host (the
/// host's `<asm/kvm.h>` describes *its* architecture). Values follow
/// `arch/arm64/include/uapi/asm/kvm.h` and `arch/arm64/include/uapi/asm/ptrace.h`
/// (Linux 6.1) and Documentation/virt/kvm/api.rst §4.68 "KVM_SET_ONE_REG"
/// (arm64 register ids) and §4.82 "KVM_ARM_VCPU_INIT".
/// `include/kvm/aarch64.hpp` asserts, when compiled for arm64, that every
/// value and layout here equals the kernel's.

#include <vcpu/config.hpp>
#include <vcpu/registers.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace vcpu::aarch64 {

// --- ONE_REG id fields (<linux/kvm.h>, generic part) -----------------------------

/// `KVM_REG_ARM64`: the architecture field of an arm64 ONE_REG id.
inline constexpr std::uint64_t reg_arm64 = 0x6000000000000000ULL;
/// `KVM_REG_SIZE_SHIFT`: log2(bytes) lives in bits [55:52].
inline constexpr unsigned reg_size_shift = 52;
/// @{
/// `KVM_REG_SIZE_U32`, `_U64`, `_U128`.
inline constexpr std::uint64_t reg_size_u32 = 0x0020000000000000ULL;
inline constexpr std::uint64_t reg_size_u64 = 0x0030000000000000ULL;
inline constexpr std::uint64_t reg_size_u128 = 0x0040000000000000ULL;
/// @}

// --- arm64 coprocessor groups (<asm/kvm.h>) ---------------------------------------

/// `KVM_REG_ARM_COPROC_SHIFT`.
inline constexpr unsigned reg_coproc_shift = 16;
/// `KVM_REG_ARM_CORE`: fields of `struct kvm_regs`, index = byte offset / 4.
inline constexpr std::uint64_t reg_core = std::uint64_t{0x0010} << reg_coproc_shift;
/// `KVM_REG_ARM64_SYSREG`: system registers by (Op0, Op1, CRn, CRm, Op2).
inline constexpr std::uint64_t reg_sysreg = std::uint64_t{0x0013} << reg_coproc_shift;
/// `KVM_REG_ARM_FW`: firmware pseudo-registers (PSCI version, SMCCC workarounds).
inline constexpr std::uint64_t reg_fw = std::uint64_t{0x0014} << reg_coproc_shift;

/// @{
/// `KVM_REG_ARM64_SYSREG_{OP0,OP1,CRN,CRM,OP2}_SHIFT` (masks are 2, 3, 4, 4, 3 bits).
inline constexpr unsigned sysreg_op0_shift = 14, sysreg_op1_shift = 11, sysreg_crn_shift = 7,
                          sysreg_crm_shift = 3, sysreg_op2_shift = 0;
/// @}

/// A system-register encoding (ARM DDI 0487, C5.3 "A64 System instruction
/// class encoding overview": op0, op1, CRn, CRm, op2).
struct sys_encoding {
    /// @{
    /// The five encoding fields.
    std::uint8_t op0 = 0, op1 = 0, crn = 0, crm = 0, op2 = 0;
    /// @}

    /// The 16-bit index KVM uses in `ARM64_SYS_REG()` ids
    /// (`op0<<14 | op1<<11 | CRn<<7 | CRm<<3 | op2`). Ordering by it is the
    /// lexicographic order of (op0, op1, CRn, CRm, op2), the order Linux
    /// sorts its `sys_reg_descs` tables in. `vcpu::sysreg::id` uses it too.
    [[nodiscard]] constexpr std::uint32_t index() const noexcept {
        return (std::uint32_t{op0} & 3u) << sysreg_op0_shift |
               (std::uint32_t{op1} & 7u) << sysreg_op1_shift |
               (std::uint32_t{crn} & 15u) << sysreg_crn_shift |
               (std::uint32_t{crm} & 15u) << sysreg_crm_shift | (std::uint32_t{op2} & 7u);
    }
    /// The inverse of `index()`.
    [[nodiscard]] static constexpr sys_encoding from_index(std::uint32_t i) noexcept {
        return {static_cast<std::uint8_t>((i >> sysreg_op0_shift) & 3u),
                static_cast<std::uint8_t>((i >> sysreg_op1_shift) & 7u),
                static_cast<std::uint8_t>((i >> sysreg_crn_shift) & 15u),
                static_cast<std::uint8_t>((i >> sysreg_crm_shift) & 15u),
                static_cast<std::uint8_t>(i & 7u)};
    }
    friend constexpr bool operator==(const sys_encoding&, const sys_encoding&) = default;
};

/// `ARM64_SYS_REG(op0, op1, crn, crm, op2)`: the ONE_REG id of a system register.
[[nodiscard]] constexpr std::uint64_t sysreg_id(sys_encoding e) noexcept {
    return reg_arm64 | reg_size_u64 | reg_sysreg | e.index();
}

// --- struct kvm_regs ----------------------------------------------------------------

/// `__uint128_t` as the kernel lays it out (16-byte aligned, little-endian).
struct alignas(16) vreg_layout {
    /// @{
    /// Low and high 64 bits.
    std::uint64_t lo, hi;
    /// @}
};

/// `struct user_fpsimd_state` (<asm/ptrace.h>).
struct fpsimd_layout {
    vreg_layout vregs[32];  ///< V0-V31
    std::uint32_t fpsr;  ///< FPSR
    std::uint32_t fpcr;  ///< FPCR
    std::uint32_t reserved[2];  ///< ABI padding
};

/// `KVM_NR_SPSR`: banked SPSRs (EL1, abt, und, irq, fiq).
inline constexpr std::size_t nr_spsr = 5;

/// `struct kvm_regs` = `struct user_pt_regs` (X0-X30, SP_EL0, PC, PSTATE),
/// SP_EL1, ELR_EL1, the SPSRs and the FP/SIMD state. Only its offsets are
/// used: KVM moves it one field at a time (`KVM_REG_ARM_CORE`).
struct core_regs_layout {
    std::uint64_t regs[31];  ///< X0-X30
    std::uint64_t sp;  ///< SP_EL0
    std::uint64_t pc;  ///< PC
    std::uint64_t pstate;  ///< PSTATE (SPSR format)
    std::uint64_t sp_el1;  ///< SP_EL1
    std::uint64_t elr_el1;  ///< ELR_EL1
    std::uint64_t spsr[nr_spsr];  ///< SPSR_EL1, then the AArch32 banked SPSRs
    fpsimd_layout fp_regs;  ///< V0-V31, FPSR, FPCR
};

static_assert(sizeof(vreg_layout) == 16 && alignof(vreg_layout) == 16);
static_assert(sizeof(fpsimd_layout) == 528);
static_assert(offsetof(core_regs_layout, sp) == 248 && offsetof(core_regs_layout, pc) == 256);
static_assert(offsetof(core_regs_layout, fp_regs) == 336, "__uint128_t alignment pads after spsr[]");
static_assert(sizeof(core_regs_layout) == 864 && std::is_standard_layout_v<core_regs_layout>);

/// `KVM_REG_ARM_CORE_REG(field)` for a byte offset into `struct kvm_regs`
/// with size flag `size` (`reg_size_u64` for X/SP/PC/PSTATE, `_u128` for V,
/// `_u32` for FPSR/FPCR).
[[nodiscard]] constexpr std::uint64_t core_reg_id(std::size_t byte_offset, std::uint64_t size) noexcept {
    return reg_arm64 | size | reg_core | (byte_offset / sizeof(std::uint32_t));
}

/// `KVM_REG_ARM_FW_REG(r)`.
[[nodiscard]] constexpr std::uint64_t fw_reg_id(std::uint64_t r) noexcept {
    return reg_arm64 | reg_size_u64 | reg_fw | (r & 0xffff);
}

// --- KVM_ARM_VCPU_INIT --------------------------------------------------------------

/// `struct kvm_vcpu_init` (KVM API §4.82): target from
/// `KVM_ARM_PREFERRED_TARGET`, feature bitmap.
struct vcpu_init {
    std::uint32_t target = 0;  ///< `KVM_ARM_TARGET_*`, usually from `KVM_ARM_PREFERRED_TARGET`
    std::uint32_t features[7] = {};  ///< `KVM_ARM_VCPU_*` feature bits

    /// Sets feature bit `f` (a `feature` value).
    constexpr vcpu_init& with(std::uint32_t f) noexcept {
        if (f < 7 * 32) features[f / 32] |= 1u << (f % 32);
        return *this;
    }
    /// True when feature bit `f` is set.
    [[nodiscard]] constexpr bool has(std::uint32_t f) const noexcept {
        return f < 7 * 32 && (features[f / 32] & (1u << (f % 32))) != 0;
    }
};
static_assert(sizeof(vcpu_init) == 32 && std::is_standard_layout_v<vcpu_init>);

/// `KVM_ARM_VCPU_*` feature bits of `kvm_vcpu_init::features` (<asm/kvm.h>).
namespace feature {
inline constexpr std::uint32_t power_off = 0;         ///< start in PSCI OFF state (secondaries)
inline constexpr std::uint32_t el1_32bit = 1;         ///< AArch32 EL1
inline constexpr std::uint32_t psci_0_2 = 2;          ///< PSCI v0.2+ (KVM_CAP_ARM_PSCI_0_2)
inline constexpr std::uint32_t pmu_v3 = 3;            ///< KVM_CAP_ARM_PMU_V3
inline constexpr std::uint32_t sve = 4;               ///< KVM_CAP_ARM_SVE; needs KVM_ARM_VCPU_FINALIZE
inline constexpr std::uint32_t ptrauth_address = 5;   ///< KVM_CAP_ARM_PTRAUTH_ADDRESS
inline constexpr std::uint32_t ptrauth_generic = 6;   ///< KVM_CAP_ARM_PTRAUTH_GENERIC
} // namespace feature

/// `struct kvm_debug_exit_arch` for arm64 (`kvm_run::debug.arch`).
struct debug_exit_layout {
    std::uint32_t hsr;      ///< ESR_EL2[31:0]
    std::uint32_t hsr_high; ///< ESR_EL2[61:32] when `KVM_DEBUG_ARCH_HSR_HIGH_VALID`
    std::uint64_t far;      ///< FAR for watchpoints
};
static_assert(sizeof(debug_exit_layout) == 16);
/// `KVM_DEBUG_ARCH_HSR_HIGH_VALID`.
inline constexpr std::uint32_t debug_hsr_high_valid = 1u << 0;

/// `KVM_HYPERCALL_EXIT_SMC` (api.rst §5 "KVM_EXIT_HYPERCALL", arm64 SMCCC
/// forwarding, Linux 6.7): bit 0 of `hypercall.flags` (the former `longmode`
/// word): the guest used SMC rather than HVC.
inline constexpr std::uint64_t hypercall_exit_smc = 1u << 0;

} // namespace vcpu::aarch64
