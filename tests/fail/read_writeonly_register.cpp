// Reading a register whose descriptor says access::wo does not compile.
// expect-error: vcpu: this register is write-only \(access::wo\)
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

#include <cstdint>

inline constexpr vcpu::keyed_reg<vcpu::x86_64::msr_bank, std::uint64_t, vcpu::access::wo> wo_msr{
    "IA32_PRED_CMD", 0x49};

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>({});
    (void)cpu.set(wo_msr, 1); // writing is fine
    return cpu.get(wo_msr) ? 0 : 1;
}
