#pragma once
/// \file
/// `vcpu::gdb::session`: a GDB remote-protocol stub in all-stop mode, for any `GdbTarget` over
/// any `GdbTransport` (a TCP connection: `vcpu/gdb/socket.hpp`). The caller keeps the run loop:
///
/// ```
/// auto req = stub.serve(target);           // answers gdb until it says continue / step / detach
/// while (req && is_running(req->kind)) {
///     ... arm stepping if req->kind == request_kind::step, run the vCPUs until a debug exit
///     ... (or until stub.interrupt_requested() says gdb pressed Ctrl-C), stop every vCPU ...
///     stub.stopped(why);                    // the stop reply
///     req = stub.serve(target);
/// }
/// ```
///
/// gdb threads are vCPUs (thread id = vCPU index + 1). Packets served (GDB manual, "Packets",
/// "General Query Packets", "Host I/O" not included): `?`, `g`/`G`, `p`/`P`, `m`/`M`/`X`,
/// `c`/`C`/`s`/`S`, `vCont` (`c`, `C`, `s`, `S`), `Z0`-`Z4`/`z0`-`z4`, `H`, `T`, `D`, `k`,
/// `qSupported`, `QStartNoAckMode`, `qXfer:features:read:target.xml`, `qAttached`, `qC`,
/// `qfThreadInfo`/`qsThreadInfo`, `qSymbol`; everything else gets the empty reply ("not
/// supported"), as the protocol asks. Debug path: allocates.

#include <vcpu/gdb/protocol.hpp>
#include <vcpu/gdb/target.hpp>
#include <vcpu/result.hpp>

#include <algorithm>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vcpu::gdb {

/// A byte stream to gdb: blocking `read_some` (0 = closed), `write_all`, and `readable(ms)`
/// (poll with a timeout, 0 = don't wait) to notice Ctrl-C while the guest runs.
template <class T>
concept GdbTransport = requires(T& t, std::span<char> buf, std::string_view s, int ms) {
    { t.read_some(buf) } -> std::same_as<result<std::size_t>>;
    { t.write_all(s) } -> std::same_as<result<void>>;
    { t.readable(ms) } -> std::same_as<result<bool>>;
};

/// What gdb asked for when `serve` returned.
enum class request_kind : std::uint8_t {
    resume, ///< continue every vCPU (`c`, `C`, `vCont;c`)
    step,   ///< single-step `request::cpu`, the others stay stopped (`s`, `S`, `vCont;s`)
    detach, ///< gdb detached (`D`) or the connection closed: remove debugging, run on
    kill,   ///< gdb asked to end the guest (`k`)
};

/// A request to the run loop.
struct request {
    request_kind kind = request_kind::resume; ///< what to do
    unsigned cpu = 0;                          ///< the vCPU to step (and the one gdb last selected)
    bool connection_closed = false;            ///< `detach` because the connection ended
};

/// True for the requests that run the guest and need a `stopped` report afterwards.
[[nodiscard]] constexpr bool is_running(request_kind k) noexcept {
    return k == request_kind::resume || k == request_kind::step;
}

/// The stub: one gdb connection, all-stop.
template <GdbTransport Transport>
class session {
public:
    /// A session over `t` (already connected). gdb's first `?` is answered with `initial`.
    explicit session(Transport t, stop_reason initial = {}) : io_(static_cast<Transport&&>(t)), last_(initial) {}

    /// Answers gdb's packets until it asks to run, step, detach or kill.
    template <GdbTarget Target>
    [[nodiscard]] result<request> serve(Target& target) {
        char buf[512];
        for (;;) {
            while (pending_ < filled_) {
                const char c = buf_[pending_++];
                auto out = on_byte(target, c);
                if (!out) return out.err();
                if (*out) return **out;
            }
            auto n = io_.read_some(std::span<char>(buf, sizeof buf));
            if (!n) return n.err();
            if (*n == 0) return request{request_kind::detach, selected_, true};
            buf_.assign(buf, buf + *n);
            pending_ = 0;
            filled_ = *n;
        }
    }

