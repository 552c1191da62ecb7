// AArch64 and RISC-V (one source, built into each cross build): the cost of a ucall round trip
// against a plain exit from the same kind of guest code, measured where the test runs (on real KVM
// inside the emulated machine: the numbers are TCG's, their ratio is the point). A guest loops
// forever on `ucall::sync(i)` (run by `guest::run`, typed `guest::sync` handler) or on a plain
// 8-byte MMIO store (run by `basic_vcpu::run`, `mmio` handler); the host stops each after N exits
// and times it with the wall clock. Three alternating rounds; prints one line
//   GUEST-BENCH <arch>: N exits x3: plain MMIO a-b us/exit, ucall c-d us/exit, ratio e (min/min)
// N = $VCPU_GUEST_BENCH_EXITS (default 2000). On RISC-V a ucall is an SBI exit, so a third loop
// times a plain SBI call (another FID of the same extension, `sbi_call` handler) too.
#include "xarch_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;

constexpr u64 plain_mmio = 0x1000'0000; // device memory, no memory slot

VCPU_GUEST_CODE void ucall_loop() {
    for (u64 i = 0;; ++i) ucall::sync(i);
}
VCPU_GUEST_CODE void mmio_loop() {
    for (u64 i = 0;; ++i) guest_test::gx::mmio_write<u64>(plain_mmio, i);
}
#if defined(__riscv)
VCPU_GUEST_CODE void sbi_loop() {
    for (u64 i = 0;; ++i) {
        register u64 a0 asm("a0") = i;
        register u64 a1 asm("a1");
        register u64 a6 asm("a6") = 0x100; // not a ucall FID
        register u64 a7 asm("a7") = guest_test::gx::ucall_extension;
        asm volatile("ecall" : "+r"(a0), "=r"(a1) : "r"(a6), "r"(a7) : "memory");
    }
}
#endif

using clock_type = std::chrono::steady_clock;
double us_per_exit(clock_type::time_point t0, clock_type::time_point t1, u64 n) {
    return std::chrono::duration<double, std::micro>(t1 - t0).count() / static_cast<double>(n);
}

double time_ucalls(u64 n) {
    auto m = guest_test::start(&ucall_loop);
    u64 seen = 0;
    const auto t0 = clock_type::now();
    auto r = vcpu::guest::run(*m->cpu, *m->space, [&](vcpu::guest::sync& s) {
        CHECK(s[0] == seen);
        return ++seen == n ? vcpu::action::stop : vcpu::action::resume;
    });
    const auto t1 = clock_type::now();
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(seen == n);
    return us_per_exit(t0, t1, n);
}

double time_mmio(u64 n) {
    auto m = guest_test::start(&mmio_loop);
    u64 seen = 0;
    const auto t0 = clock_type::now();
    auto r = m->cpu->run([&](vcpu::mmio& mm) {
        return mm.address == plain_mmio && ++seen < n ? vcpu::action::resume : vcpu::action::stop;
    });
    const auto t1 = clock_type::now();
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(seen == n);
    return us_per_exit(t0, t1, n);
}

#if defined(__riscv)
double time_sbi(u64 n) {
    auto m = guest_test::start(&sbi_loop);
    u64 seen = 0;
    const auto t0 = clock_type::now();
    auto r = m->cpu->run([&](vcpu::riscv64::sbi_call& c) {
        c.answer(0, 0);
        return c.function == 0x100 && ++seen < n ? vcpu::action::resume : vcpu::action::stop;
    });
    const auto t1 = clock_type::now();
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(seen == n);
    return us_per_exit(t0, t1, n);
}
#endif

struct range {
    double lo = 1e30, hi = 0;
    void add(double v) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
};

} // namespace

TEST_CASE("guest " GUEST_ARCH ": ucall round trip vs a plain exit (benchmark)") {
    const char* env = std::getenv("VCPU_GUEST_BENCH_EXITS");
    const u64 n = env != nullptr ? std::strtoull(env, nullptr, 10) : 2000;
    REQUIRE(n > 0);
    range plain, ucalls, sbi;
    for (int round = 0; round < 3; ++round) {
        plain.add(time_mmio(n));
        ucalls.add(time_ucalls(n));
#if defined(__riscv)
        sbi.add(time_sbi(n));
#endif
    }
    std::printf("GUEST-BENCH %s: %llu exits x3: plain MMIO %.1f-%.1f us/exit, ucall %.1f-%.1f us/exit, "
                "ratio %.3f (min/min)",
                GUEST_ARCH, static_cast<unsigned long long>(n), plain.lo, plain.hi, ucalls.lo, ucalls.hi,
                ucalls.lo / plain.lo);
#if defined(__riscv)
    std::printf("; plain SBI %.1f-%.1f us/exit, ucall/SBI %.3f", sbi.lo, sbi.hi, ucalls.lo / sbi.lo);
#else
    (void)sbi;
#endif
    std::printf("\n");
}
