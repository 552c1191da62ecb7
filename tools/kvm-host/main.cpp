// kvm-host: says what KVM this machine offers and whether it works.
//
//   kvm-host            prints the description (kvm::describe_host) and runs a probe guest
//   kvm-host --describe prints the description only
//
// The probe opens /dev/kvm, creates a VM and, on x86-64, runs a two-instruction real-mode
// guest (`out 0xe9, al` with al = 42, then `hlt`) through basic_vcpu, checking both exits.
// Exit status: 0 when the guest ran as expected, 77 when /dev/kvm cannot be opened (no KVM
// here), 1 when /dev/kvm is there but does not run the guest (the reason is printed).
// scripts/kvm-run uses it to choose between the host's /dev/kvm and the nested machine.
#include <kvm/host.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <array>
#include <cstdio>
#include <cstring>
#include <span>
#include <string_view>
#include <variant>

namespace {

constexpr int no_kvm = 77;

int probe() {
#if defined(__x86_64__)
    // mov al, 42 ; out 0xe9, al ; hlt
    constexpr std::array<unsigned char, 5> code{0xb0, 0x2a, 0xe6, 0xe9, 0xf4};
    constexpr std::uint16_t entry = 0x1000;
    vcpu::kvm::x86_64_options opt;
    opt.ram_bytes = 64 * 1024;
    opt.irqchip = opt.pit = false; // HLT comes to userspace
    auto m = vcpu::kvm::vm_init_x86_64(opt, vcpu::x86_64::real_mode{0, entry, 0});
    if (!m) {
        std::printf("kvm-host: probe: %s\n", m.err().message().c_str());
        return std::strcmp(m.err().op, "open /dev/kvm") == 0 ? no_kvm : 1;
    }
    if (!m->memory.write(entry, std::as_bytes(std::span(code)))) {
        std::printf("kvm-host: probe: guest code does not fit\n");
        return 1;
    }
    unsigned out_value = 0;
    auto last = m->vcpus.front().run(
        [&](vcpu::port_io& io) {
            if (io.port == 0xe9 && io.is_out()) out_value = io.value();
            return io.port == 0xe9 ? vcpu::action::resume : vcpu::action::stop;
        },
        [](vcpu::halt) { return vcpu::action::stop; });
    if (!last) {
        std::printf("kvm-host: probe: %s\n", last.err().message().c_str());
        return 1;
    }
    if (!std::holds_alternative<vcpu::halt>(*last) || out_value != 42) {
        std::printf("kvm-host: probe: the guest did not write 42 to port 0xe9 and halt "
                    "(wrote %u, %s)\n", out_value,
                    std::holds_alternative<vcpu::halt>(*last) ? "halted" : "other exit");
        return 1;
    }
    std::printf("kvm-host: probe guest ran (OUT 42, HLT)\n");
    return 0;
#else
    auto sys = vcpu::kvm::system::open();
    if (!sys) {
        std::printf("kvm-host: probe: %s\n", sys.err().message().c_str());
        return no_kvm;
    }
    auto vm = sys->create_vm();
    if (!vm) {
        std::printf("kvm-host: probe: %s\n", vm.err().message().c_str());
        return 1;
    }
    std::printf("kvm-host: probe VM created\n");
    return 0;
#endif
}

} // namespace

int main(int argc, char** argv) {
    const auto host = vcpu::kvm::describe_host();
    std::printf("%s\n", host.c_str());
    if (argc > 1 && std::string_view(argv[1]) == "--describe") return 0;
    return probe();
}