    /// Reports a stop to gdb (after a `resume` or `step` request).
    [[nodiscard]] result<void> stopped(const stop_reason& why) {
        last_ = why;
        selected_ = why.cpu;
        return send(stop_reply(why));
    }

    /// While the guest runs: reads what gdb sent, without waiting; true when it was Ctrl-C.
    [[nodiscard]] result<bool> interrupt_requested() {
        auto r = io_.readable(0);
        if (!r) return r.err();
        if (!*r) return false;
        char buf[64];
        auto n = io_.read_some(std::span<char>(buf, sizeof buf));
        if (!n) return n.err();
        bool seen = false;
        // Bytes other than the interrupt wait for `serve` (gdb sends none in all-stop while
        // the guest runs, but do not lose them).
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pending_));
        pending_ = 0;
        for (std::size_t i = 0; i < *n; ++i) {
            if (buf[i] == interrupt_byte && !reader_.in_packet()) seen = true;
            else buf_.push_back(buf[i]);
        }
        filled_ = buf_.size();
        return seen;
    }

    /// The transport (to close it, or to poll its fd with others).
    [[nodiscard]] Transport& transport() noexcept { return io_; }
    /// True after gdb sent `QStartNoAckMode`.
    [[nodiscard]] bool no_ack() const noexcept { return no_ack_; }

