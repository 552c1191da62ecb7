// A decoder may only produce exit types its arch lists in `exit_types`.
// expect-error: vcpu: the decoder produced an exit type missing from Arch::exit_types
#include <arch/x86_64/arch.hpp>
#include <vcpu/mock.hpp>

struct arch_with_short_list : vcpu::arch::x86_64 {
    using exit_types = vcpu::type_list<vcpu::halt>; // the x86 decoder produces many more
};

int main() {
    auto cpu = vcpu::mock::make_vcpu<arch_with_short_list>({});
    auto r = cpu.run([](auto&) {});
    return r ? 0 : 1;
}
