#pragma once
/// \file
/// `vcpu::kvm::replay::hal`: plays an exit trace (kvm/trace.hpp, written by
/// `vcpu::kvm::record::hal`) back through the architecture's real decoder, so a
/// VMM's exit handling can be regression-tested and benchmarked without
/// `/dev/kvm`.
///
/// Each `enter()` first checks the answer the VMM left for the previous exit
/// (where `kvm::answer_of` says it lives) against the recorded one
/// — a mismatch is an error naming the exit index, the expected and the actual
/// bytes — then lays the next recorded exit out in a private `kvm_run` area
/// (port data on the second page, as KVM does). Coalesced writes recorded
/// before an exit are delivered by `drain_coalesced`. The trace is validated
/// and indexed once, when the vCPU is made; `enter()` does not allocate.
/// Register state is not part of a trace: `load`/`modify` reach a local image.

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/answer.hpp>
#include <kvm/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/result.hpp>
#include <kvm/trace.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace vcpu::kvm::replay {

/// Bytes of the replay `kvm_run` area: run page, port data page, spare page.
inline constexpr std::size_t run_area_bytes = 3 * 4096;
/// Where port I/O data goes (the second page, as on x86 KVM).
inline constexpr std::uint64_t pio_data_offset = 4096;

/// Reads a whole trace file (setup path). Errors name the step and errno.
[[nodiscard]] inline result<std::vector<std::byte>> read_file(const char* path) {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return last_error("open trace file");
    std::vector<std::byte> out;
    std::array<std::byte, 65536> chunk{};
    for (;;) {
        const ssize_t n = ::read(fd, chunk.data(), chunk.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            const error e = last_error("read trace file");
            ::close(fd);
            return e;
        }
        if (n == 0) break;
        out.insert(out.end(), chunk.begin(), chunk.begin() + n);
    }
    ::close(fd);
    return out;
}

/// The replay HAL; `hal::vcpu<Arch>` models `HalFor<hal, Arch>` for every
/// arch whose exits come in `kvm_run`.
struct hal {
    template <class Arch>
    class vcpu;
};

template <class Arch>
class hal::vcpu {
public:
    using raw_exit = kvm::run_view;
    using arch_type = Arch;

    /// Validates and indexes `trace` (kept by the vCPU). EPROTO errors from
    /// `trace::parse` say what is wrong (magic, version, arch, truncation,
    /// lengths); an answer or coalesced record that belongs to no exit is
    /// also EPROTO.
    [[nodiscard]] static result<vcpu> make(std::vector<std::byte> trace) {
        vcpu v(std::move(trace));
        const std::span<const std::byte> all(v.trace_);
        std::vector<entry>& ex = v.exits_;
        auto r = trace::parse(all, trace::arch_id<Arch>(), [&](const trace::record& rec) {
            const auto off = static_cast<std::size_t>(rec.payload.data() - all.data());
            if (rec.type == trace::record_type::exit) {
                ex.push_back(entry{off, rec.payload.size(), 0, 0, 0, 0, false});
                ex.back().first_coalesced = v.coalesced_.size();
                return rec.index == ex.size() - 1 || (v.bad_ = "exit records are out of order", false);
            }
            if (ex.empty() || rec.index != ex.size() - 1)
                return v.bad_ = "answer or coalesced record without its exit", false;
            if (rec.type == trace::record_type::answer) {
                ex.back().answer_off = off + trace::answer_head_bytes;
                ex.back().answer_len = rec.payload.size() - trace::answer_head_bytes;
                ex.back().has_answer = true;
            } else {
                v.coalesced_.push_back(off);
                ++ex.back().ncoalesced;
            }
            return true;
        });
        if (!r) return r.err();
        if (v.bad_ != nullptr) return error{"read trace", EPROTO, v.bad_};
        return v;
    }

    vcpu(vcpu&&) noexcept = default;
    vcpu& operator=(vcpu&&) noexcept = default;

    /// Checks the answer to the previous exit, then lays out the next one.
    /// Errors: "replay" EPROTO "exit N (reason R): ..." on a wrong answer;
    /// ENODATA at the end of the trace. The detail text lives in this object.
    [[nodiscard]] result<void> enter() noexcept {
        if (auto c = check_answer(); !c) return c;
        if (next_ >= exits_.size()) return error{"replay", ENODATA, "end of trace"};
        const entry& e = exits_[next_];
        const auto p = trace::split_exit(std::span<const std::byte>(trace_).subspan(e.off, e.len));
        if (!p) return p.err(); // validated at load: does not happen
        ::kvm_run& r = run();
        r.exit_reason = p->reason;
        std::memset(area_.get() + offsetof(::kvm_run, io), 0, trace::union_bytes);
        std::memcpy(area_.get() + offsetof(::kvm_run, io), p->exit_union.data(), p->exit_union.size());
        if (r.exit_reason == KVM_EXIT_IO) {
            r.io.data_offset = pio_data_offset;
            // Clear the data the handler will see (no stale answer can pass the check).
            const std::uint64_t n = std::uint64_t{r.io.size} * r.io.count;
            std::memset(area_.get() + pio_data_offset, 0,
                        static_cast<std::size_t>(n < trace::max_pio_bytes ? n : trace::max_pio_bytes));
            std::memcpy(area_.get() + pio_data_offset, p->pio.data(), p->pio.size());
        }
        current_ = next_++;
        consumed_ = 0;
        entered_ = true;
        return ok();
    }