private:
    using step_result = result<std::optional<request>>;

    template <class Target>
    step_result on_byte(Target& target, char c) {
        switch (reader_.feed(c)) {
        case input_kind::packet: {
            if (!no_ack_) {
                if (auto w = io_.write_all("+"); !w) return w.err();
            }
            return command(target, reader_.payload());
        }
        case input_kind::bad_checksum:
        case input_kind::overflow:
            if (!no_ack_) {
                if (auto w = io_.write_all("-"); !w) return w.err();
            }
            return std::optional<request>{};
        case input_kind::nack:
            if (!last_sent_.empty()) {
                if (auto w = io_.write_all(last_sent_); !w) return w.err();
            }
            return std::optional<request>{};
        case input_kind::interrupt: // already stopped: report the stop again
            if (auto w = send(stop_reply(last_)); !w) return w.err();
            return std::optional<request>{};
        case input_kind::ack:
        case input_kind::none:
            return std::optional<request>{};
        }
        return std::optional<request>{};
    }

    result<void> send(std::string_view payload) {
        last_sent_ = frame(payload);
        return io_.write_all(last_sent_);
    }
    step_result reply(std::string_view payload) {
        if (auto w = send(payload); !w) return w.err();
        return std::optional<request>{};
    }
    static std::string error_reply(int code) {
        std::string s = "E";
        s += hex_digit(static_cast<unsigned>(code) >> 4);
        s += hex_digit(static_cast<unsigned>(code));
        return s;
    }

    [[nodiscard]] std::string thread_id(unsigned cpu) const {
        std::string s;
        append_hex_number(s, std::uint64_t{cpu} + 1);
        return s;
    }

    [[nodiscard]] std::string stop_reply(const stop_reason& why) const {
        std::string s;
        if (why.kind == stop_kind::exited) {
            const auto code = static_cast<unsigned>(static_cast<std::uint8_t>(why.exit_code));
            s = "W";
            s += hex_digit(code >> 4);
            s += hex_digit(code);
            return s;
        }
        s = why.kind == stop_kind::interrupt ? "T02" : "T05";
        switch (why.kind) {
        case stop_kind::software: s += "swbreak:;"; break;
        case stop_kind::hardware: s += "hwbreak:;"; break;
        case stop_kind::watch:
            s += why.watch == break_kind::read ? "rwatch:" : why.watch == break_kind::access ? "awatch:" : "watch:";
            append_hex_number(s, why.data_address);
            s += ';';
            break;
        default: break;
        }
        s += "thread:" + thread_id(why.cpu) + ";";
        return s;
    }

    /// A gdb thread id (hex; -1 = all, 0 = any) to a vCPU, if it names one.
    template <class Target>
    std::optional<unsigned> cpu_of(const Target& target, std::string_view tid) const {
        if (tid == "-1" || tid == "0") return selected_;
        auto v = parse_hex_number(tid);
        if (!v || *v == 0 || *v > target.cpu_count()) return std::nullopt;
        return static_cast<unsigned>(*v - 1);
    }

    template <class Target>
    std::string target_xml(const Target& target) const {
        const arch_desc& a = target.arch();
        std::string x = "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\"><target version=\"1.0\">";
        x += "<architecture>";
        x += a.architecture;
        x += "</architecture>";
        const char* feature = nullptr;
        for (std::size_t i = 0; i < a.registers.size(); ++i) {
            const register_desc& r = a.registers[i];
            if (feature == nullptr || std::string_view(feature) != r.feature) {
                if (feature != nullptr) x += "</feature>";
                feature = r.feature;
                x += "<feature name=\"";
                x += feature;
                x += "\">";
            }
            x += "<reg name=\"";
            x += r.name;
            x += "\" bitsize=\"" + std::to_string(r.bits) + "\" type=\"";
            x += r.type;
            x += "\" regnum=\"" + std::to_string(i) + "\"";
            if (r.group[0] != '\0') {
                x += " group=\"";
                x += r.group;
                x += "\"";
            }
            x += "/>";
        }
        if (feature != nullptr) x += "</feature>";
        x += "</target>";
        return x;
    }

    template <class Target>
    void append_register(Target& target, unsigned cpu, std::size_t n, std::string& out) {
        const std::size_t bytes = target.arch().registers[n].bits / 8u;
        std::byte tmp[64]{};
        if (bytes > sizeof tmp || !target.read_register(cpu, n, std::span<std::byte>(tmp, bytes))) {
            out.append(2 * bytes, 'x'); // unavailable
            return;
        }
        append_hex(out, std::span<const std::byte>(tmp, bytes));
    }

    /// `addr,len` (and the rest after `sep`, if `sep` is given).
    struct addr_len {
        std::uint64_t address;
        std::uint64_t length;
        std::string_view rest;
    };
    static std::optional<addr_len> parse_addr_len(std::string_view s, char sep) {
        const auto comma = s.find(',');
        if (comma == std::string_view::npos) return std::nullopt;
        auto end = sep != '\0' ? s.find(sep, comma) : s.size();
        if (end == std::string_view::npos) return std::nullopt;
        auto a = parse_hex_number(s.substr(0, comma));
        auto l = parse_hex_number(s.substr(comma + 1, end - comma - 1));
        if (!a || !l) return std::nullopt;
        return addr_len{*a, *l, end < s.size() ? s.substr(end + 1) : std::string_view{}};
    }

    template <class Target>
    step_result command(Target& target, const std::string& packet) {
        const std::string_view p(packet);
        if (p.empty()) return reply("");
        const arch_desc& a = target.arch();
        switch (p[0]) {
        case '?': return reply(stop_reply(last_));
        case 'g': {
            std::string out;
            out.reserve(2 * a.register_bytes());
            for (std::size_t n = 0; n < a.registers.size(); ++n) append_register(target, selected_, n, out);
            return reply(out);
        }
        case 'G': {
            const auto hex = p.substr(1);
            if (hex.size() != 2 * a.register_bytes()) return reply(error_reply(EINVAL));
            std::size_t at = 0;
            for (std::size_t n = 0; n < a.registers.size(); ++n) {
                const std::size_t bytes = a.registers[n].bits / 8u;
                std::vector<std::byte> v(bytes);
                if (!parse_hex_bytes(hex.substr(2 * at, 2 * bytes), v)) return reply(error_reply(EINVAL));
                if (!target.write_register(selected_, n, v)) return reply(error_reply(EIO));
                at += bytes;
            }
            return reply("OK");
        }
        case 'p': {
            auto n = parse_hex_number(p.substr(1));
            if (!n || *n >= a.registers.size()) return reply(error_reply(EINVAL));
            std::string out;
            append_register(target, selected_, static_cast<std::size_t>(*n), out);
            return reply(out);
        }
        case 'P': {
            const auto eq = p.find('=');
            if (eq == std::string_view::npos) return reply(error_reply(EINVAL));
            auto n = parse_hex_number(p.substr(1, eq - 1));
            if (!n || *n >= a.registers.size()) return reply(error_reply(EINVAL));
            std::vector<std::byte> v(a.registers[*n].bits / 8u);
            if (!parse_hex_bytes(p.substr(eq + 1), v)) return reply(error_reply(EINVAL));
            if (!target.write_register(selected_, static_cast<std::size_t>(*n), v)) return reply(error_reply(EIO));
            return reply("OK");
        }
        case 'm': {
            auto al = parse_addr_len(p.substr(1), '\0');
            if (!al || al->length > max_memory) return reply(error_reply(EINVAL));
            std::vector<std::byte> v(al->length);
            auto got = target.read_memory(selected_, al->address, v);
            if (!got || (*got == 0 && al->length != 0)) return reply(error_reply(EFAULT));
            std::string out;
            append_hex(out, std::span<const std::byte>(v.data(), *got));
            return reply(out);
        }
        case 'M':
        case 'X': {
            auto al = parse_addr_len(p.substr(1), ':');
            if (!al || al->length > max_memory) return reply(error_reply(EINVAL));
            std::vector<std::byte> v(al->length);
            if (p[0] == 'M') {
                if (!parse_hex_bytes(al->rest, v)) return reply(error_reply(EINVAL));
            } else {
                std::string raw;
                if (!unescape_binary(al->rest, raw) || raw.size() != al->length) return reply(error_reply(EINVAL));
                for (std::size_t i = 0; i < raw.size(); ++i) v[i] = static_cast<std::byte>(raw[i]);
            }
            if (al->length != 0 && !target.write_memory(selected_, al->address, v)) return reply(error_reply(EFAULT));
            return reply("OK");
        }
        case 'c':
        case 'C':
        case 's':
        case 'S': {
            // `c [addr]`, `C sig[;addr]`: resuming at another address is done by writing the PC
            // (`P`) first, which every current gdb does; reject the old form rather than ignore it.
            const auto args = p.substr(1);
            const bool has_addr = (p[0] == 'c' || p[0] == 's') ? !args.empty() : args.find(';') != std::string_view::npos;
            if (has_addr) return reply(error_reply(EINVAL));
            return std::optional<request>{request{p[0] == 's' || p[0] == 'S' ? request_kind::step : request_kind::resume, selected_}};
        }
        case 'v': return v_command(target, p);
        case 'Z':
        case 'z': return breakpoint_command(target, p);
        case 'H': {
            if (p.size() < 3) return reply(error_reply(EINVAL));
            auto cpu = cpu_of(target, p.substr(2));
            if (!cpu) return reply(error_reply(EINVAL));
            if (p[1] == 'g') selected_ = *cpu;
            return reply("OK");
        }
        case 'T': return reply(cpu_of(target, p.substr(1)) ? "OK" : error_reply(EINVAL));
        case 'D':
            if (auto w = send("OK"); !w) return w.err();
            return std::optional<request>{request{request_kind::detach, selected_}};
        case 'k': return std::optional<request>{request{request_kind::kill, selected_}};
        case 'q':
        case 'Q': return query(target, p);
        default: return reply("");
        }
    }

    template <class Target>
    step_result v_command(Target& target, std::string_view p) {
        if (p == "vCont?") return reply("vCont;c;C;s;S");
        if (p == "vMustReplyEmpty") return reply("");
        if (p.substr(0, 6) != "vCont;") return reply("");
        // Actions left to right; the first that applies to a thread wins. All-stop: a step of
        // one thread stops the others, a continue runs all.
        std::string_view rest = p.substr(6);
        while (!rest.empty()) {
            const auto semi = rest.find(';');
            const std::string_view action = rest.substr(0, semi);
            rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
            if (action.empty()) continue;
            const auto colon = action.find(':');
            unsigned cpu = selected_;
            if (colon != std::string_view::npos) {
                auto c = cpu_of(target, action.substr(colon + 1));
                if (!c) return reply(error_reply(EINVAL));
                cpu = *c;
            }
            const char op = action[0];
            if (op == 's' || op == 'S') return std::optional<request>{request{request_kind::step, cpu}};
            if (op == 'c' || op == 'C') return std::optional<request>{request{request_kind::resume, cpu}};
            return reply(""); // `t`, `r`: not offered in `vCont?`
        }
        return reply(error_reply(EINVAL));
    }

    template <class Target>
    step_result breakpoint_command(Target& target, std::string_view p) {
        // Z<type>,<addr>,<kind>[;cond...]: conditions are gdb-side; ignore what follows ';'.
        if (p.size() < 4 || p[2] != ',' || p[1] < '0' || p[1] > '4') return reply("");
        auto body = p.substr(3);
        body = body.substr(0, body.find(';'));
        auto al = parse_addr_len(body, '\0');
        if (!al) return reply(error_reply(EINVAL));
        const breakpoint bp{static_cast<break_kind>(p[1] - '0'), al->address, al->length};
        auto r = p[0] == 'Z' ? target.insert_breakpoint(bp) : target.remove_breakpoint(bp);
        if (!r) return reply(r.err().code == ENOTSUP ? std::string() : error_reply(r.err().code != 0 ? r.err().code : EINVAL));
        return reply("OK");
    }

    template <class Target>
    step_result query(Target& target, std::string_view p) {
        if (p.substr(0, 10) == "qSupported")
            return reply("PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;vContSupported+");
        if (p == "QStartNoAckMode") {
            auto r = reply("OK");
            no_ack_ = true;
            return r;
        }
        if (p.substr(0, 31) == "qXfer:features:read:target.xml:") {
            auto al = parse_addr_len(p.substr(31), '\0');
            if (!al) return reply(error_reply(EINVAL));
            const std::string xml = target_xml(target);
            if (al->address >= xml.size()) return reply("l");
            const auto n = std::min<std::uint64_t>(al->length, xml.size() - al->address);
            std::string out = al->address + n >= xml.size() ? "l" : "m";
            out.append(xml, static_cast<std::size_t>(al->address), static_cast<std::size_t>(n));
            return reply(out);
        }
        if (p.substr(0, 14) == "qXfer:features") return reply(error_reply(ENOENT));
        if (p == "qAttached") return reply("1");
        if (p == "qC") return reply("QC" + thread_id(selected_));
        if (p == "qfThreadInfo") {
            std::string out = "m";
            for (unsigned c = 0; c < target.cpu_count(); ++c) {
                if (c != 0) out += ',';
                out += thread_id(c);
            }
            return reply(out);
        }
        if (p == "qsThreadInfo") return reply("l");
        if (p.substr(0, 7) == "qSymbol") return reply("OK");
        return reply("");
    }

    static constexpr std::uint64_t max_memory = 0x1000; ///< largest `m`/`M`/`X` (within PacketSize)

    Transport io_;
    packet_reader reader_;
    std::vector<char> buf_;
    std::size_t pending_ = 0;
    std::size_t filled_ = 0;
    std::string last_sent_;
    stop_reason last_;
    unsigned selected_ = 0;
    bool no_ack_ = false;
};

} // namespace vcpu::gdb
