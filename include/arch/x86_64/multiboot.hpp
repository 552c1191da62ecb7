#pragma once
/// \file
/// Loading a Multiboot (version 1) kernel, the way QEMU's `-kernel` does for
/// the kvm-unit-tests x86 guests:
///
/// - `find_multiboot_header` / `parse_multiboot`: a 32-bit little-endian
///   ELF (`ELFCLASS32`, `EM_386`, `ET_EXEC`) carrying a Multiboot header
///   (Multiboot Specification 0.6.96 §3.1: magic 0x1BADB002 in the first
///   8192 bytes, 4-byte aligned, magic + flags + checksum == 0 mod 2^32).
///   The image is loaded by its program headers (§3.1.3: "if bit 16 is
///   clear, the boot loader uses the ELF headers"); BSS is zeroed.
/// - `load_multiboot`: writes the segments, the modules, the command line
///   and the Multiboot information structure (§3.3) into guest memory. The
///   information structure goes to 0x9500 and the memory map to 0x9000,
///   QEMU's choice (hw/i386/multiboot.c); the module list, the strings and
///   the modules follow the kernel's last byte, page-aligned, as QEMU does.
/// - `multiboot_state`: the machine state of §3.2 (flat 32-bit protected
///   mode, paging and interrupts off, EAX = 0x2BADB002, EBX = info), with
///   QEMU's selectors CS = 0x08, DS/ES/FS/GS/SS = 0x10.
///
/// Header flags supported (§3.1.2): bit 0 (page-align modules: always
/// done) and bit 1 (memory information: always given). Bit 2 (video mode)
/// and the other "required" bits 3..15 are refused, as §3.1.2 demands of a
/// loader that does not understand them; bit 16 (the a.out kludge: load
/// addresses in the header) is refused too, since only the ELF path is
/// implemented. Bits 17..31 are optional features and are ignored.
///
/// Hostile images: every offset and size read from the image is checked
/// against the image, every address against RAM, the info area and the
/// other segments, before anything is written; all writes go through
/// `vcpu::basic_guest_memory`. Errors carry `op` "load multiboot", an errno
/// and a `detail` naming the problem. No exceptions, no allocation.

#include <arch/x86_64/init.hpp>
#include <arch/x86_64/linux_boot.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>

