#pragma once
/// \file
/// `vcpu::kvm::mock::hal`: a HAL that plays back a script of exits and records
/// what the vCPU did — register writes, CPUID, entries and the answers the
/// handlers gave — so a VMM's exit handling is testable without `/dev/kvm`.
///
/// The mock speaks the KVM ABI: each scripted exit is laid out in a private
/// `kvm_run` area (with the port I/O data page after it, as KVM does), and the
/// architecture's real decoder reads it. A script can also carry raw,
/// hostile `kvm_run` contents to exercise the decoder's checks.
///
/// All storage is sized when the vCPU is made; `enter()` never allocates.

#include <vcpu/basic_vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/answer.hpp>
#include <kvm/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>
#include <tuple>
#include <vector>

namespace vcpu::kvm::mock {

/// Bytes of the mock's `kvm_run` area: the run page, the PIO data page and a
/// spare page, as on x86 KVM.
inline constexpr std::size_t run_area_bytes = 3 * 4096;
/// Where the mock puts port I/O data (KVM uses the second page).
inline constexpr std::uint64_t pio_data_offset = 4096;
/// Most port I/O data one exit carries: one page, as KVM's PIO data page (a
/// `rep ins/outs` longer than that comes to userspace in several exits).
inline constexpr std::size_t pio_data_bytes = 4096;
static_assert(pio_data_offset + pio_data_bytes <= run_area_bytes);

/// One scripted exit: the `kvm_run` fields that matter, copied in on entry.
struct scripted_exit {
    std::uint32_t reason = KVM_EXIT_UNKNOWN;
    /// The exit union of `kvm_run` (everything from `io` on, 256 bytes).
    std::array<std::byte, 256> payload{};
    /// Bytes copied to `pio_data_offset` (port OUT data): the first `pio_len`.
    std::array<std::byte, pio_data_bytes> pio{};
    std::uint16_t pio_len = 0;
    /// Why this exit cannot be played faithfully, or none: entering it then fails with
    /// `bad_errno` and `bad_why` instead of playing truncated data (see `script::io_string_out`).
    int bad_errno = 0;
    const char* bad_why = nullptr;
    std::uint8_t if_flag = 0;
    std::uint64_t cr8 = 0;
    /// Coalesced writes the "kernel" buffered before this exit.
    std::array<coalesced_write, 4> coalesced{};
    std::uint8_t ncoalesced = 0;
};

/// Builds a script of exits (setup code: allocates).
class script {
public:
    script& io_out(std::uint16_t port, std::uint8_t size, std::uint32_t value) {
        std::array<std::byte, 4> b{};
        ::vcpu::detail::store_le(std::span<std::byte>(b).first(size <= 4 ? size : 4), value);
        return io(KVM_EXIT_IO_OUT, port, size, 1, std::span<const std::byte>(b).first(size <= 4 ? size : 4));
    }
    script& io_in(std::uint16_t port, std::uint8_t size, std::uint32_t count = 1) {
        return io(KVM_EXIT_IO_IN, port, size, count, {});
    }
    /// `rep outs`: `bytes.size() == size * count` bytes of data, at most `pio_data_bytes`.
    /// More makes `enter()` of this exit fail with E2BIG, and data that is not a whole number
    /// of `size`-byte units (or `size` 0) with EINVAL: never truncated silently. The same
    /// holds for `io_in` whose `size * count` exceeds a page.
    script& io_string_out(std::uint16_t port, std::uint8_t size, std::span<const std::byte> bytes) {
        const auto count = static_cast<std::uint32_t>(size != 0 ? bytes.size() / size : 0);
        io(KVM_EXIT_IO_OUT, port, size, count, bytes);
        if (auto& s = exits_.back(); s.bad_errno == 0 && (size == 0 || bytes.size() % size != 0)) {
            s.bad_errno = EINVAL;
            s.bad_why = "scripted string port I/O data is not a whole number of size-byte units";
        }
        return *this;
    }
    script& mmio_write(std::uint64_t gpa, std::uint8_t size, std::uint64_t value) {
        return raw(KVM_EXIT_MMIO, [&](::kvm_run& r) {
            r.mmio.phys_addr = gpa;
            r.mmio.len = size;
            r.mmio.is_write = 1;
            ::vcpu::detail::store_le(std::span<std::byte>(reinterpret_cast<std::byte*>(r.mmio.data),
                                                  std::min<std::size_t>(size, 8)),
                             value);
        });
    }
    script& mmio_read(std::uint64_t gpa, std::uint8_t size) {
        return raw(KVM_EXIT_MMIO, [&](::kvm_run& r) {
            r.mmio.phys_addr = gpa;
            r.mmio.len = size;
            r.mmio.is_write = 0;
        });
    }
    script& hlt() { return raw(KVM_EXIT_HLT, [](::kvm_run&) {}); }
    script& shutdown() { return raw(KVM_EXIT_SHUTDOWN, [](::kvm_run&) {}); }
    script& interrupted() { return raw(KVM_EXIT_INTR, [](::kvm_run&) {}); }
    script& system_event(std::uint32_t type) {
        return raw(KVM_EXIT_SYSTEM_EVENT, [&](::kvm_run& r) { r.system_event.type = type; });
    }
    script& hypercall(std::uint64_t nr, std::array<std::uint64_t, 6> args = {}) {
        return raw(KVM_EXIT_HYPERCALL, [&](::kvm_run& r) {
            r.hypercall.nr = nr;
            for (std::size_t i = 0; i < 6; ++i) r.hypercall.args[i] = args[i];
        });
    }
    /// RISC-V SBI call (KVM API 5 "KVM_EXIT_RISCV_SBI"): extension `ext`, function `fid`,
    /// a0..a5 = `args`; `ret[0]` preset to SBI_ERR_NOT_SUPPORTED (-2), as KVM does.
    script& riscv_sbi(std::uint64_t ext, std::uint64_t fid, std::array<std::uint64_t, 6> args = {}) {
        return raw(KVM_EXIT_RISCV_SBI, [&](::kvm_run& r) {
            r.riscv_sbi.extension_id = ext;
            r.riscv_sbi.function_id = fid;
            for (std::size_t i = 0; i < 6; ++i) r.riscv_sbi.args[i] = args[i];
            r.riscv_sbi.ret[0] = static_cast<unsigned long>(-2);
        });
    }
    /// RISC-V CSR access (KVM API 5 "KVM_EXIT_RISCV_CSR"): `csr`, and for a write the new
    /// value under `write_mask` (0: a read).
    script& riscv_csr(std::uint64_t csr, std::uint64_t new_value = 0, std::uint64_t write_mask = 0) {
        return raw(KVM_EXIT_RISCV_CSR, [&](::kvm_run& r) {
            r.riscv_csr.csr_num = csr;
            r.riscv_csr.new_value = new_value;
            r.riscv_csr.write_mask = write_mask;
        });
    }
    /// Adds a coalesced write delivered before the *next* scripted exit.
    script& coalesced(std::uint64_t addr, std::uint32_t size, std::uint64_t value, bool pio = false) {
        coalesced_write w{addr, size, pio, {}};
        ::vcpu::detail::store_le(std::span<std::byte>(w.bytes).first(std::min<std::size_t>(size, 8)), value);
        if (pending_c_ < pending_.size()) pending_[pending_c_++] = w;
        return *this;
    }
    /// Any exit: `fill` writes the `kvm_run` fields (hostile values welcome).
    template <class F>
    script& raw(std::uint32_t reason, F&& fill) {
        // Built in a full-size kvm_run so `fill` may touch any exit field.
        auto area = std::make_unique<::kvm_run>();
        std::memset(static_cast<void*>(area.get()), 0, sizeof(::kvm_run));
        area->exit_reason = reason;
        fill(*area);
        scripted_exit s{};
        s.reason = area->exit_reason;
        std::memcpy(s.payload.data(), reinterpret_cast<const std::byte*>(area.get()) + payload_offset,
                    s.payload.size());
        s.if_flag = area->if_flag;
        s.cr8 = area->cr8;
        s.coalesced = pending_;
        s.ncoalesced = pending_c_;
        pending_c_ = 0;
        exits_.push_back(s);
        return *this;
    }
    /// Repeats the script's exits `n` times in total (for benchmarks).
    script& repeat(std::size_t n) {
        const auto one = exits_;
        for (std::size_t i = 1; i < n; ++i) exits_.insert(exits_.end(), one.begin(), one.end());
        return *this;
    }
    [[nodiscard]] std::span<const scripted_exit> exits() const noexcept { return exits_; }
    [[nodiscard]] std::vector<scripted_exit>& mutable_exits() noexcept { return exits_; }

