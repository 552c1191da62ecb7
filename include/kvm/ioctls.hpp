#pragma once
/// \file
/// Every KVM ioctl the HAL issues, in one table grouped by the fd it is
/// issued on (KVM API 4 "API description": "system ioctl", "vm ioctl",
/// "vcpu ioctl"). Each entry carries the request code from `<linux/kvm.h>`
/// (never retyped) and its name, which becomes `vcpu::error::op` when the
/// call fails. The fd kind is part of the entry's type, so a VM ioctl cannot
/// be issued through a vCPU handle.
///
/// Entries that exist only on x86 hosts are guarded by `__x86_64__` (the
/// only place besides include/kvm/x86_64*.hpp where the host ABI shows). The
/// arm64 and RISC-V entries are generic `<linux/kvm.h>` codes (or built from the
/// arch's own ABI mirror), so they are in every host's table; issuing them is
/// only meaningful on that architecture's KVM. The per-fd tables below are
/// `std::to_array`s: their sizes come from the entries, never from a count.

#include <arch/aarch64/abi.hpp>
#include <kvm/vm_abi.hpp>
#include <vcpu/config.hpp>

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace vcpu::kvm {

/// Which kernel fd an ioctl is issued on.
enum class fd_kind : std::uint8_t {
    system, ///< `/dev/kvm`
    vm,     ///< returned by `KVM_CREATE_VM`
    vcpu,   ///< returned by `KVM_CREATE_VCPU`
    device, ///< returned by `KVM_CREATE_DEVICE` (kvm/device.hpp)
};

/// One ioctl: its request code and the name used in error messages.
template <fd_kind K>
struct ioctl_def {
    static constexpr fd_kind kind = K;  ///< which fd the ioctl is issued on
    unsigned long code = 0;  ///< the request code (`KVM_*` from `<linux/kvm.h>`)
    const char* name = "";  ///< its name, for error messages
};

} // namespace vcpu::kvm

namespace vcpu::kvm::detail {
/// Size, in the kernel's C layout, of the header of a UAPI struct that ends
/// in a `__DECLARE_FLEX_ARRAY` after two `__u32`s (`kvm_msrs`, `kvm_cpuid2`,
/// `kvm_coalesced_mmio_ring`): where the flexible array starts. The one
/// definition the HAL uses (ioctl sizes, MSR/CPUID buffers, the coalesced
/// ring). The UAPI headers' empty placeholder struct has size 0 in GNU C but
/// 1 in C++, so in C++ `offsetof(kvm_msrs, entries)` is 16, not the kernel's
/// 8: the HAL never uses those member names and lays the buffers out itself.
inline constexpr std::size_t c_flex_header_size = 2 * sizeof(std::uint32_t);

/// Size, in the kernel's C layout, of the header of `struct kvm_signal_mask { __u32 len;
/// __u8 sigset[]; }` (KVM_SET_SIGNAL_MASK): the set starts right after `len`.
inline constexpr std::size_t signal_mask_header_size = sizeof(std::uint32_t);

/// Size, in the kernel's C layout, of `struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }`'s
/// header (KVM_GET_MSR_INDEX_LIST).
inline constexpr std::size_t msr_list_header_size = sizeof(std::uint32_t);

/// Size, in the kernel's C layout, of `struct kvm_xsave { __u32 region[1024]; __u32 extra[]; }`
/// (KVM_GET/SET_XSAVE, KVM_GET_XSAVE2): 4096. In C++ the UAPI flexible-array wrapper makes it
/// 4100, and the request codes built from it would be refused.
inline constexpr std::size_t xsave_header_size = 4096;

/// `req` with its `_IOC_SIZE` field set to `c_flex_header_size`.
///
/// Why: UAPI headers without the C++ variant of `__DECLARE_FLEX_ARRAY`
/// (before Linux 6.5) declare the flexible array inside an anonymous struct
/// holding an empty struct. An empty struct has size 0 in GNU C but 1 in C++,
/// so in C++ `sizeof(struct kvm_msrs)` is 16, not 8, and the `_IOWR(...,
/// struct kvm_msrs)` request codes in `<linux/kvm.h>` come out wrong: the
/// kernel rejects them (`KVM_GET_SUPPORTED_CPUID` fails with EINVAL). The
/// direction, type and number still come from the header.
[[nodiscard]] constexpr unsigned long with_c_flex_size(unsigned long req,
                                                      unsigned long header = c_flex_header_size) noexcept {
    constexpr unsigned long size_field = static_cast<unsigned long>(_IOC_SIZEMASK) << _IOC_SIZESHIFT;
    return (req & ~size_field) | (header << _IOC_SIZESHIFT);
}
} // namespace vcpu::kvm::detail

