// An architecture policy that does not declare where its registers live (register_blocks,
// keyed_banks, uses_one_reg) does not model RegisterFile, and says so before any HAL check.
// expect-error: vcpu: Arch does not model RegisterFile: it must declare `register_blocks`
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <kvm/mock.hpp>

struct arch_without_register_storage {
    using X = vcpu::arch::x86_64;
    static constexpr const auto& registers = X::registers;
    static constexpr unsigned gpr_count = X::gpr_count;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
    static constexpr auto pc = X::pc;
    using exit_types = X::exit_types;
    template <class V>
    static void decode(const vcpu::kvm::run_view& v, V&& visit) noexcept {
        X::decode(v, visit);
    }
};

int main() { return sizeof(vcpu::basic_vcpu<arch_without_register_storage, vcpu::kvm::mock::hal>) != 0; }
