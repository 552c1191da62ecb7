// A handler whose parameter is no exit type of the architecture (here a pointer) would never be
// called; run() rejects it at compile time and the note names its position and type.
// expect-error: handler number I .* is never called
// expect-error(gcc): handler_is_called<1, .*mmio\*
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    auto r = cpu.run([](vcpu::halt) { return vcpu::action::stop; }, [](vcpu::mmio*) {});
    return r ? 0 : 1;
}
