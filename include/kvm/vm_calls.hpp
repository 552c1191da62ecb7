#pragma once
/// \file
/// The VM-level KVM calls a VMM makes beyond creating slots and vCPUs, typed: capabilities it
/// enables (KVM_ENABLE_CAP), guest_memfd and memory attributes, interrupt routing and MSIs, and
/// a vCPU's signal mask. Each is a free function on a `basic_vm<Sys>` (or a `hal_vcpu`), goes
/// through the ioctl table (kvm/ioctls.hpp) and the `Sys` seam, checks its typed arguments
/// before the ioctl the way the kernel will (so a mistake reads as a sentence with the values,
/// not a bare EINVAL), and returns `result<T>` whose error names the ioctl, the errno and the
/// values that explain it. Dirty tracking is in kvm/dirty.hpp; the memory slot calls
/// (`set_memory`, `set_memory2`) and the eventfd calls (`ioeventfd`, `irqfd`,
/// `irqfd_resample`) are members of `basic_vm` (kvm/vm.hpp). docs/vm-calls.md has the table.
///
/// A capability the host lacks is EOPNOTSUPP with "host kernel lacks KVM_CAP_..." in the
/// detail; capability checks cost one KVM_CHECK_EXTENSION each. Setup path: `set_gsi_routing`
/// allocates its argument buffer; nothing here is meant for the run loop.

#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/kick.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm.hpp>
#include <kvm/vm_abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <variant>
#include <vector>

