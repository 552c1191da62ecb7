// Fuzzes the PVH loader of an ELF vmlinux (arch/x86_64/linux_boot.hpp: find_pvh_entry,
// load_pvh_elf) into a small guest RAM with canaries around it (guest_ram.hpp).
//
// Input: u32 RAM size, u8 flags (bit 0: guest memory one page short of that RAM size), u16
// command-line length, u32 initrd length (at most 256 KiB), the command line, the initrd, then
// the ELF image.
// Invariants: on success hvm_start_info at 0x6000 is version 1 with the magic, the command line
// pointer (NUL-terminated line inside RAM), the module list (the initrd, page-aligned, above
// every PT_LOAD segment and inside RAM, with its bytes) and a memory map that lies in RAM or the
// documented reserved ranges, sorted and non-overlapping; the entry is the PHYS32_ENTRY note's;
// no PT_LOAD segment overlaps the loader's own structures, and every one that does not overlap
// another holds its file bytes and a zeroed bss; RAM of 1 MiB or less is refused; on failure the error names its operation and problem; nothing outside guest
// memory changed.
#include "guest_ram.hpp"

#include <algorithm>

namespace {

namespace x86 = vcpu::x86_64;
namespace bl = vcpu::x86_64::boot_layout;

template <class T>
T rd(std::span<const std::uint8_t> img, std::size_t off) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T) && off + i < img.size(); ++i) v |= std::uint64_t{img[off + i]} << (8 * i);
    return static_cast<T>(v);
}

using vcpu_fuzz::same_as;

