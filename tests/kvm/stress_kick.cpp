// Kick and stop under load (ctest label `stress`): 4 vCPU threads in one VM run guests that exit
// all the time (a port OUT loop) or never (`jmp $`), at CPL0 and at CPL3, while a controller
// thread kicks a random vCPU at random moments and waits for that vCPU to acknowledge the kick
// through the `interrupted` exit's request bits. A kick not acknowledged within the bound is
// lost. The run is repeated with the kick signal blocked in the vCPU threads (the library's
// KVM_SET_SIGNAL_MASK must still let it interrupt KVM_RUN). Kicks per run: VCPU_STRESS_KICKS
// (default 5000, so 10^4 in all; the `stress-long` label runs 50000, 10^5 in all).
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

#if defined(__x86_64__)

namespace {

using clock_type = std::chrono::steady_clock;
constexpr unsigned cpus = 4;
constexpr std::uint32_t ack_bit = 1;  ///< "acknowledge kick number expected[v]"
constexpr std::uint32_t stop_bit = 2; ///< "return from run()"
constexpr auto lost_after = std::chrono::seconds(5);

unsigned kicks_per_run() {
    const char* e = std::getenv("VCPU_STRESS_KICKS");
    const long n = e != nullptr ? std::atol(e) : 0;
    return n > 0 ? static_cast<unsigned>(n) : 5000;
}

struct result_of_run {
    unsigned sent = 0, lost = 0;
    double worst_us = 0, median_us = 0;
    std::array<unsigned long, cpus> exits{};
    bool vcpu_errors = false;
};

result_of_run kick_storm(bool block_signal) {
    result_of_run out;
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = std::size_t{4} << 20;
    o.vcpus = cpus;
    o.irqchip = o.pit = false;
    auto m = vcpu::kvm::vm_init_x86_64(o);
    REQUIRE_MESSAGE(m, (m ? "" : m.err().message()));
    // vCPU 0, 2: mov dx, 0x10; L: out dx, al; jmp L      vCPU 1, 3: L: jmp L
    const std::array<std::uint8_t, 7> busy{0x66, 0xba, 0x10, 0x00, 0xee, 0xeb, 0xfd};
    const std::array<std::uint8_t, 2> quiet{0xeb, 0xfe};
    REQUIRE(m->memory.write(0x100000, std::as_bytes(std::span(busy))));
    REQUIRE(m->memory.write(0x100100, std::as_bytes(std::span(quiet))));
    for (unsigned i = 0; i < cpus; ++i) {
        const bool user = i >= 2; // vCPUs 2 and 3 at CPL3 (IOPL 3)
        REQUIRE(m->vcpus[i].init(vcpu::x86_64::long_mode<>{&m->memory, i % 2 == 0 ? 0x100000u : 0x100100u,
                                                           0x80000 - 0x1000 * i, 0x9000, 1, user}));
    }

    std::array<std::atomic<std::uint64_t>, cpus> expected{}, acked{};
    std::atomic<unsigned> ready{0};
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < cpus; ++i) {
        threads.emplace_back([&, i] {
            if (block_signal) {
                sigset_t s;
                sigemptyset(&s);
                sigaddset(&s, SIGUSR1);
                ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
            }
            auto& cpu = m->vcpus[i];
            if (!cpu.hal().bind_kick_thread(SIGUSR1)) {
                out.vcpu_errors = true;
                ready.fetch_add(1);
                return;
            }
            ready.fetch_add(1);
            unsigned long exits = 0;
            auto r = cpu.run(
                [&](vcpu::port_io&) { ++exits; },
                [&](vcpu::interrupted& e) {
                    if (e.requests & ack_bit) acked[i].store(expected[i].load());
                    return (e.requests & stop_bit) ? vcpu::action::stop : vcpu::action::resume;
                });
            out.exits[i] = exits;
            if (!r || !std::holds_alternative<vcpu::interrupted>(*r)) out.vcpu_errors = true;
        });
    }
    while (ready.load() < cpus) std::this_thread::yield();

    std::mt19937 rng(12345);
    std::vector<double> lat;
    const unsigned n = kicks_per_run();
    lat.reserve(n);
    std::vector<vcpu::kvm::kicker> kickers;
    for (auto& c : m->vcpus) kickers.push_back(c.hal().make_kicker());
    for (unsigned k = 1; k <= n; ++k) {
        const unsigned v = rng() % cpus;
        // A random pause first, so kicks land in the guest, in KVM, and in userspace.
        const auto pause = std::chrono::microseconds(rng() % 50);
        for (const auto t = clock_type::now(); clock_type::now() - t < pause;) {
        }
        expected[v].store(k);
        const auto t0 = clock_type::now();
        REQUIRE(kickers[v].kick(ack_bit));
        ++out.sent;
        while (acked[v].load() != k) {
            if (clock_type::now() - t0 > lost_after) break;
            std::this_thread::yield();
        }
        if (acked[v].load() != k) {
            ++out.lost;
            continue;
        }
        lat.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
    }
    for (auto& kk : kickers) (void)kk.kick(stop_bit);
    for (auto& t : threads) t.join();
    if (!lat.empty()) {
        std::sort(lat.begin(), lat.end());
        out.worst_us = lat.back();
        out.median_us = lat[lat.size() / 2];
    }
    return out;
}

} // namespace

TEST_CASE("stress: every kick is acknowledged, with the kick signal unblocked and blocked") {
    for (bool blocked : {false, true}) {
        CAPTURE(blocked);
        const auto r = kick_storm(blocked);
        MESSAGE(std::string(blocked ? "signal blocked" : "signal unblocked") << ": " << r.sent << " kicks, "
                << r.lost << " lost, stop latency median " << r.median_us << " us, worst "
                << r.worst_us << " us (bound " << std::chrono::duration<double>(lost_after).count()
                << " s); guest exits per vCPU " << r.exits[0] << "/" << r.exits[1] << "/"
                << r.exits[2] << "/" << r.exits[3]);
        CHECK_FALSE(r.vcpu_errors);
        CHECK(r.sent == kicks_per_run());
        CHECK(r.lost == 0);
        CHECK(r.exits[0] > 0); // the busy guests really exited meanwhile
        CHECK(r.exits[2] > 0);
        CHECK(r.exits[1] == 0); // the quiet ones never did
        CHECK(r.exits[3] == 0);
    }
}

#endif // __x86_64__
