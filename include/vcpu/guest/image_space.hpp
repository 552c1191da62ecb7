#pragma once
/// \file
/// The architecture-neutral half of the AArch64 and RISC-V guest-code loaders: the running
/// executable copied into guest RAM and mapped by 4-level, 4 KiB-granule page tables at **the
/// same virtual addresses it has in the host process** (as the x86-64 loader does, see
/// docs/guest-code.md), plus an identity map of `[0, identity_gib GiB)` in 2 MiB blocks (guest
/// RAM and MMIO; GVA = GPA there).
///
/// Both architectures walk the same shape: 48-bit virtual addresses, four levels of 512 8-byte
/// entries (AArch64 VMSAv8-64 with TG0 = 4 KiB and T0SZ = 16, ARM ARM D8.2; RISC-V Sv48,
/// privileged spec §12.5), so one builder serves both and only the entry format differs: a
/// `PageFormat` policy (`vcpu/guest/aarch64_loader.hpp`, `vcpu/guest/riscv64_loader.hpp`) gives
///
///     static std::uint64_t table(std::uint64_t pa);                 // next-level table entry
///     static std::uint64_t page(std::uint64_t pa, bool writable);   // 4 KiB normal memory
///     static std::uint64_t block(std::uint64_t pa, bool ram);       // 2 MiB, RAM or device
///     static bool is_table(std::uint64_t entry);                    // valid, points to a table
///     static bool is_valid(std::uint64_t entry);
///     static std::uint64_t address(std::uint64_t entry);            // the address it holds
///
/// Setup code: no allocation, no exceptions; errors name the operation. Needs
/// `dl_iterate_phdr` (Linux); compiles for every host architecture, so the mock-HAL tests of
/// every guest architecture run everywhere.

#include <vcpu/config.hpp>
#include <vcpu/guest/call.hpp>
#include <vcpu/guest/loaded_image.hpp>
#include <vcpu/guest/calls.hpp>
#include <vcpu/guest/ucall.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>


namespace vcpu::guest {

/// Where a loader puts things in guest physical memory (all of it guest RAM).
struct image_layout {
    std::uint64_t runtime = 0;            ///< page-table pool, then the stack
    std::uint64_t image = 0;              ///< the executable's pages (as many as it spans)
    unsigned identity_gib = 4;            ///< GVA = GPA over [0, identity_gib GiB), 2 MiB blocks
    std::uint64_t stack_bytes = 0x40000;  ///< the guest stack
};

/// Byte offsets inside `image_layout::runtime`.
namespace image_offset {
inline constexpr std::uint64_t tables = 0x0;      ///< page-table pool
inline constexpr std::uint64_t max_tables = 128;  ///< 512 KiB of tables
inline constexpr std::uint64_t stack = tables + max_tables * 0x1000;  ///< the guest stack, after the table pool
} // namespace image_offset

/// The format of page-table entries (see the file comment).
template <class F>
concept PageFormat = requires(std::uint64_t v, bool b) {
    { F::table(v) } -> std::same_as<std::uint64_t>;
    { F::page(v, b) } -> std::same_as<std::uint64_t>;
    { F::block(v, b) } -> std::same_as<std::uint64_t>;
    { F::is_table(v) } -> std::same_as<bool>;
    { F::is_valid(v) } -> std::same_as<bool>;
    { F::address(v) } -> std::same_as<std::uint64_t>;
};

/// The executable holding some code, copied into guest RAM and mapped at its own addresses by
/// 4-level tables of format `F`. Models `GuestAddressSpace`. Copyable (it refers to the memory).
template <PageFormat F>
class image_space {
public:
    /// Copies the executable holding `code` into `mem` and builds the tables (see the file
    /// comment). Fails with ENOENT (no object holds `code`), ENOSPC (the image or the tables do
    /// not fit), EADDRINUSE (the executable's addresses cover the runtime area or the image copy)
    /// or EFAULT (a layout area is not guest RAM). `op` names the caller in errors.
    [[nodiscard]] static result<image_space> load(guest_memory& mem, const void* code, const image_layout& l,
                                                  const char* op) noexcept {
        image_space s;
        s.mem_ = &mem;
        s.layout_ = l;
        if (l.identity_gib == 0 || l.identity_gib > 512)
            return error{op, EINVAL, "identity_gib must be 1..512"}.with("identity_gib", l.identity_gib);
        const std::uint64_t runtime_bytes = image_offset::stack + l.stack_bytes;
        if ((l.runtime & 0xfff) != 0 || (l.image & 0xfff) != 0 || (l.stack_bytes & 0xf) != 0 ||
            mem.at(l.runtime, runtime_bytes).empty())
            return error{op, EFAULT, "runtime area is not page-aligned guest RAM"}.with_range("runtime", l.runtime,
                                                                                            runtime_bytes);
        if (auto e = s.find_image(code, op); !e) return e.err();
        const std::uint64_t span = s.hi_ - s.lo_;
        if (mem.at(l.image, span).empty())
            return error{op, ENOSPC, "the executable does not fit in guest RAM at the image address"}
                .with_range("image", l.image, span);
        auto overlaps = [&](std::uint64_t a, std::uint64_t n) { return a < s.hi_ && s.lo_ < a + n; };
        if (overlaps(l.runtime, runtime_bytes) || overlaps(l.image, span))
            return error{op, EADDRINUSE, "the executable's addresses cover the runtime area or the image copy"}
                .with_range("executable", s.lo_, span);

        auto rt = mem.at(l.runtime, runtime_bytes);
        std::memset(rt.data(), 0, rt.size());
        s.next_table_ = 0;
        const std::uint64_t root = s.alloc_table();
        for (std::size_t i = 0; i < s.nsegments_; ++i) {
            const auto& g = s.segments_[i];
            for (std::uint64_t va = g.lo; va < g.hi; va += 0x1000) {
                const std::uint64_t gpa = l.image + (va - s.lo_);
                std::memcpy(mem.at(gpa, 0x1000).data(), reinterpret_cast<const void*>(va), 0x1000);
                if (auto e = s.map_page(root, va, gpa, g.writable, op); !e) return e.err();
            }
        }
        for (std::uint64_t va = 0; va < (std::uint64_t{l.identity_gib} << 30); va += 0x200000)
            if (auto e = s.map_block(root, va, op); !e) return e.err();
        s.root_ = root;
        return s;
    }

