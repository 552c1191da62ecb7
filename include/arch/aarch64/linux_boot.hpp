#pragma once
/// \file
/// The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst §4
/// "Call the kernel image", the 64-byte header):
///
/// ```
/// u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
/// u64 res2; u64 res3; u64 res4; u32 magic = 0x644d5241 ("ARM\x64"); u32 res5;
/// ```
///
/// `image_format` is the format policy `vcpu::boot::load_linux_image` takes:
/// the image goes `text_offset` bytes above a 2 MiB aligned base, with
/// `image_size` bytes free from there; the DTB is 8-byte aligned, at most
/// 2 MiB; the command line holds at most COMMAND_LINE_SIZE (2048, arm64
/// asm/setup.h uapi) bytes including its NUL. Boot registers are in
/// `arch/aarch64/init.hpp` (`kvm_boot`: X0 = DTB, PC = entry).

#include <vcpu/boot/image.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::aarch64 {

/// booting.rst header constants.
namespace image {
inline constexpr std::size_t magic_offset = 56;  ///< `magic` (u32): "ARM\x64"
inline constexpr std::uint32_t magic = 0x644d5241; ///< "ARM\x64", little-endian
/// flags bit 0: kernel endianness, 1 = big-endian.
inline constexpr std::uint64_t flag_be = 1u << 0;
/// flags bits 1-2: kernel page size (0 unspecified, 1 4K, 2 16K, 3 64K).
inline constexpr std::uint64_t flag_page_size_mask = 3u << 1;
/// flags bit 3: 1 = the 2 MiB aligned base may be anywhere in physical memory.
inline constexpr std::uint64_t flag_phys_anywhere = 1u << 3;
} // namespace image

/// The arm64 Image format policy (see the file comment).
struct image_format {
    /// The format's name (for messages).
    static constexpr const char* name = "arm64 Image";
    static constexpr std::uint64_t alignment = 2u << 20; ///< 2 MiB aligned base
    static constexpr std::uint64_t dtb_max = 2u << 20;   ///< booting.rst: "must not exceed 2 megabytes"
    static constexpr std::size_t cmdline_max = 2048;     ///< COMMAND_LINE_SIZE incl. NUL

    /// Checks the header. Errors (`op` "load arm64 Image", ENOEXEC): image
    /// shorter than the 64-byte header; no "ARM\x64" magic; a big-endian
    /// kernel; image_size 0 (a pre-3.17 kernel whose footprint is unknown);
    /// text_offset not 4 KiB aligned (EINVAL).
    [[nodiscard]] static constexpr result<::vcpu::boot::image_header> parse(std::span<const std::byte> img) noexcept {
        constexpr const char* op = "load arm64 Image";
        namespace f = ::vcpu::boot::image_field;
        if (img.size() < f::header_size) return error{op, ENOEXEC, "image shorter than its 64-byte header"};
        std::uint64_t magic = 0;
        ::vcpu::boot::image_header h{};
        (void)::vcpu::boot::read_le(img, image::magic_offset, 4, magic);
        (void)::vcpu::boot::read_le(img, f::text_offset, 8, h.text_offset);
        (void)::vcpu::boot::read_le(img, f::image_size, 8, h.image_size);
        (void)::vcpu::boot::read_le(img, f::flags, 8, h.flags);
        if (magic != image::magic) return error{op, ENOEXEC, "no \"ARM\\x64\" magic at offset 56 (not an arm64 Image)"};
        if (h.flags & image::flag_be) return error{op, ENOEXEC, "big-endian kernel (flags bit 0)"};
        if (h.image_size == 0) return error{op, ENOEXEC, "image_size is 0 (kernel older than 3.17): footprint unknown"};
        if (h.text_offset % 4096 != 0) return error{op, EINVAL, "text_offset is not 4 KiB aligned"};
        return h;
    }
};

} // namespace vcpu::aarch64
