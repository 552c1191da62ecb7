// mock_test: the devices of x86_64_vmm (board.hpp) tested without /dev/kvm, as in
// docs/guides/testing-without-kvm.md. The mock HAL plays a script of exits laid out as KVM lays
// them out in kvm_run, the architecture's real decoder reads them, and the mock records what
// the vCPU did: register writes, and the answers the handlers left for each exit.

#include "board.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/mock.hpp>

#include <cstdint>
#include <cstdio>
#include <variant>
#include <vector>

namespace {

namespace mock = vcpu::kvm::mock;
using arch = vcpu::arch::x86_64;

int failures = 0;
void check(bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    if (!ok) ++failures;
}

/// Runs `cpu` with the VMM's own handlers (the same lambdas as in x86_64_vmm.cpp).
template <class Cpu>
auto run_board(Cpu& cpu, guide::board& dev) {
    return cpu.run(
        [&](vcpu::port_io& io) { return dev.on_port(io); },
        [&](vcpu::mmio& m) { return dev.on_mmio(m); },
        [](vcpu::halt) { return vcpu::action::stop; });
}

/// The answers the handlers left, by exit index (IN data, MMIO read data, hypercall returns).
std::vector<mock::event> answers(const mock::mock_vcpu<arch>& cpu) {
    std::vector<mock::event> out;
    for (const auto& e : cpu.hal().events())
        if (e.what == mock::event::kind::answer) out.push_back(e);
    return out;
}

void scripted_exits() {
    // What the guest of x86_64_vmm does, one exit per line.
    mock::script s;
    s.io_out(guide::console_port, 1, 'o')
        .io_out(guide::console_port, 1, 'k')
        .mmio_read(guide::counter_value, 4)      // exit 2: the handler must answer
        .mmio_write(guide::counter_store, 4, 42)
        .hlt();
    auto cpu = mock::make_vcpu<arch>(std::move(s));

    guide::board dev;
    auto last = run_board(cpu, dev);
    check(last.has_value(), "the script plays to its end without an error");
    check(last && std::holds_alternative<vcpu::halt>(*last), "the run ends on the halt");
    check(dev.console == "ok", "the console got both bytes");
    check(dev.stored == 42, "the MMIO write reached the counter");
    const auto a = answers(cpu);
    check(a.size() == 1 && a[0].index == 2 && a[0].value == 41,
          "the only answer is the counter (41) for the MMIO read, exit 2");
}

void unexpected_access() {
    // A read of the console port is not something the board answers: the handler stops and the
    // exit comes back to the caller, with its fields, instead of being silently ignored.
    mock::script s;
    s.io_out(guide::console_port, 1, '!').io_in(guide::console_port, 1).hlt();
    auto cpu = mock::make_vcpu<arch>(std::move(s));
    guide::board dev;
    auto last = run_board(cpu, dev);
    const auto* io = last ? std::get_if<vcpu::port_io>(&*last) : nullptr;
    check(io != nullptr && io->is_in() && io->port == guide::console_port,
          "an IN from the console port comes back as the port_io exit");
    check(cpu.hal().runs() == 2, "the halt after it was never entered");
}

void boot_state_writes() {
    // The boot state is a policy like any other: apply it to a mock vCPU over host memory and
    // check what it wrote, without KVM.
    std::vector<std::byte> ram(2 << 20);
    vcpu::guest_memory mem;
    (void)mem.add({0, ram});
    auto cpu = mock::make_vcpu<arch>(mock::script{});
    auto r = cpu.init(vcpu::x86_64::long_mode<>{&mem, 0x10'0000, 0x8'0000});
    check(r.has_value(), "long_mode applies to the mock");

    bool wrote_sregs = false, wrote_regs = false;
    for (const auto& e : cpu.hal().events())
        if (e.what == mock::event::kind::block_write) {
            wrote_sregs = wrote_sregs || e.name == "kvm_sregs";
            wrote_regs = wrote_regs || e.name == "kvm_regs";
        }
    check(wrote_sregs && wrote_regs, "it wrote the kvm_sregs and kvm_regs blocks");
    auto rip = cpu.get(vcpu::x86_64::rip);
    auto efer = cpu.get(vcpu::x86_64::efer);
    check(rip && *rip == 0x10'0000, "RIP is the entry point");
    check(efer && (*efer & vcpu::x86_64::efer_bits::lme.bits()) != 0, "EFER.LME is set");
    check(cpu.hal().block<vcpu::x86_64::sregs_block>().cr3 == 0x9000, "CR3 points at the page tables");
}

} // namespace

int main() {
    scripted_exits();
    unexpected_access();
    boot_state_writes();
    std::printf("%s\n", failures == 0 ? "mock_test: all checks passed" : "mock_test: FAILED");
    return failures == 0 ? 0 : 1;
}
