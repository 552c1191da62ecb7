// RISC-V 64 models the core concepts: compiling this file is the test.
#include <arch/riscv64/arch.hpp>
#include <arch/riscv64/init.hpp>
#include <kvm/hal.hpp>
#include <kvm/riscv64.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/concepts.hpp>
#include <kvm/mock.hpp>

#include <cstdint>
#include <type_traits>

using A = vcpu::arch::riscv64;
namespace rv = vcpu::riscv64;

static_assert(std::is_empty_v<A>, "an arch policy is stateless");
static_assert(vcpu::RegisterFile<A>);
static_assert(vcpu::ExitDecoder<A, vcpu::kvm::run_view>);
static_assert(vcpu::ExitDecoder<A, rv::hs_trap>);
static_assert(vcpu::HalFor<vcpu::kvm::mock::hal, A>);
static_assert(vcpu::HalFor<vcpu::kvm::hal, A>);
static_assert(vcpu::CpuInitFor<rv::boot, vcpu::kvm::mock::mock_vcpu<A>>);
static_assert(vcpu::CpuInitFor<rv::boot, vcpu::basic_vcpu<A, vcpu::kvm::hal>>);
static_assert(A::gpr_count == 32 && A::gpr(10).id == rv::a0.id && A::gpr(31).id == rv::t6.id);
static_assert(A::gpr(0).id == 0, "x0 has no KVM register: reserved id 0");
static_assert(A::register_blocks::size == 0 && A::keyed_banks::size == 0 && A::uses_one_reg);
static_assert(std::is_same_v<decltype(A::pc)::value_type, std::uint64_t>);

// RISC-V exits derive from the common ones, so portable handlers take them.
static_assert(std::is_base_of_v<vcpu::mmio, rv::mmio_trap>);
static_assert(std::is_base_of_v<vcpu::hypercall, rv::sbi_call>);
static_assert(std::is_base_of_v<vcpu::sysreg, rv::csr_access>);
static_assert(std::is_invocable_v<void (&)(vcpu::mmio&), rv::mmio_trap&>);
static_assert(std::is_invocable_v<void (&)(vcpu::hypercall&), rv::sbi_call&>);

// Zero overhead: exits are small values; the trap record is plain data.
static_assert(std::is_trivially_copyable_v<rv::hs_trap> && std::is_trivially_copyable_v<rv::mmio_trap>);
static_assert(sizeof(vcpu::answer_slot) == 2 * sizeof(void*));

// The HS-mode decoder runs at compile time: a transformed compressed C.LW a0
// (htinst 0x2501) at GPA 0x1000_0004 decodes to a 4-byte sign-extending MMIO
// read into a0, and write_back completes it.
constexpr std::uint64_t scenario() {
    rv::hs_guest_frame f{};
    rv::hs_trap t{};
    t.scause = rv::exception_code::load_guest_page_fault;
    t.htval = 0x10000004 >> 2;
    t.stval = 0x4;
    t.htinst = 0x2501;
    t.frame = &f;
    std::uint64_t out = 0;
    vcpu::decode_exit<A>(t, [&]<class E>(E& e) {
        if constexpr (std::is_same_v<E, rv::mmio_trap>) {
            e.set(0x80000000u);
            e.write_back(f);
            out = e.address ^ e.size ^ e.insn_length ^ f.x[10];
        }
    });
    return out;
}
static_assert(scenario() == (0x10000004ull ^ 4 ^ 2 ^ 0xffffffff80000000ull));