    /// Offset of the exit union inside `kvm_run`.
    static constexpr std::size_t payload_offset = offsetof(::kvm_run, io);

private:
    script& io(std::uint8_t dir, std::uint16_t port, std::uint8_t size, std::uint32_t count,
               std::span<const std::byte> data) {
        raw(KVM_EXIT_IO, [&](::kvm_run& r) {
            r.io.direction = dir;
            r.io.size = size;
            r.io.port = port;
            r.io.count = count;
            r.io.data_offset = pio_data_offset;
        });
        auto& s = exits_.back();
        const std::uint64_t span = std::uint64_t{size} * count;
        if (data.size() > s.pio.size() || span > pio_data_bytes) {
            s.bad_errno = E2BIG;
            s.bad_why = "scripted port I/O data longer than one exit carries";
            return *this;
        }
        s.pio_len = static_cast<std::uint16_t>(data.size());
        std::copy_n(data.begin(), s.pio_len, s.pio.begin());
        return *this;
    }
    std::vector<scripted_exit> exits_;
    std::array<coalesced_write, 4> pending_{};
    std::uint8_t pending_c_ = 0;
};

/// One thing the vCPU did, in order.
struct event {
    enum class kind : std::uint8_t {
        enter,         ///< `enter()`: `index` = scripted exit about to be delivered
        block_write,   ///< `modify<B>()`: `name` = block name
        keyed_write,   ///< `set_keyed`: `key`, `value`
        one_reg_write, ///< `set_one_reg`: `key` = id, `value` = low 64 bits
        set_cpuid,     ///< `set_cpuid`: `value` = entry count
        vcpu_init,     ///< `arm_vcpu_init`: `key` = target, `value` = features[0]
        vcpu_finalize, ///< `arm_vcpu_finalize`: `key` = feature
        answer,        ///< the answer left for exit `index`: `value` = its first 8 bytes (kvm/answer.hpp)
    };
    kind what = kind::enter;
    std::string_view name;
    std::uint64_t index = 0;
    std::uint64_t key = 0;
    std::uint64_t value = 0;
};

/// Options for a mock vCPU.
struct options {
    std::size_t max_events = 4096; ///< events beyond this are counted, not stored
    bool loop = false;             ///< restart the script when it ends (benchmarks)
};

/// The mock HAL. `hal::vcpu<Arch>` models `HalFor<hal, Arch>` for every
/// architecture whose exits come in `kvm_run`.
struct hal {
    template <class Arch>
    class vcpu;
};

template <class Arch>
class hal::vcpu {
public:
    using raw_exit = kvm::run_view;
    using arch_type = Arch;

