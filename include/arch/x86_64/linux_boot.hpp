#pragma once
/// \file
/// Loading Linux on x86-64:
///
/// - `parse_bzimage` / `load_bzimage`: a bzImage per the Linux x86 boot
///   protocol (Documentation/arch/x86/boot.rst): the setup header is checked
///   (boot flag 0xAA55, "HdrS", protocol >= 2.06, LOADED_HIGH, setup_sects,
///   cmdline_size, initrd_addr_max, init_size), a `boot_params` "zero page"
///   is built at 0x10000 with an e820 map, the command line goes to 0x20000,
///   the protected-mode kernel to 0x100000 and the initrd as high as its
///   limit allows. Entry: the 32-bit boot protocol (`flat_protected_mode`,
///   RIP = 0x100000, RSI = 0x10000).
/// - `load_pvh_elf`: an uncompressed ELF `vmlinux` through its PVH entry
///   point (ELF note `XEN_ELFNOTE_PHYS32_ENTRY`, xen/include/public/elfnote.h;
///   start info per xen/include/public/arch-x86/hvm/start_info.h), entered
///   with `pvh_entry` (32-bit flat protected mode, EBX = start info).
///
/// Every field read from an image is bounds-checked against the image, and
/// every write goes through `vcpu::basic_guest_memory` (bounds-checked), so a
/// truncated or hostile image yields an `error` whose `detail` names the
/// problem, never a stray read or write. Setup-path code: no exceptions, no
/// allocation.

#include <arch/x86_64/init.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace vcpu::x86_64 {

/// Guest physical layout used by the loaders (boot.rst "Sample Boot
/// Configuration" for the 32-bit entry; the MP table sits in the last KiB
/// below 640 KiB, where MP spec 1.4 §4 tells the OS to search).
namespace boot_layout {
inline constexpr std::uint64_t boot_params = 0x10000;   ///< the zero page (RSI at entry)
inline constexpr std::uint64_t cmdline = 0x20000;       ///< kernel command line
inline constexpr std::uint64_t cmdline_max = 0x10000;   ///< bytes reserved for it
inline constexpr std::uint64_t kernel = 0x100000;       ///< protected-mode kernel (code32_start)
inline constexpr std::uint64_t low_ram_end = 0x9fc00;   ///< end of usable base memory (639 KiB)
inline constexpr std::uint64_t mptable = 0x9fc00;       ///< MP floating pointer + config table
inline constexpr std::uint64_t bios_rom = 0xe0000;      ///< reserved BIOS area up to 1 MiB
inline constexpr std::uint64_t high_ram = 0x100000;     ///< RAM resumes at 1 MiB
inline constexpr std::uint64_t pvh_start_info = 0x6000; ///< hvm_start_info for the PVH path
inline constexpr std::uint64_t max_ram = 0xc0000000;    ///< RAM must end below the 32-bit PCI hole
} // namespace boot_layout

