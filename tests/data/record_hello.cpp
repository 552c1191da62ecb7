// Records tests/data/hello.trace: the examples/hello guest run on /dev/kvm through
// vcpu::kvm::record::hal<vcpu::kvm::hal>, with the example's own handlers. Not built by CMake;
// regenerate (needs /dev/kvm) with:
//   g++ -std=c++20 -O2 -Iinclude -Iexamples/hello tests/data/record_hello.cpp -o /tmp/record_hello
//   /tmp/record_hello tests/data/hello.trace
#include "guest.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <kvm/record.hpp>

#include <cstdio>
#include <string>
#include <variant>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: record_hello <trace file>\n");
        return 2;
    }
    vcpu::kvm::x86_64_options opt;
    opt.ram_bytes = 64 * 1024;
    opt.irqchip = opt.pit = false;
    auto machine = vcpu::kvm::vm_init_x86_64(opt, vcpu::x86_64::real_mode{0, hello::load_address, 0});
    if (!machine) {
        std::fprintf(stderr, "record_hello: %s\n", machine.err().message().c_str());
        return 1;
    }
    auto as_bytes = [](const auto& a) { return std::as_bytes(std::span(a)); };
    if (!machine->memory.write(hello::load_address, as_bytes(hello::code)) ||
        !machine->memory.write(hello::load_address + 0x20, as_bytes(hello::message)))
        return 1;
    // The KVM HAL vCPU moves into the recording HAL.
    using rec = vcpu::kvm::record::hal<vcpu::kvm::hal>;
    vcpu::basic_vcpu<vcpu::arch::x86_64, rec> cpu(
        rec::vcpu<vcpu::arch::x86_64>(std::move(machine->vcpus.front().hal())));
    if (auto e = cpu.hal().open(argv[1]); !e) {
        std::fprintf(stderr, "record_hello: %s\n", e.err().message().c_str());
        return 1;
    }
    std::string printed;
    std::uint32_t answer_back = 0;
    auto last = cpu.run(
        [&](vcpu::port_io& io) {
            if (io.port != hello::debug_port) return vcpu::action::stop;
            if (io.is_in()) io.set(41);
            else if (io.size == 1) printed += static_cast<char>(io.value());
            else answer_back = io.value();
            return vcpu::action::resume;
        },
        [&](vcpu::halt) { return vcpu::action::stop; });
    if (!last || !std::holds_alternative<vcpu::halt>(*last) || answer_back != 42) {
        std::fprintf(stderr, "record_hello: the guest did not run to its HLT\n");
        return 1;
    }
    if (auto e = cpu.hal().finish(); !e) {
        std::fprintf(stderr, "record_hello: %s\n", e.err().message().c_str());
        return 1;
    }
    std::printf("%s%llu exits recorded to %s\n", printed.c_str(),
                static_cast<unsigned long long>(cpu.hal().exits()), argv[1]);
    return 0;
}
