#pragma once
/// \file
/// The save/restore encoding every device model under vcpu/devices shares (issue 14: a VMM's
/// device models go into a snapshot's opaque device-state blob, docs/snapshot.md).
///
/// One shape for all devices:
///
/// - `void save(std::vector<std::byte>& out) const` appends ONE record to `out`;
/// - `result<void> load(std::span<const std::byte> record)` takes exactly one record and either
///   loads all of it or returns an error and leaves the device unchanged (every field is parsed
///   and checked into locals first, then committed).
///
/// A record is little-endian and self-delimiting:
///
/// ```
///  offset 0   tag       4 bytes, ASCII, names the device ("U550", "I842", ...)
///  offset 4   version   u16, the device's state format version
///  offset 6   reserved  u16, 0
///  offset 8   size      u32, bytes of body that follow
///  offset 12  body      the device's fields, little-endian, fixed layout per version
/// ```
///
/// A sequence of records (a VMM's whole device state) is split with `next_device_record`.
/// Errors are EINVAL ("truncated", "wrong device tag", "bad value", "trailing bytes") or EPROTO
/// (an unsupported version), naming the device and the values involved.
///
/// State-transfer path: `save` allocates (it grows the vector); `load` does not.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace vcpu::devices {

/// Bytes of a device record's header (tag, version, reserved, size).
inline constexpr std::size_t device_record_header_bytes = 12;

/// Appends little-endian fields to a byte vector (a device's `save`).
class state_writer {
public:
    /// A writer appending to `out`.
    explicit state_writer(std::vector<std::byte>& out) noexcept : out_(&out) {}

    /// Appends `v` (1 byte).
    void u8(std::uint8_t v) { out_->push_back(static_cast<std::byte>(v)); }
    /// Appends `v` as 0 or 1.
    void flag(bool v) { u8(v ? 1 : 0); }
    /// Appends `v`, little-endian (2 bytes).
    void u16(std::uint16_t v) { le(v, 2); }
    /// Appends `v`, little-endian (4 bytes).
    void u32(std::uint32_t v) { le(v, 4); }
    /// Appends `v`, little-endian (8 bytes).
    void u64(std::uint64_t v) { le(v, 8); }
    /// Appends the bytes `b` as they are.
    void bytes(std::span<const std::uint8_t> b) {
        for (auto x : b) u8(x);
    }

private:
    void le(std::uint64_t v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    std::vector<std::byte>* out_;
};

/// Reads little-endian fields from a record's body, bounds-checked: a read past the end
/// returns 0 and marks the reader failed (`ok()` false), so a device parses every field and
/// checks once.
class state_reader {
public:
    /// A reader over `body`.
    explicit state_reader(std::span<const std::byte> body) noexcept : b_(body) {}

    /// Reads 1 byte.
    std::uint8_t u8() noexcept { return static_cast<std::uint8_t>(le(1)); }
    /// Reads a flag byte; a value other than 0 or 1 marks the reader bad.
    bool flag() noexcept {
        const auto v = u8();
        if (v > 1) bad_value_ = true;
        return v == 1;
    }
    /// Reads a little-endian u16.
    std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(le(2)); }
    /// Reads a little-endian u32.
    std::uint32_t u32() noexcept { return static_cast<std::uint32_t>(le(4)); }
    /// Reads a little-endian u64.
    std::uint64_t u64() noexcept { return le(8); }
    /// Reads `out.size()` bytes into `out` (zeros past the end, and the reader fails).
    void bytes(std::span<std::uint8_t> out) noexcept {
        for (auto& x : out) x = u8();
    }
    /// True while every read stayed inside the body.
    [[nodiscard]] bool in_bounds() const noexcept { return !overrun_; }
    /// True when a flag byte was neither 0 nor 1.
    [[nodiscard]] bool bad_flag() const noexcept { return bad_value_; }
    /// Bytes of the body not read yet.
    [[nodiscard]] std::size_t remaining() const noexcept { return b_.size() - pos_; }

private:
    std::uint64_t le(unsigned n) noexcept {
        if (b_.size() - pos_ < n) {
            overrun_ = true;
            pos_ = b_.size();
            return 0;
        }
        std::uint64_t v = 0;
        for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(b_[pos_ + i])} << (8 * i);
        pos_ += n;
        return v;
    }
    std::span<const std::byte> b_;
    std::size_t pos_ = 0;
    bool overrun_ = false, bad_value_ = false;
};

