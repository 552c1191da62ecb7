// A HAL without a member template `vcpu<Arch>` does not model HalFor.
// expect-error: vcpu: Hal does not model HalFor<Hal, Arch>: it has no member template `vcpu<Arch>`
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>

struct hal_without_vcpu {
    struct cpu {}; // the wrong name, and not a template
};

int main() { return sizeof(vcpu::basic_vcpu<vcpu::arch::x86_64, hal_without_vcpu>) != 0; }
