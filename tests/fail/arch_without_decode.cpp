// An architecture without an `exit_decoder` for the HAL's exit record does not model ExitDecoder.
// expect-error: vcpu: Arch does not model ExitDecoder for this Hal: no visible `exit_decoder<Arch, raw_exit>`
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <kvm/mock.hpp>

struct arch_without_decode {
    using X = vcpu::arch::x86_64;
    using register_blocks = X::register_blocks;
    using keyed_banks = X::keyed_banks;
    static constexpr bool uses_one_reg = false;
    static constexpr const auto& registers = X::registers;
    static constexpr unsigned gpr_count = X::gpr_count;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
    static constexpr auto pc = X::pc;
    using exit_types = X::exit_types;
};

int main() { return sizeof(vcpu::basic_vcpu<arch_without_decode, vcpu::kvm::mock::hal>) != 0; }
