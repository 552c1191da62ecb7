#pragma once
/// \file
/// Error and result types for the hot path: no exceptions, no allocation.
///
/// `vcpu::error` names the failing operation (a KVM ioctl name such as
/// `"KVM_CREATE_VCPU"`, or a library step such as `"load bzImage"`), the errno
/// it failed with, and an optional static detail string. All three are
/// trivially copyable, so an error can be returned from `noexcept` code.

#include <vcpu/config.hpp>

#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace vcpu {

/// An operation that failed, with its errno. Cheap to copy; `message()`
/// renders it (allocates, so call it off the hot path).
struct error {
    const char* op = "";      ///< operation: "KVM_RUN", "mmap kvm_run", ...
    int code = 0;             ///< errno value (0 when not a system error)
    const char* detail = "";  ///< optional static explanation

    /// "KVM_CREATE_VCPU failed: Bad file descriptor (EBADF)" or with detail.
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

    friend constexpr bool operator==(const error& a, const error& b) noexcept {
        return a.code == b.code && std::string_view(a.op) == std::string_view(b.op);
    }
};

/// Builds an error from the current `errno`.
[[nodiscard]] inline error last_error(const char* op, const char* detail = "") noexcept {
    return error{op, errno, detail};
}

struct unexpect_t {
    explicit unexpect_t() = default;
};
inline constexpr unexpect_t unexpect{};

/// Either a `T` or an `error` (a small `std::expected<T, error>`).
/// Accessing the wrong alternative is a precondition violation checked with
/// `__builtin_trap`, never undefined behaviour.
template <class T>
class [[nodiscard]] result {
    static_assert(!std::is_reference_v<T>, "result<T&> is not supported; use result<T*>");

public:
    using value_type = T;

    constexpr result(const T& v) noexcept(std::is_nothrow_copy_constructible_v<T>)
        : v_(v), ok_(true) {}
    constexpr result(T&& v) noexcept(std::is_nothrow_move_constructible_v<T>)
        : v_(std::move(v)), ok_(true) {}
    template <class... A>
    constexpr explicit result(std::in_place_t, A&&... a) : v_(std::forward<A>(a)...), ok_(true) {}
    constexpr result(error e) noexcept : e_(e), ok_(false) {}

    constexpr result(const result& o) noexcept(std::is_nothrow_copy_constructible_v<T>)
        : e_(), ok_(o.ok_) {
        if (ok_) {
            std::destroy_at(&e_);
            std::construct_at(&v_, o.v_);
        } else {
            e_ = o.e_;
        }
    }
    constexpr result(result&& o) noexcept(std::is_nothrow_move_constructible_v<T>)
        : e_(), ok_(o.ok_) {
        if (ok_) {
            std::destroy_at(&e_);
            std::construct_at(&v_, std::move(o.v_));
        } else {
            e_ = o.e_;
        }
    }
    constexpr result& operator=(result o) noexcept(std::is_nothrow_move_constructible_v<T>) {
        reset();
        if (o.ok_) std::construct_at(&v_, std::move(o.v_));
        else std::construct_at(&e_, o.e_);
        ok_ = o.ok_;
        return *this;
    }
    constexpr ~result() { reset(); }

    [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
    constexpr explicit operator bool() const noexcept { return ok_; }

    [[nodiscard]] constexpr T& value() & noexcept { check(ok_); return v_; }
    [[nodiscard]] constexpr const T& value() const& noexcept { check(ok_); return v_; }
    [[nodiscard]] constexpr T&& value() && noexcept { check(ok_); return std::move(v_); }
    constexpr T& operator*() & noexcept { return value(); }
    constexpr const T& operator*() const& noexcept { return value(); }
    constexpr T&& operator*() && noexcept { return std::move(*this).value(); }
    constexpr T* operator->() noexcept { return &value(); }
    constexpr const T* operator->() const noexcept { return &value(); }

    [[nodiscard]] constexpr const error& err() const noexcept { check(!ok_); return e_; }

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

/// `result<void>`: success or an error.
template <>
class [[nodiscard]] result<void> {
public:
    using value_type = void;
    constexpr result() noexcept = default;
    constexpr result(error e) noexcept : e_(e), ok_(false) {}
    [[nodiscard]] constexpr bool has_value() const noexcept { return ok_; }
    constexpr explicit operator bool() const noexcept { return ok_; }
    constexpr void value() const noexcept {
        if (!ok_) __builtin_trap();
    }
    [[nodiscard]] constexpr const error& err() const noexcept {
        if (ok_) __builtin_trap();
        return e_;
    }

private:
    error e_{};
    bool ok_ = true;
};

/// Shorthand for a successful `result<void>`.
[[nodiscard]] constexpr result<void> ok() noexcept { return {}; }

} // namespace vcpu

/// Propagates an error from a `result` expression, GNU statement-expression
/// free: `VCPU_TRY(r, expr);` declares `r` holding the value.
#define VCPU_TRY_VOID(expr)                                                                        \
    do {                                                                                           \
        if (auto vcpu_try_r_ = (expr); !vcpu_try_r_) return vcpu_try_r_.err();                     \
    } while (0)
