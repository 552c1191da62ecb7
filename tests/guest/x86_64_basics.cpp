// Guest code as C++ in the test: a checksum over a buffer the host filled, reported with
// ucall::sync and ucall::print; six SysV arguments; a guest assertion that fails, seen by the
// host with the guest's file, line and values.
#include "support.hpp"

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;

// ---- guest code -----------------------------------------------------------------------------

VCPU_GUEST_CODE void checksum(const std::uint8_t* buf, u64 len) {
    u64 sum = 0, x = 0;
    for (u64 i = 0; i < len; ++i) {
        sum += buf[i];
        x = (x << 1 | x >> 63) ^ buf[i];
    }
    ucall::sync(sum, x, len);
    ucall::print("checksum of %lu bytes: %lu (%s)", len, sum, "guest");
}

VCPU_GUEST_CODE void six_args(u64 a, u64 b, u64 c, u64 d, int e, const void* f) {
    ucall::sync(a, b, c, d, e, f);
}

constexpr unsigned failing_line = __LINE__ + 4;
VCPU_GUEST_CODE void failing_assert(u64 v) {
    const u64 twice = v * 2;
    ucall::sync(twice);
    VCPU_GUEST_ASSERT(twice == v + 1, twice, v);
    ucall::sync(u64{0xbad});
}

// ---- host -----------------------------------------------------------------------------------

struct host_sum {
    u64 sum = 0, x = 0;
};
host_sum host_checksum(const std::vector<std::uint8_t>& b) {
    host_sum h;
    for (auto v : b) {
        h.sum += v;
        h.x = (h.x << 1 | h.x >> 63) ^ v;
    }
    return h;
}

} // namespace

TEST_CASE("guest x86-64: checksum over a host buffer, reported with sync and print") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&checksum));
    REQUIRE_MESSAGE(space, space.err().message());

    std::vector<std::uint8_t> data(5000);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 7 + 3);
    const u64 buf = space->free_begin();
    REQUIRE(m->memory.write(buf, std::as_bytes(std::span(data))));
    const auto want = host_checksum(data);

    auto& cpu = m->vcpus[0];
    REQUIRE(space->enter(cpu, vcpu::guest::x86_64::call(&checksum, buf, data.size())));
    std::vector<vcpu::guest::sync> syncs;
    std::string printed;
    auto r = vcpu::guest::run(cpu, *space, [&](vcpu::guest::sync& s) { syncs.push_back(s); },
                              [&](vcpu::guest::print& p) { printed = std::string(p.text()); },
                              guest_test::fail_on_guest_assert(),
                              [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*r));
    REQUIRE(syncs.size() == 1);
    CHECK(syncs[0].size() == 3);
    CHECK(syncs[0][0] == want.sum);
    CHECK(syncs[0][1] == want.x);
    CHECK(syncs[0][2] == data.size());
    CHECK(printed == "checksum of 5000 bytes: " + std::to_string(want.sum) + " (guest)");
}

TEST_CASE("guest x86-64: six integer arguments in RDI, RSI, RDX, RCX, R8, R9") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&six_args));
    REQUIRE_MESSAGE(space, space.err().message());
    static const char marker[] = "marker";
    REQUIRE(space->enter(m->vcpus[0], vcpu::guest::x86_64::call(&six_args, u64{1}, u64{2} << 40, ~u64{0},
                                                               u64{0x1234}, -5, marker)));
    auto r = vcpu::guest::run(m->vcpus[0], *space, [](vcpu::guest::sync&) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* s = std::get_if<vcpu::guest::sync>(&*r);
    REQUIRE(s != nullptr);
    REQUIRE(s->size() == 6);
    CHECK((*s)[0] == 1);
    CHECK((*s)[1] == u64{2} << 40);
    CHECK((*s)[2] == ~u64{0});
    CHECK((*s)[3] == 0x1234);
    CHECK((*s)[4] == static_cast<u64>(-5)); // an int is sign-extended
    CHECK((*s)[5] == reinterpret_cast<std::uintptr_t>(marker)); // same address in guest and host
}

namespace {
/// Runs `failing_assert(21)` to its assertion with `on_assert` handling it. The exit's strings
/// are views into `m`'s guest memory: `m` outlives them.
template <class H>
auto run_failing_assert(vcpu::result<vcpu::kvm::x86_64_machine>& m, H&& on_assert) {
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&failing_assert));
    REQUIRE_MESSAGE(space, space.err().message());
    REQUIRE(space->enter(m->vcpus[0], vcpu::guest::x86_64::call(&failing_assert, u64{21})));
    unsigned syncs = 0;
    auto r = vcpu::guest::run(m->vcpus[0], *space, [&](vcpu::guest::sync& s) { CHECK(s[0] == 42); ++syncs; },
                              std::forward<H>(on_assert), [](vcpu::guest::done) { return vcpu::action::stop; });
    CHECK(syncs == 1);
    return r;
}
} // namespace

TEST_CASE("guest x86-64: a failed VCPU_GUEST_ASSERT comes back with the guest's file, line and values") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    auto r = run_failing_assert(m, [](vcpu::guest::assert_fail&) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* a = std::get_if<vcpu::guest::assert_fail>(&*r);
    REQUIRE(a != nullptr);
    CHECK(a->file == __FILE__);
    CHECK(a->line == failing_line);
    CHECK(a->expression == "twice == v + 1");
    REQUIRE(a->count == 2);
    CHECK(a->values[0] == 42);
    CHECK(a->values[1] == 21);
    std::array<char, 256> buf{};
    CHECK(a->describe(buf) == std::string(__FILE__) + ":" + std::to_string(failing_line) +
                                  ": guest assertion failed: twice == v + 1 (values: 0x2a, 0x15)");
}

// The doctest glue of support.hpp makes this case fail, at the guest's file:line; should_fail()
// turns that (and only that) into a pass.
TEST_CASE("guest x86-64: a failed guest assertion fails the host test case" * doctest::should_fail()) {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    auto r = run_failing_assert(m, guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::assert_fail>(*r));
}
