#pragma once
/// \file
/// x86-64 `kvm_run` decoding (Documentation/virt/kvm/api.rst §5 "The kvm_run structure"): every `KVM_EXIT_*` that `<linux/kvm.h>` defines for x86 becomes a typed exit; anything else `vcpu::unknown`. Every guest-influenced size, count and offset is validated against the mapping before a view is made.
///
/// This is the Linux-KVM half of the x86_64 exits: the exit types are ISA- or
/// VMM-level and live in `arch/x86_64/exits.hpp` (no Linux headers); this
/// header maps `struct kvm_run` onto them and registers the mapping as
/// `vcpu::exit_decoder<vcpu::arch::x86_64, vcpu::kvm::run_view>`, so every
/// HAL whose exit record is a `kvm_run` (the KVM HAL, the mock, replay) gets
/// it by including this header (kvm/exits.hpp includes all three; kvm/x86_64.hpp, the
/// KVM HAL's x86_64 glue, includes this one).

#include <arch/x86_64/arch.hpp>
#include <kvm/exits_common.hpp>
#include <kvm/run.hpp>
#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/exits.hpp>

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>

namespace vcpu::kvm {


namespace detail {

/// Bytes of the `kvm_run` exit union (the part after the fixed header).
[[nodiscard]] inline std::span<std::byte> x86_64_exit_union(const run_view& v) noexcept {
    constexpr std::size_t off = offsetof(::kvm_run, io);
    constexpr std::size_t len = sizeof(::kvm_run::io) > 256 ? sizeof(::kvm_run::io) : 256;
    return v.at(off, len);
}
} // namespace detail

/// Decodes one `kvm_run` exit and hands the typed exit to `visit` (exactly
/// once). Precondition: `v.run` points at `v.mapped >= sizeof(kvm_run)`
/// readable bytes; a smaller mapping decodes to `malformed_exit`.
template <class Visitor>
[[gnu::always_inline]] inline void decode_x86_64(const run_view& v, Visitor&& visit) noexcept {
    using namespace ::vcpu::x86_64;
    using why = malformed_exit::why;
    ::kvm_run* rp = checked_run(v, visit);
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
        // The emulation-failure overlay: flags = data[0], then insn_size and
        // 15 instruction bytes in data[1..2] (ABI since Linux 5.14). Anything
        // else, including an ndata beyond the array, is the common decoding's
        // (one bounds check per path).
        const auto nd = r.internal.ndata;
        if (r.internal.suberror == KVM_INTERNAL_ERROR_EMULATION && nd >= 3 &&
            nd <= std::size(r.internal.data) &&
            (r.internal.data[0] & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0) {
            const auto* bytes = reinterpret_cast<const std::uint8_t*>(&r.internal.data[1]);
            const std::uint8_t n = bytes[0];
            if (n <= 15) {
                emulation_failure e{r.internal.data[0], std::span<const std::uint8_t>(bytes + 1, n)};
                visit(e);
                return;
            }
        }
        decode_internal_error(r, visit);
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
        hyperv_exit e{r.hyperv.type, detail::x86_64_exit_union(v)};
        visit(e);
        return;
    }
    case KVM_EXIT_XEN: {
        xen_exit e{r.xen.type, detail::x86_64_exit_union(v)};
        visit(e);
        return;
    }
    default: decode_common(r, visit, v.requests); return;
    }
}


} // namespace vcpu::kvm

/// `kvm_run` exits of an x86_64 vCPU decode through `kvm::decode_x86_64`.
template <>
struct vcpu::exit_decoder<vcpu::arch::x86_64, vcpu::kvm::run_view> {
    template <class Visitor>
    [[gnu::always_inline]] static void decode(const kvm::run_view& v, Visitor&& visit) noexcept {
        kvm::decode_x86_64(v, std::forward<Visitor>(visit));
    }
};
