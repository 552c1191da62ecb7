#pragma once
// Guest RAM for loader tests: a guest_memory region with guard bytes on both sides, every byte
// starting as `fill`, so a test can check what a load wrote, that the guards stayed intact and
// that a refused load wrote nothing at all.
#include <vcpu/memory.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace vcpu_test {

struct guarded_ram {
    static constexpr std::size_t guard = 4096;
    static constexpr std::byte fill{0xa5};
    std::uint64_t base;
    std::vector<std::byte> host;
    vcpu::guest_memory mem;
    guarded_ram(std::uint64_t gpa, std::size_t size) : base(gpa), host(size + 2 * guard, fill) {
        REQUIRE(mem.add({gpa, std::span<std::byte>(host).subspan(guard, size)}));
    }
    [[nodiscard]] std::size_t size() const { return host.size() - 2 * guard; }
    /// The byte at guest address `gpa`.
    [[nodiscard]] std::byte at(std::uint64_t gpa) const { return host[guard + (gpa - base)]; }
    /// `n` bytes from guest address `gpa`.
    [[nodiscard]] std::span<const std::byte> at(std::uint64_t gpa, std::size_t n) const {
        return std::span<const std::byte>(host).subspan(guard + (gpa - base), n);
    }
    /// Nothing written: RAM and guards all `fill`.
    [[nodiscard]] bool untouched() const {
        return std::all_of(host.begin(), host.end(), [](std::byte b) { return b == fill; });
    }
    [[nodiscard]] bool guards_intact() const {
        return std::all_of(host.begin(), host.begin() + guard, [](std::byte b) { return b == fill; }) &&
               std::all_of(host.end() - guard, host.end(), [](std::byte b) { return b == fill; });
    }
};

} // namespace vcpu_test