    explicit vcpu(script s, options o = {}) : script_(std::move(s)), opts_(o) {
        area_.reset(new (std::align_val_t{4096}) std::byte[run_area_bytes]());
        events_.reserve(o.max_events);
        cpuid_set_.reserve(256);
    }
    vcpu(vcpu&&) noexcept = default;
    vcpu& operator=(vcpu&&) noexcept = default;

    /// Delivers the next scripted exit. Fails with `ENODATA` ("script
    /// exhausted") when the script ends and `loop` is off.
    [[nodiscard]] result<void> enter() noexcept {
        record_answer();
        const auto ex = script_.exits();
        if (next_ >= ex.size()) {
            if (!opts_.loop || ex.empty()) return error{"mock enter", ENODATA, "script exhausted"};
            next_ = 0;
        }
        const scripted_exit& s = ex[next_];
        if (s.bad_errno != 0) {
            ::kvm_run r{};
            std::memcpy(reinterpret_cast<std::byte*>(&r) + script::payload_offset, s.payload.data(), s.payload.size());
            return error{"mock enter", s.bad_errno, s.bad_why}
                .with("exit", next_)
                .with("port", r.io.port)
                .with("size", r.io.size)
                .with("count", r.io.count)
                .with("max bytes", pio_data_bytes);
        }
        log({event::kind::enter, {}, next_, 0, 0});
        ::kvm_run& r = run();
        r.exit_reason = s.reason;
        r.if_flag = s.if_flag;
        r.cr8 = s.cr8;
        std::memcpy(area_.get() + script::payload_offset, s.payload.data(), s.payload.size());
        // The exit's data, and zeros over what the previous exit's data or its
        // handler's IN answer left (the array is zero past pio_len): no 4 KiB
        // copy per exit.
        const std::size_t n = s.pio_len > pio_dirty_ ? s.pio_len : pio_dirty_;
        std::memcpy(area_.get() + pio_data_offset, s.pio.data(), n);
        pio_dirty_ = s.pio_len;
        if (s.reason == KVM_EXIT_IO) {
            const std::size_t span = std::size_t{r.io.size} * r.io.count;
            if (span > pio_dirty_) pio_dirty_ = span < pio_data_bytes ? span : pio_data_bytes;
        }
        pending_c_ = s.ncoalesced;
        consumed_c_ = 0;
        current_ = next_++;
        ++runs_;
        return ok();
    }

