#pragma once
/// \file
/// `load_flat_image<Format>`: places a raw ("flat") test image — a binary with
/// no Linux `Image` header, as the arm64 / RISC-V unit-test guests of the
/// kvm-unit-tests kind are — at a fixed offset from the start of RAM, an
/// initrd (for those guests: the test's environment, `KEY=VALUE` lines) and
/// the device-tree slot, with the same RAM layout as `load_linux_image`:
///
/// ```
/// [ram_base + load_offset, + image size)   the image, entry = its first byte
/// ...                                       free
/// [initrd, initrd + size)                   initrd, 4 KiB aligned, just below the DTB
/// [dtb, dtb + Format::dtb_max)              DTB slot: the last 2 MiB aligned slot of RAM
/// ```
///
/// The conventions (docs/linux-boot.md, "Unit-test images"): arm64 loads at
/// RAM base + 0x80000 (`arm64_flat_offset`, where QEMU's arm boot code puts a
/// raw kernel), RISC-V at RAM base (`riscv64_flat_offset`: QEMU's `virt`
/// under KVM has no firmware below the kernel). `is_flat_image` tells a flat
/// image from a Linux one by the absence of the arch's Image magic (and of a
/// gzip header). Every write goes through `basic_guest_memory`
/// (bounds-checked) and every size is checked before anything is written: an
/// image that is refused leaves guest RAM untouched. `Format` is the arch's
/// Image format policy (`arch/aarch64/linux_boot.hpp`,
/// `arch/riscv64/linux_boot.hpp`), used for `dtb_max` and `cmdline_max`.
/// No zlib, no Linux headers: builds everywhere. Setup path.

#include <vcpu/boot/image.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::boot {

/// arm64: a raw image goes 0x80000 (512 KiB) above the start of RAM, as QEMU's
/// arm boot code loads a kernel that is neither ELF, uImage nor an Image.
inline constexpr std::uint64_t arm64_flat_offset = 0x80000;
/// RISC-V: a raw image goes at the start of RAM (no firmware in the guest under KVM).
inline constexpr std::uint64_t riscv64_flat_offset = 0;

/// Where `load_flat_image` put things (guest physical addresses).
struct flat_layout {
    std::uint64_t entry = 0;       ///< load address = entry point (PC)
    std::uint64_t image_end = 0;   ///< entry + image size
    std::uint64_t initrd = 0;      ///< 0 when there is none
    std::uint64_t initrd_size = 0;  ///< bytes of initrd at `initrd`
    std::uint64_t dtb = 0;         ///< slot for the device tree
    std::uint64_t dtb_max = 0;     ///< its size
};

/// True when `img` is not a Linux Image of the arch whose 32-bit little-endian
/// magic word `magic` sits at `magic_offset`, and not gzip (`1f 8b`): such a
/// file is loaded as a flat test image. An empty file counts as flat (and is
/// then refused by `load_flat_image`).
[[nodiscard]] constexpr bool is_flat_image(std::span<const std::byte> img, std::size_t magic_offset,
                                           std::uint32_t magic) noexcept {
    if (img.size() >= 2 && img[0] == std::byte{0x1f} && img[1] == std::byte{0x8b}) return false;
    std::uint64_t m = 0;
    return !read_le(img, magic_offset, 4, m) || m != magic;
}

/// Loads the flat `image` at `ram_base + load_offset` and `initrd` into `mem`'s
/// RAM range `[ram_base, ram_base + ram_size)` (one writable region of `mem`)
/// and checks that a command line of `cmdline_len` bytes (without NUL) fits the
/// arch. Errors (`op` "load flat test image"): E2BIG command line too long;
/// EINVAL RAM range not in guest memory, or too small for the load offset and
/// the DTB slot, or a load address that is not 4-byte aligned; ENOEXEC empty
/// image; EFBIG image does not fit between its load address and the DTB slot;
/// ENOSPC initrd does not fit between the image and the DTB slot. Nothing is
/// written when an error is returned.
template <class Format, std::size_t N>
[[nodiscard]] result<flat_layout> load_flat_image(basic_guest_memory<N>& mem, std::uint64_t ram_base,
                                                  std::uint64_t ram_size, std::uint64_t load_offset,
                                                  std::span<const std::byte> image, std::span<const std::byte> initrd,
                                                  std::size_t cmdline_len) noexcept {
    constexpr const char* op = "load flat test image";
    constexpr std::uint64_t dtb_align = std::uint64_t{2} << 20;
    if (cmdline_len + 1 > Format::cmdline_max) return error{op, E2BIG, "kernel command line too long for this architecture"};
    if (ram_size == 0 || mem.at(ram_base, ram_size).size() != ram_size)
        return error{op, EINVAL, "RAM range is not one region of guest memory"};
    if (image.empty()) return error{op, ENOEXEC, "empty image"};
    const std::uint64_t ram_end = ram_base + ram_size; // no wrap: the region exists
    if (ram_end < Format::dtb_max) return error{op, EINVAL, "RAM too small for the device tree slot"};
    const std::uint64_t dtb = (ram_end - Format::dtb_max) & ~(dtb_align - 1);
    if (dtb < ram_base || load_offset >= dtb - ram_base)
        return error{op, EINVAL, "RAM too small for the load offset and the device tree slot"};
    const std::uint64_t entry = ram_base + load_offset;
    if (entry % 4 != 0) return error{op, EINVAL, "load address is not 4-byte aligned"};
    if (image.size() > dtb - entry) return error{op, EFBIG, "image does not fit between its load address and the device tree"};

    flat_layout l{};
    l.entry = entry;
    l.image_end = entry + image.size();
    l.dtb = dtb;
    l.dtb_max = Format::dtb_max;
    std::uint64_t initrd_at = 0;
    if (!initrd.empty()) {
        if (initrd.size() > dtb - l.image_end)
            return error{op, ENOSPC, "initrd does not fit between the image and the device tree"};
        initrd_at = (dtb - initrd.size()) & ~std::uint64_t{4095};
        if (initrd_at < l.image_end) return error{op, ENOSPC, "initrd does not fit between the image and the device tree"};
    }
    // Every check is done: write.
    if (auto r = mem.write(entry, image); !r) return r.err();
    if (!initrd.empty()) {
        if (auto r = mem.write(initrd_at, initrd); !r) return r.err();
        l.initrd = initrd_at;
        l.initrd_size = initrd.size();
    }
    return l;
}

} // namespace vcpu::boot
