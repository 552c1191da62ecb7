// SMP: several vCPUs of one VM, one thread each, start together, run a small real-mode guest
// that reports its own id through port I/O on a shared compile-time bus, and stop together:
// every thread reaches HLT, nobody hangs (a watchdog kicks them out of KVM_RUN if one does).
#include <doctest/doctest.h>

#if defined(__x86_64__)

#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/bus.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <variant>
#include <vector>

namespace {
namespace x86 = vcpu::x86_64;

constexpr unsigned cpus = 4;
constexpr std::uint16_t report_port = 0x10;
constexpr std::uint8_t rounds = 20;

/// Port 0x10: counts each vCPU's reports (the value written is the reporter's id).
struct tally {
    std::array<unsigned, cpus> per_cpu{};
    unsigned bad = 0;
    std::uint8_t read(std::uint64_t, std::uint8_t) { return 0; }
    void write(std::uint64_t, std::uint8_t, std::uint64_t v) {
        if (v < cpus) ++per_cpu[v];
        else ++bad;
    }
};
} // namespace

TEST_CASE("smp: 4 vCPU threads start, run and stop together") {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = 1 << 20;
    o.vcpus = cpus;
    o.irqchip = o.pit = false; // every vCPU runs from reset; HLT reaches userspace
    auto m = vcpu::kvm::vm_init_x86_64(o);
    REQUIRE_MESSAGE(m, (m ? "" : m.err().message()));
    REQUIRE(vcpu::kvm::install_kick_handler());
    // vCPU i runs at 0x1000 + 0x100 * i:  mov cx, rounds; L: mov al, i; out 0x10, al; loop L; hlt
    for (unsigned i = 0; i < cpus; ++i) {
        const std::array<std::uint8_t, 10> code{0xb9, rounds, 0x00, 0xb0, static_cast<std::uint8_t>(i),
                                                0xe6, report_port, 0xe2, 0xfa, 0xf4};
        REQUIRE(m->memory.write(0x1000 + 0x100 * i, std::as_bytes(std::span(code))));
        REQUIRE(m->vcpus[i].init(x86::real_mode{0, static_cast<std::uint16_t>(0x1000 + 0x100 * i), 0x8000}));
    }

    vcpu::port_bus<vcpu::unmapped::report, vcpu::range<report_port, 1, tally>> bus;
    std::mutex bus_lock;
    std::atomic<unsigned> ready{0}, halted{0};
    std::atomic<bool> go{false};
    std::array<int, cpus> outcome{}; // 1 = halted, 2 = other exit, 3 = error
    std::array<pthread_t, cpus> ids{};
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < cpus; ++i) {
        threads.emplace_back([&, i] {
            ids[i] = ::pthread_self();
            ready.fetch_add(1);
            while (!go.load()) std::this_thread::yield();
            auto& cpu = m->vcpus[i];
            auto r = cpu.run(
                [&](vcpu::port_io& io) {
                    std::lock_guard g(bus_lock);
                    return bus(io);
                },
                [](vcpu::halt&) { return vcpu::action::stop; });
            if (!r) outcome[i] = 3;
            else outcome[i] = std::holds_alternative<vcpu::halt>(*r) ? 1 : 2;
            halted.fetch_add(1);
        });
    }
    while (ready.load() < cpus) std::this_thread::yield();
    const auto t0 = std::chrono::steady_clock::now();
    go.store(true);
    // Watchdog: the guests are tiny (4 x 20 exits); 60 s means a hang.
    while (halted.load() < cpus && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const bool all_done = halted.load() == cpus;
    if (!all_done)
        for (unsigned i = 0; i < cpus; ++i) (void)m->vcpus[i].hal().make_kicker().kick(ids[i], SIGUSR1);
    for (auto& t : threads) t.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("4 vCPUs x " << int{rounds} << " exits in " << secs << " s");

    CHECK(all_done);
    for (unsigned i = 0; i < cpus; ++i) {
        CAPTURE(i);
        CHECK(outcome[i] == 1);
        CHECK(bus.get<tally>().per_cpu[i] == rounds);
    }
    CHECK(bus.get<tally>().bad == 0);
}

#endif // __x86_64__