    [[nodiscard]] kvm::run_view exit_record() noexcept { return {&run(), run_area_bytes}; }

    /// Hands the coalesced writes scripted for this exit to `f` (true = go on).
    template <class F>
    bool drain_coalesced(F&& f) noexcept {
        const auto ex = script_.exits();
        while (consumed_c_ < pending_c_ && current_ < ex.size()) {
            coalesced_write w = ex[current_].coalesced[consumed_c_++];
            if (!f(w)) return false;
        }
        return true;
    }

    // --- register movers -------------------------------------------------
    template <class B>
    [[nodiscard]] result<const typename B::layout*> load() noexcept {
        return static_cast<const typename B::layout*>(&block<B>());
    }
    template <class B>
    [[nodiscard]] result<typename B::layout*> modify() noexcept {
        log({event::kind::block_write, B::name, 0, 0, 0});
        return &block<B>();
    }
    template <class Bank>
    [[nodiscard]] result<std::uint64_t> get_keyed(std::uint64_t key) noexcept {
        for (std::size_t i = 0; i < nkeyed_; ++i)
            if (keyed_[i].bank == bank_id<Bank>() && keyed_[i].key == key) return keyed_[i].value;
        return std::uint64_t{0};
    }
    template <class Bank>
    [[nodiscard]] result<void> set_keyed(std::uint64_t key, std::uint64_t value) noexcept {
        log({event::kind::keyed_write, Bank::name, 0, key, value});
        for (std::size_t i = 0; i < nkeyed_; ++i)
            if (keyed_[i].bank == bank_id<Bank>() && keyed_[i].key == key) {
                keyed_[i].value = value;
                return ok();
            }
        if (nkeyed_ == keyed_.size()) return error{"mock set_keyed", ENOSPC, "keyed table full"};
        keyed_[nkeyed_++] = {bank_id<Bank>(), key, value};
        return ok();
    }
    [[nodiscard]] result<void> get_one_reg(std::uint64_t id, std::span<std::byte> out) noexcept {
        if (out.size() > 16) return error{"mock get_one_reg", EINVAL, "register wider than 128 bits"};
        for (std::size_t i = 0; i < nregs_; ++i)
            if (regs_[i].id == id) {
                std::memcpy(out.data(), regs_[i].bytes.data(), out.size());
                return ok();
            }
        std::memset(out.data(), 0, out.size());
        return ok();
    }
    [[nodiscard]] result<void> set_one_reg(std::uint64_t id, std::span<const std::byte> in) noexcept {
        if (in.size() > 16) return error{"mock set_one_reg", EINVAL, "register wider than 128 bits"};
        std::uint64_t low = 0;
        std::memcpy(&low, in.data(), std::min<std::size_t>(in.size(), 8));
        log({event::kind::one_reg_write, "one_reg", 0, id, low});
        std::size_t i = 0;
        while (i < nregs_ && regs_[i].id != id) ++i;
        if (i == nregs_) {
            if (nregs_ == regs_.size()) return error{"mock set_one_reg", ENOSPC, "register table full"};
            ++nregs_;
        }
        regs_[i].id = id;
        regs_[i].bytes = {};
        std::memcpy(regs_[i].bytes.data(), in.data(), in.size());
        return ok();
    }

    // --- x86 CPUID (any arch may call; recorded) ---------------------------
    /// Entries `supported_cpuid` reports; tests set it before `init`.
    template <class Entry>
    [[nodiscard]] result<std::size_t> supported_cpuid(std::span<Entry> out) const noexcept {
        static_assert(sizeof(Entry) == sizeof(supported_[0]));
        if (nsupported_ > out.size()) return error{"KVM_GET_SUPPORTED_CPUID", E2BIG};
        std::memcpy(static_cast<void*>(out.data()), supported_.data(), nsupported_ * sizeof(Entry));
        return nsupported_;
    }
    template <class Entry>
    void set_supported_cpuid(std::span<const Entry> in) noexcept {
        nsupported_ = std::min(in.size(), supported_.size());
        std::memcpy(supported_.data(), in.data(), nsupported_ * sizeof(Entry));
    }
    template <class Entry>
    [[nodiscard]] result<void> set_cpuid(std::span<const Entry> in) noexcept {
        log({event::kind::set_cpuid, "cpuid", 0, 0, in.size()});
        cpuid_set_.clear();
        for (const auto& e : in) {
            if (cpuid_set_.size() == cpuid_set_.capacity()) return error{"KVM_SET_CPUID2", E2BIG};
            std::array<std::byte, 40> b{};
            static_assert(sizeof(Entry) == 40);
            std::memcpy(b.data(), &e, sizeof e);
            cpuid_set_.push_back(b);
        }
        return ok();
    }
    /// CPUID entries last given to `set_cpuid`, as `Entry`.
    template <class Entry>
    [[nodiscard]] Entry cpuid_at(std::size_t i) const noexcept {
        Entry e{};
        if (i < cpuid_set_.size()) std::memcpy(static_cast<void*>(&e), cpuid_set_[i].data(), sizeof e);
        return e;
    }
    [[nodiscard]] std::size_t cpuid_count() const noexcept { return cpuid_set_.size(); }

