// AArch64 models the core concepts: compiling this file is the test.
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/init.hpp>
#include <kvm/aarch64.hpp>
#include <kvm/hal.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/concepts.hpp>
#include <kvm/mock.hpp>

#include <type_traits>

using A = vcpu::arch::aarch64;

static_assert(std::is_empty_v<A>, "an arch policy is stateless");
static_assert(vcpu::RegisterFile<A>);
static_assert(vcpu::ExitDecoder<A, vcpu::kvm::run_view>);
static_assert(vcpu::ExitDecoder<A, vcpu::aarch64::el2_syndrome>);
static_assert(vcpu::HalFor<vcpu::kvm::mock::hal, A>);
static_assert(vcpu::HalFor<vcpu::kvm::hal, A>);
static_assert(vcpu::CpuInitFor<vcpu::aarch64::kvm_boot, vcpu::kvm::mock::mock_vcpu<A>>);
static_assert(vcpu::CpuInitFor<vcpu::aarch64::kvm_boot, vcpu::basic_vcpu<A, vcpu::kvm::hal>>);
static_assert(A::gpr_count == 31 && A::gpr(30).id == vcpu::aarch64::lr.id);
static_assert(std::is_same_v<decltype(A::pc)::value_type, std::uint64_t>);
// Arch-specific exits derive from the common ones, so portable handlers take them.
static_assert(std::is_base_of_v<vcpu::mmio, vcpu::aarch64::mmio_access>);
static_assert(std::is_base_of_v<vcpu::hypercall, vcpu::aarch64::smccc_call>);
static_assert(std::is_invocable_v<void (&)(vcpu::mmio&), vcpu::aarch64::mmio_access&>);

// The arm64 HAL operations are named concept steps the mock (members) and the KVM HAL (ADL) model.
static_assert(vcpu::aarch64::ArmVcpuHal<vcpu::kvm::mock::hal::vcpu<vcpu::arch::aarch64>>);
static_assert(vcpu::aarch64::ArmVcpuHal<vcpu::kvm::hal::vcpu<vcpu::arch::aarch64>>);
static_assert(!vcpu::aarch64::InitsArmVcpu<int>);
