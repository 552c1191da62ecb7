// The Multiboot v1 loader: a synthetic good ELF32 image loaded and checked byte by byte (segments,
// BSS, info structure, memory map, command line, modules), the entry state, and a corpus of bad
// images, each rejected with the error that names its problem and without writing guest memory.
#include <doctest/doctest.h>

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/multiboot.hpp>
#include <kvm/mock.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {
namespace x86 = vcpu::x86_64;
namespace mb = vcpu::x86_64::multiboot;

template <class T>
void put(std::vector<std::byte>& v, std::size_t off, T x) {
    for (std::size_t i = 0; i < sizeof(T); ++i)
        v[off + i] = static_cast<std::byte>((static_cast<std::uint64_t>(x) >> (8 * i)) & 0xff);
}
template <class T>
T get(std::span<const std::byte> v, std::uint64_t off) {
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) x |= std::uint64_t{std::to_integer<std::uint8_t>(v[off + i])} << (8 * i);
    return static_cast<T>(x);
}

struct segment_spec {
    std::uint32_t paddr, filesz, memsz;
    std::uint32_t vaddr = 0; // 0: same as paddr
};

/// An ELF32 EM_386 ET_EXEC image: the ELF header, `segs.size()` program headers, the Multiboot
/// header at `mb_off` (flags `flags`), then each segment's bytes (a pattern) one after another.
std::vector<std::byte> make_image(std::vector<segment_spec> segs = {{0x400000, 0x3000, 0x5000}},
                                  std::uint32_t flags = mb::page_align | mb::memory_info, std::size_t mb_off = 0x80,
                                  std::uint32_t entry = 0x400010) {
    std::size_t data = 0x1000;
    std::size_t total = data;
    for (auto& s : segs) total += s.filesz;
    std::vector<std::byte> v(total);
    put<std::uint32_t>(v, 0, 0x464c457f);
    put<std::uint8_t>(v, 4, 1);  // ELFCLASS32
    put<std::uint8_t>(v, 5, 1);  // ELFDATA2LSB
    put<std::uint8_t>(v, 6, 1);  // EV_CURRENT
    put<std::uint16_t>(v, 16, 2); // ET_EXEC
    put<std::uint16_t>(v, 18, 3); // EM_386
    put<std::uint32_t>(v, 20, 1);
    put<std::uint32_t>(v, 24, entry);
    put<std::uint32_t>(v, 28, 52); // e_phoff
    put<std::uint16_t>(v, 40, 52);
    put<std::uint16_t>(v, 42, 32);
    put<std::uint16_t>(v, 44, static_cast<std::uint16_t>(segs.size()));
    std::size_t off = data;
    for (std::size_t i = 0; i < segs.size(); ++i) {
        const std::size_t ph = 52 + 32 * i;
        put<std::uint32_t>(v, ph + 0, 1); // PT_LOAD
        put<std::uint32_t>(v, ph + 4, static_cast<std::uint32_t>(off));
        put<std::uint32_t>(v, ph + 8, segs[i].vaddr ? segs[i].vaddr : segs[i].paddr);
        put<std::uint32_t>(v, ph + 12, segs[i].paddr);
        put<std::uint32_t>(v, ph + 16, segs[i].filesz);
        put<std::uint32_t>(v, ph + 20, segs[i].memsz);
        put<std::uint32_t>(v, ph + 24, 7);
        put<std::uint32_t>(v, ph + 28, 0x1000);
        for (std::size_t k = 0; k < segs[i].filesz; ++k) v[off + k] = static_cast<std::byte>((k * 13 + i + 1) & 0xff);
        off += segs[i].filesz;
    }
    put<std::uint32_t>(v, mb_off, mb::header_magic);
    put<std::uint32_t>(v, mb_off + 4, flags);
    put<std::uint32_t>(v, mb_off + 8, static_cast<std::uint32_t>(0u - mb::header_magic - flags));
    return v;
}

