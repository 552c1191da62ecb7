#pragma once
/// \file
/// `fdt_writer`: builds a flattened device tree (Devicetree Specification
/// v0.4, chapter 5 "Flattened Devicetree (DTB) Format") in a caller-provided
/// buffer with libfdt's sequential-write functions (`fdt_create`,
/// `fdt_begin_node`, `fdt_property`, ..., `fdt_finish`; libfdt.h "Sequential
/// write functions"). Property values are written big-endian as the format
/// requires. The first failure is kept and every later call does nothing, so
/// a tree is written straight through and checked once at `finish()`.
///
/// Needs libfdt (`libfdt-dev`; link `fdt`). No allocation: the tree lives in
/// the buffer.
///
/// ```
/// std::array<std::byte, 4096> buf;
/// vcpu::boot::fdt_writer w(buf);
/// w.begin_node("");
/// w.prop_u32("#address-cells", 2);
/// w.begin_node("memory@40000000");
/// w.prop_string("device_type", "memory");
/// w.prop_u64s("reg", {0x4000'0000, 0x4000'0000});
/// w.end_node();
/// w.end_node();
/// auto blob = w.finish();   // result<std::span<const std::byte>>
/// ```

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

extern "C" {
#include <libfdt.h>
}

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>

namespace vcpu::boot {

/// Sequential device-tree writer over a fixed buffer (see the file comment).
class fdt_writer {
public:
    /// Starts a tree in `buf` (`fdt_create` + an empty memory reservation map).
    explicit fdt_writer(std::span<std::byte> buf) noexcept : buf_(buf) {
        if (buf.size() > static_cast<std::size_t>(INT32_MAX)) {
            fail(EINVAL, "buffer larger than a device tree can be");
            return;
        }
        check(fdt_create(buf.data(), static_cast<int>(buf.size())), "fdt_create");
        check(fdt_finish_reservemap(buf.data()), "fdt_finish_reservemap");
    }

