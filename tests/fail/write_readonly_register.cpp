// Writing a register whose descriptor says access::ro does not compile.
// expect-error: vcpu: this register is read-only \(access::ro\)
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

#include <cstddef>
#include <cstdint>

inline constexpr vcpu::block_reg<vcpu::x86_64::regs_block, std::uint64_t, vcpu::access::ro> ro_rip{
    "rip", offsetof(vcpu::x86_64::regs_layout, rip)};

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    (void)cpu.get(ro_rip); // reading is fine
    return cpu.set(ro_rip, 0x1000) ? 0 : 1;
}
