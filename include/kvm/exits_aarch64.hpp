#pragma once
/// \file
/// arm64 `kvm_run` decoding (Documentation/virt/kvm/api.rst §5).
///
/// This is the Linux-KVM half of the aarch64 exits: the exit types are ISA- or
/// VMM-level and live in `arch/aarch64/exits.hpp` (no Linux headers); this
/// header maps `struct kvm_run` onto them and registers the mapping as
/// `vcpu::exit_decoder<vcpu::arch::aarch64, vcpu::kvm::run_view>`, so every
/// HAL whose exit record is a `kvm_run` (the KVM HAL, the mock, replay) gets
/// it by including this header (kvm/exits.hpp includes all three; kvm/aarch64.hpp, the
/// KVM HAL's aarch64 glue, includes this one).

#include <arch/aarch64/arch.hpp>
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

// ---------------------------------------------------------------------------
// kvm_run (Linux KVM/arm64)
// ---------------------------------------------------------------------------

/// Decodes one arm64 `kvm_run` exit (api.rst §5) and hands the typed exit to
/// `visit` exactly once. KVM/arm64 emulates ISV data aborts itself (it
/// writes the MMIO read answer into Xt at the next `KVM_RUN`), so MMIO comes
/// as the common `vcpu::mmio`; PSCI is handled in the kernel and reaches
/// userspace as `KVM_EXIT_SYSTEM_EVENT`. A mapping smaller than
/// `struct kvm_run`, an MMIO length of 0 or > 8, or an `ndata` beyond its
/// array decode to `malformed_exit`; unknown reasons to `unknown`.
template <class Visitor>
[[gnu::always_inline]] inline void decode_aarch64(const run_view& v, Visitor&& visit) noexcept {
    using namespace ::vcpu::aarch64;
    ::kvm_run* rp = checked_run(v, visit);
    if (rp == nullptr) return;
    ::kvm_run& r = *rp;
    const std::uint32_t reason = r.exit_reason;
    switch (reason) {
    case KVM_EXIT_ARM_NISV: {
        nisv_abort e{r.arm_nisv.esr_iss, r.arm_nisv.fault_ipa};
        visit(e);
        return;
    }
    case KVM_EXIT_HYPERCALL: {
        // arm64 SMCCC forwarding: `nr` = function id; the word after `ret`
        // (`longmode` before Linux 6.7, `flags` since) holds the conduit.
        const std::uint64_t flags = r.hypercall.longmode;
        smccc_call e{};
        e.nr = r.hypercall.nr;
        e.smc = (flags & hypercall_exit_smc) != 0;
        visit(e);
        return;
    }
    case KVM_EXIT_DEBUG: {
        debug_exit_layout d{};
        std::memcpy(&d, &r.debug, sizeof d);
        std::uint64_t esr = d.hsr;
        if ((r.flags & debug_hsr_high_valid) != 0) esr |= std::uint64_t{d.hsr_high} << 32;
        debug e{0, static_cast<std::uint32_t>(esr::ec.get(esr)), esr, 0, d.far};
        visit(e);
        return;
    }
    default: decode_common(r, visit, v.requests); return;
    }
}


} // namespace vcpu::kvm

/// `kvm_run` exits of an aarch64 vCPU decode through `kvm::decode_aarch64`.
template <>
struct vcpu::exit_decoder<vcpu::arch::aarch64, vcpu::kvm::run_view> {
    template <class Visitor>
    [[gnu::always_inline]] static void decode(const kvm::run_view& v, Visitor&& visit) noexcept {
        kvm::decode_aarch64(v, std::forward<Visitor>(visit));
    }
};