namespace vcpu::x86_64 {

// ---------------------------------------------------------------------------
// ELF32 (System V ABI, "ELF Header" and "Program Header"; i386 supplement)
// ---------------------------------------------------------------------------

/// The ELF32 file header (System V gABI, "ELF Header", `Elf32_Ehdr`).
/// Only a layout mirror: the loader reads fields by `offsetof` with
/// bounds-checked little-endian loads, never by casting image bytes.
struct elf32_ehdr {
    /// @{
    /// The `Elf32_Ehdr` fields, named as the gABI names them.
    std::array<std::uint8_t, 16> e_ident;
    std::uint16_t e_type;
    std::uint16_t e_machine;
    std::uint32_t e_version;
    std::uint32_t e_entry;
    std::uint32_t e_phoff;
    std::uint32_t e_shoff;
    std::uint32_t e_flags;
    std::uint16_t e_ehsize;
    std::uint16_t e_phentsize;
    std::uint16_t e_phnum;
    std::uint16_t e_shentsize;
    std::uint16_t e_shnum;
    std::uint16_t e_shstrndx;
    /// @}
};
static_assert(std::is_standard_layout_v<elf32_ehdr> && sizeof(elf32_ehdr) == 52);
static_assert(offsetof(elf32_ehdr, e_type) == 16 && offsetof(elf32_ehdr, e_machine) == 18);
static_assert(offsetof(elf32_ehdr, e_entry) == 24 && offsetof(elf32_ehdr, e_phoff) == 28);
static_assert(offsetof(elf32_ehdr, e_phentsize) == 42 && offsetof(elf32_ehdr, e_phnum) == 44);

/// An ELF32 program header (System V gABI, "Program Header", `Elf32_Phdr`).
struct elf32_phdr {
    /// @{
    /// The `Elf32_Phdr` fields, named as the gABI names them.
    std::uint32_t p_type;
    std::uint32_t p_offset;
    std::uint32_t p_vaddr;
    std::uint32_t p_paddr;
    std::uint32_t p_filesz;
    std::uint32_t p_memsz;
    std::uint32_t p_flags;
    std::uint32_t p_align;
    /// @}
};
static_assert(std::is_standard_layout_v<elf32_phdr> && sizeof(elf32_phdr) == 32);
static_assert(offsetof(elf32_phdr, p_offset) == 4 && offsetof(elf32_phdr, p_paddr) == 12 &&
              offsetof(elf32_phdr, p_filesz) == 16 && offsetof(elf32_phdr, p_memsz) == 20);

/// ELF identification and type constants (gABI "ELF Identification",
/// `e_type`, `e_machine`, `p_type`).
namespace elf {
inline constexpr std::uint32_t magic = 0x464c457f;   ///< "\x7fELF" read little-endian
inline constexpr std::size_t ei_class = 4;           ///< e_ident[EI_CLASS]
inline constexpr std::size_t ei_data = 5;            ///< e_ident[EI_DATA]
inline constexpr std::uint8_t elfclass32 = 1;        ///< ELFCLASS32
inline constexpr std::uint8_t elfdata2lsb = 1;       ///< ELFDATA2LSB
inline constexpr std::uint16_t et_exec = 2;          ///< ET_EXEC
inline constexpr std::uint16_t em_386 = 3;           ///< EM_386
inline constexpr std::uint32_t pt_load = 1;          ///< PT_LOAD
} // namespace elf

// ---------------------------------------------------------------------------
// Multiboot 0.6.96 structures
// ---------------------------------------------------------------------------

/// Multiboot header and information constants (Multiboot Specification
/// 0.6.96 §3.1.1, §3.1.2, §3.2, §3.3).
namespace multiboot {
inline constexpr std::uint32_t header_magic = 0x1badb002;     ///< §3.1.1 `magic`
inline constexpr std::uint32_t bootloader_magic = 0x2badb002; ///< §3.2 EAX at entry
inline constexpr std::size_t search_bytes = 8192;             ///< §3.1: header within the first 8 KiB
inline constexpr std::size_t header_align = 4;                ///< §3.1: 32-bit aligned

/// Header `flags` bits (§3.1.2).
inline constexpr std::uint32_t page_align = 1u << 0;   ///< modules page aligned
inline constexpr std::uint32_t memory_info = 1u << 1;  ///< mem_* fields wanted
inline constexpr std::uint32_t video_mode = 1u << 2;   ///< video mode table wanted
inline constexpr std::uint32_t aout_kludge = 1u << 16; ///< address fields valid
/// The "required" bits a loader must refuse when it does not support them.
inline constexpr std::uint32_t required_mask = 0x0000ffff;
/// The required bits this loader supports.
inline constexpr std::uint32_t supported_required = page_align | memory_info;

/// Information structure `flags` bits (§3.3).
inline constexpr std::uint32_t info_memory = 1u << 0;  ///< mem_lower / mem_upper
inline constexpr std::uint32_t info_cmdline = 1u << 2; ///< cmdline
inline constexpr std::uint32_t info_mods = 1u << 3;    ///< mods_count / mods_addr
inline constexpr std::uint32_t info_mmap = 1u << 6;    ///< mmap_length / mmap_addr
inline constexpr std::uint32_t info_loader_name = 1u << 9; ///< boot_loader_name

/// Memory map entry types (§3.3: 1 = available RAM, other = reserved).
inline constexpr std::uint32_t mmap_available = 1;
inline constexpr std::uint32_t mmap_reserved = 2;  ///< any other type: reserved

/// Page size: modules and the strings after the kernel are page aligned.
inline constexpr std::uint64_t page = 0x1000;
} // namespace multiboot

/// The Multiboot header as it sits in the image (§3.1.1: magic, flags,
/// checksum; the a.out-kludge and video fields follow only when their flag
/// is set, and this loader refuses both).
struct multiboot_header {
    std::uint32_t magic;  ///< `0x1BADB002`
    std::uint32_t flags;  ///< requested features (bits 0-15 required, 16-31 optional)
    std::uint32_t checksum;  ///< `-(magic + flags)`: the three sum to 0
};
static_assert(std::is_standard_layout_v<multiboot_header> && sizeof(multiboot_header) == 12);

/// The Multiboot information structure (§3.3), up to the VBE fields (88
/// bytes in 0.6.96). Written by the loader from this struct, so the host
/// must be little-endian (every host vcpu runs on is).
struct multiboot_info {
    std::uint32_t flags;  ///< `info_*` bits: which fields are valid
    std::uint32_t mem_lower;   ///< KiB of lower memory (from 0)
    std::uint32_t mem_upper;   ///< KiB of upper memory (from 1 MiB)
    std::uint32_t boot_device;  ///< BIOS boot device (not set by this loader)
    std::uint32_t cmdline;     ///< physical address of a NUL-terminated string
    std::uint32_t mods_count;  ///< modules in the list at `mods_addr`
    std::uint32_t mods_addr;   ///< physical address of `multiboot_module[mods_count]`
    std::array<std::uint32_t, 4> syms;  ///< a.out or ELF symbol table information (not set)
    std::uint32_t mmap_length; ///< bytes of memory map
    std::uint32_t mmap_addr;   ///< physical address of the first entry's `size`
    /// @{
    /// BIOS drives, ROM configuration table, boot loader name (address of a string), APM table and VBE information; only `boot_loader_name` is set by this loader.
    std::uint32_t drives_length;
    std::uint32_t drives_addr;
    std::uint32_t config_table;
    std::uint32_t boot_loader_name;
    std::uint32_t apm_table;
    std::uint32_t vbe_control_info;
    std::uint32_t vbe_mode_info;
    std::uint16_t vbe_mode;
    std::uint16_t vbe_interface_seg;
    std::uint16_t vbe_interface_off;
    std::uint16_t vbe_interface_len;
    /// @}
};
static_assert(std::is_standard_layout_v<multiboot_info> && sizeof(multiboot_info) == 88);
static_assert(offsetof(multiboot_info, cmdline) == 16 && offsetof(multiboot_info, mods_count) == 20 &&
              offsetof(multiboot_info, mods_addr) == 24 && offsetof(multiboot_info, mmap_length) == 44 &&
              offsetof(multiboot_info, mmap_addr) == 48 && offsetof(multiboot_info, boot_loader_name) == 64 &&
              offsetof(multiboot_info, vbe_mode) == 80);

/// One module list entry (§3.3 "mods_addr").
struct multiboot_module {
    std::uint32_t mod_start; ///< first byte
    std::uint32_t mod_end;   ///< one past the last byte
    std::uint32_t string;    ///< physical address of its NUL-terminated string
    std::uint32_t reserved;  ///< 0
};
static_assert(std::is_standard_layout_v<multiboot_module> && sizeof(multiboot_module) == 16);

/// One memory map entry (§3.3 "mmap_addr"): `size` (of the rest, 20) then
/// a 64-bit base, a 64-bit length and the type. The 64-bit fields sit at
/// offset 4, so they are kept as 32-bit halves to avoid a packed struct.
struct multiboot_mmap_entry {
    std::uint32_t size;      ///< bytes after this field: 20
    /// @{
    /// Base address and length in bytes, each as low and high 32-bit halves.
    std::uint32_t base_lo, base_hi;
    std::uint32_t length_lo, length_hi;
    /// @}
    std::uint32_t type;      ///< `multiboot::mmap_available` or reserved
};
static_assert(std::is_standard_layout_v<multiboot_mmap_entry> && sizeof(multiboot_mmap_entry) == 24);
static_assert(offsetof(multiboot_mmap_entry, base_lo) == 4 && offsetof(multiboot_mmap_entry, type) == 20);

/// Guest physical layout of the Multiboot path (QEMU hw/i386/multiboot.c:
/// the memory map at 0x9000, the information structure at 0x9500).
namespace multiboot_layout {
inline constexpr std::uint64_t mmap = 0x9000;         ///< memory map entries
inline constexpr std::uint64_t info = 0x9500;         ///< `multiboot_info` (EBX at entry)
inline constexpr std::uint64_t info_end = info + sizeof(multiboot_info);  ///< one past the information structure
inline constexpr std::size_t mmap_max_entries = (info - mmap) / sizeof(multiboot_mmap_entry);  ///< entries that fit between the map and the information structure
inline constexpr std::uint64_t min_ram = 2u << 20;    ///< RAM must reach past 1 MiB
} // namespace multiboot_layout

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// One PT_LOAD segment of a parsed image.
struct multiboot_segment {
    std::uint32_t offset = 0;   ///< file offset
    std::uint32_t paddr = 0;    ///< guest physical load address
    std::uint32_t filesz = 0;   ///< bytes copied from the file
    std::uint32_t memsz = 0;    ///< bytes in memory (the rest zeroed)
};

/// What `parse_multiboot` found.
struct multiboot_image {
    static constexpr std::size_t max_segments = 16; ///< PT_LOAD segments accepted

