#pragma once
/// \file
/// Dirty-page tracking, two ways with one answer — "these pages of this slot are dirty"
/// (`dirty_page`, handed to a callback by `harvest`):
///
/// - **the dirty log** (`basic_dirty_log`): a bitmap per memory slot, fetched with
///   KVM_GET_DIRTY_LOG (KVM API section of that name). Without manual protection the fetch
///   also re-protects the pages; with it (`enable_manual_dirty_log_protect`,
///   kvm/vm_calls.hpp) pages stay writable until KVM_CLEAR_DIRTY_LOG re-protects them, which
///   `harvest` does for exactly the pages it reported and `clear` does for a page range
///   (64-page aligned, KVM API "KVM_CLEAR_DIRTY_LOG").
/// - **the dirty ring** (`basic_dirty_ring`): one ring per vCPU of `struct kvm_dirty_gfn`
///   entries KVM pushes as the guest dirties pages (KVM API 8 "KVM_CAP_DIRTY_LOG_RING"),
///   mapped from the vCPU fd at `KVM_DIRTY_LOG_PAGE_OFFSET` pages. `harvest` reads entries
///   whose flags say DIRTY (load-acquire), reports them, marks each collected (store-release of
///   RESET); `reset_dirty_rings` then asks KVM to re-protect the collected pages. A vCPU whose
///   ring fills exits with `vcpu::dirty_ring_full`; `dirty_ring_full_handler` is a run-loop
///   handler that harvests and resets, then resumes.
///
/// Slots must be installed with `memory_slot::log_dirty`. The log allocates its bitmaps when
/// it is created (setup path); `harvest`, `clear` and the ring's calls do not allocate.

#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/mapping.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm.hpp>
#include <kvm/vm_calls.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace vcpu::kvm {

/// One dirty guest page: page `page` (counted from the slot's first page) of slot `slot`.
struct dirty_page {
    std::uint32_t slot = 0; ///< bits 0-15 slot id, 16-31 address space (as in `memory_slot::slot`)
    std::uint64_t page = 0; ///< page index within the slot
    /// Equal when slot and page are.
    friend constexpr bool operator==(const dirty_page&, const dirty_page&) = default;
};

// ---- the dirty log -----------------------------------------------------------------------------

/// The dirty bitmap of one memory slot (KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG). Move-only
/// by its vectors; holds a pointer to the VM, which must outlive it and stay where it is.
template <class Sys>
class basic_dirty_log {
public:
    /// A log for slot `slot`, sized from the slot as `vm` installed it (`basic_vm::find_slot`;
    /// ENOENT when the VM does not know the slot). `manual_protect` says whether
    /// `enable_manual_dirty_log_protect` is in effect (then `harvest` re-protects what it
    /// reports and `clear` is allowed). Allocates the bitmaps.
    [[nodiscard]] static result<basic_dirty_log> create(const basic_vm<Sys>& vm, std::uint32_t slot,
                                                        bool manual_protect) {
        auto ext = vm.find_slot(slot);
        if (!ext)
            return error{ioctls::vm::get_dirty_log.name, ENOENT, "slot was not installed through this VM"}
                .with("slot", slot);
        return basic_dirty_log(vm, *ext, manual_protect);
    }

    /// KVM_GET_DIRTY_LOG into this log's bitmap; returns how many pages are dirty.
    /// Errors: "KVM_GET_DIRTY_LOG", errno (ENOENT: the slot has no `log_dirty`), the slot.
    [[nodiscard]] result<std::size_t> fetch() noexcept {
        constexpr auto io = ioctls::vm::get_dirty_log;
        ::kvm_dirty_log d{};
        d.slot = slot_.slot;
        d.dirty_bitmap = bits_.data();
        if (Sys::ioctl(vm_->fd(), io.code, &d) < 0)
            return last_error(io.name).with("slot", slot_.slot).with("pages", pages_);
        std::size_t n = 0;
        for (auto w : bits_) n += static_cast<std::size_t>(std::popcount(w));
        return n;
    }

    /// `fetch`; with manual protection, KVM_CLEAR_DIRTY_LOG of exactly the pages fetched; then
    /// `f(dirty_page)` for each of them in page order. Every reported page is write protected
    /// again before `f` sees it (by the fetch itself without manual protection), so `f` may copy
    /// the page: a later guest write is reported by the next harvest. Returns the number of
    /// pages reported. Errors: the failing ioctl's (then `f` is not called).
    template <class F>
    [[nodiscard]] result<std::size_t> harvest(F&& f) noexcept {
        auto n = fetch();
        if (!n) return n;
        if (manual_ && *n != 0) {
            if (auto c = clear_bits(0, pages_, bits_.data()); !c) return c.err();
        }
        for (std::size_t w = 0; w < bits_.size(); ++w) {
            for (std::uint64_t word = bits_[w]; word != 0; word &= word - 1) {
                const std::uint64_t page = w * 64 + static_cast<std::uint64_t>(std::countr_zero(word));
                if (page < pages_) f(dirty_page{slot_.slot, page});
            }
        }
        return n;
    }