/// Offsets and constants of `struct setup_header` / `struct boot_params`
/// (boot.rst "The Real-Mode Kernel Header" and "Details of Header Fields";
/// Documentation/arch/x86/zero-page.rst).
namespace bzimage {
inline constexpr std::size_t setup_sects = 0x1f1;     ///< u8; 0 means 4
inline constexpr std::size_t vid_mode = 0x1fa;        ///< u16
inline constexpr std::size_t boot_flag = 0x1fe;       ///< u16 = 0xAA55
inline constexpr std::size_t jump = 0x200;            ///< u16; byte 0x201 + 0x202 = header end
inline constexpr std::size_t header = 0x202;          ///< u32 = "HdrS"
inline constexpr std::size_t version = 0x206;         ///< u16 protocol version
inline constexpr std::size_t type_of_loader = 0x210;  ///< u8
inline constexpr std::size_t loadflags = 0x211;       ///< u8
inline constexpr std::size_t code32_start = 0x214;    ///< u32
inline constexpr std::size_t ramdisk_image = 0x218;   ///< u32
inline constexpr std::size_t ramdisk_size = 0x21c;    ///< u32
inline constexpr std::size_t heap_end_ptr = 0x224;    ///< u16
inline constexpr std::size_t cmd_line_ptr = 0x228;    ///< u32
inline constexpr std::size_t initrd_addr_max = 0x22c; ///< u32
inline constexpr std::size_t kernel_alignment = 0x230; ///< u32
inline constexpr std::size_t relocatable_kernel = 0x234; ///< u8
inline constexpr std::size_t xloadflags = 0x236;      ///< u16
inline constexpr std::size_t cmdline_size = 0x238;    ///< u32 (2.06+)
inline constexpr std::size_t pref_address = 0x258;    ///< u64 (2.10+)
inline constexpr std::size_t init_size = 0x260;       ///< u32 (2.10+)
/// The part of the header a 2.06 kernel is guaranteed to have.
inline constexpr std::size_t min_header_end = cmdline_size + 4;
/// The part of the header this loader reads when the kernel reports 2.10+.
inline constexpr std::size_t header_end_2_10 = init_size + 4;

inline constexpr std::uint16_t boot_flag_magic = 0xaa55;  ///< boot_flag at 0x1fe: 0xAA55
inline constexpr std::uint32_t header_magic = 0x53726448; ///< "HdrS"
inline constexpr std::uint16_t min_version = 0x0206;      ///< cmdline_size appears in 2.06
inline constexpr std::uint8_t loaded_high = 0x01;         ///< loadflags bit 0: kernel at 1 MiB
inline constexpr std::uint8_t can_use_heap = 0x80;        ///< loadflags bit 7
inline constexpr std::uint8_t loader_undefined = 0xff;    ///< type_of_loader: "undefined"
inline constexpr std::uint16_t vga_normal = 0xffff;       ///< vid_mode "normal"
inline constexpr std::size_t sector = 512;  ///< bytes per setup sector
inline constexpr std::uint8_t default_setup_sects = 4;    ///< setup_sects == 0 means 4
/// The real-mode setup code must fit below the 32 KiB the protocol gives it
/// (boot.rst: setup + heap + stack in one 64 KiB segment; 0x7fff is the
/// documented maximum of setup_sects * 512 + 512 in practice).
inline constexpr std::size_t max_setup_bytes = 0x8000;

// boot_params (zero page) fields the loader fills.
inline constexpr std::size_t zero_page_size = 4096;  ///< size of `struct boot_params`
inline constexpr std::size_t ext_ramdisk_image = 0x0c0;  ///< `ext_ramdisk_image`: initrd address bits 32-63
inline constexpr std::size_t ext_ramdisk_size = 0x0c4;  ///< `ext_ramdisk_size`: initrd size bits 32-63
inline constexpr std::size_t ext_cmd_line_ptr = 0x0c8;  ///< `ext_cmd_line_ptr`: command-line address bits 32-63
inline constexpr std::size_t e820_entries = 0x1e8;  ///< `e820_entries`: u8 count
inline constexpr std::size_t e820_table = 0x2d0;  ///< `e820_table`: the map, `e820_max` entries
inline constexpr std::size_t e820_max = 128; ///< E820_MAX_ENTRIES_ZEROPAGE
inline constexpr std::size_t e820_entry_size = 20;  ///< `struct boot_e820_entry`: u64 addr, u64 size, u32 type (packed)
} // namespace bzimage

/// e820 memory types (ACPI 6.4 §15 "System Address Map Interfaces", Table 15.312).
enum class e820_type : std::uint32_t { ram = 1, reserved = 2, acpi = 3, nvs = 4, unusable = 5 };

/// One e820 entry.
struct e820_entry {
    std::uint64_t addr = 0;  ///< start (guest physical)
    std::uint64_t size = 0;  ///< bytes
    e820_type type = e820_type::ram;  ///< what the range is
};

/// The e820 map for `ram` bytes of RAM at guest physical 0: base memory
/// below 639 KiB, the reserved EBDA/MP-table KiB, the reserved BIOS area
/// 0xe0000..1 MiB (the legacy VGA hole 0xa0000..0xe0000 is left out), RAM
/// from 1 MiB to the top. Precondition: `ram > 1 MiB`.
[[nodiscard]] constexpr std::array<e820_entry, 4> pc_e820_map(std::uint64_t ram) noexcept {
    using namespace boot_layout;
    return {{{0, low_ram_end, e820_type::ram},
             {low_ram_end, 0xa0000 - low_ram_end, e820_type::reserved},
             {bios_rom, high_ram - bios_rom, e820_type::reserved},
             {high_ram, ram - high_ram, e820_type::ram}}};
}

