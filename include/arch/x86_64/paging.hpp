#pragma once
/// \file
/// `vcpu::x86_64::translate`: a guest-virtual to guest-physical walk of the guest's own page
/// tables, as the MMU does it (SDM Vol. 3A, 4.3 32-bit paging, 4.4 PAE paging, 4.5 4-level and
/// 5-level paging), for a debugger or an emulator that needs guest memory by the addresses the
/// guest uses. Reads the tables through a callable, so it needs no KVM and no RAM layout:
/// `read(gpa) -> std::optional<std::uint64_t>` (the 8 bytes at `gpa`, nullopt when not RAM; the
/// 32-bit walk uses the low 4). Access rights are not checked: a debugger may read what the
/// guest may not.

#include <cstdint>
#include <optional>

namespace vcpu::x86_64 {

/// The paging controls a walk needs, from `kvm_sregs`.
struct paging_mode {
    std::uint64_t cr0 = 0;  ///< CR0 (PG bit 31)
    std::uint64_t cr3 = 0;  ///< CR3: the root table
    std::uint64_t cr4 = 0;  ///< CR4 (PSE bit 4, PAE bit 5, LA57 bit 12)
    std::uint64_t efer = 0; ///< IA32_EFER (LMA bit 10)
};

/// Where a guest-virtual address lands.
struct translation {
    std::uint64_t gpa = 0;        ///< the guest-physical address
    std::uint64_t page_bytes = 0; ///< size of the page it is in (4 KiB, 2/4 MiB, 1 GiB; 0 without paging)
    /// Bytes from `gpa` to the end of its page (what one contiguous access may cover).
    [[nodiscard]] constexpr std::uint64_t bytes_to_page_end() const noexcept {
        return page_bytes == 0 ? ~std::uint64_t{0} : page_bytes - (gpa & (page_bytes - 1));
    }
};

namespace detail::paging {
inline constexpr std::uint64_t present = 1;
inline constexpr std::uint64_t page_size = 1u << 7; // PS in a PDPTE/PDE
inline constexpr std::uint64_t address_mask = 0x000f'ffff'ffff'f000ull; // bits 51:12 (MAXPHYADDR <= 52)
} // namespace detail::paging

/// Translates `gva` under `m`, reading page-table entries with `read`; nullopt when an entry on
/// the way is not present or not readable as RAM, or when a 4/5-level address is not canonical.
/// Without paging (CR0.PG clear) the address is the physical one.
template <class Read>
[[nodiscard]] constexpr std::optional<translation> translate(const paging_mode& m, std::uint64_t gva, Read&& read) {
    using namespace detail::paging;
    if ((m.cr0 & (1ull << 31)) == 0) return translation{gva, 0};
    const bool pae = (m.cr4 & (1u << 5)) != 0;
    const bool long_mode = (m.efer & (1u << 10)) != 0;
    if (long_mode) {
        const bool la57 = (m.cr4 & (1u << 12)) != 0;
        const unsigned va_bits = la57 ? 57 : 48;
        // Canonical: bits 63..va_bits-1 all equal.
        const auto top = static_cast<std::int64_t>(gva) >> (va_bits - 1);
        if (top != 0 && top != -1) return std::nullopt;
        std::uint64_t table = m.cr3 & address_mask;
        for (int level = la57 ? 5 : 4; level >= 1; --level) {
            const unsigned shift = 12 + 9 * static_cast<unsigned>(level - 1);
            auto e = read(table + ((gva >> shift) & 0x1ff) * 8);
            if (!e || (*e & present) == 0) return std::nullopt;
            const bool leaf = level == 1 || ((level == 2 || level == 3) && (*e & page_size) != 0);
            if (leaf) {
                const std::uint64_t bytes = std::uint64_t{1} << shift;
                const std::uint64_t base = *e & address_mask & ~(bytes - 1);
                return translation{base | (gva & (bytes - 1)), bytes};
            }
            table = *e & address_mask;
        }
        return std::nullopt;
    }
    const std::uint64_t va = gva & 0xffff'ffffu;
    if (pae) {
        // Four PDPTEs at CR3[31:5]; then 2 MiB or 4 KiB pages with 8-byte entries.
        auto pdpte = read((m.cr3 & 0xffff'ffe0u) + ((va >> 30) & 3) * 8);
        if (!pdpte || (*pdpte & present) == 0) return std::nullopt;
        auto pde = read((*pdpte & address_mask) + ((va >> 21) & 0x1ff) * 8);
        if (!pde || (*pde & present) == 0) return std::nullopt;
        if ((*pde & page_size) != 0)
            return translation{(*pde & address_mask & ~0x1f'ffffull) | (va & 0x1f'ffff), 0x20'0000};
        auto pte = read((*pde & address_mask) + ((va >> 12) & 0x1ff) * 8);
        if (!pte || (*pte & present) == 0) return std::nullopt;
        return translation{(*pte & address_mask) | (va & 0xfff), 0x1000};
    }
    // 32-bit paging: 4-byte entries; 4 MiB pages with CR4.PSE (bits 39:32 from PDE bits 20:13).
    auto pde = read((m.cr3 & 0xffff'f000u) + ((va >> 22) & 0x3ff) * 4);
    if (!pde) return std::nullopt;
    const std::uint64_t d = *pde & 0xffff'ffffu;
    if ((d & present) == 0) return std::nullopt;
    if ((d & page_size) != 0 && (m.cr4 & (1u << 4)) != 0) {
        const std::uint64_t base = (d & 0xffc0'0000u) | (((d >> 13) & 0xff) << 32);
        return translation{base | (va & 0x3f'ffff), 0x40'0000};
    }
    auto pte = read((d & 0xffff'f000u) + ((va >> 12) & 0x3ff) * 4);
    if (!pte) return std::nullopt;
    const std::uint64_t t = *pte & 0xffff'ffffu;
    if ((t & present) == 0) return std::nullopt;
    return translation{(t & 0xffff'f000u) | (va & 0xfff), 0x1000};
}

} // namespace vcpu::x86_64
