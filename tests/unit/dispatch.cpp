// basic_vcpu::run / step with the mock HAL: which handler is chosen, stop/resume, the exact
// variant of exits run() returns for a handler set, and script exhaustion.
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/mock.hpp>

#include <doctest/doctest.h>
#include <linux/kvm.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace {

namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;
using vcpu::action;

template <class List> struct variant_of;
template <class... Ts> struct variant_of<vcpu::type_list<Ts...>> {
    using type = std::variant<Ts...>;
};

template <class T, class V> struct variant_has;
template <class T, class... Ts>
struct variant_has<T, std::variant<Ts...>> : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

// Handler types used in the compile-time checks below.
using on_io = decltype([](vcpu::port_io&) {});
using stop_io = decltype([](vcpu::port_io&) { return action::stop; });
using stop_halt = decltype([](vcpu::halt&) { return action::stop; });
using stop_shutdown = decltype([](const vcpu::shutdown&) { return action::stop; });
using any_void = decltype([](auto&) {});
using any_action = decltype([](auto&) { return action::resume; });

template <class... Hs>
using exit_for = vcpu::mock::mock_vcpu<arch>::exit_for<Hs...>;

// --- the exact variant run() returns ----------------------------------------------------------
// Every exit handled for good: nothing can come back.
static_assert(std::is_same_v<exit_for<any_void>, std::variant<std::monostate>>);
static_assert(std::is_same_v<exit_for<on_io, any_void>, std::variant<std::monostate>>);
// A handler that may stop keeps its exit type in the variant, in exit_types order.
static_assert(std::is_same_v<exit_for<stop_halt, any_void>, std::variant<vcpu::halt>>);
static_assert(std::is_same_v<exit_for<stop_shutdown, stop_halt, any_void>,
                             std::variant<vcpu::halt, vcpu::shutdown>>);
static_assert(std::is_same_v<exit_for<stop_io, stop_halt, any_void>,
                             std::variant<vcpu::port_io, vcpu::halt>>);
// The first accepting handler decides: a catch-all placed first hides the later stop handler.
static_assert(std::is_same_v<exit_for<any_void, stop_halt>, std::variant<std::monostate>>);
// No handlers, or a catch-all that may stop: every exit type can come back.
static_assert(std::is_same_v<exit_for<>, variant_of<x86::exit_types>::type>);
static_assert(std::is_same_v<exit_for<any_action>, variant_of<x86::exit_types>::type>);
// One void handler: exactly that type is removed.
static_assert(std::variant_size_v<exit_for<on_io>> == x86::exit_types::size - 1);
static_assert(!variant_has<vcpu::port_io, exit_for<on_io>>::value);
static_assert(variant_has<vcpu::halt, exit_for<on_io>>::value);
static_assert(variant_has<vcpu::malformed_exit, exit_for<on_io>>::value);
// Reference and const qualifiers of the handler pack do not change the answer.
static_assert(std::is_same_v<exit_for<stop_halt&, const any_void&>, exit_for<stop_halt, any_void>>);
// unhandled_exit_t is the same computation, usable without a vCPU type.
static_assert(std::is_same_v<vcpu::unhandled_exit_t<vcpu::type_list<vcpu::halt, vcpu::mmio>, stop_halt>,
                             std::variant<vcpu::halt, vcpu::mmio>>);
static_assert(std::is_same_v<vcpu::unhandled_exit_t<vcpu::type_list<vcpu::halt>, stop_halt const&>,
                             std::variant<vcpu::halt>>);

/// A stateful handler object: overloads for two kinds and a catch-all.
struct counter {
    int io = 0, halts = 0;
    void operator()(vcpu::port_io&) { ++io; }
    action operator()(vcpu::halt&) {
        ++halts;
        return action::stop;
    }
    template <class E>
    void operator()(E&) {
        ++others;
    }
    int others = 0;
};

vcpu::mock::mock_vcpu<arch> make(vcpu::mock::script s) {
    return vcpu::mock::make_vcpu<arch>(std::move(s));
}


} // namespace

TEST_CASE("dispatch: the first handler whose parameter type matches is chosen") {
    vcpu::mock::script s;
    s.io_out(0x3f8, 1, 'A').mmio_write(0xd0000000, 4, 7).hlt();
    auto cpu = make(std::move(s));
    int first = 0, second = 0, mmio = 0, rest = 0;
    auto r = cpu.run([&](vcpu::port_io& io) { first += io.port == 0x3f8 && io.value() == 'A'; },
                     [&](vcpu::port_io&) { ++second; },
                     [&](const vcpu::mmio& m) { mmio += m.address == 0xd0000000 && m.value() == 7; },
                     [&](vcpu::halt) { return action::stop; }, // by value works too
                     [&](auto&) { ++rest; });
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::halt>(*r));
    CHECK(first == 1);
    CHECK(second == 0);
    CHECK(mmio == 1);
    CHECK(rest == 0);
    CHECK(cpu.hal().runs() == 3);
}