/// What `parse_bzimage` found in a setup header.
struct bzimage_info {
    std::uint16_t version = 0;          ///< protocol version, e.g. 0x020f
    std::uint8_t setup_sects = 0;       ///< as used (0 replaced by 4)
    std::uint8_t loadflags = 0;  ///< `loadflags` (`loaded_high`, `can_use_heap`, ...)
    bool relocatable = false;  ///< `relocatable_kernel`
    std::uint16_t xloadflags = 0;  ///< `xloadflags` (2.12+; 0 before)
    std::uint32_t initrd_addr_max = 0;  ///< `initrd_addr_max`: highest address the initrd may end at
    std::uint32_t cmdline_size = 0;  ///< `cmdline_size`: longest command line, NUL excluded
    std::uint32_t kernel_alignment = 0;  ///< `kernel_alignment` (relocatable kernels)
    std::uint64_t pref_address = 0;  ///< `pref_address`: preferred load address (2.10+)
    std::uint32_t init_size = 0;        ///< bytes the kernel needs from its load address (2.10+)
    std::size_t header_end = 0;         ///< end of the setup header in the image (0x202 + byte 0x201)
    std::size_t kernel_offset = 0;      ///< file offset of the protected-mode kernel
    std::size_t kernel_size = 0;        ///< its size in bytes
};

namespace detail {
/// Little-endian read of a `T` at `off`; false when it does not fit.
template <class T>
[[nodiscard]] constexpr bool read_le(std::span<const std::byte> img, std::size_t off, T& out) noexcept {
    if (off > img.size() || img.size() - off < sizeof(T)) return false;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
        v |= std::uint64_t{std::to_integer<std::uint8_t>(img[off + i])} << (8 * i);
    out = static_cast<T>(v);
    return true;
}
inline constexpr const char* load_op = "load bzImage";
[[nodiscard]] constexpr error bad(int code, const char* why) noexcept { return error{load_op, code, why}; }
} // namespace detail

