#pragma once
/// \file
/// System-register descriptor tables for trapped MSR/MRS (ESR_EL2.EC 0x18):
/// encoding, name, reset value and how a trap is handled. A table is checked
/// **at compile time** to be sorted by encoding with no duplicates — the
/// check Linux's `kvm_arm_init` → `kvm_sys_reg_table_init` →
/// `check_sysreg_table` runs at boot — so lookup is a binary search over a
/// constant array.
///
/// ```
/// inline constexpr std::array my_regs{ sysreg_desc{{3,0,0,0,0}, "MIDR_EL1", 0x410fd083, trap_action::read_only}, ... };
/// using my_table = sysreg_table<my_regs>;           // fails to compile when unsorted
/// if (auto* d = my_table::find(exit.id)) ...
/// ```

#include <arch/aarch64/abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace vcpu::aarch64 {

/// What the hypervisor does with a trapped access to a register.
enum class trap_action : std::uint8_t {
    read_only,   ///< reads return `reset`; writes are UNDEFINED (inject UNDEF)
    emulate,     ///< the VMM's handler computes the value (per-vCPU state)
    write_ignore,///< reads return `reset`; writes are ignored (RAZ/WI style)
    undefined,   ///< every access is UNDEFINED
};

/// One system register (ARM DDI 0487, D17 "AArch64 System Register Descriptions").
struct sysreg_desc {
    sys_encoding enc{};  ///< the register's encoding
    std::string_view name;  ///< its ARM ARM name
    std::uint64_t reset = 0;  ///< value reads return when `trap` is `read_only` or `write_ignore`
    trap_action trap = trap_action::emulate;  ///< what to do with a trapped access
};

namespace detail {
inline constexpr std::size_t no_entry = ~std::size_t{0};

/// Index of the first entry whose encoding equals its predecessor's.
template <std::size_t N>
constexpr std::size_t first_duplicate(const std::array<sysreg_desc, N>& t) noexcept {
    for (std::size_t i = 1; i < N; ++i)
        if (t[i].enc.index() == t[i - 1].enc.index()) return i;
    return no_entry;
}
/// Index of the first entry whose encoding is below its predecessor's.
template <std::size_t N>
constexpr std::size_t first_unsorted(const std::array<sysreg_desc, N>& t) noexcept {
    for (std::size_t i = 1; i < N; ++i)
        if (t[i].enc.index() < t[i - 1].enc.index()) return i;
    return no_entry;
}
/// Index of the first entry with a field wider than its encoding allows.
template <std::size_t N>
constexpr std::size_t first_out_of_range(const std::array<sysreg_desc, N>& t) noexcept {
    for (std::size_t i = 0; i < N; ++i) {
        const auto& e = t[i].enc;
        if (e.op0 > 3 || e.op1 > 7 || e.crn > 15 || e.crm > 15 || e.op2 > 7) return i;
    }
    return no_entry;
}
} // namespace detail

/// A system-register table checked at compile time: `Entries` (a
/// `constexpr std::array<sysreg_desc, N>` with static storage) must be
/// sorted by (op0, op1, CRn, CRm, op2) with no duplicates and every field in
/// range. `find` is a binary search.
template <const auto& Entries>
struct sysreg_table {
    static_assert(detail::first_out_of_range(Entries) == detail::no_entry,
                  "vcpu: system-register table has an encoding field out of range "
                  "(op0 < 4, op1 < 8, CRn < 16, CRm < 16, op2 < 8)");
    static_assert(detail::first_duplicate(Entries) == detail::no_entry,
                  "vcpu: system-register table has a duplicate encoding");
    static_assert(detail::first_unsorted(Entries) == detail::no_entry,
                  "vcpu: system-register table is not sorted by encoding (op0, op1, CRn, CRm, op2)");

    /// Number of registers in the table.
    static constexpr std::size_t size = Entries.size();
    /// The table, sorted by encoding.
    [[nodiscard]] static constexpr std::span<const sysreg_desc> entries() noexcept { return Entries; }