bool overlaps(std::uint64_t a, std::uint64_t an, std::uint64_t b, std::uint64_t bn) {
    return an != 0 && bn != 0 && a < b + bn && b < a + an;
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    struct segment {
        std::uint32_t type;
        std::uint64_t off, paddr, filesz, memsz;
    };
    struct opts {
        std::uint32_t ram = 2u << 20;
        std::uint8_t flags = 0;
        std::string cmdline = "console=ttyS0 earlyprintk=serial";
        std::size_t initrd = 0;
        std::uint32_t descsz = 4;
        std::uint32_t note_type = 18;
        const char* note_name = "Xen";
        std::vector<segment> extra{};
        std::uint16_t phentsize = 56;
        std::uint8_t elf_class = 2;
        std::size_t truncate = 0;
        std::uint64_t load_at = 0x100000; ///< paddr of the first PT_LOAD (the second follows at +64 KiB)
    };
    auto seed = [&](const char* name, opts o) {
        // ELF header, program headers at 0x40, notes at 0x200, segment data from 0x400.
        std::vector<std::uint8_t> img(0x400 + 0x600);
        auto put = [&](std::size_t off, std::uint64_t v, unsigned n) {
            for (unsigned i = 0; i < n; ++i) img[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
        };
        std::vector<segment> ph = {{4, 0x200, 0, 2 * 20 + (o.descsz + 3) / 4 * 4 - 4, 0},
                                   {1, 0x400, o.load_at, 0x400, 0x800},
                                   {1, 0x800, o.load_at + 0x10000, 0x200, 0x200}};
        ph.insert(ph.end(), o.extra.begin(), o.extra.end());
        put(0, 0x464c457f, 4);
        put(4, o.elf_class, 1);
        put(5, 1, 1);
        put(0x20, 0x40, 8);
        put(0x36, o.phentsize, 2);
        put(0x38, ph.size(), 2);
        for (std::size_t i = 0; i < ph.size(); ++i) {
            const std::size_t at = 0x40 + i * 56;
            put(at, ph[i].type, 4);
            put(at + 8, ph[i].off, 8);
            put(at + 24, ph[i].paddr, 8);
            put(at + 32, ph[i].filesz, 8);
            put(at + 40, ph[i].memsz, 8);
        }
        // A GNU build-id note, then the Xen PHYS32_ENTRY note.
        put(0x200, 4, 4), put(0x204, 4, 4), put(0x208, 3, 4), std::memcpy(&img[0x20c], "GNU", 4), put(0x210, 0xabcd, 4);
        put(0x214, 4, 4), put(0x218, o.descsz, 4), put(0x21c, o.note_type, 4);
        std::memcpy(&img[0x220], o.note_name, 4);
        put(0x224, 0x1000123, 8);
        for (std::size_t i = 0x400; i < img.size(); ++i) img[i] = static_cast<std::uint8_t>(i * 29 + 1);
        img.resize(img.size() - std::min(o.truncate, img.size()));
        bytes_out b;
        b.put(o.ram).put(o.flags).put(static_cast<std::uint16_t>(o.cmdline.size())).put(static_cast<std::uint32_t>(o.initrd));
        b.raw(o.cmdline);
        for (std::size_t i = 0; i < o.initrd; ++i) b.put(static_cast<std::uint8_t>(i * 3));
        b.raw(img.data(), img.size());
        out.add(name, b);
    };
    seed("good", {});
    seed("good_initrd", {.initrd = 3000});
    seed("good_entry64", {.descsz = 8});
    seed("good_no_cmdline", {.cmdline = ""});
    seed("good_tight_ram", {.ram = 0x112000, .initrd = 100});
    seed("entry_bad_size", {.descsz = 2});
    seed("no_xen_note", {.note_type = 17});
    seed("note_name_xen_typo", {.note_name = "Xem"});
    seed("not_elf64", {.elf_class = 1});
    seed("phentsize_64", {.phentsize = 64});
    seed("truncated_phdrs", {.truncate = 0x600 + 0x400 - 0x60});
    seed("segment_outside_file", {.extra = {{1, 0x900, 0x120000, 0x1000, 0x1000}}});
    seed("segment_filesz_gt_memsz", {.extra = {{1, 0x900, 0x120000, 0x100, 0x80}}});
    seed("segment_past_ram", {.extra = {{1, 0x900, 0x1ff000, 0x100, 0x2000}}});
    seed("segment_paddr_huge", {.extra = {{1, 0x900, ~0ull - 0x10, 0x10, 0x100}}});
    seed("note_outside_file", {.extra = {{4, 0x2000, 0, 0x10, 0}}});
    seed("initrd_no_room", {.ram = 0x112000, .initrd = 0x3000});
    seed("ram_above_3g", {.ram = 0xc0001000});
    seed("cmdline_64k", {.cmdline = std::string(0xffff, 'c')});
    seed("memory_short_of_ram", {.flags = 1, .initrd = 64});
    seed("segment_over_start_info", {.extra = {{1, 0x900, 0x6000, 0x40, 0x40}}});
    seed("low_segments_ram_1m", {.ram = 0x100000, .load_at = 0x30000});
    seed("low_segments_ram_640k", {.ram = 0xa0000, .load_at = 0x30000});
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    const std::uint64_t ram_size = in.get<std::uint32_t>();
    const bool short_memory = (in.get<std::uint8_t>() & 1) != 0;
    const std::size_t cmdline_len = in.get<std::uint16_t>();
    const std::size_t initrd_len = in.get<std::uint32_t>() % (256u << 10);
    const auto cmd = in.take(cmdline_len);
    const auto initrd = in.take(initrd_len);
    const auto image = in.rest();

    vcpu_fuzz::guest_ram g(ram_size, short_memory ? 4096 : 0);
    x86::pvh_load_options o;
    o.kernel = std::as_bytes(image);
    o.initrd = std::as_bytes(initrd);
    o.cmdline = std::string_view(reinterpret_cast<const char*>(cmd.data()), cmd.size());
    o.ram_size = ram_size;
    const auto r = x86::load_pvh_elf(g.mem, o);
    VCPU_FUZZ_CHECK(g.canaries_intact());
    const auto entry = x86::find_pvh_entry(o.kernel);
    if (!r) {
        vcpu_fuzz::note("pvh: %s", r.err().message().c_str());
        vcpu_fuzz::check_error(r.err(), {"load PVH vmlinux", "write guest memory"});
        if (!entry) VCPU_FUZZ_CHECK(r.err() == entry.err() && std::string_view(r.err().detail) == entry.err().detail);
        return 0;
    }
    vcpu_fuzz::note("pvh: loaded, entry 0x%llx, kernel end 0x%llx, initrd 0x%llx", static_cast<unsigned long long>(r->entry),
                    static_cast<unsigned long long>(r->kernel_end), static_cast<unsigned long long>(r->initrd_addr));
    VCPU_FUZZ_CHECK(entry && *entry == r->entry);
    VCPU_FUZZ_CHECK(ram_size <= bl::max_ram && r->start_info == bl::pvh_start_info);

    // struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1.
    const std::uint64_t si = r->start_info;
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(si) == 0x336ec578 && g.get<std::uint32_t>(si + 4) == 1);
    const auto nr_modules = g.get<std::uint32_t>(si + 12);
    const auto modlist = g.get<std::uint64_t>(si + 16);
    const auto cmdline_paddr = g.get<std::uint64_t>(si + 24);
    const auto memmap = g.get<std::uint64_t>(si + 40);
    const auto entries = g.get<std::uint32_t>(si + 48);
    VCPU_FUZZ_CHECK(nr_modules == (initrd.empty() ? 0u : 1u));
    VCPU_FUZZ_CHECK(cmdline_paddr == bl::cmdline);
    VCPU_FUZZ_CHECK(same_as(g.at(cmdline_paddr, cmd.size()), cmd));
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(cmdline_paddr + cmd.size()) == 0);
    VCPU_FUZZ_CHECK(entries >= 1 && entries <= 128);
    std::vector<x86::e820_entry> map;
    for (std::uint32_t i = 0; i < entries; ++i) {
        const std::uint64_t at = memmap + i * 24ull;
        map.push_back({g.get<std::uint64_t>(at), g.get<std::uint64_t>(at + 8),
                       static_cast<x86::e820_type>(g.get<std::uint32_t>(at + 16))});
    }
    vcpu_fuzz::check_e820(map, ram_size);
    const std::uint64_t structs_end = memmap + entries * 24ull;

    // Segments: the highest end is kernel_end; each one clear of the loader's structures and of
    // the other segments holds its bytes.
    const auto phoff = rd<std::uint64_t>(image, 0x20);
    const auto phnum = rd<std::uint16_t>(image, 0x38);
    std::uint64_t end = 0;
    for (std::size_t i = 0; i < phnum; ++i) {
        const std::size_t ph = static_cast<std::size_t>(phoff) + i * 56;
        if (rd<std::uint32_t>(image, ph) != 1) continue;
        const auto off = rd<std::uint64_t>(image, ph + 8), paddr = rd<std::uint64_t>(image, ph + 24);
        const auto filesz = rd<std::uint64_t>(image, ph + 32), memsz = rd<std::uint64_t>(image, ph + 40);
        VCPU_FUZZ_CHECK(off <= image.size() && filesz <= image.size() - off && filesz <= memsz);
        VCPU_FUZZ_CHECK(paddr <= ram_size && memsz <= ram_size - paddr);
        end = std::max(end, paddr + memsz);
        // The loader refuses segments over its own structures.
        VCPU_FUZZ_CHECK(!overlaps(paddr, memsz, si, structs_end - si));
        VCPU_FUZZ_CHECK(!overlaps(paddr, memsz, bl::cmdline, cmd.size() + 1));
        bool clear = true;
        for (std::size_t j = 0; j < phnum && clear; ++j) {
            const std::size_t q = static_cast<std::size_t>(phoff) + j * 56;
            if (j != i && rd<std::uint32_t>(image, q) == 1)
                clear = !overlaps(paddr, memsz, rd<std::uint64_t>(image, q + 24), rd<std::uint64_t>(image, q + 40));
        }
        if (!clear) continue;
        VCPU_FUZZ_CHECK(same_as(g.at(paddr, filesz), image.subspan(off, filesz)));
        VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(g.at(paddr + filesz, memsz - filesz).data(), memsz - filesz, std::byte{0}));
    }
    VCPU_FUZZ_CHECK(r->kernel_end == end);
    if (!initrd.empty()) {
        VCPU_FUZZ_CHECK(modlist == si + 0x40);
        VCPU_FUZZ_CHECK(g.get<std::uint64_t>(modlist) == r->initrd_addr && g.get<std::uint64_t>(modlist + 8) == initrd.size());
        VCPU_FUZZ_CHECK(r->initrd_addr % 4096 == 0 && r->initrd_addr >= ((end + 0xfff) & ~0xfffull));
        VCPU_FUZZ_CHECK(r->initrd_addr + initrd.size() <= ram_size);
        VCPU_FUZZ_CHECK(same_as(g.at(r->initrd_addr, initrd.size()), initrd));
    } else {
        VCPU_FUZZ_CHECK(r->initrd_addr == 0 && modlist == 0);
    }
    return 0;
}
