#pragma once
// Helpers shared by the kvm_run decoder harnesses (x86_64, aarch64, riscv64): building a raw
// record from the fuzz input, the expected outcome of the exit reasons every arch decodes the
// same way (KVM API §5, "The kvm_run structure"), checks on the common exit kinds, and the
// "answers land only inside the exit's own views" check.
#include "fuzz.hpp"

#include <vcpu/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/meta.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <vector>

namespace vcpu_fuzz {

/// Position of `T` in a `vcpu::type_list` (the list's size when absent): the core's `list_index_v`.
template <class T, class List>
inline constexpr std::size_t index_of_v = vcpu::list_index_v<T, List>;

/// Largest mapping a record is given (three pages: run page, port-data page, spare, as the mock
/// and the replay HAL lay it out).
inline constexpr std::size_t max_mapped = 3 * 4096;

/// A raw `kvm_run` mapping built from the fuzz input: `u16 m` (mapped = m % (max_mapped + 1)),
/// then the bytes of the mapping from offset 0 (the rest stays zero). The buffer is exactly
/// `mapped` bytes on the heap, so ASan reports any read or write past the mapping.
class raw_record {
public:
    explicit raw_record(input& in) {
        mapped_ = in.get<std::uint16_t>() % (max_mapped + 1);
        mem_.reset(new std::byte[mapped_ == 0 ? 1 : mapped_]());
        const auto b = in.take(mapped_);
        std::memcpy(mem_.get(), b.data(), b.size());
        orig_.assign(mem_.get(), mem_.get() + mapped_);
        // Padded so `orig()` is a whole struct even for a short mapping (the decoder must not
        // look at it then: the harness expects `malformed_exit`).
        if (orig_.size() < sizeof(::kvm_run)) orig_.resize(sizeof(::kvm_run));
    }
    [[nodiscard]] vcpu::kvm::run_view view() const noexcept {
        return {reinterpret_cast<::kvm_run*>(mem_.get()), mapped_};
    }
    [[nodiscard]] std::byte* base() const noexcept { return mem_.get(); }
    [[nodiscard]] std::size_t mapped() const noexcept { return mapped_; }
    [[nodiscard]] bool whole() const noexcept { return mapped_ >= sizeof(::kvm_run); }
    /// The record as it was before any decoding (zero-padded to a whole `kvm_run`).
    [[nodiscard]] const ::kvm_run& orig() const noexcept {
        return *reinterpret_cast<const ::kvm_run*>(orig_.data());
    }
    [[nodiscard]] bool unchanged() const noexcept {
        return std::memcmp(mem_.get(), orig_.data(), mapped_) == 0;
    }
    /// Offset of a field of the live record.
    [[nodiscard]] std::size_t offset_of(const void* p) const noexcept {
        return static_cast<std::size_t>(static_cast<const std::byte*>(p) - mem_.get());
    }
    [[nodiscard]] bool holds(const void* p, std::size_t n) const noexcept {
        return inside(p, n, mem_.get(), mapped_);
    }
    void restore() noexcept { std::memcpy(mem_.get(), orig_.data(), mapped_); }

