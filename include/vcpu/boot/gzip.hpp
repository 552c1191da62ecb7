#pragma once
/// \file
/// Bounded gzip decompression (RFC 1952 member, inflated with zlib) straight
/// into a caller-provided buffer — typically guest RAM — so the output can
/// never exceed that buffer: a "gzip bomb" ends as an error once it fills it,
/// never as a write past it. Debian ships arm64 and riscv64 kernels as
/// gzip-compressed `Image` files (`vmlinuz-*`), which is what this is for.
///
/// Needs zlib (`zlib1g-dev`; link `ZLIB::ZLIB`). Setup path only: zlib
/// allocates its inflate state (about 7 KiB + a 32 KiB window) on the heap.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <zlib.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::boot {

/// True when `data` starts with the gzip member magic 1f 8b (RFC 1952 §2.3.1 ID1, ID2).
[[nodiscard]] constexpr bool is_gzip(std::span<const std::byte> data) noexcept {
    return data.size() >= 2 && data[0] == std::byte{0x1f} && data[1] == std::byte{0x8b};
}

/// Inflates the gzip stream `in` into `out` and returns the number of bytes
/// written. Only the first member is read (trailing bytes — padding — are
/// ignored, as Linux's own decompressors do). Errors (`op` "gunzip"):
/// EINVAL not gzip; EFBIG the output does not fit in `out` (also how a bomb
/// ends); EBADMSG corrupt data, bad CRC or ISIZE; ENODATA the stream ends
/// early (truncated); ENOMEM zlib could not allocate its state.
[[nodiscard]] inline result<std::size_t> gunzip(std::span<const std::byte> in,
                                                std::span<std::byte> out) noexcept {
    constexpr const char* op = "gunzip";
    if (!is_gzip(in)) return error{op, EINVAL, "not a gzip stream (no 1f 8b magic)"};
    z_stream z{};
    // 16 + MAX_WBITS: a gzip wrapper only (zlib manual, inflateInit2).
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return error{op, ENOMEM, "inflateInit2 failed"};
    std::size_t in_pos = 0, out_pos = 0;
    int rc = Z_OK;
    // zlib counts in uInt: feed and drain in chunks that fit it.
    constexpr std::size_t chunk = UINT_MAX / 2;
    while (true) {
        if (z.avail_in == 0 && in_pos < in.size()) {
            const std::size_t n = in.size() - in_pos < chunk ? in.size() - in_pos : chunk;
            // zlib's API takes a non-const pointer but never writes through next_in.
            z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data() + in_pos));
            z.avail_in = static_cast<uInt>(n);
            in_pos += n;
        }
        if (z.avail_out == 0) {
            if (out_pos == out.size()) {
                // Full: is there more output? Inflate one byte into a scratch slot to find out.
                Bytef probe = 0;
                z.next_out = &probe;
                z.avail_out = 1;
                rc = inflate(&z, Z_NO_FLUSH);
                const bool more = z.avail_out == 0;
                inflateEnd(&z);
                if (more) return error{op, EFBIG, "decompressed data does not fit in the space given"};
                if (rc == Z_STREAM_END) return out_pos;
                return error{op, rc == Z_BUF_ERROR ? ENODATA : EBADMSG,
                             rc == Z_BUF_ERROR ? "gzip stream truncated" : "corrupt gzip data"};
            }
            const std::size_t n = out.size() - out_pos < chunk ? out.size() - out_pos : chunk;
            z.next_out = reinterpret_cast<Bytef*>(out.data() + out_pos);
            z.avail_out = static_cast<uInt>(n);
            out_pos += n;
        }
        rc = inflate(&z, Z_NO_FLUSH);
        if (rc == Z_STREAM_END) break;
        if (rc == Z_BUF_ERROR && z.avail_in == 0 && in_pos == in.size()) {
            inflateEnd(&z);
            return error{op, ENODATA, "gzip stream truncated"};
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            inflateEnd(&z);
            return error{op, rc == Z_MEM_ERROR ? ENOMEM : EBADMSG,
                         rc == Z_MEM_ERROR ? "zlib out of memory" : "corrupt gzip data (or bad CRC/length)"};
        }
    }
    const std::size_t written = out_pos - z.avail_out;
    inflateEnd(&z);
    return written;
}

} // namespace vcpu::boot