    /// KVM_CLEAR_DIRTY_LOG of pages `[first, first + count)` of the slot: they are write
    /// protected again and their dirty bits dropped. Needs manual protection (EINVAL
    /// otherwise). Checked first, as the kernel does (EINVAL with the values): `first` is a
    /// multiple of 64, `count` is a multiple of 64 unless the range ends at the slot's end,
    /// the range is inside the slot.
    [[nodiscard]] result<void> clear(std::uint64_t first, std::uint64_t count) noexcept {
        constexpr auto io = ioctls::vm::clear_dirty_log;
        if (!manual_)
            return error{io.name, EINVAL, "needs manual dirty-log protection enabled"}.with("slot", slot_.slot);
        if (first % 64 != 0 || first > pages_ || count > pages_ - first ||
            (count % 64 != 0 && first + count != pages_))
            return error{io.name, EINVAL,
                         "range must start at a multiple of 64 pages and span a multiple of 64 or end at the slot's end"}
                .with("slot", slot_.slot)
                .with("first_page", first)
                .with("num_pages", count)
                .with("slot_pages", pages_);
        if (count == 0) return ok();
        // All ones, from bit 0 = page `first` (the kernel reads only `count` bits).
        for (auto& w : ones_) w = ~std::uint64_t{0};
        return clear_bits(first, count, ones_.data());
    }

    /// The bitmap of the last `fetch`: bit `p` (word `p / 64`, bit `p % 64`) is page `p`.
    [[nodiscard]] std::span<const std::uint64_t> bitmap() const noexcept { return bits_; }
    /// Whether page `page` was dirty at the last `fetch` (false past the slot's end).
    [[nodiscard]] bool dirty(std::uint64_t page) const noexcept {
        return page < pages_ && ((bits_[page / 64] >> (page % 64)) & 1) != 0;
    }
    /// Pages in the slot.
    [[nodiscard]] std::uint64_t pages() const noexcept { return pages_; }
    /// The slot.
    [[nodiscard]] const slot_extent& slot() const noexcept { return slot_; }

private:
    basic_dirty_log(const basic_vm<Sys>& vm, slot_extent s, bool manual)
        : vm_(&vm), slot_(s), pages_(s.size / detail::host_page_size()), manual_(manual),
          bits_((pages_ + 63) / 64), ones_((pages_ + 63) / 64) {}

    [[nodiscard]] result<void> clear_bits(std::uint64_t first, std::uint64_t count, std::uint64_t* bitmap) noexcept {
        constexpr auto io = ioctls::vm::clear_dirty_log;
        ::kvm_clear_dirty_log c{};
        c.slot = slot_.slot;
        c.first_page = first;
        c.num_pages = static_cast<std::uint32_t>(count);
        c.dirty_bitmap = bitmap;
        if (Sys::ioctl(vm_->fd(), io.code, &c) < 0)
            return last_error(io.name).with("slot", slot_.slot).with("first_page", first).with("num_pages", count);
        return ok();
    }

    const basic_vm<Sys>* vm_;
    slot_extent slot_;
    std::uint64_t pages_ = 0;
    bool manual_ = false;
    std::vector<std::uint64_t> bits_; ///< what KVM_GET_DIRTY_LOG wrote
    std::vector<std::uint64_t> ones_; ///< the all-ones bitmap `clear` passes
};

/// Production dirty log.
using dirty_log = basic_dirty_log<linux_sys>;

// ---- the dirty ring ----------------------------------------------------------------------------