/// Checks a bzImage's setup header (boot.rst "The Real-Mode Kernel Header").
/// Errors (`op` "load bzImage", `detail` says which): image truncated before
/// the boot flag / header magic / version / 2.06 header / end of header /
/// setup code / kernel; bad boot flag; bad header magic; protocol older than
/// 2.06; not LOADED_HIGH; setup_sects too large; empty kernel.
[[nodiscard]] inline result<bzimage_info> parse_bzimage(std::span<const std::byte> img) noexcept {
    using namespace bzimage;
    using detail::bad;
    using detail::read_le;
    bzimage_info h{};
    std::uint16_t flag = 0;
    if (!read_le(img, boot_flag, flag)) return bad(ENOEXEC, "image truncated before the boot flag (0x1fe)");
    if (flag != boot_flag_magic) return bad(ENOEXEC, "bad boot flag: 0x1fe is not 0xAA55");
    std::uint32_t magic = 0;
    if (!read_le(img, header, magic)) return bad(ENOEXEC, "image truncated before the \"HdrS\" magic (0x202)");
    if (magic != header_magic) return bad(ENOEXEC, "bad header magic: 0x202 is not \"HdrS\" (pre-2.00 kernel or not a bzImage)");
    if (!read_le(img, version, h.version)) return bad(ENOEXEC, "image truncated before the protocol version (0x206)");
    if (h.version < min_version) return bad(EPROTO, "boot protocol older than 2.06");
    std::uint8_t jump_len = 0;
    if (!read_le(img, jump + 1, jump_len)) return bad(ENOEXEC, "image truncated in the jump (0x200)");
    h.header_end = header + jump_len;
    if (h.header_end < min_header_end) return bad(ENOEXEC, "setup header ends before cmdline_size (0x238): bad jump at 0x200");
    if (img.size() < min_header_end) return bad(ENOEXEC, "image truncated inside the 2.06 setup header");
    if (img.size() < h.header_end) return bad(ENOEXEC, "image truncated before the end of the setup header");
    (void)read_le(img, bzimage::setup_sects, h.setup_sects);
    (void)read_le(img, bzimage::loadflags, h.loadflags);
    std::uint8_t reloc = 0;
    (void)read_le(img, relocatable_kernel, reloc);
    h.relocatable = reloc != 0;
    (void)read_le(img, bzimage::xloadflags, h.xloadflags);
    (void)read_le(img, bzimage::initrd_addr_max, h.initrd_addr_max);
    (void)read_le(img, bzimage::cmdline_size, h.cmdline_size);
    (void)read_le(img, bzimage::kernel_alignment, h.kernel_alignment);
    if (h.version >= 0x020a) {
        if (h.header_end < header_end_2_10 || img.size() < header_end_2_10)
            return bad(ENOEXEC, "image truncated inside the 2.10 setup header (init_size at 0x260)");
        (void)read_le(img, bzimage::pref_address, h.pref_address);
        (void)read_le(img, bzimage::init_size, h.init_size);
    }
    if ((h.loadflags & loaded_high) == 0)
        return bad(ENOEXEC, "not a bzImage: LOADED_HIGH is clear (zImage loads at 0x10000)");
    if (h.setup_sects == 0) h.setup_sects = default_setup_sects;
    const std::size_t setup_bytes = (std::size_t{h.setup_sects} + 1) * sector;
    if (setup_bytes > max_setup_bytes) return bad(E2BIG, "setup_sects too large (real-mode setup over 32 KiB)");
    if (img.size() < setup_bytes) return bad(ENOEXEC, "image truncated inside the real-mode setup code");
    if (img.size() == setup_bytes) return bad(ENOEXEC, "image truncated: no protected-mode kernel after the setup code");
    h.kernel_offset = setup_bytes;
    h.kernel_size = img.size() - setup_bytes;
    return h;
}

/// Inputs of `load_bzimage`.
struct linux_load_options {
    std::span<const std::byte> kernel;  ///< the bzImage file
    std::span<const std::byte> initrd;  ///< may be empty
    std::string_view cmdline;           ///< without the terminating NUL
    std::uint64_t ram_size = 0;         ///< bytes of RAM at guest physical 0
};

/// Where things went.
struct linux_loaded {
    bzimage_info header{};  ///< what `parse_bzimage` found
    std::uint64_t entry = boot_layout::kernel;             ///< RIP for `flat_protected_mode`
    std::uint64_t boot_params = boot_layout::boot_params;  ///< RSI
    std::uint64_t kernel_end = 0;   ///< end of kernel + init_size
    std::uint64_t initrd_addr = 0;  ///< 0 without an initrd
    std::uint64_t initrd_size = 0;  ///< initrd bytes
};

