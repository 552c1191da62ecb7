#pragma once
/// \file
/// Error and result types for the hot path: no exceptions, no allocation.
///
/// `vcpu::error` names the failing operation (a KVM ioctl name such as
/// `"KVM_CREATE_VCPU"`, or a library step such as `"load bzImage"`), the errno
/// it failed with, an optional static detail string, and the values that
/// explain it (slot, guest range, vCPU id and host limit, path...) in a small
/// inline `error_context`. It is trivially copyable and built without
/// allocation, so it can be returned from `noexcept` code; only `message()`
/// formats (and allocates).
///
/// `result<T>` holds a `T` or an `error` in a union: the success path writes the
/// value and a flag, never the error's bytes, so the error's size does not cost the
/// hot path (`result<void>` of `hal_vcpu::enter()` is a flag on success).

#include <vcpu/config.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace vcpu {

/// Values that explain an error, stored inline (no allocation): up to `max_values` named
/// numbers (a slot, a guest physical range, a size, a vCPU id and the host's limit...) and one
/// named short text (a path, truncated to `max_text` characters). Names are static strings.
/// Filled through `error::with`, `with_hex`, `with_range` and `with_text`; rendered only by
/// `error::message()`. Values past capacity are dropped (the message ends in ", ...").
struct error_context {
    /// How a value is rendered.
    enum class format : std::uint8_t {
        dec,     ///< unsigned decimal
        sdec,    ///< the value's bits as a signed decimal
        hex,     ///< 0x-prefixed hexadecimal
        range,   ///< with the next slot: [start, start+size) in hexadecimal
    };
    /// Most values one error carries.
    static constexpr std::size_t max_values = 6;
    /// Most characters of `text` (longer texts are cut).
    static constexpr std::size_t max_text = 31;

    const char* names[max_values] = {};  ///< names of the values (static strings; null for a range's second slot)
    std::uint64_t values[max_values] = {};  ///< the values, in the order they were added
    format formats[max_values] = {};  ///< how each value is rendered
    std::uint8_t count = 0;      ///< slots used in `names`/`values` (a range takes two)
    bool truncated = false;      ///< a value did not fit, or the text was cut
    const char* text_name = nullptr; ///< name of `text`; null when there is none
    char text[max_text + 1] = {};  ///< the named text, NUL-terminated
};

/// An operation that failed, with its errno and the values that explain it.
/// Trivially copyable and allocation-free to build (it can be returned from
/// `noexcept` code); `message()` renders it (allocates, so call it off the hot path).
struct error {
    const char* op = "";      ///< operation: "KVM_RUN", "mmap kvm_run", ...
    int code = 0;             ///< errno value (0 when not a system error)
    const char* detail = "";  ///< optional static explanation
    error_context context{};  ///< values that explain it (see `with`)

    /// Adds the integer `v` named `name` (a static string), rendered in decimal.
    template <class I>
        requires std::is_integral_v<I>
    constexpr error& with(const char* name, I v) & noexcept {
        return put(name, static_cast<std::uint64_t>(v),
                   std::is_signed_v<I> ? error_context::format::sdec : error_context::format::dec);
    }
    /// As `with(name, v) &`, on a temporary error: `return error{...}.with("slot", s);`.
    template <class I>
        requires std::is_integral_v<I>
    [[nodiscard]] constexpr error with(const char* name, I v) && noexcept {
        with(name, v);
        return std::move(*this);
    }
    /// Adds `v` named `name`, rendered in hexadecimal (addresses, flags).
    constexpr error& with_hex(const char* name, std::uint64_t v) & noexcept {
        return put(name, v, error_context::format::hex);
    }
    /// As `with_hex(name, v) &`, on a temporary error.
    [[nodiscard]] constexpr error with_hex(const char* name, std::uint64_t v) && noexcept {
        with_hex(name, v);
        return std::move(*this);
    }
    /// Adds the range `[start, start+size)` named `name` (two value slots).
    constexpr error& with_range(const char* name, std::uint64_t start, std::uint64_t size) & noexcept {
        auto& c = context;
        if (std::size_t{c.count} + 2 > error_context::max_values) {
            c.truncated = true;
            return *this;
        }
        put(name, start, error_context::format::range);
        return put(nullptr, size, error_context::format::range);
    }
    /// As `with_range(name, start, size) &`, on a temporary error.
    [[nodiscard]] constexpr error with_range(const char* name, std::uint64_t start, std::uint64_t size) && noexcept {
        with_range(name, start, size);
        return std::move(*this);
    }
    /// Sets the text named `name` (a path...), copied and cut to `max_text` characters.
    constexpr error& with_text(const char* name, std::string_view t) & noexcept {
        auto& c = context;
        c.text_name = name;
        const std::size_t n = t.size() < error_context::max_text ? t.size() : error_context::max_text;
        for (std::size_t i = 0; i < n; ++i) c.text[i] = t[i];
        c.text[n] = '\0';
        if (n < t.size()) c.truncated = true;
        return *this;
    }
    /// As `with_text(name, t) &`, on a temporary error.
    [[nodiscard]] constexpr error with_text(const char* name, std::string_view t) && noexcept {
        with_text(name, t);
        return std::move(*this);
    }