struct guest {
    std::vector<std::byte> ram;
    vcpu::guest_memory mem;
    explicit guest(std::size_t bytes, std::byte fill = std::byte{0xcc}) : ram(bytes, fill) {
        REQUIRE(mem.add({0, ram, false}));
    }
    [[nodiscard]] bool untouched(std::byte fill = std::byte{0xcc}) const {
        // Every byte equals the first, and the first is `fill` (memcmp: fast in Debug builds).
        return ram.empty() || (ram[0] == fill && std::memcmp(ram.data(), ram.data() + 1, ram.size() - 1) == 0);
    }
    [[nodiscard]] std::string cstr(std::uint64_t at) const {
        std::string s;
        while (ram[at] != std::byte{0}) s.push_back(static_cast<char>(ram[at++]));
        return s;
    }
};

std::string detail_of(const vcpu::error& e) { return e.detail; }

/// Loads `img` into a fresh 16 MiB guest and returns the error; checks that nothing was written.
vcpu::error load_error(std::span<const std::byte> img, x86::multiboot_options o = {}) {
    guest g(16 << 20);
    if (o.ram_size == 0) o.ram_size = g.ram.size();
    auto r = x86::load_multiboot(img, g.mem, o);
    REQUIRE_FALSE(r);
    CHECK(std::string_view(r.err().op) == "load multiboot");
    CHECK(g.untouched());
    return r.err();
}

} // namespace

TEST_CASE("multiboot: layout of the binary structures") {
    CHECK(sizeof(x86::multiboot_info) == 88);
    CHECK(sizeof(x86::multiboot_mmap_entry) == 24);
    CHECK(sizeof(x86::multiboot_module) == 16);
    CHECK(sizeof(x86::elf32_ehdr) == 52);
    CHECK(sizeof(x86::elf32_phdr) == 32);
    CHECK(x86::multiboot_layout::mmap_max_entries >= 4);
}

TEST_CASE("multiboot: header search (first 8 KiB, 4-byte aligned, checksum)") {
    auto img = make_image();
    auto h = x86::find_multiboot_header(img);
    REQUIRE(h);
    CHECK(*h == 0x80);
    CHECK(x86::is_multiboot(img));

    // At the last aligned slot of the first 8 KiB it is found ...
    auto late = make_image({{0x400000, 0x3000, 0x3000}}, mb::page_align, 8192 - 12);
    CHECK(x86::find_multiboot_header(late));
    // ... past it, not.
    auto too_late = make_image({{0x400000, 0x3000, 0x3000}}, mb::page_align, 8192);
    put<std::uint32_t>(too_late, 0x80, 0); // make sure no stale header
    CHECK(detail_of(x86::find_multiboot_header(too_late).err()).find("no Multiboot header") != std::string::npos);
    // Misaligned: not a header.
    auto odd = make_image({{0x400000, 0x3000, 0x3000}}, mb::page_align, 0x82);
    CHECK_FALSE(x86::find_multiboot_header(odd));
    // A bzImage-like blob has none.
    std::vector<std::byte> zeros(0x4000);
    CHECK_FALSE(x86::is_multiboot(zeros));
    CHECK_FALSE(x86::is_multiboot({}));
}