/// Loads a bzImage into `mem` (RAM at guest physical 0..`ram_size`):
/// checks the header (`parse_bzimage`), then RAM size, command line length
/// (< cmdline_size) and initrd placement, and only then writes the zero page,
/// e820 map, command line, kernel and initrd. Extra errors: "RAM too small",
/// "RAM above 3 GiB", "command line longer than cmdline_size", "initrd does
/// not fit below initrd_addr_max and above the kernel", and any
/// `guest_memory` write error.
template <std::size_t N>
[[nodiscard]] result<linux_loaded> load_bzimage(basic_guest_memory<N>& mem, const linux_load_options& o) noexcept {
    using namespace bzimage;
    using detail::bad;
    auto parsed = parse_bzimage(o.kernel);
    if (!parsed) return parsed.err();
    linux_loaded out{};
    out.header = *parsed;
    const auto& h = out.header;

    if (o.ram_size > boot_layout::max_ram) return bad(EINVAL, "RAM above 3 GiB is not supported (no PCI hole split)");
    const std::uint64_t need = h.init_size > h.kernel_size ? h.init_size : h.kernel_size;
    out.kernel_end = boot_layout::kernel + need;
    if (o.ram_size < out.kernel_end) return bad(ENOMEM, "RAM too small for the kernel (1 MiB + init_size)");
    if (o.cmdline.size() + 1 > h.cmdline_size || o.cmdline.size() + 1 > boot_layout::cmdline_max)
        return bad(E2BIG, "command line longer than the kernel's cmdline_size");
    for (char c : o.cmdline)
        if (c == '\0') return bad(EINVAL, "command line contains a NUL byte");

    if (!o.initrd.empty()) {
        // boot.rst: the initrd must lie below initrd_addr_max (inclusive)
        // and, in practice, as high as possible; page aligned.
        std::uint64_t top = std::uint64_t{h.initrd_addr_max} + 1;
        if (top > o.ram_size) top = o.ram_size;
        const std::uint64_t size = o.initrd.size();
        const std::uint64_t page_up = (out.kernel_end + 0xfff) & ~std::uint64_t{0xfff};
        if (size > top || ((top - size) & ~std::uint64_t{0xfff}) < page_up)
            return bad(ENOMEM, "initrd does not fit below initrd_addr_max and above the kernel");
        out.initrd_addr = (top - size) & ~std::uint64_t{0xfff};
        out.initrd_size = size;
    }

    // Zero page: a copy of the setup header at its own offset, then our fields.
    std::array<std::byte, zero_page_size> zp{};
    std::memcpy(zp.data() + setup_sects, o.kernel.data() + setup_sects, h.header_end - setup_sects);
    auto put = [&zp]<class T>(std::size_t off, T v) {
        for (std::size_t i = 0; i < sizeof(T); ++i)
            zp[off + i] = static_cast<std::byte>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
    };
    put(vid_mode, vga_normal);
    put(type_of_loader, loader_undefined);
    put(bzimage::loadflags, static_cast<std::uint8_t>(h.loadflags | can_use_heap));
    put(heap_end_ptr, std::uint16_t{0xe000}); // boot.rst: 0xe000 - 0x200 for a 2.02+ kernel's heap
    put(cmd_line_ptr, static_cast<std::uint32_t>(boot_layout::cmdline));
    put(ext_cmd_line_ptr, std::uint32_t{0});
    put(ramdisk_image, static_cast<std::uint32_t>(out.initrd_addr));
    put(ramdisk_size, static_cast<std::uint32_t>(out.initrd_size));
    put(ext_ramdisk_image, static_cast<std::uint32_t>(out.initrd_addr >> 32));
    put(ext_ramdisk_size, static_cast<std::uint32_t>(out.initrd_size >> 32));
    const auto map = pc_e820_map(o.ram_size);
    put(e820_entries, static_cast<std::uint8_t>(map.size()));
    for (std::size_t i = 0; i < map.size(); ++i) {
        const std::size_t at = e820_table + i * e820_entry_size;
        put(at, map[i].addr);
        put(at + 8, map[i].size);
        put(at + 16, static_cast<std::uint32_t>(map[i].type));
    }
    VCPU_TRY_VOID(mem.write(boot_layout::boot_params, zp));
    VCPU_TRY_VOID(mem.write(boot_layout::cmdline, std::as_bytes(std::span(o.cmdline.data(), o.cmdline.size()))));
    VCPU_TRY_VOID(mem.write_le(boot_layout::cmdline + o.cmdline.size(), std::uint8_t{0}));
    VCPU_TRY_VOID(mem.write(boot_layout::kernel, o.kernel.subspan(h.kernel_offset)));
    if (!o.initrd.empty()) VCPU_TRY_VOID(mem.write(out.initrd_addr, o.initrd));
    return out;
}

// ---------------------------------------------------------------------------
// PVH entry of an ELF vmlinux
// ---------------------------------------------------------------------------

/// ELF and PVH constants (ELF-64 Object File Format 1.5; Xen public headers).
namespace pvh {
inline constexpr std::uint32_t xen_elfnote_phys32_entry = 18;  ///< XEN_ELFNOTE_PHYS32_ENTRY
inline constexpr std::uint32_t start_info_magic = 0x336ec578;  ///< XEN_HVM_START_MAGIC_VALUE
inline constexpr std::uint32_t pt_load = 1;  ///< PT_LOAD
inline constexpr std::uint32_t pt_note = 4;  ///< PT_NOTE
inline constexpr std::size_t start_info_size = 56;   ///< struct hvm_start_info (version 1)
inline constexpr std::size_t memmap_entry_size = 24; ///< struct hvm_memmap_table_entry
inline constexpr std::size_t modlist_entry_size = 32; ///< struct hvm_modlist_entry
} // namespace pvh

