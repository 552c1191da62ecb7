#pragma once
/// \file
/// Typed calls from guest code to the host ("ucalls"), the architecture-neutral part.
///
/// Guest code written in C++ (see `vcpu/guest/x86_64.hpp` for the guest side and
/// docs/guest-code.md) fills one `ucall_record` in guest memory and tells the host its
/// address with one trapping access (x86-64: one `out` to `ucall_port`). The host reads the
/// record, checks every field the guest controls, and turns it into one of the exit types
/// below, which handlers take through the normal dispatch:
///
/// | guest call                         | host exit type          |
/// | ---------------------------------- | ----------------------- |
/// | `ucall::sync(v...)`                | `guest::sync`           |
/// | `ucall::done()` / guest returns    | `guest::done`           |
/// | `VCPU_GUEST_ASSERT(expr, v...)`    | `guest::assert_fail`    |
/// | `ucall::print(fmt, v...)`          | `guest::print`          |
/// | an exception with no guest handler | `guest::unhandled_exception` |
/// | a record that fails a check        | `guest::bad_ucall`      |
///
/// The guest is hostile: a bad address, magic, kind, count, string or format becomes a
/// `bad_ucall`, never a host read outside guest memory. Strings in the exits are views into
/// guest memory, valid until the vCPU runs again (like every exit payload).

#include <vcpu/config.hpp>
#include <vcpu/meta.hpp>

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>

namespace vcpu::guest {

/// Values one ucall carries (sync values, assertion values, print arguments).
inline constexpr std::size_t max_values = 8;

/// `ucall_record::magic`: "vcUC" little-endian. A record without it is a `bad_ucall`.
inline constexpr std::uint32_t ucall_magic = 0x43556376;

/// What a record asks for.
enum class ucall_kind : std::uint16_t {
    sync = 1,        ///< values for the host; the guest goes on when the host resumes it
    done = 2,        ///< the guest finished
    assert_fail = 3, ///< `text` = expression, `file`/`line`, values
    print = 4,       ///< `text` = printf-style format, values = arguments
    exception = 5,   ///< values: vector, error code, RIP/PC, fault address
};

/// The record guest code fills, shared between guest and host (both little-endian, LP64).
/// Guest virtual addresses in `text`/`file` are translated by the host's address space.
struct ucall_record {
    std::uint32_t magic;  ///< `ucall_magic`: marks a record the guest filled
    std::uint16_t kind;  ///< a `ucall_kind`
    std::uint16_t count; ///< values used (<= max_values)
    std::uint64_t text;  ///< GVA of a NUL-terminated string, or 0
    std::uint64_t file;  ///< GVA of a NUL-terminated file name, or 0
    std::uint64_t line;  ///< the guest source line (assertions), or 0
    std::uint64_t values[max_values];  ///< the values, `count` of them
};
static_assert(std::is_standard_layout_v<ucall_record> && std::is_trivially_copyable_v<ucall_record>);
static_assert(sizeof(ucall_record) == 96);
static_assert(offsetof(ucall_record, kind) == 4 && offsetof(ucall_record, count) == 6 &&
              offsetof(ucall_record, text) == 8 && offsetof(ucall_record, file) == 16 &&
              offsetof(ucall_record, line) == 24 && offsetof(ucall_record, values) == 32);

/// Longest string (expression, file name, format, `%s` argument) the host reads, NUL excluded.
inline constexpr std::size_t max_string = 1024;

// ---- host-side exit types -----------------------------------------------------------------

/// `ucall::sync(v...)`: up to eight values; the guest continues when the handler returns.
struct sync {
    std::array<std::uint64_t, max_values> values{};  ///< the values the guest sent
    std::uint8_t count = 0;  ///< how many (<= `max_values`)
    /// Value `i`, 0 when the guest sent fewer.
    [[nodiscard]] constexpr std::uint64_t operator[](std::size_t i) const noexcept {
        return i < count ? values[i] : 0;
    }
    /// Number of values the guest sent.
    [[nodiscard]] constexpr std::size_t size() const noexcept { return count; }
};

/// `ucall::done()`, or the guest entry function returned.
struct done {};

/// A guest assertion failed (`VCPU_GUEST_ASSERT`). `expression.data()` and `file.data()` are
/// NUL-terminated (the host checked it), views into guest memory.
struct assert_fail {
    std::string_view expression;  ///< the failed expression's text
    std::string_view file;  ///< the guest source file
    std::uint32_t line = 0;  ///< the guest source line
    std::array<std::uint64_t, max_values> values{};  ///< the values passed to the assertion
    std::uint8_t count = 0;  ///< how many (<= `max_values`)