    [[nodiscard]] kvm::run_view exit_record() noexcept { return {&run(), run_area_bytes}; }

    /// Delivers the coalesced writes recorded before the current exit.
    template <class F>
    bool drain_coalesced(F&& f) noexcept {
        if (!entered_) return true;
        const entry& e = exits_[current_];
        while (consumed_ < e.ncoalesced) {
            const std::byte* p = trace_.data() + coalesced_[e.first_coalesced + consumed_++];
            coalesced_write w = trace::from_record(trace::load<trace::coalesced_record>(p));
            if (!f(w)) return false;
        }
        return true;
    }

    /// Checks the answer to the last exit delivered (call after the run ends:
    /// `enter()` checks all earlier ones).
    [[nodiscard]] result<void> verify_last() noexcept { return check_answer(); }

    /// Exits in the trace, and exits delivered so far.
    [[nodiscard]] std::size_t size() const noexcept { return exits_.size(); }
    [[nodiscard]] std::size_t delivered() const noexcept { return next_; }
    /// Starts over at exit `i`.
    void rewind(std::size_t i = 0) noexcept {
        next_ = i;
        entered_ = false;
    }

    // --- registers: a local image (a trace carries none) --------------------
    template <class B>
    [[nodiscard]] result<const typename B::layout*> load() noexcept {
        return static_cast<const typename B::layout*>(&std::get<typename B::layout>(blocks_));
    }
    template <class B>
    [[nodiscard]] result<typename B::layout*> modify() noexcept {
        return &std::get<typename B::layout>(blocks_);
    }
    template <class Bank>
    [[nodiscard]] result<std::uint64_t> get_keyed(std::uint64_t) noexcept {
        return std::uint64_t{0};
    }
    template <class Bank>
    [[nodiscard]] result<void> set_keyed(std::uint64_t, std::uint64_t) noexcept {
        return ok();
    }
    [[nodiscard]] result<void> get_one_reg(std::uint64_t, std::span<std::byte> out) noexcept {
        std::memset(out.data(), 0, out.size());
        return ok();
    }
    [[nodiscard]] result<void> set_one_reg(std::uint64_t, std::span<const std::byte>) noexcept {
        return ok();
    }

    [[nodiscard]] ::kvm_run& run() noexcept { return *reinterpret_cast<::kvm_run*>(area_.get()); }

private:
    struct entry {
        std::size_t off, len;                      ///< exit payload in the trace
        std::size_t answer_off, answer_len;        ///< recorded answer bytes
        std::size_t first_coalesced, ncoalesced;   ///< into coalesced_
        bool has_answer;
    };
    struct deleter {
        void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{4096}); }
    };

    explicit vcpu(std::vector<std::byte> t)
        : trace_(std::move(t)), area_(new (std::align_val_t{4096}) std::byte[run_area_bytes]()) {}

    [[nodiscard]] result<void> check_answer() noexcept {
        if (!entered_) return ok();
        entered_ = false;
        const entry& e = exits_[current_];
        if (!e.has_answer) return ok();
        const auto got = kvm::answer_of<Arch>(exit_record());
        const std::span<const std::byte> want(trace_.data() + e.answer_off, e.answer_len);
        if (got.equals(want)) return ok();
        std::size_t at = 0;
        while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
        std::array<std::byte, 9> head{}; // hex() shows 8 bytes and whether there are more
        const std::size_t shown = got.size() < head.size() ? got.size() : head.size();
        for (std::size_t i = 0; i < shown; ++i) head[i] = got[i];
        std::snprintf(msg_.data(), msg_.size(),
                      "exit %zu (exit reason %u): the VMM answered %s, the trace expects %s "
                      "(%zu vs %zu bytes, first difference at byte %zu)",
                      current_, run().exit_reason, hex(std::span(head).first(shown), hex_got_),
                      hex(want, hex_want_), got.size(), want.size(), at);
        return error{"replay", EPROTO, msg_.data()};
    }
    /// Up to 8 bytes as a little-endian hex number (more: the first 8, then "...").
    static const char* hex(std::span<const std::byte> b, std::array<char, 24>& out) noexcept {
        std::uint64_t v = 0;
        const std::size_t n = b.size() < 8 ? b.size() : 8;
        for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(b[i])} << (8 * i);
        std::snprintf(out.data(), out.size(), "0x%llx%s", static_cast<unsigned long long>(v),
                      b.size() > 8 ? "..." : "");
        return out.data();
    }

    std::vector<std::byte> trace_;
    std::vector<entry> exits_;
    std::vector<std::size_t> coalesced_;
    std::unique_ptr<std::byte[], deleter> area_;
    layout_tuple_t<typename Arch::register_blocks> blocks_{};
    std::size_t next_ = 0, current_ = 0, consumed_ = 0;
    bool entered_ = false;
    const char* bad_ = nullptr;
    std::array<char, 224> msg_{};
    std::array<char, 24> hex_got_{}, hex_want_{};
};

} // namespace vcpu::kvm::replay
