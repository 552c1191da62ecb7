// A handler must return void (resume) or vcpu::action.
// expect-error: vcpu: a handler must return void \(resume\) or vcpu::action
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    auto r = cpu.run([](vcpu::port_io&) { return 1; }, [](auto&) {});
    return r ? 0 : 1;
}