TEST_CASE("multiboot: a good image is loaded; info, mmap, cmdline and modules checked field by field") {
    const auto img = make_image({{0x400000, 0x3000, 0x5000}, {0x406000, 0x100, 0x2000}});
    guest g(128 << 20);
    const std::string env = "FOO=bar\nNR_CPUS=4\n";
    const std::string extra(5000, 'x');
    const std::array<x86::multiboot_module_source, 2> mods{{
        {std::as_bytes(std::span(env.data(), env.size())), "env.txt"},
        {std::as_bytes(std::span(extra.data(), extra.size())), "second arg"},
    }};
    x86::multiboot_options o;
    o.ram_size = g.ram.size();
    o.cmdline = "guest.elf one two";
    o.modules = mods;
    auto r = x86::load_multiboot(img, g.mem, o);
    REQUIRE(r);
    CHECK(r->entry == 0x400010);
    CHECK(r->info == 0x9500);
    CHECK(r->image.segment_count == 2);
    CHECK(r->image.load_start == 0x400000);
    CHECK(r->image.load_end == 0x408000);

    // Segments: file bytes, then zeroed BSS; untouched around them.
    for (std::size_t k = 0; k < 0x3000; ++k) REQUIRE(g.ram[0x400000 + k] == img[0x1000 + k]);
    CHECK(std::all_of(&g.ram[0x403000], &g.ram[0x405000], [](std::byte b) { return b == std::byte{0}; }));
    CHECK(g.ram[0x405000] == std::byte{0xcc});
    CHECK(g.ram[0x406000] == img[0x4000]);
    CHECK(std::all_of(&g.ram[0x406100], &g.ram[0x408000], [](std::byte b) { return b == std::byte{0}; }));
    CHECK(g.ram[0x3fffff] == std::byte{0xcc});

    const std::span<const std::byte> m(g.ram);
    const std::uint64_t info = 0x9500;
    const auto flags = get<std::uint32_t>(m, info);
    CHECK(flags == (mb::info_memory | mb::info_cmdline | mb::info_mods | mb::info_mmap | mb::info_loader_name));
    CHECK(get<std::uint32_t>(m, info + 4) == 639);
    CHECK(get<std::uint32_t>(m, info + 8) == (128u << 10) - 1024);
    CHECK(g.cstr(get<std::uint32_t>(m, info + 16)) == "guest.elf one two");
    CHECK(g.cstr(get<std::uint32_t>(m, info + 64)) == "vcpu");
    // Boot data starts after the kernel, page aligned.
    CHECK(get<std::uint32_t>(m, info + 16) == 0x408000);

    REQUIRE(get<std::uint32_t>(m, info + 20) == 2);
    const std::uint32_t mods_addr = get<std::uint32_t>(m, info + 24);
    CHECK(mods_addr % 16 == 0);
    for (std::uint32_t i = 0; i < 2; ++i) {
        const std::uint32_t start = get<std::uint32_t>(m, mods_addr + 16 * i);
        const std::uint32_t end = get<std::uint32_t>(m, mods_addr + 16 * i + 4);
        CHECK(start % 0x1000 == 0); // flag 0: page aligned
        CHECK(start >= 0x408000);
        CHECK(get<std::uint32_t>(m, mods_addr + 16 * i + 12) == 0);
        const std::string& want = i == 0 ? env : extra;
        REQUIRE(end - start == want.size());
        CHECK(std::memcmp(&g.ram[start], want.data(), want.size()) == 0);
        CHECK(g.cstr(get<std::uint32_t>(m, mods_addr + 16 * i + 8)) == (i == 0 ? "env.txt" : "second arg"));
    }
    // The second module starts on a page after the first one ends.
    CHECK(get<std::uint32_t>(m, mods_addr + 16) >= get<std::uint32_t>(m, mods_addr + 4));

    // Memory map at 0x9000: size 20 per entry, RAM / reserved / reserved / RAM.
    CHECK(get<std::uint32_t>(m, info + 48) == 0x9000);
    const std::uint32_t len = get<std::uint32_t>(m, info + 44);
    REQUIRE(len == 4 * 24);
    struct want_entry { std::uint64_t base, length; std::uint32_t type; };
    const want_entry want[] = {{0, 0x9fc00, 1}, {0x9fc00, 0x400, 2}, {0xe0000, 0x20000, 2}, {0x100000, (128u << 20) - 0x100000, 1}};
    for (std::size_t i = 0; i < 4; ++i) {
        const std::uint64_t e = 0x9000 + 24 * i;
        CHECK(get<std::uint32_t>(m, e) == 20);
        CHECK(get<std::uint64_t>(m, e + 4) == want[i].base);
        CHECK(get<std::uint64_t>(m, e + 12) == want[i].length);
        CHECK(get<std::uint32_t>(m, e + 20) == want[i].type);
    }
    CHECK(r->end <= g.ram.size());
}

