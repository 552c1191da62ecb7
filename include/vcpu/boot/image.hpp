#pragma once
/// \file
/// The "Image" header that arm64 and RISC-V Linux kernels share in layout
/// (64 bytes: code0/code1, text_offset @8, image_size @16, flags @24, a magic
/// word @56), read bounds-checked, and the result a per-arch parser returns.
/// The arch headers (`arch/aarch64/linux_boot.hpp`, `arch/riscv64/linux_boot.hpp`)
/// check their magic and flags; `vcpu/boot/linux_image.hpp` places the image.
/// No Linux or library headers: builds everywhere.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::boot {

/// What an arch parser found in an Image header.
struct image_header {
    std::uint64_t text_offset = 0; ///< bytes from the aligned base to the load address
    std::uint64_t image_size = 0;  ///< bytes the kernel needs from its load address (incl. BSS)
    std::uint64_t flags = 0;       ///< arch-specific flag word
};

/// Field offsets both formats share (arm64 booting.rst §4, riscv boot-image-header.rst).
namespace image_field {
inline constexpr std::size_t text_offset = 8;  ///< `text_offset`, u64 LE
inline constexpr std::size_t image_size = 16;  ///< `image_size`, u64 LE
inline constexpr std::size_t flags = 24;  ///< `flags`, u64 LE
inline constexpr std::size_t header_size = 64;  ///< bytes of the header (the file must be at least this long)
} // namespace image_field

/// Little-endian read of `bytes` (≤ 8) bytes at `off`; false when they are not all inside `img`.
[[nodiscard]] constexpr bool read_le(std::span<const std::byte> img, std::size_t off, std::size_t bytes,
                                     std::uint64_t& out) noexcept {
    if (bytes > 8 || off > img.size() || img.size() - off < bytes) return false;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(img[off + i])} << (8 * i);
    out = v;
    return true;
}

} // namespace vcpu::boot
