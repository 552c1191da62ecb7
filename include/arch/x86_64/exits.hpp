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
#include <vcpu/kvm_exits.hpp>
#include <vcpu/kvm_record.hpp>
#include <vcpu/meta.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu::x86_64 {

/// `KVM_EXIT_EXCEPTION`: the guest raised an exception KVM hands to userspace.
struct exception {
    std::uint32_t vector = 0;
    std::uint32_t error_code = 0;
};

/// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt now
/// (requested with `request_interrupt_window`).
struct irq_window_open {
    bool if_flag = false;
};

/// `KVM_EXIT_SET_TPR`: the guest wrote CR8/TPR (userspace local APIC).
struct set_tpr {
    std::uint64_t cr8 = 0;
};

/// `KVM_EXIT_TPR_ACCESS`: TPR access reporting.
struct tpr_access {
    std::uint64_t rip = 0;
    bool write = false;
};

/// `KVM_EXIT_NMI`.
struct nmi {};

/// `KVM_EXIT_IOAPIC_EOI`: the guest acknowledged a level-triggered vector
/// (split irqchip).
struct ioapic_eoi {
    std::uint8_t vector = 0;
};

/// `KVM_EXIT_X86_BUS_LOCK`: the guest took a split lock.
struct bus_lock {};

/// `KVM_EXIT_NOTIFY`: the guest stayed in a non-interruptible window too long.
struct notify {
    std::uint32_t flags = 0; ///< `KVM_NOTIFY_CONTEXT_INVALID`: VM context is lost
};

/// `KVM_EXIT_AP_RESET_HOLD` (SEV-ES): an AP is parked until the BSP wakes it.
struct ap_reset_hold {};

/// `KVM_EXIT_HYPERV` / `KVM_EXIT_XEN`: a paravirtual interface exit; the
/// payload is the kernel's struct (`kvm_hyperv_exit` / `kvm_xen_exit`).
struct hyperv_exit {
    std::uint32_t type = 0;
    std::span<std::byte> payload;
};
struct xen_exit {
    std::uint32_t type = 0;
    std::span<std::byte> payload;
};

/// `KVM_EXIT_INTERNAL_ERROR` with `KVM_INTERNAL_ERROR_EMULATION` and the
/// instruction bytes: KVM's emulator could not run this instruction (on PVM
/// hosts: `cmpxchg16b`, `xsave`, `int3` at CPL0). A VMM can act on it, e.g.
/// inject #UD or #BP.
struct emulation_failure {
    std::uint64_t flags = 0;
    std::span<const std::uint8_t> insn; ///< up to 15 bytes
};

/// `struct kvm_debug_exit_arch` for x86.
struct debug_exit_layout {
    std::uint32_t exception;
    std::uint32_t pad;
    std::uint64_t pc, dr6, dr7;
};
static_assert(sizeof(debug_exit_layout) == 32);

/// Every exit type the x86-64 decoder can produce.
using exit_types =
    type_list<port_io, mmio, coalesced_write, sysreg, hypercall, halt, shutdown, system_event,
              nested_page_fault, interrupted, fail_entry, internal_error, debug, dirty_ring_full,
              unknown, malformed_exit, exception, irq_window_open, set_tpr, tpr_access, nmi,
              ioapic_eoi, bus_lock, notify, ap_reset_hold, hyperv_exit, xen_exit,
              emulation_failure>;

namespace detail {

/// Bytes of the `kvm_run` exit union (the part after the fixed header).
[[nodiscard]] inline std::span<std::byte> exit_union(const kvm_run_view& v) noexcept {
    constexpr std::size_t off = offsetof(::kvm_run, io);
    constexpr std::size_t len = sizeof(::kvm_run::io) > 256 ? sizeof(::kvm_run::io) : 256;
    return v.at(off, len);
}
} // namespace detail