    // ---- GuestAddressSpace -------------------------------------------------------------------

    /// Host bytes of `[gva, gva + len)` when the range lies in one mapping, else empty.
    [[nodiscard]] std::span<const std::byte> bytes(std::uint64_t gva, std::uint64_t len) const noexcept {
        const auto c = contiguous(gva);
        if (c.size() < len) return {};
        return c.first(static_cast<std::size_t>(len));
    }
    /// Host bytes from `gva` to the end of its mapping (the image copy, or identity-mapped RAM).
    [[nodiscard]] std::span<const std::byte> contiguous(std::uint64_t gva) const noexcept {
        return image_space_bytes(mem_, layout_.image, layout_.identity_gib, lo_, hi_, gva);
    }

    /// The guest physical address `gva` maps to, by walking the tables the guest uses (0 when
    /// unmapped). For tests of the loader.
    [[nodiscard]] std::uint64_t translate(std::uint64_t gva) const noexcept {
        std::uint64_t table = root_;
        for (unsigned level = 3;; --level) {
            const std::uint64_t e = read_entry(table, index(gva, level));
            if (!F::is_valid(e)) return 0;
            if (level == 0 || !F::is_table(e)) {
                const std::uint64_t size = std::uint64_t{1} << (12 + 9 * level);
                return F::address(e) + (gva & (size - 1));
            }
            table = F::address(e);
        }
    }

    // ---- layout ----------------------------------------------------------------------------

    /// The first guest physical address after the image copy (2 MiB aligned): guest RAM from
    /// there on is free for a test's buffers (identity-mapped when below `identity_gib` GiB).
    [[nodiscard]] std::uint64_t free_begin() const noexcept {
        return (layout_.image + (hi_ - lo_) + 0x1fffff) & ~std::uint64_t{0x1fffff};
    }
    /// The lowest virtual address of the executable's loaded segments.
    [[nodiscard]] std::uint64_t image_va() const noexcept { return lo_; }
    /// Bytes of the image, from `image_va()` to its end.
    [[nodiscard]] std::uint64_t image_bytes() const noexcept { return hi_ - lo_; }
    /// The top of the guest stack (16-byte aligned).
    [[nodiscard]] std::uint64_t stack_top() const noexcept {
        return layout_.runtime + image_offset::stack + layout_.stack_bytes;
    }
    /// The guest physical address of the top-level table (TTBR0_EL1 / satp.PPN).
    [[nodiscard]] std::uint64_t page_table_root() const noexcept { return root_; }
    /// The layout this space was built with.
    [[nodiscard]] const image_layout& layout() const noexcept { return layout_; }
    /// The guest memory the image and tables were written to.
    [[nodiscard]] guest_memory& memory() const noexcept { return *mem_; }

private:
    struct segment_range {
        std::uint64_t lo = 0, hi = 0;
        bool writable = false;
    };
    static constexpr std::size_t max_segments = loaded_image::max_segments;

