// Fuzzes the Multiboot v1 loader (arch/x86_64/multiboot.hpp: find_multiboot_header, is_multiboot,
// has_multiboot_magic, load_multiboot) into a guest RAM with canaries around it (guest_ram.hpp).
//
// Input: u32 RAM size, u8 flags (bit 0: guest memory one page short of that RAM size; bit 1: no
// boot loader name), u32 command-line length (mod 128 KiB), u8 module count (0..17), per module u8 string
// length and u32 size (mod 4 MiB; the bytes of module i come from a fixed pattern at offset 7i,
// so modules larger than RAM cost no input bytes), then the command line, the module strings and
// the ELF image.
// Invariants: on success the information structure at 0x9500 has flags memory | cmdline | mmap
// (| mods | loader name exactly when given), mem_lower = 639 KiB, mem_upper = RAM above 1 MiB;
// the memory map at 0x9000 (entry size 20) lies in RAM or the documented reserved ranges, sorted
// and non-overlapping, and covers RAM up to its end; the command line, loader name and module
// strings are NUL-terminated inside RAM and hold their bytes; modules are page aligned, inside
// RAM, clear of every PT_LOAD segment, of the info structures and of each other, and hold their
// bytes; every PT_LOAD holds its file bytes and a zeroed bss, lies in RAM and clear of
// 0x9000..0x9558; the entry lies in a segment; `is_multiboot` agrees with the load. On failure
// the error is "load multiboot" with a detail and guest memory is unchanged (it is filled with a
// known byte before every load). Nothing outside guest memory changes (canaries).
#include "guest_ram.hpp"

#include <arch/x86_64/multiboot.hpp>

#include <algorithm>
#include <array>

namespace {

namespace x86 = vcpu::x86_64;
namespace mb = vcpu::x86_64::multiboot;
namespace L = vcpu::x86_64::multiboot_layout;

template <class T>
T rd(std::span<const std::uint8_t> img, std::size_t off) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T) && off + i < img.size(); ++i) v |= std::uint64_t{img[off + i]} << (8 * i);
    return static_cast<T>(v);
}

bool overlaps(std::uint64_t a, std::uint64_t an, std::uint64_t b, std::uint64_t bn) {
    return an != 0 && bn != 0 && a < b + bn && b < a + an;
}

constexpr std::size_t pattern_bytes = 4u << 20;
/// Module bytes: a fixed pattern, so a module of any size costs 5 input bytes.
const std::vector<std::uint8_t>& pattern() {
    static const std::vector<std::uint8_t> p = [] {
        std::vector<std::uint8_t> v(pattern_bytes + 256);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint8_t>(i * 131 + (i >> 9));
        return v;
    }();
    return p;
}