    /// The descriptor for `index` (`sys_encoding::index()`, as in
    /// `vcpu::sysreg::id`), or null.
    [[nodiscard]] static constexpr const sysreg_desc* find(std::uint64_t index) noexcept {
        std::size_t lo = 0, hi = size;
        while (lo < hi) {
            const std::size_t mid = lo + (hi - lo) / 2;
            const std::uint32_t k = Entries[mid].enc.index();
            if (k == index) return &Entries[mid];
            if (k < index) lo = mid + 1;
            else hi = mid;
        }
        return nullptr;
    }
    /// The descriptor for encoding `e`, or null.
    [[nodiscard]] static constexpr const sysreg_desc* find(sys_encoding e) noexcept {
        return find(e.index());
    }

    /// Handles a trapped access by the table's rules. Returns false when the
    /// register is not in the table or its rule is `emulate` (the caller's
    /// handler decides); otherwise answers or fails the access and returns true.
    static constexpr bool handle(const ::vcpu::sysreg& r) noexcept {
        const sysreg_desc* d = find(r.id);
        if (d == nullptr || d->trap == trap_action::emulate) return false;
        switch (d->trap) {
        case trap_action::read_only:
            if (r.is_read()) r.answer(d->reset);
            else r.fail();
            return true;
        case trap_action::write_ignore:
            if (r.is_read()) r.answer(d->reset);
            return true;
        default:
            r.fail();
            return true;
        }
    }
};

/// The ID and identification registers arm_vcpu-style hypervisors trap
/// (HCR_EL2.TID3/TID1) with the values of a generic Armv8.0 CPU, plus the EL1
/// state a VMM emulates per vCPU. Encodings: ARM DDI 0487 D17.2 (each
/// register's "Accessing" section); reset values for ID registers describe
/// a Cortex-A53-like CPU (AArch64 EL0/EL1 only, no SVE).
inline constexpr std::array<sysreg_desc, 16> el1_sysreg_entries{{
    {{3, 0, 0, 0, 0}, "MIDR_EL1", 0x410fd034, trap_action::read_only},
    {{3, 0, 0, 0, 5}, "MPIDR_EL1", 0x80000000, trap_action::emulate},
    {{3, 0, 0, 0, 6}, "REVIDR_EL1", 0, trap_action::read_only},
    {{3, 0, 0, 4, 0}, "ID_AA64PFR0_EL1", 0x11, trap_action::read_only},
    {{3, 0, 0, 4, 1}, "ID_AA64PFR1_EL1", 0, trap_action::read_only},
    {{3, 0, 0, 5, 0}, "ID_AA64DFR0_EL1", 0x10305106, trap_action::read_only},
    {{3, 0, 0, 6, 0}, "ID_AA64ISAR0_EL1", 0, trap_action::read_only},
    {{3, 0, 0, 6, 1}, "ID_AA64ISAR1_EL1", 0, trap_action::read_only},
    {{3, 0, 0, 7, 0}, "ID_AA64MMFR0_EL1", 0x1122, trap_action::read_only},
    {{3, 0, 0, 7, 1}, "ID_AA64MMFR1_EL1", 0, trap_action::read_only},
    {{3, 0, 1, 0, 0}, "SCTLR_EL1", 0x30c50830, trap_action::emulate},
    {{3, 0, 2, 0, 0}, "TTBR0_EL1", 0, trap_action::emulate},
    {{3, 0, 2, 0, 1}, "TTBR1_EL1", 0, trap_action::emulate},
    {{3, 0, 2, 0, 2}, "TCR_EL1", 0, trap_action::emulate},
    {{3, 1, 0, 0, 7}, "AIDR_EL1", 0, trap_action::read_only},
    {{3, 3, 0, 0, 1}, "CTR_EL0", 0x84448004, trap_action::read_only},
}};

/// `el1_sysreg_entries` as a checked table.
using el1_sysregs = sysreg_table<el1_sysreg_entries>;

} // namespace vcpu::aarch64
