#pragma once
/// \file
/// x86-64 exits: the kinds that only x86 has, and the decoder from
/// `kvm_run` (Documentation/virt/kvm/api.rst §5 "The kvm_run structure").
///
/// Every `KVM_EXIT_*` that `<linux/kvm.h>` defines for x86 decodes to a typed
/// exit; anything else becomes `vcpu::unknown`. Every guest-influenced size,
/// count and offset is validated against the mapping before a view is made.

#include <arch/x86_64/abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>


#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu::x86_64 {

/// `KVM_EXIT_EXCEPTION`: the guest raised an exception KVM hands to userspace.
struct exception {
    std::uint32_t vector = 0;  ///< exception vector
    std::uint32_t error_code = 0;  ///< its error code (0 when it has none)
};

/// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt now
/// (requested with `request_interrupt_window`).
struct irq_window_open {
    bool if_flag = false;  ///< RFLAGS.IF: interrupts are enabled in the guest
};

/// `KVM_EXIT_SET_TPR`: the guest wrote CR8/TPR (userspace local APIC).
struct set_tpr {
    std::uint64_t cr8 = 0;  ///< the new TPR (CR8) value
};

/// `KVM_EXIT_TPR_ACCESS`: TPR access reporting.
struct tpr_access {
    std::uint64_t rip = 0;  ///< RIP of the access
    bool write = false;  ///< true for a write
};

/// `KVM_EXIT_NMI`.
struct nmi {};

/// `KVM_EXIT_IOAPIC_EOI`: the guest acknowledged a level-triggered vector
/// (split irqchip).
struct ioapic_eoi {
    std::uint8_t vector = 0;  ///< the vector acknowledged
};

/// `KVM_EXIT_X86_BUS_LOCK`: the guest took a split lock.
struct bus_lock {};

/// `KVM_EXIT_NOTIFY`: the guest stayed in a non-interruptible window too long.
struct notify {
    std::uint32_t flags = 0; ///< `KVM_NOTIFY_CONTEXT_INVALID`: VM context is lost
};

/// `KVM_EXIT_AP_RESET_HOLD` (SEV-ES): an AP is parked until the BSP wakes it.
struct ap_reset_hold {};

/// `KVM_EXIT_HYPERV`: a Hyper-V paravirtual interface exit; the
/// payload is the kernel's `struct kvm_hyperv_exit`.
struct hyperv_exit {
    std::uint32_t type = 0;  ///< `kvm_hyperv_exit::type` (`KVM_EXIT_HYPERV_SYNIC`, `_HCALL`, `_SYNDBG`)
    std::span<std::byte> payload;  ///< the `kvm_run` exit union; read and write it as `struct kvm_hyperv_exit`
};
/// `KVM_EXIT_XEN`: a Xen hypercall (`KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`); see `hyperv_exit`.
struct xen_exit {
    std::uint32_t type = 0;  ///< `kvm_xen_exit::type` (`KVM_EXIT_XEN_HCALL`)
    std::span<std::byte> payload;  ///< the `kvm_run` exit union; read and write it as `struct kvm_xen_exit` (e.g. `u.hcall.result`)
};

/// `KVM_EXIT_INTERNAL_ERROR` with `KVM_INTERNAL_ERROR_EMULATION` and the
/// instruction bytes: KVM's emulator could not run this instruction (on PVM
/// hosts: `cmpxchg16b`, `xsave`, `int3` at CPL0). A VMM can act on it, e.g.
/// inject \#UD or \#BP.
struct emulation_failure {
    std::uint64_t flags = 0;  ///< `KVM_INTERNAL_ERROR_EMULATION_FLAG_*` (bit 0: instruction bytes are valid)
    std::span<const std::uint8_t> insn; ///< up to 15 bytes
};

/// Every exit type the x86-64 decoder can produce.
using exit_types =
    type_list<port_io, mmio, coalesced_write, sysreg, hypercall, halt, shutdown, system_event,
              nested_page_fault, interrupted, fail_entry, internal_error, debug, dirty_ring_full,
              unknown, malformed_exit, exception, irq_window_open, set_tpr, tpr_access, nmi,
              ioapic_eoi, bus_lock, notify, ap_reset_hold, hyperv_exit, xen_exit,
              emulation_failure>;

} // namespace vcpu::x86_64