TEST_CASE("multiboot: no modules, no loader name; an image in low memory and a virtual entry") {
    // Low-memory image at 0x1000..0x5000 (below the info area), boot data then at 1 MiB.
    auto img = make_image({{0x1000, 0x2000, 0x4000}}, mb::page_align, 0x80, 0x1000);
    guest g(4 << 20);
    x86::multiboot_options o;
    o.ram_size = g.ram.size();
    o.cmdline = "low";
    o.loader_name = "";
    auto r = x86::load_multiboot(img, g.mem, o);
    REQUIRE(r);
    const std::span<const std::byte> m(g.ram);
    CHECK(get<std::uint32_t>(m, 0x9500) == (mb::info_memory | mb::info_cmdline | mb::info_mmap));
    CHECK(get<std::uint32_t>(m, 0x9500 + 20) == 0);
    CHECK(get<std::uint32_t>(m, 0x9500 + 24) == 0);
    CHECK(get<std::uint32_t>(m, 0x9500 + 16) == 0x100000);
    CHECK(g.cstr(0x100000) == "low");

    // Linked high (vaddr 0xc0400000), loaded at 4 MiB: the entry is translated to physical.
    auto high = make_image({{0x400000, 0x1000, 0x1000, 0xc0400000}}, mb::page_align, 0x80, 0xc0400020);
    auto p = x86::parse_multiboot(high);
    REQUIRE(p);
    CHECK(p->entry == 0x400020);
}

TEST_CASE("multiboot: the entry state (flat 32-bit protected mode, EAX magic, EBX info)") {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(vcpu::kvm::mock::script{});
    REQUIRE(cpu.init(x86::multiboot_state{0x400010, 0x9500}));
    const auto regs = cpu.hal().block<x86::regs_block>();
    const auto sregs = cpu.hal().block<x86::sregs_block>();
    CHECK(regs.rip == 0x400010);
    CHECK(regs.rax == 0x2badb002);
    CHECK(regs.rbx == 0x9500);
    CHECK((regs.rflags & (1u << 9)) == 0); // IF clear
    CHECK(sregs.cs.selector == 0x08);
    CHECK(sregs.cs.db == 1);
    CHECK(sregs.cs.l == 0);
    CHECK(sregs.cs.base == 0);
    CHECK(sregs.cs.limit == 0xffffffff);
    for (const auto& seg : {sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss}) {
        CHECK(seg.selector == 0x10);
        CHECK(seg.base == 0);
        CHECK(seg.limit == 0xffffffff);
    }
    CHECK((sregs.cr0 & 1) == 1);            // PE
    CHECK((sregs.cr0 & (1ull << 31)) == 0); // PG
    CHECK(sregs.efer == 0);
}

TEST_CASE("multiboot: bad headers and flags") {
    auto img = make_image();
    SUBCASE("no magic") {
        put<std::uint32_t>(img, 0x80, 0);
        CHECK(detail_of(load_error(img)).find("no Multiboot header") != std::string::npos);
        CHECK(load_error(img).code == ENOEXEC);
    }
    SUBCASE("wrong checksum") {
        put<std::uint32_t>(img, 0x88, 0x12345678);
        CHECK(detail_of(load_error(img)).find("checksum") != std::string::npos);
    }
    SUBCASE("a.out kludge (flag 16)") {
        auto a = make_image({{0x400000, 0x3000, 0x5000}}, mb::page_align | mb::aout_kludge);
        CHECK(detail_of(load_error(a)).find("a.out kludge") != std::string::npos);
        CHECK(load_error(a).code == EOPNOTSUPP);
    }
    SUBCASE("video mode (flag 2)") {
        auto a = make_image({{0x400000, 0x3000, 0x5000}}, mb::video_mode);
        CHECK(detail_of(load_error(a)).find("video mode") != std::string::npos);
    }
    SUBCASE("unknown required flag (bit 5)") {
        auto a = make_image({{0x400000, 0x3000, 0x5000}}, 1u << 5);
        CHECK(detail_of(load_error(a)).find("bits 3..15") != std::string::npos);
    }
    SUBCASE("optional flag bits 17..31 are ignored") {
        auto a = make_image({{0x400000, 0x3000, 0x5000}}, mb::page_align | (1u << 20));
        CHECK(x86::parse_multiboot(a));
    }
}

