#pragma once
/// \file
/// A RISC-V Platform-Level Interrupt Controller (RISC-V PLIC Specification
/// v1.0.0) for a VMM's MMIO bus, when the host has no in-kernel irqchip for
/// the guest (KVM/riscv on QEMU 7.2 has no AIA): level-triggered sources
/// 1..`sources`, one interrupt target ("context") per hart — each hart's
/// S-mode external interrupt, as a device tree's `interrupts-extended =
/// <&cpuN_intc 9 ...>` describes it.
///
/// Register map (spec §3 "Memory Map", offsets from the base; 32-bit accesses):
///
/// | offset | register |
/// | --- | --- |
/// | 0x000000 + 4*s | priority of source s (0 = never interrupts) |
/// | 0x001000 + 4*w | pending bits of sources 32w..32w+31 (read-only) |
/// | 0x002000 + 0x80*c + 4*w | enable bits of context c |
/// | 0x200000 + 0x1000*c | priority threshold of context c |
/// | 0x200004 + 0x1000*c | claim (read) / complete (write) of context c |
///
/// Gateways (§5): a source is pending while its line is high and it is not
/// claimed; a claim clears pending and marks the source in service until the
/// context writes its id back (complete), after which a line still high
/// pends again. A context's output is raised while some enabled, pending
/// source has a priority above its threshold; `Irq(context, level)` is called
/// whenever that changes (a KVM VMM issues `KVM_INTERRUPT` on the hart's vCPU).
/// Other sizes or misaligned offsets read 0 and ignore writes. No allocation.

#include <vcpu/config.hpp>

#include <array>
#include <cstddef>
#include <cstdint>

namespace vcpu::devices {

/// PLIC register offsets and strides (PLIC spec §3).
namespace plic_map {
inline constexpr std::uint64_t priority = 0x000000;  ///< source priorities: one 32-bit word per source id
inline constexpr std::uint64_t pending = 0x001000;  ///< pending bits: one bit per source id
inline constexpr std::uint64_t enable = 0x002000;  ///< enable bits of context 0 (one bit per source)
inline constexpr std::uint64_t enable_stride = 0x80;  ///< bytes between the enable bits of two contexts
inline constexpr std::uint64_t context = 0x200000;  ///< threshold/claim block of context 0
inline constexpr std::uint64_t context_stride = 0x1000;  ///< bytes between the blocks of two contexts
inline constexpr std::uint64_t threshold = 0x0; ///< within a context block
inline constexpr std::uint64_t claim = 0x4;     ///< within a context block
/// Bytes of address space for `contexts` contexts (what a device tree's `reg` needs).
[[nodiscard]] constexpr std::uint64_t size(std::uint64_t contexts) noexcept {
    return context + context_stride * contexts;
}
} // namespace plic_map

/// A PLIC with up to `MaxSources` - 1 sources (ids 1..) and `MaxContexts` contexts.
template <class Irq, std::size_t MaxSources = 64, std::size_t MaxContexts = 8>
class plic {
    static_assert(MaxSources % 32 == 0 && MaxSources <= 1024, "sources come in words of 32, at most 1024");
    static constexpr std::size_t words = MaxSources / 32;

public:
    /// `contexts` (≤ MaxContexts) targets; sources 1..`sources` (< MaxSources) exist.
    plic(unsigned contexts, unsigned sources, Irq irq) noexcept
        : contexts_(contexts <= MaxContexts ? contexts : MaxContexts),
          sources_(sources < MaxSources ? sources : MaxSources - 1), irq_(static_cast<Irq&&>(irq)) {}

    /// Number of contexts (targets).
    [[nodiscard]] unsigned contexts() const noexcept { return contexts_; }
    /// Highest source id.
    [[nodiscard]] unsigned sources() const noexcept { return sources_; }

    /// The line of `source` (1..sources) is now `level`.
    void set_level(unsigned source, bool level) noexcept {
        if (source == 0 || source > sources_) return;
        set_bit(level_, source, level);
        if (!bit(claimed_, source)) set_bit(pending_, source, level);
        update();
    }

    /// A 32-bit read at `offset`; claim reads take the interrupt.
    std::uint32_t read(std::uint64_t offset, std::uint8_t size) noexcept {
        if (size != 4 || offset % 4 != 0) return 0;
        using namespace plic_map;
        if (offset < pending) {
            const auto s = offset / 4;
            return s <= sources_ ? priority_[s] : 0;
        }
        if (offset < enable) {
            const auto w = (offset - pending) / 4;
            return w < words ? pending_[w] : 0;
        }
        if (offset < context) {
            const auto c = (offset - enable) / enable_stride, w = (offset - enable) % enable_stride / 4;
            return c < contexts_ && w < words ? enable_[c][w] : 0;
        }
        const auto c = (offset - context) / context_stride, r = (offset - context) % context_stride;
        if (c >= contexts_) return 0;
        if (r == threshold) return threshold_[c];
        if (r == claim) return take(static_cast<unsigned>(c));
        return 0;
    }

