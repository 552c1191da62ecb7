// An init policy needs a const `apply(cpu) -> result<void>`.
// expect-error: vcpu: the init policy does not model CpuInitFor
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

struct boot_state_without_apply {
    unsigned long long entry = 0x100000;
};

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    return cpu.init(boot_state_without_apply{}) ? 0 : 1;
}
