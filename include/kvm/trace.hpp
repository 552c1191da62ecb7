#pragma once
/// \file
/// The exit-trace format written by `vcpu::kvm::record::hal` and read by
/// `vcpu::kvm::replay::hal`: every exit of a session in order, with the `kvm_run`
/// fields a decoder reads, the port OUT data, the coalesced writes delivered
/// before it, and the answer the VMM gave (IN data, MMIO read data, hypercall
/// or RDMSR return).
///
/// Layout (little-endian; no padding between records):
///
/// | bytes | header (32)                                                    |
/// | ----- | -------------------------------------------------------------- |
/// | 0..8  | magic `"VCPUTRC\0"`                                            |
/// | 8..10 | version (`trace::version`)                                     |
/// | 10..12| arch id (`trace::arch_id`: 1 x86_64, 2 aarch64, 3 riscv64)     |
/// | 12..16| header bytes (32)                                              |
/// | 16..32| reserved, 0                                                    |
///
/// Then records, each a 16-byte head `{u32 length (whole record), u16 type,
/// u16 reserved, u64 exit index}` and a payload:
/// - `exit`: `{u32 exit_reason, u16 union_len, u16 pio_len}`, `union_len`
///   bytes of the `kvm_run` exit union (only the part this reason uses),
///   `pio_len` bytes of port OUT data;
/// - `answer` (follows its exit, written at the next entry): `u32 len`, then
///   `len` bytes;
/// - `coalesced` (before the exit it precedes): `{u64 address, u32 size,
///   u8 pio, u8 pad[3], u8 data[8]}`.
///
/// Readers validate every length before using it (`trace::parse`).

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace vcpu::kvm::trace {

inline constexpr std::array<char, 8> magic{'V', 'C', 'P', 'U', 'T', 'R', 'C', '\0'};  ///< the first 8 bytes of a trace
inline constexpr std::uint16_t version = 1;  ///< the format version this code writes and reads
inline constexpr std::size_t header_bytes = 32;  ///< bytes of the header
inline constexpr std::size_t record_head_bytes = 16;  ///< bytes of a record head (length, type, reserved, exit index)
inline constexpr std::size_t exit_head_bytes = 8;  ///< bytes of an `exit` payload's head (reason, union_len, pio_len)
/// Bytes of the `kvm_run` exit union (`char padding[256]` in `<linux/kvm.h>`).
inline constexpr std::size_t union_bytes = 256;
inline constexpr std::size_t coalesced_payload_bytes = 24;  ///< bytes of a `coalesced` payload
/// Largest port I/O data a record may carry (KVM uses one page).
inline constexpr std::size_t max_pio_bytes = 4096;

/// Record types.
enum class record_type : std::uint16_t { exit = 1, answer = 2, coalesced = 3 };

/// The id stored in the header for arch `Arch` (by `Arch::name`); 0 when unknown.
template <class Arch>
[[nodiscard]] constexpr std::uint16_t arch_id() noexcept {
    constexpr std::string_view n = Arch::name;
    if (n == "x86_64") return 1;
    if (n == "aarch64") return 2;
    if (n == "riscv64") return 3;
    return 0;
}

namespace detail {
template <class T>
void put(std::byte* p, T v) noexcept {
    std::memcpy(p, &v, sizeof v);
}
template <class T>
[[nodiscard]] T get(const std::byte* p) noexcept {
    T v{};
    std::memcpy(&v, p, sizeof v);
    return v;
}
} // namespace detail

/// The part of the exit union each reason uses (the rest is not recorded).
[[nodiscard]] inline std::size_t union_len(std::uint32_t reason) noexcept {
    switch (reason) {
    case KVM_EXIT_IO: return sizeof(::kvm_run::io);
    case KVM_EXIT_MMIO: return sizeof(::kvm_run::mmio);
    case KVM_EXIT_HLT:
    case KVM_EXIT_SHUTDOWN:
    case KVM_EXIT_INTR: return 0;
    case KVM_EXIT_HYPERCALL: return sizeof(::kvm_run::hypercall);
    default: return union_bytes;
    }
}

/// Where the VMM's answer to the exit in `v` lives (IN data, MMIO read data,
/// hypercall return, RDMSR data); empty when the exit takes no answer or its
/// sizes are invalid.
[[nodiscard]] inline std::span<std::byte> answer_area(const kvm::run_view& v) noexcept {
    if (v.run == nullptr || v.mapped < sizeof(::kvm_run)) return {};
    ::kvm_run& r = *v.run;
    switch (r.exit_reason) {
    case KVM_EXIT_IO:
        // A size the decoders reject (not 1, 2 or 4) is a malformed exit nobody answers.
        if (r.io.direction != KVM_EXIT_IO_IN || (r.io.size != 1 && r.io.size != 2 && r.io.size != 4)) return {};
        return v.at(r.io.data_offset, std::uint64_t{r.io.size} * r.io.count);
    case KVM_EXIT_MMIO:
        if (r.mmio.is_write || r.mmio.len > sizeof(r.mmio.data)) return {};
        return std::as_writable_bytes(std::span(r.mmio.data)).first(r.mmio.len);
    case KVM_EXIT_HYPERCALL: return std::as_writable_bytes(std::span(&r.hypercall.ret, 1));
#ifdef KVM_EXIT_X86_RDMSR
    case KVM_EXIT_X86_RDMSR: return std::as_writable_bytes(std::span(&r.msr.data, 1));
#endif
    default: return {};
    }
}

/// Port OUT data of the exit in `v` (empty for IN, other exits or bad sizes).
[[nodiscard]] inline std::span<const std::byte> out_data(const kvm::run_view& v) noexcept {
    if (v.run == nullptr || v.mapped < sizeof(::kvm_run)) return {};
    const ::kvm_run& r = *v.run;
    // As the decoders read it: every direction but KVM_EXIT_IO_IN is an OUT.
    if (r.exit_reason != KVM_EXIT_IO || r.io.direction == KVM_EXIT_IO_IN) return {};
    auto d = v.at(r.io.data_offset, std::uint64_t{r.io.size} * r.io.count);
    return d.size() <= max_pio_bytes ? d : std::span<std::byte>{};
}

/// A record as `parse` found it: type, exit index, payload bytes.
struct record {
    record_type type = record_type::exit;  ///< the record type
    std::uint64_t index = 0;  ///< index of the exit it belongs to
    std::span<const std::byte> payload;  ///< the payload (after the 16-byte head)
};

/// A decoded `exit` payload.
struct exit_payload {
    std::uint32_t reason = 0;  ///< `kvm_run::exit_reason`
    std::span<const std::byte> exit_union; ///< `union_len` bytes
    std::span<const std::byte> pio;        ///< OUT data
};

/// Checks an `exit` payload's lengths and splits it; EPROTO naming the
/// inconsistency otherwise.
[[nodiscard]] inline result<exit_payload> split_exit(std::span<const std::byte> p) noexcept {
    if (p.size() < exit_head_bytes) return error{"read trace", EPROTO, "exit record shorter than its head"};
    const auto ul = detail::get<std::uint16_t>(p.data() + 4);
    const auto pl = detail::get<std::uint16_t>(p.data() + 6);
    if (ul > union_bytes) return error{"read trace", EPROTO, "exit record union longer than kvm_run's"};
    if (pl > max_pio_bytes) return error{"read trace", EPROTO, "exit record port data longer than a page"};
    if (exit_head_bytes + ul + pl != p.size())
        return error{"read trace", EPROTO, "exit record lengths do not add up to the record length"};
    return exit_payload{detail::get<std::uint32_t>(p.data()), p.subspan(exit_head_bytes, ul),
                        p.subspan(exit_head_bytes + ul, pl)};
}

/// Calls `f(record)` for every record of `bytes` after checking the header
/// (magic, version, arch id `arch`, header size) and every record's length.
/// Errors (EPROTO, op "read trace") say what is wrong; `f` returning false
/// stops early. Precondition: none (any bytes are safe).
template <class F>
[[nodiscard]] result<void> parse(std::span<const std::byte> bytes, std::uint16_t arch, F&& f) noexcept {
    if (bytes.size() < header_bytes) return error{"read trace", EPROTO, "truncated: shorter than the 32-byte header"};
    if (std::memcmp(bytes.data(), magic.data(), magic.size()) != 0)
        return error{"read trace", EPROTO, "bad magic: not a vcpu exit trace"};
    if (detail::get<std::uint16_t>(bytes.data() + 8) != version)
        return error{"read trace", EPROTO, "unsupported trace version"};
    if (detail::get<std::uint16_t>(bytes.data() + 10) != arch)
        return error{"read trace", EPROTO, "trace was recorded for another architecture"};
    if (detail::get<std::uint32_t>(bytes.data() + 12) != header_bytes)
        return error{"read trace", EPROTO, "unexpected header size"};
    std::size_t off = header_bytes;
    while (off < bytes.size()) {
        if (bytes.size() - off < record_head_bytes)
            return error{"read trace", EPROTO, "truncated: record head cut off"};
        const auto len = detail::get<std::uint32_t>(bytes.data() + off);
        if (len < record_head_bytes) return error{"read trace", EPROTO, "record length smaller than its head"};
        if (len > bytes.size() - off)
            return error{"read trace", EPROTO, "record length points past the end of the trace"};
        const auto type = detail::get<std::uint16_t>(bytes.data() + off + 4);
        if (type < 1 || type > 3) return error{"read trace", EPROTO, "unknown record type"};
        record r{static_cast<record_type>(type), detail::get<std::uint64_t>(bytes.data() + off + 8),
                 bytes.subspan(off + record_head_bytes, len - record_head_bytes)};
        if (r.type == record_type::exit) {
            if (auto e = split_exit(r.payload); !e) return e.err();
        } else if (r.type == record_type::answer) {
            if (r.payload.size() < 4 || detail::get<std::uint32_t>(r.payload.data()) != r.payload.size() - 4)
                return error{"read trace", EPROTO, "answer record length mismatch"};
        } else if (r.payload.size() != coalesced_payload_bytes) {
            return error{"read trace", EPROTO, "coalesced record has the wrong size"};
        }
        if (!f(r)) break;
        off += len;
    }
    return ok();
}

/// Writes the 32-byte header for arch id `arch` into `out` (32 bytes).
inline void write_header(std::span<std::byte, header_bytes> out, std::uint16_t arch) noexcept {
    std::memset(out.data(), 0, out.size());
    std::memcpy(out.data(), magic.data(), magic.size());
    detail::put<std::uint16_t>(out.data() + 8, version);
    detail::put<std::uint16_t>(out.data() + 10, arch);
    detail::put<std::uint32_t>(out.data() + 12, static_cast<std::uint32_t>(header_bytes));
}

} // namespace vcpu::kvm::trace
