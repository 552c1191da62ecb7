#pragma once
/// \file
/// The ucalls that always travel as a record: `done`, `print`, `assert_failed`, built on the
/// `ucall::send(ucall_record&)` of the architecture's guest header, which includes this file
/// after defining it (only when compiling for that architecture).

#include <vcpu/guest/calls.hpp>
#include <vcpu/guest/ucall.hpp>

namespace vcpu::guest::ucall {

/// Sends `r` to the host with one trapping access: defined by the architecture's guest header
/// (this declaration lets the file compile on its own, where nothing below is instantiated).
VCPU_GUEST_CODE inline void send(ucall_record& r) noexcept;

/// Tells the host the guest is finished (`vcpu::guest::done`). Never returns: resumed, it says
/// so again. (A template only so that a translation unit that never calls it needs no `send`.)
template <int = 0>
[[noreturn]] VCPU_GUEST_CODE inline void done() noexcept {
    ucall_record r;
    fill(r, ucall_kind::done, nullptr, nullptr, 0);
    for (;;) send(r);
}

/// printf-style output formatted by the host (`vcpu::guest::print`); `%s` arguments are guest
/// strings.
template <detail::ucall_value... T>
VCPU_GUEST_CODE inline void print(const char* fmt, T... v) noexcept {
    ucall_record r;
    fill(r, ucall_kind::print, fmt, nullptr, 0, v...);
    send(r);
}

/// What `VCPU_GUEST_ASSERT` calls. Never returns.
template <detail::ucall_value... T>
[[noreturn]] VCPU_GUEST_CODE inline void assert_failed(const char* expr, const char* file, unsigned line,
                                                      T... v) noexcept {
    ucall_record r;
    fill(r, ucall_kind::assert_fail, expr, file, line, v...);
    for (;;) send(r);
}

} // namespace vcpu::guest::ucall
