#pragma once
/// \file
/// The RISC-V Linux `Image` header (Documentation/arch/riscv/boot-image-header.rst,
/// and boot.rst for placement):
///
/// ```
/// u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
/// u32 version; u32 res1; u64 res2; u64 magic = "RISCV\0\0\0" (deprecated);
/// u32 magic2 = 0x05435352 ("RSC\x05"); u32 res3;
/// ```
///
/// `image_format` is the format policy `vcpu::boot::load_linux_image` takes:
/// on rv64 the kernel sits at a PMD_SIZE (2 MiB) aligned address plus
/// `text_offset` (boot.rst "Kernel location"), the DTB 8-byte aligned, the
/// command line at most COMMAND_LINE_SIZE (1024, riscv asm/setup.h) bytes with
/// its NUL. Boot registers: `arch/riscv64/init.hpp` (`boot`: a0 = hart id,
/// a1 = DTB, pc = entry).

#include <vcpu/boot/image.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace vcpu::riscv64 {

/// boot-image-header.rst constants.
namespace image {
inline constexpr std::size_t version_offset = 32;  ///< `version` (u32): header version
inline constexpr std::size_t magic2_offset = 56;  ///< `magic2` (u32)
inline constexpr std::uint32_t magic2 = 0x05435352; ///< "RSC\x05", little-endian
/// flags bit 0: kernel endianness, 1 = big-endian.
inline constexpr std::uint64_t flag_be = 1u << 0;
/// Header version 0.2 introduced magic2 (version = major << 16 | minor).
inline constexpr std::uint32_t version_0_2 = 2;
} // namespace image

/// The RISC-V Image format policy (see the file comment).
struct image_format {
    /// The format's name (for messages).
    static constexpr const char* name = "RISC-V Image";
    static constexpr std::uint64_t alignment = 2u << 20; ///< PMD_SIZE on rv64
    static constexpr std::uint64_t dtb_max = 2u << 20;  ///< room reserved for the device tree
    static constexpr std::size_t cmdline_max = 1024; ///< COMMAND_LINE_SIZE incl. NUL

    /// Checks the header. Errors (`op` "load RISC-V Image", ENOEXEC): image
    /// shorter than the 64-byte header; no "RSC\x05" magic2 (not a RISC-V
    /// Image, or header older than 0.2); a big-endian kernel; image_size 0;
    /// text_offset not 4 KiB aligned (EINVAL).
    [[nodiscard]] static constexpr result<::vcpu::boot::image_header> parse(std::span<const std::byte> img) noexcept {
        constexpr const char* op = "load RISC-V Image";
        namespace f = ::vcpu::boot::image_field;
        if (img.size() < f::header_size) return error{op, ENOEXEC, "image shorter than its 64-byte header"};
        std::uint64_t magic = 0;
        ::vcpu::boot::image_header h{};
        (void)::vcpu::boot::read_le(img, image::magic2_offset, 4, magic);
        (void)::vcpu::boot::read_le(img, f::text_offset, 8, h.text_offset);
        (void)::vcpu::boot::read_le(img, f::image_size, 8, h.image_size);
        (void)::vcpu::boot::read_le(img, f::flags, 8, h.flags);
        if (magic != image::magic2) return error{op, ENOEXEC, "no \"RSC\\x05\" magic at offset 56 (not a RISC-V Image)"};
        if (h.flags & image::flag_be) return error{op, ENOEXEC, "big-endian kernel (flags bit 0)"};
        if (h.image_size == 0) return error{op, ENOEXEC, "image_size is 0: footprint unknown"};
        if (h.text_offset % 4096 != 0) return error{op, EINVAL, "text_offset is not 4 KiB aligned"};
        return h;
    }
};

/// The device tree's `riscv,isa` string (bindings/riscv/extensions.yaml): "rv64", the
/// single-letter extensions set in `isa_bits` (KVM's `isa` config register: bit n = letter
/// 'a' + n) in the canonical order of the ISA manual's naming chapter (i, m, a, f, d, q, c, b,
/// v; `h` is left out — the guest gets no hypervisor extension), then "_<name>" for each
/// multi-letter extension in `multi`. Setup path (allocates).
[[nodiscard]] inline std::string isa_string(std::uint64_t isa_bits, std::span<const std::string_view> multi) {
    std::string s = "rv64";
    for (char c : std::string_view("imafdqcbv"))
        if (isa_bits >> (c - 'a') & 1) s += c;
    for (auto m : multi) {
        s += '_';
        s += m;
    }
    return s;
}

} // namespace vcpu::riscv64