/// Starts a record with `tag` (4 characters) and `version` in `out`; returns where its header
/// starts, for `end_device_record`.
inline std::size_t begin_device_record(std::vector<std::byte>& out, const char (&tag)[5], std::uint16_t version) {
    const std::size_t at = out.size();
    state_writer w(out);
    for (int i = 0; i < 4; ++i) w.u8(static_cast<std::uint8_t>(tag[i]));
    w.u16(version);
    w.u16(0);
    w.u32(0); // patched by end_device_record
    return at;
}

/// Finishes the record begun at `at`: writes its body size into the header.
inline void end_device_record(std::vector<std::byte>& out, std::size_t at) noexcept {
    const auto size = static_cast<std::uint32_t>(out.size() - at - device_record_header_bytes);
    for (unsigned i = 0; i < 4; ++i) out[at + 8 + i] = static_cast<std::byte>(size >> (8 * i));
}

/// The body of one record, checked against what the device `op` expects: the whole span is
/// exactly one record with `tag` and a version in 1..`max_version`, whose size field matches.
/// `version` receives the record's version.
[[nodiscard]] inline result<std::span<const std::byte>> open_device_record(std::span<const std::byte> record,
                                                                         const char* op, const char (&tag)[5],
                                                                         std::uint16_t max_version,
                                                                         std::uint16_t& version) noexcept {
    if (record.size() < device_record_header_bytes)
        return error{op, EINVAL, "truncated: shorter than a device record header"}.with("bytes", record.size());
    if (std::memcmp(record.data(), tag, 4) != 0)
        return error{op, EINVAL, "wrong device tag: the record is another device's"}.with_text(
            "record_tag", std::string_view(reinterpret_cast<const char*>(record.data()), 4));
    state_reader h(record.subspan(4, 8));
    version = h.u16();
    const auto reserved = h.u16();
    const auto size = h.u32();
    if (version == 0 || version > max_version)
        return error{op, EPROTO, "unsupported device state version"}.with("version", version).with("supported",
                                                                                                       max_version);
    if (reserved != 0) return error{op, EINVAL, "bad record header: reserved field not 0"}.with("reserved", reserved);
    const std::size_t body = record.size() - device_record_header_bytes;
    if (size > body)
        return error{op, EINVAL, "truncated: the record's body is shorter than its size"}.with("size", size).with(
            "bytes", body);
    if (size < body)
        return error{op, EINVAL, "trailing bytes after the device record"}.with("size", size).with("bytes", body);
    return record.subspan(device_record_header_bytes);
}

/// The checks every `load` ends with: the body was read exactly (not past its end, nothing
/// left over) and every flag byte was 0 or 1.
[[nodiscard]] inline result<void> finish_device_record(const state_reader& r, const char* op) noexcept {
    if (!r.in_bounds()) return error{op, EINVAL, "truncated: the record's body is too short for this version"};
    if (r.remaining() != 0)
        return error{op, EINVAL, "bad record: body longer than this version's fields"}.with("extra_bytes",
                                                                                             r.remaining());
    if (r.bad_flag()) return error{op, EINVAL, "bad value: a flag byte is neither 0 nor 1"};
    return ok();
}

/// Splits the next record off the front of `rest` (a sequence of records, as a VMM saves its
/// devices one after the other) and returns it, header included; `rest` moves past it.
/// EINVAL when `rest` is shorter than the header or the size the header gives.
[[nodiscard]] inline result<std::span<const std::byte>> next_device_record(std::span<const std::byte>& rest) noexcept {
    constexpr const char* op = "next_device_record";
    if (rest.size() < device_record_header_bytes)
        return error{op, EINVAL, "truncated: shorter than a device record header"}.with("bytes", rest.size());
    state_reader h(rest.subspan(8, 4));
    const std::uint64_t size = h.u32();
    if (size > rest.size() - device_record_header_bytes)
        return error{op, EINVAL, "truncated: the record's body is shorter than its size"}
            .with("size", size)
            .with("bytes", rest.size() - device_record_header_bytes);
    const auto rec = rest.first(device_record_header_bytes + static_cast<std::size_t>(size));
    rest = rest.subspan(rec.size());
    return rec;
}

} // namespace vcpu::devices
