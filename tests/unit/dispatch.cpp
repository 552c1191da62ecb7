// basic_vcpu::run / step with the mock HAL: which handler is chosen, stop/resume, the exact
// variant of exits run() returns for a handler set, and script exhaustion.
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>
#include <kvm/mock.hpp>

#include <doctest/doctest.h>
#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <span>
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
using exit_for = vcpu::kvm::mock::mock_vcpu<arch>::exit_for<Hs...>;

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

vcpu::kvm::mock::mock_vcpu<arch> make(vcpu::kvm::mock::script s) {
    return vcpu::kvm::mock::make_vcpu<arch>(std::move(s));
}


} // namespace

TEST_CASE("dispatch: the first handler whose parameter type matches is chosen") {
    vcpu::kvm::mock::script s;
    s.io_out(0x3f8, 1, 'A').mmio_write(0xd0000000, 4, 7).hlt();
    auto cpu = make(std::move(s));
    int first = 0, second = 0, mmio = 0, rest = 0;
    auto r = cpu.run([&](vcpu::port_io& io) { first += io.port == 0x3f8 && io.value() == 'A'; },
                     vcpu::allow_unused([&](vcpu::port_io&) { ++second; }), // shadowed on purpose
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
    vcpu::kvm::mock::script s;
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
    vcpu::kvm::mock::script s;
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
    vcpu::kvm::mock::script s;
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
    auto cpu = make(vcpu::kvm::mock::script{});
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

// --- a decode-and-dispatch scenario run at compile time -----------------------------------------
namespace {

/// A tiny exit record and a constexpr decoder for it, standing in for a HAL + arch pair: the
/// real port_io / halt / unknown exit types, the real dispatch and unhandled_exit_t.
struct toy_record {
    int kind = 0; ///< 0 = port OUT, 1 = HLT, other = unknown
    std::uint16_t port = 0;
    std::uint8_t byte = 0;
};
struct toy_arch {
    using exit_types = vcpu::type_list<vcpu::port_io, vcpu::halt, vcpu::unknown>;
    template <class V>
    static constexpr void decode(const toy_record& r, std::span<std::byte, 1> buf, V&& visit) {
        if (r.kind == 0) {
            buf[0] = static_cast<std::byte>(r.byte);
            vcpu::port_io e{r.port, 1, 1, vcpu::direction::out, buf};
            visit(e);
        } else if (r.kind == 1) {
            vcpu::halt e{};
            visit(e);
        } else {
            vcpu::unknown e{static_cast<std::uint64_t>(r.kind), 0};
            visit(e);
        }
    }
};

/// Runs `script` like basic_vcpu::run: the UART handler collects bytes, HLT stops. Returns the
/// collected bytes (little-endian, at most 8) or -1 when the wrong exit came back.
template <std::size_t N>
constexpr std::int64_t toy_run(const std::array<toy_record, N>& script, int& unknowns) {
    std::uint64_t text = 0;
    unsigned shift = 0;
    auto uart = [&](vcpu::port_io& io) {
        if (io.port == 0x3f8) {
            text |= std::uint64_t{io.value()} << shift;
            shift += 8;
        }
    };
    auto stop_at_halt = [](vcpu::halt&) { return action::stop; };
    using out_t = vcpu::unhandled_exit_t<toy_arch::exit_types, decltype(uart), decltype(stop_at_halt)>;
    static_assert(std::is_same_v<out_t, std::variant<vcpu::halt, vcpu::unknown>>);
    std::optional<out_t> out;
    std::array<std::byte, 1> page{};
    for (const auto& rec : script) {
        bool resume = true;
        toy_arch::decode(rec, page, [&](auto& e) { resume = vcpu::dispatch<out_t>(e, out, uart, stop_at_halt); });
        if (!resume) {
            if (std::holds_alternative<vcpu::halt>(*out)) return static_cast<std::int64_t>(text);
            ++unknowns; // an unhandled exit comes back; the "VMM" counts it and goes on
            out.reset();
        }
    }
    return -1;
}

constexpr std::int64_t toy_scenario() {
    int unknowns = 0;
    const std::array<toy_record, 6> script{{{0, 0x3f8, 'o'}, {0, 0x80, 'x'}, {7, 0, 0},
                                            {0, 0x3f8, 'k'}, {1, 0, 0}, {0, 0x3f8, '!'}}};
    const auto text = toy_run(script, unknowns);
    return unknowns == 1 ? text : -2;
}
static_assert(toy_scenario() == ('o' | ('k' << 8)), "decode + dispatch runs in a constant expression");

} // namespace

TEST_CASE("dispatch: the compile-time scenario gives the same answer at run time") {
    volatile int guard = 0; // keep the call out of constant evaluation
    int unknowns = guard;
    const std::array<toy_record, 3> script{{{0, 0x3f8, 'A'}, {9, 0, 0}, {1, 0, 0}}};
    CHECK(toy_run(script, unknowns) == 'A');
    CHECK(unknowns == 1);
    CHECK(toy_scenario() == ('o' | ('k' << 8)));
}