    // --- AArch64 KVM_ARM_VCPU_INIT / _FINALIZE (any arch may call; recorded) --
    /// Records the `struct kvm_vcpu_init`-shaped `init` (`target`, `features[]`).
    template <class Init>
    [[nodiscard]] result<void> arm_vcpu_init(const Init& init) noexcept {
        log({event::kind::vcpu_init, "KVM_ARM_VCPU_INIT", 0, init.target, init.features[0]});
        return ok();
    }
    /// Records `KVM_ARM_VCPU_FINALIZE(feature)`.
    [[nodiscard]] result<void> arm_vcpu_finalize(std::uint32_t feature) noexcept {
        log({event::kind::vcpu_finalize, "KVM_ARM_VCPU_FINALIZE", 0, feature, 0});
        return ok();
    }

    // --- inspection --------------------------------------------------------
    [[nodiscard]] std::span<const event> events() const noexcept { return events_; }
    [[nodiscard]] std::size_t dropped_events() const noexcept { return dropped_; }
    [[nodiscard]] std::uint64_t runs() const noexcept { return runs_; }
    /// Writable block image (for tests that preset state).
    template <class B>
    [[nodiscard]] typename B::layout& block() noexcept {
        return std::get<list_index_v<B, typename Arch::register_blocks>>(blocks_);
    }
    [[nodiscard]] ::kvm_run& run() noexcept { return *reinterpret_cast<::kvm_run*>(area_.get()); }
    /// Moves playback to scripted exit `i`.
    void rewind(std::size_t i = 0) noexcept { next_ = i; }

private:
    template <class Bank>
    static constexpr std::size_t bank_id() noexcept {
        return list_index_v<Bank, typename Arch::keyed_banks>;
    }
    void log(const event& e) noexcept {
        if (events_.size() < events_.capacity()) events_.push_back(e);
        else ++dropped_;
    }
    /// Records what the handler left in the previous exit (`kvm::answer_of`, the definition
    /// the exit trace uses) before the next one overwrites it.
    void record_answer() noexcept {
        if (runs_ == 0) return;
        const auto a = kvm::answer_of<Arch>(exit_record());
        if (a.empty()) return;
        log({event::kind::answer, {}, current_, 0, a.first_u64()});
    }

    struct keyed_entry {
        std::size_t bank;
        std::uint64_t key, value;
    };
    struct one_reg_entry {
        std::uint64_t id = 0;
        std::array<std::byte, 16> bytes{};
    };
    struct deleter {
        void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{4096}); }
    };

    script script_;
    options opts_;
    std::unique_ptr<std::byte[], deleter> area_;
    layout_tuple_t<typename Arch::register_blocks> blocks_{};
    std::array<keyed_entry, 64> keyed_{};
    std::size_t nkeyed_ = 0;
    std::array<one_reg_entry, 128> regs_{};
    std::size_t nregs_ = 0;
    std::array<std::array<std::byte, 40>, 64> supported_{};
    std::size_t nsupported_ = 0;
    std::vector<std::array<std::byte, 40>> cpuid_set_;
    std::vector<event> events_;
    std::size_t dropped_ = 0;
    std::size_t next_ = 0, current_ = 0;
    std::uint8_t pending_c_ = 0, consumed_c_ = 0;
    std::size_t pio_dirty_ = 0; ///< PIO data bytes the last entered exit wrote
    std::uint64_t runs_ = 0;
};

/// A `basic_vcpu` over the mock HAL.
template <class Arch>
using mock_vcpu = basic_vcpu<Arch, hal>;

/// Makes a mock vCPU playing `s`.
template <class Arch>
[[nodiscard]] mock_vcpu<Arch> make_vcpu(script s, options o = {}) {
    return mock_vcpu<Arch>(typename hal::template vcpu<Arch>(std::move(s), o));
}

} // namespace vcpu::kvm::mock
