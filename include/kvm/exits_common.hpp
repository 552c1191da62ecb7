#pragma once
/// \file
/// Decoding of the `kvm_run` exits whose layout and meaning are the same on
/// every architecture (Documentation/virt/kvm/api.rst §5): MMIO, system
/// events, failed entry, internal errors, signals, a full dirty ring, memory
/// faults, and unknown reasons. Each architecture's decoder handles its own
/// reasons first and hands the rest to `kvm::decode_common`, so the checks on
/// guest-influenced sizes live in one place.

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/run.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::kvm {

/// `KVM_SYSTEM_EVENT_*` → `system_event::kind`.
[[nodiscard]] constexpr system_event::kind system_event_kind(std::uint32_t t) noexcept {
    switch (t) {
    case KVM_SYSTEM_EVENT_SHUTDOWN: return system_event::kind::power_off;
    case KVM_SYSTEM_EVENT_RESET: return system_event::kind::reset;
    case KVM_SYSTEM_EVENT_CRASH: return system_event::kind::crash;
    case KVM_SYSTEM_EVENT_WAKEUP: return system_event::kind::wakeup;
    case KVM_SYSTEM_EVENT_SUSPEND: return system_event::kind::suspend;
    default: return system_event::kind::other;
    }
}

/// The `kvm_run` of `v`, or null after visiting a `malformed_exit` when the
/// mapping cannot hold a whole `struct kvm_run`.
template <class Visitor>
[[nodiscard]] ::kvm_run* checked_run(const run_view& v, Visitor& visit) noexcept {
    if (v.mapped < sizeof(::kvm_run) || v.run == nullptr) {
        ::vcpu::detail::malformed(visit, malformed_exit::why::io_out_of_bounds, 0, v.mapped);
        return nullptr;
    }
    return v.run;
}

/// `KVM_EXIT_INTERNAL_ERROR` as the generic `internal_error`; `ndata` larger
/// than the array is malformed.
template <class Visitor>
void decode_internal_error(::kvm_run& r, Visitor& visit) noexcept {
    const auto nd = r.internal.ndata;
    if (nd > std::size(r.internal.data)) {
        ::vcpu::detail::malformed(visit, malformed_exit::why::ndata, KVM_EXIT_INTERNAL_ERROR, nd);
        return;
    }
    internal_error e{r.internal.suberror, std::span<const record_u64>(r.internal.data, nd)};
    visit(e);
}

/// Decodes every architecture-neutral exit reason of `r`; any other reason
/// becomes `unknown` (with `hardware_exit_reason` for `KVM_EXIT_UNKNOWN`).
template <class Visitor>
void decode_common(::kvm_run& r, Visitor& visit, std::uint32_t requests = 0) noexcept {
    using why = malformed_exit::why;
    const std::uint32_t reason = r.exit_reason;
    switch (reason) {
    case KVM_EXIT_MMIO: {
        const auto len = r.mmio.len;
        if (len == 0 || len > sizeof(r.mmio.data)) {
            ::vcpu::detail::malformed(visit, why::mmio_size, reason, len);
            return;
        }
        mmio e{r.mmio.phys_addr, static_cast<std::uint8_t>(len),
               r.mmio.is_write ? direction::out : direction::in,
               std::span<std::byte>(reinterpret_cast<std::byte*>(r.mmio.data), len)};
        visit(e);
        return;
    }
    case KVM_EXIT_SYSTEM_EVENT: {
        const auto nd = r.system_event.ndata;
        if (nd > std::size(r.system_event.data)) {
            ::vcpu::detail::malformed(visit, why::event_ndata, reason, nd);
            return;
        }
        system_event e{};
        e.raw_type = r.system_event.type;
        e.what = system_event_kind(e.raw_type);
        e.ndata = static_cast<std::uint8_t>(nd < e.data.size() ? nd : e.data.size());
        for (std::size_t i = 0; i < e.ndata; ++i) e.data[i] = r.system_event.data[i];
        visit(e);
        return;
    }
    case KVM_EXIT_INTR: {
        interrupted e{requests};
        visit(e);
        return;
    }
    case KVM_EXIT_FAIL_ENTRY: {
        fail_entry e{r.fail_entry.hardware_entry_failure_reason, r.fail_entry.cpu};
        visit(e);
        return;
    }
    case KVM_EXIT_INTERNAL_ERROR: decode_internal_error(r, visit); return;
    case KVM_EXIT_DIRTY_RING_FULL: {
        dirty_ring_full e{};
        visit(e);
        return;
    }
#ifdef KVM_EXIT_MEMORY_FAULT
    case KVM_EXIT_MEMORY_FAULT: {
        nested_page_fault e{};
        e.address = r.memory_fault.gpa;
        e.size = r.memory_fault.size;
        e.syndrome = r.memory_fault.flags;
        visit(e);
        return;
    }
#endif
    default: {
        unknown e{reason, reason == KVM_EXIT_UNKNOWN ? r.hw.hardware_exit_reason : 0};
        visit(e);
        return;
    }
    }
}

} // namespace vcpu::kvm