TEST_CASE("dispatch: a generic catch-all placed last takes the rest") {
    vcpu::mock::script s;
    s.io_out(0x80, 1, 1).hypercall(9).system_event(KVM_SYSTEM_EVENT_RESET).mmio_read(0x1000, 2).shutdown();
    auto cpu = make(std::move(s));
    int io = 0;
    std::vector<std::string> seen;
    auto r = cpu.run([&](vcpu::port_io&) { ++io; },
                     [&](vcpu::shutdown&) { return action::stop; },
                     [&]<class E>(E&) {
                         if constexpr (std::is_same_v<E, vcpu::hypercall>) seen.push_back("hypercall");
                         else if constexpr (std::is_same_v<E, vcpu::system_event>) seen.push_back("system_event");
                         else if constexpr (std::is_same_v<E, vcpu::mmio>) seen.push_back("mmio");
                         else seen.push_back("other");
                     });
    static_assert(std::is_same_v<std::remove_cvref_t<decltype(*r)>, std::variant<vcpu::shutdown>>);
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::shutdown>(*r));
    CHECK(io == 1);
    CHECK(seen == std::vector<std::string>{"hypercall", "system_event", "mmio"});
}

TEST_CASE("dispatch: action::stop ends run with the exit; action::resume goes on") {
    vcpu::mock::script s;
    s.mmio_write(0x1000, 8, 0x1122334455667788ull).mmio_write(0x2000, 2, 0xabcd).hlt();
    auto cpu = make(std::move(s));
    int calls = 0;
    auto handler = [&](vcpu::mmio& m) {
        ++calls;
        return m.address == 0x2000 ? action::stop : action::resume;
    };
    auto rest = [](auto&) {};
    auto r = cpu.run(handler, rest);
    REQUIRE(r);
    CHECK(calls == 2);
    REQUIRE(std::holds_alternative<vcpu::mmio>(*r));
    const auto& m = std::get<vcpu::mmio>(*r);
    CHECK(m.address == 0x2000);
    CHECK(m.size == 2);
    CHECK(m.value() == 0xabcd); // the view is still valid: the vCPU has not run again
    CHECK(cpu.hal().runs() == 2);

    // The next run continues after the stopped exit; the void halt handler resumes, so the
    // script runs out.
    auto r2 = cpu.run(handler, rest);
    REQUIRE_FALSE(r2);
    CHECK(r2.err().code == ENODATA);
    CHECK(cpu.hal().runs() == 3);
}

TEST_CASE("dispatch: stateful handler objects are called in place, not copied") {
    vcpu::mock::script s;
    s.io_out(1, 1, 1).io_out(2, 1, 1).hlt();
    auto cpu = make(std::move(s));
    counter c;
    auto r = cpu.run(c);
    static_assert(std::is_same_v<std::remove_cvref_t<decltype(*r)>, std::variant<vcpu::halt>>);
    REQUIRE(r);
    CHECK(c.io == 2);
    CHECK(c.halts == 1);
    CHECK(c.others == 0);
}

TEST_CASE("dispatch: script exhaustion is an error naming mock enter and ENODATA") {
    auto cpu = make(vcpu::mock::script{});
    auto all = [](auto&) {};
    auto r = cpu.run(all);
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().op) == "mock enter");
    CHECK(r.err().code == ENODATA);
    const std::string msg = r.err().message();
    CHECK(msg.find("mock enter") != std::string::npos);
    CHECK(msg.find("script exhausted") != std::string::npos);
    CHECK(cpu.hal().runs() == 0);

    // An exhausted script stays exhausted.
    auto r2 = cpu.step(all);
    REQUIRE_FALSE(r2);
    CHECK(r2.err().code == ENODATA);
}

TEST_CASE("dispatch: the free dispatch() reports resume/stop and fills the out slot") {
    using out_t = std::variant<vcpu::halt, vcpu::shutdown>;
    std::optional<out_t> out;
    vcpu::halt h{};
    vcpu::shutdown sd{};
    int calls = 0;
    auto stop_halt_h = [&](vcpu::halt&) {
        ++calls;
        return action::stop;
    };
    auto resume_all = [&](auto&) { ++calls; };
    CHECK_FALSE(vcpu::dispatch<out_t>(h, out, stop_halt_h, resume_all));
    REQUIRE(out.has_value());
    CHECK(std::holds_alternative<vcpu::halt>(*out));
    out.reset();
    CHECK(vcpu::dispatch<out_t>(sd, out, stop_halt_h, resume_all));
    CHECK_FALSE(out.has_value());
    CHECK(calls == 2);
    // No handler at all: the exit is stored and the loop stops.
    CHECK_FALSE(vcpu::dispatch<out_t>(sd, out));
    CHECK(std::holds_alternative<vcpu::shutdown>(*out));
}
