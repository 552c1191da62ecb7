// arm64 / RISC-V Linux boot pieces: the Image header parsers, bounded gunzip, the placement of
// kernel, initrd and DTB in guest RAM (good images checked byte by byte, and a corpus of bad
// ones — truncated headers, wrong magic, misaligned or oversized images, gzip bombs, corrupt
// and truncated gzip, an initrd that does not fit, a command line too long — each a clear
// vcpu::error and never a write outside guest RAM), the libfdt device-tree writer read back
// with libfdt, and the riscv,isa string.
#include "guarded_ram.hpp"

#include <doctest/doctest.h>

#include <arch/aarch64/linux_boot.hpp>
#include <arch/riscv64/linux_boot.hpp>
#include <vcpu/boot/fdt.hpp>
#include <vcpu/boot/gzip.hpp>
#include <vcpu/boot/linux_image.hpp>

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {
namespace boot = vcpu::boot;
namespace a64 = vcpu::aarch64;
namespace rv = vcpu::riscv64;

void put64(std::vector<std::byte>& v, std::size_t off, std::uint64_t x) {
    for (int i = 0; i < 8; ++i) v[off + i] = static_cast<std::byte>(x >> (8 * i));
}
void put32(std::vector<std::byte>& v, std::size_t off, std::uint32_t x) {
    for (int i = 0; i < 4; ++i) v[off + i] = static_cast<std::byte>(x >> (8 * i));
}

/// A synthetic Image of `size` bytes: header fields per the arch, a byte pattern after it.
std::vector<std::byte> make_image(bool arm, std::size_t size, std::uint64_t text_offset, std::uint64_t image_size,
                                  std::uint64_t flags = 0) {
    std::vector<std::byte> v(size);
    for (std::size_t i = 64; i < size; ++i) v[i] = static_cast<std::byte>(i * 7 + 3);
    put64(v, 8, text_offset);
    put64(v, 16, image_size);
    put64(v, 24, flags);
    if (arm) put32(v, 56, a64::image::magic);
    else {
        put32(v, 32, 2); // version 0.2
        std::memcpy(v.data() + 48, "RISCV\0\0\0", 8);
        put32(v, 56, rv::image::magic2);
    }
    return v;
}

std::vector<std::byte> gzip(std::span<const std::byte> in, int level = 6) {
    z_stream z{};
    REQUIRE(deflateInit2(&z, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    std::vector<std::byte> out(deflateBound(&z, static_cast<uLong>(in.size())) + 64);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

using vcpu_test::guarded_ram;

std::string_view detail(const vcpu::error& e) { return e.detail; }

} // namespace

TEST_CASE("arm64 Image header: good, truncated, wrong magic, big-endian, no size, misaligned") {
    auto good = make_image(true, 4096, 0, 0x10000);
    auto h = a64::image_format::parse(good);
    REQUIRE(h);
    CHECK(h->text_offset == 0);
    CHECK(h->image_size == 0x10000);

    auto e = a64::image_format::parse(std::span(good).first(63));
    REQUIRE(!e);
    CHECK(e.err().code == ENOEXEC);
    CHECK(detail(e.err()).find("shorter than its 64-byte header") != std::string_view::npos);
    CHECK(!a64::image_format::parse({}));

    auto riscv = make_image(false, 4096, 0, 0x10000);
    e = a64::image_format::parse(riscv);
    REQUIRE(!e);
    CHECK(detail(e.err()).find("ARM\\x64") != std::string_view::npos);

    e = a64::image_format::parse(make_image(true, 4096, 0, 0x10000, a64::image::flag_be));
    REQUIRE(!e);
    CHECK(detail(e.err()).find("big-endian") != std::string_view::npos);
    e = a64::image_format::parse(make_image(true, 4096, 0, 0));
    REQUIRE(!e);
    CHECK(detail(e.err()).find("image_size is 0") != std::string_view::npos);
    e = a64::image_format::parse(make_image(true, 4096, 0x80001, 0x10000));
    REQUIRE(!e);
    CHECK(e.err().code == EINVAL);
    CHECK(detail(e.err()).find("text_offset") != std::string_view::npos);
}

TEST_CASE("RISC-V Image header: good, truncated, wrong magic, big-endian, misaligned") {
    auto good = make_image(false, 4096, 0x200000, 0x20000);
    auto h = rv::image_format::parse(good);
    REQUIRE(h);
    CHECK(h->text_offset == 0x200000);
    CHECK(h->image_size == 0x20000);
    CHECK(!rv::image_format::parse(std::span(good).first(60)));
    auto e = rv::image_format::parse(make_image(true, 4096, 0, 0x10000));
    REQUIRE(!e);
    CHECK(detail(e.err()).find("RSC\\x05") != std::string_view::npos);
    CHECK(!rv::image_format::parse(make_image(false, 4096, 0, 0x10000, rv::image::flag_be)));
    CHECK(!rv::image_format::parse(make_image(false, 4096, 0x1234, 0x10000)));
    CHECK(!rv::image_format::parse(make_image(false, 4096, 0, 0)));
}

TEST_CASE("gunzip: round trip, exact fit, too small, bomb, corrupt, truncated, not gzip") {
    std::vector<std::byte> data(100000);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>((i * 31) ^ (i >> 7));
    const auto gz = gzip(data);
    REQUIRE(boot::is_gzip(gz));

    std::vector<std::byte> out(200000);
    auto n = boot::gunzip(gz, out);
    REQUIRE(n);
    CHECK(*n == data.size());
    CHECK(std::equal(data.begin(), data.end(), out.begin()));

    std::vector<std::byte> exact(data.size());
    n = boot::gunzip(gz, exact);
    REQUIRE(n);
    CHECK(*n == data.size());

    std::vector<std::byte> small(data.size() - 1, std::byte{0x5a});
    std::vector<std::byte> guarded(small.size() + 16, std::byte{0x5a});
    n = boot::gunzip(gz, std::span(guarded).first(small.size()));
    REQUIRE(!n);
    CHECK(n.err().code == EFBIG);
    CHECK(std::all_of(guarded.end() - 16, guarded.end(), [](std::byte b) { return b == std::byte{0x5a}; }));

    // A bomb: 64 MiB of zeros is ~64 KiB compressed; 1 MiB of room.
    std::vector<std::byte> zeros(64u << 20);
    const auto bomb = gzip(zeros, 9);
    CHECK(bomb.size() < zeros.size() / 500);
    std::vector<std::byte> room(1u << 20);
    n = boot::gunzip(bomb, room);
    REQUIRE(!n);
    CHECK(n.err().code == EFBIG);

    auto corrupt = gz;
    corrupt[corrupt.size() / 2] ^= std::byte{0xff};
    corrupt[corrupt.size() / 2 + 1] ^= std::byte{0x55};
    n = boot::gunzip(corrupt, out);
    REQUIRE(!n);
    CHECK(n.err().code == EBADMSG);

    auto bad_crc = gz;
    bad_crc[bad_crc.size() - 8] ^= std::byte{1}; // CRC32 in the trailer
    n = boot::gunzip(bad_crc, out);
    REQUIRE(!n);
    CHECK(n.err().code == EBADMSG);

    n = boot::gunzip(std::span(gz).first(gz.size() / 2), out);
    REQUIRE(!n);
    CHECK(n.err().code == ENODATA);
    n = boot::gunzip(std::span(gz).first(10), out);
    REQUIRE(!n);

    n = boot::gunzip(data, out);
    REQUIRE(!n);
    CHECK(n.err().code == EINVAL);
    CHECK(!boot::gunzip(std::span(gz).first(1), out));
}

TEST_CASE("load_linux_image: arm64 Image, initrd below the DTB slot, nothing outside RAM") {
    guarded_ram ram(0x4000'0000, 16u << 20);
    auto k = make_image(true, 64 * 1024, 0, 0x30000);
    std::vector<std::byte> initrd(5000, std::byte{0x42});
    auto l = boot::load_linux_image<a64::image_format>(ram.mem, ram.base, ram.size(), k, initrd, 100);
    REQUIRE(l);
    CHECK(l->entry == 0x4000'0000);
    CHECK(l->kernel_end == 0x4000'0000 + 0x30000);
    CHECK(!l->compressed);
    CHECK(l->dtb == 0x4000'0000 + (14u << 20));
    CHECK(l->dtb % 8 == 0);
    CHECK(l->initrd % 4096 == 0);
    CHECK(l->initrd + l->initrd_size <= l->dtb);
    CHECK(l->initrd >= l->kernel_end);
    auto placed = ram.at(l->entry, k.size());
    CHECK(std::equal(k.begin(), k.end(), placed.begin()));
    auto rd = ram.at(l->initrd, initrd.size());
    CHECK(std::equal(initrd.begin(), initrd.end(), rd.begin()));
    CHECK(ram.guards_intact());
}

TEST_CASE("load_linux_image: RAM base not 2 MiB aligned, text_offset honoured (RISC-V)") {
    guarded_ram ram(0x8010'0000, 32u << 20);
    auto k = make_image(false, 8192, 0x200000, 0x40000);
    auto l = boot::load_linux_image<rv::image_format>(ram.mem, ram.base, ram.size(), k, {}, 10);
    REQUIRE(l);
    CHECK(l->entry == 0x8020'0000 + 0x200000); // next 2 MiB boundary + text_offset
    CHECK(l->initrd == 0);
    auto placed = ram.at(l->entry, k.size());
    CHECK(std::equal(k.begin(), k.end(), placed.begin()));
    CHECK(ram.guards_intact());
}

TEST_CASE("load_linux_image: gzip'd kernel is inflated in place and moved to text_offset") {
    guarded_ram ram(0x8000'0000, 32u << 20);
    auto k = make_image(false, 300000, 0x200000, 0x60000);
    auto gz = gzip(k);
    auto l = boot::load_linux_image<rv::image_format>(ram.mem, ram.base, ram.size(), gz, {}, 10);
    REQUIRE(l);
    CHECK(l->compressed);
    CHECK(l->kernel_file == k.size());
    CHECK(l->entry == 0x8020'0000);
    auto placed = ram.at(l->entry, k.size());
    CHECK(std::equal(k.begin(), k.end(), placed.begin()));
    CHECK(ram.guards_intact());
}

TEST_CASE("load_linux_image: bad inputs are errors that name the problem, RAM outside untouched") {
    guarded_ram ram(0x4000'0000, 8u << 20);
    auto load = [&](std::span<const std::byte> k, std::span<const std::byte> initrd = {}, std::size_t cmd = 10) {
        return boot::load_linux_image<a64::image_format>(ram.mem, ram.base, ram.size(), k, initrd, cmd);
    };
    auto good = make_image(true, 4096, 0, 0x10000);

    SUBCASE("command line too long") {
        auto r = load(good, {}, 2048);
        REQUIRE(!r);
        CHECK(r.err().code == E2BIG);
        CHECK(load(good, {}, 2047));
    }
    SUBCASE("truncated header") {
        auto r = load(std::span(good).first(40));
        REQUIRE(!r);
        CHECK(r.err().code == ENOEXEC);
    }
    SUBCASE("wrong magic") {
        auto bad = good;
        bad[56] = std::byte{0};
        CHECK(load(bad).err().code == ENOEXEC);
    }
    SUBCASE("image_size larger than RAM below the DTB") {
        auto r = load(make_image(true, 4096, 0, 7u << 20));
        REQUIRE(!r);
        CHECK(r.err().code == EFBIG);
        CHECK(detail(r.err()).find("image_size") != std::string_view::npos);
    }
    SUBCASE("file larger than RAM") {
        auto big = make_image(true, 7u << 20, 0, 0x10000);
        CHECK(load(big).err().code == EFBIG);
    }
    SUBCASE("text_offset beyond RAM") {
        CHECK(load(make_image(true, 4096, 0x4000'0000, 0x10000)).err().code == EFBIG);
        CHECK(load(make_image(true, 4096, ~std::uint64_t{0} & ~std::uint64_t{0xfff}, 0x10000)).err().code == EFBIG);
    }
    SUBCASE("misaligned text_offset") { CHECK(load(make_image(true, 4096, 0x800, 0x10000)).err().code == EINVAL); }
    SUBCASE("initrd that does not fit") {
        std::vector<std::byte> initrd(6u << 20, std::byte{1});
        auto r = load(good, initrd);
        REQUIRE(!r);
        CHECK(r.err().code == ENOSPC);
        CHECK(detail(r.err()).find("initrd does not fit") != std::string_view::npos);
    }
    SUBCASE("gzip bomb kernel") {
        std::vector<std::byte> huge(64u << 20);
        auto hdr = make_image(true, 4096, 0, 0x10000);
        std::copy(hdr.begin(), hdr.end(), huge.begin());
        auto r = load(gzip(huge, 9));
        REQUIRE(!r);
        CHECK(r.err().code == EFBIG);
        CHECK(std::string_view(r.err().op) == "gunzip kernel");
    }
    SUBCASE("corrupt and truncated gzip kernel") {
        auto gz = gzip(make_image(true, 100000, 0, 0x20000));
        auto corrupt = gz;
        for (std::size_t i = 20; i < 60; ++i) corrupt[i] ^= std::byte{0x3c};
        CHECK(!load(corrupt));
        CHECK(load(std::span(gz).first(gz.size() - 20)).err().code == ENODATA);
    }
    SUBCASE("gzip of something that is not an Image") {
        std::vector<std::byte> junk(10000, std::byte{7});
        CHECK(load(gzip(junk)).err().code == ENOEXEC);
    }
    SUBCASE("RAM range not in guest memory / too small") {
        CHECK(boot::load_linux_image<a64::image_format>(ram.mem, ram.base + 4096, ram.size(), good, {}, 1).err().code ==
              EINVAL);
        vcpu::guest_memory tiny;
        std::vector<std::byte> t(1u << 20);
        REQUIRE(tiny.add({0x4000'0000, t}));
        CHECK(boot::load_linux_image<a64::image_format>(tiny, 0x4000'0000, t.size(), good, {}, 1).err().code == EINVAL);
    }
    CHECK(ram.guards_intact());
}

TEST_CASE("fdt_writer: a tree libfdt reads back; errors for a small buffer and open nodes") {
    std::vector<std::byte> buf(4096);
    boot::fdt_writer w(buf);
    w.begin_node("");
    w.prop_u32("#address-cells", 2).prop_u32("#size-cells", 2);
    w.begin_node("memory@40000000");
    w.prop_string("device_type", "memory");
    w.prop_u64s("reg", {0x4000'0000, 0x2000'0000});
    w.end_node();
    w.begin_node("psci");
    w.prop_strings("compatible", {"arm,psci-0.2", "arm,psci"});
    w.prop_empty("always-on");
    w.end_node();
    w.end_node();
    auto blob = w.finish();
    REQUIRE(blob);
    const void* fdt = blob->data();
    REQUIRE(fdt_check_header(fdt) == 0);
    CHECK(fdt_totalsize(fdt) == blob->size());
    const int mem = fdt_path_offset(fdt, "/memory@40000000");
    REQUIRE(mem >= 0);
    int len = 0;
    const auto* reg = static_cast<const unsigned char*>(fdt_getprop(fdt, mem, "reg", &len));
    REQUIRE(len == 16);
    CHECK(reg[4] == 0x40); // big-endian 0x00000000'40000000
    CHECK(reg[12] == 0x20);
    CHECK(std::string_view(static_cast<const char*>(fdt_getprop(fdt, mem, "device_type", &len))) == "memory");
    const int psci = fdt_path_offset(fdt, "/psci");
    REQUIRE(psci >= 0);
    const char* compat = static_cast<const char*>(fdt_getprop(fdt, psci, "compatible", &len));
    CHECK(len == static_cast<int>(sizeof "arm,psci-0.2" + sizeof "arm,psci"));
    CHECK(std::string_view(compat) == "arm,psci-0.2");
    CHECK(fdt_getprop(fdt, psci, "always-on", &len) != nullptr);
    CHECK(len == 0);
    const int root = fdt_path_offset(fdt, "/");
    CHECK(fdt32_to_cpu(*static_cast<const fdt32_t*>(fdt_getprop(fdt, root, "#size-cells", &len))) == 2);

    std::vector<std::byte> tiny(64);
    boot::fdt_writer t(tiny);
    t.begin_node("");
    t.prop_string("bootargs", std::string(200, 'x'));
    t.end_node();
    auto r = t.finish();
    REQUIRE(!r);
    CHECK(r.err().code == ENOSPC);

    std::vector<std::byte> b2(1024);
    boot::fdt_writer open(b2);
    open.begin_node("");
    auto r2 = open.finish();
    REQUIRE(!r2);
    CHECK(r2.err().code == EINVAL);
    boot::fdt_writer under(b2);
    under.end_node();
    CHECK(!under.ok());
}

TEST_CASE("riscv,isa string from KVM's ISA bitmap") {
    auto bit = [](char c) { return std::uint64_t{1} << (c - 'a'); };
    const std::array<std::string_view, 2> multi{"zicsr", "sstc"};
    CHECK(rv::isa_string(bit('i') | bit('m') | bit('a') | bit('f') | bit('d') | bit('c') | bit('h'), multi) ==
          "rv64imafdc_zicsr_sstc");
    CHECK(rv::isa_string(bit('i'), {}) == "rv64i");
}
