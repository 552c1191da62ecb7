// A handler that an earlier handler shadows for every exit it accepts (here two handlers of
// port_io) is never called: a compile error, unless wrapped in vcpu::allow_unused.
// expect-error: handler number I .* is never called
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    auto r = cpu.run([](vcpu::port_io&) {}, [](vcpu::port_io&) {},
                     [](vcpu::halt) { return vcpu::action::stop; });
    return r ? 0 : 1;
}
