#pragma once
/// \file
/// What a KVM HAL vCPU is created with: the user's `vcpu_options`, and the `vcpu_setup` a VM
/// fills in from its capabilities (`basic_vm::create_hal_vcpu`, kvm/vm.hpp).

#include <vcpu/config.hpp>

#include <cstddef>
#include <cstdint>

namespace vcpu::kvm {

/// Per-vCPU choices made at creation.
struct vcpu_options {
    /// `KVM_SYNC_*` bits to request (x86: `KVM_SYNC_X86_REGS`,
    /// `KVM_SYNC_X86_SREGS`, `KVM_SYNC_X86_EVENTS`). Intersected with what
    /// `KVM_CAP_SYNC_REGS` reports and with the arch's synced blocks.
    /// Default: all. 0 forces the GET/SET ioctl path (for benchmarks).
    std::uint64_t sync_regs = ~std::uint64_t{0};
    /// Exits in a row without a `load`/`modify` of a synced block after which
    /// KVM stops storing it in `kvm_run` (until the next access). 0: never.
    std::uint32_t sync_idle_exits = 16;
};

/// What a VM tells a new vCPU (normally filled by `basic_vm::create_vcpu`).
struct vcpu_setup {
    int system_fd = -1;                 ///< `/dev/kvm`, not owned (x86 CPUID queries)
    std::size_t mmap_size = 0;          ///< `KVM_GET_VCPU_MMAP_SIZE`
    std::size_t page_size = 4096;       ///< host page size
    long coalesced_page_offset = 0;     ///< `KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO)`; 0 = none
    std::uint64_t kernel_sync_regs = 0; ///< `KVM_CHECK_EXTENSION(KVM_CAP_SYNC_REGS)`
    vcpu_options options{};  ///< sync-register choice
    unsigned id = 0;                    ///< the `KVM_CREATE_VCPU` id (named in errors)
};

} // namespace vcpu::kvm
