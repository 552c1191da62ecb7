// EFER.LMA is set by the CPU (SDM Vol. 3A §2.2.1): its bit field is read-only.
// expect-error: vcpu: this bit field is read-only \(access::ro\)
#include <arch/x86_64/registers.hpp>

int main() {
    constexpr auto efer = vcpu::x86_64::efer_bits::lme.bits();
    static_assert(!vcpu::x86_64::efer_bits::lma.test(efer)); // reading is fine
    return static_cast<int>(vcpu::x86_64::efer_bits::lma.set(efer, 1));
}
