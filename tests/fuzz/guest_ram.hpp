#pragma once
// Guest RAM for the loader harnesses: one static buffer laid out as
//   [canary 4 KiB][RAM backing, up to max_backing][canary 4 KiB]
// with only the RAM part registered in a vcpu::basic_guest_memory, so a loader write outside
// guest memory shows as a changed canary (and past the buffer as an ASan report). Also the
// e820 checks shared by the bzImage and PVH harnesses.
#include "fuzz.hpp"

#include <arch/x86_64/linux_boot.hpp>
#include <vcpu/memory.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace vcpu_fuzz {

inline constexpr std::size_t canary_bytes = 4096;
inline constexpr std::size_t max_backing = 3u << 20; ///< 3 MiB of RAM at most
inline constexpr std::byte canary_fill{0xc5};
/// What RAM holds before a load in the places the loaders write, to see an early error wrote nothing.
inline constexpr std::byte untouched_fill{0x3c};

/// True when the `n` bytes at `p` all equal `b` (memcmp against a filled block: a byte loop
/// would be instrumented compare by compare and dominate the run time).
inline bool all_equal(const std::byte* p, std::size_t n, std::byte b) noexcept {
    static std::array<std::byte, 4096> blocks[3] = {};
    auto& ref = blocks[b == canary_fill ? 0 : b == untouched_fill ? 1 : 2];
    if (ref[0] != b) ref.fill(b);
    for (std::size_t i = 0; i < n; i += ref.size()) {
        const std::size_t k = n - i < ref.size() ? n - i : ref.size();
        if (std::memcmp(p + i, ref.data(), k) != 0) return false;
    }
    return true;
}

class guest_ram {
public:
    /// RAM of `ram_size` bytes at GPA 0, backed by min(ram_size, max_backing) bytes (less by
    /// `short_by` to fake a guest memory smaller than the RAM the loader is told about).
    guest_ram(std::uint64_t ram_size, std::size_t short_by) {
        static std::vector<std::byte> buf(canary_bytes + max_backing + canary_bytes);
        buf_ = buf.data();
        backing_ = ram_size < max_backing ? static_cast<std::size_t>(ram_size) : max_backing;
        backing_ = short_by < backing_ ? backing_ - short_by : 0;
        std::memset(buf_, static_cast<int>(canary_fill), canary_bytes);
        std::memset(buf_ + canary_bytes + backing_, static_cast<int>(canary_fill),
                    canary_bytes + (max_backing - backing_) < canary_bytes ? 0 : canary_bytes);
        if (backing_ != 0) VCPU_FUZZ_CHECK(mem.add({0, std::span<std::byte>(ram(), backing_), false}));
    }
    [[nodiscard]] std::byte* ram() const noexcept { return buf_ + canary_bytes; }
    [[nodiscard]] std::size_t backing() const noexcept { return backing_; }
    [[nodiscard]] bool canaries_intact() const noexcept {
        return all_equal(buf_, canary_bytes, canary_fill) &&
               all_equal(buf_ + canary_bytes + backing_, canary_bytes, canary_fill);
    }
    /// Fills [gpa, gpa+len) ∩ backing with `untouched_fill`.
    void mark(std::uint64_t gpa, std::uint64_t len) noexcept {
        if (gpa >= backing_) return;
        const std::size_t n = static_cast<std::size_t>(len < backing_ - gpa ? len : backing_ - gpa);
        std::memset(ram() + gpa, static_cast<int>(untouched_fill), n);
    }
    [[nodiscard]] bool still_marked(std::uint64_t gpa, std::uint64_t len) const noexcept {
        if (gpa >= backing_) return true;
        const std::size_t n = static_cast<std::size_t>(len < backing_ - gpa ? len : backing_ - gpa);
        return all_equal(ram() + gpa, n, untouched_fill);
    }
    /// Guest bytes [gpa, gpa+len), which the caller knows lie in the backing.
    [[nodiscard]] std::span<const std::byte> at(std::uint64_t gpa, std::size_t len) const {
        VCPU_FUZZ_CHECK(gpa <= backing_ && len <= backing_ - gpa);
        return {ram() + gpa, len};
    }
    template <class T>
    [[nodiscard]] T get(std::uint64_t gpa) const {
        const auto b = at(gpa, sizeof(T));
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(b[i])} << (8 * i);
        return static_cast<T>(v);
    }

    vcpu::basic_guest_memory<2> mem;

private:
    std::byte* buf_ = nullptr;
    std::size_t backing_ = 0;
};

/// An e820 map a loader wrote: every entry non-empty and not wrapping, sorted, non-overlapping;
/// RAM entries inside [0, ram_size) and clear of the reserved ranges the loaders document
/// (boot_layout: the EBDA/MP-table KiB at 0x9fc00 and the BIOS area 0xe0000..1 MiB); reserved
/// entries inside those ranges; no other types; and usable RAM below 1 MiB as well as above it.
inline void check_e820(std::span<const vcpu::x86_64::e820_entry> map, std::uint64_t ram_size) {
    namespace bl = vcpu::x86_64::boot_layout;
    struct range {
        std::uint64_t lo, hi;
    };
    const range reserved[] = {{bl::low_ram_end, 0xa0000}, {bl::bios_rom, bl::high_ram}};
    std::uint64_t prev_end = 0, ram_total = 0;
    for (std::size_t i = 0; i < map.size(); ++i) {
        const auto& e = map[i];
        VCPU_FUZZ_CHECK(e.size != 0);
        VCPU_FUZZ_CHECK(e.addr + e.size > e.addr); // no wrap
        VCPU_FUZZ_CHECK(i == 0 || e.addr >= prev_end);
        prev_end = e.addr + e.size;
        if (e.type == vcpu::x86_64::e820_type::ram) {
            VCPU_FUZZ_CHECK(prev_end <= ram_size);
            for (const auto& r : reserved) VCPU_FUZZ_CHECK(prev_end <= r.lo || e.addr >= r.hi);
            ram_total += e.size;
        } else {
            VCPU_FUZZ_CHECK(e.type == vcpu::x86_64::e820_type::reserved);
            bool in = false;
            for (const auto& r : reserved) in = in || (e.addr >= r.lo && prev_end <= r.hi);
            VCPU_FUZZ_CHECK(in);
        }
    }
    VCPU_FUZZ_CHECK(ram_total <= ram_size);
}

/// True when guest bytes `a` equal input bytes `b`.
inline bool same_as(std::span<const std::byte> a, std::span<const std::uint8_t> b) noexcept {
    return a.size() == b.size() && (b.empty() || std::memcmp(a.data(), b.data(), b.size()) == 0);
}

/// A loader error names its operation and says what went wrong.
inline void check_error(const vcpu::error& e, std::initializer_list<std::string_view> ops) {
    bool known = false;
    for (auto op : ops) known = known || std::string_view(e.op) == op;
    VCPU_FUZZ_CHECK(known);
    VCPU_FUZZ_CHECK(e.code != 0);
    VCPU_FUZZ_CHECK(e.detail != nullptr && e.detail[0] != '\0');
    VCPU_FUZZ_CHECK(!e.message().empty());
}

} // namespace vcpu_fuzz
