#pragma once
/// \file
/// `vcpu::kvm::record::hal<Inner>`: a HAL that wraps another one (usually
/// `vcpu::kvm::hal`) and writes every exit of the session to an exit trace
/// (format: kvm/trace.hpp) — the exit's `kvm_run` fields and port OUT data,
/// the coalesced writes delivered before it, and, at the next entry, the
/// answer the VMM left (wherever `kvm::answer_of` says it lives: IN data, MMIO read data,
/// hypercall, MSR, RISC-V SBI and CSR returns).
/// `vcpu::kvm::replay::hal` plays such a trace back without `/dev/kvm`.
///
/// Policy composition, no virtual calls: `basic_vcpu<Arch, record::hal<kvm::hal>>`.
/// The trace is built in a buffer sized once (`options::buffer_bytes`); no
/// allocation per exit. With `open(path)` a full buffer is written to the file
/// in one `write` and reused (the only I/O in the run loop, once per buffer);
/// `finish()` writes the rest. Without a file, a full buffer makes `enter()`
/// fail with ENOSPC.

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/answer.hpp>
#include <kvm/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/result.hpp>
#include <kvm/trace.hpp>

#include <linux/kvm.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

namespace vcpu::kvm::record {

/// Options of a recording vCPU.
struct options {
    std::size_t buffer_bytes = std::size_t{1} << 20; ///< trace buffer (at least 8 KiB is used)
};

/// The recording HAL over `Inner` (a HAL whose exit record is `kvm::run_view`).
template <class Inner>
struct hal {
    template <class Arch>
    class vcpu;
};

template <class Inner>
template <class Arch>
class hal<Inner>::vcpu {
public:
    using inner_type = typename Inner::template vcpu<Arch>;
    using raw_exit = typename inner_type::raw_exit;
    using arch_type = Arch;
    static_assert(std::is_same_v<raw_exit, kvm::run_view>,
                  "vcpu::kvm::record: the inner HAL must expose kvm::run_view exit records");

    /// Wraps `inner`; allocates the trace buffer and writes the header.
    explicit vcpu(inner_type&& inner, options o = {})
        : inner_(std::move(inner)), cap_(std::max<std::size_t>(o.buffer_bytes, 8192)),
          buf_(new std::byte[cap_]) {
        trace::write_header(std::span<std::byte, trace::header_bytes>(buf_.get(), trace::header_bytes),
                            trace::arch_id<Arch>());
        used_ = trace::header_bytes;
    }
    vcpu(vcpu&& o) noexcept
        : inner_(std::move(o.inner_)), cap_(o.cap_), buf_(std::move(o.buf_)), used_(o.used_),
          fd_(std::exchange(o.fd_, -1)), index_(o.index_), has_exit_(o.has_exit_), err_(o.err_) {}
    vcpu& operator=(vcpu&&) = delete;
    vcpu(const vcpu&) = delete;
    vcpu& operator=(const vcpu&) = delete;
    ~vcpu() {
        if (fd_ >= 0) ::close(fd_);
    }

    /// Records the answer to the previous exit, enters through the inner HAL,
    /// records the new exit.
    [[nodiscard]] result<void> enter() noexcept {
        if (has_exit_) record_answer();
        if (err_.code != 0) return err_;
        if (auto e = inner_.enter(); !e) return e;
        const kvm::run_view v = inner_.exit_record();
        if (v.run == nullptr || v.mapped < sizeof(::kvm_run))
            return error{"record trace", EPROTO, "exit record is not a mapped kvm_run"};
        const std::uint32_t reason = v.run->exit_reason;
        const std::size_t ul = trace::union_len(reason);
        const auto pio = trace::out_data(v);
        std::byte* p = reserve(trace::record_head_bytes + trace::exit_head_bytes + ul + pio.size(),
                               trace::record_type::exit, index_);
        if (p == nullptr) return err_;
        trace::store(p, trace::exit_head{reason, static_cast<std::uint16_t>(ul), static_cast<std::uint16_t>(pio.size())});
        std::memcpy(p + trace::exit_head_bytes, v.bytes().data() + offsetof(::kvm_run, io), ul);
        if (!pio.empty()) std::memcpy(p + trace::exit_head_bytes + ul, pio.data(), pio.size());
        has_exit_ = true;
        ++index_;
        return ok();
    }

    [[nodiscard]] raw_exit exit_record() noexcept { return inner_.exit_record(); }

    /// Forwards the inner HAL's coalesced writes, recording each.
    template <class F>
        requires requires(inner_type& i) { i.drain_coalesced([](coalesced_write&) { return true; }); }
    bool drain_coalesced(F&& f) noexcept {
        return inner_.drain_coalesced([&](coalesced_write& w) noexcept {
            if (std::byte* p = reserve(trace::record_head_bytes + trace::coalesced_payload_bytes,
                                       trace::record_type::coalesced, index_ - 1)) {
                trace::store(p, trace::to_record(w));
            }
            return f(w);
        });
    }

