#pragma once
/// \file
/// KVM capabilities as types: what a VMM requires of the host (`capability_need`, checked all
/// at once by `basic_system::require`), the x86 VM types of `KVM_CAP_VM_TYPES`
/// (`vm_type_set`), and enabling a per-vCPU capability (`enable_cap`, KVM API
/// "KVM_ENABLE_CAP" on a vCPU fd). The typed capability queries themselves are members of
/// `basic_system` (kvm/system.hpp).
///
/// Every host compiles every capability here: the numbers come from the generic
/// `<linux/kvm.h>`, and a capability newer than the host's UAPI headers is given the number the
/// kernel header that introduced it assigns (cited where it is defined).

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::kvm {

/// One capability a VMM needs: KVM_CHECK_EXTENSION(`cap`) must answer at least `at_least`
/// (most capabilities answer 1; counting ones such as `KVM_CAP_NR_MEMSLOTS` answer a number).
struct capability_need {
    long cap = 0;             ///< `KVM_CAP_*`
    const char* name = "";    ///< its name, for the error (a static string)
    long at_least = 1;        ///< the smallest answer that satisfies the VMM
};

} // namespace vcpu::kvm

/// A `capability_need` for `<linux/kvm.h>` capability `cap`, named as spelled:
/// `VCPU_KVM_CAP(KVM_CAP_IRQCHIP)`, or `VCPU_KVM_CAP(KVM_CAP_NR_MEMSLOTS, 64)` for a minimum.
#define VCPU_KVM_CAP(cap, ...) ::vcpu::kvm::capability_need{cap, #cap __VA_OPT__(, ) __VA_ARGS__}

namespace vcpu::kvm {

/// `KVM_CAP_VM_TYPES` (Linux 6.10, include/uapi/linux/kvm.h: 235), defined here for UAPI headers
/// that predate it.
#if defined(KVM_CAP_VM_TYPES)
inline constexpr long cap_vm_types = KVM_CAP_VM_TYPES;
#else
inline constexpr long cap_vm_types = 235;
#endif

/// An x86 VM type, the `KVM_CREATE_VM` argument (arch/x86/include/uapi/asm/kvm.h `KVM_X86_*_VM`,
/// Linux 6.10 and later; a kernel without `KVM_CAP_VM_TYPES` has only the default).
enum class x86_vm_type : std::uint8_t {
    default_vm = 0,   ///< `KVM_X86_DEFAULT_VM`: an ordinary VM
    sw_protected = 1, ///< `KVM_X86_SW_PROTECTED_VM`: guest_memfd private memory, for testing
    sev = 2,          ///< `KVM_X86_SEV_VM`: AMD SEV
    sev_es = 3,       ///< `KVM_X86_SEV_ES_VM`: AMD SEV-ES
    snp = 4,          ///< `KVM_X86_SNP_VM`: AMD SEV-SNP
    tdx = 5,          ///< `KVM_X86_TDX_VM`: Intel TDX
};

/// The VM types a host supports (`KVM_CAP_VM_TYPES`: bit n = type n).
struct vm_type_set {
    std::uint32_t bits = 0; ///< the capability's answer
    /// True when `KVM_CREATE_VM(t)` is supported.
    [[nodiscard]] constexpr bool contains(x86_vm_type t) const noexcept {
        return (bits >> static_cast<unsigned>(t) & 1u) != 0;
    }
};

/// Enables per-vCPU capability `cap` with `args` (KVM API "KVM_ENABLE_CAP", vCPU ioctl; e.g.
/// x86 `KVM_CAP_HYPERV_SYNIC`, `KVM_CAP_ENFORCE_PV_FEATURE_CPUID`; the capability must be
/// enabled on the fd it belongs to: a VM capability on the VM fd). Errors: "KVM_ENABLE_CAP"
/// with errno (EINVAL: not a vCPU capability of this host, or bad arguments), the capability,
/// `args[0]` and the vCPU id.
template <class Sys, class Arch>
[[nodiscard]] result<void> enable_cap(hal_vcpu<Sys, Arch>& cpu, std::uint32_t cap,
                                      std::span<const std::uint64_t> args = {}, std::uint32_t flags = 0) noexcept {
    constexpr auto io = ioctls::vcpu::enable_cap;
    ::kvm_enable_cap c{};
    if (args.size() > std::size(c.args))
        return error{io.name, EINVAL, "more than four arguments"}.with("cap", cap).with("args", args.size());
    c.cap = cap;
    c.flags = flags;
    for (std::size_t i = 0; i < args.size(); ++i) c.args[i] = args[i];
    if (auto r = cpu.ioctl(io, &c); !r) return error(r.err()).with("cap", cap).with("arg0", c.args[0]);
    return ok();
}
/// As `enable_cap(cpu, cap, args)` with the arguments listed: `enable_cap(cpu, cap, {1})`.
template <class Sys, class Arch>
[[nodiscard]] result<void> enable_cap(hal_vcpu<Sys, Arch>& cpu, std::uint32_t cap,
                                      std::initializer_list<std::uint64_t> args) noexcept {
    return enable_cap(cpu, cap, std::span<const std::uint64_t>(args.begin(), args.size()));
}

} // namespace vcpu::kvm
