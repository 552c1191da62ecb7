// The Linux x86 loaders: a synthetic good bzImage checked field by field in boot_params, a
// corpus of bad images each with the error that names its problem, the PVH ELF path, and the
// MP table (checksums, entries).
#include <doctest/doctest.h>

#include <arch/x86_64/linux_boot.hpp>
#include <arch/x86_64/mptable.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {
namespace x86 = vcpu::x86_64;
namespace bz = vcpu::x86_64::bzimage;

template <class T>
void put(std::vector<std::byte>& v, std::size_t off, T x) {
    for (std::size_t i = 0; i < sizeof(T); ++i)
        v[off + i] = static_cast<std::byte>((static_cast<std::uint64_t>(x) >> (8 * i)) & 0xff);
}
template <class T>
T get(std::span<const std::byte> v, std::size_t off) {
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) x |= std::uint64_t{std::to_integer<std::uint8_t>(v[off + i])} << (8 * i);
    return static_cast<T>(x);
}

/// A bzImage with protocol 2.15, setup_sects = 3 and a 64 KiB "kernel" of a byte pattern.
std::vector<std::byte> good_image(std::uint8_t setup_sects = 3, std::size_t kernel_bytes = 0x10000) {
    const std::size_t setup = (std::size_t{setup_sects == 0 ? 4u : setup_sects} + 1) * 512;
    std::vector<std::byte> v(setup + kernel_bytes);
    put<std::uint8_t>(v, bz::setup_sects, setup_sects);
    put<std::uint16_t>(v, bz::boot_flag, 0xaa55);
    put<std::uint8_t>(v, 0x200, 0xeb);                // jmp short
    put<std::uint8_t>(v, 0x201, 0x6a);                // header ends at 0x26c
    put<std::uint32_t>(v, bz::header, 0x53726448);    // "HdrS"
    put<std::uint16_t>(v, bz::version, 0x020f);
    put<std::uint8_t>(v, bz::loadflags, 0x01);        // LOADED_HIGH
    put<std::uint32_t>(v, bz::code32_start, 0x100000);
    put<std::uint32_t>(v, bz::initrd_addr_max, 0x7fffffff);
    put<std::uint32_t>(v, bz::kernel_alignment, 0x200000);
    put<std::uint8_t>(v, bz::relocatable_kernel, 1);
    put<std::uint16_t>(v, bz::xloadflags, 0x7f);
    put<std::uint32_t>(v, bz::cmdline_size, 2047);
    put<std::uint64_t>(v, bz::pref_address, 0x1000000);
    put<std::uint32_t>(v, bz::init_size, 0x200000);
    for (std::size_t i = setup; i < v.size(); ++i) v[i] = static_cast<std::byte>(i * 7);
    return v;
}

struct guest {
    std::vector<std::byte> ram;
    vcpu::guest_memory mem;
    explicit guest(std::size_t bytes) : ram(bytes) { REQUIRE(mem.add({0, ram, false})); }
};

std::string detail_of(const vcpu::error& e) { return e.detail; }

} // namespace

