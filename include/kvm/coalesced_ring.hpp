#pragma once
/// \file
/// `coalesced_ring`: a view of the coalesced MMIO/PIO ring KVM keeps in a page of the vCPU
/// mapping (KVM API 4.116 KVM_REGISTER_COALESCED_MMIO, `KVM_CAP_COALESCED_MMIO` gives the page
/// offset), and its bounded, allocation-free drain. `hal_vcpu` owns the mapping and one ring
/// view into it.

#include <kvm/ioctls.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>

#include <linux/kvm.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace vcpu::kvm {

namespace detail {
/// `struct kvm_coalesced_mmio_ring` header size in the kernel's C layout
/// (`c_flex_header_size` in ioctls.hpp says why the UAPI struct is not used).
inline constexpr std::size_t coalesced_ring_header = c_flex_header_size;
/// The ring header of a vCPU without a coalesced ring: `first == last`, never written (a
/// ring of capacity 0), so the drain needs no null test per exit.
alignas(8) inline std::uint32_t no_coalesced_ring[2] = {0, 0};
static_assert(sizeof(::kvm_coalesced_mmio) == 24, "kvm: struct kvm_coalesced_mmio is 24 bytes");
} // namespace detail

/// The coalesced ring of one vCPU: a view into its mapping (not an owner). Without a ring (no
/// capability, or a page outside the mapping) it is an always-empty ring of capacity 0. Moving
/// leaves the source empty, so a moved-from vCPU cannot drain the ring its successor owns.
class coalesced_ring {
public:
    coalesced_ring() noexcept = default;

    /// The ring at page `page_offset` (pages of `page_size` bytes) of the `mapped` bytes at
    /// `base`; empty when `page_offset` is not positive or that page is not wholly mapped.
    coalesced_ring(std::byte* base, std::size_t mapped, std::size_t page_size, long page_offset) noexcept {
        if (page_offset <= 0 || page_size <= detail::coalesced_ring_header) return;
        const auto page = static_cast<std::size_t>(page_offset);
        if (page >= mapped / page_size || (page + 1) * page_size > mapped) return;
        // In bounds of the mapping (checked just above).
        hdr_ = base + page * page_size;
        // KVM_COALESCED_MMIO_MAX, computed from the runtime page size.
        capacity_ = static_cast<std::uint32_t>((page_size - detail::coalesced_ring_header) /
                                               sizeof(::kvm_coalesced_mmio));
    }

    /// Takes `o`'s ring, leaving it empty.
    coalesced_ring(coalesced_ring&& o) noexcept
        : hdr_(std::exchange(o.hdr_, empty())), capacity_(std::exchange(o.capacity_, 0)),
          errors_(o.errors_) {}
    /// Takes `o`'s ring, leaving it empty.
    coalesced_ring& operator=(coalesced_ring&& o) noexcept {
        hdr_ = std::exchange(o.hdr_, empty());
        capacity_ = std::exchange(o.capacity_, 0);
        errors_ = o.errors_;
        return *this;
    }
    coalesced_ring(const coalesced_ring&) = delete;
    coalesced_ring& operator=(const coalesced_ring&) = delete;
    ~coalesced_ring() = default;

    /// Hands every buffered write to `f(coalesced_write&)`, oldest first, consuming each entry
    /// before calling `f`. Stops and returns false when `f` does; true when the ring is empty.
    /// Indices are checked against the capacity: a corrupt `first` is reset to `last` (entries
    /// are dropped, never read out of bounds) and counted in `errors()`. No allocation.
    template <class F>
    bool drain(F&& f) noexcept {
        // first/last are naturally aligned u32s shared with the kernel, hence atomic_ref.
        auto* h = reinterpret_cast<std::uint32_t*>(hdr_);
        std::atomic_ref<std::uint32_t> first(h[0]);
        std::atomic_ref<std::uint32_t> last(h[1]);
        for (;;) {
            const std::uint32_t i = first.load(std::memory_order_relaxed);  // only we write it
            const std::uint32_t end = last.load(std::memory_order_acquire); // entries before it are written
            if (i == end) return true;
            if (i >= capacity_ || end >= capacity_) {
                ++errors_;
                if (end < capacity_) first.store(end, std::memory_order_release);
                return true;
            }
            ::kvm_coalesced_mmio e;
            std::memcpy(&e, hdr_ + detail::coalesced_ring_header + i * sizeof(e), sizeof e);
            coalesced_write w;
            w.address = e.phys_addr;
            w.size = e.len <= 8 ? e.len : 8;
            w.pio = e.pio != 0;
            std::memcpy(w.bytes.data(), e.data, w.size);
            first.store((i + 1) % capacity_, std::memory_order_release);
            if (!f(w)) return false;
        }
    }

    /// Entries the ring holds (`KVM_COALESCED_MMIO_MAX`), 0 without a ring.
    [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
    /// Times `drain` found a ring index out of range.
    [[nodiscard]] std::size_t errors() const noexcept { return errors_; }

private:
    static std::byte* empty() noexcept { return reinterpret_cast<std::byte*>(detail::no_coalesced_ring); }

    std::byte* hdr_ = empty();
    std::uint32_t capacity_ = 0;
    std::size_t errors_ = 0;
};

} // namespace vcpu::kvm
