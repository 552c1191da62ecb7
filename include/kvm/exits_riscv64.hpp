#pragma once
/// \file
/// RISC-V 64 `kvm_run` decoding (Documentation/virt/kvm/api.rst §5: `KVM_EXIT_RISCV_SBI`, `KVM_EXIT_RISCV_CSR` and the common exits).
///
/// This is the Linux-KVM half of the riscv64 exits: the exit types are ISA- or
/// VMM-level and live in `arch/riscv64/exits.hpp` (no Linux headers); this
/// header maps `struct kvm_run` onto them and registers the mapping as
/// `vcpu::exit_decoder<vcpu::arch::riscv64, vcpu::kvm::run_view>`, so every
/// HAL whose exit record is a `kvm_run` (the KVM HAL, the mock, replay) gets
/// it by including this header (kvm/exits.hpp includes all three; kvm/riscv64.hpp, the
/// KVM HAL's riscv64 glue, includes this one).

#include <arch/riscv64/arch.hpp>
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

static_assert(riscv64::detail::linux_event_shutdown == KVM_SYSTEM_EVENT_SHUTDOWN &&
              riscv64::detail::linux_event_reset == KVM_SYSTEM_EVENT_RESET);

/// Decodes one `kvm_run` exit of a RISC-V vCPU and hands the typed exit to
/// `visit` (exactly once). Precondition: `v.run` points at `v.mapped` readable
/// bytes; a mapping smaller than `struct kvm_run` decodes to `malformed_exit`.
template <class Visitor>
[[gnu::always_inline]] inline void decode_riscv64(const run_view& v, Visitor&& visit) noexcept {
    using namespace ::vcpu::riscv64;
    ::kvm_run* rp = checked_run(v, visit);
    if (rp == nullptr) return;
    ::kvm_run& r = *rp;
    const std::uint32_t reason = r.exit_reason;
    switch (reason) {
    case KVM_EXIT_RISCV_SBI: {
        // KVM API 5 "KVM_EXIT_RISCV_SBI": ret[0..1] become a0/a1 when the vCPU
        // next runs (KVM presets ret[0] = SBI_ERR_NOT_SUPPORTED).
        std::array<std::uint64_t, 6> args{};
        for (std::size_t i = 0; i < 6; ++i) args[i] = r.riscv_sbi.args[i];
        ::vcpu::riscv64::detail::decode_sbi(r.riscv_sbi.extension_id, r.riscv_sbi.function_id, args,
                           answer_slot(&r.riscv_sbi.ret[0]), answer_slot(&r.riscv_sbi.ret[1]),
                           visit);
        return;
    }
    case KVM_EXIT_RISCV_CSR: {
        // KVM API 5 "KVM_EXIT_RISCV_CSR": userspace returns the old value in
        // ret_value and applies new_value under write_mask.
        csr_access e{};
        e.id = r.riscv_csr.csr_num;
        e.dir = r.riscv_csr.write_mask != 0 ? direction::out : direction::in;
        e.value = r.riscv_csr.new_value;
        e.result = answer_slot(&r.riscv_csr.ret_value);
        e.new_value = r.riscv_csr.new_value;
        e.write_mask = r.riscv_csr.write_mask;
        visit(e);
        return;
    }
    default: decode_common(r, visit, v.requests); return;
    }
}


} // namespace vcpu::kvm

/// `kvm_run` exits of an riscv64 vCPU decode through `kvm::decode_riscv64`.
template <>
struct vcpu::exit_decoder<vcpu::arch::riscv64, vcpu::kvm::run_view> {
    template <class Visitor>
    [[gnu::always_inline]] static void decode(const kvm::run_view& v, Visitor&& visit) noexcept {
        kvm::decode_riscv64(v, std::forward<Visitor>(visit));
    }
};
