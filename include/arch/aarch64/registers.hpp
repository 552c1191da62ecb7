#pragma once
/// \file
/// The AArch64 register file over `KVM_{GET,SET}_ONE_REG`: X0-X30, SP, PC,
/// PSTATE, SP_EL1, ELR_EL1, SPSRs, V0-V31, FPSR/FPCR and system registers by
/// encoding, each a `vcpu::one_reg` whose id is built the way arm64
/// `<asm/kvm.h>` builds it (`KVM_REG_ARM_CORE_REG`, `ARM64_SYS_REG`). Bit
/// fields cite ARM DDI 0487 (the ARM ARM).

#include <arch/aarch64/abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/registers.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

namespace vcpu::aarch64 {

/// A 64-bit core register at `offset` in `struct kvm_regs`.
using core64 = one_reg<std::uint64_t>;

namespace detail {
template <std::size_t... I>
constexpr std::array<core64, 31> make_xregs(std::index_sequence<I...>) noexcept {
    constexpr std::string_view names[] = {
        "x0",  "x1",  "x2",  "x3",  "x4",  "x5",  "x6",  "x7",  "x8",  "x9",  "x10",
        "x11", "x12", "x13", "x14", "x15", "x16", "x17", "x18", "x19", "x20", "x21",
        "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x29", "x30"};
    return {core64{names[I], core_reg_id(offsetof(core_regs_layout, regs) + I * 8, reg_size_u64)}...};
}
template <std::size_t... I>
constexpr std::array<one_reg<u128>, 32> make_vregs(std::index_sequence<I...>) noexcept {
    constexpr std::string_view names[] = {
        "v0",  "v1",  "v2",  "v3",  "v4",  "v5",  "v6",  "v7",  "v8",  "v9",  "v10",
        "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21",
        "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31"};
    return {one_reg<u128>{names[I], core_reg_id(offsetof(core_regs_layout, fp_regs) +
                                                    offsetof(fpsimd_layout, vregs) + I * 16,
                                                reg_size_u128)}...};
}
} // namespace detail

/// X0-X30 by number (the SRT/Rt field of ESR_EL2.ISS indexes this; 31 is
/// XZR/SP depending on the instruction and is not in the table).
inline constexpr std::array<core64, 31> xregs = detail::make_xregs(std::make_index_sequence<31>{});
/// V0-V31 (128-bit SIMD&FP registers, `fp_regs.vregs[n]`).
inline constexpr std::array<one_reg<u128>, 32> vregs =
    detail::make_vregs(std::make_index_sequence<32>{});

/// @{
/// X0-X3 (`xregs[0..3]`): arguments and results in the procedure call standard and in SMCCC/PSCI.
inline constexpr core64 x0 = xregs[0], x1 = xregs[1], x2 = xregs[2], x3 = xregs[3];
/// @}
/// @{
/// X29, the frame pointer, and X30, the link register (procedure call standard).
inline constexpr core64 fp = xregs[29], lr = xregs[30];
/// @}

/// SP_EL0 (`regs.sp`).
inline constexpr core64 sp{"sp_el0", core_reg_id(offsetof(core_regs_layout, sp), reg_size_u64)};
/// The program counter (`regs.pc`).
inline constexpr core64 pc{"pc", core_reg_id(offsetof(core_regs_layout, pc), reg_size_u64)};
/// PSTATE as SPSR-format bits (`regs.pstate`; ARM DDI 0487 D1.4 "Process state, PSTATE").
inline constexpr core64 pstate{"pstate", core_reg_id(offsetof(core_regs_layout, pstate), reg_size_u64)};
/// SP_EL1.
inline constexpr core64 sp_el1{"sp_el1", core_reg_id(offsetof(core_regs_layout, sp_el1), reg_size_u64)};
/// ELR_EL1.
inline constexpr core64 elr_el1{"elr_el1", core_reg_id(offsetof(core_regs_layout, elr_el1), reg_size_u64)};
/// SPSR_EL1 (`spsr[KVM_SPSR_EL1]`, index 0).
inline constexpr core64 spsr_el1{"spsr_el1", core_reg_id(offsetof(core_regs_layout, spsr), reg_size_u64)};
/// @{
/// FPSR and FPCR: 32-bit ids (`KVM_REG_SIZE_U32`).
inline constexpr one_reg<std::uint32_t> fpsr{
    "fpsr", core_reg_id(offsetof(core_regs_layout, fp_regs) + offsetof(fpsimd_layout, fpsr), reg_size_u32)};
inline constexpr one_reg<std::uint32_t> fpcr{
    "fpcr", core_reg_id(offsetof(core_regs_layout, fp_regs) + offsetof(fpsimd_layout, fpcr), reg_size_u32)};
/// @}

/// Any system register by encoding (`ARM64_SYS_REG`).
[[nodiscard]] constexpr one_reg<std::uint64_t> sys_reg(std::string_view name, sys_encoding e) noexcept {
    return {name, sysreg_id(e)};
}

// System registers a VMM reads or sets (ARM DDI 0487, D17 "AArch64 System
// Register Descriptions"; encodings from each register's "Accessing" section).
/// @{
/// System registers a VMM reads or sets, by their ARM ARM names (D17; encodings from each register's "Accessing" section).
inline constexpr auto midr_el1 = sys_reg("MIDR_EL1", {3, 0, 0, 0, 0});
inline constexpr auto mpidr_el1 = sys_reg("MPIDR_EL1", {3, 0, 0, 0, 5});
inline constexpr auto id_aa64pfr0_el1 = sys_reg("ID_AA64PFR0_EL1", {3, 0, 0, 4, 0});
inline constexpr auto id_aa64mmfr0_el1 = sys_reg("ID_AA64MMFR0_EL1", {3, 0, 0, 7, 0});
inline constexpr auto sctlr_el1 = sys_reg("SCTLR_EL1", {3, 0, 1, 0, 0});
inline constexpr auto ttbr0_el1 = sys_reg("TTBR0_EL1", {3, 0, 2, 0, 0});
inline constexpr auto ttbr1_el1 = sys_reg("TTBR1_EL1", {3, 0, 2, 0, 1});
inline constexpr auto tcr_el1 = sys_reg("TCR_EL1", {3, 0, 2, 0, 2});
inline constexpr auto esr_el1 = sys_reg("ESR_EL1", {3, 0, 5, 2, 0});
inline constexpr auto far_el1 = sys_reg("FAR_EL1", {3, 0, 6, 0, 0});
inline constexpr auto mair_el1 = sys_reg("MAIR_EL1", {3, 0, 10, 2, 0});
inline constexpr auto vbar_el1 = sys_reg("VBAR_EL1", {3, 0, 12, 0, 0});
inline constexpr auto tpidr_el1 = sys_reg("TPIDR_EL1", {3, 0, 13, 0, 4});
inline constexpr auto cntkctl_el1 = sys_reg("CNTKCTL_EL1", {3, 0, 14, 1, 0});
inline constexpr auto tpidr_el0 = sys_reg("TPIDR_EL0", {3, 3, 13, 0, 2});
/// @}
/// @{
/// KVM's virtual-timer ids (`KVM_REG_ARM_TIMER_*`). Note: KVM's historical
/// ABI swaps two encodings — `TIMER_CNT` is (3,3,14,3,2), architecturally
/// CNTV_CVAL_EL0, and `TIMER_CVAL` is (3,3,14,0,2), architecturally
/// CNTVCT_EL0. The ids below are KVM's, which is what ONE_REG wants.
inline constexpr auto timer_ctl = sys_reg("KVM_REG_ARM_TIMER_CTL", {3, 3, 14, 3, 1});
inline constexpr auto timer_cnt = sys_reg("KVM_REG_ARM_TIMER_CNT", {3, 3, 14, 3, 2});
inline constexpr auto timer_cval = sys_reg("KVM_REG_ARM_TIMER_CVAL", {3, 3, 14, 0, 2});
/// @}
/// `KVM_REG_ARM_PSCI_VERSION`: the PSCI version KVM offers the guest.
inline constexpr one_reg<std::uint64_t> psci_version_reg{"KVM_REG_ARM_PSCI_VERSION", fw_reg_id(0)};

/// Every statically named register (X0-X30 and V0-V31 are in `xregs`/`vregs`).
inline constexpr auto all_registers = std::tuple_cat(
    std::apply([](auto... r) { return std::make_tuple(r...); }, xregs),
    std::make_tuple(sp, pc, pstate, sp_el1, elr_el1, spsr_el1, fpsr, fpcr),
    std::apply([](auto... r) { return std::make_tuple(r...); }, vregs),
    std::make_tuple(midr_el1, mpidr_el1, id_aa64pfr0_el1, id_aa64mmfr0_el1, sctlr_el1, ttbr0_el1,
                    ttbr1_el1, tcr_el1, esr_el1, far_el1, mair_el1, vbar_el1, tpidr_el1,
                    cntkctl_el1, tpidr_el0, timer_ctl, timer_cnt, timer_cval, psci_version_reg));

// --- Bit fields ----------------------------------------------------------------

/// PSTATE / SPSR_ELx in AArch64 state (ARM DDI 0487, C5.2.18 "SPSR_EL2" and
/// D1.4 "Process state, PSTATE").
namespace pstate_bits {
inline constexpr bitfield<0, 4> m{};    ///< M[3:0]: exception level and SP selection
inline constexpr bitfield<4> m4{};      ///< M[4]: 1 = AArch32
inline constexpr bitfield<6> f{};       ///< FIQ mask
inline constexpr bitfield<7> i{};       ///< IRQ mask
inline constexpr bitfield<8> a{};       ///< SError mask
inline constexpr bitfield<9> d{};       ///< Debug mask
inline constexpr bitfield<28> v{};  ///< V: overflow
inline constexpr bitfield<29> c{};  ///< C: carry
inline constexpr bitfield<30> z{};  ///< Z: zero
inline constexpr bitfield<31> n{};  ///< N: negative
/// @{
/// M[3:0] values.
inline constexpr std::uint64_t mode_el0t = 0x0, mode_el1t = 0x4, mode_el1h = 0x5,
                               mode_el2t = 0x8, mode_el2h = 0x9;
/// @}
/// EL1h with D, A, I, F masked: how a kernel is entered (Linux
/// Documentation/arch/arm64/booting.rst) and what KVM_ARM_VCPU_INIT resets to.
inline constexpr std::uint64_t el1h_daif_masked =
    m.bits(mode_el1h) | d.bits() | a.bits() | i.bits() | f.bits();
static_assert(el1h_daif_masked == 0x3c5);
} // namespace pstate_bits

/// MPIDR_EL1 affinity fields (ARM DDI 0487, D17.2.101 "MPIDR_EL1").
namespace mpidr_bits {
inline constexpr bitfield<0, 8> aff0{};  ///< Aff0
inline constexpr bitfield<8, 8> aff1{};  ///< Aff1
inline constexpr bitfield<16, 8> aff2{};  ///< Aff2
inline constexpr bitfield<24> mt{};  ///< MT: multithreading (affinity level 0 names threads)
inline constexpr bitfield<30> u{};  ///< U: uniprocessor system
inline constexpr bitfield<31, 1, access::ro> res1{};  ///< RES1
inline constexpr bitfield<32, 8> aff3{};  ///< Aff3
/// The affinity bits PSCI compares (Aff3..Aff0).
inline constexpr std::uint64_t affinity_mask = aff0.mask | aff1.mask | aff2.mask | aff3.mask;
} // namespace mpidr_bits

} // namespace vcpu::aarch64