/// Decodes one `kvm_run` exit and hands the typed exit to `visit` (exactly
/// once). Precondition: `v.run` points at `v.mapped >= sizeof(kvm_run)`
/// readable bytes; a smaller mapping decodes to `malformed_exit`.
template <class Visitor>
[[gnu::always_inline]] inline void decode(const kvm_run_view& v, Visitor&& visit) noexcept {
    using why = malformed_exit::why;
    ::kvm_run* rp = kvm_common::checked_run(v, visit);
    if (rp == nullptr) return;
    ::kvm_run& r = *rp;
    const std::uint32_t reason = r.exit_reason;
    switch (reason) {
    case KVM_EXIT_IO: {
        const auto size = r.io.size;
        const auto count = r.io.count;
        if (size != 1 && size != 2 && size != 4) {
            ::vcpu::detail::malformed(visit, why::io_size, reason, size);
            return;
        }
        if (count == 0) {
            ::vcpu::detail::malformed(visit, why::io_count, reason, 0);
            return;
        }
        const std::uint64_t len = std::uint64_t{size} * count; // <= 4 * 2^32: no overflow
        auto data = v.at(r.io.data_offset, len);
        if (data.size() != len) {
            ::vcpu::detail::malformed(visit, why::io_out_of_bounds, reason, r.io.data_offset);
            return;
        }
        port_io e{r.io.port, size, count,
                  r.io.direction == KVM_EXIT_IO_IN ? direction::in : direction::out, data};
        visit(e);
        return;
    }
    case KVM_EXIT_HLT: {
        halt e{};
        visit(e);
        return;
    }
    case KVM_EXIT_SHUTDOWN: {
        shutdown e{};
        visit(e);
        return;
    }
    case KVM_EXIT_HYPERCALL: {
        hypercall e{r.hypercall.nr, {}, &r.hypercall.ret, nullptr};
        for (std::size_t i = 0; i < 6; ++i) e.args[i] = r.hypercall.args[i];
        visit(e);
        return;
    }
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR: {
        const bool wr = reason == KVM_EXIT_X86_WRMSR;
        sysreg e{r.msr.index, wr ? direction::out : direction::in, wr ? r.msr.data : 0,
                 wr ? nullptr : &r.msr.data, &r.msr.error, 0xff, r.msr.reason};
        visit(e);
        return;
    }
    case KVM_EXIT_INTERNAL_ERROR: {
        const auto nd = r.internal.ndata;
        if (nd > std::size(r.internal.data)) {
            ::vcpu::detail::malformed(visit, why::ndata, reason, nd);
            return;
        }
        // The emulation-failure overlay: flags = data[0], then insn_size and
        // 15 instruction bytes in data[1..2] (ABI since Linux 5.14).
        if (r.internal.suberror == KVM_INTERNAL_ERROR_EMULATION && nd >= 3 &&
            (r.internal.data[0] & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0) {
            const auto* bytes = reinterpret_cast<const std::uint8_t*>(&r.internal.data[1]);
            const std::uint8_t n = bytes[0];
            if (n <= 15) {
                emulation_failure e{r.internal.data[0], std::span<const std::uint8_t>(bytes + 1, n)};
                visit(e);
                return;
            }
        }
        kvm_common::internal(r, visit);
        return;
    }
    case KVM_EXIT_DEBUG: {
        debug_exit_layout d{};
        std::memcpy(&d, &r.debug, sizeof d);
        debug e{d.pc, d.exception, d.dr6, d.dr7, 0};
        visit(e);
        return;
    }
    case KVM_EXIT_EXCEPTION: {
        exception e{r.ex.exception, r.ex.error_code};
        visit(e);
        return;
    }
    case KVM_EXIT_IRQ_WINDOW_OPEN: {
        irq_window_open e{r.if_flag != 0};
        visit(e);
        return;
    }
    case KVM_EXIT_SET_TPR: {
        set_tpr e{r.cr8};
        visit(e);
        return;
    }
    case KVM_EXIT_TPR_ACCESS: {
        tpr_access e{r.tpr_access.rip, r.tpr_access.is_write != 0};
        visit(e);
        return;
    }
    case KVM_EXIT_NMI: {
        nmi e{};
        visit(e);
        return;
    }
    case KVM_EXIT_IOAPIC_EOI: {
        ioapic_eoi e{r.eoi.vector};
        visit(e);
        return;
    }
    case KVM_EXIT_X86_BUS_LOCK: {
        bus_lock e{};
        visit(e);
        return;
    }
    case KVM_EXIT_NOTIFY: {
        notify e{r.notify.flags};
        visit(e);
        return;
    }
    case KVM_EXIT_AP_RESET_HOLD: {
        ap_reset_hold e{};
        visit(e);
        return;
    }
    case KVM_EXIT_HYPERV: {
        hyperv_exit e{r.hyperv.type, detail::exit_union(v)};
        visit(e);
        return;
    }
    case KVM_EXIT_XEN: {
        xen_exit e{r.xen.type, detail::exit_union(v)};
        visit(e);
        return;
    }
    default: kvm_common::decode(r, visit, v.requests); return;
    }
}

} // namespace vcpu::x86_64
