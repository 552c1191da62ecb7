#pragma once
/// \file
/// The register-block cache of the KVM HAL's vCPU (kvm/vcpu.hpp) and its use of
/// `KVM_CAP_SYNC_REGS` (KVM API 5 "The kvm_run structure": `kvm_valid_regs`, `kvm_dirty_regs`
/// and `s.regs`):
/// - `detail::block_cache<B>` / `block_caches<List>`: the per-block images kept in the vCPU;
/// - `detail::sync_tracker`: which synced blocks KVM stores at each exit. Storing the blocks
///   costs KVM time at every exit (2-4% of an exit on PVM hosts, docs/benchmarks.md), so a
///   synced block that no handler loaded or modified for `vcpu_options::sync_idle_exits` exits
///   in a row leaves `kvm_valid_regs` until the next access;
/// - `detail::completion_pending` and `held_one_reg`: the exits KVM completes at the next
///   `KVM_RUN`, during which a handler's register writes are held back.

#include <kvm/traits.hpp>
#include <vcpu/config.hpp>
#include <vcpu/meta.hpp>

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>

namespace vcpu::kvm::detail {

/// Cached image and state of one register block.
template <class B>
struct block_cache {
    typename B::layout local{};   ///< storage when the block is not synced
    typename B::layout before{};  ///< the block as the exit left it, before a handler wrote it
    typename B::layout scratch{}; ///< the handler's image while KVM completes the exit
};

/// The caches of every block of `List` (an arch's `register_blocks`).
template <class List> struct block_caches;
template <class... B> struct block_caches<type_list<B...>> {
    using type = std::tuple<block_cache<B>...>;
    /// Union of the blocks' sync bits.
    static constexpr std::uint64_t sync_bits = (std::uint64_t{0} | ... | block_traits<B>::sync_bit);
};

/// Which synced blocks KVM stores in `kvm_run::s.regs` at the next exit (`kvm_valid_regs`),
/// adapted to what handlers use: a block no handler accessed during `idle_limit` exits in a row
/// drops out, the next access puts it back. Only the vCPU writes `kvm_valid_regs`, so the last
/// value written is kept here and the shared page is written only when it changes.
///
/// Idleness is kept as the entry count of each block's last access, not as a counter bumped at
/// every entry: an access is one store, and the vCPU has work before `KVM_RUN` only when a block
/// must come back (`use` says so) or when the earliest possible drop is due (`due()`, one
/// compare), so a handler that reads registers at every exit costs no per-entry bookkeeping.
class sync_tracker {
public:
    /// Sync bits whose idleness is tracked (0..7); blocks beyond them are always stored.
    static constexpr std::uint64_t tracked_bits = 0xff;

    sync_tracker() noexcept = default;
    /// `mask`: the blocks synced at all (`kvm_valid_regs` of the first run);
    /// `idle_limit`: `vcpu_options::sync_idle_exits` (0: never drop a block).
    sync_tracker(std::uint64_t mask, std::uint32_t idle_limit) noexcept
        : mask_(mask), idle_limit_(idle_limit), run_valid_(mask),
          counting_(idle_limit != 0 ? mask & tracked_bits : 0) {
        recompute_next_check();
    }

    /// `KVM_SYNC_*` bits in effect.
    [[nodiscard]] std::uint64_t mask() const noexcept { return mask_; }
    /// True when the block with sync bit `bit` travels through `kvm_run::s.regs`.
    [[nodiscard]] bool synced(std::uint64_t bit) const noexcept { return (mask_ & bit) != 0; }
    /// True when the last `KVM_RUN` stored the block with sync bit `bit`.
    [[nodiscard]] bool stored(std::uint64_t bit) const noexcept { return (run_valid_ & bit) != 0; }
    /// Notes an access to the block with sync bit `bit` during the current exit. True when the
    /// block is not in `kvm_valid_regs` and the next entry has to put it back (`adapt`).
    bool use(std::uint64_t bit) noexcept {
        if ((bit & tracked_bits) != 0) last_use_[static_cast<unsigned>(__builtin_ctzll(bit))] = entries_;
        if ((run_valid_ & bit) != 0) return false;
        wanted_ |= bit;
        return true;
    }
    /// True when a block may have been idle long enough to drop: the next entry has to `adapt`.
    [[nodiscard]] bool due() const noexcept { return entries_ >= next_check_; }
    /// Counts a `KVM_RUN` entry (called right before the ioctl).
    void entered() noexcept { ++entries_; }