/// Builds an `ioctl_def` from a `<linux/kvm.h>` macro, keeping its spelling as
/// the name (the argument is stringised before expansion).
#define VCPU_KVM_IOCTL(kind, req) ::vcpu::kvm::ioctl_def<::vcpu::kvm::fd_kind::kind>{req, #req}
/// As `VCPU_KVM_IOCTL` for ioctls whose argument struct ends in a flexible
/// array (see `detail::with_c_flex_size`).
#define VCPU_KVM_IOCTL_FLEX(kind, req)                                                             \
    ::vcpu::kvm::ioctl_def<::vcpu::kvm::fd_kind::kind>{::vcpu::kvm::detail::with_c_flex_size(req), #req}
/// As `VCPU_KVM_IOCTL_FLEX` for a flexible-array struct whose C header is `bytes` long.
#define VCPU_KVM_IOCTL_FLEX_HEADER(kind, req, bytes)                                               \
    ::vcpu::kvm::ioctl_def<::vcpu::kvm::fd_kind::kind>{                                            \
        ::vcpu::kvm::detail::with_c_flex_size(req, bytes), #req}

namespace vcpu::kvm::ioctls {

/// System ioctls, on `/dev/kvm` (KVM API 4.1-4.5).
namespace system {
/// 4.1 KVM_GET_API_VERSION.
inline constexpr auto get_api_version = VCPU_KVM_IOCTL(system, KVM_GET_API_VERSION);
/// 4.2 KVM_CREATE_VM.
inline constexpr auto create_vm = VCPU_KVM_IOCTL(system, KVM_CREATE_VM);
/// 4.4 KVM_CHECK_EXTENSION.
inline constexpr auto check_extension = VCPU_KVM_IOCTL(system, KVM_CHECK_EXTENSION);
/// 4.5 KVM_GET_VCPU_MMAP_SIZE.
inline constexpr auto get_vcpu_mmap_size = VCPU_KVM_IOCTL(system, KVM_GET_VCPU_MMAP_SIZE);
#if defined(__x86_64__)
/// 4.46 KVM_GET_SUPPORTED_CPUID.
inline constexpr auto get_supported_cpuid = VCPU_KVM_IOCTL_FLEX(system, KVM_GET_SUPPORTED_CPUID);
/// 4.3 KVM_GET_MSR_INDEX_LIST: `struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }`, whose C
/// header is 4 bytes (the UAPI C++ sizeof says 8).
inline constexpr auto get_msr_index_list =
    VCPU_KVM_IOCTL_FLEX_HEADER(system, KVM_GET_MSR_INDEX_LIST, ::vcpu::kvm::detail::msr_list_header_size);
/// 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST (`KVM_CAP_GET_MSR_FEATURES`): same `kvm_msr_list` layout.
inline constexpr auto get_msr_feature_index_list =
    VCPU_KVM_IOCTL_FLEX_HEADER(system, KVM_GET_MSR_FEATURE_INDEX_LIST, ::vcpu::kvm::detail::msr_list_header_size);
/// 4.18 KVM_GET_MSRS on the system fd: reads feature MSRs (`KVM_CAP_GET_MSR_FEATURES`).
inline constexpr auto get_feature_msrs = VCPU_KVM_IOCTL_FLEX(system, KVM_GET_MSRS);
/// KVM_GET_EMULATED_CPUID: the CPUID bits KVM emulates (`struct kvm_cpuid2`).
inline constexpr auto get_emulated_cpuid = VCPU_KVM_IOCTL_FLEX(system, KVM_GET_EMULATED_CPUID);
#endif
} // namespace system

/// VM ioctls, on the fd `KVM_CREATE_VM` returned.
namespace vm {
/// 4.4 KVM_CHECK_EXTENSION (on a VM fd: answers for this VM, `KVM_CAP_CHECK_EXTENSION_VM`).
inline constexpr auto check_extension = VCPU_KVM_IOCTL(vm, KVM_CHECK_EXTENSION);
/// 4.7 KVM_CREATE_VCPU.
inline constexpr auto create_vcpu = VCPU_KVM_IOCTL(vm, KVM_CREATE_VCPU);
/// 4.35 KVM_SET_USER_MEMORY_REGION.
inline constexpr auto set_user_memory_region = VCPU_KVM_IOCTL(vm, KVM_SET_USER_MEMORY_REGION);
/// 4.24 KVM_CREATE_IRQCHIP.
inline constexpr auto create_irqchip = VCPU_KVM_IOCTL(vm, KVM_CREATE_IRQCHIP);
/// 4.25 KVM_IRQ_LINE.
inline constexpr auto irq_line = VCPU_KVM_IOCTL(vm, KVM_IRQ_LINE);
/// 4.59 KVM_IOEVENTFD.
inline constexpr auto ioeventfd = VCPU_KVM_IOCTL(vm, KVM_IOEVENTFD);
/// 4.75 KVM_IRQFD.
inline constexpr auto irqfd = VCPU_KVM_IOCTL(vm, KVM_IRQFD);
/// 4.116 KVM_REGISTER_COALESCED_MMIO.
inline constexpr auto register_coalesced_mmio = VCPU_KVM_IOCTL(vm, KVM_REGISTER_COALESCED_MMIO);
/// 4.116 KVM_UNREGISTER_COALESCED_MMIO.
inline constexpr auto unregister_coalesced_mmio =
    VCPU_KVM_IOCTL(vm, KVM_UNREGISTER_COALESCED_MMIO);
#if defined(__x86_64__)
/// 4.36 KVM_SET_TSS_ADDR.
inline constexpr auto set_tss_addr = VCPU_KVM_IOCTL(vm, KVM_SET_TSS_ADDR);
/// 4.40 KVM_SET_IDENTITY_MAP_ADDR.
inline constexpr auto set_identity_map_addr = VCPU_KVM_IOCTL(vm, KVM_SET_IDENTITY_MAP_ADDR);
/// 4.71 KVM_CREATE_PIT2.
inline constexpr auto create_pit2 = VCPU_KVM_IOCTL(vm, KVM_CREATE_PIT2);
// VM device state (kvm/x86_64_vm_state.hpp).
/// 4.26 KVM_GET_IRQCHIP.
inline constexpr auto get_irqchip = VCPU_KVM_IOCTL(vm, KVM_GET_IRQCHIP);
/// 4.27 KVM_SET_IRQCHIP.
inline constexpr auto set_irqchip = VCPU_KVM_IOCTL(vm, KVM_SET_IRQCHIP);
/// 4.72 KVM_GET_PIT2.
inline constexpr auto get_pit2 = VCPU_KVM_IOCTL(vm, KVM_GET_PIT2);
/// 4.73 KVM_SET_PIT2.
inline constexpr auto set_pit2 = VCPU_KVM_IOCTL(vm, KVM_SET_PIT2);
/// 4.29 KVM_GET_CLOCK.
inline constexpr auto get_clock = VCPU_KVM_IOCTL(vm, KVM_GET_CLOCK);
/// 4.30 KVM_SET_CLOCK.
inline constexpr auto set_clock = VCPU_KVM_IOCTL(vm, KVM_SET_CLOCK);
#endif
/// 4.80 KVM_CREATE_DEVICE (kvm/device.hpp).
inline constexpr auto create_device = VCPU_KVM_IOCTL(vm, KVM_CREATE_DEVICE);
// VM calls of kvm/vm_calls.hpp and kvm/dirty.hpp (docs/vm-calls.md).
/// KVM_ENABLE_CAP (KVM API section of that name; on a VM fd, `KVM_CAP_ENABLE_CAP_VM`).
inline constexpr auto enable_cap = VCPU_KVM_IOCTL(vm, KVM_ENABLE_CAP);
/// KVM_GET_DIRTY_LOG (KVM API section of that name).
inline constexpr auto get_dirty_log = VCPU_KVM_IOCTL(vm, KVM_GET_DIRTY_LOG);
/// KVM_CLEAR_DIRTY_LOG (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`).
inline constexpr auto clear_dirty_log = VCPU_KVM_IOCTL(vm, KVM_CLEAR_DIRTY_LOG);
/// KVM_RESET_DIRTY_RINGS (`KVM_CAP_DIRTY_LOG_RING`, KVM API 8 "KVM_CAP_DIRTY_LOG_RING").
inline constexpr auto reset_dirty_rings = VCPU_KVM_IOCTL(vm, KVM_RESET_DIRTY_RINGS);
/// KVM_SET_GSI_ROUTING: `struct kvm_irq_routing { __u32 nr, flags; entries[]; }`, whose C
/// header is 8 bytes.
inline constexpr auto set_gsi_routing = VCPU_KVM_IOCTL_FLEX(vm, KVM_SET_GSI_ROUTING);
/// KVM_SIGNAL_MSI (`KVM_CAP_SIGNAL_MSI`).
inline constexpr auto signal_msi = VCPU_KVM_IOCTL(vm, KVM_SIGNAL_MSI);
/// KVM_SET_USER_MEMORY_REGION2 (`KVM_CAP_USER_MEMORY2`; code from kvm/vm_abi.hpp when the UAPI
/// header predates it).
inline constexpr ioctl_def<fd_kind::vm> set_user_memory_region2{::vcpu::kvm::abi::set_user_memory_region2,
                                                                "KVM_SET_USER_MEMORY_REGION2"};
/// KVM_CREATE_GUEST_MEMFD (`KVM_CAP_GUEST_MEMFD`; kvm/vm_abi.hpp).
inline constexpr ioctl_def<fd_kind::vm> create_guest_memfd{::vcpu::kvm::abi::create_guest_memfd_code,
                                                           "KVM_CREATE_GUEST_MEMFD"};
/// KVM_SET_MEMORY_ATTRIBUTES (`KVM_CAP_MEMORY_ATTRIBUTES`; kvm/vm_abi.hpp).
inline constexpr ioctl_def<fd_kind::vm> set_memory_attributes{::vcpu::kvm::abi::set_memory_attributes,
                                                              "KVM_SET_MEMORY_ATTRIBUTES"};
/// arm64, 4.83 KVM_ARM_PREFERRED_TARGET: `_IOR(KVMIO, 0xaf, struct kvm_vcpu_init)`.
/// `struct kvm_vcpu_init` exists only in arm64's `<asm/kvm.h>`, so the code is built from the
/// arch mirror with the formula `<linux/kvm.h>` uses (checked against it on arm64 in
/// kvm/aarch64.hpp).
inline constexpr ioctl_def<fd_kind::vm> arm_preferred_target{
    _IOR(KVMIO, 0xaf, ::vcpu::aarch64::vcpu_init), "KVM_ARM_PREFERRED_TARGET"};
} // namespace vm

/// vCPU ioctls, on the fd `KVM_CREATE_VCPU` returned.
namespace vcpu {
/// 4.10 KVM_RUN.
inline constexpr auto run = VCPU_KVM_IOCTL(vcpu, KVM_RUN);
/// 4.69 KVM_GET_ONE_REG.
inline constexpr auto get_one_reg = VCPU_KVM_IOCTL(vcpu, KVM_GET_ONE_REG);
/// 4.68 KVM_SET_ONE_REG.
inline constexpr auto set_one_reg = VCPU_KVM_IOCTL(vcpu, KVM_SET_ONE_REG);
/// 4.17 KVM_SET_SIGNAL_MASK: the signal mask in effect while `KVM_RUN` runs the guest
/// (`struct kvm_signal_mask`: a `__u32 len`, then the set; 4 bytes in C).
inline constexpr auto set_signal_mask =
    VCPU_KVM_IOCTL_FLEX_HEADER(vcpu, KVM_SET_SIGNAL_MASK, ::vcpu::kvm::detail::signal_mask_header_size);
/// 4.84 KVM_GET_REG_LIST: the ONE_REG ids of this vCPU (`struct kvm_reg_list { __u64 n; __u64
/// reg[]; }`, whose 8-byte C header the UAPI C++ sizeof agrees with).
inline constexpr auto get_reg_list = VCPU_KVM_IOCTL(vcpu, KVM_GET_REG_LIST);
/// 4.16 KVM_INTERRUPT (RISC-V: raise or lower the external interrupt, kvm/riscv64.hpp).
inline constexpr auto interrupt = VCPU_KVM_IOCTL(vcpu, KVM_INTERRUPT);
/// arm64, 4.82 KVM_ARM_VCPU_INIT: `_IOW(KVMIO, 0xae, struct kvm_vcpu_init)` (built as
/// `vm::arm_preferred_target` is).
inline constexpr ioctl_def<fd_kind::vcpu> arm_vcpu_init{
    _IOW(KVMIO, 0xae, ::vcpu::aarch64::vcpu_init), "KVM_ARM_VCPU_INIT"};
/// arm64, 4.120 KVM_ARM_VCPU_FINALIZE (after init with SVE).
inline constexpr auto arm_vcpu_finalize = VCPU_KVM_IOCTL(vcpu, KVM_ARM_VCPU_FINALIZE);
/// 4.38 KVM_GET_MP_STATE.
inline constexpr auto get_mp_state = VCPU_KVM_IOCTL(vcpu, KVM_GET_MP_STATE);
/// 4.39 KVM_SET_MP_STATE.
inline constexpr auto set_mp_state = VCPU_KVM_IOCTL(vcpu, KVM_SET_MP_STATE);
/// KVM_ENABLE_CAP on a vCPU fd (per-vCPU capabilities; `struct kvm_enable_cap`).
inline constexpr auto enable_cap = VCPU_KVM_IOCTL(vcpu, KVM_ENABLE_CAP);
/// KVM_SET_GUEST_DEBUG: `struct kvm_guest_debug` with this host arch's debug registers.
inline constexpr auto set_guest_debug = VCPU_KVM_IOCTL(vcpu, KVM_SET_GUEST_DEBUG);
#if defined(__x86_64__)
/// 4.11 KVM_GET_REGS.
inline constexpr auto get_regs = VCPU_KVM_IOCTL(vcpu, KVM_GET_REGS);
/// 4.12 KVM_SET_REGS.
inline constexpr auto set_regs = VCPU_KVM_IOCTL(vcpu, KVM_SET_REGS);
/// 4.13 KVM_GET_SREGS.
inline constexpr auto get_sregs = VCPU_KVM_IOCTL(vcpu, KVM_GET_SREGS);
/// 4.14 KVM_SET_SREGS.
inline constexpr auto set_sregs = VCPU_KVM_IOCTL(vcpu, KVM_SET_SREGS);
/// 4.31 KVM_GET_VCPU_EVENTS.
inline constexpr auto get_vcpu_events = VCPU_KVM_IOCTL(vcpu, KVM_GET_VCPU_EVENTS);
/// 4.32 KVM_SET_VCPU_EVENTS.
inline constexpr auto set_vcpu_events = VCPU_KVM_IOCTL(vcpu, KVM_SET_VCPU_EVENTS);
/// 4.33 KVM_GET_DEBUGREGS.
inline constexpr auto get_debugregs = VCPU_KVM_IOCTL(vcpu, KVM_GET_DEBUGREGS);
/// 4.34 KVM_SET_DEBUGREGS.
inline constexpr auto set_debugregs = VCPU_KVM_IOCTL(vcpu, KVM_SET_DEBUGREGS);
/// 4.18 KVM_GET_MSRS.
inline constexpr auto get_msrs = VCPU_KVM_IOCTL_FLEX(vcpu, KVM_GET_MSRS);
/// 4.19 KVM_SET_MSRS.
inline constexpr auto set_msrs = VCPU_KVM_IOCTL_FLEX(vcpu, KVM_SET_MSRS);
/// KVM_SET_CPUID2 (KVM API section "KVM_SET_CPUID2", x86 vcpu ioctl).
inline constexpr auto set_cpuid2 = VCPU_KVM_IOCTL_FLEX(vcpu, KVM_SET_CPUID2);
/// 4.22 KVM_GET_FPU.
inline constexpr auto get_fpu = VCPU_KVM_IOCTL(vcpu, KVM_GET_FPU);
/// 4.23 KVM_SET_FPU.
inline constexpr auto set_fpu = VCPU_KVM_IOCTL(vcpu, KVM_SET_FPU);
/// 4.42 KVM_GET_XSAVE (4096 bytes; the code carries the C size, see `detail::xsave_header_size`).
inline constexpr auto get_xsave =
    VCPU_KVM_IOCTL_FLEX_HEADER(vcpu, KVM_GET_XSAVE, ::vcpu::kvm::detail::xsave_header_size);
/// 4.43 KVM_SET_XSAVE (reads as many bytes as KVM_CAP_XSAVE2 reports, at least 4096).
inline constexpr auto set_xsave =
    VCPU_KVM_IOCTL_FLEX_HEADER(vcpu, KVM_SET_XSAVE, ::vcpu::kvm::detail::xsave_header_size);
/// 4.136 KVM_GET_XSAVE2 (writes as many bytes as KVM_CAP_XSAVE2 reports).
inline constexpr auto get_xsave2 =
    VCPU_KVM_IOCTL_FLEX_HEADER(vcpu, KVM_GET_XSAVE2, ::vcpu::kvm::detail::xsave_header_size);
/// 4.44 KVM_GET_XCRS.
inline constexpr auto get_xcrs = VCPU_KVM_IOCTL(vcpu, KVM_GET_XCRS);
/// 4.45 KVM_SET_XCRS.
inline constexpr auto set_xcrs = VCPU_KVM_IOCTL(vcpu, KVM_SET_XCRS);
/// 4.57 KVM_GET_LAPIC (needs the in-kernel irqchip, else ENXIO).
inline constexpr auto get_lapic = VCPU_KVM_IOCTL(vcpu, KVM_GET_LAPIC);
/// 4.58 KVM_SET_LAPIC.
inline constexpr auto set_lapic = VCPU_KVM_IOCTL(vcpu, KVM_SET_LAPIC);
/// 4.55 KVM_GET_TSC_KHZ: the frequency is the ioctl's return value.
inline constexpr auto get_tsc_khz = VCPU_KVM_IOCTL(vcpu, KVM_GET_TSC_KHZ);
/// 4.56 KVM_SET_TSC_KHZ: the frequency is the integer argument.
inline constexpr auto set_tsc_khz = VCPU_KVM_IOCTL(vcpu, KVM_SET_TSC_KHZ);
/// KVM_GET_CPUID2 (x86): the vCPU's CPUID as KVM_SET_CPUID2 set it (`struct kvm_cpuid2`).
inline constexpr auto get_cpuid2 = VCPU_KVM_IOCTL_FLEX(vcpu, KVM_GET_CPUID2);
/// KVM_TRANSLATE: a guest virtual address through the vCPU's current page tables.
inline constexpr auto translate = VCPU_KVM_IOCTL(vcpu, KVM_TRANSLATE);
/// KVM_NMI: queue an NMI on the vCPU.
inline constexpr auto nmi = VCPU_KVM_IOCTL(vcpu, KVM_NMI);
/// KVM_SMI: queue an SMI (`KVM_CAP_X86_SMM`).
inline constexpr auto smi = VCPU_KVM_IOCTL(vcpu, KVM_SMI);
/// KVM_KVMCLOCK_CTRL: tell the guest's kvmclock the vCPU was paused.
inline constexpr auto kvmclock_ctrl = VCPU_KVM_IOCTL(vcpu, KVM_KVMCLOCK_CTRL);
/// KVM_GET_NESTED_STATE (`KVM_CAP_NESTED_STATE`): a 128-byte header, then the data
/// (`struct kvm_nested_state`, whose C and C++ sizes agree: the data arrays have zero length).
inline constexpr auto get_nested_state = VCPU_KVM_IOCTL(vcpu, KVM_GET_NESTED_STATE);
/// KVM_SET_NESTED_STATE.
inline constexpr auto set_nested_state = VCPU_KVM_IOCTL(vcpu, KVM_SET_NESTED_STATE);
#endif
} // namespace vcpu

/// Device ioctls, on the fd `KVM_CREATE_DEVICE` returned (kvm/device.hpp).
namespace device {
/// 4.81 KVM_SET_DEVICE_ATTR.
inline constexpr auto set_attr = VCPU_KVM_IOCTL(device, KVM_SET_DEVICE_ATTR);
/// 4.81 KVM_GET_DEVICE_ATTR.
inline constexpr auto get_attr = VCPU_KVM_IOCTL(device, KVM_GET_DEVICE_ATTR);
/// 4.81 KVM_HAS_DEVICE_ATTR.
inline constexpr auto has_attr = VCPU_KVM_IOCTL(device, KVM_HAS_DEVICE_ATTR);
} // namespace device

/// Every entry of one fd kind, for the uniqueness checks below and for tools
/// that print the table.
template <fd_kind K, std::size_t N>
using table = std::array<ioctl_def<K>, N>;

/// Every system-fd ioctl the library issues (checked unique at compile time).
inline constexpr auto system_table = std::to_array<ioctl_def<fd_kind::system>>({
    system::get_api_version, system::create_vm, system::check_extension, system::get_vcpu_mmap_size,
#if defined(__x86_64__)
    system::get_supported_cpuid, system::get_msr_index_list, system::get_msr_feature_index_list,
    system::get_feature_msrs, system::get_emulated_cpuid,
#endif
});

/// Every VM-fd ioctl the library issues (checked unique at compile time).
inline constexpr auto vm_table = std::to_array<ioctl_def<fd_kind::vm>>({
    vm::check_extension, vm::create_vcpu, vm::set_user_memory_region, vm::create_irqchip, vm::irq_line,
    vm::ioeventfd, vm::irqfd, vm::register_coalesced_mmio, vm::unregister_coalesced_mmio,
    vm::create_device, vm::arm_preferred_target,
    vm::enable_cap, vm::get_dirty_log, vm::clear_dirty_log, vm::reset_dirty_rings, vm::set_gsi_routing,
    vm::signal_msi, vm::set_user_memory_region2, vm::create_guest_memfd, vm::set_memory_attributes,
#if defined(__x86_64__)
    vm::set_tss_addr, vm::set_identity_map_addr, vm::create_pit2,
    vm::get_irqchip, vm::set_irqchip, vm::get_pit2, vm::set_pit2, vm::get_clock, vm::set_clock,
#endif
});

/// Every vCPU-fd ioctl the library issues (checked unique at compile time).
inline constexpr auto vcpu_table = std::to_array<ioctl_def<fd_kind::vcpu>>({
    vcpu::run, vcpu::get_one_reg, vcpu::set_one_reg, vcpu::set_signal_mask, vcpu::get_reg_list,
    vcpu::interrupt, vcpu::arm_vcpu_init, vcpu::arm_vcpu_finalize, vcpu::get_mp_state, vcpu::set_mp_state,
    vcpu::enable_cap, vcpu::set_guest_debug,
#if defined(__x86_64__)
    vcpu::get_regs, vcpu::set_regs, vcpu::get_sregs, vcpu::set_sregs, vcpu::get_vcpu_events,
    vcpu::set_vcpu_events, vcpu::get_debugregs, vcpu::set_debugregs, vcpu::get_msrs, vcpu::set_msrs,
    vcpu::set_cpuid2, vcpu::get_fpu, vcpu::set_fpu, vcpu::get_xsave, vcpu::set_xsave, vcpu::get_xsave2,
    vcpu::get_xcrs, vcpu::set_xcrs, vcpu::get_lapic, vcpu::set_lapic, vcpu::get_tsc_khz, vcpu::set_tsc_khz,
    vcpu::get_cpuid2, vcpu::translate, vcpu::nmi, vcpu::smi, vcpu::kvmclock_ctrl, vcpu::get_nested_state,
    vcpu::set_nested_state,
#endif
});

/// Every device-fd ioctl the library issues (checked unique at compile time).
inline constexpr auto device_table =
    std::to_array<ioctl_def<fd_kind::device>>({device::set_attr, device::get_attr, device::has_attr});

namespace detail {
/// True when no two entries share a request code or a name.
template <fd_kind K, std::size_t N>
constexpr bool unique(const table<K, N>& t) noexcept {
    for (std::size_t i = 0; i < N; ++i) {
        if (t[i].code == 0 || std::string_view(t[i].name).substr(0, 4) != "KVM_") return false;
        for (std::size_t j = i + 1; j < N; ++j)
            if (t[i].code == t[j].code || std::string_view(t[i].name) == t[j].name) return false;
    }
    return true;
}
} // namespace detail

static_assert(detail::unique(system_table), "kvm: duplicate or malformed system ioctl entry");
static_assert(detail::unique(vm_table), "kvm: duplicate or malformed VM ioctl entry");
static_assert(detail::unique(vcpu_table), "kvm: duplicate or malformed vCPU ioctl entry");
static_assert(detail::unique(device_table), "kvm: duplicate or malformed device ioctl entry");

static_assert(_IOC_SIZE(vm::set_gsi_routing.code) == ::vcpu::kvm::abi::irq_routing_header_size &&
              _IOC_NR(vm::set_gsi_routing.code) == _IOC_NR(KVM_SET_GSI_ROUTING) &&
              _IOC_DIR(vm::set_gsi_routing.code) == _IOC_DIR(KVM_SET_GSI_ROUTING));

static_assert(_IOC_SIZE(vcpu::set_signal_mask.code) == 4 &&
              _IOC_NR(vcpu::set_signal_mask.code) == _IOC_NR(KVM_SET_SIGNAL_MASK));

#if defined(__x86_64__)
// The flexible-array ioctls carry the C size of their header (8), whatever the
// UAPI header's C++ sizeof says, and keep the header's direction, type and number.
static_assert(_IOC_SIZE(system::get_supported_cpuid.code) == 8 &&
              _IOC_NR(system::get_supported_cpuid.code) == _IOC_NR(KVM_GET_SUPPORTED_CPUID) &&
              _IOC_DIR(system::get_supported_cpuid.code) == _IOC_DIR(KVM_GET_SUPPORTED_CPUID));
static_assert(_IOC_SIZE(vcpu::get_msrs.code) == 8 && _IOC_NR(vcpu::get_msrs.code) == _IOC_NR(KVM_GET_MSRS));
static_assert(_IOC_SIZE(vcpu::set_msrs.code) == 8 && _IOC_NR(vcpu::set_msrs.code) == _IOC_NR(KVM_SET_MSRS));
static_assert(_IOC_SIZE(vcpu::set_cpuid2.code) == 8 && _IOC_NR(vcpu::set_cpuid2.code) == _IOC_NR(KVM_SET_CPUID2));
static_assert(_IOC_SIZE(vcpu::get_cpuid2.code) == 8 && _IOC_NR(vcpu::get_cpuid2.code) == _IOC_NR(KVM_GET_CPUID2));
static_assert(_IOC_SIZE(system::get_emulated_cpuid.code) == 8 &&
              _IOC_NR(system::get_emulated_cpuid.code) == _IOC_NR(KVM_GET_EMULATED_CPUID));
static_assert(_IOC_SIZE(system::get_feature_msrs.code) == 8 && system::get_feature_msrs.code == vcpu::get_msrs.code);
static_assert(_IOC_SIZE(system::get_msr_feature_index_list.code) == 4 &&
              _IOC_NR(system::get_msr_feature_index_list.code) == _IOC_NR(KVM_GET_MSR_FEATURE_INDEX_LIST));
static_assert(_IOC_SIZE(vcpu::get_nested_state.code) == 128 && _IOC_SIZE(vcpu::set_nested_state.code) == 128,
              "kvm: struct kvm_nested_state's header must be 128 bytes in C++ as in C");
static_assert(_IOC_SIZE(system::get_msr_index_list.code) == 4 &&
              _IOC_NR(system::get_msr_index_list.code) == _IOC_NR(KVM_GET_MSR_INDEX_LIST) &&
              _IOC_DIR(system::get_msr_index_list.code) == _IOC_DIR(KVM_GET_MSR_INDEX_LIST));
static_assert(_IOC_SIZE(vcpu::get_xsave.code) == 4096 && _IOC_NR(vcpu::get_xsave.code) == _IOC_NR(KVM_GET_XSAVE) &&
              _IOC_DIR(vcpu::get_xsave.code) == _IOC_DIR(KVM_GET_XSAVE));
static_assert(_IOC_SIZE(vcpu::set_xsave.code) == 4096 && _IOC_NR(vcpu::set_xsave.code) == _IOC_NR(KVM_SET_XSAVE) &&
              _IOC_DIR(vcpu::set_xsave.code) == _IOC_DIR(KVM_SET_XSAVE));
static_assert(_IOC_SIZE(vcpu::get_xsave2.code) == 4096 && _IOC_NR(vcpu::get_xsave2.code) == _IOC_NR(KVM_GET_XSAVE2) &&
              _IOC_DIR(vcpu::get_xsave2.code) == _IOC_DIR(KVM_GET_XSAVE2));
#endif

} // namespace vcpu::kvm::ioctls