    /// "file:line: expr (values: 0x1, 0x2)" into `buf`; returns the text written (truncated to fit).
    [[nodiscard]] std::string_view describe(std::span<char> buf) const noexcept;
};

/// `ucall::print(fmt, v...)`, formatted on the host (printf subset: `%d %i %u %x %X %o %c %s %p %%`,
/// flags `-0`, a width, length `hh h l ll z j t`; `%s` reads a guest string).
struct print {
    std::array<char, 512> buffer{};  ///< the formatted text (not NUL-terminated)
    std::uint16_t length = 0;  ///< bytes of `buffer` used
    bool truncated = false; ///< the text did not fit in `buffer`
    /// The formatted text.
    [[nodiscard]] constexpr std::string_view text() const noexcept { return {buffer.data(), length}; }
};

/// An exception the guest has no handler for (x86: `vector` per SDM Vol. 3A Table 6-1).
struct unhandled_exception {
    std::uint32_t vector = 0;  ///< exception vector (x86: 0..31)
    std::uint64_t error_code = 0;  ///< the exception's error code, 0 when it has none
    std::uint64_t pc = 0;      ///< RIP of the faulting (or, for traps, next) instruction
    std::uint64_t address = 0; ///< x86: CR2 (the page-fault linear address)
    /// The x86 mnemonic of `vector` ("#UD"), or "vector".
    [[nodiscard]] constexpr std::string_view name() const noexcept {
        constexpr std::string_view n[32] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
                                            "#DF", "vector 9", "#TS", "#NP", "#SS", "#GP", "#PF", "vector 15",
                                            "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "vector 22", "vector 23",
                                            "vector 24", "vector 25", "vector 26", "vector 27", "#HV", "#VC", "#SX",
                                            "vector 31"};
        return vector < 32 ? n[vector] : std::string_view("interrupt");
    }
};

/// A ucall record the host refused; nothing was read outside guest memory.
struct bad_ucall {
    /// Why the host refused the record.
    enum class why : std::uint8_t {
        address, ///< the record is not in mapped guest memory
        magic,   ///< no `ucall_magic`
        kind,    ///< unknown `ucall_kind`
        count,   ///< more than `max_values` values
        string,  ///< a string pointer outside guest memory, or no NUL within `max_string`
        format,  ///< a print format that asks for more values than were sent, or is malformed
        registers, ///< a register ucall with a bad count, or its registers could not be read
    };
    why reason = why::address;  ///< the check that failed
    std::uint64_t address = 0; ///< the record's guest address (or the string's)
    std::uint64_t value = 0;   ///< the offending field
    /// A one-line message for the failed check.
    [[nodiscard]] constexpr std::string_view describe() const noexcept {
        switch (reason) {
        case why::address: return "ucall record is not in mapped guest memory";
        case why::magic: return "ucall record has no magic";
        case why::kind: return "unknown ucall kind";
        case why::count: return "ucall carries more than max_values values";
        case why::string: return "ucall string is outside guest memory or not NUL-terminated";
        case why::format: return "print format is malformed or needs more values than were sent";
        case why::registers: return "register ucall has a bad count or its registers could not be read";
        }
        return "bad ucall";
    }
};

/// Every exit type a ucall can decode to, in the order handlers usually list them.
using ucall_exit_types = type_list<sync, done, assert_fail, print, unhandled_exception, bad_ucall>;

// ---- decoding -----------------------------------------------------------------------------

