#pragma once
/// \file
/// The exit-trace format written by `vcpu::kvm::record::hal` and read by
/// `vcpu::kvm::replay::hal`: every exit of a session in order, with the `kvm_run`
/// fields a decoder reads, the port OUT data, the coalesced writes delivered
/// before it, and the answer the VMM gave (IN data, MMIO read data, hypercall
/// or RDMSR return).
///
/// Layout (little-endian; no padding between records), each part a trivially copyable struct
/// below whose layout is asserted, read and written with `memcpy` (`trace::load`, `store`):
///
/// - `file_header` (32 bytes): magic `"VCPUTRC\0"`, `version`, arch id (`trace::arch_id`:
///   1 x86_64, 2 aarch64, 3 riscv64), header bytes (32), 16 reserved zero bytes;
/// - then records, each a `record_head` `{u32 length (whole record), u16 type, u16 reserved,
///   u64 exit index}` and a payload:
///   - `exit`: an `exit_head` `{u32 exit_reason, u16 union_len, u16 pio_len}`, `union_len`
///     bytes of the `kvm_run` exit union (only the part this reason uses), `pio_len` bytes of
///     port OUT data;
///   - `answer` (follows its exit, written at the next entry): an `answer_head` `{u32 len}`,
///     then `len` bytes: the exit's `kvm::answer_of` pieces in order (kvm/answer.hpp);
///   - `coalesced` (before the exit it precedes): a `coalesced_record` `{u64 address, u32 size,
///     u8 pio, u8 pad[3], u8 data[8]}`.
///
/// Version 2 added the RISC-V SBI and CSR answers and the MSR error byte (version 1 traces
/// are refused: re-record them).
///
/// Readers validate every length before using it (`trace::parse`).

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/answer.hpp>
#include <kvm/run.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>