/// Inputs of `load_pvh_elf` (as `linux_load_options`, the image is an ELF).
using pvh_load_options = linux_load_options;

/// Where a PVH load put things.
struct pvh_loaded {
    std::uint64_t entry = 0;      ///< from XEN_ELFNOTE_PHYS32_ENTRY
    std::uint64_t start_info = boot_layout::pvh_start_info; ///< EBX at entry
    std::uint64_t kernel_end = 0; ///< highest p_paddr + p_memsz
    std::uint64_t initrd_addr = 0;  ///< initrd address in guest memory (0 without one)
};

/// Finds the PVH entry point in an ELF64 little-endian x86-64 image.
/// Errors ("load PVH vmlinux"): not ELF / not ELF64 LE / bad header sizes /
/// program headers outside the file / a note outside its segment / no
/// XEN_ELFNOTE_PHYS32_ENTRY note.
[[nodiscard]] inline result<std::uint64_t> find_pvh_entry(std::span<const std::byte> img) noexcept {
    using detail::read_le;
    constexpr const char* op = "load PVH vmlinux";
    std::uint32_t magic = 0;
    if (!read_le(img, 0, magic) || magic != 0x464c457f) return error{op, ENOEXEC, "not an ELF file"};
    std::uint8_t cls = 0, data = 0;
    (void)read_le(img, 4, cls);
    (void)read_le(img, 5, data);
    if (cls != 2 || data != 1) return error{op, ENOEXEC, "not a 64-bit little-endian ELF"};
    std::uint64_t phoff = 0;
    std::uint16_t phentsize = 0, phnum = 0;
    if (!read_le(img, 0x20, phoff) || !read_le(img, 0x36, phentsize) || !read_le(img, 0x38, phnum))
        return error{op, ENOEXEC, "ELF header truncated"};
    if (phentsize != 56) return error{op, ENOEXEC, "ELF program header size is not 56"};
    if (phoff > img.size() || (img.size() - phoff) / 56 < phnum)
        return error{op, ENOEXEC, "ELF program headers lie outside the file"};
    for (std::size_t i = 0; i < phnum; ++i) {
        const std::size_t ph = static_cast<std::size_t>(phoff) + i * 56;
        std::uint32_t type = 0;
        std::uint64_t off = 0, filesz = 0;
        (void)read_le(img, ph, type);
        (void)read_le(img, ph + 8, off);
        (void)read_le(img, ph + 32, filesz);
        if (type != pvh::pt_note) continue;
        if (off > img.size() || filesz > img.size() - off) return error{op, ENOEXEC, "ELF note segment outside the file"};
        std::size_t p = static_cast<std::size_t>(off);
        const std::size_t end = p + static_cast<std::size_t>(filesz);
        while (end - p >= 12) {
            std::uint32_t namesz = 0, descsz = 0, ntype = 0;
            (void)read_le(img, p, namesz);
            (void)read_le(img, p + 4, descsz);
            (void)read_le(img, p + 8, ntype);
            const std::uint64_t name_al = (std::uint64_t{namesz} + 3) & ~std::uint64_t{3};
            const std::uint64_t desc_al = (std::uint64_t{descsz} + 3) & ~std::uint64_t{3};
            if (name_al + desc_al > end - p - 12) return error{op, ENOEXEC, "ELF note runs past its segment"};
            const std::size_t name = p + 12, desc = name + static_cast<std::size_t>(name_al);
            const bool xen = namesz == 4 && img[name] == std::byte{'X'} && img[name + 1] == std::byte{'e'} &&
                             img[name + 2] == std::byte{'n'} && img[name + 3] == std::byte{0};
            if (xen && ntype == pvh::xen_elfnote_phys32_entry) {
                if (descsz == 4) {
                    std::uint32_t e = 0;
                    (void)read_le(img, desc, e);
                    return std::uint64_t{e};
                }
                if (descsz == 8) {
                    std::uint64_t e = 0;
                    (void)read_le(img, desc, e);
                    return e;
                }
                return error{op, ENOEXEC, "XEN_ELFNOTE_PHYS32_ENTRY has a bad size"};
            }
            p = desc + static_cast<std::size_t>(desc_al);
        }
    }
    return error{op, ENOEXEC, "no XEN_ELFNOTE_PHYS32_ENTRY note: kernel built without CONFIG_PVH"};
}