TEST_CASE("multiboot: bad ELF headers") {
    auto img = make_image();
    SUBCASE("not ELF") {
        put<std::uint32_t>(img, 0, 0x11223344);
        CHECK(detail_of(load_error(img)).find("not an ELF") != std::string::npos);
    }
    SUBCASE("ELF64") {
        put<std::uint8_t>(img, 4, 2);
        CHECK(detail_of(load_error(img)).find("32-bit") != std::string::npos);
    }
    SUBCASE("big-endian") {
        put<std::uint8_t>(img, 5, 2);
        CHECK(detail_of(load_error(img)).find("little-endian") != std::string::npos);
    }
    SUBCASE("x86-64 machine") {
        put<std::uint16_t>(img, 18, 62);
        CHECK(detail_of(load_error(img)).find("EM_386") != std::string::npos);
    }
    SUBCASE("shared object") {
        put<std::uint16_t>(img, 16, 3);
        CHECK(detail_of(load_error(img)).find("ET_EXEC") != std::string::npos);
    }
    SUBCASE("program header size") {
        put<std::uint16_t>(img, 42, 40);
        CHECK(detail_of(load_error(img)).find("size is not 32") != std::string::npos);
    }
    SUBCASE("program headers past the end") {
        put<std::uint32_t>(img, 28, static_cast<std::uint32_t>(img.size() - 16));
        CHECK(detail_of(load_error(img)).find("program headers lie outside") != std::string::npos);
    }
    SUBCASE("huge phnum") {
        put<std::uint16_t>(img, 44, 0xffff);
        CHECK(detail_of(load_error(img)).find("program headers lie outside") != std::string::npos);
    }
    SUBCASE("entry outside the segments") {
        put<std::uint32_t>(img, 24, 0x900000);
        CHECK(detail_of(load_error(img)).find("entry point") != std::string::npos);
    }
    SUBCASE("no PT_LOAD") {
        put<std::uint32_t>(img, 52, 4); // PT_NOTE
        CHECK(detail_of(load_error(img)).find("no PT_LOAD") != std::string::npos);
    }
}

TEST_CASE("multiboot: truncated files") {
    const auto img = make_image();
    // Cut at every interesting boundary: each is an error, never a read past the end.
    for (std::size_t cut : {std::size_t{0}, std::size_t{3}, std::size_t{0x20}, std::size_t{0x84}, std::size_t{0x8b},
                            std::size_t{0x8c}, std::size_t{0x1000}, std::size_t{0x2fff}, img.size() - 1}) {
        CAPTURE(cut);
        std::vector<std::byte> t(img.begin(), img.begin() + static_cast<std::ptrdiff_t>(cut));
        const auto e = load_error(t);
        CHECK(e.code != 0);
        CHECK(std::string_view(e.detail).size() > 0);
    }
    std::vector<std::byte> t(img.begin(), img.begin() + 0x2000);
    CHECK(detail_of(load_error(t)).find("outside the file") != std::string::npos);
    std::vector<std::byte> hdr(img.begin(), img.begin() + 0x88);
    CHECK(detail_of(load_error(hdr)).find("truncated inside the Multiboot header") != std::string::npos);
}