/// One vCPU's dirty ring, mapped from its fd. Move-only; unmapped on destruction (before the
/// vCPU fd closes or after: the mapping holds its own reference to the ring's pages).
template <class Sys>
class basic_dirty_ring {
public:
    /// Maps vCPU `cpu`'s ring of `cfg.bytes` (from `enable_dirty_ring`) at page
    /// `KVM_DIRTY_LOG_PAGE_OFFSET` of the vCPU fd, read-write and shared. Errors: EOPNOTSUPP
    /// where the architecture's UAPI has no ring offset (0); EINVAL for a config without
    /// entries; "mmap dirty ring" with errno and the vCPU id.
    template <class Arch>
    [[nodiscard]] static result<basic_dirty_ring> map(const hal_vcpu<Sys, Arch>& cpu, const dirty_ring_config& cfg) noexcept {
        constexpr const char* op = "mmap dirty ring";
        if constexpr (KVM_DIRTY_LOG_PAGE_OFFSET == 0)
            return error{op, EOPNOTSUPP, "this architecture's KVM has no dirty ring (KVM_DIRTY_LOG_PAGE_OFFSET is 0)"};
        if (cfg.entries == 0 || cfg.bytes != std::size_t{cfg.entries} * sizeof(::kvm_dirty_gfn) ||
            (cfg.entries & (cfg.entries - 1)) != 0)
            return error{op, EINVAL, "dirty ring config has no or a non-power-of-two entry count"}
                .with("bytes", cfg.bytes)
                .with("entries", cfg.entries);
        const auto offset = static_cast<off_t>(KVM_DIRTY_LOG_PAGE_OFFSET * detail::host_page_size());
        auto m = basic_mapping<Sys>::map(op, cfg.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, cpu.fd(), offset);
        if (!m) return error(m.err()).with("vcpu_id", cpu.id());
        return basic_dirty_ring(std::move(*m), cfg.entries);
    }

    /// Reports every entry KVM has published since the last harvest to `f(dirty_page)`, oldest
    /// first, and marks it collected, following the KVM API's protocol: the entry at the
    /// fetch index is taken only when its flags say DIRTY (a load-acquire, so slot and offset
    /// are read after KVM wrote them), and handed back by storing RESET (a store-release, after
    /// they were read). Returns the number harvested; call `reset_dirty_rings` afterwards so KVM
    /// re-protects the pages and reuses the entries. The pages stay writable until that reset,
    /// so `f` should only record them: copy their contents after `reset_dirty_rings` (a write
    /// after the reset is pushed again). No syscall, no allocation.
    template <class F>
    std::size_t harvest(F&& f) noexcept {
        auto* ring = reinterpret_cast<::kvm_dirty_gfn*>(map_.data()); // the mapping is entries_ entries
        std::size_t n = 0;
        for (; n < entries_; ++n) {
            ::kvm_dirty_gfn& e = ring[fetch_ & (entries_ - 1)];
            std::atomic_ref<std::uint32_t> flags(e.flags);
            if ((flags.load(std::memory_order_acquire) & KVM_DIRTY_GFN_F_DIRTY) == 0) break;
            f(dirty_page{e.slot, e.offset});
            flags.store(KVM_DIRTY_GFN_F_RESET, std::memory_order_release);
            ++fetch_;
        }
        return n;
    }

    /// Entries in the ring.
    [[nodiscard]] std::uint32_t entries() const noexcept { return entries_; }
    /// Entries harvested since the ring was mapped (the fetch index).
    [[nodiscard]] std::uint64_t fetch_index() const noexcept { return fetch_; }

private:
    basic_dirty_ring(basic_mapping<Sys> m, std::uint32_t entries) noexcept : map_(std::move(m)), entries_(entries) {}
    basic_mapping<Sys> map_;
    std::uint32_t entries_ = 0;
    std::uint64_t fetch_ = 0;
};

/// Production dirty ring.
using dirty_ring = basic_dirty_ring<linux_sys>;

/// KVM_RESET_DIRTY_RINGS: KVM re-protects the pages of every entry the VMM marked collected,
/// on every vCPU's ring, and reuses the entries. Returns how many entries it reset.
/// Errors: "KVM_RESET_DIRTY_RINGS", errno.
template <class Sys>
[[nodiscard]] result<std::uint32_t> reset_dirty_rings(const basic_vm<Sys>& vm) noexcept {
    constexpr auto io = ioctls::vm::reset_dirty_rings;
    const int rc = Sys::ioctl(vm.fd(), io.code, nullptr);
    if (rc < 0) return last_error(io.name);
    return static_cast<std::uint32_t>(rc);
}

/// A run-loop handler for `vcpu::dirty_ring_full`: harvests `ring` (the running vCPU's) into
/// `sink`, resets the rings and resumes the guest. A failed reset stops the run with the
/// exit, the error kept in `failure`. `sink` is called as `sink(dirty_page)`.
template <class Sys, class Sink>
struct dirty_ring_full_handler {
    const basic_vm<Sys>* vm = nullptr;  ///< the VM (KVM_RESET_DIRTY_RINGS)
    basic_dirty_ring<Sys>* ring = nullptr; ///< the ring of the vCPU this handler runs
    Sink sink;                            ///< receives every harvested page
    std::optional<error> failure;         ///< the reset's error, when it failed
    /// Harvests, resets, resumes (stops when the reset failed).
    action operator()(::vcpu::dirty_ring_full&) noexcept {
        ring->harvest(sink);
        if (auto r = reset_dirty_rings(*vm); !r) {
            failure = r.err();
            return action::stop;
        }
        return action::resume;
    }
};

} // namespace vcpu::kvm