    /// Every byte that differs from the original lies in one of the `allowed` ranges.
    struct range {
        std::size_t off, len;
    };
    [[nodiscard]] bool changed_only_in(std::span<const range> allowed) const noexcept {
        constexpr std::size_t chunk = 64;
        for (std::size_t i = 0; i < mapped_; ++i) {
            if (i % chunk == 0 && mapped_ - i >= chunk && std::memcmp(&mem_[i], &orig_[i], chunk) == 0) {
                i += chunk - 1;
                continue;
            }
            if (mem_[i] == orig_[i]) continue;
            bool ok = false;
            for (const auto& r : allowed) ok = ok || (i >= r.off && i - r.off < r.len);
            if (!ok) return false;
        }
        return true;
    }

private:
    std::unique_ptr<std::byte[]> mem_;
    std::size_t mapped_ = 0;
    std::vector<std::byte> orig_;
};

/// What decoding a record must produce: the exit type's index in the arch's `exit_types`, and
/// for `malformed_exit` the reason.
struct expectation {
    std::size_t type = 0;
    std::optional<vcpu::malformed_exit::why> why;
};

/// The expected outcome of the reasons `kvm::decode_common` handles, independent of the
/// decoder: an oracle written from the KVM API text. Anything else is `unknown`.
template <class List>
expectation expect_common(const ::kvm_run& r) {
    using why = vcpu::malformed_exit::why;
    const auto malformed = [](why w) { return expectation{index_of_v<vcpu::malformed_exit, List>, w}; };
    switch (r.exit_reason) {
    case KVM_EXIT_MMIO:
        if (r.mmio.len == 0 || r.mmio.len > 8) return malformed(why::mmio_size);
        return {index_of_v<vcpu::mmio, List>, {}};
    case KVM_EXIT_SYSTEM_EVENT:
        if (r.system_event.ndata > 16) return malformed(why::event_ndata);
        return {index_of_v<vcpu::system_event, List>, {}};
    case KVM_EXIT_INTR: return {index_of_v<vcpu::interrupted, List>, {}};
    case KVM_EXIT_FAIL_ENTRY: return {index_of_v<vcpu::fail_entry, List>, {}};
    case KVM_EXIT_INTERNAL_ERROR:
        if (r.internal.ndata > 16) return malformed(why::ndata);
        return {index_of_v<vcpu::internal_error, List>, {}};
    case KVM_EXIT_DIRTY_RING_FULL: return {index_of_v<vcpu::dirty_ring_full, List>, {}};
    default: return {index_of_v<vcpu::unknown, List>, {}};
    }
}

/// Expected `malformed_exit` for a mapping too small for `struct kvm_run`.
template <class List>
expectation expect_short_mapping() {
    return {index_of_v<vcpu::malformed_exit, List>, vcpu::malformed_exit::why::io_out_of_bounds};
}

/// `KVM_SYSTEM_EVENT_*` → kind, from the API text.
inline vcpu::system_event::kind expected_event_kind(std::uint32_t t) {
    using k = vcpu::system_event::kind;
    switch (t) {
    case KVM_SYSTEM_EVENT_SHUTDOWN: return k::power_off;
    case KVM_SYSTEM_EVENT_RESET: return k::reset;
    case KVM_SYSTEM_EVENT_CRASH: return k::crash;
    case KVM_SYSTEM_EVENT_WAKEUP: return k::wakeup;
    case KVM_SYSTEM_EVENT_SUSPEND: return k::suspend;
    default: return k::other;
    }
}

/// Field checks and a digest for the exit kinds of `kvm::decode_common`. `rec` is the live
/// record, `r` its original contents. Returns false when `e` is not one of those kinds.
template <class E>
bool check_common(const E& e, const raw_record& rec, const ::kvm_run& r, digest& d) {
    using namespace vcpu;
    ::kvm_run& live = *rec.view().run;
    if constexpr (std::is_same_v<E, mmio>) {
        VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_MMIO);
        VCPU_FUZZ_CHECK(e.size >= 1 && e.size <= 8 && e.size == r.mmio.len);
        VCPU_FUZZ_CHECK(e.data.size() == e.size);
        VCPU_FUZZ_CHECK(static_cast<const void*>(e.data.data()) == live.mmio.data);
        VCPU_FUZZ_CHECK(rec.holds(e.data.data(), e.data.size()));
        VCPU_FUZZ_CHECK(e.address == r.mmio.phys_addr);
        VCPU_FUZZ_CHECK(e.is_write() == (r.mmio.is_write != 0));
        d.add_all(e.address, e.size, e.is_write(), rec.offset_of(e.data.data()), e.value());
        return true;
    } else if constexpr (std::is_same_v<E, system_event>) {
        VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_SYSTEM_EVENT);
        VCPU_FUZZ_CHECK(e.ndata == r.system_event.ndata && e.ndata <= e.data.size());
        VCPU_FUZZ_CHECK(e.raw_type == r.system_event.type);
        VCPU_FUZZ_CHECK(e.what == expected_event_kind(e.raw_type));
        for (std::size_t i = 0; i < e.data.size(); ++i)
            VCPU_FUZZ_CHECK(e.data[i] == (i < e.ndata ? r.system_event.data[i] : 0));
        d.add_all(e.raw_type, static_cast<unsigned>(e.what), e.ndata);
        for (std::size_t i = 0; i < e.ndata; ++i) d.add(e.data[i]);
        return true;
    } else if constexpr (std::is_same_v<E, internal_error>) {
        VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_INTERNAL_ERROR);
        VCPU_FUZZ_CHECK(e.suberror == r.internal.suberror);
        VCPU_FUZZ_CHECK(e.data.size() == r.internal.ndata && e.data.size() <= std::size(r.internal.data));
        VCPU_FUZZ_CHECK(static_cast<const void*>(e.data.data()) == live.internal.data);
        VCPU_FUZZ_CHECK(rec.holds(e.data.data(), e.data.size_bytes()));
        d.add_all(e.suberror, e.data.size());
        for (auto w : e.data) d.add(w);
        return true;
    } else if constexpr (std::is_same_v<E, fail_entry>) {
        VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_FAIL_ENTRY);
        VCPU_FUZZ_CHECK(e.hardware_reason == r.fail_entry.hardware_entry_failure_reason);
        VCPU_FUZZ_CHECK(e.cpu == r.fail_entry.cpu);
        d.add_all(e.hardware_reason, e.cpu);
        return true;
    } else if constexpr (std::is_same_v<E, interrupted> || std::is_same_v<E, dirty_ring_full>) {
        return true;
    } else if constexpr (std::is_same_v<E, unknown>) {
        VCPU_FUZZ_CHECK(e.raw == r.exit_reason);
        VCPU_FUZZ_CHECK(e.detail == (r.exit_reason == KVM_EXIT_UNKNOWN ? r.hw.hardware_exit_reason : 0));
        d.add_all(e.raw, e.detail);
        return true;
    } else if constexpr (std::is_same_v<E, malformed_exit>) {
        VCPU_FUZZ_CHECK(!e.describe().empty());
        d.add_all(static_cast<unsigned>(e.reason), e.raw_reason, e.value);
        return true;
    } else {
        return false;
    }
}

