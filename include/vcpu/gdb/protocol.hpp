#pragma once
/// \file
/// The GDB remote serial protocol's framing (GDB manual, appendix "GDB Remote Serial Protocol",
/// sections "Overview" and "Packets"): `$payload#cs` packets whose checksum is the sum of the
/// payload bytes modulo 256 in two hex digits, `+`/`-` acknowledgements, the interrupt byte 0x03,
/// the escape byte `}` (the next byte XOR 0x20) in binary data, and hex encodings of bytes and
/// numbers. Neutral: no sockets, no KVM. `vcpu/gdb/session.hpp` serves the packets.
///
/// Debug path, not the exit loop: the helpers that build strings allocate.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace vcpu::gdb {

/// The interrupt request gdb sends outside a packet (Ctrl-C in the debugger).
inline constexpr char interrupt_byte = '\x03';

/// The value of hex digit `c`, or -1 when `c` is not one.
[[nodiscard]] constexpr int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// The lower-case hex digit of `v & 15`.
[[nodiscard]] constexpr char hex_digit(unsigned v) noexcept { return "0123456789abcdef"[v & 15u]; }

/// The protocol's checksum of `payload` as sent (escaped): the sum of its bytes modulo 256.
[[nodiscard]] constexpr std::uint8_t checksum(std::string_view payload) noexcept {
    unsigned sum = 0;
    for (char c : payload) sum += static_cast<unsigned char>(c);
    return static_cast<std::uint8_t>(sum & 0xffu);
}

/// Appends two hex digits per byte of `bytes`, in memory order (the encoding of `m`, `g`, `p`).
inline void append_hex(std::string& out, std::span<const std::byte> bytes) {
    for (std::byte b : bytes) {
        out += hex_digit(static_cast<unsigned>(b) >> 4);
        out += hex_digit(static_cast<unsigned>(b));
    }
}

/// Appends `v` in hex without leading zeros (addresses and numbers in replies).
inline void append_hex_number(std::string& out, std::uint64_t v) {
    char buf[16];
    int n = 0;
    do {
        buf[n++] = hex_digit(static_cast<unsigned>(v));
        v >>= 4;
    } while (v != 0);
    while (n > 0) out += buf[--n];
}

/// Decodes `hex` (two digits per byte) into exactly `out.size()` bytes; false when `hex` has
/// another length or a character that is not a hex digit.
[[nodiscard]] constexpr bool parse_hex_bytes(std::string_view hex, std::span<std::byte> out) noexcept {
    if (hex.size() != 2 * out.size()) return false;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = hex_value(hex[2 * i]);
        const int lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = static_cast<std::byte>((hi << 4) | lo);
    }
    return true;
}

/// A hex number of 1 to 16 digits (`m addr,len`, `Z0,addr,kind`); nullopt for anything else.
[[nodiscard]] constexpr std::optional<std::uint64_t> parse_hex_number(std::string_view s) noexcept {
    if (s.empty() || s.size() > 16) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : s) {
        const int d = hex_value(c);
        if (d < 0) return std::nullopt;
        v = (v << 4) | static_cast<std::uint64_t>(d);
    }
    return v;
}

/// Undoes the binary escaping of `X` packet data (`}` then the byte XOR 0x20) into `out`;
/// false when the data ends in a lone `}`.
[[nodiscard]] inline bool unescape_binary(std::string_view in, std::string& out) {
    out.clear();
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '}') {
            out += in[i];
            continue;
        }
        if (++i == in.size()) return false;
        out += static_cast<char>(static_cast<unsigned char>(in[i]) ^ 0x20u);
    }
    return true;
}

/// `payload` framed as a packet: `$`, the payload with `$`, `#`, `}` and `*` escaped (so binary
/// replies such as `qXfer` data are safe), `#`, the checksum of what was sent.
[[nodiscard]] inline std::string frame(std::string_view payload) {
    std::string out;
    out.reserve(payload.size() + 4);
    out += '$';
    for (char c : payload) {
        if (c == '$' || c == '#' || c == '}' || c == '*') {
            out += '}';
            out += static_cast<char>(static_cast<unsigned char>(c) ^ 0x20u);
        } else {
            out += c;
        }
    }
    const std::uint8_t cs = checksum(std::string_view(out).substr(1));
    out += '#';
    out += hex_digit(cs >> 4u);
    out += hex_digit(cs);
    return out;
}

/// What one byte from gdb completed (see `packet_reader::feed`).
enum class input_kind : std::uint8_t {
    none,         ///< nothing yet (inside a packet, or a byte between packets that means nothing)
    packet,       ///< a packet with a good checksum: `packet_reader::payload()` holds it
    bad_checksum, ///< a packet whose checksum did not match (answer `-`: gdb sends it again)
    interrupt,    ///< the interrupt byte 0x03 between packets
    ack,          ///< `+`: gdb received our last packet
    nack,         ///< `-`: gdb wants our last packet again
    overflow,     ///< a packet longer than the reader's limit (dropped; answer `-`)
};

/// An incremental parser of the bytes gdb sends: feed it each byte as it arrives; it reports
/// complete packets, acknowledgements and interrupts. The payload is kept as sent (escapes
/// intact: only `X` data carries them, and its handler unescapes).
class packet_reader {
public:
    /// A reader that drops packets longer than `limit` bytes (the `PacketSize` the stub offers).
    explicit packet_reader(std::size_t limit = 0x4000) : limit_(limit) {}

    /// Takes one byte; says what it completed.
    [[nodiscard]] input_kind feed(char c) {
        switch (state_) {
        case state::idle:
            if (c == '$') {
                payload_.clear();
                overflow_ = false;
                state_ = state::body;
                return input_kind::none;
            }
            if (c == interrupt_byte) return input_kind::interrupt;
            if (c == '+') return input_kind::ack;
            if (c == '-') return input_kind::nack;
            return input_kind::none;
        case state::body:
            if (c == '#') {
                state_ = state::sum_high;
                return input_kind::none;
            }
            if (payload_.size() < limit_) payload_ += c;
            else overflow_ = true;
            return input_kind::none;
        case state::sum_high:
            sum_high_ = hex_value(c);
            state_ = state::sum_low;
            return input_kind::none;
        case state::sum_low: {
            state_ = state::idle;
            const int lo = hex_value(c);
            if (overflow_) return input_kind::overflow;
            if (sum_high_ < 0 || lo < 0) return input_kind::bad_checksum;
            const auto sent = static_cast<std::uint8_t>((sum_high_ << 4) | lo);
            return sent == checksum(payload_) ? input_kind::packet : input_kind::bad_checksum;
        }
        }
        return input_kind::none;
    }

    /// The last complete packet's payload (valid until the next `feed`).
    [[nodiscard]] const std::string& payload() const noexcept { return payload_; }
    /// True while a packet has started and not ended.
    [[nodiscard]] bool in_packet() const noexcept { return state_ != state::idle; }

private:
    enum class state : std::uint8_t { idle, body, sum_high, sum_low };
    std::string payload_;
    std::size_t limit_;
    state state_ = state::idle;
    int sum_high_ = 0;
    bool overflow_ = false;
};

} // namespace vcpu::gdb