namespace detail {

/// Appends to a fixed buffer, remembering truncation.
struct text_sink {
    std::span<char> out;
    std::size_t n = 0;
    bool truncated = false;
    void put(char c) noexcept {
        if (n < out.size()) out[n++] = c;
        else truncated = true;
    }
    void put(std::string_view s) noexcept {
        for (char c : s) put(c);
    }
    void number(std::uint64_t v, int base, bool upper, bool negative, unsigned width, bool zero,
                bool left, std::string_view prefix = {}) noexcept {
        std::array<char, 24> d{};
        auto r = std::to_chars(d.data(), d.data() + d.size(), v, base);
        std::size_t len = static_cast<std::size_t>(r.ptr - d.data());
        if (upper)
            for (std::size_t i = 0; i < len; ++i)
                if (d[i] >= 'a' && d[i] <= 'f') d[i] = static_cast<char>(d[i] - 'a' + 'A');
        const std::size_t body = len + (negative ? 1 : 0) + prefix.size();
        const std::size_t pad = width > body ? width - body : 0;
        if (!left && !zero)
            for (std::size_t i = 0; i < pad; ++i) put(' ');
        if (negative) put('-');
        put(prefix);
        if (!left && zero)
            for (std::size_t i = 0; i < pad; ++i) put('0');
        put(std::string_view(d.data(), len));
        if (left)
            for (std::size_t i = 0; i < pad; ++i) put(' ');
    }
};

} // namespace detail

inline std::string_view assert_fail::describe(std::span<char> buf) const noexcept {
    detail::text_sink s{buf};
    s.put(file);
    s.put(':');
    s.number(line, 10, false, false, 0, false, false);
    s.put(": guest assertion failed: ");
    s.put(expression);
    for (std::uint8_t i = 0; i < count; ++i) {
        s.put(i == 0 ? " (values: " : ", ");
        s.number(values[i], 16, false, false, 0, false, false, "0x");
    }
    if (count != 0) s.put(')');
    return {buf.data(), s.n};
}

/// Where guest virtual addresses live in host memory: a model needs
/// `bytes(gva, len) -> std::span<const std::byte>` (empty when `[gva, gva+len)` is not in one
/// mapped range) and `contiguous(gva) -> std::span<const std::byte>` (the mapped bytes from
/// `gva` to the end of its range, empty when unmapped).
template <class S>
concept GuestAddressSpace = requires(const S& s, std::uint64_t a) {
    { s.bytes(a, a) } -> std::convertible_to<std::span<const std::byte>>;
    { s.contiguous(a) } -> std::convertible_to<std::span<const std::byte>>;
};

/// A NUL-terminated guest string at `gva` (at most `max_string` bytes before the NUL).
template <GuestAddressSpace S>
[[nodiscard]] std::optional<std::string_view> read_string(const S& space, std::uint64_t gva) noexcept {
    const auto b = space.contiguous(gva);
    const std::size_t n = b.size() < max_string + 1 ? b.size() : max_string + 1;
    for (std::size_t i = 0; i < n; ++i)
        if (b[i] == std::byte{0}) return std::string_view(reinterpret_cast<const char*>(b.data()), i);
    return std::nullopt;
}

