// The flat (raw) test-image loader of vcpu/boot/flat_image.hpp, as vmm_arm64 / vmm_riscv64 use
// it for kvm-unit-tests style guests: detection (no Image magic, not gzip), placement byte by byte
// at RAM base + the arch's offset with the initrd below the DTB slot, and the bad cases — empty
// image, image or initrd that does not fit, load offset beyond RAM, misaligned load address,
// command line too long, RAM range not in guest memory — each a specific errno, with guard bytes
// around RAM and RAM itself checked untouched (a refused image writes nothing).
#include "guarded_ram.hpp"

#include <doctest/doctest.h>

#include <arch/aarch64/linux_boot.hpp>
#include <arch/riscv64/linux_boot.hpp>
#include <vcpu/boot/flat_image.hpp>

#include <algorithm>
#include <string_view>
#include <vector>

namespace {
namespace boot = vcpu::boot;
namespace a64 = vcpu::aarch64;
namespace rv = vcpu::riscv64;

using vcpu_test::guarded_ram;
constexpr std::byte fill = guarded_ram::fill;

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 7 + seed);
    return v;
}

} // namespace

TEST_CASE("is_flat_image: Image magic or gzip means Linux, anything else is a flat test image") {
    std::vector<std::byte> img = pattern(128, 1);
    CHECK(boot::is_flat_image(img, a64::image::magic_offset, a64::image::magic));
    for (int i = 0; i < 4; ++i) img[56 + i] = static_cast<std::byte>(a64::image::magic >> (8 * i));
    CHECK_FALSE(boot::is_flat_image(img, a64::image::magic_offset, a64::image::magic));
    CHECK(boot::is_flat_image(img, rv::image::magic2_offset, rv::image::magic2)); // arm64 magic is not RISC-V's
    const std::vector<std::byte> gz{std::byte{0x1f}, std::byte{0x8b}, std::byte{8}, std::byte{0}};
    CHECK_FALSE(boot::is_flat_image(gz, a64::image::magic_offset, a64::image::magic));
    CHECK(boot::is_flat_image({}, a64::image::magic_offset, a64::image::magic));
    CHECK(boot::is_flat_image(std::span(img).first(40), a64::image::magic_offset, a64::image::magic)); // short
}

