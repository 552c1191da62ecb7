#pragma once
/// \file
/// `loaded_image`: where the object (the test executable, or a shared object) that holds some
/// guest code sits in this process, as page-rounded `PT_LOAD` ranges — what every guest loader
/// maps into the guest at the same addresses.

#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include <link.h>

namespace vcpu::guest {

/// The loaded object that contains a given address, found with `dl_iterate_phdr`.
struct loaded_image {
    /// One `PT_LOAD` segment, widened to whole 4 KiB pages.
    struct segment {
        std::uint64_t lo = 0;  ///< first byte, page aligned
        std::uint64_t hi = 0;  ///< one past the last byte, page aligned
        bool writable = false;        ///< `PF_W`
    };
    /// Segments kept per object; further ones are ignored.
    static constexpr std::size_t max_segments = 16;

    std::array<segment, max_segments> segments{}; ///< the first `count` are valid
    std::size_t count = 0;                        ///< segments found
    std::uint64_t lo = ~std::uint64_t{0};         ///< lowest segment start
    std::uint64_t hi = 0;                         ///< highest segment end

    /// Fills `out` with the object whose `PT_LOAD` segments hold `code`; false when no loaded
    /// object holds it (or it has no non-empty segment).
    [[nodiscard]] static bool containing(const void* code, loaded_image& out) noexcept {
        struct finder {
            std::uintptr_t addr;
            loaded_image* img;
            bool found;
        } f{reinterpret_cast<std::uintptr_t>(code), &out, false};
        ::dl_iterate_phdr(
            [](dl_phdr_info* info, std::size_t, void* data) -> int {
                auto& f = *static_cast<finder*>(data);
                bool mine = false;
                for (int i = 0; i < info->dlpi_phnum; ++i) {
                    const auto& p = info->dlpi_phdr[i];
                    const std::uintptr_t a = info->dlpi_addr + p.p_vaddr;
                    if (p.p_type == PT_LOAD && f.addr >= a && f.addr - a < p.p_memsz) mine = true;
                }
                if (!mine) return 0;
                f.found = true;
                loaded_image& s = *f.img;
                s = loaded_image{};
                for (int i = 0; i < info->dlpi_phnum; ++i) {
                    const auto& p = info->dlpi_phdr[i];
                    if (p.p_type != PT_LOAD || p.p_memsz == 0 || s.count == max_segments) continue;
                    const std::uint64_t a = info->dlpi_addr + p.p_vaddr;
                    segment g{a & ~std::uint64_t{0xfff}, (a + p.p_memsz + 0xfff) & ~std::uint64_t{0xfff},
                              (p.p_flags & PF_W) != 0};
                    s.segments[s.count++] = g;
                    if (g.lo < s.lo) s.lo = g.lo;
                    if (g.hi > s.hi) s.hi = g.hi;
                }
                return 1;
            },
            &f);
        return f.found && out.count != 0;
    }
};

/// Host bytes from guest virtual address `gva` to the end of its mapping in a guest address
/// space laid out as the loaders build it: the executable's range `[lo, hi)` copied to guest
/// physical `image`, and an identity map of the first `identity_gib` GiB. Empty when `gva` is in
/// neither or its guest physical address is not in `mem`.
[[nodiscard]] inline std::span<const std::byte> image_space_bytes(const guest_memory* mem, std::uint64_t image,
                                                                  unsigned identity_gib, std::uint64_t lo,
                                                                  std::uint64_t hi, std::uint64_t gva) noexcept {
    if (mem == nullptr) return {};
    std::uint64_t gpa = 0, end = 0;
    if (gva >= lo && gva < hi) {
        gpa = image + (gva - lo);
        end = image + (hi - lo);
    } else if (gva < (std::uint64_t{identity_gib} << 30)) {
        gpa = gva;
        end = std::uint64_t{identity_gib} << 30;
    } else {
        return {};
    }
    for (const auto& r : mem->regions())
        if (r.contains(gpa, 1)) {
            const std::uint64_t stop = end < r.gpa + r.size() ? end : r.gpa + r.size();
            return r.host.subspan(static_cast<std::size_t>(gpa - r.gpa), static_cast<std::size_t>(stop - gpa));
        }
    return {};
}

} // namespace vcpu::guest