    /// Opens node `name` ("" for the root; "unit@addr" for the others).
    fdt_writer& begin_node(const char* name) noexcept {
        if (ok_) {
            check(fdt_begin_node(buf_.data(), name), "fdt_begin_node");
            if (ok_) ++depth_;
        }
        return *this;
    }
    /// Closes the innermost open node.
    fdt_writer& end_node() noexcept {
        if (ok_) {
            if (depth_ == 0) return fail(EINVAL, "end_node without an open node");
            check(fdt_end_node(buf_.data()), "fdt_end_node");
            if (ok_) --depth_;
        }
        return *this;
    }
    /// A property with no value (e.g. `interrupt-controller`).
    fdt_writer& prop_empty(const char* name) noexcept { return prop_bytes(name, {}); }
    /// A NUL-terminated string property.
    fdt_writer& prop_string(const char* name, std::string_view s) noexcept {
        if (!ok_) return *this;
        void* p = nullptr;
        if (s.size() + 1 > static_cast<std::size_t>(INT32_MAX)) return fail(EINVAL, "string property too long");
        check(fdt_property_placeholder(buf_.data(), name, static_cast<int>(s.size() + 1), &p),
              "fdt_property");
        if (ok_) {
            auto* d = static_cast<char*>(p);
            for (std::size_t i = 0; i < s.size(); ++i) d[i] = s[i];
            d[s.size()] = '\0';
        }
        return *this;
    }
    /// A string-list property: each string NUL-terminated, one after another.
    fdt_writer& prop_strings(const char* name, std::initializer_list<std::string_view> list) noexcept {
        if (!ok_) return *this;
        std::size_t n = 0;
        for (auto s : list) n += s.size() + 1;
        void* p = nullptr;
        check(fdt_property_placeholder(buf_.data(), name, static_cast<int>(n), &p), "fdt_property");
        if (ok_) {
            auto* d = static_cast<char*>(p);
            for (auto s : list) {
                for (char c : s) *d++ = c;
                *d++ = '\0';
            }
        }
        return *this;
    }
    /// One 32-bit cell.
    fdt_writer& prop_u32(const char* name, std::uint32_t v) noexcept { return prop_u32s(name, {v}); }
    /// One 64-bit value (two cells, high first).
    fdt_writer& prop_u64(const char* name, std::uint64_t v) noexcept { return prop_u64s(name, {v}); }
    /// 32-bit cells, big-endian.
    fdt_writer& prop_u32s(const char* name, std::span<const std::uint32_t> cells) noexcept {
        if (!ok_) return *this;
        void* p = nullptr;
        check(fdt_property_placeholder(buf_.data(), name, static_cast<int>(cells.size() * 4), &p),
              "fdt_property");
        if (ok_) {
            auto* d = static_cast<unsigned char*>(p);
            for (std::uint32_t c : cells) d = put_be(d, c, 4);
        }
        return *this;
    }
    /// As the span overload, for a braced list: `prop_u32s("interrupts", {0, 33, 4})`.
    fdt_writer& prop_u32s(const char* name, std::initializer_list<std::uint32_t> cells) noexcept {
        return prop_u32s(name, std::span<const std::uint32_t>(cells.begin(), cells.size()));
    }
    /// 64-bit values, each as two big-endian cells (for `#address-cells = 2` and `#size-cells = 2`).
    fdt_writer& prop_u64s(const char* name, std::span<const std::uint64_t> values) noexcept {
        if (!ok_) return *this;
        void* p = nullptr;
        check(fdt_property_placeholder(buf_.data(), name, static_cast<int>(values.size() * 8), &p),
              "fdt_property");
        if (ok_) {
            auto* d = static_cast<unsigned char*>(p);
            for (std::uint64_t v : values) d = put_be(d, v, 8);
        }
        return *this;
    }
    /// As the span overload, for a braced list: `prop_u64s("reg", {base, size})`.
    fdt_writer& prop_u64s(const char* name, std::initializer_list<std::uint64_t> values) noexcept {
        return prop_u64s(name, std::span<const std::uint64_t>(values.begin(), values.size()));
    }
    /// Raw bytes.
    fdt_writer& prop_bytes(const char* name, std::span<const std::byte> bytes) noexcept {
        if (ok_) check(fdt_property(buf_.data(), name, bytes.data(), static_cast<int>(bytes.size())), "fdt_property");
        return *this;
    }

    /// Ends the tree (`fdt_finish`) and returns the blob: the first `totalsize`
    /// bytes of the buffer. Errors: the first failure (ENOSPC when the buffer
    /// was too small, EINVAL for unbalanced nodes or a bad name), `op` naming
    /// the libfdt call and `detail` its `fdt_strerror`.
    [[nodiscard]] result<std::span<const std::byte>> finish() noexcept {
        if (ok_ && depth_ != 0) fail(EINVAL, "nodes left open at finish");
        if (ok_) check(fdt_finish(buf_.data()), "fdt_finish");
        if (!ok_) return err_;
        return std::span<const std::byte>(buf_.data(), fdt_totalsize(buf_.data()));
    }

    /// False once a call failed.
    [[nodiscard]] bool ok() const noexcept { return ok_; }

private:
    static unsigned char* put_be(unsigned char* d, std::uint64_t v, int bytes) noexcept {
        for (int i = bytes - 1; i >= 0; --i) *d++ = static_cast<unsigned char>(v >> (8 * i));
        return d;
    }
    fdt_writer& fail(int code, const char* why) noexcept {
        if (ok_) err_ = error{"write device tree", code, why};
        ok_ = false;
        return *this;
    }
    void check(int rc, const char* op) noexcept {
        if (rc >= 0 || !ok_) return;
        ok_ = false;
        err_ = error{op, rc == -FDT_ERR_NOSPACE ? ENOSPC : EINVAL, fdt_strerror(rc)};
    }

    std::span<std::byte> buf_;
    int depth_ = 0;
    bool ok_ = true;
    error err_{};
};

} // namespace vcpu::boot