TEST_CASE("load_flat_image: arm64 at RAM base + 0x80000, initrd below the DTB slot, byte by byte") {
    guarded_ram ram(0x4000'0000, 8u << 20);
    const auto img = pattern(3000, 3), env = pattern(100, 9);
    auto l = boot::load_flat_image<a64::image_format>(ram.mem, ram.base, ram.size(), boot::arm64_flat_offset, img, env,
                                                      20);
    REQUIRE(l);
    CHECK(l->entry == 0x4008'0000);
    CHECK(l->image_end == 0x4008'0000 + 3000);
    CHECK(l->dtb == 0x4060'0000); // last 2 MiB aligned slot of 8 MiB
    CHECK(l->dtb_max == a64::image_format::dtb_max);
    CHECK(l->initrd == ((0x4060'0000 - 100) & ~std::uint64_t{4095}));
    CHECK(l->initrd_size == 100);
    for (std::size_t i = 0; i < img.size(); ++i) REQUIRE(ram.at(l->entry + i) == img[i]);
    for (std::size_t i = 0; i < env.size(); ++i) REQUIRE(ram.at(l->initrd + i) == env[i]);
    CHECK(ram.at(l->entry - 1) == fill);
    CHECK(ram.at(l->image_end) == fill);
    CHECK(ram.guards_intact());
}

TEST_CASE("load_flat_image: RISC-V at RAM base, no initrd") {
    guarded_ram ram(0x8000'0000, 4u << 20);
    const auto img = pattern(4096, 5);
    auto l = boot::load_flat_image<rv::image_format>(ram.mem, ram.base, ram.size(), boot::riscv64_flat_offset, img, {},
                                                     10);
    REQUIRE(l);
    CHECK(l->entry == 0x8000'0000);
    CHECK(l->initrd == 0);
    CHECK(l->initrd_size == 0);
    CHECK(l->dtb == 0x8020'0000);
    CHECK(ram.at(0x8000'0000) == img[0]);
    CHECK(ram.at(0x8000'0fff) == img[4095]);
    CHECK(ram.at(0x8000'1000) == fill);
    CHECK(ram.guards_intact());
}

TEST_CASE("load_flat_image: an image that exactly fills the space below the DTB slot is accepted") {
    guarded_ram ram(0x4000'0000, 4u << 20);
    const auto img = pattern((2u << 20) - boot::arm64_flat_offset, 1); // up to the DTB at +2 MiB
    auto l = boot::load_flat_image<a64::image_format>(ram.mem, ram.base, ram.size(), boot::arm64_flat_offset, img, {}, 1);
    REQUIRE(l);
    CHECK(l->image_end == l->dtb);
    CHECK(ram.guards_intact());
}

TEST_CASE("load_flat_image: bad inputs are errors that name the problem and write nothing") {
    guarded_ram ram(0x4000'0000, 4u << 20); // DTB slot at +2 MiB
    const auto img = pattern(4096, 2);
    auto load = [&](std::span<const std::byte> i, std::span<const std::byte> initrd = {}, std::size_t cmd = 10,
                    std::uint64_t off = boot::arm64_flat_offset) {
        return boot::load_flat_image<a64::image_format>(ram.mem, ram.base, ram.size(), off, i, initrd, cmd);
    };
    auto expect = [&](const vcpu::result<boot::flat_layout>& r, int code, std::string_view detail) {
        REQUIRE_FALSE(r);
        CHECK(r.err().code == code);
        CHECK(std::string_view(r.err().op) == "load flat test image");
        CHECK(std::string_view(r.err().detail).find(detail) != std::string_view::npos);
        CHECK(ram.untouched());
    };
    SUBCASE("empty image") { expect(load({}), ENOEXEC, "empty"); }
    SUBCASE("image larger than the space below the DTB slot") {
        const auto big = pattern((2u << 20) - boot::arm64_flat_offset + 1, 4);
        expect(load(big), EFBIG, "does not fit");
    }
    SUBCASE("image larger than RAM") {
        const auto huge = pattern(5u << 20, 4);
        expect(load(huge), EFBIG, "does not fit");
    }
    SUBCASE("load offset at or beyond the DTB slot / past RAM") {
        expect(load(img, {}, 10, 2u << 20), EINVAL, "load offset");
        expect(load(img, {}, 10, 64u << 20), EINVAL, "load offset");
        expect(load(img, {}, 10, ~std::uint64_t{0}), EINVAL, "load offset");
    }
    SUBCASE("misaligned load address") { expect(load(img, {}, 10, 0x80002), EINVAL, "aligned"); }
    SUBCASE("initrd that does not fit between image and DTB slot") {
        const auto env = pattern((2u << 20) - boot::arm64_flat_offset - 4096 + 1, 6);
        expect(load(img, env), ENOSPC, "initrd");
    }
    SUBCASE("command line too long") {
        expect(load(img, {}, a64::image_format::cmdline_max), E2BIG, "command line");
        auto r = boot::load_flat_image<rv::image_format>(ram.mem, ram.base, ram.size(), 0, img, {},
                                                         rv::image_format::cmdline_max);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == E2BIG);
    }
    SUBCASE("RAM range not one region of guest memory") {
        auto r = boot::load_flat_image<a64::image_format>(ram.mem, ram.base + 4096, ram.size(), 0, img, {}, 1);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        r = boot::load_flat_image<a64::image_format>(ram.mem, ram.base, 0, 0, img, {}, 1);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        CHECK(ram.untouched());
    }
    SUBCASE("RAM smaller than the DTB slot") {
        guarded_ram tiny(0x1000, 1u << 20);
        auto r = boot::load_flat_image<a64::image_format>(tiny.mem, tiny.base, tiny.size(), 0, img, {}, 1);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        CHECK(tiny.untouched());
    }
}
