// A HAL vCPU without CPUID operations cannot run the x86-64 cpuid_setup boot step, and the
// error names the missing concept step.
// expect-error: x86_64::cpuid_setup: the HAL vCPU does not model ReportsSupportedCpuid
#include <arch/x86_64/init.hpp>

struct hal_vcpu_without_cpuid {};
struct cpu_over_it {
    hal_vcpu_without_cpuid h;
    hal_vcpu_without_cpuid& hal() noexcept { return h; }
};

template vcpu::result<void> vcpu::x86_64::cpuid_setup<>::apply<cpu_over_it>(cpu_over_it&) const;

int main() {}