/// Loads an ELF vmlinux for the PVH entry: PT_LOAD segments at their
/// physical addresses (bss zeroed), the initrd after the kernel, the command
/// line at 0x20000 and `hvm_start_info` (with module list and memory map) at
/// 0x6000. Errors as `find_pvh_entry`, plus RAM of 1 MiB or less, segments
/// outside the file or RAM or over the start info / command line, command
/// line too long, initrd does not fit.
template <std::size_t N>
[[nodiscard]] result<pvh_loaded> load_pvh_elf(basic_guest_memory<N>& mem, const pvh_load_options& o) noexcept {
    using detail::read_le;
    constexpr const char* op = "load PVH vmlinux";
    auto entry = find_pvh_entry(o.kernel);
    if (!entry) return entry.err();
    pvh_loaded out{};
    out.entry = *entry;
    if (o.ram_size > boot_layout::max_ram) return error{op, EINVAL, "RAM above 3 GiB is not supported (no PCI hole split)"};
    // pc_e820_map describes RAM from 1 MiB up: below that its last entry would be empty or wrap.
    if (o.ram_size <= boot_layout::high_ram) return error{op, ENOMEM, "RAM too small: the PVH memory map needs RAM above 1 MiB"};
    if (o.cmdline.size() + 1 > boot_layout::cmdline_max) return error{op, E2BIG, "command line longer than 64 KiB"};
    // Where the loader's own structures go (start info, module list, memory map; command line):
    // a segment there would be overwritten after loading.
    const std::uint64_t si = out.start_info;
    const std::uint64_t modlist = si + 0x40, memmap = modlist + pvh::modlist_entry_size;
    const std::uint64_t structs_end = memmap + pc_e820_map(o.ram_size).size() * pvh::memmap_entry_size;
    const std::uint64_t cmdline_end = boot_layout::cmdline + o.cmdline.size() + 1;
    std::uint64_t phoff = 0;
    std::uint16_t phnum = 0;
    (void)read_le(o.kernel, 0x20, phoff);
    (void)read_le(o.kernel, 0x38, phnum);
    // Check every segment before writing any.
    for (int pass = 0; pass < 2; ++pass) {
        for (std::size_t i = 0; i < phnum; ++i) {
            const std::size_t ph = static_cast<std::size_t>(phoff) + i * 56;
            std::uint32_t type = 0;
            std::uint64_t off = 0, paddr = 0, filesz = 0, memsz = 0;
            (void)read_le(o.kernel, ph, type);
            (void)read_le(o.kernel, ph + 8, off);
            (void)read_le(o.kernel, ph + 24, paddr);
            (void)read_le(o.kernel, ph + 32, filesz);
            (void)read_le(o.kernel, ph + 40, memsz);
            if (type != pvh::pt_load) continue;
            if (pass == 0) {
                if (off > o.kernel.size() || filesz > o.kernel.size() - off || filesz > memsz)
                    return error{op, ENOEXEC, "ELF PT_LOAD segment lies outside the file"};
                if (paddr > o.ram_size || memsz > o.ram_size - paddr)
                    return error{op, ENOMEM, "ELF PT_LOAD segment does not fit in RAM"};
                if (memsz != 0 && ((paddr < structs_end && si < paddr + memsz) ||
                                   (paddr < cmdline_end && boot_layout::cmdline < paddr + memsz)))
                    return error{op, EINVAL, "ELF PT_LOAD segment overlaps the start info or the command line"};
                if (paddr + memsz > out.kernel_end) out.kernel_end = paddr + memsz;
                continue;
            }
            VCPU_TRY_VOID(mem.write(paddr, o.kernel.subspan(static_cast<std::size_t>(off), static_cast<std::size_t>(filesz))));
            auto bss = mem.at(paddr + filesz, memsz - filesz);
            if (bss.size() != memsz - filesz) return error{op, EFAULT, "ELF bss outside guest memory"};
            std::memset(bss.data(), 0, bss.size());
        }
    }
    if (!o.initrd.empty()) {
        const std::uint64_t top = o.ram_size;
        const std::uint64_t base = (out.kernel_end + 0xfff) & ~std::uint64_t{0xfff};
        if (o.initrd.size() > top || ((top - o.initrd.size()) & ~std::uint64_t{0xfff}) < base)
            return error{op, ENOMEM, "initrd does not fit in RAM above the kernel"};
        out.initrd_addr = (top - o.initrd.size()) & ~std::uint64_t{0xfff};
        VCPU_TRY_VOID(mem.write(out.initrd_addr, o.initrd));
        VCPU_TRY_VOID(mem.write_le(modlist, out.initrd_addr));
        VCPU_TRY_VOID(mem.write_le(modlist + 8, std::uint64_t{o.initrd.size()}));
        VCPU_TRY_VOID(mem.write_le(modlist + 16, std::uint64_t{0}));
        VCPU_TRY_VOID(mem.write_le(modlist + 24, std::uint64_t{0}));
    }
    VCPU_TRY_VOID(mem.write(boot_layout::cmdline, std::as_bytes(std::span(o.cmdline.data(), o.cmdline.size()))));
    VCPU_TRY_VOID(mem.write_le(boot_layout::cmdline + o.cmdline.size(), std::uint8_t{0}));
    const auto map = pc_e820_map(o.ram_size);
    for (std::size_t i = 0; i < map.size(); ++i) {
        const std::uint64_t at = memmap + i * pvh::memmap_entry_size;
        VCPU_TRY_VOID(mem.write_le(at, map[i].addr));
        VCPU_TRY_VOID(mem.write_le(at + 8, map[i].size));
        VCPU_TRY_VOID(mem.write_le(at + 16, static_cast<std::uint32_t>(map[i].type)));
        VCPU_TRY_VOID(mem.write_le(at + 20, std::uint32_t{0}));
    }
    // struct hvm_start_info (version 1).
    VCPU_TRY_VOID(mem.write_le(si + 0, pvh::start_info_magic));
    VCPU_TRY_VOID(mem.write_le(si + 4, std::uint32_t{1}));           // version
    VCPU_TRY_VOID(mem.write_le(si + 8, std::uint32_t{0}));           // flags
    VCPU_TRY_VOID(mem.write_le(si + 12, std::uint32_t{o.initrd.empty() ? 0u : 1u})); // nr_modules
    VCPU_TRY_VOID(mem.write_le(si + 16, o.initrd.empty() ? std::uint64_t{0} : modlist));
    VCPU_TRY_VOID(mem.write_le(si + 24, boot_layout::cmdline));      // cmdline_paddr
    VCPU_TRY_VOID(mem.write_le(si + 32, std::uint64_t{0}));          // rsdp_paddr
    VCPU_TRY_VOID(mem.write_le(si + 40, memmap));                    // memmap_paddr
    VCPU_TRY_VOID(mem.write_le(si + 48, static_cast<std::uint32_t>(map.size())));
    VCPU_TRY_VOID(mem.write_le(si + 52, std::uint32_t{0}));
    return out;
}

/// The PVH boot state (xen/include/public/arch-x86/hvm/start_info.h, "x86
/// PVH boot ABI"): 32-bit flat protected mode, paging off, EBX = start info.
struct pvh_entry {
    std::uint64_t entry = 0;  ///< EIP: the PVH entry point
    std::uint64_t start_info = boot_layout::pvh_start_info;  ///< EBX: address of `hvm_start_info`

    /// Sets 32-bit flat protected mode with EIP = `entry`, EBX = `start_info`.
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        VCPU_TRY_VOID((flat_protected_mode{entry, 0}.apply(cpu)));
        auto gr = cpu.hal().template modify<regs_block>();
        if (!gr) return gr.err();
        (**gr).rbx = start_info;
        return ok();
    }
};

} // namespace vcpu::x86_64