namespace detail {

/// Formats `fmt` with `r.values` into `p` (printf subset, see `print`).
template <GuestAddressSpace S>
[[nodiscard]] bool format(const S& space, std::string_view fmt, const ucall_record& r, print& p) noexcept {
    text_sink s{p.buffer};
    std::size_t arg = 0;
    for (std::size_t i = 0; i < fmt.size(); ++i) {
        const char c = fmt[i];
        if (c != '%') {
            s.put(c);
            continue;
        }
        if (++i >= fmt.size()) return false;
        if (fmt[i] == '%') {
            s.put('%');
            continue;
        }
        bool left = false, zero = false;
        for (; i < fmt.size() && (fmt[i] == '-' || fmt[i] == '0'); ++i)
            (fmt[i] == '-' ? left : zero) = true;
        unsigned width = 0;
        for (; i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9'; ++i)
            width = width < 1000 ? width * 10 + static_cast<unsigned>(fmt[i] - '0') : width;
        unsigned bits = 32;
        for (; i < fmt.size(); ++i) {
            const char m = fmt[i];
            if (m == 'h') bits = bits == 16 ? 8 : 16;
            else if (m == 'l' || m == 'z' || m == 'j' || m == 't') bits = 64;
            else break;
        }
        if (i >= fmt.size() || arg >= r.count || arg >= max_values) return false;
        std::uint64_t v = r.values[arg++];
        const std::uint64_t mask = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
        switch (fmt[i]) {
        case 'd':
        case 'i': {
            std::uint64_t u = v & mask;
            const bool neg = bits == 64 ? (u >> 63) != 0 : ((u >> (bits - 1)) & 1) != 0;
            if (neg) u = (~u + 1) & mask;
            s.number(u, 10, false, neg, width, zero, left);
            break;
        }
        case 'u': s.number(v & mask, 10, false, false, width, zero, left); break;
        case 'x': s.number(v & mask, 16, false, false, width, zero, left); break;
        case 'X': s.number(v & mask, 16, true, false, width, zero, left); break;
        case 'o': s.number(v & mask, 8, false, false, width, zero, left); break;
        case 'p': s.number(v, 16, false, false, width, zero, left, "0x"); break;
        case 'c': s.put(static_cast<char>(v & 0xff)); break;
        case 's': {
            const auto str = read_string(space, v);
            if (!str) return false;
            const std::size_t pad = width > str->size() ? width - str->size() : 0;
            if (!left)
                for (std::size_t k = 0; k < pad; ++k) s.put(' ');
            s.put(*str);
            if (left)
                for (std::size_t k = 0; k < pad; ++k) s.put(' ');
            break;
        }
        default: return false;
        }
    }
    p.length = static_cast<std::uint16_t>(s.n);
    p.truncated = s.truncated;
    return true;
}

} // namespace detail

/// Decodes the record at guest virtual address `gva` and calls `visit` with exactly one exit
/// (`sync&`, `done&`, `assert_fail&`, `print&`, `unhandled_exception&` or `bad_ucall&`);
/// returns what `visit` returns (every call must return the same type).
template <GuestAddressSpace S, class Visitor>
decltype(auto) decode_ucall(const S& space, std::uint64_t gva, Visitor&& visit) noexcept {
    const auto bytes = space.bytes(gva, sizeof(ucall_record));
    if (bytes.size() != sizeof(ucall_record)) {
        bad_ucall b{bad_ucall::why::address, gva, gva};
        return visit(b);
    }
    ucall_record r;
    std::memcpy(&r, bytes.data(), sizeof r);
    auto bad = [&](bad_ucall::why w, std::uint64_t v) -> decltype(auto) {
        bad_ucall b{w, gva, v};
        return visit(b);
    };
    if (r.magic != ucall_magic) return bad(bad_ucall::why::magic, r.magic);
    if (r.count > max_values) return bad(bad_ucall::why::count, r.count);
    switch (static_cast<ucall_kind>(r.kind)) {
    case ucall_kind::sync: {
        sync e;
        e.count = static_cast<std::uint8_t>(r.count);
        for (std::size_t i = 0; i < r.count; ++i) e.values[i] = r.values[i];
        return visit(e);
    }
    case ucall_kind::done: {
        done e;
        return visit(e);
    }
    case ucall_kind::assert_fail: {
        const auto expr = read_string(space, r.text);
        if (!expr) return bad(bad_ucall::why::string, r.text);
        const auto file = read_string(space, r.file);
        if (!file) return bad(bad_ucall::why::string, r.file);
        assert_fail e;
        e.expression = *expr;
        e.file = *file;
        e.line = static_cast<std::uint32_t>(r.line);
        e.count = static_cast<std::uint8_t>(r.count);
        for (std::size_t i = 0; i < r.count; ++i) e.values[i] = r.values[i];
        return visit(e);
    }
    case ucall_kind::print: {
        const auto fmt = read_string(space, r.text);
        if (!fmt) return bad(bad_ucall::why::string, r.text);
        print e;
        if (!detail::format(space, *fmt, r, e)) return bad(bad_ucall::why::format, r.text);
        return visit(e);
    }
    case ucall_kind::exception: {
        unhandled_exception e;
        e.vector = static_cast<std::uint32_t>(r.values[0]);
        e.error_code = r.values[1];
        e.pc = r.values[2];
        e.address = r.values[3];
        return visit(e);
    }
    }
    return bad(bad_ucall::why::kind, r.kind);
}

} // namespace vcpu::guest
