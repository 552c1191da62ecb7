// AArch64 and RISC-V (one source, built into each cross build): the cost of a ucall round trip
// against a plain exit from the same kind of guest code, measured where the test runs (on real KVM
// inside the emulated machine: the numbers are TCG's, their ratio is the point). A guest loops
// forever on `ucall::sync(i)` (run by `guest::run`, typed `guest::sync` handler) or on a plain
// 8-byte MMIO store (run by `basic_vcpu::run`, `mmio` handler); the host runs them alternately in
// batches of 200 exits, timed with the wall clock, and reports per kind the fastest batch (least
// disturbed by other work on a shared host) and the median one:
//   GUEST-BENCH <arch>: N exits each ...: plain MMIO a us/exit (median b), ucall c (median d), ratio ...
// N = $VCPU_GUEST_BENCH_EXITS (default 4000). On RISC-V a ucall is an SBI exit, so a third loop
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

/// Runs one batch of `n` exits on `m` (which continues where the previous batch stopped) and
/// returns microseconds per exit.
template <class Run>
double batch(u64 n, Run&& run) {
    const auto t0 = clock_type::now();
    const u64 seen = run(n);
    const auto t1 = clock_type::now();
    REQUIRE(seen == n);
    return std::chrono::duration<double, std::micro>(t1 - t0).count() / static_cast<double>(n);
}

u64 ucall_batch(guest_test::machine& m, u64 n) {
    u64 seen = 0;
    auto r = vcpu::guest::run(*m.cpu, *m.space, [&](vcpu::guest::sync&) {
        return ++seen == n ? vcpu::action::stop : vcpu::action::resume;
    });
    REQUIRE_MESSAGE(r, r.err().message());
    return seen;
}

u64 mmio_batch(guest_test::machine& m, u64 n) {
    u64 seen = 0;
    auto r = m.cpu->run([&](vcpu::mmio& mm) {
        return mm.address == plain_mmio && ++seen < n ? vcpu::action::resume : vcpu::action::stop;
    });
    REQUIRE_MESSAGE(r, r.err().message());
    return seen;
}

#if defined(__riscv)
u64 sbi_batch(guest_test::machine& m, u64 n) {
    u64 seen = 0;
    auto r = m.cpu->run([&](vcpu::riscv64::sbi_call& c) {
        c.answer(0, 0);
        return c.function == 0x100 && ++seen < n ? vcpu::action::resume : vcpu::action::stop;
    });
    REQUIRE_MESSAGE(r, r.err().message());
    return seen;
}
#endif

/// Per-exit times of the batches of one kind: the minimum (the run least disturbed by the other
/// work of a shared host) and the median.
struct samples {
    std::vector<double> v;
    double min() const { return *std::min_element(v.begin(), v.end()); }
    double median() const {
        auto c = v;
        std::sort(c.begin(), c.end());
        return c[c.size() / 2];
    }
};

} // namespace

TEST_CASE("guest " GUEST_ARCH ": ucall round trip vs a plain exit (benchmark)") {
    const char* env = std::getenv("VCPU_GUEST_BENCH_EXITS");
    const u64 n = env != nullptr ? std::strtoull(env, nullptr, 10) : 4000;
    constexpr u64 per_batch = 200;
    REQUIRE(n >= per_batch);
    auto um = guest_test::start(&ucall_loop);
    auto mm = guest_test::start(&mmio_loop);
    samples plain, ucalls;
#if defined(__riscv)
    auto sm = guest_test::start(&sbi_loop);
    samples sbi;
#endif
    for (u64 done = 0; done < n; done += per_batch) {
        plain.v.push_back(batch(per_batch, [&](u64 k) { return mmio_batch(*mm, k); }));
        ucalls.v.push_back(batch(per_batch, [&](u64 k) { return ucall_batch(*um, k); }));
#if defined(__riscv)
        sbi.v.push_back(batch(per_batch, [&](u64 k) { return sbi_batch(*sm, k); }));
#endif
    }
    std::printf("GUEST-BENCH %s: %llu exits each in batches of %llu: plain MMIO %.1f us/exit (median %.1f), "
                "ucall %.1f (median %.1f), ratio %.3f (min/min), %.3f (median/median)",
                GUEST_ARCH, static_cast<unsigned long long>(n), static_cast<unsigned long long>(per_batch),
                plain.min(), plain.median(), ucalls.min(), ucalls.median(), ucalls.min() / plain.min(),
                ucalls.median() / plain.median());
#if defined(__riscv)
    std::printf("; plain SBI %.1f (median %.1f), ucall/SBI %.3f (min/min)", sbi.min(), sbi.median(),
                ucalls.min() / sbi.min());
#endif
    std::printf("\n");
}