    std::size_t header_offset = 0;     ///< file offset of the Multiboot header
    std::uint32_t header_flags = 0;  ///< the header's `flags`
    std::uint32_t entry = 0;           ///< physical entry point (EIP)
    std::array<multiboot_segment, max_segments> segments{};  ///< the PT_LOAD segments, `segment_count` of them
    std::size_t segment_count = 0;  ///< segments used in `segments`
    std::uint64_t load_start = 0;      ///< lowest paddr of any segment
    std::uint64_t load_end = 0;        ///< one past the highest paddr + memsz
};

namespace detail {
inline constexpr const char* multiboot_op = "load multiboot";
[[nodiscard]] constexpr error mb_bad(int code, const char* why) noexcept { return error{multiboot_op, code, why}; }
[[nodiscard]] constexpr bool ranges_overlap(std::uint64_t a, std::uint64_t alen, std::uint64_t b,
                                            std::uint64_t blen) noexcept {
    return alen != 0 && blen != 0 && a < b + blen && b < a + alen;
}
} // namespace detail

/// Offset of the Multiboot header in `img`: the first 4-byte-aligned
/// position within the first 8192 bytes holding 0x1BADB002 whose
/// checksum field makes magic + flags + checksum == 0 (§3.1). Errors:
/// "no Multiboot header" (no magic at all), "bad checksum" (the magic is
/// there, the checksum is wrong), "truncated header".
[[nodiscard]] inline result<std::size_t> find_multiboot_header(std::span<const std::byte> img) noexcept {
    using detail::mb_bad;
    using detail::read_le;
    const std::size_t limit = img.size() < multiboot::search_bytes ? img.size() : multiboot::search_bytes;
    bool saw_magic = false, truncated = false;
    for (std::size_t off = 0; off + 4 <= limit; off += multiboot::header_align) {
        std::uint32_t magic = 0;
        (void)read_le(img, off, magic);
        if (magic != multiboot::header_magic) continue;
        std::uint32_t flags = 0, sum = 0;
        if (!read_le(img, off + offsetof(multiboot_header, flags), flags) ||
            !read_le(img, off + offsetof(multiboot_header, checksum), sum)) {
            truncated = true;
            continue;
        }
        if (static_cast<std::uint32_t>(magic + flags + sum) == 0) return off;
        saw_magic = true;
    }
    if (saw_magic) return mb_bad(ENOEXEC, "Multiboot header checksum is wrong (magic + flags + checksum != 0)");
    if (truncated) return mb_bad(ENOEXEC, "image truncated inside the Multiboot header");
    return mb_bad(ENOEXEC, "no Multiboot header (magic 0x1BADB002) in the first 8 KiB");
}

/// True when the Multiboot magic appears at a 4-byte-aligned offset in the
/// first 8 KiB of `img`, valid checksum or not: a VMM that picks its loader
/// by looking at the file sends such an image to `load_multiboot`, whose
/// error then names what is wrong with it.
[[nodiscard]] inline bool has_multiboot_magic(std::span<const std::byte> img) noexcept {
    const std::size_t limit = img.size() < multiboot::search_bytes ? img.size() : multiboot::search_bytes;
    for (std::size_t off = 0; off + 4 <= limit; off += multiboot::header_align) {
        std::uint32_t magic = 0;
        (void)detail::read_le(img, off, magic);
        if (magic == multiboot::header_magic) return true;
    }
    return false;
}

/// True when `img` carries a valid Multiboot v1 header.
[[nodiscard]] inline bool is_multiboot(std::span<const std::byte> img) noexcept {
    return find_multiboot_header(img).has_value();
}

/// Checks a Multiboot ELF image: the header (`find_multiboot_header`), its
/// flags, the ELF header (32-bit, little-endian, `ET_EXEC`, `EM_386`,
/// program header size 32), every PT_LOAD segment (inside the file,
/// `filesz <= memsz`, below 4 GiB, not overlapping another one) and the
/// entry point (inside a loaded segment; a virtual entry is translated to
/// its physical address like QEMU's ELF loader does). Pure: touches
/// nothing but `img`.
[[nodiscard]] inline result<multiboot_image> parse_multiboot(std::span<const std::byte> img) noexcept {
    using detail::mb_bad;
    using detail::read_le;
    auto hdr = find_multiboot_header(img);
    if (!hdr) return hdr.err();
    multiboot_image out{};
    out.header_offset = *hdr;
    (void)read_le(img, out.header_offset + offsetof(multiboot_header, flags), out.header_flags);
    const std::uint32_t required = out.header_flags & multiboot::required_mask;
    if (out.header_flags & multiboot::aout_kludge)
        return mb_bad(EOPNOTSUPP, "Multiboot flag 16 (a.out kludge load addresses) is not supported; link as ELF");
    if (required & multiboot::video_mode)
        return mb_bad(EOPNOTSUPP, "Multiboot flag 2 (video mode) is not supported");
    if ((required & ~multiboot::supported_required) != 0)
        return mb_bad(EOPNOTSUPP, "Multiboot header requires a feature (flags bits 3..15) this loader does not know");

    std::uint32_t magic = 0;
    if (!read_le(img, 0, magic) || magic != elf::magic)
        return mb_bad(ENOEXEC, "not an ELF file (only ELF Multiboot kernels are supported)");
    if (img.size() < sizeof(elf32_ehdr)) return mb_bad(ENOEXEC, "image truncated inside the ELF header");
    std::uint8_t cls = 0, data = 0;
    (void)read_le(img, elf::ei_class, cls);
    (void)read_le(img, elf::ei_data, data);
    if (cls != elf::elfclass32) return mb_bad(ENOEXEC, "not a 32-bit ELF (ELFCLASS32)");
    if (data != elf::elfdata2lsb) return mb_bad(ENOEXEC, "not a little-endian ELF");
    std::uint16_t type = 0, machine = 0, phentsize = 0, phnum = 0;
    std::uint32_t entry = 0, phoff = 0;
    (void)read_le(img, offsetof(elf32_ehdr, e_type), type);
    (void)read_le(img, offsetof(elf32_ehdr, e_machine), machine);
    (void)read_le(img, offsetof(elf32_ehdr, e_entry), entry);
    (void)read_le(img, offsetof(elf32_ehdr, e_phoff), phoff);
    (void)read_le(img, offsetof(elf32_ehdr, e_phentsize), phentsize);
    (void)read_le(img, offsetof(elf32_ehdr, e_phnum), phnum);
    if (machine != elf::em_386) return mb_bad(ENOEXEC, "ELF machine is not EM_386");
    if (type != elf::et_exec) return mb_bad(ENOEXEC, "ELF type is not ET_EXEC");
    if (phentsize != sizeof(elf32_phdr)) return mb_bad(ENOEXEC, "ELF program header size is not 32");
    if (phoff > img.size() || (img.size() - phoff) / sizeof(elf32_phdr) < phnum)
        return mb_bad(ENOEXEC, "ELF program headers lie outside the file (truncated image?)");

    bool entry_found = false;
    std::uint64_t lo = ~std::uint64_t{0}, hi = 0;
    for (std::size_t i = 0; i < phnum; ++i) {
        const std::size_t ph = std::size_t{phoff} + i * sizeof(elf32_phdr);
        std::uint32_t ptype = 0, off = 0, vaddr = 0, paddr = 0, filesz = 0, memsz = 0;
        (void)read_le(img, ph + offsetof(elf32_phdr, p_type), ptype);
        if (ptype != elf::pt_load) continue;
        (void)read_le(img, ph + offsetof(elf32_phdr, p_offset), off);
        (void)read_le(img, ph + offsetof(elf32_phdr, p_vaddr), vaddr);
        (void)read_le(img, ph + offsetof(elf32_phdr, p_paddr), paddr);
        (void)read_le(img, ph + offsetof(elf32_phdr, p_filesz), filesz);
        (void)read_le(img, ph + offsetof(elf32_phdr, p_memsz), memsz);
        if (memsz == 0) continue;
        if (filesz > memsz) return mb_bad(ENOEXEC, "ELF PT_LOAD segment has p_filesz > p_memsz");
        if (off > img.size() || filesz > img.size() - off)
            return mb_bad(ENOEXEC, "ELF PT_LOAD segment lies outside the file (truncated image?)");
        if (std::uint64_t{paddr} + memsz > (std::uint64_t{1} << 32))
            return mb_bad(ENOEXEC, "ELF PT_LOAD segment crosses 4 GiB");
        if (out.segment_count == multiboot_image::max_segments)
            return mb_bad(E2BIG, "more than 16 ELF PT_LOAD segments");
        for (std::size_t s = 0; s < out.segment_count; ++s)
            if (detail::ranges_overlap(paddr, memsz, out.segments[s].paddr, out.segments[s].memsz))
                return mb_bad(ENOEXEC, "two ELF PT_LOAD segments overlap");
        out.segments[out.segment_count++] = {off, paddr, filesz, memsz};
        if (paddr < lo) lo = paddr;
        if (std::uint64_t{paddr} + memsz > hi) hi = std::uint64_t{paddr} + memsz;
        if (!entry_found && entry >= vaddr && entry - vaddr < memsz) {
            out.entry = paddr + (entry - vaddr);
            entry_found = true;
        }
    }
    if (out.segment_count == 0) return mb_bad(ENOEXEC, "ELF has no PT_LOAD segment");
    if (!entry_found) {
        for (std::size_t s = 0; s < out.segment_count && !entry_found; ++s)
            if (entry >= out.segments[s].paddr && entry - out.segments[s].paddr < out.segments[s].memsz) {
                out.entry = entry;
                entry_found = true;
            }
    }
    if (!entry_found) return mb_bad(ENOEXEC, "ELF entry point is outside every PT_LOAD segment");
    out.load_start = lo;
    out.load_end = hi;
    return out;
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// A module to hand to the kernel (§3.3 "mods_addr"): its bytes and its
/// string (QEMU passes the `-initrd` argument; kvm-unit-tests reads module
/// 0 as its environment, lines of KEY=VALUE).
struct multiboot_module_source {
    std::span<const std::byte> bytes;  ///< the module's contents
    std::string_view string;  ///< its string (the Multiboot module command line)
};

/// Inputs of `load_multiboot`.
struct multiboot_options {
    static constexpr std::size_t max_modules = 16;       ///< modules accepted
    static constexpr std::size_t max_string = 0x10000;   ///< bytes of a command line / module string

    std::uint64_t ram_size = 0;        ///< bytes of RAM at guest physical 0 (2 MiB .. 3 GiB)
    std::string_view cmdline;          ///< the whole command line: QEMU passes "IMAGE args..."
    std::span<const multiboot_module_source> modules;  ///< modules, loaded in order after the command line
    std::string_view loader_name = "vcpu"; ///< `boot_loader_name`; empty: not given
};

/// Where `load_multiboot` put things.
struct multiboot_loaded {
    multiboot_image image{};  ///< what `parse_multiboot` found
    std::uint64_t entry = 0;                           ///< EIP
    std::uint64_t info = multiboot_layout::info;       ///< EBX
    std::uint64_t mmap = multiboot_layout::mmap;  ///< address of the memory map
    std::uint64_t cmdline = 0;                         ///< address of the command line
    std::uint64_t mods = 0;                            ///< address of the module list (0: none)
    std::array<std::uint64_t, multiboot_options::max_modules> module_addr{};  ///< load address of each module
    std::uint64_t end = 0;                             ///< one past the last byte written
};

/// The Multiboot memory map for `ram` bytes (same shape as the e820 map of
/// the Linux path, `pc_e820_map`): RAM below 639 KiB, the reserved top KiB
/// of base memory, the reserved BIOS area 0xe0000..1 MiB (where the ACPI
/// tables live), RAM from 1 MiB to the top.
[[nodiscard]] constexpr std::array<e820_entry, 4> multiboot_memory_map(std::uint64_t ram) noexcept {
    return pc_e820_map(ram);
}

/// Loads a Multiboot ELF `image` into `mem` (RAM at guest physical 0 up to
/// `o.ram_size`). Checks everything first — `parse_multiboot`, RAM size,
/// every segment inside RAM (the RAM ranges of the memory map, so never in
/// 639 KiB .. 1 MiB) and clear of the info structures at 0x9000..0x9558,
/// command line and module strings (no NUL, at most 64 KiB), module count,
/// modules fitting in RAM after the kernel — then writes the segments
/// (BSS zeroed), the memory map at 0x9000, the information structure at
/// 0x9500 (flags: memory, cmdline, mods, mmap, loader name), and after
/// the kernel's end (page aligned): the command line, the loader name, the
/// module strings, the module list and each module (page aligned).
/// A failing check writes nothing; that includes `mem` not backing (with
/// writable regions) every range placed by `ram_size`, refused with
/// EFAULT before the first write.
template <std::size_t N>
[[nodiscard]] result<multiboot_loaded> load_multiboot(std::span<const std::byte> image, basic_guest_memory<N>& mem,
                                                      const multiboot_options& o) noexcept {
    using detail::mb_bad;
    namespace L = multiboot_layout;
    auto parsed = parse_multiboot(image);
    if (!parsed) return parsed.err();
    multiboot_loaded out{};
    out.image = *parsed;
    out.entry = out.image.entry;

    if (o.ram_size < L::min_ram) return mb_bad(ENOMEM, "RAM too small for Multiboot (needs 2 MiB)");
    if (o.ram_size > boot_layout::max_ram) return mb_bad(EINVAL, "RAM above 3 GiB is not supported (no PCI hole split)");
    const auto map = multiboot_memory_map(o.ram_size);
    for (std::size_t s = 0; s < out.image.segment_count; ++s) {
        const auto& seg = out.image.segments[s];
        bool in_ram = false;
        for (const auto& e : map)
            if (e.type == e820_type::ram && seg.paddr >= e.addr && std::uint64_t{seg.paddr} + seg.memsz <= e.addr + e.size)
                in_ram = true;
        if (!in_ram) return mb_bad(ENOMEM, "ELF PT_LOAD segment is not inside guest RAM");
        if (detail::ranges_overlap(seg.paddr, seg.memsz, L::mmap, L::info_end - L::mmap))
            return mb_bad(EEXIST, "ELF PT_LOAD segment overlaps the Multiboot info structures at 0x9000..0x9558");
    }
    // 0: fine, 1: too long, 2: contains a NUL (the guest would see it cut short).
    auto check_string = [](std::string_view s) -> int {
        if (s.size() + 1 > multiboot_options::max_string) return 1;
        return s.find('\0') == std::string_view::npos ? 0 : 2;
    };
    if (const int c = check_string(o.cmdline); c != 0)
        return mb_bad(c == 1 ? E2BIG : EINVAL, c == 1 ? "command line longer than 64 KiB" : "command line contains a NUL byte");
    if (check_string(o.loader_name) != 0) return mb_bad(EINVAL, "boot loader name too long or contains a NUL byte");
    if (o.modules.size() > multiboot_options::max_modules) return mb_bad(E2BIG, "more than 16 Multiboot modules");
    for (const auto& m : o.modules)
        if (const int c = check_string(m.string); c != 0)
            return mb_bad(c == 1 ? E2BIG : EINVAL,
                          c == 1 ? "module string longer than 64 KiB" : "module string contains a NUL byte");

    // Layout of the boot data after the kernel: strings, module list, modules.
    auto page_up = [](std::uint64_t a) { return (a + multiboot::page - 1) & ~(multiboot::page - 1); };
    // The kernel may sit in low memory (below 0x9000); boot data then starts at 1 MiB.
    std::uint64_t cursor = page_up(out.image.load_end < boot_layout::high_ram ? boot_layout::high_ram : out.image.load_end);
    out.cmdline = cursor;
    cursor += o.cmdline.size() + 1;
    const std::uint64_t loader_name = cursor;
    cursor += o.loader_name.size() + 1;
    std::array<std::uint64_t, multiboot_options::max_modules> mod_string{};
    for (std::size_t i = 0; i < o.modules.size(); ++i) {
        mod_string[i] = cursor;
        cursor += o.modules[i].string.size() + 1;
    }
    cursor = (cursor + 15) & ~std::uint64_t{15};
    if (!o.modules.empty()) {
        out.mods = cursor;
        cursor += o.modules.size() * sizeof(multiboot_module);
    }
    for (std::size_t i = 0; i < o.modules.size(); ++i) {
        cursor = page_up(cursor);
        if (o.modules[i].bytes.size() > o.ram_size || cursor > o.ram_size - o.modules[i].bytes.size())
            return mb_bad(ENOMEM, "Multiboot module does not fit in RAM after the kernel");
        out.module_addr[i] = cursor;
        cursor += o.modules[i].bytes.size();
    }
    if (cursor > o.ram_size) return mb_bad(ENOMEM, "command line and modules do not fit in RAM after the kernel");
    out.end = cursor;
    // Everything after the kernel is above 1 MiB and above every segment
    // (cursor starts at max(load_end, 1 MiB)), so it overlaps no segment.

    // `ram_size` placed everything; `mem` must also hold it, each write in
    // one writable region, or a write below would fail after earlier ones
    // landed. Checked here so a failing load writes nothing.
    auto writable = [&mem](std::uint64_t at, std::uint64_t len) {
        for (const auto& r : mem.regions())
            if (!r.read_only && r.contains(at, len)) return true;
        return false;
    };
    bool fits = writable(L::mmap, map.size() * sizeof(multiboot_mmap_entry)) &&
                writable(L::info, sizeof(multiboot_info)) && writable(out.cmdline, o.cmdline.size() + 1) &&
                writable(loader_name, o.loader_name.size() + 1);
    for (std::size_t s = 0; s < out.image.segment_count && fits; ++s) {
        const auto& seg = out.image.segments[s];
        fits = writable(seg.paddr, seg.filesz) &&
               (seg.memsz == seg.filesz || writable(std::uint64_t{seg.paddr} + seg.filesz, seg.memsz - seg.filesz));
    }
    for (std::size_t i = 0; i < o.modules.size() && fits; ++i)
        fits = writable(mod_string[i], o.modules[i].string.size() + 1) &&
               writable(out.mods + i * sizeof(multiboot_module), sizeof(multiboot_module)) &&
               writable(out.module_addr[i], o.modules[i].bytes.size());
    if (!fits) return mb_bad(EFAULT, "guest memory does not back all of the RAM the kernel and modules are placed in");

    // Checked: now write. Segments first (file bytes, then zeroed BSS).
    for (std::size_t s = 0; s < out.image.segment_count; ++s) {
        const auto& seg = out.image.segments[s];
        VCPU_TRY_VOID(mem.write(seg.paddr, image.subspan(seg.offset, seg.filesz)));
        auto bss = mem.at(std::uint64_t{seg.paddr} + seg.filesz, seg.memsz - seg.filesz);
        if (bss.size() != seg.memsz - seg.filesz) return mb_bad(EFAULT, "ELF bss outside guest memory");
        if (!bss.empty()) std::memset(bss.data(), 0, bss.size());
    }
    auto write_string = [&mem](std::uint64_t at, std::string_view s) -> result<void> {
        VCPU_TRY_VOID(mem.write(at, std::as_bytes(std::span(s.data(), s.size()))));
        return mem.write_le(at + s.size(), std::uint8_t{0});
    };
    VCPU_TRY_VOID(write_string(out.cmdline, o.cmdline));
    VCPU_TRY_VOID(write_string(loader_name, o.loader_name));
    for (std::size_t i = 0; i < o.modules.size(); ++i) {
        VCPU_TRY_VOID(write_string(mod_string[i], o.modules[i].string));
        const multiboot_module m{static_cast<std::uint32_t>(out.module_addr[i]),
                                 static_cast<std::uint32_t>(out.module_addr[i] + o.modules[i].bytes.size()),
                                 static_cast<std::uint32_t>(mod_string[i]), 0};
        VCPU_TRY_VOID(mem.write(out.mods + i * sizeof(multiboot_module), std::as_bytes(std::span(&m, 1))));
        VCPU_TRY_VOID(mem.write(out.module_addr[i], o.modules[i].bytes));
    }
    static_assert(std::endian::native == std::endian::little,
                  "the Multiboot structures are written from host structs: little-endian hosts only");
    std::array<multiboot_mmap_entry, map.size()> mm{};
    for (std::size_t i = 0; i < map.size(); ++i) {
        const auto& e = map[i];
        mm[i] = {sizeof(multiboot_mmap_entry) - sizeof(std::uint32_t),
                 static_cast<std::uint32_t>(e.addr), static_cast<std::uint32_t>(e.addr >> 32),
                 static_cast<std::uint32_t>(e.size), static_cast<std::uint32_t>(e.size >> 32),
                 e.type == e820_type::ram ? multiboot::mmap_available : multiboot::mmap_reserved};
    }
    static_assert(map.size() <= L::mmap_max_entries);
    VCPU_TRY_VOID(mem.write(L::mmap, std::as_bytes(std::span(mm))));

    multiboot_info info{};
    info.flags = multiboot::info_memory | multiboot::info_cmdline | multiboot::info_mmap |
                 (o.modules.empty() ? 0u : multiboot::info_mods) |
                 (o.loader_name.empty() ? 0u : multiboot::info_loader_name);
    info.mem_lower = static_cast<std::uint32_t>(boot_layout::low_ram_end / 1024);          // 639 KiB
    info.mem_upper = static_cast<std::uint32_t>((o.ram_size - boot_layout::high_ram) / 1024);
    info.cmdline = static_cast<std::uint32_t>(out.cmdline);
    info.mods_count = static_cast<std::uint32_t>(o.modules.size());
    info.mods_addr = static_cast<std::uint32_t>(out.mods);
    info.mmap_length = static_cast<std::uint32_t>(sizeof(mm));
    info.mmap_addr = static_cast<std::uint32_t>(L::mmap);
    info.boot_loader_name = o.loader_name.empty() ? 0u : static_cast<std::uint32_t>(loader_name);
    VCPU_TRY_VOID(mem.write(L::info, std::as_bytes(std::span(&info, 1))));
    return out;
}

/// The machine state at a Multiboot entry (§3.2 "Machine state"), with
/// QEMU's selectors: CS = 0x08 (32-bit code, flat 4 GiB), DS/ES/FS/GS/SS =
/// 0x10 (flat data), CR0.PE = 1, paging off, EFLAGS.IF = 0 (and VM = 0),
/// EAX = 0x2BADB002, EBX = the information structure, EIP = `entry`. The
/// GDTR is left as it is: §3.2 says the OS must load its own before
/// reloading a segment register.
struct multiboot_state {
    std::uint64_t entry = 0;  ///< EIP at entry
    std::uint64_t info = multiboot_layout::info;  ///< EBX at entry: the information structure

    static constexpr std::uint16_t code_selector = 0x08; ///< QEMU's multiboot option ROM GDT
    static constexpr std::uint16_t data_selector = 0x10;  ///< flat data segment for DS, ES, FS, GS, SS

    /// Sets the vCPU to the Multiboot entry state (segments, CR0, RFLAGS, EAX, EBX, RIP).
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        auto sr = cpu.hal().template modify<sregs_block>();
        if (!sr) return sr.err();
        auto& s = **sr;
        s.cs = detail::flat_segment(code_selector, segment_type::code_xr_accessed, 0, true, false);
        s.ds = s.es = s.fs = s.gs = s.ss =
            detail::flat_segment(data_selector, segment_type::data_rw_accessed, 0, true, false);
        s.cr0 = (s.cr0 | cr0_bits::pe.bits()) & ~cr0_bits::pg.bits();
        s.cr4 = 0;
        s.efer = 0;
        auto gr = cpu.hal().template modify<regs_block>();
        if (!gr) return gr.err();
        auto& g = **gr;
        g = regs_layout{};
        g.rip = entry;
        g.rax = multiboot::bootloader_magic;
        g.rbx = info;
        g.rflags = rflags_bits::reset_value;
        return ok();
    }
};

/// The whole BSP hook for a Multiboot guest: `multiboot_state`, host CPUID
/// with the KVM leaves and `apic_id`, fast strings.
[[nodiscard]] inline auto multiboot_boot_state(std::uint32_t apic_id, std::uint64_t entry,
                                               std::uint64_t info = multiboot_layout::info) noexcept {
    return init_sequence(multiboot_state{entry, info}, cpuid_setup<>{apic_id, {}}, misc_enable_fast_strings{});
}

} // namespace vcpu::x86_64
