// An architecture policy without a `registers` list does not model RegisterFile.
// expect-error: vcpu: Arch does not model RegisterFile: it has no `registers` list
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <kvm/mock.hpp>

struct arch_without_registers {
    using X = vcpu::arch::x86_64;
    using register_blocks = X::register_blocks;
    using keyed_banks = X::keyed_banks;
    static constexpr bool uses_one_reg = false;
    static constexpr unsigned gpr_count = X::gpr_count;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
    static constexpr auto pc = X::pc;
    using exit_types = X::exit_types;
    template <class V>
    static void decode(const vcpu::kvm::run_view& v, V&& visit) noexcept {
        X::decode(v, visit);
    }
};

int main() { return sizeof(vcpu::basic_vcpu<arch_without_registers, vcpu::kvm::mock::hal>) != 0; }
