// x86-64 models the core concepts, policies that fall short are rejected, and composing the
// policies costs nothing: compiling this file is the test.
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/concepts.hpp>
#include <vcpu/init.hpp>
#include <kvm/run.hpp>
#include <kvm/kvm.hpp>
#include <kvm/mock.hpp>

#include <cstdint>
#include <type_traits>

namespace concepts_x86_64 { // named: clang flags unused members of internal-linkage classes

using X = vcpu::arch::x86_64;
using mock_hal = vcpu::kvm::mock::hal;
using mock_cpu = vcpu::kvm::mock::mock_vcpu<X>;
using hal_cpu = mock_hal::vcpu<X>;
namespace x86 = vcpu::x86_64;

// --- x86-64 models every concept ---------------------------------------------------------------
static_assert(vcpu::HasRegisterList<X>);
static_assert(vcpu::HasGprIndexing<X>);
static_assert(vcpu::HasProgramCounter<X>);
static_assert(vcpu::RegisterFile<X>);
static_assert(vcpu::HasExitTypes<X>);
static_assert(vcpu::DecodesRecord<X, vcpu::kvm::run_view>);
static_assert(vcpu::ExitDecoder<X, vcpu::kvm::run_view>);
static_assert(vcpu::HasVcpuState<mock_hal, X>);
static_assert(vcpu::EntersGuest<hal_cpu>);
static_assert(vcpu::MovesBlock<hal_cpu, x86::regs_block>);
static_assert(vcpu::MovesBlock<hal_cpu, x86::sregs_block>);
static_assert(vcpu::MovesBlock<hal_cpu, x86::events_block>);
static_assert(vcpu::MovesBlock<hal_cpu, x86::debugregs_block>);
static_assert(vcpu::MovesKeyed<hal_cpu, x86::msr_bank>);
static_assert(vcpu::MovesOneReg<hal_cpu>);
static_assert(vcpu::MovesArchRegisters<hal_cpu, X>);
static_assert(vcpu::HalFor<mock_hal, X>);
static_assert(std::is_same_v<hal_cpu::raw_exit, vcpu::kvm::run_view>);

// Boot policies model CpuInitFor on the mock vCPU.
static_assert(vcpu::CpuInitFor<x86::real_mode, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::flat_protected_mode, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::long_mode<>, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::long_mode<2>, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::cpuid_setup<>, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::cpuid_setup<x86::hide_leaf>, mock_cpu>);
static_assert(vcpu::CpuInitFor<x86::misc_enable_fast_strings, mock_cpu>);
static_assert(vcpu::CpuInitFor<decltype(x86::linux_boot_state()), mock_cpu>);
static_assert(vcpu::CpuInitFor<vcpu::init_sequence<x86::real_mode, x86::misc_enable_fast_strings>,
                               mock_cpu>);
static_assert(vcpu::CpuInitFor<vcpu::init_sequence<>, mock_cpu>);

// Register descriptors and the GPR / PC accessors.
static_assert(vcpu::RegisterDescriptor<decltype(X::gpr(0))>);
static_assert(vcpu::RegisterDescriptor<decltype(X::pc)>);
static_assert(vcpu::RegisterDescriptor<decltype(x86::msr(0x10))>);
static_assert(X::gpr(0).offset == X::pc.offset - 16 * 8, "rax is the first field of kvm_regs");

// --- negative cases: a policy that falls short is rejected ------------------------------------
struct no_registers {
    static constexpr unsigned gpr_count = 16;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
    static constexpr auto pc = X::pc;
};
static_assert(!vcpu::HasRegisterList<no_registers> && !vcpu::RegisterFile<no_registers>);

struct gpr_not_a_register {
    static constexpr const auto& registers = X::registers;
    static constexpr unsigned gpr_count = 16;
    static constexpr int gpr(unsigned) noexcept { return 0; }
    static constexpr auto pc = X::pc;
};
static_assert(!vcpu::HasGprIndexing<gpr_not_a_register> && !vcpu::RegisterFile<gpr_not_a_register>);

struct no_pc {
    static constexpr const auto& registers = X::registers;
    static constexpr unsigned gpr_count = 16;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
};
static_assert(!vcpu::HasProgramCounter<no_pc> && !vcpu::RegisterFile<no_pc>);

struct no_storage { // registers, gprs and pc, but not where they live
    static constexpr const auto& registers = X::registers;
    static constexpr unsigned gpr_count = 16;
    static constexpr auto gpr(unsigned i) noexcept { return X::gpr(i); }
    static constexpr auto pc = X::pc;
};
static_assert(!vcpu::DeclaresRegisterStorage<no_storage> && !vcpu::RegisterFile<no_storage>);
static_assert(vcpu::DeclaresRegisterStorage<X>);

struct no_decode {
    using exit_types = vcpu::type_list<vcpu::halt>;
};
static_assert(!vcpu::DecodesRecord<no_decode, vcpu::kvm::run_view>);
static_assert(!vcpu::ExitDecoder<no_decode, vcpu::kvm::run_view>);

struct no_exit_types {
    template <class V>
    static void decode(const vcpu::kvm::run_view&, V&&) noexcept {}
};
static_assert(vcpu::DecodesRecord<no_exit_types, vcpu::kvm::run_view>);
static_assert(!vcpu::ExitDecoder<no_exit_types, vcpu::kvm::run_view>);

// x86-64 decodes kvm_run, not some other record.
struct other_record {};
static_assert(!vcpu::ExitDecoder<X, other_record>);
static_assert(!vcpu::ExitDecoder<X, int>);

// HALs.
struct no_vcpu_hal {};
static_assert(!vcpu::HasVcpuState<no_vcpu_hal, X> && !vcpu::HalFor<no_vcpu_hal, X>);

/// A HAL vCPU built from the mock one with pieces taken away.
struct no_enter_vcpu {
    using raw_exit = vcpu::kvm::run_view;
    vcpu::kvm::run_view exit_record() noexcept { return {}; }
};
static_assert(!vcpu::EntersGuest<no_enter_vcpu>);

struct throwing_enter_vcpu {
    using raw_exit = vcpu::kvm::run_view;
    vcpu::result<void> enter(); // not noexcept
    vcpu::kvm::run_view exit_record() noexcept { return {}; }
};
static_assert(!vcpu::EntersGuest<throwing_enter_vcpu>);

struct bool_enter_vcpu {
    using raw_exit = vcpu::kvm::run_view;
    bool enter() noexcept { return true; }
    vcpu::kvm::run_view exit_record() noexcept { return {}; }
};
static_assert(!vcpu::EntersGuest<bool_enter_vcpu>);

/// Enters fine but cannot move registers at all.
struct enter_only_hal {
    template <class A>
    struct vcpu {
        using raw_exit = ::vcpu::kvm::run_view;
        ::vcpu::result<void> enter() noexcept { return {}; }
        ::vcpu::kvm::run_view exit_record() noexcept { return {}; }
    };
};
static_assert(vcpu::EntersGuest<enter_only_hal::vcpu<X>>);
static_assert(!vcpu::MovesArchRegisters<enter_only_hal::vcpu<X>, X>);
static_assert(!vcpu::HalFor<enter_only_hal, X>);

/// Moves register blocks but has no MSR bank.
struct no_msr_hal {
    template <class A>
    struct vcpu : enter_only_hal::vcpu<A> {
        template <class B>
        ::vcpu::result<const typename B::layout*> load() noexcept {
            return static_cast<const typename B::layout*>(nullptr);
        }
        template <class B>
        ::vcpu::result<typename B::layout*> modify() noexcept {
            return static_cast<typename B::layout*>(nullptr);
        }
    };
};
static_assert(vcpu::MovesBlock<no_msr_hal::vcpu<X>, x86::regs_block>);
static_assert(!vcpu::MovesKeyed<no_msr_hal::vcpu<X>, x86::msr_bank>);
static_assert(!vcpu::HalFor<no_msr_hal, X>);

// Init policies.
struct no_apply {};
static_assert(!vcpu::CpuInitFor<no_apply, mock_cpu>);
struct apply_returns_bool {
    template <class C>
    bool apply(C&) const noexcept {
        return true;
    }
};
static_assert(!vcpu::CpuInitFor<apply_returns_bool, mock_cpu>);
struct non_const_apply {
    template <class C>
    vcpu::result<void> apply(C&) noexcept {
        return {};
    }
};
static_assert(!vcpu::CpuInitFor<non_const_apply, mock_cpu>);
struct apply_for_other_cpu {
    vcpu::result<void> apply(int&) const noexcept { return {}; }
};
static_assert(!vcpu::CpuInitFor<apply_for_other_cpu, mock_cpu>);

// --- zero overhead ---------------------------------------------------------------------------
static_assert(std::is_empty_v<X>, "the arch policy is stateless");
static_assert(std::is_trivially_default_constructible_v<X>);
static_assert(std::is_empty_v<mock_hal>, "the HAL policy is stateless");
static_assert(std::is_empty_v<vcpu::kvm::mock::hal>);
static_assert(std::is_empty_v<x86::keep_cpuid>, "the default CPUID hook costs nothing");
struct apic_id_and_flag {
    std::uint32_t apic_id;
    bool hypervisor;
};
static_assert(sizeof(x86::cpuid_setup<>) == sizeof(apic_id_and_flag), "the empty hook takes no space");
static_assert(std::is_empty_v<x86::misc_enable_fast_strings>);
static_assert(sizeof(x86::flat_protected_mode) == 2 * sizeof(std::uint64_t));
// basic_vcpu adds at most one bool (plus padding) over the HAL's own vCPU state.
static_assert(sizeof(mock_cpu) <= sizeof(hal_cpu) + alignof(hal_cpu));
static_assert(sizeof(vcpu::basic_vcpu<X, mock_hal>) == sizeof(mock_cpu));
static_assert(!std::is_polymorphic_v<mock_cpu> && !std::is_polymorphic_v<hal_cpu>,
              "no virtual dispatch");
// Exit values are plain data.
static_assert(std::is_trivially_copyable_v<vcpu::port_io> && std::is_trivially_copyable_v<vcpu::mmio>);
static_assert(std::is_trivially_copyable_v<x86::emulation_failure>);
// The view is a pointer, the mapped size and the kick requests taken at that exit.
static_assert(std::is_trivially_copyable_v<vcpu::kvm::run_view> &&
              sizeof(vcpu::kvm::run_view) == 3 * sizeof(void*));

} // namespace concepts_x86_64

// The arch-specific HAL operations are named concept steps the mock and the KVM HAL model.
static_assert(vcpu::x86_64::CpuidHal<vcpu::kvm::mock::hal::vcpu<vcpu::arch::x86_64>>);
#if defined(__x86_64__) // the KVM HAL's CPUID calls exist on x86 hosts only
static_assert(vcpu::x86_64::CpuidHal<vcpu::kvm::hal::vcpu<vcpu::arch::x86_64>>);
#endif
static_assert(!vcpu::x86_64::ReportsSupportedCpuid<int>);
