#pragma once
/// \file
/// `basic_hal<Sys>`: the Linux KVM HAL as a policy type for
/// `vcpu::basic_vcpu<Arch, Hal>`. Its per-vCPU state is
/// `basic_hal<Sys>::vcpu<Arch>` = `hal_vcpu<Sys, Arch>` (kvm/vcpu.hpp).
/// `vcpu::kvm::hal` is the production alias over the real system calls.

#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/config.hpp>

namespace vcpu::kvm {

/// The KVM HAL with Sys policy `Sys` (see kvm/sys.hpp). Stateless; models
/// `vcpu::HalFor<basic_hal<Sys>, Arch>` for every arch whose register blocks
/// have `block_traits` on this host.
template <class Sys>
struct basic_hal {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");
    /// The syscall seam (`sys` in production, a fake in tests).
    using sys_type = Sys;
    /// Per-vCPU state for arch `Arch`: fd, `kvm_run` mapping, register cache.
    template <class Arch>
    using vcpu = hal_vcpu<Sys, Arch>;
};

/// The production KVM HAL.
using hal = basic_hal<linux_sys>;

} // namespace vcpu::kvm
