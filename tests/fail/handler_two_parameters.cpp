// A handler taking two parameters can take no exit (handlers take one exit by reference or
// value): run() rejects it at compile time.
// expect-error: handler number I .* is never called
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    auto r = cpu.run([](vcpu::port_io&, int) {}, [](vcpu::halt) { return vcpu::action::stop; });
    return r ? 0 : 1;
}