TEST_CASE("bzImage: a good image is parsed and loaded, boot_params checked field by field") {
    const auto img = good_image();
    auto h = x86::parse_bzimage(img);
    REQUIRE(h);
    CHECK(h->version == 0x020f);
    CHECK(h->setup_sects == 3);
    CHECK(h->relocatable);
    CHECK(h->initrd_addr_max == 0x7fffffff);
    CHECK(h->cmdline_size == 2047);
    CHECK(h->init_size == 0x200000);
    CHECK(h->header_end == 0x26c);
    CHECK(h->kernel_offset == 4 * 512);
    CHECK(h->kernel_size == 0x10000);

    guest g(64 << 20);
    std::vector<std::byte> initrd(10000, std::byte{0x5a});
    const std::string cmd = "console=ttyS0 panic=-1 reboot=t";
    auto l = x86::load_bzimage(g.mem, {img, initrd, cmd, g.ram.size()});
    REQUIRE(l);
    CHECK(l->entry == 0x100000);
    CHECK(l->boot_params == 0x10000);
    CHECK(l->kernel_end == 0x100000 + 0x200000);
    // initrd: page aligned, as high as RAM allows, above the kernel.
    CHECK(l->initrd_addr % 4096 == 0);
    CHECK(l->initrd_addr + initrd.size() <= g.ram.size());
    CHECK(g.ram.size() - (l->initrd_addr + initrd.size()) < 4096);
    CHECK(std::memcmp(g.ram.data() + l->initrd_addr, initrd.data(), initrd.size()) == 0);

    const std::span<const std::byte> zp(g.ram.data() + 0x10000, 4096);
    // The setup header is copied, then the loader's fields.
    CHECK(get<std::uint16_t>(zp, bz::boot_flag) == 0xaa55);
    CHECK(get<std::uint32_t>(zp, bz::header) == 0x53726448);
    CHECK(get<std::uint16_t>(zp, bz::version) == 0x020f);
    CHECK(get<std::uint8_t>(zp, bz::type_of_loader) == 0xff);
    CHECK(get<std::uint8_t>(zp, bz::loadflags) == (0x01 | 0x80));
    CHECK(get<std::uint16_t>(zp, bz::vid_mode) == 0xffff);
    CHECK(get<std::uint32_t>(zp, bz::cmd_line_ptr) == 0x20000);
    CHECK(get<std::uint32_t>(zp, bz::ramdisk_image) == l->initrd_addr);
    CHECK(get<std::uint32_t>(zp, bz::ramdisk_size) == initrd.size());
    CHECK(get<std::uint32_t>(zp, bz::cmdline_size) == 2047);
    // Bytes past the header stay zero (no stray copy of setup code).
    CHECK(get<std::uint32_t>(zp, 0x26c) == 0);
    // e820: low RAM, reserved, BIOS, high RAM.
    REQUIRE(get<std::uint8_t>(zp, bz::e820_entries) == 4);
    auto e820 = [&](std::size_t i, std::size_t f) { return get<std::uint64_t>(zp, bz::e820_table + i * 20 + f); };
    CHECK(e820(0, 0) == 0);
    CHECK(e820(0, 8) == 0x9fc00);
    CHECK(get<std::uint32_t>(zp, bz::e820_table + 16) == 1);
    CHECK(e820(3, 0) == 0x100000);
    CHECK(e820(3, 8) == g.ram.size() - 0x100000);
    CHECK(get<std::uint32_t>(zp, bz::e820_table + 3 * 20 + 16) == 1);
    CHECK(get<std::uint32_t>(zp, bz::e820_table + 2 * 20 + 16) == 2);
    // Command line, NUL-terminated, at 0x20000.
    CHECK(std::string_view(reinterpret_cast<const char*>(g.ram.data() + 0x20000)) == cmd);
    // Protected-mode kernel at 1 MiB.
    CHECK(std::memcmp(g.ram.data() + 0x100000, img.data() + 4 * 512, 0x10000) == 0);
}

TEST_CASE("bzImage: setup_sects 0 means 4") {
    auto h = x86::parse_bzimage(good_image(0));
    REQUIRE(h);
    CHECK(h->setup_sects == 4);
    CHECK(h->kernel_offset == 5 * 512);
}

TEST_CASE("bzImage: truncated at each header boundary, each with its error") {
    const auto img = good_image();
    struct cut {
        std::size_t size;
        const char* expect;
    };
    const cut cuts[] = {
        {0, "truncated before the boot flag"},
        {0x1fe, "truncated before the boot flag"},
        {0x1ff, "truncated before the boot flag"},
        {0x200, "truncated before the \"HdrS\" magic"},
        {0x205, "truncated before the \"HdrS\" magic"},
        {0x207, "truncated before the protocol version"},
        {0x208, "truncated inside the 2.06 setup header"},
        {0x23b, "truncated inside the 2.06 setup header"},
        {0x23c, "truncated before the end of the setup header"},
        {0x26b, "truncated before the end of the setup header"},
        {0x26c, "truncated inside the real-mode setup code"},
        {4 * 512 - 1, "truncated inside the real-mode setup code"},
        {4 * 512, "no protected-mode kernel"},
    };
    for (const auto& c : cuts) {
        CAPTURE(c.size);
        auto h = x86::parse_bzimage(std::span(img).first(c.size));
        REQUIRE(!h);
        CHECK(detail_of(h.err()).find(c.expect) != std::string::npos);
        CHECK(std::string_view(h.err().op) == "load bzImage");
    }
    // One byte of kernel is enough to parse.
    CHECK(x86::parse_bzimage(std::span(img).first(4 * 512 + 1)));
}

