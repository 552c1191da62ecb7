// Fuzzes the bzImage loader (arch/x86_64/linux_boot.hpp: parse_bzimage, load_bzimage) into a
// small guest RAM with canaries around it (guest_ram.hpp).
//
// Input: u32 RAM size, u8 flags (bit 0: guest memory one page short of that RAM size), u16
// command-line length, u32 initrd length (at most 256 KiB), the command line, the initrd, then
// the bzImage itself.
// Invariants: on success the zero page at 0x10000 carries the image's setup header with the
// loader's fields (type_of_loader, CAN_USE_HEAP, cmd_line_ptr, ramdisk fields) and an e820 map
// that lies in RAM or the documented reserved ranges, sorted and non-overlapping; the command
// line (NUL-terminated, shorter than cmdline_size), the protected-mode kernel and the initrd are
// in RAM at the reported places, page-aligned, above the kernel's init_size and below
// initrd_addr_max; on failure the error names its operation and problem, and a failure found
// before loading wrote nothing; either way nothing outside guest memory changed.
#include "guest_ram.hpp"

#include <algorithm>

namespace {

namespace x86 = vcpu::x86_64;
namespace bz = vcpu::x86_64::bzimage;
namespace bl = vcpu::x86_64::boot_layout;

using vcpu_fuzz::same_as;

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    struct opts {
        std::uint32_t ram = 2u << 20;
        std::uint8_t flags = 0;
        std::string cmdline = "console=ttyS0";
        std::size_t initrd = 0;
        std::uint16_t version = 0x020f;
        std::uint8_t setup_sects = 3;
        std::uint8_t loadflags = 1;
        std::uint8_t jump_len = 0x6a;
        std::uint32_t init_size = 0x40000;
        std::uint32_t initrd_max = 0x7fffffff;
        std::uint32_t cmdline_size = 2047;
        std::size_t kernel = 0x800;
        std::size_t truncate = 0; ///< image bytes cut off the end
        std::uint16_t boot_flag = 0xaa55;
        std::uint32_t magic = 0x53726448;
    };
    auto seed = [&](const char* name, opts o) {
        const std::size_t setup = (std::size_t{o.setup_sects == 0 ? 4u : o.setup_sects} + 1) * 512;
        std::vector<std::uint8_t> img(setup + o.kernel);
        auto put = [&](std::size_t off, std::uint64_t v, unsigned n) {
            for (unsigned i = 0; i < n && off + i < img.size(); ++i) img[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
        };
        put(bz::setup_sects, o.setup_sects, 1);
        put(bz::boot_flag, o.boot_flag, 2);
        put(0x200, 0xeb, 1);
        put(0x201, o.jump_len, 1);
        put(bz::header, o.magic, 4);
        put(bz::version, o.version, 2);
        put(bz::loadflags, o.loadflags, 1);
        put(bz::code32_start, 0x100000, 4);
        put(bz::initrd_addr_max, o.initrd_max, 4);
        put(bz::kernel_alignment, 0x200000, 4);
        put(bz::relocatable_kernel, 1, 1);
        put(bz::cmdline_size, o.cmdline_size, 4);
        put(bz::pref_address, 0x1000000, 8);
        put(bz::init_size, o.init_size, 4);
        for (std::size_t i = setup; i < img.size(); ++i) img[i] = static_cast<std::uint8_t>(i * 13);
        img.resize(img.size() - std::min(o.truncate, img.size()));
        bytes_out b;
        b.put(o.ram).put(o.flags).put(static_cast<std::uint16_t>(o.cmdline.size())).put(static_cast<std::uint32_t>(o.initrd));
        b.raw(o.cmdline);
        for (std::size_t i = 0; i < o.initrd; ++i) b.put(static_cast<std::uint8_t>(i ^ 0x5a));
        b.raw(img.data(), img.size());
        out.add(name, b);
    };
    seed("good", {});
    seed("good_initrd", {.initrd = 5000});
    seed("good_no_cmdline", {.cmdline = ""});
    seed("good_setup_sects_0", {.setup_sects = 0});
    seed("good_2_06", {.version = 0x0206, .jump_len = 0x3a, .init_size = 0});
    seed("good_initrd_max_low", {.initrd = 4096, .initrd_max = 0x17ffff});
    seed("initrd_too_big", {.initrd = 200000, .initrd_max = 0x14ffff});
    seed("initrd_page_rounding", {.ram = 0x142fff, .initrd = 3000, .init_size = 0x40000});
    seed("ram_too_small", {.ram = 0x120000});
    seed("ram_above_3g", {.ram = 0xc0001000});
    seed("memory_short_of_ram", {.flags = 1, .initrd = 100});
    seed("cmdline_too_long", {.cmdline = std::string(40, 'x'), .cmdline_size = 40});
    seed("cmdline_nul", {.cmdline = std::string("a\0b", 3)});
    seed("bad_boot_flag", {.boot_flag = 0x1234});
    seed("bad_magic", {.magic = 0x12345678});
    seed("protocol_2_05", {.version = 0x0205});
    seed("zimage", {.loadflags = 0});
    seed("setup_sects_huge", {.setup_sects = 200, .kernel = 0});
    seed("bad_jump", {.jump_len = 0x10});
    seed("jump_before_2_10_header", {.jump_len = 0x40});
    seed("no_kernel", {.kernel = 0});
    seed("truncated_in_setup", {.truncate = 0x900});
    seed("truncated_header", {.kernel = 0, .truncate = 0x600});
    seed("truncated_before_flag", {.kernel = 0, .truncate = 0x700});
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
    // The places the loader writes, marked to see that an early error wrote nothing.
    g.mark(bl::boot_params, bz::zero_page_size);
    g.mark(bl::cmdline, cmd.size() + 1);
    g.mark(bl::kernel, 4096);
    g.mark(ram_size >= 0x2000 ? ram_size - 0x2000 : 0, 0x2000);

    x86::linux_load_options o;
    o.kernel = std::as_bytes(image);
    o.initrd = std::as_bytes(initrd);
    o.cmdline = std::string_view(reinterpret_cast<const char*>(cmd.data()), cmd.size());
    o.ram_size = ram_size;
    const auto r = x86::load_bzimage(g.mem, o);
    VCPU_FUZZ_CHECK(g.canaries_intact());
    const auto parsed = x86::parse_bzimage(o.kernel);
    if (!r) {
        vcpu_fuzz::note("bzimage: %s", r.err().message().c_str());
        vcpu_fuzz::check_error(r.err(), {"load bzImage", "write guest memory"});
        if (std::string_view(r.err().op) == "load bzImage") {
            VCPU_FUZZ_CHECK(g.still_marked(bl::boot_params, bz::zero_page_size));
            VCPU_FUZZ_CHECK(g.still_marked(bl::cmdline, cmd.size() + 1));
            VCPU_FUZZ_CHECK(g.still_marked(bl::kernel, 4096));
            VCPU_FUZZ_CHECK(g.still_marked(ram_size >= 0x2000 ? ram_size - 0x2000 : 0, 0x2000));
        }
        // A header error is the parser's own.
        if (!parsed) VCPU_FUZZ_CHECK(r.err() == parsed.err() && std::string_view(r.err().detail) == parsed.err().detail);
        return 0;
    }
    vcpu_fuzz::note("bzimage: loaded, protocol %04x, initrd at 0x%llx", r->header.version,
                    static_cast<unsigned long long>(r->initrd_addr));
    VCPU_FUZZ_CHECK(parsed.has_value());
    const auto& h = r->header;
    VCPU_FUZZ_CHECK(h.version == parsed->version && h.kernel_offset == parsed->kernel_offset);
    VCPU_FUZZ_CHECK(h.version >= 0x0206 && (h.loadflags & 1) != 0);
    VCPU_FUZZ_CHECK(h.kernel_offset == (std::size_t{h.setup_sects} + 1) * 512 && h.kernel_offset <= 0x8000);
    VCPU_FUZZ_CHECK(h.kernel_size == image.size() - h.kernel_offset && h.kernel_size > 0);
    VCPU_FUZZ_CHECK(r->entry == bl::kernel && r->boot_params == bl::boot_params);
    VCPU_FUZZ_CHECK(r->kernel_end == bl::kernel + std::max<std::uint64_t>(h.init_size, h.kernel_size));
    VCPU_FUZZ_CHECK(r->kernel_end <= ram_size && ram_size <= bl::max_ram);

    // Zero page: the setup header copied from the image, then the loader's own fields.
    const auto zp = g.at(bl::boot_params, bz::zero_page_size);
    auto zget = [&](std::size_t off, unsigned n) {
        std::uint64_t v = 0;
        for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(zp[off + i])} << (8 * i);
        return v;
    };
    VCPU_FUZZ_CHECK(zget(bz::boot_flag, 2) == 0xaa55 && zget(bz::header, 4) == 0x53726448);
    VCPU_FUZZ_CHECK(zget(bz::version, 2) == h.version && zget(bz::setup_sects, 1) == image[bz::setup_sects]);
    VCPU_FUZZ_CHECK(zget(bz::type_of_loader, 1) == 0xff);
    VCPU_FUZZ_CHECK(zget(bz::loadflags, 1) == (h.loadflags | 0x80u));
    VCPU_FUZZ_CHECK(zget(bz::cmd_line_ptr, 4) == bl::cmdline);
    VCPU_FUZZ_CHECK(zget(bz::ramdisk_image, 4) == r->initrd_addr && zget(bz::ramdisk_size, 4) == r->initrd_size);
    const auto n = zget(bz::e820_entries, 1);
    VCPU_FUZZ_CHECK(n >= 1 && n <= bz::e820_max);
    std::vector<x86::e820_entry> map;
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t at = bz::e820_table + i * bz::e820_entry_size;
        map.push_back({zget(at, 8), zget(at + 8, 8), static_cast<x86::e820_type>(zget(at + 16, 4))});
    }
    vcpu_fuzz::check_e820(map, ram_size);

    // Command line, kernel and initrd where the loader says, inside RAM.
    VCPU_FUZZ_CHECK(cmd.size() + 1 <= h.cmdline_size && cmd.size() + 1 <= bl::cmdline_max);
    VCPU_FUZZ_CHECK(same_as(g.at(bl::cmdline, cmd.size()), cmd));
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(bl::cmdline + cmd.size()) == 0);
    VCPU_FUZZ_CHECK(same_as(g.at(bl::kernel, h.kernel_size), image.subspan(h.kernel_offset)));
    if (initrd.empty()) {
        VCPU_FUZZ_CHECK(r->initrd_addr == 0 && r->initrd_size == 0);
    } else {
        VCPU_FUZZ_CHECK(r->initrd_size == initrd.size() && r->initrd_addr % 4096 == 0);
        VCPU_FUZZ_CHECK(r->initrd_addr >= ((r->kernel_end + 0xfff) & ~0xfffull));
        VCPU_FUZZ_CHECK(r->initrd_addr + r->initrd_size <= ram_size);
        VCPU_FUZZ_CHECK(r->initrd_addr + r->initrd_size - 1 <= h.initrd_addr_max);
        VCPU_FUZZ_CHECK(same_as(g.at(r->initrd_addr, initrd.size()), initrd));
    }
    return 0;
}
