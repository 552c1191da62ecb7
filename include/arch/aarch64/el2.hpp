#pragma once
/// \file
/// The EL2 state an arm_vcpu-style bare-metal hypervisor programs before
/// entering an AArch64 guest, as typed constants with the ARM ARM's bit-field
/// names (ARM DDI 0487: D17.2.48 HCR_EL2, D17.2.190 VTCR_EL2, D17.2.118
/// SCTLR_EL1, C5.2.18 SPSR_EL1, D17.2.197 VMPIDR_EL2, D17.2.27 CNTHCTL_EL2,
/// D17.2.33 CNTVOFF_EL2).

#include <arch/aarch64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/registers.hpp>

#include <cstdint>
#include <optional>

namespace vcpu::aarch64::el2 {

/// HCR_EL2, Hypervisor Configuration Register (D17.2.48).
namespace hcr {
inline constexpr bitfield<0> vm{};    ///< stage-2 translation enable
inline constexpr bitfield<1> swio{};  ///< set/way invalidation override
inline constexpr bitfield<2> ptw{};   ///< protected table walk
inline constexpr bitfield<3> fmo{};   ///< physical FIQ routing to EL2
inline constexpr bitfield<4> imo{};   ///< physical IRQ routing to EL2
inline constexpr bitfield<5> amo{};   ///< SError routing to EL2
inline constexpr bitfield<13> twi{};  ///< trap WFI
inline constexpr bitfield<14> twe{};  ///< trap WFE
inline constexpr bitfield<15> tid0{};  ///< TID0: trap ID group 0 registers
inline constexpr bitfield<16> tid1{};  ///< TID1: trap ID group 1 registers
inline constexpr bitfield<17> tid2{};  ///< TID2: trap ID group 2 registers (cache identification)
inline constexpr bitfield<18> tid3{}; ///< trap ID group 3 registers
inline constexpr bitfield<19> tsc{};  ///< trap SMC
inline constexpr bitfield<27> tge{};  ///< TGE: trap general exceptions (host EL0 under VHE)
inline constexpr bitfield<31> rw{};   ///< EL1 is AArch64
inline constexpr bitfield<34> e2h{};  ///< VHE
/// What arm_vcpu programs: stage 2 on, EL1 AArch64, SMC trapped, physical
/// IRQ/FIQ routed to EL2.
inline constexpr std::uint64_t guest_default =
    vm.bits() | rw.bits() | tsc.bits() | imo.bits() | fmo.bits();
} // namespace hcr

/// VTCR_EL2, stage-2 translation control (D17.2.190).
namespace vtcr {
inline constexpr bitfield<0, 6> t0sz{};  ///< IPA size = 64 - T0SZ
inline constexpr bitfield<6, 2> sl0{};   ///< starting level (4 KiB granule: 0 = L2, 1 = L1, 2 = L0)
inline constexpr bitfield<8, 2> irgn0{}; ///< 1 = write-back write-allocate
inline constexpr bitfield<10, 2> orgn0{};  ///< ORGN0: outer cacheability of stage-2 walks (1 = write-back write-allocate)
inline constexpr bitfield<12, 2> sh0{};  ///< 3 = inner shareable
inline constexpr bitfield<14, 2> tg0{};  ///< 0 = 4 KiB granule
inline constexpr bitfield<16, 3> ps{};   ///< physical address size
inline constexpr bitfield<31, 1, access::ro> res1{};  ///< RES1

/// ID_AA64MMFR0_EL1.PARange / VTCR_EL2.PS encoding → bits (D17.2.64).
[[nodiscard]] constexpr std::optional<unsigned> pa_bits(std::uint64_t parange) noexcept {
    switch (parange) {
    case 0: return 32;
    case 1: return 36;
    case 2: return 40;
    case 3: return 42;
    case 4: return 44;
    case 5: return 48;
    case 6: return 52;
    default: return std::nullopt;
    }
}

/// Translation levels for a 4 KiB-granule stage 2 of `ipa_bits` (D8.2,
/// "Translation table walk"): 3 levels starting at L1 up to 42 bits (above
/// 39 bits with 2..8 concatenated L1 tables, D8.2.7 "Concatenated
/// translation tables"), 4 levels starting at L0 for 43..48 bits.
[[nodiscard]] constexpr unsigned levels(unsigned ipa_bits) noexcept { return ipa_bits > 42 ? 4 : 3; }
/// Concatenated starting-level tables needed (1 = none).
[[nodiscard]] constexpr unsigned concatenated_tables(unsigned ipa_bits) noexcept {
    return levels(ipa_bits) == 3 && ipa_bits > 39 ? 1u << (ipa_bits - 39) : 1u;
}

/// VTCR_EL2 for a 4 KiB granule, inner-shareable write-back tables and the
/// IPA size of PA range `parange` (the host's ID_AA64MMFR0_EL1.PARange).
/// `nullopt` for a reserved PARange or beyond 48 bits (52 bits needs FEAT_LPA2).
[[nodiscard]] constexpr std::optional<std::uint64_t> for_pa_range(std::uint64_t parange) noexcept {
    const auto bits = pa_bits(parange);
    if (!bits || *bits > 48) return std::nullopt;
    const std::uint64_t sl = levels(*bits) == 4 ? 2 : 1; // SL0: 1 = start at L1, 2 = at L0
    return t0sz.bits(64 - *bits) | sl0.bits(sl) | irgn0.bits(1) | orgn0.bits(1) | sh0.bits(3) |
           tg0.bits(0) | ps.bits(parange) | res1.mask;
}
/// The 40-bit IPA, 4 KiB granule configuration arm_vcpu uses.
inline constexpr std::uint64_t ipa40_4k = *for_pa_range(2);
} // namespace vtcr

/// SCTLR_EL1 value a guest starts with: MMU and caches off, RES1 bits set
/// (D17.2.118; 0x30C50830 = RES1 bits [29:28], [23:22], [20], [11], plus
/// EOS/EIS/TSCXT defaults as arm_vcpu and Linux's INIT_SCTLR_EL1_MMU_OFF).
inline constexpr std::uint64_t sctlr_el1_reset = 0x30c50830;

/// SPSR_EL1/EL2 for entering the guest kernel: EL1h, DAIF masked (C5.2.18).
inline constexpr std::uint64_t spsr_el1h_daif = pstate_bits::el1h_daif_masked;

/// VMPIDR_EL2 (D17.2.197): the MPIDR_EL1 the guest reads — RES1 bit 31 plus
/// the vCPU's affinity (Aff0 = vCPU index within a cluster of 256).
[[nodiscard]] constexpr std::uint64_t vmpidr(std::uint64_t vcpu_index) noexcept {
    return mpidr_bits::res1.mask | mpidr_bits::aff0.bits(vcpu_index & 0xff) |
           mpidr_bits::aff1.bits((vcpu_index >> 8) & 0xff) |
           mpidr_bits::aff2.bits((vcpu_index >> 16) & 0xff);
}

/// CNTHCTL_EL2 (D17.2.27, non-VHE layout): EL1 may access the physical
/// counter and timer (EL1PCTEN, EL1PCEN); CNTVOFF_EL2 = 0 gives the guest
/// the host's virtual count.
namespace cnthctl {
inline constexpr bitfield<0> el1pcten{};  ///< EL1PCTEN: EL1/EL0 may read the physical counter
inline constexpr bitfield<1> el1pcen{};  ///< EL1PCEN: EL1/EL0 may use the physical timer
inline constexpr std::uint64_t guest_default = el1pcten.bits() | el1pcen.bits();  ///< both: the guest reads the physical counter and uses the physical timer
} // namespace cnthctl
/// CNTVOFF_EL2 for a guest: 0, so its virtual count (CNTVCT = CNTPCT - CNTVOFF) is the physical count.
inline constexpr std::uint64_t cntvoff_default = 0;

/// The whole EL2 context an arm_vcpu-style hypervisor loads for a vCPU.
struct initial_state {
    std::uint64_t hcr_el2 = hcr::guest_default;  ///< HCR_EL2
    std::uint64_t vtcr_el2 = vtcr::ipa40_4k;  ///< VTCR_EL2
    std::uint64_t sctlr_el1 = sctlr_el1_reset;  ///< SCTLR_EL1 at entry
    std::uint64_t spsr_el1 = spsr_el1h_daif;  ///< SPSR_EL1 at entry: EL1h with DAIF masked
    std::uint64_t vmpidr_el2 = vmpidr(0);  ///< VMPIDR_EL2: the MPIDR the guest reads
    std::uint64_t cnthctl_el2 = cnthctl::guest_default;  ///< CNTHCTL_EL2
    std::uint64_t cntvoff_el2 = cntvoff_default;  ///< CNTVOFF_EL2
    std::uint64_t elr_el2 = 0; ///< guest entry point
    std::uint64_t x0 = 0;      ///< DTB address (Linux arm64 boot protocol)

    /// The state for vCPU `index` entering at `entry` with the DTB at `dtb`.
    [[nodiscard]] static constexpr initial_state for_vcpu(std::uint64_t index, std::uint64_t entry,
                                                          std::uint64_t dtb) noexcept {
        initial_state s{};
        s.vmpidr_el2 = vmpidr(index);
        s.elr_el2 = entry;
        s.x0 = dtb;
        return s;
    }
};

static_assert(hcr::guest_default == 0x80080019);
static_assert(sctlr_el1_reset == 0x30c50830);
static_assert(spsr_el1h_daif == 0x3c5);
static_assert(vtcr::t0sz.get(vtcr::ipa40_4k) == 24 && vtcr::sl0.get(vtcr::ipa40_4k) == 1 &&
              vtcr::concatenated_tables(40) == 2);

} // namespace vcpu::aarch64::el2
