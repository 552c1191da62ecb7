// vcpu::exit_name<E>(): the exact qualified names of core and arch exits, at compile time and at
// run time, the same with g++ and clang++, and NUL-terminated for printf("%s").
#include <arch/aarch64/exits.hpp>
#include <arch/riscv64/exits.hpp>
#include <arch/x86_64/exits.hpp>
#include <vcpu/exit_name.hpp>
#include <vcpu/exits.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <string_view>

namespace {

using namespace std::string_view_literals;

// Constant expressions: usable in static_assert and constexpr tables.
static_assert(vcpu::exit_name<vcpu::port_io>() == "vcpu::port_io"sv);
static_assert(vcpu::exit_name<vcpu::x86_64::exception>() == "vcpu::x86_64::exception"sv);
static_assert(vcpu::exit_name<const vcpu::mmio&>() == "vcpu::mmio"sv);

TEST_CASE("exit_name: core exits") {
    CHECK(vcpu::exit_name<vcpu::port_io>() == "vcpu::port_io");
    CHECK(vcpu::exit_name<vcpu::mmio>() == "vcpu::mmio");
    CHECK(vcpu::exit_name<vcpu::halt>() == "vcpu::halt");
    CHECK(vcpu::exit_name<vcpu::malformed_exit>() == "vcpu::malformed_exit");
}

TEST_CASE("exit_name: arch exits") {
    CHECK(vcpu::exit_name<vcpu::x86_64::exception>() == "vcpu::x86_64::exception");
    CHECK(vcpu::exit_name<vcpu::aarch64::psci_call>() == "vcpu::aarch64::psci_call");
    CHECK(vcpu::exit_name<vcpu::riscv64::sbi_call>() == "vcpu::riscv64::sbi_call");
}

TEST_CASE("exit_name: cv-qualifiers and references are dropped") {
    CHECK(vcpu::exit_name<vcpu::port_io&>() == vcpu::exit_name<vcpu::port_io>());
    CHECK(vcpu::exit_name<const volatile vcpu::halt>() == "vcpu::halt");
    CHECK(vcpu::exit_name<vcpu::shutdown&&>() == "vcpu::shutdown");
}

TEST_CASE("exit_name: the view is NUL-terminated and lives in one place") {
    const auto n = vcpu::exit_name<vcpu::system_event>();
    CHECK(std::strlen(n.data()) == n.size());
    CHECK(std::string_view(n.data()) == "vcpu::system_event");
    CHECK(vcpu::exit_name<vcpu::system_event>().data() == n.data());
}

} // namespace
