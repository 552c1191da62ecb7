#pragma once
/// \file
/// Guest physical memory as the host sees it: a small, fixed-capacity map of
/// regions (guest physical address → host bytes) with bounds-checked
/// translation. Loaders and boot-state policies write guest memory only
/// through it, so a bad address or size is an error, never a stray write.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu {

/// One contiguous range of guest physical memory backed by host bytes.
struct guest_region {
    std::uint64_t gpa = 0;  ///< guest physical address of the first byte
    std::span<std::byte> host;  ///< the host bytes that back the region (its length is the region's size)
    bool read_only = false;  ///< writes through this map fail with `EACCES` (a ROM image)

    /// Size of the region in bytes.
    [[nodiscard]] constexpr std::uint64_t size() const noexcept { return host.size(); }
    /// True when `[addr, addr+len)` lies inside this region (overflow-safe).
    [[nodiscard]] constexpr bool contains(std::uint64_t addr, std::uint64_t len) const noexcept {
        return addr >= gpa && addr - gpa <= size() && len <= size() - (addr - gpa);
    }
};

/// Up to `MaxRegions` non-overlapping guest regions.
template <std::size_t MaxRegions = 8>
class basic_guest_memory {
public:
    /// Adds a region; fails with `EEXIST` on overlap, `ENOSPC` when full,
    /// `EOVERFLOW` when `gpa + size` wraps.
    [[nodiscard]] result<void> add(guest_region r) noexcept {
        if (count_ == MaxRegions)
            return error{"add guest region", ENOSPC, "region table full"}
                .with_range("gpa", r.gpa, r.size())
                .with("capacity", MaxRegions);
        if (r.size() != 0 && r.gpa + (r.size() - 1) < r.gpa)
            return error{"add guest region", EOVERFLOW, "region wraps the address space"}
                .with_hex("gpa", r.gpa)
                .with_hex("size", r.size());
        for (std::size_t i = 0; i < count_; ++i) {
            const auto& o = regions_[i];
            // One start lies inside the other range. Never forms `gpa + size`, which is 0 for a
            // region ending at 2^64; neither range wraps (checked above), so the unsigned
            // differences are exact.
            if (r.gpa - o.gpa < o.size() || o.gpa - r.gpa < r.size())
                return error{"add guest region", EEXIST, "region overlaps an existing one"}
                    .with_range("gpa", r.gpa, r.size())
                    .with_range("existing", o.gpa, o.size());
        }
        regions_[count_++] = r;
        return ok();
    }

    /// Host bytes for `[gpa, gpa+len)` when they lie in one region, else empty.
    [[nodiscard]] std::span<std::byte> at(std::uint64_t gpa, std::uint64_t len) const noexcept {
        for (std::size_t i = 0; i < count_; ++i) {
            const auto& r = regions_[i];
            if (r.contains(gpa, len))
                return r.host.subspan(static_cast<std::size_t>(gpa - r.gpa),
                                      static_cast<std::size_t>(len));
        }
        return {};
    }

    /// Copies `src` to guest address `gpa` (writable regions only).
    [[nodiscard]] result<void> write(std::uint64_t gpa, std::span<const std::byte> src) noexcept {
        for (std::size_t i = 0; i < count_; ++i) {
            const auto& r = regions_[i];
            if (r.contains(gpa, src.size())) {
                if (r.read_only)
                    return error{"write guest memory", EACCES, "region is read-only"}
                        .with_range("gpa", gpa, src.size())
                        .with_range("region", r.gpa, r.size());
                if (!src.empty())
                    std::memcpy(r.host.data() + (gpa - r.gpa), src.data(), src.size());
                return ok();
            }
        }
        return error{"write guest memory", EFAULT, "range is not inside one guest region"}
            .with_range("gpa", gpa, src.size());
    }

    /// Copies guest bytes at `gpa` into `dst`.
    [[nodiscard]] result<void> read(std::uint64_t gpa, std::span<std::byte> dst) const noexcept {
        auto s = at(gpa, dst.size());
        if (s.size() != dst.size() || (dst.empty() && !covers(gpa)))
            return error{"read guest memory", EFAULT, "range is not inside one guest region"}
                .with_range("gpa", gpa, dst.size());
        if (!dst.empty()) std::memcpy(dst.data(), s.data(), dst.size());
        return ok();
    }

    /// Writes an integer in little-endian order.
    template <class T>
    [[nodiscard]] result<void> write_le(std::uint64_t gpa, T v) noexcept {
        std::array<std::byte, sizeof(T)> b{};
        for (std::size_t i = 0; i < sizeof(T); ++i)
            b[i] = static_cast<std::byte>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
        return write(gpa, b);
    }

    /// The regions added so far, in the order they were added.
    [[nodiscard]] std::span<const guest_region> regions() const noexcept {
        return {regions_.data(), count_};
    }

private:
    [[nodiscard]] bool covers(std::uint64_t gpa) const noexcept {
        for (std::size_t i = 0; i < count_; ++i)
            if (regions_[i].contains(gpa, 0)) return true;
        return false;
    }
    std::array<guest_region, MaxRegions> regions_{};
    std::size_t count_ = 0;
};

/// A guest memory map with the default capacity of regions.
using guest_memory = basic_guest_memory<>;

} // namespace vcpu