    /// The value named `name` (a range's start), if the error has one.
    [[nodiscard]] constexpr std::optional<std::uint64_t> value(std::string_view name) const noexcept {
        for (std::size_t i = 0; i < context.count; ++i)
            if (context.names[i] != nullptr && std::string_view(context.names[i]) == name)
                return context.values[i];
        return std::nullopt;
    }
    /// The text (e.g. the path), "" when there is none.
    [[nodiscard]] constexpr std::string_view text() const noexcept {
        return context.text_name != nullptr ? std::string_view(context.text) : std::string_view();
    }

    /// "KVM_CREATE_VCPU failed: Invalid argument (EINVAL): detail (vcpu_id=300, max_vcpu_id=288)".
    [[nodiscard]] std::string message() const {
        std::string m = op;
        m += " failed";
        if (code != 0) {
            m += ": ";
            m += std::strerror(code);
            if (const char* n = errno_name(code); n[0] != '\0') {
                m += " (";
                m += n;
                m += ')';
            }
        }
        if (detail != nullptr && detail[0] != '\0') {
            m += ": ";
            m += detail;
        }
        const auto& c = context;
        if (c.count == 0 && c.text_name == nullptr && !c.truncated) return m;
        const char* sep = " (";
        for (std::size_t i = 0; i < c.count; ++i) {
            m += sep;
            sep = ", ";
            m += c.names[i] != nullptr ? c.names[i] : "?";
            m += '=';
            switch (c.formats[i]) {
            case error_context::format::dec: m += std::to_string(c.values[i]); break;
            case error_context::format::sdec:
                m += std::to_string(static_cast<std::int64_t>(c.values[i]));
                break;
            case error_context::format::hex: m += hex(c.values[i]); break;
            case error_context::format::range:
                m += '[';
                m += hex(c.values[i]);
                m += ", ";
                if (i + 1 < c.count) {
                    const std::uint64_t end = c.values[i] + c.values[i + 1];
                    m += end < c.values[i] ? std::string("2^64") : hex(end);
                    ++i;
                }
                m += ')';
                break;
            }
        }
        if (c.text_name != nullptr) {
            m += sep;
            sep = ", ";
            m += c.text_name;
            m += "=\"";
            m += c.text;
            m += '"';
        }
        if (c.truncated) {
            m += sep;
            m += "...";
        }
        m += ')';
        return m;
    }

    /// Symbolic name of the errno values KVM users meet; "" otherwise.
    [[nodiscard]] static constexpr const char* errno_name(int e) noexcept {
        switch (e) {
        case EPERM: return "EPERM";
        case ENOENT: return "ENOENT";
        case EINTR: return "EINTR";
        case EIO: return "EIO";
        case ENXIO: return "ENXIO";
        case E2BIG: return "E2BIG";
        case EBADF: return "EBADF";
        case EAGAIN: return "EAGAIN";
        case ENOMEM: return "ENOMEM";
        case EACCES: return "EACCES";
        case EFAULT: return "EFAULT";
        case EBUSY: return "EBUSY";
        case EEXIST: return "EEXIST";
        case ENODEV: return "ENODEV";
        case EINVAL: return "EINVAL";
        case ENOSPC: return "ENOSPC";
        case ERANGE: return "ERANGE";
        case ENOSYS: return "ENOSYS";
        case ENOTTY: return "ENOTTY";
        case EOPNOTSUPP: return "EOPNOTSUPP";
        case EPROTO: return "EPROTO";
        case EOVERFLOW: return "EOVERFLOW";
        case ENOEXEC: return "ENOEXEC";
        case EFBIG: return "EFBIG";
        case EBADMSG: return "EBADMSG";
        case ENODATA: return "ENODATA";
        default: return "";
        }
    }

