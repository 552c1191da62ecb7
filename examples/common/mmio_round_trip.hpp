#pragma once
// Shared by the xarch examples: the MMIO-write round trip through
// basic_vcpu::run against a plain ioctl(KVM_RUN) loop on the same vCPU. Under
// QEMU TCG only the ratio between the two means anything.

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <variant>

namespace example {

struct round_trip {
    double framework_us = 0; ///< per exit, mean of two rounds
    double raw_us = 0;
    const char* failure = nullptr; ///< what went wrong, or null
};

/// The guest, already at its entry, stores 0, 1, 2, ... (64-bit) to `addr`
/// forever. Runs one warm-up round, then two rounds of `exits` exits each way;
/// every stored value is checked in both loops.
template <class Cpu>
round_trip measure_mmio_round_trip(Cpu& cpu, std::uint64_t addr, long exits) {
    using clock = std::chrono::steady_clock;
    auto us_per_exit = [&](clock::time_point t0) {
        return std::chrono::duration<double, std::micro>(clock::now() - t0).count() /
               double(exits) / 2;
    };
    round_trip rt;
    std::uint64_t expect = 0;
    bool in_order = true;
    long n = 0;
    auto counting = [&](vcpu::mmio& m) {
        in_order = in_order && m.is_write() && m.address == addr && m.value() == expect;
        ++expect;
        return ++n < exits ? vcpu::action::resume : vcpu::action::stop;
    };
    n = 0;
    (void)cpu.run(counting); // warm-up: faults the code page in
    for (int round = 0; round < 2; ++round) {
        n = 0;
        auto t0 = clock::now();
        auto r = cpu.run(counting);
        rt.framework_us += us_per_exit(t0);
        if (!r || !std::holds_alternative<vcpu::mmio>(*r)) {
            rt.failure = "benchmark run ended unexpectedly";
            return rt;
        }
        const int fd = cpu.hal().fd();
        ::kvm_run* run = cpu.hal().run();
        t0 = clock::now();
        for (long i = 0; i < exits; ++i) {
            if (::ioctl(fd, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_MMIO ||
                run->mmio.phys_addr != addr) {
                rt.failure = "raw loop got an unexpected exit";
                return rt;
            }
            std::uint64_t v = 0;
            std::memcpy(&v, run->mmio.data, sizeof v);
            in_order = in_order && v == expect;
            ++expect;
        }
        rt.raw_us += us_per_exit(t0);
    }
    if (!in_order) rt.failure = "guest stores arrived out of order";
    return rt;
}

} // namespace example
