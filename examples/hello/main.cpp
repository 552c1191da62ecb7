// hello: the smallest complete VMM built on vcpu. It creates a KVM VM with
// 64 KiB of RAM, puts a real-mode guest in it, and handles the guest's port
// I/O until it halts. Read it top to bottom.

#include "guest.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/host.hpp>
#include <kvm/kvm.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <variant>

int main() {
    // 1. /dev/kvm → VM → 64 KiB of guest RAM at GPA 0 → one vCPU in real
    //    mode at 0000:1000. No in-kernel irqchip: HLT then comes to us.
    vcpu::kvm::x86_64_options opt;
    opt.ram_bytes = 64 * 1024;
    opt.irqchip = opt.pit = false;
    auto machine = vcpu::kvm::vm_init_x86_64(opt, vcpu::x86_64::real_mode{0, hello::load_address, 0});
    if (!machine) {
        std::fprintf(stderr, "hello: %s\n", machine.err().message().c_str());
        // No KVM on this machine (a laptop without it, a container): say so,
        // and exit with 77, which ctest reports as "skipped".
        return std::strcmp(machine.err().op, "open /dev/kvm") == 0 ? 77 : 1;
    }
    auto& cpu = machine->vcpus.front();
    std::printf("running on %s\n", vcpu::kvm::describe_host().c_str());

    // 2. Copy the guest code and its message into guest RAM.
    auto& mem = machine->memory;
    auto as_bytes = [](const auto& a) { return std::as_bytes(std::span(a)); };
    if (!mem.write(hello::load_address, as_bytes(hello::code)) ||
        !mem.write(hello::load_address + 0x20, as_bytes(hello::message))) {
        std::fprintf(stderr, "hello: guest image does not fit in RAM\n");
        return 1;
    }

    // 3. Run. Each handler takes the exit type it cares about; dispatch is
    //    resolved at compile time. Returning `stop` hands the exit back.
    std::string printed;
    std::uint32_t answer_back = 0;
    unsigned exits = 0;
    const auto start = std::chrono::steady_clock::now();
    auto last = cpu.run(
        [&](vcpu::port_io& io) {
            ++exits;
            if (io.port != hello::debug_port) return vcpu::action::stop;
            if (io.is_in()) io.set(41);                    // the guest's question
            else if (io.size == 1) printed += static_cast<char>(io.value());
            else answer_back = io.value();                 // 41 + 1
            return vcpu::action::resume;
        },
        [&](vcpu::halt) { ++exits; return vcpu::action::stop; });
    const auto elapsed = std::chrono::steady_clock::now() - start;

    // 4. Report what the guest did.
    if (!last) {
        std::fprintf(stderr, "hello: %s\n", last.err().message().c_str());
        return 1;
    }
    std::fputs(printed.c_str(), stdout);
    const bool halted = std::holds_alternative<vcpu::halt>(*last);
    const auto us = std::chrono::duration<double, std::micro>(elapsed).count();
    std::printf("guest answered %u (expected 42), %s after %u exits\n", answer_back,
                halted ? "halted" : "stopped on an unexpected exit", exits);
    std::printf("exit round trip: %.1f us on average (%.0f us in all)\n", us / exits, us);
    const bool ok = halted && answer_back == 42 && printed == hello::message;
    return ok ? 0 : 1;
}