    /// Same operation and errno (the explaining values are not compared).
    friend constexpr bool operator==(const error& a, const error& b) noexcept {
        return a.code == b.code && std::string_view(a.op) == std::string_view(b.op);
    }

private:
    constexpr error& put(const char* name, std::uint64_t v, error_context::format f) noexcept {
        auto& c = context;
        if (c.count == error_context::max_values) {
            c.truncated = true;
            return *this;
        }
        c.names[c.count] = name;
        c.values[c.count] = v;
        c.formats[c.count] = f;
        ++c.count;
        return *this;
    }
    [[nodiscard]] static std::string hex(std::uint64_t v) {
        char b[19] = {'0', 'x'};
        int n = 2;
        int shift = 60;
        while (shift > 0 && ((v >> shift) & 0xf) == 0) shift -= 4;
        for (; shift >= 0; shift -= 4) b[n++] = "0123456789abcdef"[(v >> shift) & 0xf];
        return std::string(b, static_cast<std::size_t>(n));
    }
};
static_assert(std::is_trivially_copyable_v<error>, "vcpu::error must stay trivially copyable");
// Returned by value from every fallible call: keep it a few cache lines at most.
static_assert(sizeof(error) <= 192, "vcpu::error grew: keep its context small");

/// Builds an error from the current `errno`.
[[nodiscard]] inline error last_error(const char* op, const char* detail = "") noexcept {
    return error{op, errno, detail};
}

/// Either a `T` or an `error` (a small `std::expected<T, error>`).
/// Accessing the wrong alternative is a precondition violation checked with
/// `__builtin_trap`, never undefined behaviour.
template <class T>
class [[nodiscard]] result {
    static_assert(!std::is_reference_v<T>, "result<T&> is not supported; use result<T*>");

public:
    /// The value type `T`.
    using value_type = T;

    /// A result holding a copy of `v`.
    constexpr result(const T& v) noexcept(std::is_nothrow_copy_constructible_v<T>)
        : v_(v), ok_(true) {}
    /// A result holding `v`, moved.
    constexpr result(T&& v) noexcept(std::is_nothrow_move_constructible_v<T>)
        : v_(std::move(v)), ok_(true) {}
    /// A result holding a `T` built in place from `a...`.
    template <class... A>
    constexpr explicit result(std::in_place_t, A&&... a) : v_(std::forward<A>(a)...), ok_(true) {}
    /// A result holding the error `e`.
    constexpr result(error e) noexcept : e_(e), ok_(false) {}

    // The union is left without an active member until the body constructs one: zeroing the
    // error first (as `e_()` would) cost the success path the whole error's size.
    /// Copies the value or the error.
    constexpr result(const result& o) noexcept(std::is_nothrow_copy_constructible_v<T>)
        : ok_(o.ok_) {
        if (ok_) std::construct_at(&v_, o.v_);
        else std::construct_at(&e_, o.e_);
    }
    /// Moves the value, or copies the error.
    constexpr result(result&& o) noexcept(std::is_nothrow_move_constructible_v<T>)
        : ok_(o.ok_) {
        if (ok_) std::construct_at(&v_, std::move(o.v_));
        else std::construct_at(&e_, o.e_);
    }
    /// Replaces the content with `o`'s.
    constexpr result& operator=(result o) noexcept(std::is_nothrow_move_constructible_v<T>) {
        reset();
        if (o.ok_) std::construct_at(&v_, std::move(o.v_));
        else std::construct_at(&e_, o.e_);
        ok_ = o.ok_;
        return *this;
    }
    constexpr ~result() { reset(); }