TEST_CASE("bzImage: bad magic, old protocol, huge setup_sects, zImage, bad jump") {
    auto check = [](std::vector<std::byte> v, const char* expect) {
        auto h = x86::parse_bzimage(v);
        REQUIRE(!h);
        CHECK(detail_of(h.err()).find(expect) != std::string::npos);
        CHECK(h.err().message().find(expect) != std::string::npos);
    };
    auto v = good_image();
    put<std::uint16_t>(v, bz::boot_flag, 0x55aa);
    check(v, "bad boot flag");
    v = good_image();
    put<std::uint32_t>(v, bz::header, 0x53726449);
    check(v, "bad header magic");
    v = good_image();
    put<std::uint16_t>(v, bz::version, 0x0205);
    check(v, "older than 2.06");
    v = good_image();
    put<std::uint8_t>(v, bz::setup_sects, 0xff);
    check(v, "setup_sects too large");
    v = good_image(64); // 65 sectors: one more than the 32 KiB the setup code may take
    check(v, "setup_sects too large");
    CHECK(x86::parse_bzimage(good_image(63)));
    v = good_image();
    put<std::uint8_t>(v, bz::loadflags, 0);
    check(v, "LOADED_HIGH");
    v = good_image();
    put<std::uint8_t>(v, 0x201, 0x10);
    check(v, "bad jump");
    v = good_image();
    put<std::uint8_t>(v, 0x201, 0x50); // a 2.10+ header that stops before init_size
    check(v, "2.10 setup header");
}

TEST_CASE("bzImage: load-time errors write nothing and name the problem") {
    const auto img = good_image();
    guest g(16 << 20);
    auto expect = [&](vcpu::result<x86::linux_loaded> r, const char* what) {
        REQUIRE(!r);
        CHECK(detail_of(r.err()).find(what) != std::string::npos);
        // Nothing was written: the zero page and the kernel area are still zero.
        CHECK(std::all_of(g.ram.begin() + 0x10000, g.ram.begin() + 0x11000, [](std::byte b) { return b == std::byte{0}; }));
        CHECK(g.ram[0x100000] == std::byte{0});
    };
    SUBCASE("initrd larger than RAM") {
        std::vector<std::byte> initrd(17 << 20);
        expect(x86::load_bzimage(g.mem, {img, initrd, "", g.ram.size()}), "initrd does not fit");
    }
    SUBCASE("initrd that would overlap the kernel") {
        std::vector<std::byte> initrd((16 << 20) - 0x200000);
        expect(x86::load_bzimage(g.mem, {img, initrd, "", g.ram.size()}), "initrd does not fit");
    }
    SUBCASE("initrd_addr_max below the kernel") {
        auto low = good_image();
        put<std::uint32_t>(low, bz::initrd_addr_max, 0x200000);
        std::vector<std::byte> initrd(4096);
        expect(x86::load_bzimage(g.mem, {low, initrd, "", g.ram.size()}), "initrd does not fit");
    }
    SUBCASE("command line longer than cmdline_size") {
        const std::string cmd(2047, 'x'); // + NUL = 2048 > 2047
        expect(x86::load_bzimage(g.mem, {img, {}, cmd, g.ram.size()}), "command line longer than");
    }
    SUBCASE("RAM smaller than kernel + init_size") {
        expect(x86::load_bzimage(g.mem, {img, {}, "", 0x200000}), "RAM too small");
    }
    SUBCASE("RAM size claimed beyond the guest memory map") {
        auto r = x86::load_bzimage(g.mem, {img, {}, "", 64 << 20});
        // The map says 64 MiB but only 16 are backed: the initrd-free load still fits, so it
        // succeeds; an initrd placed at the claimed top must fail through guest_memory.
        CHECK(r);
        std::vector<std::byte> initrd(4096);
        auto r2 = x86::load_bzimage(g.mem, {img, initrd, "", 64 << 20});
        REQUIRE(!r2);
        CHECK(std::string_view(r2.err().op) == "write guest memory");
    }
    SUBCASE("cmdline exactly at the limit is fine") {
        const std::string cmd(2046, 'y');
        CHECK(x86::load_bzimage(g.mem, {img, {}, cmd, g.ram.size()}));
    }
}

