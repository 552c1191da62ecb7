#pragma once
// Doctest glue shared by the guest-code tests of every architecture: a failed guest assertion
// becomes a failure of the running case at the guest's file and line; guest output goes to the
// doctest log.
#include <vcpu/exits.hpp>
#include <vcpu/guest/ucall.hpp>

#include <doctest/doctest.h>

#include <array>
#include <string>

namespace guest_test {

/// Handler: a failed guest assertion fails the running doctest case at the guest's file and line
/// (ADD_FAIL_CHECK_AT), with the expression and values, and stops the guest.
inline auto fail_on_guest_assert() {
    return [](vcpu::guest::assert_fail& a) {
        std::array<char, 512> buf{};
        const std::string text(a.describe(buf));
        ADD_FAIL_CHECK_AT(a.file.data(), static_cast<int>(a.line), text);
        return vcpu::action::stop;
    };
}

/// Handler: guest output goes to the doctest log.
inline auto log_guest_print() {
    return [](vcpu::guest::print& p) { MESSAGE(std::string(p.text())); };
}

} // namespace guest_test