TEST_CASE("multiboot: segments outside RAM, overlapping the info structures or each other") {
    SUBCASE("filesz > memsz") {
        auto img = make_image({{0x400000, 0x3000, 0x2000}});
        CHECK(detail_of(load_error(img)).find("p_filesz > p_memsz") != std::string::npos);
    }
    SUBCASE("beyond RAM") {
        auto img = make_image({{0xff0000, 0x3000, 0x20000}}, mb::page_align, 0x80, 0xff0000);
        CHECK(detail_of(load_error(img)).find("not inside guest RAM") != std::string::npos);
    }
    SUBCASE("in the BIOS / VGA hole") {
        auto img = make_image({{0xa0000, 0x1000, 0x1000}}, mb::page_align, 0x80, 0xa0000);
        CHECK(detail_of(load_error(img)).find("not inside guest RAM") != std::string::npos);
    }
    SUBCASE("crossing 4 GiB") {
        auto img = make_image({{0xfffff000, 0x1000, 0x2000}}, mb::page_align, 0x80, 0xfffff000);
        CHECK(detail_of(load_error(img)).find("4 GiB") != std::string::npos);
    }
    SUBCASE("over the info structure at 0x9500") {
        auto img = make_image({{0x8000, 0x1000, 0x2000}}, mb::page_align, 0x80, 0x8000);
        const auto e = load_error(img);
        CHECK(detail_of(e).find("info structures") != std::string::npos);
        CHECK(e.code == EEXIST);
    }
    SUBCASE("over the memory map at 0x9000") {
        auto img = make_image({{0x9400, 0x10, 0x10}}, mb::page_align, 0x80, 0x9400);
        CHECK(detail_of(load_error(img)).find("info structures") != std::string::npos);
    }
    SUBCASE("two segments overlap") {
        auto img = make_image({{0x400000, 0x3000, 0x5000}, {0x404000, 0x100, 0x100}});
        CHECK(detail_of(load_error(img)).find("overlap") != std::string::npos);
    }
    SUBCASE("RAM too small / too large") {
        auto img = make_image();
        x86::multiboot_options o;
        o.ram_size = 1 << 20;
        CHECK(detail_of(load_error(img, o)).find("RAM too small") != std::string::npos);
        o.ram_size = 4ull << 30;
        CHECK(detail_of(load_error(img, o)).find("3 GiB") != std::string::npos);
    }
}

TEST_CASE("multiboot: command line and modules too large") {
    const auto img = make_image();
    SUBCASE("command line over 64 KiB") {
        const std::string big(0x10000, 'a');
        x86::multiboot_options o;
        o.cmdline = big;
        const auto e = load_error(img, o);
        CHECK(detail_of(e).find("command line longer") != std::string::npos);
        CHECK(e.code == E2BIG);
    }
    SUBCASE("command line with a NUL") {
        x86::multiboot_options o;
        o.cmdline = std::string_view("a\0b", 3);
        CHECK(detail_of(load_error(img, o)).find("NUL") != std::string::npos);
    }
    SUBCASE("module larger than RAM after the kernel") {
        std::vector<std::byte> big(13 << 20);
        const std::array<x86::multiboot_module_source, 1> mods{{{big, "big"}}};
        x86::multiboot_options o;
        o.modules = mods;
        const auto e = load_error(img, o);
        CHECK(detail_of(e).find("module does not fit") != std::string::npos);
        CHECK(e.code == ENOMEM);
    }
    SUBCASE("too many modules") {
        std::vector<x86::multiboot_module_source> mods(17);
        x86::multiboot_options o;
        o.modules = mods;
        CHECK(detail_of(load_error(img, o)).find("more than 16") != std::string::npos);
    }
    SUBCASE("module string too long") {
        const std::string big(0x10000, 'm');
        const std::array<x86::multiboot_module_source, 1> mods{{{{}, big}}};
        x86::multiboot_options o;
        o.modules = mods;
        CHECK(detail_of(load_error(img, o)).find("module string longer") != std::string::npos);
    }
    SUBCASE("strings that just fit in RAM") {
        // 16 MiB RAM, kernel up to 4 MiB + 20 KiB: a 11 MiB module still fits.
        std::vector<std::byte> ok(11 << 20, std::byte{1});
        const std::array<x86::multiboot_module_source, 1> mods{{{ok, "ok"}}};
        guest g(16 << 20);
        x86::multiboot_options o;
        o.ram_size = g.ram.size();
        o.modules = mods;
        auto r = x86::load_multiboot(img, g.mem, o);
        REQUIRE(r);
        CHECK(r->end <= g.ram.size());
    }
}