namespace {
/// An ELF64 vmlinux with one PT_LOAD (paddr 0x1000000, 0x100 bytes file, 0x200 mem) and one
/// PT_NOTE holding a GNU note then the Xen PHYS32_ENTRY note.
std::vector<std::byte> pvh_image(bool with_note = true, std::uint32_t descsz = 4) {
    std::vector<std::byte> v(0x400);
    put<std::uint32_t>(v, 0, 0x464c457f);
    put<std::uint8_t>(v, 4, 2);
    put<std::uint8_t>(v, 5, 1);
    put<std::uint64_t>(v, 0x20, 0x40); // phoff
    put<std::uint16_t>(v, 0x36, 56);
    put<std::uint16_t>(v, 0x38, 2);
    // PT_LOAD
    put<std::uint32_t>(v, 0x40, 1);
    put<std::uint64_t>(v, 0x40 + 8, 0x200);
    put<std::uint64_t>(v, 0x40 + 24, 0x1000000);
    put<std::uint64_t>(v, 0x40 + 32, 0x100);
    put<std::uint64_t>(v, 0x40 + 40, 0x200);
    for (std::size_t i = 0; i < 0x100; ++i) v[0x200 + i] = std::byte{0xcc};
    // PT_NOTE at 0x100
    put<std::uint32_t>(v, 0x78, 4);
    put<std::uint64_t>(v, 0x78 + 8, 0x100);
    put<std::uint64_t>(v, 0x78 + 32, 2 * (12 + 4 + 4));
    // GNU note: namesz 4 "GNU\0", descsz 4, type 3
    put<std::uint32_t>(v, 0x100, 4);
    put<std::uint32_t>(v, 0x104, 4);
    put<std::uint32_t>(v, 0x108, 3);
    std::memcpy(v.data() + 0x10c, "GNU", 4);
    // Xen note
    put<std::uint32_t>(v, 0x114, 4);
    put<std::uint32_t>(v, 0x118, descsz);
    put<std::uint32_t>(v, 0x11c, with_note ? 18 : 17);
    std::memcpy(v.data() + 0x120, "Xen", 4);
    put<std::uint32_t>(v, 0x124, 0x1000123);
    return v;
}
} // namespace

TEST_CASE("PVH: entry from XEN_ELFNOTE_PHYS32_ENTRY, segments, start info") {
    const auto img = pvh_image();
    auto e = x86::find_pvh_entry(img);
    REQUIRE(e);
    CHECK(*e == 0x1000123);
    guest g(32 << 20);
    std::memset(g.ram.data() + 0x1000100, 0xee, 0x100); // bss must be zeroed
    std::vector<std::byte> initrd(5000, std::byte{1});
    auto l = x86::load_pvh_elf(g.mem, {img, initrd, "console=ttyS0", g.ram.size()});
    REQUIRE(l);
    CHECK(l->entry == 0x1000123);
    CHECK(l->kernel_end == 0x1000200);
    CHECK(g.ram[0x1000000] == std::byte{0xcc});
    CHECK(g.ram[0x1000100] == std::byte{0});
    const std::span<const std::byte> si(g.ram.data() + 0x6000, 0x100);
    CHECK(get<std::uint32_t>(si, 0) == 0x336ec578);
    CHECK(get<std::uint32_t>(si, 4) == 1);
    CHECK(get<std::uint32_t>(si, 12) == 1);
    const auto modlist = get<std::uint64_t>(si, 16);
    CHECK(get<std::uint64_t>(std::span<const std::byte>(g.ram), modlist) == l->initrd_addr);
    CHECK(get<std::uint64_t>(std::span<const std::byte>(g.ram), modlist + 8) == 5000);
    CHECK(get<std::uint64_t>(si, 24) == 0x20000);
    CHECK(get<std::uint32_t>(si, 48) == 4);
}

TEST_CASE("PVH: bad images") {
    auto fails = [](std::vector<std::byte> v, const char* what) {
        auto e = x86::find_pvh_entry(v);
        REQUIRE(!e);
        CHECK(detail_of(e.err()).find(what) != std::string::npos);
    };
    fails(pvh_image(false), "no XEN_ELFNOTE_PHYS32_ENTRY");
    fails(pvh_image(true, 3), "bad size");
    auto v = pvh_image();
    v[0] = std::byte{0};
    fails(v, "not an ELF");
    v = pvh_image();
    put<std::uint16_t>(v, 0x38, 60);
    fails(v, "outside the file");
    v = pvh_image();
    put<std::uint32_t>(v, 0x118, 0x1000); // note desc runs past the segment
    fails(v, "runs past");
    v = pvh_image();
    put<std::uint64_t>(v, 0x40 + 32, 0x10000); // PT_LOAD filesz beyond the file
    guest g(32 << 20);
    auto l = x86::load_pvh_elf(g.mem, {v, {}, "", g.ram.size()});
    REQUIRE(!l);
    CHECK(detail_of(l.err()).find("outside the file") != std::string::npos);
    auto l2 = x86::load_pvh_elf(g.mem, {pvh_image(), {}, "", 16 << 20});
    REQUIRE(!l2);
    CHECK(detail_of(l2.err()).find("does not fit in RAM") != std::string::npos);
}

