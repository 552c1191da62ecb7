// A decoder may only produce exit types its arch lists in `exit_types`.
// expect-error: vcpu: the decoder produced an exit type missing from Arch::exit_types
#include <arch/x86_64/arch.hpp>
#include <kvm/mock.hpp>

struct arch_with_short_list : vcpu::arch::x86_64 {
    using exit_types = vcpu::type_list<vcpu::halt>; // the x86 decoder produces many more
};
// Decodes kvm_run as x86-64 does.
template <>
struct vcpu::exit_decoder<arch_with_short_list, vcpu::kvm::run_view>
    : vcpu::exit_decoder<vcpu::arch::x86_64, vcpu::kvm::run_view> {};

int main() {
    auto cpu = vcpu::kvm::mock::make_vcpu<arch_with_short_list>({});
    auto r = cpu.run([](auto&) {});
    return r ? 0 : 1;
}
