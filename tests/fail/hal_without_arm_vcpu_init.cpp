// A HAL vCPU without arm_vcpu_init (member or ADL) cannot run the arm64 kvm_boot step, and the
// error names the missing concept step.
// expect-error: aarch64::kvm_boot: the HAL vCPU does not model InitsArmVcpu
#include <arch/aarch64/init.hpp>

struct hal_vcpu_without_init {};
struct cpu_over_it {
    hal_vcpu_without_init h;
    hal_vcpu_without_init& hal() noexcept { return h; }
};

template vcpu::result<void> vcpu::aarch64::kvm_boot::apply<cpu_over_it>(cpu_over_it&) const;

int main() {}