    /// Before a `KVM_RUN`: puts back the blocks accessed while out of `kvm_valid_regs`, drops
    /// those not accessed during the last `idle_limit` exits.
    void adapt(::kvm_run& run) noexcept {
        std::uint64_t valid = run_valid_ | wanted_;
        for (std::uint64_t m = counting_ & ~wanted_; m != 0; m &= m - 1) {
            const auto b = static_cast<unsigned>(__builtin_ctzll(m));
            if (entries_ - last_use_[b] >= idle_limit_) {
                valid &= ~(std::uint64_t{1} << b);
                counting_ &= ~(std::uint64_t{1} << b);
            }
        }
        if (idle_limit_ != 0) counting_ |= wanted_ & tracked_bits;
        wanted_ = 0;
        recompute_next_check();
        if (valid != run_valid_) {
            run.kvm_valid_regs = valid;
            run_valid_ = valid;
        }
    }

private:
    /// The earliest entry count at which a counting block can reach the idle limit.
    void recompute_next_check() noexcept {
        std::uint64_t next = ~std::uint64_t{0};
        for (std::uint64_t m = counting_; m != 0; m &= m - 1) {
            const auto b = static_cast<unsigned>(__builtin_ctzll(m));
            const std::uint64_t at = last_use_[b] + idle_limit_;
            if (at < next) next = at;
        }
        next_check_ = next;
    }

    std::uint64_t mask_ = 0;
    std::uint32_t idle_limit_ = 0;        ///< vcpu_options::sync_idle_exits
    std::uint64_t run_valid_ = 0;         ///< kvm_valid_regs of the last KVM_RUN
    std::uint64_t wanted_ = 0;            ///< blocks accessed while out of kvm_valid_regs
    std::uint64_t counting_ = 0;          ///< tracked blocks in kvm_valid_regs that can go idle
    std::uint64_t entries_ = 0;           ///< KVM_RUN entries so far
    std::uint64_t next_check_ = ~std::uint64_t{0}; ///< `entries_` at which a drop may be due
    std::array<std::uint64_t, 8> last_use_{}; ///< `entries_` at the last access, per sync bit 0..7
};

/// True when the exit in `r` leaves work for KVM to finish at the next `KVM_RUN` that uses or
/// moves the guest's registers (KVM API 4.10 "KVM_RUN", and `complete_userspace_io` in the
/// kernel): the data of a port IN or MMIO read goes into the destination register or memory and
/// the instruction is skipped; RDMSR/WRMSR, a hypercall, an SBI call or a CSR access writes its
/// result and skips. KVM applies userspace's register writes (`kvm_dirty_regs`, SET ioctls)
/// *before* that completion, and drops the completion when RIP moved, so a handler's register
/// writes on such an exit are held back until the exit is completed (see `hal_vcpu::enter`).
/// OUT and MMIO writes need no data back; KVM skips an OUT only when RIP did not move, so a
/// handler's RIP write wins there on its own.
[[nodiscard]] inline bool completion_pending(const ::kvm_run& r) noexcept {
    switch (r.exit_reason) {
    case KVM_EXIT_IO: return r.io.direction == KVM_EXIT_IO_IN;
    case KVM_EXIT_MMIO: return r.mmio.is_write == 0;
    case KVM_EXIT_HYPERCALL:
#ifdef KVM_EXIT_X86_RDMSR
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR:
#endif
#ifdef KVM_EXIT_XEN
    case KVM_EXIT_XEN:
#endif
#ifdef KVM_EXIT_RISCV_SBI
    case KVM_EXIT_RISCV_SBI:
    case KVM_EXIT_RISCV_CSR:
#endif
        return true;
    default: return false;
    }
}

/// True when the exit in `r` is one whose instruction KVM still has to skip at the next
/// `KVM_RUN` although no data comes back: an OUT (x86 `complete_fast_pio_out`) or an MMIO write
/// (arm64 `kvm_handle_mmio_return`, riscv64 `kvm_riscv_vcpu_mmio_return`). A handler needs no
/// completion there, but a saved vCPU state does: saved before it, the PC still points at the
/// write and a restored vCPU would issue it again (`hal_vcpu::complete_pending_io(true)`).
[[nodiscard]] inline bool skip_pending(const ::kvm_run& r) noexcept {
    switch (r.exit_reason) {
    case KVM_EXIT_IO: return r.io.direction == KVM_EXIT_IO_OUT;
    case KVM_EXIT_MMIO: return r.mmio.is_write != 0;
    default: return false;
    }
}

/// A ONE_REG write held back while its exit is completed (see `completion_pending`).
struct held_one_reg {
    std::uint64_t id = 0;
    std::array<std::byte, 16> bytes{};
    std::uint8_t size = 0;
};

} // namespace vcpu::kvm::detail
