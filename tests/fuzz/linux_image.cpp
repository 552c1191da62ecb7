// Fuzzes the arm64 / RISC-V Image loader (vcpu/boot/linux_image.hpp with the format policies of
// arch/aarch64/linux_boot.hpp and arch/riscv64/linux_boot.hpp), plain and gzip-compressed, into
// guest RAM with canaries around it; with flags bit 2, the VMMs' dispatch instead: a file
// without the arch's Image magic (and not gzip) goes to the flat test-image loader
// (vcpu/boot/flat_image.hpp) at the arch's offset, anything else to the Image loader.
//
// Input: u8 flags (bit 0: RISC-V, else arm64; bit 1: RAM base 1 MiB past a 2 MiB boundary;
// bit 2: dispatch as vmm_arm64 / vmm_riscv64 do),
// u8 RAM size in 256 KiB units (clamped to 1..8 MiB), u16 command-line length, u32 initrd length
// (at most 1 MiB; its bytes are a fill pattern), then the kernel file.
// Invariants: on success the kernel lies at a 2 MiB aligned base + text_offset inside RAM, its
// bytes (when not compressed) are the input's, [entry, kernel_end) ends below the DTB slot, the
// DTB slot lies in RAM and is 2 MiB aligned, the initrd (when given) is 4 KiB aligned between
// kernel_end and the DTB and holds its bytes; on failure the error names an operation and a
// problem, and a header error on a plain image wrote nothing; always: nothing outside guest
// RAM changed. Flat images: on success the image's bytes are at RAM base + the arch's offset,
// below the 2 MiB aligned DTB slot inside RAM, and the initrd as above; on failure RAM is
// untouched.
#include "fuzz.hpp"

#include <arch/aarch64/linux_boot.hpp>
#include <arch/riscv64/linux_boot.hpp>
#include <vcpu/boot/flat_image.hpp>
#include <vcpu/boot/linux_image.hpp>

#include <zlib.h>

#include <algorithm>