    /// True when the result holds a value.
    [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
    /// True when the result holds a value.
    constexpr explicit operator bool() const noexcept { return ok_; }

    /// The value; traps when the result holds an error.
    [[nodiscard]] constexpr T& value() & noexcept { check(ok_); return v_; }
    /// The value; traps when the result holds an error.
    [[nodiscard]] constexpr const T& value() const& noexcept { check(ok_); return v_; }
    /// The value, moved out; traps when the result holds an error.
    [[nodiscard]] constexpr T&& value() && noexcept { check(ok_); return std::move(v_); }
    /// The value (`value()`).
    constexpr T& operator*() & noexcept { return value(); }
    /// The value (`value()`).
    constexpr const T& operator*() const& noexcept { return value(); }
    /// The value, moved out (`value()`).
    constexpr T&& operator*() && noexcept { return std::move(*this).value(); }
    /// Member access to the value; traps when the result holds an error.
    constexpr T* operator->() noexcept { return &value(); }
    /// Member access to the value; traps when the result holds an error.
    constexpr const T* operator->() const noexcept { return &value(); }

    /// The error; traps when the result holds a value.
    [[nodiscard]] constexpr const error& err() const noexcept { check(!ok_); return e_; }

    /// The value, or `u` converted to `T` when the result holds an error.
    template <class U>
    [[nodiscard]] constexpr T value_or(U&& u) const& {
        return ok_ ? v_ : static_cast<T>(std::forward<U>(u));
    }

private:
    static constexpr void check(bool c) noexcept {
        if (!c) __builtin_trap();
    }
    constexpr void reset() noexcept {
        if (ok_) std::destroy_at(&v_);
        else std::destroy_at(&e_);
    }
    union {
        T v_;
        error e_;
    };
    bool ok_;
};

/// `result<void>`: success or an error. Success is one flag: the error's bytes are only
/// written on failure (a union), which keeps `enter()`'s success path as cheap as a bool.
template <>
class [[nodiscard]] result<void> {
public:
    /// There is no value: `void`.
    using value_type = void;
    constexpr result() noexcept : ok_(true) {
        // Keeps GCC from folding `ok()` into a constant: a constant is materialised whole, so
        // every `return ok();` not inlined would zero the error's bytes (176) before setting
        // the flag (+20 instructions per mock exit, benchmarks/framework.cpp under callgrind).
        // Clang does not fold it; the branch costs nothing at run time.
        if (std::is_constant_evaluated()) ok_ = true;
    }
    /// A failed result holding the error `e`.
    constexpr result(error e) noexcept : e_(e), ok_(false) {}
    // Copies touch the error's bytes only on failure: a trivial copy would move all of them on
    // the success path too (measured: 36 more instructions per exit in the exit loop).
    /// Copies the success flag and, on failure, the error.
    constexpr result(const result& o) noexcept : ok_(o.ok_) {
        if (!ok_) std::construct_at(&e_, o.e_);
    }
    /// Copies the success flag and, on failure, the error.
    constexpr result& operator=(const result& o) noexcept {
        ok_ = o.ok_;
        if (!ok_) std::construct_at(&e_, o.e_);
        return *this;
    }
    constexpr ~result() = default;
    /// True on success.
    [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
    /// True on success.
    constexpr explicit operator bool() const noexcept { return ok_; }
    /// Does nothing on success; traps when the result holds an error.
    constexpr void value() const noexcept {
        if (!ok_) __builtin_trap();
    }
    /// The error; traps on success.
    [[nodiscard]] constexpr const error& err() const noexcept {
        if (ok_) __builtin_trap();
        return e_;
    }

private:
    union {
        error e_;
    };
    bool ok_;
};
static_assert(std::is_trivially_destructible_v<result<void>>);

/// Shorthand for a successful `result<void>`.
[[nodiscard]] constexpr result<void> ok() noexcept { return {}; }

} // namespace vcpu

/// `VCPU_TRY_VOID(expr);` evaluates `expr` (any `result<T>`) and, when it
/// holds an error, returns that error from the enclosing function (whose
/// return type must be constructible from `vcpu::error`, e.g. any `result<U>`);
/// on success the value is discarded. Standard C++, no GNU statement
/// expression. There is no value-binding form: write
/// `auto r = expr; if (!r) return r.err();` to keep the value.
#define VCPU_TRY_VOID(expr)                                                                        \
    do {                                                                                           \
        if (auto vcpu_try_r_ = (expr); !vcpu_try_r_) return vcpu_try_r_.err();                     \
    } while (0)