TEST_CASE("PVH: RAM of 1 MiB or less is rejected, not described by a wrapped e820 entry") {
    // Found by tests/fuzz/pvh_elf (issue 11, defect 5): with every segment below 1 MiB the
    // loader accepted RAM <= 1 MiB and wrote a memory map whose last entry (1 MiB .. RAM end)
    // had size 0 or wrapped to ~2^64.
    auto v = pvh_image();
    put<std::uint64_t>(v, 0x40 + 24, 0x30000); // PT_LOAD low, so the segment check passes
    for (std::uint64_t ram : {std::uint64_t{0x100000}, std::uint64_t{0xa0000}}) {
        guest g(static_cast<std::size_t>(ram));
        auto l = x86::load_pvh_elf(g.mem, {v, {}, "", ram});
        REQUIRE(!l);
        CHECK(l.err().code == ENOMEM);
        CHECK(detail_of(l.err()).find("RAM") != std::string::npos);
        CHECK(get<std::uint32_t>(std::span<const std::byte>(g.ram), 0x6000) == 0); // nothing written
    }
    guest g(0x101000);
    CHECK(x86::load_pvh_elf(g.mem, {v, {}, "", 0x101000}));
}

TEST_CASE("PVH: a PT_LOAD segment over the start info or the command line is rejected") {
    // Found by tests/fuzz/pvh_elf: such a segment was loaded and then silently overwritten by
    // hvm_start_info (0x6000) or the command line (0x20000).
    for (std::uint64_t paddr : {std::uint64_t{0x6000}, std::uint64_t{0x5f00}, std::uint64_t{0x1ff00},
                                std::uint64_t{0x20004}}) {
        auto v = pvh_image();
        put<std::uint64_t>(v, 0x40 + 24, paddr);
        guest g(2 << 20);
        auto l = x86::load_pvh_elf(g.mem, {v, {}, "console=ttyS0", g.ram.size()});
        REQUIRE(!l);
        CHECK(detail_of(l.err()).find("overlaps") != std::string::npos);
    }
    auto v = pvh_image();
    put<std::uint64_t>(v, 0x40 + 24, 0x20000 + 14); // just past "console=ttyS0\0"
    guest g(2 << 20);
    CHECK(x86::load_pvh_elf(g.mem, {v, {}, "console=ttyS0", g.ram.size()}));
}

TEST_CASE("MP table: floating pointer and config table with checksums, CPUs and IOAPIC") {
    guest g(1 << 20);
    REQUIRE(x86::write_mptable(g.mem, 0x9fc00, 4));
    const std::span<const std::byte> t(g.ram.data() + 0x9fc00, 1024);
    CHECK(get<std::uint32_t>(t, 0) == 0x5f504d5f); // "_MP_"
    CHECK(get<std::uint32_t>(t, 4) == 0x9fc10);
    auto sum = [&](std::size_t from, std::size_t n) {
        std::uint8_t s = 0;
        for (std::size_t i = from; i < from + n; ++i) s = static_cast<std::uint8_t>(s + std::to_integer<std::uint8_t>(t[i]));
        return s;
    };
    CHECK(sum(0, 16) == 0);
    CHECK(get<std::uint32_t>(t, 16) == 0x504d4350); // "PCMP"
    const auto len = get<std::uint16_t>(t, 16 + 4);
    CHECK(len == x86::mp::table_bytes(4) - 16);
    CHECK(sum(16, len) == 0);
    CHECK(get<std::uint16_t>(t, 16 + 34) == 4 + 2 + 16 + 2);
    CHECK(get<std::uint32_t>(t, 16 + 36) == 0xfee00000);
    // Processor entries: ids 0..3, CPU 0 is the BSP.
    for (unsigned i = 0; i < 4; ++i) {
        const std::size_t e = 16 + 44 + i * 20;
        CHECK(get<std::uint8_t>(t, e) == 0);
        CHECK(get<std::uint8_t>(t, e + 1) == i);
        CHECK(get<std::uint8_t>(t, e + 3) == (i == 0 ? 3 : 1));
    }
    const std::size_t ioapic = 16 + 44 + 4 * 20 + 8;
    CHECK(get<std::uint8_t>(t, ioapic) == 2);
    CHECK(get<std::uint8_t>(t, ioapic + 1) == 4);
    CHECK(get<std::uint32_t>(t, ioapic + 4) == 0xfec00000);
    // IRQ 4 (the UART) goes to pin 4.
    const std::size_t irq4 = ioapic + 8 + 4 * 8;
    CHECK(get<std::uint8_t>(t, irq4) == 3);
    CHECK(get<std::uint8_t>(t, irq4 + 5) == 4);
    CHECK(get<std::uint8_t>(t, irq4 + 7) == 4);
    CHECK(!x86::write_mptable(g.mem, 0x9fc00, 0));
    CHECK(!x86::write_mptable(g.mem, 0x9fc00, 33));
    CHECK(!x86::write_mptable(g.mem, 0xfff80, 1)); // runs past the 1 MiB of this guest
}