/// A NUL-terminated string of `s.size()` bytes at `gpa` inside RAM.
void check_string(const vcpu_fuzz::guest_ram& g, std::uint64_t gpa, std::span<const std::uint8_t> s, std::uint64_t ram) {
    VCPU_FUZZ_CHECK(gpa < ram && s.size() < ram - gpa);
    VCPU_FUZZ_CHECK(vcpu_fuzz::same_as(g.at(gpa, s.size()), s));
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(gpa + s.size()) == 0);
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    struct segment {
        std::uint32_t type, off, vaddr, paddr, filesz, memsz;
    };
    struct module {
        std::string string;
        std::uint32_t size;
    };
    struct opts {
        std::uint32_t ram = 2u << 20;
        std::uint8_t flags = 0;
        std::string cmdline = "kernel.elf console=ttyS0";
        std::vector<module> modules{};
        std::uint32_t magic = mb::header_magic;
        std::uint32_t mb_flags = mb::page_align | mb::memory_info;
        std::int32_t checksum_error = 0;
        std::vector<segment> segments{{1, 0x200, 0x100000, 0x100000, 0x400, 0x800},
                                      {1, 0x600, 0x110000, 0x110000, 0x200, 0x1200}};
        std::uint32_t entry = 0x100010;
        std::size_t truncate = 0;
        std::uint8_t module_count_override = 0xff;
    };
    auto seed = [&](const char* name, opts o) {
        // ELF header, program headers at 0x34, the Multiboot header at 0x180, data from 0x200.
        std::vector<std::uint8_t> img(0x1000);
        auto put = [&](std::size_t off, std::uint64_t v, unsigned n) {
            for (unsigned i = 0; i < n; ++i) img[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
        };
        for (std::size_t i = 0x200; i < img.size(); ++i) img[i] = static_cast<std::uint8_t>(i * 29 + 1);
        put(0, x86::elf::magic, 4);
        put(4, 1, 1), put(5, 1, 1), put(6, 1, 1);
        put(16, x86::elf::et_exec, 2), put(18, x86::elf::em_386, 2), put(20, 1, 4);
        put(24, o.entry, 4), put(28, 0x34, 4), put(40, 52, 2), put(42, 32, 2), put(44, o.segments.size(), 2);
        for (std::size_t i = 0; i < o.segments.size(); ++i) {
            const std::size_t at = 0x34 + i * 32;
            const auto& s = o.segments[i];
            put(at, s.type, 4), put(at + 4, s.off, 4), put(at + 8, s.vaddr, 4), put(at + 12, s.paddr, 4);
            put(at + 16, s.filesz, 4), put(at + 20, s.memsz, 4), put(at + 24, 7, 4), put(at + 28, 0x1000, 4);
        }
        put(0x180, o.magic, 4), put(0x184, o.mb_flags, 4);
        put(0x188, static_cast<std::uint32_t>(0u - o.magic - o.mb_flags + static_cast<std::uint32_t>(o.checksum_error)), 4);
        img.resize(img.size() - std::min(o.truncate, img.size()));
        bytes_out b;
        b.put(o.ram).put(o.flags).put(static_cast<std::uint32_t>(o.cmdline.size()));
        b.put(static_cast<std::uint8_t>(o.module_count_override != 0xff ? o.module_count_override : o.modules.size()));
        for (const auto& m : o.modules) b.put(static_cast<std::uint8_t>(m.string.size())).put(m.size);
        for (std::size_t i = o.modules.size(); i < o.module_count_override && o.module_count_override != 0xff; ++i)
            b.put(std::uint8_t{1}).put(std::uint32_t{16});
        b.raw(o.cmdline);
        for (const auto& m : o.modules) b.raw(m.string);
        for (std::size_t i = o.modules.size(); i < o.module_count_override && o.module_count_override != 0xff; ++i)
            b.raw(std::string_view("m"));
        b.raw(img.data(), img.size());
        out.add(name, b);
    };
    seed("good", {});
    seed("good_modules", {.modules = {{"env", 300}, {"initrd root=/dev/ram", 0x2345}, {"", 0}}});
    seed("good_no_loader_name", {.flags = 2, .cmdline = ""});
    seed("good_low_segment", {.segments = {{1, 0x200, 0x20000, 0x20000, 0x100, 0x300}}, .entry = 0x20000});
    seed("good_virtual_entry", {.segments = {{1, 0x200, 0xc0100000, 0x100000, 0x400, 0x800}}, .entry = 0xc0100004});
    seed("good_tight_ram", {.ram = 2u << 20, .modules = {{"big", 0xed000}}});
    seed("good_ram_64m", {.ram = 64u << 20, .modules = {{"m", 4096}}});
    seed("bad_magic", {.magic = 0x1badb003});
    seed("bad_checksum", {.checksum_error = 1});
    seed("flags_video", {.mb_flags = mb::page_align | mb::video_mode});
    seed("flags_unknown_required", {.mb_flags = mb::memory_info | (1u << 5)});
    seed("flags_aout_kludge", {.mb_flags = mb::aout_kludge});
    seed("flags_optional_ignored", {.mb_flags = mb::page_align | (1u << 20)});
    seed("segment_outside_ram", {.segments = {{1, 0x200, 0x1ff000, 0x1ff000, 0x100, 0x2000}}, .entry = 0x1ff000});
    seed("segment_in_hole", {.segments = {{1, 0x200, 0xa0000, 0xa0000, 0x100, 0x100}}, .entry = 0xa0000});
    seed("segment_over_info", {.segments = {{1, 0x200, 0x9400, 0x9400, 0x100, 0x200}}, .entry = 0x9400});
    seed("segment_4g", {.segments = {{1, 0x200, 0xfffff000, 0xfffff000, 0x100, 0x2000}}, .entry = 0xfffff000});
    seed("segments_overlap", {.segments = {{1, 0x200, 0x100000, 0x100000, 0x100, 0x2000},
                                           {1, 0x300, 0x101000, 0x101000, 0x100, 0x100}}});
    seed("segment_outside_file", {.segments = {{1, 0xf00, 0x100000, 0x100000, 0x400, 0x400}}});
    seed("entry_outside", {.entry = 0x300000});
    seed("truncated_elf_header", {.truncate = 0x1000 - 0x20});
    seed("truncated", {.truncate = 0x1000 - 0x190});
    seed("truncated_header", {.truncate = 0x1000 - 0x186});
    seed("cmdline_64k", {.cmdline = std::string(0xffff, 'c')}); // with its NUL exactly the limit
    seed("cmdline_too_long", {.cmdline = std::string(0x10000, 'c')});
    seed("cmdline_nul", {.cmdline = std::string("a\0b", 3)});
    seed("module_too_big", {.modules = {{"big", 0x180000}}});
    seed("module_huge_ram_64m", {.ram = 64u << 20, .modules = {{"big", 0x3f0000}}});
    seed("too_many_modules", {.module_count_override = 17});
    seed("ram_too_small", {.ram = 1u << 20});
    seed("ram_above_3g", {.ram = 0xc0001000});
    seed("memory_short_of_ram", {.ram = 3u << 20, .flags = 1, .modules = {{"m", 0x1ed000}}});
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    const std::uint64_t ram_size = in.get<std::uint32_t>();
    const auto flags = in.get<std::uint8_t>();
    const std::size_t cmdline_len = in.get<std::uint32_t>() % (128u << 10);
    const std::size_t nmod = in.get<std::uint8_t>() % (x86::multiboot_options::max_modules + 2);
    std::array<std::size_t, x86::multiboot_options::max_modules + 1> string_len{}, mod_size{};
    for (std::size_t i = 0; i < nmod; ++i) {
        string_len[i] = in.get<std::uint8_t>();
        mod_size[i] = in.get<std::uint32_t>() % pattern_bytes;
    }
    const auto cmd = in.take(cmdline_len);
    std::array<std::span<const std::uint8_t>, x86::multiboot_options::max_modules + 1> strings{};
    std::array<x86::multiboot_module_source, x86::multiboot_options::max_modules + 1> mods{};
    for (std::size_t i = 0; i < nmod; ++i) {
        strings[i] = in.take(string_len[i]);
        // Modules start at different pattern offsets, so two modules never hold the same bytes.
        mods[i] = {std::as_bytes(std::span(pattern()).subspan(i * 7, mod_size[i])),
                   std::string_view(reinterpret_cast<const char*>(strings[i].data()), strings[i].size())};
    }
    const auto image = in.rest();
    const auto img = std::as_bytes(image);

    vcpu_fuzz::guest_ram g(ram_size, (flags & 1) != 0 ? 4096 : 0);
    g.mark(0, g.backing()); // the snapshot: every byte of guest memory untouched_fill
    x86::multiboot_options o;
    o.ram_size = ram_size;
    o.cmdline = std::string_view(reinterpret_cast<const char*>(cmd.data()), cmd.size());
    o.modules = std::span(mods.data(), nmod);
    if ((flags & 2) != 0) o.loader_name = {};
    const auto r = x86::load_multiboot(img, g.mem, o);
    VCPU_FUZZ_CHECK(g.canaries_intact());

    const auto hdr = x86::find_multiboot_header(img);
    VCPU_FUZZ_CHECK(x86::is_multiboot(img) == hdr.has_value());
    if (hdr) VCPU_FUZZ_CHECK(x86::has_multiboot_magic(img) && *hdr % 4 == 0 && *hdr + 12 <= img.size() && *hdr < 8192);
    if (!r) {
        vcpu_fuzz::note("multiboot: %s", r.err().message().c_str());
        vcpu_fuzz::check_error(r.err(), {"load multiboot"});
        if (!hdr) VCPU_FUZZ_CHECK(r.err() == hdr.err() && std::string_view(r.err().detail) == hdr.err().detail);
        VCPU_FUZZ_CHECK(g.still_marked(0, g.backing())); // a failed load writes nothing
        return 0;
    }
    vcpu_fuzz::note("multiboot: loaded, entry 0x%llx, end 0x%llx, %zu modules", static_cast<unsigned long long>(r->entry),
                    static_cast<unsigned long long>(r->end), nmod);
    VCPU_FUZZ_CHECK(hdr && *hdr == r->image.header_offset);
    VCPU_FUZZ_CHECK(ram_size >= L::min_ram && ram_size <= x86::boot_layout::max_ram);
    VCPU_FUZZ_CHECK(nmod <= x86::multiboot_options::max_modules);
    VCPU_FUZZ_CHECK(r->info == L::info && r->mmap == L::mmap && r->end <= ram_size);
    // Everything the loader wrote lies in the guest memory it was given (else it had to fail).
    VCPU_FUZZ_CHECK(r->end <= g.backing());

    // The information structure (§3.3).
    const std::uint64_t info = L::info;
    const auto iflags = g.get<std::uint32_t>(info);
    std::uint32_t want = mb::info_memory | mb::info_cmdline | mb::info_mmap;
    if (nmod != 0) want |= mb::info_mods;
    if (!o.loader_name.empty()) want |= mb::info_loader_name;
    VCPU_FUZZ_CHECK(iflags == want);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(info + 4) == 639);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(info + 8) == (ram_size - 0x100000) / 1024);
    const auto cmdline_at = g.get<std::uint32_t>(info + 16);
    const auto mods_count = g.get<std::uint32_t>(info + 20);
    const auto mods_addr = g.get<std::uint32_t>(info + 24);
    const auto mmap_length = g.get<std::uint32_t>(info + 44);
    const auto mmap_addr = g.get<std::uint32_t>(info + 48);
    const auto loader_at = g.get<std::uint32_t>(info + 64);
    VCPU_FUZZ_CHECK(cmdline_at == r->cmdline);
    check_string(g, cmdline_at, cmd, ram_size);
    if (!o.loader_name.empty()) {
        check_string(g, loader_at, std::span(reinterpret_cast<const std::uint8_t*>(o.loader_name.data()), o.loader_name.size()),
                     ram_size);
    } else {
        VCPU_FUZZ_CHECK(loader_at == 0);
    }

    // The memory map (§3.3 "mmap_addr"): entries of size 20, as an e820 map.
    VCPU_FUZZ_CHECK(mmap_addr == L::mmap && mmap_length % 24 == 0 && mmap_length != 0);
    VCPU_FUZZ_CHECK(mmap_addr + mmap_length <= info);
    std::vector<x86::e820_entry> map;
    std::uint64_t top = 0;
    for (std::uint32_t at = mmap_addr; at < mmap_addr + mmap_length; at += 24) {
        VCPU_FUZZ_CHECK(g.get<std::uint32_t>(at) == 20);
        const auto type = g.get<std::uint32_t>(at + 20);
        VCPU_FUZZ_CHECK(type == mb::mmap_available || type == mb::mmap_reserved);
        map.push_back({g.get<std::uint64_t>(at + 4), g.get<std::uint64_t>(at + 12),
                       type == mb::mmap_available ? x86::e820_type::ram : x86::e820_type::reserved});
        if (type == mb::mmap_available) top = std::max(top, map.back().addr + map.back().size);
    }
    vcpu_fuzz::check_e820(map, ram_size);
    VCPU_FUZZ_CHECK(top == ram_size);
    auto in_ram = [&](std::uint64_t a, std::uint64_t n) {
        for (const auto& e : map)
            if (e.type == x86::e820_type::ram && a >= e.addr && a + n <= e.addr + e.size) return true;
        return n == 0;
    };

    // PT_LOAD segments, read from the image independently of the loader.
    struct seg {
        std::uint64_t paddr, memsz;
    };
    std::vector<seg> segs;
    const auto phoff = rd<std::uint32_t>(image, 28);
    const auto phnum = rd<std::uint16_t>(image, 44);
    const auto entry = r->entry;
    bool entry_in = false;
    for (std::size_t i = 0; i < phnum; ++i) {
        const std::size_t ph = std::size_t{phoff} + i * 32;
        if (rd<std::uint32_t>(image, ph) != x86::elf::pt_load) continue;
        const auto off = rd<std::uint32_t>(image, ph + 4), paddr = rd<std::uint32_t>(image, ph + 12);
        const auto filesz = rd<std::uint32_t>(image, ph + 16), memsz = rd<std::uint32_t>(image, ph + 20);
        if (memsz == 0) continue;
        VCPU_FUZZ_CHECK(off <= image.size() && filesz <= image.size() - off && filesz <= memsz);
        VCPU_FUZZ_CHECK(in_ram(paddr, memsz));
        VCPU_FUZZ_CHECK(!overlaps(paddr, memsz, L::mmap, L::info_end - L::mmap));
        VCPU_FUZZ_CHECK(vcpu_fuzz::same_as(g.at(paddr, filesz), image.subspan(off, filesz)));
        VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(g.at(paddr + filesz, memsz - filesz).data(), memsz - filesz, std::byte{0}));
        VCPU_FUZZ_CHECK(!overlaps(paddr, memsz, cmdline_at, cmd.size() + 1));
        entry_in = entry_in || (entry >= paddr && entry - paddr < memsz);
        segs.push_back({paddr, memsz});
    }
    VCPU_FUZZ_CHECK(entry_in);

    // Modules (§3.3 "mods_addr"): page aligned (header flag 0, and always done), in RAM, clear of
    // the segments, the info structures, the module list and each other, holding their bytes.
    VCPU_FUZZ_CHECK(mods_count == nmod);
    if (nmod == 0) {
        VCPU_FUZZ_CHECK(mods_addr == 0 && r->mods == 0);
        return 0;
    }
    VCPU_FUZZ_CHECK(mods_addr == r->mods && in_ram(mods_addr, nmod * 16ull));
    for (std::size_t i = 0; i < nmod; ++i) {
        const std::uint64_t e = mods_addr + i * 16;
        const auto start = g.get<std::uint32_t>(e), end = g.get<std::uint32_t>(e + 4);
        const auto str = g.get<std::uint32_t>(e + 8);
        VCPU_FUZZ_CHECK(g.get<std::uint32_t>(e + 12) == 0);
        VCPU_FUZZ_CHECK(start == r->module_addr[i] && start % mb::page == 0);
        VCPU_FUZZ_CHECK(end >= start && end - start == mod_size[i] && in_ram(start, end - start));
        VCPU_FUZZ_CHECK(vcpu_fuzz::same_as(g.at(start, end - start),
                                           std::span(pattern()).subspan(i * 7, mod_size[i])));
        check_string(g, str, strings[i], ram_size);
        for (const auto& s : segs) VCPU_FUZZ_CHECK(!overlaps(start, end - start, s.paddr, s.memsz));
        VCPU_FUZZ_CHECK(!overlaps(start, end - start, L::mmap, L::info_end - L::mmap));
        VCPU_FUZZ_CHECK(!overlaps(start, end - start, mods_addr, nmod * 16ull));
        VCPU_FUZZ_CHECK(!overlaps(start, end - start, cmdline_at, cmd.size() + 1));
        VCPU_FUZZ_CHECK(!overlaps(str, strings[i].size() + 1, mods_addr, nmod * 16ull));
        for (std::size_t j = 0; j < i; ++j)
            VCPU_FUZZ_CHECK(!overlaps(start, end - start, r->module_addr[j], mod_size[j]));
    }
    for (const auto& s : segs) VCPU_FUZZ_CHECK(!overlaps(mods_addr, nmod * 16ull, s.paddr, s.memsz));
    return 0;
}