namespace {

constexpr std::size_t canary = 4096;
constexpr std::size_t max_ram = 8u << 20; ///< RAM sizes 1..8 MiB
constexpr std::byte canary_fill{0xc5}, ram_fill{0x3c};
constexpr std::uint64_t ram_gpa = 0x4000'0000;

struct input {
    std::uint8_t flags = 0, ram_units = 16;
    std::uint16_t cmdline = 20;
    std::uint32_t initrd = 0;
};
constexpr std::size_t header_bytes = 8;

std::vector<std::uint8_t> image(bool riscv, std::size_t size, std::uint64_t text_offset, std::uint64_t image_size) {
    std::vector<std::uint8_t> v(size);
    auto put = [&](std::size_t off, std::uint64_t x, int n) {
        for (int i = 0; i < n && off + static_cast<std::size_t>(i) < v.size(); ++i)
            v[off + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(x >> (8 * i));
    };
    for (std::size_t i = 64; i < size; ++i) v[i] = static_cast<std::uint8_t>(i * 13);
    put(8, text_offset, 8);
    put(16, image_size, 8);
    put(56, riscv ? vcpu::riscv64::image::magic2 : vcpu::aarch64::image::magic, 4);
    return v;
}

std::vector<std::uint8_t> gz(const std::vector<std::uint8_t>& in) {
    z_stream z{};
    if (deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
    std::vector<std::uint8_t> out(deflateBound(&z, static_cast<uLong>(in.size())) + 64);
    z.next_in = const_cast<Bytef*>(in.data());
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

std::vector<std::uint8_t> with_header(input in, const std::vector<std::uint8_t>& kernel) {
    std::vector<std::uint8_t> v{in.flags, in.ram_units, static_cast<std::uint8_t>(in.cmdline),
                                static_cast<std::uint8_t>(in.cmdline >> 8)};
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<std::uint8_t>(in.initrd >> (8 * i)));
    v.insert(v.end(), kernel.begin(), kernel.end());
    return v;
}

/// True when the `n` bytes at `p` all equal `b` (memcmp against a filled block: a byte loop
/// would be instrumented compare by compare).
bool all_equal(const std::byte* p, std::size_t n, std::byte b) {
    static std::array<std::byte, 65536> ref[2];
    auto& r = ref[b == canary_fill ? 0 : 1];
    if (r[0] != b) r.fill(b);
    for (std::size_t i = 0; i < n; i += r.size())
        if (std::memcmp(p + i, r.data(), std::min(r.size(), n - i)) != 0) return false;
    return true;
}

template <class Format>
void run(std::span<const std::byte> kernel, std::size_t ram_size, std::uint64_t gpa, std::size_t cmdline,
         std::span<const std::byte> initrd) {
    // Exactly canary + RAM + canary: a write past it is an ASan report, one into a canary a
    // failed check.
    std::vector<std::byte> buf(canary + ram_size + canary, canary_fill);
    std::byte* ram = buf.data() + canary;
    std::memset(ram, static_cast<int>(ram_fill), ram_size);
    vcpu::guest_memory mem;
    VCPU_FUZZ_CHECK(mem.add({gpa, std::span<std::byte>(ram, ram_size)}));

    auto l = vcpu::boot::load_linux_image<Format>(mem, gpa, ram_size, kernel, initrd, cmdline);
    VCPU_FUZZ_CHECK(all_equal(buf.data(), canary, canary_fill));
    VCPU_FUZZ_CHECK(all_equal(ram + ram_size, canary, canary_fill));
    if (!l) {
        VCPU_FUZZ_CHECK(l.err().op != nullptr && l.err().op[0] != '\0');
        VCPU_FUZZ_CHECK(l.err().detail != nullptr && l.err().detail[0] != '\0');
        // A rejected plain image (header, size or command line) wrote nothing.
        if (!vcpu::boot::is_gzip(kernel) && l.err().code != ENOSPC) VCPU_FUZZ_CHECK(all_equal(ram, ram_size, ram_fill));
        vcpu_fuzz::note("error: %s: %s", l.err().op, l.err().detail);
        return;
    }
    const std::uint64_t end = gpa + ram_size;
    const std::uint64_t base = l->entry - l->header.text_offset;
    VCPU_FUZZ_CHECK(base % Format::alignment == 0 && base >= gpa);
    VCPU_FUZZ_CHECK(l->entry <= l->kernel_end && l->kernel_end <= l->dtb);
    VCPU_FUZZ_CHECK(l->kernel_end - l->entry >= l->header.image_size);
    VCPU_FUZZ_CHECK(l->dtb % (2u << 20) == 0 && l->dtb + l->dtb_max <= end);
    VCPU_FUZZ_CHECK(cmdline + 1 <= Format::cmdline_max);
    if (!l->compressed) {
        VCPU_FUZZ_CHECK(l->kernel_file == kernel.size());
        VCPU_FUZZ_CHECK(std::memcmp(ram + (l->entry - gpa), kernel.data(), kernel.size()) == 0);
    }
    if (!initrd.empty()) {
        VCPU_FUZZ_CHECK(l->initrd % 4096 == 0 && l->initrd >= l->kernel_end && l->initrd_size == initrd.size());
        VCPU_FUZZ_CHECK(l->initrd + l->initrd_size <= l->dtb);
        VCPU_FUZZ_CHECK(std::memcmp(ram + (l->initrd - gpa), initrd.data(), initrd.size()) == 0);
    } else {
        VCPU_FUZZ_CHECK(l->initrd == 0 && l->initrd_size == 0);
    }
    vcpu_fuzz::note("loaded%s: entry %#llx end %#llx initrd %#llx dtb %#llx", l->compressed ? " (gzip)" : "",
                    static_cast<unsigned long long>(l->entry), static_cast<unsigned long long>(l->kernel_end),
                    static_cast<unsigned long long>(l->initrd), static_cast<unsigned long long>(l->dtb));
}

/// The flat test-image loader at the arch's offset (the VMMs' path for a file without the magic).
template <class Format>
void run_flat(std::span<const std::byte> image, std::size_t ram_size, std::uint64_t gpa, std::uint64_t offset,
              std::size_t cmdline, std::span<const std::byte> initrd) {
    std::vector<std::byte> buf(canary + ram_size + canary, canary_fill);
    std::byte* ram = buf.data() + canary;
    std::memset(ram, static_cast<int>(ram_fill), ram_size);
    vcpu::guest_memory mem;
    VCPU_FUZZ_CHECK(mem.add({gpa, std::span<std::byte>(ram, ram_size)}));

    auto l = vcpu::boot::load_flat_image<Format>(mem, gpa, ram_size, offset, image, initrd, cmdline);
    VCPU_FUZZ_CHECK(all_equal(buf.data(), canary, canary_fill));
    VCPU_FUZZ_CHECK(all_equal(ram + ram_size, canary, canary_fill));
    if (!l) {
        VCPU_FUZZ_CHECK(l.err().op != nullptr && l.err().op[0] != '\0');
        VCPU_FUZZ_CHECK(l.err().detail != nullptr && l.err().detail[0] != '\0');
        VCPU_FUZZ_CHECK(all_equal(ram, ram_size, ram_fill)); // every check comes before any write
        vcpu_fuzz::note("flat error: %s: %s", l.err().op, l.err().detail);
        return;
    }
    const std::uint64_t end = gpa + ram_size;
    VCPU_FUZZ_CHECK(!image.empty() && l->entry == gpa + offset && l->image_end == l->entry + image.size());
    VCPU_FUZZ_CHECK(l->image_end <= l->dtb && l->dtb % (2u << 20) == 0 && l->dtb + l->dtb_max <= end);
    VCPU_FUZZ_CHECK(cmdline + 1 <= Format::cmdline_max);
    VCPU_FUZZ_CHECK(std::memcmp(ram + (l->entry - gpa), image.data(), image.size()) == 0);
    if (!initrd.empty()) {
        VCPU_FUZZ_CHECK(l->initrd % 4096 == 0 && l->initrd >= l->image_end && l->initrd_size == initrd.size());
        VCPU_FUZZ_CHECK(l->initrd + l->initrd_size <= l->dtb);
        VCPU_FUZZ_CHECK(std::memcmp(ram + (l->initrd - gpa), initrd.data(), initrd.size()) == 0);
    } else {
        VCPU_FUZZ_CHECK(l->initrd == 0 && l->initrd_size == 0);
    }
    vcpu_fuzz::note("flat loaded: entry %#llx end %#llx initrd %#llx dtb %#llx",
                    static_cast<unsigned long long>(l->entry), static_cast<unsigned long long>(l->image_end),
                    static_cast<unsigned long long>(l->initrd), static_cast<unsigned long long>(l->dtb));
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    const auto arm = image(false, 8192, 0, 0x20000), rv = image(true, 8192, 0x200000, 0x40000);
    out.add("arm64_good", with_header({0, 16, 30, 0}, image(false, 8192, 0, 0x20000)));
    out.add("arm64_initrd", with_header({0, 24, 30, 70000}, arm));
    out.add("arm64_gzip", with_header({0, 16, 30, 4096}, gz(arm)));
    out.add("arm64_offset_ram", with_header({2, 20, 30, 0}, arm));
    out.add("riscv_good", with_header({1, 24, 30, 0}, rv));
    out.add("riscv_gzip_initrd", with_header({1, 32, 30, 9000}, gz(rv)));
    out.add("riscv_on_arm", with_header({0, 16, 30, 0}, rv));
    out.add("truncated", with_header({0, 16, 30, 0}, std::vector<std::uint8_t>(arm.begin(), arm.begin() + 60)));
    out.add("too_big", with_header({0, 16, 30, 0}, image(false, 8192, 0, 0x7000000)));
    out.add("initrd_too_big", with_header({0, 16, 30, 1u << 20}, image(false, 8192, 0, 0x1f0000)));
    out.add("cmdline_too_long", with_header({0, 16, 3000, 0}, arm));
    std::vector<std::uint8_t> zeros(6u << 20);
    std::copy(arm.begin(), arm.begin() + 64, zeros.begin());
    out.add("gzip_bomb", with_header({0, 16, 30, 0}, gz(zeros)));
    auto corrupt = gz(arm);
    for (std::size_t i = 30; i < 50 && i < corrupt.size(); ++i) corrupt[i] ^= 0x5a;
    out.add("gzip_corrupt", with_header({0, 16, 30, 0}, corrupt));
    // Through the VMMs' dispatch (flags bit 2): flat test images, and an Image still going to
    // the Image loader.
    std::vector<std::uint8_t> flat(6000);
    for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<std::uint8_t>(i * 31 + 1);
    out.add("flat_arm64_initrd", with_header({4, 16, 30, 50}, flat));
    out.add("flat_riscv", with_header({5, 16, 30, 0}, flat));
    out.add("flat_offset_ram", with_header({6, 20, 30, 4096}, flat));
    out.add("flat_empty", with_header({4, 16, 30, 0}, {}));
    out.add("flat_dispatch_image", with_header({4, 16, 30, 0}, arm));
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < header_bytes) return 0;
    const std::uint8_t flags = data[0];
    std::size_t ram_size = std::size_t{data[1]} * (256u << 10);
    ram_size = std::clamp<std::size_t>(ram_size, 1u << 20, max_ram);
    const std::size_t cmdline = data[2] | (std::size_t{data[3]} << 8);
    std::uint32_t initrd_len = 0;
    for (int i = 0; i < 4; ++i) initrd_len |= std::uint32_t{data[4 + i]} << (8 * i);
    initrd_len = std::min<std::uint32_t>(initrd_len, 1u << 20);
    static std::vector<std::byte> initrd(1u << 20, std::byte{0x77});
    const std::uint64_t gpa = ram_gpa + ((flags & 2) ? (1u << 20) : 0);
    const auto kernel = std::as_bytes(std::span(data + header_bytes, size - header_bytes));
    const auto rd = std::span<const std::byte>(initrd).first(initrd_len);
    namespace a64 = vcpu::aarch64;
    namespace rv = vcpu::riscv64;
    if (flags & 4) { // as vmm_arm64 / vmm_riscv64 choose
        if (flags & 1) {
            if (vcpu::boot::is_flat_image(kernel, rv::image::magic2_offset, rv::image::magic2))
                run_flat<rv::image_format>(kernel, ram_size, gpa, vcpu::boot::riscv64_flat_offset, cmdline, rd);
            else
                run<rv::image_format>(kernel, ram_size, gpa, cmdline, rd);
        } else {
            if (vcpu::boot::is_flat_image(kernel, a64::image::magic_offset, a64::image::magic))
                run_flat<a64::image_format>(kernel, ram_size, gpa, vcpu::boot::arm64_flat_offset, cmdline, rd);
            else
                run<a64::image_format>(kernel, ram_size, gpa, cmdline, rd);
        }
    } else if (flags & 1) {
        run<rv::image_format>(kernel, ram_size, gpa, cmdline, rd);
    } else {
        run<a64::image_format>(kernel, ram_size, gpa, cmdline, rd);
    }
    return 0;
}