/// Decodes `rec` with `decode(view, visitor)`, checking: the visitor runs exactly once, with a
/// type of `List`; decoding leaves the record unchanged; `check(e, digest, rec)` passes for the
/// exit. Returns the digest and the visited type's index.
template <class List, class Decode, class Check>
std::pair<digest, std::size_t> decode_once(const raw_record& rec, Decode& decode, Check& check) {
    digest d;
    std::size_t type = List::size;
    decode(rec.view(), [&](auto& e) {
        using E = std::remove_cvref_t<decltype(e)>;
        static_assert(vcpu::list_contains_v<E, List>, "decoder produced a type outside exit_types");
        ++d.calls;
        type = index_of_v<E, List>;
        d.add(type);
        check(e, d, rec);
    });
    VCPU_FUZZ_CHECK(d.calls == 1);
    VCPU_FUZZ_CHECK(rec.unchanged());
    return {d, type};
}

/// Runs the shared part of a kvm_run harness: decode twice (same result, no side effects),
/// compare the exit type with `expect(orig, mapped)`, then decode once more answering through
/// every view and slot with `answer(e, allow, rec)`, which names the bytes it may write with
/// `allow(pointer, length)`; every changed byte must lie in them.
template <class List, class Decode, class Check, class Expect, class Answer>
void run_kvm_run_harness(input& in, const char* arch, Decode decode, Check check, Expect expect,
                         Answer answer) {
    raw_record rec(in);
    const auto [d1, t1] = decode_once<List>(rec, decode, check);
    const auto [d2, t2] = decode_once<List>(rec, decode, check);
    VCPU_FUZZ_CHECK(d1 == d2 && t1 == t2);

    const expectation want = rec.whole() ? expect(rec.orig(), rec.mapped()) : expect_short_mapping<List>();
    VCPU_FUZZ_CHECK(t1 == want.type);
    if (want.why) VCPU_FUZZ_CHECK(d1.n >= 2 && d1.v[1] == static_cast<unsigned>(*want.why));
    note("%s: mapped %zu reason %u -> exit type #%zu%s", arch, rec.mapped(),
         rec.whole() ? rec.orig().exit_reason : 0u, t1, want.why ? " (malformed)" : "");

    std::array<raw_record::range, 8> allowed{};
    std::size_t nallowed = 0;
    auto allow = [&](const void* p, std::size_t n) {
        VCPU_FUZZ_CHECK(rec.holds(p, n));
        VCPU_FUZZ_CHECK(nallowed < allowed.size());
        allowed[nallowed++] = {rec.offset_of(p), n};
    };
    std::uint32_t calls = 0;
    decode(rec.view(), [&](auto& e) {
        ++calls;
        answer(e, allow, rec);
    });
    VCPU_FUZZ_CHECK(calls == 1);
    VCPU_FUZZ_CHECK(rec.changed_only_in(std::span<const raw_record::range>(allowed.data(), nallowed)));
}

/// Stores `v` through an answer slot the check pass matched to `field`, and reads it back.
template <class Allow, class Field>
void answer_slot_at(const vcpu::answer_slot& s, Field* field, std::uint64_t v, Allow& allow) {
    if (!s) return;
    allow(field, sizeof(Field));
    s.store(v);
    VCPU_FUZZ_CHECK(s.load() == v);
}

/// Answers through the views of the common exit kinds (MMIO read data). Returns false when `e`
/// is not one of them.
template <class E, class Allow>
bool answer_common(E& e, Allow& allow) {
    using namespace vcpu;
    if constexpr (std::is_base_of_v<mmio, E>) {
        const mmio& m = e;
        allow(m.data.data(), m.data.size());
        if (m.is_read()) {
            m.set(0x8877665544332211ull);
            const std::uint64_t mask = m.size >= 8 ? ~0ull : (1ull << (8 * m.size)) - 1;
            VCPU_FUZZ_CHECK(m.value() == (0x8877665544332211ull & mask));
        }
        return true;
    } else if constexpr (std::is_same_v<E, internal_error>) {
        std::uint64_t sum = 0;
        for (auto w : e.data) sum += w; // reads every word: ASan checks the bound
        (void)sum;
        return true;
    } else {
        return false;
    }
}

} // namespace vcpu_fuzz