namespace vcpu::kvm {

namespace detail {
/// KVM_CHECK_EXTENSION(`cap`) on `vm`; EOPNOTSUPP "host kernel lacks <cap_name>" (named after
/// `io`, the call that needs it) when the host answers 0.
template <class Sys>
[[nodiscard]] result<int> require_cap(const basic_vm<Sys>& vm, long cap, const char* cap_name,
                                      ioctl_def<fd_kind::vm> io) noexcept {
    auto r = vm.check_extension(cap);
    if (!r) return r.err();
    if (*r <= 0) return error{io.name, EOPNOTSUPP, cap_name}.with("cap", cap);
    return r;
}
/// The EINVAL of flags `want` outside the host's supported mask `have`.
[[nodiscard]] inline error unsupported_flags(ioctl_def<fd_kind::vm> io, const char* what, long cap,
                                             std::uint64_t want, std::uint64_t have) noexcept {
    return error{io.name, EINVAL, what}.with("cap", cap).with_hex("requested", want).with_hex("supported", have);
}
} // namespace detail

// ---- KVM_ENABLE_CAP --------------------------------------------------------------------------

/// KVM API section "KVM_ENABLE_CAP" on the VM fd: turns on capability `cap` with its
/// capability-specific `args`. The typed wrappers below are what a VMM normally calls; this is
/// for capabilities they do not cover. Errors: "KVM_ENABLE_CAP", errno, the capability and
/// the arguments.
template <class Sys>
[[nodiscard]] result<void> enable_cap(const basic_vm<Sys>& vm, std::uint32_t cap,
                                      std::array<std::uint64_t, 4> args = {}) noexcept {
    constexpr auto io = ioctls::vm::enable_cap;
    ::kvm_enable_cap c{};
    c.cap = cap;
    for (std::size_t i = 0; i < args.size(); ++i) c.args[i] = args[i];
    if (Sys::ioctl(vm.fd(), io.code, &c) < 0)
        return last_error(io.name)
            .with("cap", cap)
            .with_hex("arg0", args[0])
            .with_hex("arg1", args[1])
            .with_hex("arg2", args[2])
            .with_hex("arg3", args[3]);
    return ok();
}

/// Manual dirty-log protection (KVM API 8 "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"): KVM_GET_DIRTY_LOG
/// stops re-protecting the pages it reports; the VMM re-protects them with KVM_CLEAR_DIRTY_LOG
/// (kvm/dirty.hpp), so it can copy a page before it is tracked again.
struct manual_dirty_log_protect {
    /// `KVM_DIRTY_LOG_INITIALLY_SET`: a new dirty-logging slot starts with every page reported
    /// dirty (and not write-protected), so enabling logging on a big slot is cheap.
    bool initially_set = false;
    /// The capability's argument (`KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE` and the options).
    [[nodiscard]] constexpr std::uint64_t bits() const noexcept {
        return KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (initially_set ? KVM_DIRTY_LOG_INITIALLY_SET : 0);
    }
};

/// Enables manual dirty-log protection with `opt`. Checked first: the host has the capability
/// (EOPNOTSUPP) and supports every requested bit (its KVM_CHECK_EXTENSION value is the mask;
/// EINVAL naming requested and supported bits).
template <class Sys>
[[nodiscard]] result<void> enable_manual_dirty_log_protect(const basic_vm<Sys>& vm,
                                                           manual_dirty_log_protect opt = {}) noexcept {
    constexpr long cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    auto have = detail::require_cap(vm, cap, "host kernel lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
                                    ioctls::vm::enable_cap);
    if (!have) return have.err();
    const auto mask = static_cast<std::uint64_t>(*have);
    if ((opt.bits() & ~mask) != 0)
        return detail::unsupported_flags(ioctls::vm::enable_cap, "manual-protect option the host does not support",
                                         cap, opt.bits(), mask);
    return enable_cap(vm, cap, {opt.bits(), 0, 0, 0});
}

/// The dirty ring a VM has (`enable_dirty_ring`): what each vCPU maps (kvm/dirty.hpp).
struct dirty_ring_config {
    std::size_t bytes = 0;     ///< ring size per vCPU, bytes (a power of two)
    std::uint32_t entries = 0; ///< `bytes / sizeof(struct kvm_dirty_gfn)`
    bool acq_rel = false;      ///< enabled as `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`
};

/// Which dirty-ring capability `enable_dirty_ring` enables.
enum class dirty_ring_ordering : std::uint8_t {
    acq_rel,   ///< `KVM_CAP_DIRTY_LOG_RING_ACQ_REL` (the only one on weakly ordered hosts)
    total,     ///< `KVM_CAP_DIRTY_LOG_RING` (x86: total store order)
    preferred, ///< ACQ_REL when the host has it, else the plain ring
};

/// Enables the per-vCPU dirty ring (KVM API 8 "KVM_CAP_DIRTY_LOG_RING"/"_ACQ_REL"), `bytes` per
/// vCPU. Call before creating any vCPU (the kernel refuses it after: EINVAL). Checked first:
/// the host has the chosen capability (EOPNOTSUPP "host kernel lacks ..."); `bytes` is a power
/// of two, at least one host page and at most the host's maximum (the capability's value:
/// E2BIG past it, EINVAL otherwise, naming the size and the maximum). The harvest
/// (`basic_dirty_ring::harvest`) uses acquire/release accesses in either mode, as the ACQ_REL
/// contract requires and the plain one allows.
template <class Sys>
[[nodiscard]] result<dirty_ring_config> enable_dirty_ring(const basic_vm<Sys>& vm, std::size_t bytes,
                                                          dirty_ring_ordering o = dirty_ring_ordering::preferred) noexcept {
    constexpr auto io = ioctls::vm::enable_cap;
    long cap = o == dirty_ring_ordering::total ? KVM_CAP_DIRTY_LOG_RING : KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
    auto max = vm.check_extension(cap);
    if (!max) return max.err();
    if (*max <= 0 && o == dirty_ring_ordering::preferred) {
        cap = KVM_CAP_DIRTY_LOG_RING;
        max = vm.check_extension(cap);
        if (!max) return max.err();
    }
    if (*max <= 0)
        return error{io.name, EOPNOTSUPP,
                     cap == KVM_CAP_DIRTY_LOG_RING ? "host kernel lacks KVM_CAP_DIRTY_LOG_RING"
                                                   : "host kernel lacks KVM_CAP_DIRTY_LOG_RING_ACQ_REL"}
            .with("cap", cap);
    const auto limit = static_cast<std::size_t>(*max);
    const std::size_t page = detail::host_page_size();
    if (bytes == 0 || (bytes & (bytes - 1)) != 0 || bytes < page)
        return error{io.name, EINVAL, "dirty ring size must be a power of two, at least one page"}
            .with("bytes", bytes)
            .with("page_size", page)
            .with("max_bytes", limit);
    if (bytes > limit)
        return error{io.name, E2BIG, "dirty ring size is above the host's maximum"}
            .with("bytes", bytes)
            .with("max_bytes", limit);
    if (auto r = enable_cap(vm, static_cast<std::uint32_t>(cap), {bytes, 0, 0, 0}); !r) return r.err();
    return dirty_ring_config{bytes, static_cast<std::uint32_t>(bytes / sizeof(::kvm_dirty_gfn)),
                             cap == KVM_CAP_DIRTY_LOG_RING_ACQ_REL};
}

#if defined(__x86_64__)
/// x86: the split irqchip (KVM API 8 "KVM_CAP_SPLIT_IRQCHIP"): local APICs in the kernel, PIC
/// and IOAPIC in user space; `ioapic_pins` GSIs are reserved for the user-space IOAPIC's
/// routes. Instead of `create_irqchip`, before creating vCPUs. Errors: EOPNOTSUPP without the
/// capability; the kernel's EINVAL (too many pins, an irqchip or vCPUs already there) with
/// the pin count.
template <class Sys>
[[nodiscard]] result<void> enable_split_irqchip(const basic_vm<Sys>& vm, std::uint32_t ioapic_pins = KVM_IOAPIC_NUM_PINS) noexcept {
    auto have = detail::require_cap(vm, KVM_CAP_SPLIT_IRQCHIP, "host kernel lacks KVM_CAP_SPLIT_IRQCHIP",
                                    ioctls::vm::enable_cap);
    if (!have) return have.err();
    return enable_cap(vm, KVM_CAP_SPLIT_IRQCHIP, {ioapic_pins, 0, 0, 0});
}

/// x86: the x2APIC API options (KVM API 8 "KVM_CAP_X2APIC_API").
struct x2apic_api {
    bool use_32bit_ids = false;           ///< `KVM_X2APIC_API_USE_32BIT_IDS`: full 32-bit APIC ids
    bool disable_broadcast_quirk = false; ///< `KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK`
    /// The capability's argument.
    [[nodiscard]] constexpr std::uint64_t bits() const noexcept {
        return (use_32bit_ids ? KVM_X2APIC_API_USE_32BIT_IDS : 0) |
               (disable_broadcast_quirk ? KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK : 0);
    }
};
/// x86: enables the x2APIC API options `opt`. Checked first: the capability (EOPNOTSUPP) and
/// that the host supports every option (EINVAL naming both masks).
template <class Sys>
[[nodiscard]] result<void> enable_x2apic_api(const basic_vm<Sys>& vm, x2apic_api opt) noexcept {
    auto have = detail::require_cap(vm, KVM_CAP_X2APIC_API, "host kernel lacks KVM_CAP_X2APIC_API",
                                    ioctls::vm::enable_cap);
    if (!have) return have.err();
    const auto mask = static_cast<std::uint64_t>(*have);
    if ((opt.bits() & ~mask) != 0)
        return detail::unsupported_flags(ioctls::vm::enable_cap, "x2APIC API option the host does not support",
                                         KVM_CAP_X2APIC_API, opt.bits(), mask);
    return enable_cap(vm, KVM_CAP_X2APIC_API, {opt.bits(), 0, 0, 0});
}

/// x86: exits the guest may no longer cause (KVM API 8 "KVM_CAP_X86_DISABLE_EXITS"): the
/// instruction then runs natively on the host CPU.
struct x86_disable_exits {
    bool mwait = false;  ///< `KVM_X86_DISABLE_EXITS_MWAIT`
    bool hlt = false;    ///< `KVM_X86_DISABLE_EXITS_HLT`
    bool pause = false;  ///< `KVM_X86_DISABLE_EXITS_PAUSE`
    bool cstate = false; ///< `KVM_X86_DISABLE_EXITS_CSTATE`
    /// The capability's argument.
    [[nodiscard]] constexpr std::uint64_t bits() const noexcept {
        return (mwait ? KVM_X86_DISABLE_EXITS_MWAIT : 0) | (hlt ? KVM_X86_DISABLE_EXITS_HLT : 0) |
               (pause ? KVM_X86_DISABLE_EXITS_PAUSE : 0) | (cstate ? KVM_X86_DISABLE_EXITS_CSTATE : 0);
    }
};
/// x86: disables the exits in `opt`, before creating vCPUs. Checked first: the capability
/// (EOPNOTSUPP) and that the host allows disabling each one (its value is the mask; EINVAL
/// naming both masks — MWAIT is only offered when the host CPU's MWAIT is usable by a guest).
template <class Sys>
[[nodiscard]] result<void> disable_exits(const basic_vm<Sys>& vm, x86_disable_exits opt) noexcept {
    auto have = detail::require_cap(vm, KVM_CAP_X86_DISABLE_EXITS, "host kernel lacks KVM_CAP_X86_DISABLE_EXITS",
                                    ioctls::vm::enable_cap);
    if (!have) return have.err();
    const auto mask = static_cast<std::uint64_t>(*have);
    if ((opt.bits() & ~mask) != 0)
        return detail::unsupported_flags(ioctls::vm::enable_cap, "exit the host cannot disable",
                                         KVM_CAP_X86_DISABLE_EXITS, opt.bits(), mask);
    return enable_cap(vm, KVM_CAP_X86_DISABLE_EXITS, {opt.bits(), 0, 0, 0});
}

/// x86: which failed guest RDMSR/WRMSR go to user space as `KVM_EXIT_X86_RDMSR/WRMSR` (KVM
/// API 8 "KVM_CAP_X86_USER_SPACE_MSR") instead of injecting a general-protection fault.
struct user_space_msr {
    bool inval = false;   ///< `KVM_MSR_EXIT_REASON_INVAL`: accesses KVM would fault
    bool unknown = false; ///< `KVM_MSR_EXIT_REASON_UNKNOWN`: MSRs KVM does not know
    bool filter = false;  ///< `KVM_MSR_EXIT_REASON_FILTER`: accesses an MSR filter denies
    /// The capability's argument (all false turns the exits off again).
    [[nodiscard]] constexpr std::uint64_t bits() const noexcept {
        return (inval ? KVM_MSR_EXIT_REASON_INVAL : 0) | (unknown ? KVM_MSR_EXIT_REASON_UNKNOWN : 0) |
               (filter ? KVM_MSR_EXIT_REASON_FILTER : 0);
    }
};
/// x86: sets the user-space MSR exit reasons `opt`. EOPNOTSUPP without the capability.
template <class Sys>
[[nodiscard]] result<void> enable_user_space_msr(const basic_vm<Sys>& vm, user_space_msr opt) noexcept {
    auto have = detail::require_cap(vm, KVM_CAP_X86_USER_SPACE_MSR, "host kernel lacks KVM_CAP_X86_USER_SPACE_MSR",
                                    ioctls::vm::enable_cap);
    if (!have) return have.err();
    return enable_cap(vm, KVM_CAP_X86_USER_SPACE_MSR, {opt.bits(), 0, 0, 0});
}
#endif

// ---- guest_memfd and memory attributes --------------------------------------------------------

/// KVM API section "KVM_CREATE_GUEST_MEMFD": a new guest_memfd of `size` bytes, private memory
/// a `memory_slot2` can name. Checked first: the VM has `KVM_CAP_GUEST_MEMFD` (EOPNOTSUPP "host
/// kernel lacks KVM_CAP_GUEST_MEMFD"; VM types without private memory say 0 on older hosts);
/// `size` is a non-zero multiple of the host page size (EINVAL). Errors carry size and flags.
template <class Sys>
[[nodiscard]] result<basic_fd<Sys>> create_guest_memfd(const basic_vm<Sys>& vm, std::uint64_t size,
                                                       std::uint64_t flags = 0) noexcept {
    constexpr auto io = ioctls::vm::create_guest_memfd;
    auto have = detail::require_cap(vm, abi::cap_guest_memfd, "host kernel lacks KVM_CAP_GUEST_MEMFD", io);
    if (!have) return have.err();
    const std::size_t page = detail::host_page_size();
    if (size == 0 || size % page != 0)
        return error{io.name, EINVAL, "size is not a non-zero multiple of the host page size"}
            .with("size", size)
            .with("page_size", page);
    abi::create_guest_memfd a{};
    a.size = size;
    a.flags = flags;
    const int fd = Sys::ioctl(vm.fd(), io.code, &a);
    if (fd < 0) return last_error(io.name).with("size", size).with_hex("flags", flags);
    return basic_fd<Sys>(fd);
}

/// KVM API section "KVM_SET_MEMORY_ATTRIBUTES": sets the attributes of the guest physical range
/// `[gpa, gpa + size)` (today only `abi::memory_attribute_private`: backed by the slot's
/// guest_memfd). Checked first: the VM supports each requested attribute
/// (`KVM_CAP_MEMORY_ATTRIBUTES` is the mask; EOPNOTSUPP "host kernel lacks
/// KVM_CAP_MEMORY_ATTRIBUTES" when it is 0, EINVAL naming both masks otherwise), the range is
/// page aligned, non-empty and does not wrap (EINVAL).
template <class Sys>
[[nodiscard]] result<void> set_memory_attributes(const basic_vm<Sys>& vm, std::uint64_t gpa, std::uint64_t size,
                                                 std::uint64_t attributes) noexcept {
    constexpr auto io = ioctls::vm::set_memory_attributes;
    auto have = detail::require_cap(vm, abi::cap_memory_attributes,
                                    "host kernel lacks KVM_CAP_MEMORY_ATTRIBUTES (for this VM type)", io);
    if (!have) return have.err();
    const auto mask = static_cast<std::uint64_t>(*have);
    if ((attributes & ~mask) != 0)
        return detail::unsupported_flags(io, "memory attribute the VM does not support", abi::cap_memory_attributes,
                                         attributes, mask);
    const std::size_t page = detail::host_page_size();
    if (size == 0 || gpa % page != 0 || size % page != 0 || gpa + size < gpa)
        return error{io.name, EINVAL, "range must be page aligned, non-empty and not wrap"}
            .with_range("gpa", gpa, size)
            .with("page_size", page);
    abi::memory_attributes a{};
    a.address = gpa;
    a.size = size;
    a.attributes = attributes;
    if (Sys::ioctl(vm.fd(), io.code, &a) < 0)
        return last_error(io.name).with_range("gpa", gpa, size).with_hex("attributes", attributes);
    return ok();
}

// ---- interrupt routing ------------------------------------------------------------------------

/// A GSI routed to a pin of an in-kernel irqchip (`KVM_IRQ_ROUTING_IRQCHIP`). x86 chips:
/// `KVM_IRQCHIP_PIC_MASTER` / `_PIC_SLAVE` (pins 0-7), `KVM_IRQCHIP_IOAPIC` (pins 0-23); arm64:
/// chip 0, the vGIC's SPI `pin`.
struct irqchip_route {
    std::uint32_t gsi = 0;     ///< the GSI (irqfd, KVM_IRQ_LINE number)
    std::uint32_t irqchip = 0; ///< which chip
    std::uint32_t pin = 0;     ///< which of its pins
};

/// An MSI: the message a device writes (`struct kvm_msi`, KVM_SIGNAL_MSI; a routing entry's
/// `kvm_irq_routing_msi`).
struct msi_message {
    std::uint64_t address = 0;           ///< the MSI address (x86: 0xfee..., the LAPIC window)
    std::uint32_t data = 0;              ///< the MSI data
    std::optional<std::uint32_t> devid; ///< requester id (`KVM_MSI_VALID_DEVID`; arm64 ITS needs it)
};

/// A GSI routed to an MSI (`KVM_IRQ_ROUTING_MSI`): signalling the GSI (irqfd) sends `msg`.
struct msi_route {
    std::uint32_t gsi = 0; ///< the GSI
    msi_message msg;       ///< the message it sends
};

/// One routing entry.
using gsi_route = std::variant<irqchip_route, msi_route>;

namespace detail {
/// The routing entry KVM reads for `r`.
[[nodiscard]] inline ::kvm_irq_routing_entry routing_entry(const gsi_route& r) noexcept {
    ::kvm_irq_routing_entry e{};
    if (const auto* c = std::get_if<irqchip_route>(&r)) {
        e.gsi = c->gsi;
        e.type = KVM_IRQ_ROUTING_IRQCHIP;
        e.u.irqchip.irqchip = c->irqchip;
        e.u.irqchip.pin = c->pin;
    } else {
        const auto& m = std::get<msi_route>(r);
        e.gsi = m.gsi;
        e.type = KVM_IRQ_ROUTING_MSI;
        e.u.msi.address_lo = static_cast<std::uint32_t>(m.msg.address);
        e.u.msi.address_hi = static_cast<std::uint32_t>(m.msg.address >> 32);
        e.u.msi.data = m.msg.data;
        if (m.msg.devid) {
            e.flags = KVM_MSI_VALID_DEVID;
            e.u.msi.devid = *m.msg.devid;
        }
    }
    return e;
}
/// The GSI of `r`.
[[nodiscard]] inline std::uint32_t route_gsi(const gsi_route& r) noexcept {
    return std::visit([](const auto& x) { return x.gsi; }, r);
}
} // namespace detail

/// KVM API section "KVM_SET_GSI_ROUTING": replaces the VM's whole GSI routing table with
/// `routes` (an empty span clears it). Needs an in-kernel irqchip (or a split one). Checked
/// first, with the entry index and values: the host's `KVM_CAP_IRQ_ROUTING` (EOPNOTSUPP when 0),
/// no more entries than it allows and every GSI below it (EINVAL); on x86, irqchip ids and
/// pins within the PIC (8 pins) and IOAPIC (`KVM_IOAPIC_NUM_PINS`) ranges (EINVAL); a `devid`
/// only with `KVM_CAP_MSI_DEVID` (EOPNOTSUPP). Allocates the argument buffer (setup path).
template <class Sys>
[[nodiscard]] result<void> set_gsi_routing(const basic_vm<Sys>& vm, std::span<const gsi_route> routes) {
    constexpr auto io = ioctls::vm::set_gsi_routing;
    auto max = detail::require_cap(vm, KVM_CAP_IRQ_ROUTING, "host kernel lacks KVM_CAP_IRQ_ROUTING", io);
    if (!max) return max.err();
    const auto limit = static_cast<std::size_t>(*max);
    if (routes.size() > limit)
        return error{io.name, EINVAL, "more routes than the host's KVM_CAP_IRQ_ROUTING"}
            .with("routes", routes.size())
            .with("max", limit);
    bool devid = false;
    for (std::size_t i = 0; i < routes.size(); ++i) {
        const std::uint32_t gsi = detail::route_gsi(routes[i]);
        if (gsi >= limit)
            return error{io.name, EINVAL, "GSI is not below the host's KVM_CAP_IRQ_ROUTING"}
                .with("entry", i)
                .with("gsi", gsi)
                .with("max", limit);
        if (const auto* m = std::get_if<msi_route>(&routes[i]); m && m->msg.devid) devid = true;
#if defined(__x86_64__)
        if (const auto* c = std::get_if<irqchip_route>(&routes[i])) {
            const std::uint32_t pins = c->irqchip == KVM_IRQCHIP_IOAPIC ? KVM_IOAPIC_NUM_PINS
                                     : c->irqchip <= KVM_IRQCHIP_PIC_SLAVE ? 8u
                                                                          : 0u;
            if (c->pin >= pins)
                return error{io.name, EINVAL, "irqchip or pin out of range (PIC 0/1: pins 0-7, IOAPIC 2: 0-23)"}
                    .with("entry", i)
                    .with("gsi", gsi)
                    .with("irqchip", c->irqchip)
                    .with("pin", c->pin);
        }
#endif
    }
    if (devid) {
        auto d = detail::require_cap(vm, KVM_CAP_MSI_DEVID, "an MSI devid needs KVM_CAP_MSI_DEVID", io);
        if (!d) return d.err();
    }
    // struct kvm_irq_routing in its C layout: nr, flags, then the entries at byte 8.
    constexpr std::size_t header_words = abi::irq_routing_header_size / sizeof(std::uint64_t);
    constexpr std::size_t entry_words = sizeof(::kvm_irq_routing_entry) / sizeof(std::uint64_t);
    static_assert(abi::irq_routing_header_size % sizeof(std::uint64_t) == 0 &&
                  sizeof(::kvm_irq_routing_entry) % sizeof(std::uint64_t) == 0);
    std::vector<std::uint64_t> buf(header_words + routes.size() * entry_words);
    const auto nr = static_cast<std::uint32_t>(routes.size());
    std::memcpy(buf.data(), &nr, sizeof nr); // flags (bytes 4-7) stay 0
    for (std::size_t i = 0; i < routes.size(); ++i) {
        const auto e = detail::routing_entry(routes[i]);
        std::memcpy(buf.data() + header_words + i * entry_words, &e, sizeof e);
    }
    if (Sys::ioctl(vm.fd(), io.code, buf.data()) < 0) return last_error(io.name).with("routes", routes.size());
    return ok();
}

/// KVM API section "KVM_SIGNAL_MSI": injects `msg` now, as a device's MSI write would. True
/// when it was delivered, false when the guest blocked it (the kernel's 0). Needs an in-kernel
/// irqchip (x86: else EINVAL). Checked first: `KVM_CAP_SIGNAL_MSI` (EOPNOTSUPP); a `devid`
/// needs `KVM_CAP_MSI_DEVID` (EOPNOTSUPP). Errors carry address and data.
template <class Sys>
[[nodiscard]] result<bool> signal_msi(const basic_vm<Sys>& vm, const msi_message& msg) noexcept {
    constexpr auto io = ioctls::vm::signal_msi;
    if (auto c = detail::require_cap(vm, KVM_CAP_SIGNAL_MSI, "host kernel lacks KVM_CAP_SIGNAL_MSI", io); !c)
        return c.err();
    if (msg.devid) {
        if (auto d = detail::require_cap(vm, KVM_CAP_MSI_DEVID, "an MSI devid needs KVM_CAP_MSI_DEVID", io); !d)
            return d.err();
    }
    ::kvm_msi m{};
    m.address_lo = static_cast<std::uint32_t>(msg.address);
    m.address_hi = static_cast<std::uint32_t>(msg.address >> 32);
    m.data = msg.data;
    if (msg.devid) {
        m.flags = KVM_MSI_VALID_DEVID;
        m.devid = *msg.devid;
    }
    const int rc = Sys::ioctl(vm.fd(), io.code, &m);
    if (rc < 0) return last_error(io.name).with_hex("address", msg.address).with_hex("data", msg.data);
    return rc > 0;
}

// ---- vCPU signal mask -------------------------------------------------------------------------

/// KVM API 4.17 KVM_SET_SIGNAL_MASK: while this vCPU is in `KVM_RUN`, the calling thread runs
/// with `mask` blocked instead of its own mask, so a signal the thread blocks elsewhere can
/// still interrupt the guest (and `bind_kick_thread` is this with the kick signal unblocked).
/// Errors: "KVM_SET_SIGNAL_MASK", errno and the vCPU id.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_signal_mask(hal_vcpu<Sys, Arch>& cpu, const sigset_t& mask) noexcept {
    detail::signal_mask_arg arg(mask);
    if (auto r = cpu.ioctl(ioctls::vcpu::set_signal_mask, arg.bytes.data()); !r) return r.err();
    return ok();
}
/// KVM_SET_SIGNAL_MASK with no set: `KVM_RUN` runs with the thread's own mask again.
template <class Sys, class Arch>
[[nodiscard]] result<void> clear_signal_mask(hal_vcpu<Sys, Arch>& cpu) noexcept {
    if (auto r = cpu.ioctl(ioctls::vcpu::set_signal_mask, nullptr); !r) return r.err();
    return ok();
}

} // namespace vcpu::kvm