    // --- forwarded register movers and x86 CPUID ---------------------------
    template <class B>
    [[nodiscard]] auto load() noexcept { return inner_.template load<B>(); }
    template <class B>
    [[nodiscard]] auto modify() noexcept { return inner_.template modify<B>(); }
    template <class B>
    [[nodiscard]] auto get_keyed(std::uint64_t key) noexcept { return inner_.template get_keyed<B>(key); }
    template <class B>
    [[nodiscard]] auto set_keyed(std::uint64_t key, std::uint64_t v) noexcept {
        return inner_.template set_keyed<B>(key, v);
    }
    [[nodiscard]] result<void> get_one_reg(std::uint64_t id, std::span<std::byte> out) noexcept {
        return inner_.get_one_reg(id, out);
    }
    [[nodiscard]] result<void> set_one_reg(std::uint64_t id, std::span<const std::byte> in) noexcept {
        return inner_.set_one_reg(id, in);
    }
    template <class Entry>
    [[nodiscard]] auto supported_cpuid(std::span<Entry> out) const noexcept
        -> decltype(std::declval<const inner_type&>().supported_cpuid(out)) {
        return inner_.supported_cpuid(out);
    }
    template <class Entry>
    [[nodiscard]] auto set_cpuid(std::span<const Entry> in) noexcept
        -> decltype(std::declval<inner_type&>().set_cpuid(in)) {
        return inner_.set_cpuid(in);
    }

    // --- output ---------------------------------------------------------------

    /// Sends the trace to file `path` (created or truncated): what is buffered
    /// now and every full buffer from now on. Setup path.
    [[nodiscard]] result<void> open(const char* path) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) return last_error("open trace file");
        return ok();
    }
    /// Records the answer to the last exit and writes everything buffered to
    /// the file (when one is open), then closes it.
    [[nodiscard]] result<void> finish() noexcept {
        if (has_exit_) record_answer();
        has_exit_ = false;
        if (err_.code != 0) return err_;
        if (fd_ >= 0) {
            if (auto e = flush(); !e) return e;
            if (::close(std::exchange(fd_, -1)) != 0) return last_error("close trace file");
        }
        return ok();
    }
    /// The buffered trace (the whole trace when no file is open).
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {buf_.get(), used_}; }
    /// Exits recorded so far.
    [[nodiscard]] std::uint64_t exits() const noexcept { return index_; }
    /// The wrapped HAL vCPU.
    [[nodiscard]] inner_type& inner() noexcept { return inner_; }

private:
    void record_answer() noexcept {
        has_exit_ = false;
        const auto a = kvm::answer_of<Arch>(inner_.exit_record());
        if (a.empty() || a.size() > trace::max_pio_bytes) return;
        if (std::byte* p = reserve(trace::record_head_bytes + trace::answer_head_bytes + a.size(),
                                   trace::record_type::answer, index_ - 1)) {
            trace::store(p, trace::answer_head{static_cast<std::uint32_t>(a.size())});
            a.copy_to({p + trace::answer_head_bytes, a.size()});
        }
    }
    /// Room for a record of `len` bytes with its head written; nullptr (and
    /// `err_` set) when the buffer is full and no file takes it.
    std::byte* reserve(std::size_t len, trace::record_type t, std::uint64_t index) noexcept {
        if (len > cap_ - used_) {
            if (fd_ < 0 || !flush() || len > cap_) {
                if (err_.code == 0)
                    err_ = error{"record trace", ENOSPC,
                                 "trace buffer full: open() a file or raise options::buffer_bytes"};
                return nullptr;
            }
        }
        std::byte* p = buf_.get() + used_;
        trace::store(p, trace::record_head{static_cast<std::uint32_t>(len), static_cast<std::uint16_t>(t), 0, index});
        used_ += len;
        return p + trace::record_head_bytes;
    }
    [[nodiscard]] result<void> flush() noexcept {
        std::size_t done = 0;
        while (done < used_) {
            const ssize_t n = ::write(fd_, buf_.get() + done, used_ - done);
            if (n < 0) {
                if (errno == EINTR) continue;
                return err_ = last_error("write trace file");
            }
            done += static_cast<std::size_t>(n);
        }
        used_ = 0;
        return ok();
    }

    inner_type inner_;
    std::size_t cap_;
    std::unique_ptr<std::byte[]> buf_;
    std::size_t used_ = 0;
    int fd_ = -1;
    std::uint64_t index_ = 0;
    bool has_exit_ = false;
    error err_{};
};

} // namespace vcpu::kvm::record
