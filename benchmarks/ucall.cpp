// A ucall round trip vs a plain port-I/O exit, both from guest code written in C++
// (vcpu/guest/, docs/guest-code.md), timed alternately in the same run.
//
// Two VMs run two guest loops: `pio_loop` does `out 0x10, eax` with a counter, handled by
// basic_vcpu::run with a port_io handler; `ucall_loop` does `ucall::sync(counter)` (one value:
// it travels in RDI, with an `out` of the count to ucall_sync_port), decoded by vcpu::guest::run
// (register block from kvm_run->s.regs) into a `guest::sync` for the handler. Counters: raw_ns = plain PIO exit,
// vcpu_ns = ucall, ratio = ucall / PIO (thread CPU ns per exit). Every counter value the guest
// sends is checked; a gap is state.SkipWithError.
//
// ucall/guest_side_vs_pio_out splits the cost: the same ucall guest, but its OUT handled by a plain
// port_io handler (no register read, no decode, no typed dispatch). Its ratio is what the guest
// side of a ucall costs; the first case's ratio over this one is what the host side adds.

#include "support/guest.hpp"
#include "support/main.hpp"

#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/guest/x86_64_loader.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;
namespace gx = vcpu::guest::x86_64;

constexpr std::uint16_t port = 0x10;
constexpr unsigned batch = 16;

// ---- guest code -----------------------------------------------------------------------------

VCPU_GUEST_CODE void pio_loop() {
    for (u32 i = 0;; ++i) gx::outl(port, i);
}
VCPU_GUEST_CODE void ucall_loop() {
    for (u64 i = 0;; ++i) vcpu::guest::ucall::sync(i);
}

// ---- host -----------------------------------------------------------------------------------

/// One VM running `fn` from the loaded executable.
struct vm {
    vcpu::result<vcpu::kvm::x86_64_machine> m;
    std::optional<gx::space> space;
    std::string error;
    u64 next = 0; ///< the counter value expected next
    explicit vm(void (*fn)()) : m(make()) {
        if (!m) {
            error = m.err().message();
            return;
        }
        auto s = gx::space::load(m->memory, reinterpret_cast<const void*>(fn));
        if (!s) {
            error = s.err().message();
            return;
        }
        space = *s;
        if (auto e = space->enter(m->vcpus[0], gx::call(fn)); !e) error = e.err().message();
    }
    static vcpu::result<vcpu::kvm::x86_64_machine> make() {
        vcpu::kvm::x86_64_options o;
        o.ram_bytes = std::size_t{64} << 20;
        o.irqchip = o.pit = false;
        return vcpu::kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
    }
};

bool pio_batch(vm& v, std::string& why) {
    unsigned n = 0;
    bool good = true;
    auto r = v.m->vcpus[0].run([&](vcpu::port_io& io) {
        const u32 want = static_cast<u32>(v.next++) + (bench::corrupt() ? 1 : 0);
        if (io.port != port || io.value() != want) good = false;
        return (++n == batch || !good) ? vcpu::action::stop : vcpu::action::resume;
    });
    if (!r) why = r.err().message();
    else if (!good) why = "plain PIO: wrong port or value";
    return r && good;
}

bool ucall_batch(vm& v, std::string& why) {
    unsigned n = 0;
    bool good = true;
    auto r = vcpu::guest::run(v.m->vcpus[0], *v.space, [&](vcpu::guest::sync& s) {
        const u64 want = v.next++ + (bench::corrupt() ? 1 : 0);
        if (s.size() != 1 || s[0] != want) good = false;
        return (++n == batch || !good) ? vcpu::action::stop : vcpu::action::resume;
    });
    if (!r) why = r.err().message();
    else if (!good) why = "ucall: wrong sync value";
    else if (const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r))
        why = "ucall: guest exception " + std::string(e->name()) + " at " + std::to_string(e->pc);
    else if (const auto* b = std::get_if<vcpu::guest::bad_ucall>(&*r))
        why = "ucall: " + std::string(b->describe());
    else if (const auto* f = std::get_if<vcpu::x86_64::emulation_failure>(&*r)) {
        why = "ucall: KVM emulation failure at RIP " +
              std::to_string(v.m->vcpus[0].get(vcpu::x86_64::rip).value_or(0)) + ", insn";
        for (auto b : f->insn) why += " " + std::to_string(b);
    } else if (!std::holds_alternative<vcpu::guest::sync>(*r))
        why = "ucall: another exit came back (index " + std::to_string(r->index()) + ")";
    return r && good && why.empty();
}

void BM_ucall_vs_pio(benchmark::State& state) {
    vm pio(&pio_loop), uc(&ucall_loop);
    if (!pio.error.empty() || !uc.error.empty()) {
        state.SkipWithError((pio.error + uc.error).c_str());
        return;
    }
    std::string why;
    if (!pio_batch(pio, why) || !ucall_batch(uc, why)) { // warm up both
        state.SkipWithError(why.c_str());
        return;
    }
    bench::paired(
        state, batch, [&] { return pio_batch(pio, why); }, [&] { return ucall_batch(uc, why); }, why);
}

/// The ucall guest with a plain port_io handler: each OUT says "one value in registers".
bool ucall_guest_only_batch(vm& v, std::string& why) {
    unsigned n = 0;
    bool good = true;
    const u32 want = 1 + (bench::corrupt() ? 1 : 0);
    auto r = v.m->vcpus[0].run([&](vcpu::port_io& io) {
        if (io.port != vcpu::guest::ucall_sync_port || io.value() != want) good = false;
        return (++n == batch || !good) ? vcpu::action::stop : vcpu::action::resume;
    });
    if (!r) why = r.err().message();
    else if (!good) why = "ucall guest, plain handler: wrong port or count";
    return r && good;
}

void BM_ucall_guest_side(benchmark::State& state) {
    vm pio(&pio_loop), uc(&ucall_loop);
    if (!pio.error.empty() || !uc.error.empty()) {
        state.SkipWithError((pio.error + uc.error).c_str());
        return;
    }
    std::string why;
    if (!pio_batch(pio, why) || !ucall_guest_only_batch(uc, why)) {
        state.SkipWithError(why.c_str());
        return;
    }
    bench::paired(
        state, batch, [&] { return pio_batch(pio, why); }, [&] { return ucall_guest_only_batch(uc, why); },
        why);
}

[[maybe_unused]] const bool registered = [] {
    benchmark::RegisterBenchmark("ucall/sync_vs_pio_out/cpl0", BM_ucall_vs_pio)->UseRealTime();
    benchmark::RegisterBenchmark("ucall/guest_side_vs_pio_out/cpl0", BM_ucall_guest_side)->UseRealTime();
    return true;
}();

} // namespace

VCPU_BENCH_MAIN(true)
