// A HAL vCPU that enters and reports exits but moves no registers does not model
// MovesArchRegisters for an arch with register blocks (x86-64: kvm_regs, kvm_sregs, ...).
// expect-error: vcpu: Hal::vcpu<Arch> cannot move every register kind Arch declares
#include <arch/x86_64/arch.hpp>
#include <kvm/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/basic_vcpu.hpp>

struct hal_without_movers {
    template <class A>
    struct vcpu {
        using raw_exit = ::vcpu::kvm::run_view;
        ::vcpu::result<void> enter() noexcept { return {}; }
        raw_exit exit_record() noexcept { return {}; }
    };
};

int main() {
    ::vcpu::basic_vcpu<::vcpu::arch::x86_64, hal_without_movers> cpu{hal_without_movers::vcpu<::vcpu::arch::x86_64>{}};
    (void)cpu;
}