    static constexpr unsigned index(std::uint64_t va, unsigned level) noexcept {
        return static_cast<unsigned>((va >> (12 + 9 * level)) & 511);
    }

    result<void> find_image(const void* code, const char* op) noexcept {
        loaded_image img;
        const bool found = loaded_image::containing(code, img);
        nsegments_ = img.count;
        for (std::size_t k = 0; k < img.count; ++k)
            segments_[k] = segment_range{img.segments[k].lo, img.segments[k].hi, img.segments[k].writable};
        lo_ = img.lo;
        hi_ = img.hi;
        if (!found)
            return error{op, ENOENT, "no loaded object holds the guest code"}.with_hex("code", reinterpret_cast<std::uintptr_t>(code));
        if (hi_ > (std::uint64_t{1} << 47))
            return error{op, ERANGE, "the executable lies above the 48-bit lower half the tables map"}.with_hex(
                "end", hi_);
        return ok();
    }

    std::uint64_t alloc_table() noexcept {
        if (next_table_ == image_offset::max_tables) return 0;
        return layout_.runtime + image_offset::tables + 0x1000 * next_table_++;
    }
    [[nodiscard]] std::uint64_t read_entry(std::uint64_t table, unsigned i) const noexcept {
        std::uint64_t v = 0;
        const auto b = mem_->at(table + 8 * i, 8);
        if (b.size() == 8) std::memcpy(&v, b.data(), 8);
        return v;
    }
    void write_entry(std::uint64_t table, unsigned i, std::uint64_t v) noexcept {
        std::memcpy(mem_->at(table + 8 * i, 8).data(), &v, 8);
    }
    /// The table entry `i` of `table` points to, allocated when absent.
    result<std::uint64_t> next_level(std::uint64_t table, unsigned i, const char* op) noexcept {
        const std::uint64_t e = read_entry(table, i);
        if (F::is_table(e)) return F::address(e);
        const std::uint64_t t = alloc_table();
        if (t == 0)
            return error{op, ENOSPC, "out of page tables"}.with("max_tables", image_offset::max_tables);
        write_entry(table, i, F::table(t));
        return t;
    }
    result<void> map_page(std::uint64_t root, std::uint64_t va, std::uint64_t gpa, bool writable,
                          const char* op) noexcept {
        std::uint64_t t = root;
        for (unsigned level = 3; level > 0; --level) {
            auto n = next_level(t, index(va, level), op);
            if (!n) return n.err();
            t = *n;
        }
        // A page two segments share keeps the more permissive mapping.
        const std::uint64_t old = read_entry(t, index(va, 0));
        if (!F::is_valid(old) || writable) write_entry(t, index(va, 0), F::page(gpa, writable));
        return ok();
    }
    /// A 2 MiB identity block at `va` (normal memory when guest RAM backs all of it, else
    /// device memory), unless the image already maps 4 KiB pages there.
    result<void> map_block(std::uint64_t root, std::uint64_t va, const char* op) noexcept {
        std::uint64_t t = root;
        for (unsigned level = 3; level > 1; --level) {
            auto n = next_level(t, index(va, level), op);
            if (!n) return n.err();
            t = *n;
        }
        if (!F::is_valid(read_entry(t, index(va, 1))))
            write_entry(t, index(va, 1), F::block(va, !mem_->at(va, 0x200000).empty()));
        return ok();
    }

    guest_memory* mem_ = nullptr;
    image_layout layout_{};
    std::array<segment_range, max_segments> segments_{};
    std::size_t nsegments_ = 0;
    std::uint64_t lo_ = 0, hi_ = 0;
    std::uint64_t next_table_ = 0;
    std::uint64_t root_ = 0;
};

} // namespace vcpu::guest