TEST_CASE("multiboot: guest memory smaller than the RAM it was told about fails cleanly") {
    // The loader trusts ram_size for placement but every write is bounds-checked.
    const auto img = make_image();
    guest g(4 << 20); // the segments at 4 MiB are outside this memory
    x86::multiboot_options o;
    o.ram_size = 16 << 20;
    auto r = x86::load_multiboot(img, g.mem, o);
    REQUIRE_FALSE(r);
    CHECK(std::string_view(r.err().op) == "load multiboot");
    CHECK(r.err().code == EFAULT);
    CHECK(g.untouched());
}

TEST_CASE("multiboot: a module past the end of guest memory fails before the kernel is written") {
    // Found by tests/fuzz/multiboot.cpp: the segments, command line and info fit in guest memory,
    // a module placed by ram_size does not; the loader used to write the kernel, then fail.
    const auto img = make_image();             // segments at 4 MiB .. 4 MiB + 20 KiB
    guest g(6 << 20);
    x86::multiboot_options o;
    o.ram_size = 16 << 20;
    const std::vector<std::byte> big(4 << 20, std::byte{0x5a});
    const x86::multiboot_module_source mods[] = {{big, "big"}};
    o.modules = mods;
    auto r = x86::load_multiboot(img, g.mem, o);
    REQUIRE_FALSE(r);
    CHECK(std::string_view(r.err().op) == "load multiboot");
    CHECK(r.err().code == EFAULT);
    CHECK(g.untouched());
    // A read-only region is no place for the kernel either.
    std::vector<std::byte> ro(16 << 20, std::byte{0xcc});
    vcpu::guest_memory rom;
    REQUIRE(rom.add({0, ro, true}));
    o.modules = {};
    auto r2 = x86::load_multiboot(img, rom, o);
    REQUIRE_FALSE(r2);
    CHECK(std::string_view(r2.err().op) == "load multiboot");
    CHECK(std::all_of(ro.begin(), ro.end(), [](std::byte b) { return b == std::byte{0xcc}; }));
    // With memory for all of it the same load succeeds.
    guest whole(16 << 20);
    o.modules = mods;
    CHECK(x86::load_multiboot(img, whole.mem, o));
}

TEST_CASE("multiboot: mutated images (seeded) either load inside RAM or fail without writing") {
    // A deterministic stand-in for the fuzz target: random byte changes in the headers and random
    // truncations of a good image. The loader must never write outside guest memory (the
    // sanitizer builds check the reads) and must write nothing when it reports an error.
    // Loaded low (0x1000..0x8000) so a 2 MiB guest holds it and each check stays cheap.
    const auto good = make_image({{0x1000, 0x3000, 0x5000}, {0x6000, 0x100, 0x2000}}, mb::page_align, 0x80, 0x1000);
    std::vector<std::byte> ram(2 << 20, std::byte{0xcc});
    const std::vector<std::byte> pristine = ram;
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram, false}));
    std::uint32_t seed = 12345;
    auto next = [&seed] { return seed = seed * 1664525u + 1013904223u; };
    int loaded = 0, refused = 0;
    for (int i = 0; i < 1500; ++i) {
        auto img = good;
        const int changes = 1 + static_cast<int>(next() % 4);
        for (int c = 0; c < changes; ++c) {
            // Mostly the ELF header, program headers and Multiboot header (first 0x90 bytes).
            const std::size_t at = next() % 8 == 0 ? next() % img.size() : next() % 0x90;
            img[at] = static_cast<std::byte>(next() >> 24);
        }
        if (next() % 8 == 0) img.resize(next() % img.size());
        x86::multiboot_options o;
        o.ram_size = ram.size();
        o.cmdline = "fuzz";
        auto r = x86::load_multiboot(img, mem, o);
        if (r) {
            ++loaded;
            CHECK(r->end <= ram.size());
            std::memcpy(ram.data(), pristine.data(), ram.size());
        } else {
            ++refused;
            REQUIRE(std::memcmp(ram.data(), pristine.data(), ram.size()) == 0);
        }
    }
    CHECK(loaded > 0);
    CHECK(refused > 0);
}
