#pragma once
/// \file
/// CSR descriptors by number, in a table checked at compile time to be
/// sorted and free of duplicates, so trap handlers can be indexed by CSR
/// number with a binary search (the same check Linux's `kvm_arm_init` makes on
/// the arm64 sys-reg tables at boot, moved to compile time).
///
/// Numbers: RISC-V privileged spec, chapter "Control and Status Registers"
/// (Table "Currently allocated RISC-V supervisor-level CSR addresses",
/// "... hypervisor and VS CSR addresses", "... unprivileged CSR addresses").
/// CSR number bits [9:8] give the lowest privilege that may access it and
/// bits [11:10] = 0b11 mark it read-only (spec §2.1 "CSR Address Mapping
/// Conventions").

#include <vcpu/config.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace vcpu::riscv64 {

/// One CSR: name and 12-bit number.
struct csr_desc {
    std::string_view name;  ///< the spec's name, e.g. "sstatus"
    std::uint16_t number = 0;  ///< the 12-bit CSR address

    /// Read-only by the address convention (bits [11:10] == 0b11).
    [[nodiscard]] constexpr bool read_only() const noexcept { return ((number >> 10) & 3u) == 3u; }
    /// Lowest privilege that may access it: 0 U, 1 S (and HS), 2 hypervisor/VS, 3 M.
    [[nodiscard]] constexpr unsigned privilege() const noexcept { return (number >> 8) & 3u; }
};

namespace detail {
/// True when `t` is strictly increasing by number (sorted and unique) and
/// every number fits in 12 bits.
template <std::size_t N>
[[nodiscard]] constexpr bool csr_table_ok(const std::array<csr_desc, N>& t) noexcept {
    for (std::size_t i = 0; i < N; ++i) {
        if (t[i].number > 0xfff) return false;
        if (i > 0 && t[i - 1].number >= t[i].number) return false;
    }
    return true;
}
} // namespace detail

/// Lookup over a CSR table `Table` (a `std::array<csr_desc, N>` with static
/// storage). Instantiating it checks the table: unsorted or duplicate
/// numbers do not compile.
template <const auto& Table>
struct csr_index {
    static_assert(detail::csr_table_ok(Table),
                  "vcpu riscv64: CSR table must be sorted by CSR number with no duplicates "
                  "(and numbers < 0x1000)");

    /// Number of CSRs in the table.
    static constexpr std::size_t size = Table.size();

    /// The descriptor of CSR `number`, or null (binary search). Same shape as
    /// `aarch64::sysreg_table::find`: a pointer into the static table.
    [[nodiscard]] static constexpr const csr_desc* find(std::uint32_t number) noexcept {
        std::size_t lo = 0, hi = Table.size();
        while (lo < hi) {
            const std::size_t mid = lo + (hi - lo) / 2;
            if (Table[mid].number == number) return &Table[mid];
            if (Table[mid].number < number) lo = mid + 1;
            else hi = mid;
        }
        return nullptr;
    }
    /// The CSR's name, or "" when it is not in the table.
    [[nodiscard]] static constexpr std::string_view name(std::uint32_t number) noexcept {
        const csr_desc* d = find(number);
        return d != nullptr ? d->name : std::string_view{};
    }
};

namespace csr {
// Supervisor (privileged spec, Table "supervisor-level CSR addresses").
/// @{
/// Supervisor CSR numbers, by their spec names.
inline constexpr std::uint16_t sstatus = 0x100, sie = 0x104, stvec = 0x105, scounteren = 0x106,
                               senvcfg = 0x10a, sscratch = 0x140, sepc = 0x141, scause = 0x142,
                               stval = 0x143, sip = 0x144, stimecmp = 0x14d, satp = 0x180;
/// @}
// Virtual supervisor (H extension).
/// @{
/// Virtual-supervisor CSR numbers (H extension), by their spec names.
inline constexpr std::uint16_t vsstatus = 0x200, vsie = 0x204, vstvec = 0x205, vsscratch = 0x240,
                               vsepc = 0x241, vscause = 0x242, vstval = 0x243, vsip = 0x244,
                               vstimecmp = 0x24d, vsatp = 0x280;
/// @}
// Hypervisor (H extension).
/// @{
/// Hypervisor CSR numbers (H extension), by their spec names.
inline constexpr std::uint16_t hstatus = 0x600, hedeleg = 0x602, hideleg = 0x603, hie = 0x604,
                               htimedelta = 0x605, hcounteren = 0x606, hgeie = 0x607,
                               henvcfg = 0x60a, htval = 0x643, hip = 0x644, hvip = 0x645,
                               htinst = 0x64a, hgatp = 0x680, hgeip = 0xe12;
/// @}
// Unprivileged counters and entropy.
/// @{
/// The entropy source and the unprivileged counters.
inline constexpr std::uint16_t seed = 0x015, cycle = 0xc00, time = 0xc01, instret = 0xc02;
/// @}
} // namespace csr

/// The CSRs a RISC-V hypervisor meets when the guest traps, sorted by number.
inline constexpr std::array<csr_desc, 40> csr_table{{
    {"seed", csr::seed},
    {"sstatus", csr::sstatus},
    {"sie", csr::sie},
    {"stvec", csr::stvec},
    {"scounteren", csr::scounteren},
    {"senvcfg", csr::senvcfg},
    {"sscratch", csr::sscratch},
    {"sepc", csr::sepc},
    {"scause", csr::scause},
    {"stval", csr::stval},
    {"sip", csr::sip},
    {"stimecmp", csr::stimecmp},
    {"satp", csr::satp},
    {"vsstatus", csr::vsstatus},
    {"vsie", csr::vsie},
    {"vstvec", csr::vstvec},
    {"vsscratch", csr::vsscratch},
    {"vsepc", csr::vsepc},
    {"vscause", csr::vscause},
    {"vstval", csr::vstval},
    {"vsip", csr::vsip},
    {"vstimecmp", csr::vstimecmp},
    {"vsatp", csr::vsatp},
    {"hstatus", csr::hstatus},
    {"hedeleg", csr::hedeleg},
    {"hideleg", csr::hideleg},
    {"hie", csr::hie},
    {"htimedelta", csr::htimedelta},
    {"hcounteren", csr::hcounteren},
    {"hgeie", csr::hgeie},
    {"henvcfg", csr::henvcfg},
    {"htval", csr::htval},
    {"hip", csr::hip},
    {"hvip", csr::hvip},
    {"htinst", csr::htinst},
    {"hgatp", csr::hgatp},
    {"cycle", csr::cycle},
    {"time", csr::time},
    {"instret", csr::instret},
    {"hgeip", csr::hgeip},
}};

/// Lookup over `csr_table` (instantiated here, so the table is checked by
/// every translation unit that includes this header).
using csrs = csr_index<csr_table>;
static_assert(csrs::size == csr_table.size());

} // namespace vcpu::riscv64
