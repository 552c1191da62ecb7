// AArch64 and RISC-V (one source, built into each cross build): guest code as C++ in the test —
// a checksum over a buffer the host filled, reported with ucall::sync and ucall::print; six
// arguments in registers; sync of 0, 1, 6 and 8 values (registers and record paths); a guest
// assertion that fails, seen by the host with the guest's file, line and values, and failing the
// doctest case; a guest spinning in `spin()` stopped by a kick from another host thread.
#include "xarch_support.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>
#include <cstdint>
#include <span>
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
    ucall::sync();
    ucall::sync(a);
    ucall::sync(a, b, c, d, e, f, u64{7}, u64{8});
}

constexpr unsigned failing_line = __LINE__ + 4;
VCPU_GUEST_CODE void failing_assert(u64 v) {
    const u64 twice = v * 2;
    ucall::sync(twice);
    VCPU_GUEST_ASSERT(twice == v + 1, twice, v);
    ucall::sync(u64{0xbad});
}

VCPU_GUEST_CODE void spin_forever() {
    ucall::sync(u64{1});
    for (;;) guest_test::gx::spin(1000);
}

template <class H>
auto run_failing_assert(guest_test::machine& m, H&& on_assert) {
    unsigned syncs = 0;
    auto r = vcpu::guest::run(*m.cpu, *m.space, [&](vcpu::guest::sync& s) { CHECK(s[0] == 42); ++syncs; },
                              std::forward<H>(on_assert), [](vcpu::guest::done) { return vcpu::action::stop; });
    CHECK(syncs == 1);
    return r;
}

} // namespace

TEST_CASE("guest " GUEST_ARCH ": checksum over a host buffer, reported with sync and print") {
    std::vector<std::uint8_t> data(5000);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 7 + 3);
    u64 want_sum = 0, want_x = 0;
    for (auto v : data) {
        want_sum += v;
        want_x = (want_x << 1 | want_x >> 63) ^ v;
    }
    auto m = guest_test::make_machine(reinterpret_cast<const void*>(&checksum));
    const u64 buf = m->space->free_begin();
    REQUIRE(m->memory.write(buf, std::as_bytes(std::span(data))));
    REQUIRE(m->space->enter(*m->cpu, vcpu::guest::call(&checksum, buf, data.size())));
    std::vector<vcpu::guest::sync> syncs;
    std::string printed;
    auto r = vcpu::guest::run(*m->cpu, *m->space, [&](vcpu::guest::sync& s) { syncs.push_back(s); },
                              [&](vcpu::guest::print& p) { printed = std::string(p.text()); },
                              guest_test::fail_on_guest_assert(),
                              [](vcpu::guest::unhandled_exception& e) {
                                  FAIL("guest exception: vector ", e.vector, " syndrome 0x", std::hex,
                                       e.error_code, " pc 0x", e.pc, " address 0x", e.address);
                                  return vcpu::action::stop;
                              },
                              [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*r));
    REQUIRE(syncs.size() == 1);
    CHECK(syncs[0].size() == 3);
    CHECK(syncs[0][0] == want_sum);
    CHECK(syncs[0][1] == want_x);
    CHECK(syncs[0][2] == data.size());
    CHECK(printed == "checksum of 5000 bytes: " + std::to_string(want_sum) + " (guest)");
}

TEST_CASE("guest " GUEST_ARCH ": six integer arguments in registers; sync of 6, 0, 1 and 8 values") {
    static const char marker[] = "marker";
    auto m = guest_test::start(&six_args, u64{1}, u64{2} << 40, ~u64{0}, u64{0x1234}, -5, marker);
    std::vector<vcpu::guest::sync> syncs;
    auto r = vcpu::guest::run(*m->cpu, *m->space, [&](vcpu::guest::sync& s) { syncs.push_back(s); },
                              guest_test::fail_on_guest_assert(), [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*r));
    REQUIRE(syncs.size() == 4);
    const std::array<u64, 8> want{1, u64{2} << 40, ~u64{0}, 0x1234, static_cast<u64>(-5),
                                  reinterpret_cast<std::uintptr_t>(marker), 7, 8};
    REQUIRE(syncs[0].size() == 6);
    for (std::size_t i = 0; i < 6; ++i) CHECK(syncs[0][i] == want[i]);
    CHECK(syncs[1].size() == 0);
    REQUIRE(syncs[2].size() == 1);
    CHECK(syncs[2][0] == 1);
    REQUIRE(syncs[3].size() == 8);
    for (std::size_t i = 0; i < 8; ++i) CHECK(syncs[3][i] == want[i]);
}

TEST_CASE("guest " GUEST_ARCH ": a failed VCPU_GUEST_ASSERT comes back with the guest's file, line and values") {
    auto m = guest_test::start(&failing_assert, u64{21});
    auto r = run_failing_assert(*m, [](vcpu::guest::assert_fail&) { return vcpu::action::stop; });
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

// The doctest glue of support_common.hpp makes this case fail, at the guest's file:line;
// should_fail() turns that (and only that) into a pass.
TEST_CASE("guest " GUEST_ARCH ": a failed guest assertion fails the host test case" * doctest::should_fail()) {
    auto m = guest_test::start(&failing_assert, u64{21});
    auto r = run_failing_assert(*m, guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::assert_fail>(*r));
}

TEST_CASE("guest " GUEST_ARCH ": a guest spinning in spin() is stopped by a kick from another thread") {
    auto m = guest_test::start(&spin_forever);
    auto& cpu = *m->cpu;
    REQUIRE(cpu.hal().bind_kick_thread(SIGUSR1));
    auto kicker = cpu.hal().make_kicker();
    std::atomic<bool> spinning{false};
    std::thread t([&] {
        while (!spinning.load()) std::this_thread::yield();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        CHECK(kicker.kick(4));
    });
    unsigned syncs = 0;
    auto r = vcpu::guest::run(
        cpu, *m->space,
        [&](vcpu::guest::sync&) {
            ++syncs;
            spinning.store(true);
        },
        [](vcpu::interrupted& e) { return e.requests != 0 ? vcpu::action::stop : vcpu::action::resume; },
        guest_test::fail_on_guest_assert());
    spinning.store(true); // also when run() failed early
    t.join();
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* i = std::get_if<vcpu::interrupted>(&*r);
    REQUIRE(i != nullptr);
    CHECK(i->requests == 4);
    CHECK(syncs == 1);
}