    /// A 32-bit write at `offset`; complete writes end the interrupt they name.
    void write(std::uint64_t offset, std::uint8_t size, std::uint64_t value) noexcept {
        if (size != 4 || offset % 4 != 0) return;
        using namespace plic_map;
        const auto v = static_cast<std::uint32_t>(value);
        if (offset < pending) {
            const auto s = offset / 4;
            if (s != 0 && s <= sources_) priority_[s] = v & 7; // 3 priority bits, as QEMU's virt PLIC
        } else if (offset < enable) {
            return; // pending is read-only
        } else if (offset < context) {
            const auto c = (offset - enable) / enable_stride, w = (offset - enable) % enable_stride / 4;
            if (c < contexts_ && w < words) enable_[c][w] = v & existing_mask(w);
        } else {
            const auto c = (offset - context) / context_stride, r = (offset - context) % context_stride;
            if (c >= contexts_) return;
            if (r == threshold) threshold_[c] = v & 7;
            else if (r == claim) complete(v);
        }
        update();
    }

    /// Whether context `c`'s output is raised.
    [[nodiscard]] bool output(unsigned c) const noexcept { return c < contexts_ && out_[c]; }
    /// Whether source `s` is pending (raised, not yet claimed).
    [[nodiscard]] bool is_pending(unsigned s) const noexcept { return s <= sources_ && bit(pending_, s); }
    /// Whether source `s` was claimed and not yet completed.
    [[nodiscard]] bool in_service(unsigned s) const noexcept { return s <= sources_ && bit(claimed_, s); }
    /// The IRQ policy (e.g. to read what it recorded).
    [[nodiscard]] Irq& irq() noexcept { return irq_; }

private:
    [[nodiscard]] static bool bit(const std::array<std::uint32_t, words>& a, unsigned s) noexcept {
        return (a[s / 32] >> (s % 32)) & 1;
    }
    static void set_bit(std::array<std::uint32_t, words>& a, unsigned s, bool v) noexcept {
        if (v) a[s / 32] |= 1u << (s % 32);
        else a[s / 32] &= ~(1u << (s % 32));
    }
    [[nodiscard]] std::uint32_t existing_mask(std::size_t w) const noexcept {
        std::uint32_t m = 0;
        for (unsigned i = 0; i < 32; ++i) {
            const auto s = w * 32 + i;
            if (s != 0 && s <= sources_) m |= 1u << i;
        }
        return m;
    }
    /// The highest-priority enabled pending source for `c` above `min_priority` (ties: lowest id).
    [[nodiscard]] unsigned best(unsigned c, std::uint32_t min_priority) const noexcept {
        unsigned id = 0;
        std::uint32_t prio = min_priority;
        for (unsigned s = 1; s <= sources_; ++s)
            if (bit(pending_, s) && bit(enable_[c], s) && priority_[s] > prio) {
                prio = priority_[s];
                id = s;
            }
        return id;
    }
    std::uint32_t take(unsigned c) noexcept {
        const unsigned id = best(c, 0); // a claim ignores the threshold (spec §7)
        if (id != 0) {
            set_bit(pending_, id, false);
            set_bit(claimed_, id, true);
        }
        update();
        return id;
    }
    void complete(std::uint32_t id) noexcept {
        if (id == 0 || id > sources_ || !bit(claimed_, id)) return;
        set_bit(claimed_, id, false);
        if (bit(level_, id)) set_bit(pending_, id, true);
    }
    void update() noexcept {
        for (unsigned c = 0; c < contexts_; ++c) {
            const bool o = best(c, threshold_[c]) != 0;
            if (o != out_[c]) {
                out_[c] = o;
                irq_(c, o);
            }
        }
    }

    unsigned contexts_, sources_;
    [[no_unique_address]] Irq irq_;
    std::array<std::uint32_t, MaxSources> priority_{};
    std::array<std::uint32_t, words> pending_{}, level_{}, claimed_{};
    std::array<std::array<std::uint32_t, words>, MaxContexts> enable_{};
    std::array<std::uint32_t, MaxContexts> threshold_{};
    std::array<bool, MaxContexts> out_{};
};

} // namespace vcpu::devices