namespace vcpu::kvm::trace {

inline constexpr std::array<char, 8> magic{'V', 'C', 'P', 'U', 'T', 'R', 'C', '\0'};  ///< the first 8 bytes of a trace
inline constexpr std::uint16_t version = 2;  ///< the format version this code writes and reads

/// The file header.
struct file_header {
    std::array<char, 8> magic;  ///< `magic`
    std::uint16_t version;  ///< `version`
    std::uint16_t arch;  ///< `arch_id<Arch>()` of the recorded vCPU
    std::uint32_t header_bytes;  ///< bytes of the header (32)
    std::array<std::uint8_t, 16> reserved;  ///< 0
};
/// The head of every record.
struct record_head {
    std::uint32_t length; ///< the whole record, head included
    std::uint16_t type;   ///< `record_type`
    std::uint16_t reserved;  ///< 0
    std::uint64_t index;  ///< the exit the record belongs to
};
/// The head of an `exit` payload.
struct exit_head {
    std::uint32_t reason;    ///< `kvm_run::exit_reason`
    std::uint16_t union_len; ///< bytes of the exit union that follow
    std::uint16_t pio_len;   ///< bytes of port OUT data after them
};
/// The head of an `answer` payload.
struct answer_head {
    std::uint32_t len; ///< answer bytes that follow
};
/// A `coalesced` payload.
struct coalesced_record {
    std::uint64_t address;  ///< guest physical address, or port when `pio`
    std::uint32_t size;  ///< bytes written (1..8)
    std::uint8_t pio;  ///< 1 for a port write
    std::array<std::uint8_t, 3> pad;  ///< 0
    std::array<std::byte, 8> data;  ///< the bytes written
};

// The on-disk layout, whatever the compiler: no padding anywhere, every field where the
// format says. (Little-endian hosts only: every Linux KVM host vcpu supports is.)
/// True for a type whose bytes can be copied to and from the file as they are.
template <class T>
inline constexpr bool wire_struct = std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T>;
static_assert(wire_struct<file_header> && sizeof(file_header) == 32 && offsetof(file_header, version) == 8 &&
              offsetof(file_header, arch) == 10 && offsetof(file_header, header_bytes) == 12 &&
              offsetof(file_header, reserved) == 16);
static_assert(wire_struct<record_head> && sizeof(record_head) == 16 && offsetof(record_head, type) == 4 &&
              offsetof(record_head, reserved) == 6 && offsetof(record_head, index) == 8);
static_assert(wire_struct<exit_head> && sizeof(exit_head) == 8 && offsetof(exit_head, union_len) == 4 &&
              offsetof(exit_head, pio_len) == 6);
static_assert(wire_struct<answer_head> && sizeof(answer_head) == 4);
static_assert(wire_struct<coalesced_record> && sizeof(coalesced_record) == 24 &&
              offsetof(coalesced_record, size) == 8 && offsetof(coalesced_record, pio) == 12 &&
              offsetof(coalesced_record, pad) == 13 && offsetof(coalesced_record, data) == 16);
static_assert(std::endian::native == std::endian::little, "vcpu: exit traces are little-endian");

/// @{
/// Bytes of the header, a record head, an `exit` head, an `answer` head and a `coalesced` payload.
inline constexpr std::size_t header_bytes = sizeof(file_header);
inline constexpr std::size_t record_head_bytes = sizeof(record_head);
inline constexpr std::size_t exit_head_bytes = sizeof(exit_head);
inline constexpr std::size_t answer_head_bytes = sizeof(answer_head);
inline constexpr std::size_t coalesced_payload_bytes = sizeof(coalesced_record);
/// @}
/// Bytes of the `kvm_run` exit union (`char padding[256]` in `<linux/kvm.h>`).
inline constexpr std::size_t union_bytes = 256;
static_assert(sizeof(::kvm_run{}.padding) == union_bytes);
/// Largest port I/O data a record may carry (KVM uses one page).
inline constexpr std::size_t max_pio_bytes = 4096;

/// Record types.
enum class record_type : std::uint16_t { exit = 1, answer = 2, coalesced = 3 };

/// A `T` read from the first `sizeof(T)` bytes at `p` (any alignment).
/// Precondition: that many bytes are readable.
template <class T>
[[nodiscard]] T load(const std::byte* p) noexcept {
    static_assert(wire_struct<T>);
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
/// Writes `v` to the `sizeof(T)` bytes at `p` (any alignment).
template <class T>
void store(std::byte* p, const T& v) noexcept {
    static_assert(wire_struct<T>);
    std::memcpy(p, &v, sizeof v);
}

/// The id stored in the header for arch `Arch` (by `Arch::name`); 0 when unknown.
template <class Arch>
[[nodiscard]] constexpr std::uint16_t arch_id() noexcept {
    constexpr std::string_view n = Arch::name;
    if (n == "x86_64") return 1;
    if (n == "aarch64") return 2;
    if (n == "riscv64") return 3;
    return 0;
}

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
    const auto h = load<exit_head>(p.data());
    if (h.union_len > union_bytes) return error{"read trace", EPROTO, "exit record union longer than kvm_run's"};
    if (h.pio_len > max_pio_bytes) return error{"read trace", EPROTO, "exit record port data longer than a page"};
    if (exit_head_bytes + h.union_len + h.pio_len != p.size())
        return error{"read trace", EPROTO, "exit record lengths do not add up to the record length"};
    return exit_payload{h.reason, p.subspan(exit_head_bytes, h.union_len),
                        p.subspan(exit_head_bytes + h.union_len, h.pio_len)};
}

/// Calls `f(record)` for every record of `bytes` after checking the header
/// (magic, version, arch id `arch`, header size) and every record's length.
/// Errors (EPROTO, op "read trace") say what is wrong; `f` returning false
/// stops early. Precondition: none (any bytes are safe).
template <class F>
[[nodiscard]] result<void> parse(std::span<const std::byte> bytes, std::uint16_t arch, F&& f) noexcept {
    if (bytes.size() < header_bytes) return error{"read trace", EPROTO, "truncated: shorter than the 32-byte header"};
    const auto h = load<file_header>(bytes.data());
    if (h.magic != magic) return error{"read trace", EPROTO, "bad magic: not a vcpu exit trace"};
    if (h.version != version) return error{"read trace", EPROTO, "unsupported trace version"};
    if (h.arch != arch) return error{"read trace", EPROTO, "trace was recorded for another architecture"};
    if (h.header_bytes != header_bytes) return error{"read trace", EPROTO, "unexpected header size"};
    std::size_t off = header_bytes;
    while (off < bytes.size()) {
        if (bytes.size() - off < record_head_bytes)
            return error{"read trace", EPROTO, "truncated: record head cut off"};
        const auto head = load<record_head>(bytes.data() + off);
        if (head.length < record_head_bytes) return error{"read trace", EPROTO, "record length smaller than its head"};
        if (head.length > bytes.size() - off)
            return error{"read trace", EPROTO, "record length points past the end of the trace"};
        if (head.type < 1 || head.type > 3) return error{"read trace", EPROTO, "unknown record type"};
        record r{static_cast<record_type>(head.type), head.index,
                 bytes.subspan(off + record_head_bytes, head.length - record_head_bytes)};
        if (r.type == record_type::exit) {
            if (auto e = split_exit(r.payload); !e) return e.err();
        } else if (r.type == record_type::answer) {
            if (r.payload.size() < answer_head_bytes ||
                load<answer_head>(r.payload.data()).len != r.payload.size() - answer_head_bytes)
                return error{"read trace", EPROTO, "answer record length mismatch"};
        } else if (r.payload.size() != coalesced_payload_bytes) {
            return error{"read trace", EPROTO, "coalesced record has the wrong size"};
        }
        if (!f(r)) break;
        off += head.length;
    }
    return ok();
}

/// Writes the 32-byte header for arch id `arch` into `out` (32 bytes).
inline void write_header(std::span<std::byte, header_bytes> out, std::uint16_t arch) noexcept {
    store(out.data(), file_header{magic, version, arch, static_cast<std::uint32_t>(header_bytes), {}});
}

/// The `coalesced` payload of `w`.
[[nodiscard]] inline coalesced_record to_record(const coalesced_write& w) noexcept {
    return {w.address, w.size, static_cast<std::uint8_t>(w.pio ? 1 : 0), {}, w.bytes};
}
/// The write a `coalesced` payload holds.
[[nodiscard]] inline coalesced_write from_record(const coalesced_record& c) noexcept {
    coalesced_write w;
    w.address = c.address;
    w.size = c.size;
    w.pio = c.pio != 0;
    w.bytes = c.data;
    return w;
}

} // namespace vcpu::kvm::trace
