#pragma once
/// \file
/// RISC-V 64 KVM ABI constants, restated so the riscv64 architecture compiles
/// on every host (the host's `<asm/kvm.h>` describes *its* architecture).
///
/// Source: Linux `arch/riscv/include/uapi/asm/kvm.h` (ONE_REG id layout:
/// `KVM_REG_RISCV | KVM_REG_SIZE_* | <type> | <subtype> | <index>`, types and
/// the field order of `struct kvm_riscv_core`, `kvm_riscv_csr`,
/// `kvm_riscv_config`, `kvm_riscv_timer`, `enum KVM_RISCV_SBI_EXT_ID`) and
/// `include/uapi/linux/kvm.h` (`KVM_REG_RISCV`, `KVM_REG_SIZE_U64`); KVM API
/// 4.68 "KVM_SET_ONE_REG" lists the RISC-V register classes.
/// `include/kvm/riscv64.hpp` asserts, when compiled for RISC-V, that every
/// value here equals the kernel header's.

#include <vcpu/config.hpp>

#include <cstdint>

namespace vcpu::riscv64::abi {

/// `KVM_REG_RISCV` (linux/kvm.h): the architecture bits of a ONE_REG id.
inline constexpr std::uint64_t reg_riscv = 0x8000000000000000ULL;
/// @{
/// `KVM_REG_SIZE_U32` / `KVM_REG_SIZE_U64` (linux/kvm.h).
inline constexpr std::uint64_t reg_size_u32 = 0x0020000000000000ULL;
inline constexpr std::uint64_t reg_size_u64 = 0x0030000000000000ULL;
/// @}

/// @{
/// `KVM_REG_RISCV_TYPE_SHIFT` / `KVM_REG_RISCV_SUBTYPE_SHIFT`.
inline constexpr unsigned type_shift = 24;
inline constexpr unsigned subtype_shift = 16;
/// @}

/// Register classes (`KVM_REG_RISCV_<TYPE>`): the `type` field of an id.
enum class reg_type : std::uint64_t {
    config = 0x01,     ///< `KVM_REG_RISCV_CONFIG`: struct kvm_riscv_config
    core = 0x02,       ///< `KVM_REG_RISCV_CORE`: struct kvm_riscv_core
    csr = 0x03,        ///< `KVM_REG_RISCV_CSR`: struct kvm_riscv_csr (subtype GENERAL = 0)
    timer = 0x04,      ///< `KVM_REG_RISCV_TIMER`: struct kvm_riscv_timer
    fp_f = 0x05,       ///< `KVM_REG_RISCV_FP_F`
    fp_d = 0x06,       ///< `KVM_REG_RISCV_FP_D`
    isa_ext = 0x07,    ///< `KVM_REG_RISCV_ISA_EXT`
    sbi_ext = 0x08,    ///< `KVM_REG_RISCV_SBI_EXT` (Linux >= 6.6)
    vector = 0x09,     ///< `KVM_REG_RISCV_VECTOR`
    sbi_state = 0x0a,  ///< `KVM_REG_RISCV_SBI_STATE`
};

/// The `type` bits of an id.
[[nodiscard]] constexpr std::uint64_t type_bits(reg_type t) noexcept {
    return static_cast<std::uint64_t>(t) << type_shift;
}

/// A 64-bit ONE_REG id: `KVM_REG_RISCV | KVM_REG_SIZE_U64 | type | index`
/// (index in `unsigned long` units of the class's struct; RV64 only).
[[nodiscard]] constexpr std::uint64_t reg_id(reg_type t, std::uint64_t index,
                                             std::uint64_t subtype = 0) noexcept {
    return reg_riscv | reg_size_u64 | type_bits(t) | (subtype << subtype_shift) | index;
}

/// Field indices of `struct kvm_riscv_core` = `struct user_regs_struct regs`
/// (pc, ra, sp, gp, tp, t0-t2, s0, s1, a0-a7, s2-s11, t3-t6) then `mode`.
/// `pc` takes slot 0, so x1..x31 have core index 1..31 — the register number.
namespace core_index {
inline constexpr std::uint64_t pc = 0;  ///< `kvm_riscv_core.regs.pc`
inline constexpr std::uint64_t mode = 32;  ///< `kvm_riscv_core.mode`
/// Core index of `x<n>` for 1 <= n <= 31.
[[nodiscard]] constexpr std::uint64_t x(unsigned n) noexcept { return n; }
} // namespace core_index

/// @{
/// `KVM_RISCV_MODE_S` / `KVM_RISCV_MODE_U`: values of core register `mode`.
inline constexpr std::uint64_t mode_s = 1;
inline constexpr std::uint64_t mode_u = 0;
/// @}

/// Field indices of `struct kvm_riscv_csr` (subtype `KVM_REG_RISCV_CSR_GENERAL`).
namespace csr_index {
/// @{
/// Indices named after the `struct kvm_riscv_csr` fields.
inline constexpr std::uint64_t sstatus = 0, sie = 1, stvec = 2, sscratch = 3, sepc = 4,
                               scause = 5, stval = 6, sip = 7, satp = 8, scounteren = 9;
/// @}
} // namespace csr_index

/// Field indices of `struct kvm_riscv_config`. `isa` and `zicbom_block_size`
/// since Linux 6.1; `mvendorid`, `marchid`, `mimpid` since 6.3; `zicboz_block_size`
/// 6.5; `satp_mode` 6.6.
namespace config_index {
/// @{
/// Indices named after the `struct kvm_riscv_config` fields.
inline constexpr std::uint64_t isa = 0, zicbom_block_size = 1, mvendorid = 2, marchid = 3,
                               mimpid = 4, zicboz_block_size = 5, satp_mode = 6;
/// @}
} // namespace config_index

/// Field indices of `struct kvm_riscv_timer` (all `__u64`).
namespace timer_index {
/// @{
/// Indices named after the `struct kvm_riscv_timer` fields.
inline constexpr std::uint64_t frequency = 0, time = 1, compare = 2, state = 3;
/// @}
} // namespace timer_index

/// @{
/// `KVM_RISCV_TIMER_STATE_OFF` / `_ON`.
inline constexpr std::uint64_t timer_state_off = 0, timer_state_on = 1;
/// @}

/// `enum KVM_RISCV_SBI_EXT_ID`: KVM's own numbering of the SBI extensions it
/// implements, used as the index of `KVM_REG_RISCV_SBI_EXT` registers (1 =
/// enabled). Not the SBI spec's extension ids (see sbi.hpp).
enum class kvm_sbi_ext : std::uint64_t {
    v01 = 0, time, ipi, rfence, srst, hsm, pmu, experimental, vendor,
    dbcn, ///< default-disabled in KVM: a VMM that handles console writes enables it
    sta,
};

/// `KVM_REG_RISCV_SBI_SINGLE`: one extension per register.
inline constexpr std::uint64_t sbi_single = 0;

/// The ONE_REG id that enables/disables SBI extension `e` for a vCPU
/// (`KVM_REG_RISCV | KVM_REG_SIZE_ULONG | KVM_REG_RISCV_SBI_EXT |
/// KVM_REG_RISCV_SBI_SINGLE | e`); set before the first `KVM_RUN`.
[[nodiscard]] constexpr std::uint64_t sbi_ext_reg(kvm_sbi_ext e) noexcept {
    return reg_id(reg_type::sbi_ext, static_cast<std::uint64_t>(e), sbi_single);
}

/// `KVM_INTERRUPT_SET` / `KVM_INTERRUPT_UNSET`: the `irq` of a RISC-V `KVM_INTERRUPT`
/// @{
/// (raise / lower the VS-level external interrupt).
inline constexpr std::uint32_t interrupt_set = 0xffffffffu, interrupt_unset = 0xfffffffeu;
/// @}

/// `enum KVM_RISCV_ISA_EXT_ID`: KVM's numbering of the ISA extensions a vCPU may have, the
/// index of `KVM_REG_RISCV_ISA_EXT` registers (1 = the vCPU has it). Single letters first.
enum class kvm_isa_ext : std::uint64_t {
    a = 0, c, d, f, h, i, m, svpbmt, sstc, svinval, zihintpause, zicbom, zicboz, zbb, ssaia, v,
    svnapot, zba, zbs, zicntr, zicsr, zifencei, zihpm, smstateen, zicond,
};

/// The ONE_REG id of ISA extension `e` (`KVM_REG_RISCV_ISA_EXT | KVM_REG_RISCV_ISA_SINGLE | e`).
[[nodiscard]] constexpr std::uint64_t isa_ext_reg(kvm_isa_ext e) noexcept {
    return reg_id(reg_type::isa_ext, static_cast<std::uint64_t>(e), 0);
}

} // namespace vcpu::riscv64::abi
