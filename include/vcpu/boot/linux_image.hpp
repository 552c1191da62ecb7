#pragma once
/// \file
/// `load_linux_image<Format>`: places an arm64 or RISC-V Linux `Image` —
/// plain or gzip-compressed, as Debian ships `vmlinuz` — and an initrd in
/// guest RAM, and reserves the device-tree slot, following the arch's boot
/// document (its `Format` policy: `arch/aarch64/linux_boot.hpp`,
/// `arch/riscv64/linux_boot.hpp`).
///
/// Layout inside the RAM range `[ram_base, ram_base + ram_size)`:
///
/// ```
/// base = ram_base rounded up to Format::alignment (2 MiB)
/// [base + text_offset, + max(image_size, file size))   kernel (entry = its first byte)
/// ...                                                   free
/// [initrd, initrd + size)                               initrd, 4 KiB aligned, just below the DTB
/// [dtb, dtb + Format::dtb_max)                          DTB slot: the last 2 MiB-aligned slot of RAM
/// ```
///
/// A compressed kernel is inflated straight into guest RAM at `base`, bounded
/// by the space below the DTB slot, so a gzip bomb ends as EFBIG; when its
/// header asks for a non-zero `text_offset` it is moved up inside guest RAM.
/// Every write goes through `basic_guest_memory` (bounds-checked): nothing is
/// written outside guest memory, whatever the input. Setup path; zlib
/// allocates its inflate state.

#include <vcpu/boot/gzip.hpp>
#include <vcpu/boot/image.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu::boot {

/// Where `load_linux_image` put things (guest physical addresses).
struct linux_layout {
    std::uint64_t entry = 0;        ///< kernel load address = entry point (PC)
    std::uint64_t kernel_end = 0;   ///< entry + max(image_size, file size)
    std::uint64_t kernel_file = 0;  ///< bytes of kernel written (after decompression)
    bool compressed = false;        ///< the file was gzip
    image_header header{};  ///< the image header as read (`text_offset`, `image_size`, `flags`)
    std::uint64_t initrd = 0;       ///< 0 when there is none
    std::uint64_t initrd_size = 0;  ///< bytes of initrd at `initrd`
    std::uint64_t dtb = 0;          ///< slot for the device tree
    std::uint64_t dtb_max = 0;      ///< its size
};

/// Loads `kernel` (Image or gzip'd Image) and `initrd` into `mem`'s RAM range
/// `[ram_base, ram_base + ram_size)` (which must be one writable region of
/// `mem`) and checks that a command line of `cmdline_len` bytes (without NUL)
/// fits the format. Errors (`op` names the step, `detail` the problem):
/// E2BIG command line too long; EINVAL RAM range not in guest memory or too
/// small for the DTB slot; the format's header errors (ENOEXEC/EINVAL);
/// gunzip's errors (EBADMSG corrupt, ENODATA truncated, EFBIG does not fit);
/// EFBIG kernel (`image_size`) does not fit below the DTB slot; ENOSPC initrd
/// does not fit between kernel and DTB.
template <class Format, std::size_t N>
[[nodiscard]] result<linux_layout> load_linux_image(basic_guest_memory<N>& mem, std::uint64_t ram_base,
                                                    std::uint64_t ram_size, std::span<const std::byte> kernel,
                                                    std::span<const std::byte> initrd,
                                                    std::size_t cmdline_len) noexcept {
    constexpr const char* op = "load Linux image";
    constexpr std::uint64_t align = Format::alignment;
    static_assert(align != 0 && (align & (align - 1)) == 0, "Format::alignment must be a power of two");
    if (cmdline_len + 1 > Format::cmdline_max) return error{op, E2BIG, "kernel command line too long for this architecture"};
    if (mem.at(ram_base, ram_size).size() != ram_size || ram_size == 0)
        return error{op, EINVAL, "RAM range is not one region of guest memory"};
    const std::uint64_t ram_end = ram_base + ram_size; // no wrap: the region exists
    if (ram_base > ~std::uint64_t{0} - (align - 1)) return error{op, EINVAL, "RAM too small for the kernel"};
    const std::uint64_t base = (ram_base + align - 1) & ~(align - 1);
    if (ram_end < Format::dtb_max) return error{op, EINVAL, "RAM too small for the device tree slot"};
    const std::uint64_t dtb = (ram_end - Format::dtb_max) & ~(std::uint64_t{2u << 20} - 1);
    if (dtb < base || dtb - base < align) return error{op, EINVAL, "RAM too small for the kernel and the device tree"};

    linux_layout l{};
    l.dtb = dtb;
    l.dtb_max = Format::dtb_max;
    // Space the kernel may use: [base, dtb).
    auto space = mem.at(base, dtb - base);
    if (space.size() != dtb - base) return error{op, EINVAL, "RAM range is not one region of guest memory"};

    std::uint64_t file_size = 0;
    if (is_gzip(kernel)) {
        auto n = gunzip(kernel, space);
        if (!n) {
            if (n.err().code == EFBIG) return error{"gunzip kernel", EFBIG, "decompressed kernel does not fit in RAM"};
            return error{"gunzip kernel", n.err().code, n.err().detail};
        }
        l.compressed = true;
        file_size = *n;
        auto h = Format::parse(std::span<const std::byte>(space.data(), static_cast<std::size_t>(file_size)));
        if (!h) return h.err();
        l.header = *h;
        if (h->text_offset > space.size() || file_size > space.size() - h->text_offset)
            return error{op, EFBIG, "kernel (text_offset + size) does not fit below the device tree"};
        if (h->text_offset != 0)
            std::memmove(space.data() + h->text_offset, space.data(), static_cast<std::size_t>(file_size));
    } else {
        auto h = Format::parse(kernel);
        if (!h) return h.err();
        l.header = *h;
        file_size = kernel.size();
        if (h->text_offset > space.size() || file_size > space.size() - h->text_offset)
            return error{op, EFBIG, "kernel (text_offset + size) does not fit below the device tree"};
        // Checked before writing: a plain image that does not fit leaves RAM untouched.
        if (h->image_size > space.size() - h->text_offset)
            return error{op, EFBIG, "kernel image_size does not fit below the device tree"};
        if (auto r = mem.write(base + h->text_offset, kernel); !r) return r.err();
    }
    l.kernel_file = file_size;
    l.entry = base + l.header.text_offset;
    const std::uint64_t need = l.header.image_size > file_size ? l.header.image_size : file_size;
    if (need > dtb - l.entry) return error{op, EFBIG, "kernel image_size does not fit below the device tree"};
    l.kernel_end = l.entry + need;

    if (!initrd.empty()) {
        const std::uint64_t room = dtb - l.kernel_end;
        if (initrd.size() > room) return error{op, ENOSPC, "initrd does not fit between the kernel and the device tree"};
        const std::uint64_t at = (dtb - initrd.size()) & ~std::uint64_t{4095};
        if (at < l.kernel_end) return error{op, ENOSPC, "initrd does not fit between the kernel and the device tree"};
        if (auto r = mem.write(at, initrd); !r) return r.err();
        l.initrd = at;
        l.initrd_size = initrd.size();
    }
    return l;
}

} // namespace vcpu::boot
