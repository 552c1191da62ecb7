// kick_stop: the stop protocol of docs/guides/threads-and-stopping.md on real KVM. Two vCPUs,
// one thread each: vCPU 0 runs a guest that exits all the time (a port OUT loop), vCPU 1 one
// that never exits (`jmp $`). The main thread uses each vCPU's kicker: a kick posted before the
// thread even runs, a "report" request that the vCPU answers and then goes on, and a "stop"
// request that ends both run() calls. It also shows that a second run() of a running vCPU
// fails with EBUSY instead of racing. Exit status 0 when all of that held, 77 (skipped) without
// /dev/kvm.

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <thread>
#include <variant>
#include <vector>

namespace {

// Request bits: the VMM chooses their meaning; the library only carries them to the vCPU.
constexpr std::uint32_t request_report = 1u << 0; ///< say you were interrupted, then go on
constexpr std::uint32_t request_stop = 1u << 1;   ///< leave run()

constexpr unsigned cpus = 2;

/// What one vCPU thread saw.
struct vcpu_log {
    std::atomic<unsigned long> port_exits{0};
    std::atomic<unsigned> reports{0};
    std::atomic<std::uint32_t> first_requests{0}; ///< requests of its first interrupted exit
    std::atomic<bool> done{false};
    bool stopped = false; ///< run() returned the interrupted exit carrying request_stop
};

/// Waits until `ready()` or fails the program after 5 s: a kick that is never acknowledged is
/// a lost kick, and this example must not hang on one.
template <class F>
void wait_for(F&& ready, const char* what) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!ready()) {
        if (std::chrono::steady_clock::now() > until) {
            std::printf("FAIL: %s did not happen within 5 s\n", what);
            std::_Exit(1);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

int failures = 0;
void check(bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    if (!ok) ++failures;
}

} // namespace

int main() {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = 64 * 1024;
    o.vcpus = cpus;
    o.irqchip = o.pit = false;
    auto m = vcpu::kvm::vm_init_x86_64(o);
    if (!m) {
        std::printf("SKIPPED: %s\n", m.err().message().c_str());
        return std::strcmp(m.err().op, "open /dev/kvm") == 0 ? 77 : 1;
    }
    // vCPU 0 at 0x1000:  mov dx, 0x10; L: out dx, al; jmp L      vCPU 1 at 0x2000:  L: jmp L
    const std::array<std::uint8_t, 6> busy{0xba, 0x10, 0x00, 0xee, 0xeb, 0xfd};
    const std::array<std::uint8_t, 2> quiet{0xeb, 0xfe};
    if (!m->memory.write(0x1000, std::as_bytes(std::span(busy))) ||
        !m->memory.write(0x2000, std::as_bytes(std::span(quiet))))
        return 1;
    for (unsigned i = 0; i < cpus; ++i)
        if (!m->vcpus[i].init(vcpu::x86_64::real_mode{0, static_cast<std::uint16_t>(0x1000 * (i + 1)), 0}))
            return 1;

    // Kickers are made on the setup thread and handed to whoever stops the vCPUs. They stay
    // valid while the vCPUs live, even when a vCPU object moves.
    std::vector<vcpu::kvm::kicker> kickers;
    for (auto& c : m->vcpus) kickers.push_back(c.hal().make_kicker());

    // A kick before the vCPU thread runs is not lost: immediate_exit stays set, so the first
    // KVM_RUN returns at once with these requests.
    if (!kickers[1].kick(request_report)) return 1;

    std::array<vcpu_log, cpus> log;
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < cpus; ++i) {
        threads.emplace_back([&, i] {
            auto& cpu = m->vcpus[i];
            // This thread runs the vCPU: kickers signal it (SIGUSR1, a no-op handler installed
            // when there is none), so a kick also interrupts guest code that never exits.
            if (auto b = cpu.hal().bind_kick_thread(SIGUSR1); !b) {
                std::printf("vCPU %u: %s\n", i, b.err().message().c_str());
                log[i].done = true;
                return;
            }
            auto r = cpu.run(
                [&](vcpu::port_io&) { log[i].port_exits.fetch_add(1); },
                [&](vcpu::interrupted& e) {
                    if (log[i].first_requests.load() == 0) log[i].first_requests = e.requests;
                    if (e.requests & request_report) log[i].reports.fetch_add(1);
                    return (e.requests & request_stop) != 0 ? vcpu::action::stop : vcpu::action::resume;
                });
            if (!r) std::printf("vCPU %u: %s\n", i, r.err().message().c_str());
            const auto* last = r ? std::get_if<vcpu::interrupted>(&*r) : nullptr;
            log[i].stopped = last != nullptr && (last->requests & request_stop) != 0;
            log[i].done = true;
        });
    }

    // The early kick: vCPU 1 reports once as soon as it runs.
    wait_for([&] { return log[1].reports.load() == 1; }, "vCPU 1's report of the early kick");
    check(log[1].first_requests.load() == request_report, "the kick posted before run() arrived, intact");

    // While vCPU 0's thread is inside run(), nobody else may run it: EBUSY, nothing touched.
    wait_for([&] { return log[0].port_exits.load() > 0; }, "vCPU 0's first exit");
    auto second = m->vcpus[0].run([](vcpu::port_io&) {}, [](vcpu::interrupted&) {});
    check(!second && second.err().code == EBUSY, "a second run() of a running vCPU fails with EBUSY");

    // A report request to the vCPU that never exits: the signal interrupts its guest code.
    if (!kickers[1].kick(request_report)) return 1;
    wait_for([&] { return log[1].reports.load() == 2; }, "vCPU 1's report");
    check(log[1].port_exits.load() == 0, "vCPU 1 ran guest code without a single exit meanwhile");

    // Stop everything: one kick per vCPU, then join.
    for (auto& k : kickers)
        if (!k.kick(request_stop)) return 1;
    wait_for([&] { return log[0].done.load() && log[1].done.load(); }, "both vCPU threads ending");
    for (auto& t : threads) t.join();
    check(log[0].stopped && log[1].stopped, "both run() calls returned the interrupted exit with request_stop");
    std::printf("vCPU 0: %lu port exits before the stop\n", log[0].port_exits.load());
    std::printf("%s\n", failures == 0 ? "kick_stop: all checks passed" : "kick_stop: FAILED");
    return failures == 0 ? 0 : 1;
}
