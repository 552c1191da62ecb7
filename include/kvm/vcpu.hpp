#pragma once
/// \file
/// `hal_vcpu<Sys, Arch>`: the KVM HAL's per-vCPU state — the vCPU fd, its
/// `kvm_run` mapping (`run_mapping`, kvm/mapping.hpp), the register-block cache with
/// `KVM_CAP_SYNC_REGS` (kvm/sync_regs.hpp), the coalesced MMIO/PIO ring
/// (kvm/coalesced_ring.hpp) and the kick protocol (kvm/kick.hpp); created with
/// `vcpu_options` / `vcpu_setup` (kvm/vcpu_options.hpp). It models
/// `vcpu::HalFor<basic_hal<Sys>, Arch>` (reached as `basic_hal<Sys>::vcpu<Arch>`)
/// and is normally created by `basic_vm::create_vcpu<Arch>()`.
///
/// Register blocks (KVM API 5 "The kvm_run structure": `kvm_valid_regs`,
/// `kvm_dirty_regs` and `s.regs`, capability `KVM_CAP_SYNC_REGS`):
/// - *synced* blocks (in the sync mask) live in `kvm_run::s.regs`. After any
///   exit KVM has stored them there, so `load` costs no ioctl; `modify` sets
///   the block's bit in `kvm_run::kvm_dirty_regs` and KVM applies it at the
///   next `KVM_RUN`. Before the first `KVM_RUN` a `load` fetches the block
///   with its GET ioctl into `kvm_run::s.regs` (not marked dirty).
///   Storing the blocks costs KVM time at every exit (2-4% of an exit on PVM
///   hosts, docs/benchmarks.md), so a synced block that no handler loaded or
///   modified for `vcpu_options::sync_idle_exits` exits in a row leaves
///   `kvm_valid_regs`; the next access fetches it once with its GET ioctl and
///   puts it back.
/// - *unsynced* blocks (not in the mask, or never synced like x86 debug
///   registers) are cached in the object: `load` fetches once with the GET
///   ioctl, `modify` marks the block dirty, `enter()` writes dirty blocks with
///   the SET ioctl before `KVM_RUN`, and every exit invalidates the cache.

#include <kvm/coalesced_ring.hpp>
#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/kick.hpp>
#include <kvm/mapping.hpp>
#include <kvm/run.hpp>
#include <kvm/sync_regs.hpp>
#include <kvm/sys.hpp>
#include <kvm/traits.hpp>
#include <kvm/vcpu_options.hpp>
#include <kvm/x86_64_abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include <pthread.h>

namespace vcpu::kvm {

/// The KVM HAL's vCPU for architecture `Arch` with Sys policy `Sys`. Move-only;
/// owns the vCPU fd and unmaps `kvm_run` on destruction.
template <class Sys, class Arch>
class hal_vcpu {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");
    using caches_t = detail::block_caches<typename Arch::register_blocks>;

public:
    /// The exit record `exit_decoder<Arch, kvm::run_view>` reads: the mapped `kvm_run`.
    using raw_exit = ::vcpu::kvm::run_view;
    /// The architecture.
    using arch_type = Arch;
    /// The syscall seam.
    using sys_type = Sys;

    /// Sync bits this arch's blocks can use at all.
    static constexpr std::uint64_t arch_sync_bits = caches_t::sync_bits;

    /// Maps `kvm_run` for vCPU fd `fd` (KVM API 4.10/4.5: `mmap` of the vCPU fd
    /// at offset 0, `mmap_size` bytes) and enables sync registers.
    /// Errors: "mmap kvm_run" with errno; EPROTO when `mmap_size` is smaller
    /// than `struct kvm_run`.
    [[nodiscard]] static result<hal_vcpu> create(basic_fd<Sys> fd, const vcpu_setup& s) noexcept {
        if (s.mmap_size < sizeof(::kvm_run))
            return error{ioctls::system::get_vcpu_mmap_size.name, EPROTO,
                         "mapping is smaller than struct kvm_run"}
                .with("mmap_size", s.mmap_size)
                .with("needed", sizeof(::kvm_run));
        auto map = run_mapping<Sys>::map("mmap kvm_run", s.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                                         fd.get(), 0);
        if (!map) return error(map.err()).with("vcpu_id", s.id);
        // The vCPU fd's page 0 is struct kvm_run (KVM API 4.10), and the mapping
        // spans at least sizeof(kvm_run) (checked above).
        auto* run = reinterpret_cast<::kvm_run*>(map->data());
        const std::uint64_t mask = s.kernel_sync_regs & s.options.sync_regs & arch_sync_bits;
        run->kvm_valid_regs = mask;
        run->kvm_dirty_regs = 0;
        auto k = std::make_unique<detail::kick_state>();
        k->run = run;
        return hal_vcpu(std::move(fd), std::move(*map), s, mask, std::move(k));
    }

    /// Moves take over the fd, the mapping and the caches; the moved-from vCPU has no fd and a
    /// detached `kvm_run`, so using it fails with EBADF ("this vCPU was moved from").
    hal_vcpu(hal_vcpu&&) noexcept = default;
    /// Moves the fd, the mapping and the caches (see the move constructor).
    hal_vcpu& operator=(hal_vcpu&&) noexcept = default;
    hal_vcpu(const hal_vcpu&) = delete;
    hal_vcpu& operator=(const hal_vcpu&) = delete;
    /// Unmaps `kvm_run` (member order), then closes the vCPU fd.
    ~hal_vcpu() = default;

    // --- entering the guest -------------------------------------------------

    /// Writes dirty unsynced register blocks (their SET ioctls), then
    /// `KVM_RUN` (KVM API 4.10). `EINTR` (a signal, or `immediate_exit`) is
    /// success with `kvm_run::exit_reason = KVM_EXIT_INTR`, which decoders
    /// report as `vcpu::interrupted`. `EAGAIN` is KVM telling an x86
    /// application processor that took INIT (and now waits for SIPI in
    /// the in-kernel LAPIC) to run again: `KVM_RUN` is re-issued, as QEMU and
    /// kvmtool do; the kernel blocks in it until the next event, so this is not
    /// a busy loop. Any other failure is `error{"KVM_RUN", errno}` or the
    /// failing SET ioctl's name.
    /// No allocation; one ioctl per call when only synced blocks were modified.
    [[nodiscard]] result<void> enter() noexcept {
        if (before_entry_ || sync_.due()) [[unlikely]] {
            if (auto f = prepare_entry(); !f) return f;
        }
        sync_.entered();
        int rc = Sys::ioctl(fd_.get(), ioctls::vcpu::run.code, nullptr);
        int err = 0;
        if (rc < 0) [[unlikely]] {
            err = errno; // read only on failure: errno is a call into libc
            if (err == EAGAIN) rc = run_again(err);
        }
        invalidate_unsynced();
        if (rc < 0) {
            if (err == EBADF && !fd_) return moved_from(ioctls::vcpu::run.name);
            if (err != EINTR) return failed_run(err);
            // KVM stores synced registers on the EINTR path too.
            ran_ = true;
            run()->exit_reason = KVM_EXIT_INTR;
            requests_ = kick_->take();
            return ok();
        }
        ran_ = true;
        return ok();
    }

    /// The exit record of the last `enter()`: valid until the next one.
    [[nodiscard]] raw_exit exit_record() const noexcept {
        // create() refused mappings smaller than struct kvm_run and the size never changes;
        // saying so lets the decoder's own size check fold away.
        if (map_.size() < sizeof(::kvm_run) || map_.data() == nullptr) __builtin_unreachable();
        return raw_exit{run(), map_.size(), requests_};
    }

    /// Sets or clears `kvm_run::immediate_exit` (KVM API 4.10): while set,
    /// `KVM_RUN` returns `EINTR` at once.
    void immediate_exit(bool on) noexcept {
        // Shared with the kernel and with kicker threads: byte-wide atomic store.
        std::atomic_ref<std::uint8_t>(run()->immediate_exit)
            .store(on ? 1 : 0, std::memory_order_release);
    }
    /// A handle for kicking this vCPU from another thread (see `kicker`).
    [[nodiscard]] kicker make_kicker() const noexcept { return kicker(kick_.get()); }

    /// Makes the calling thread the one kickers signal, with `sig`: installs a no-op handler
    /// for `sig` when it has none (`install_kick_handler`), and sets the mask `KVM_RUN` runs
    /// with (KVM API 4.17 KVM_SET_SIGNAL_MASK) to this thread's mask without `sig`, so a kick
    /// interrupts the guest even when the thread blocks `sig` elsewhere (a blocked kick stays
    /// pending and interrupts the next `KVM_RUN`). Call from the vCPU thread before running.
    /// Errors: "sigaction", "pthread_sigmask", "KVM_SET_SIGNAL_MASK" with errno.
    [[nodiscard]] result<void> bind_kick_thread(int sig = SIGUSR1) noexcept {
        auto arg = detail::kick_signal_mask(sig);
        if (!arg) return arg.err();
        if (Sys::ioctl(fd_.get(), ioctls::vcpu::set_signal_mask.code, arg->bytes.data()) < 0)
            return failed(ioctls::vcpu::set_signal_mask.name).with("signal", sig);
        kick_->thread.store(::pthread_self(), std::memory_order_release);
        kick_->signal.store(sig, std::memory_order_release);
        return ok();
    }

    /// Finishes the exit KVM has not completed yet (see `detail::completion_pending`: the
    /// data of an IN or MMIO read into the guest, the skip past the instruction), without
    /// running the guest: `KVM_RUN` with `immediate_exit` set, as the KVM selftests'
    /// `vcpu_run_complete_io` does. Register writes a handler made meanwhile are then applied on
    /// top of the completed state: exactly the bytes it changed (blocks), or the held ONE_REG
    /// writes. enter() calls it when a handler wrote registers during such an exit; call it
    /// before reading the whole state to save it. No-op when nothing is pending.
    /// `EAGAIN` is re-issued at most `max_again` times. Errors: "KVM_RUN" with errno (EAGAIN
    /// when it persisted), detail "completing the exit...", the vCPU id and exit reason.
    /// `for_state` (state save and load, kvm/reg_list_state.hpp): also completes an OUT or MMIO
    /// write, whose instruction KVM skips only at the next `KVM_RUN` (`detail::skip_pending`), so
    /// a saved PC is past it.
    [[nodiscard, gnu::noinline]] result<void> complete_pending_io(bool for_state = false) noexcept {
        if (!ran_ || completed_ ||
            !(detail::completion_pending(*run()) || (for_state && detail::skip_pending(*run())))) {
            held_blocks_ = 0;
            return apply_held_regs();
        }
        // The handler's images of the synced blocks it wrote, kept while KVM stores its own.
        const std::uint64_t dirty = run()->kvm_dirty_regs;
        const std::uint64_t valid = run()->kvm_valid_regs;
        std::uint64_t held_sync = 0;
        std::apply([&](auto&... c) { (save_held(c, held_sync), ...); }, caches_);
        // Nothing of the handler's may reach KVM before the completion; KVM stores the completed
        // state of the held synced blocks into kvm_run on the way out.
        run()->kvm_dirty_regs = 0;
        run()->kvm_valid_regs = valid | held_sync;
        // Load then store, not exchange: a one-byte exchange needs libatomic on some targets
        // (riscv64). A kick landing between the two has posted its bits first; the check of
        // the bits below restores its flag.
        std::atomic_ref<std::uint8_t> ie(run()->immediate_exit);
        const std::uint8_t kicked = ie.load(std::memory_order_seq_cst);
        ie.store(1, std::memory_order_seq_cst);
        // EAGAIN is re-issued as in enter(), and as there at most `max_again` times: a kernel
        // answering EAGAIN for ever must not hang the vCPU thread (it then fails with EAGAIN).
        int rc = 0;
        int err = 0;
        unsigned again = 0;
        do {
            rc = Sys::ioctl(fd_.get(), ioctls::vcpu::run.code, nullptr);
            err = rc < 0 ? errno : 0;
        } while (rc < 0 && err == EAGAIN && ++again < max_again);
        // A kick that came meanwhile must still stop the next KVM_RUN: its bits are posted before
        // its flag, so checking the bits after restoring the flag cannot miss it.
        ie.store(kicked, std::memory_order_seq_cst);
        if (kick_->requests.load(std::memory_order_seq_cst) != 0) ie.store(1, std::memory_order_seq_cst);
        run()->kvm_valid_regs = valid;
        completed_ = true;
        before_entry_ = true; // prepare_entry() resets completed_ before the next KVM_RUN
        if (rc < 0 && err != EINTR) {
            run()->kvm_dirty_regs = dirty;
            held_blocks_ = 0;
            held_regs_ = 0;
            return error{ioctls::vcpu::run.name, err, "completing the exit before the handler's register writes"}
                .with("vcpu_id", id_)
                .with("exit_reason", run()->exit_reason);
        }
        // Merge: the completed state, with the bytes the handler changed on top.
        result<void> r;
        std::apply([&](auto&... c) { (void)((merge_held(c, r)) && ...); }, caches_);
        run()->kvm_dirty_regs = dirty | held_sync;
        held_blocks_ = 0;
        if (!r) {
            held_regs_ = 0;
            return r;
        }
        return apply_held_regs();
    }

    // --- register blocks ------------------------------------------------------

    /// Block `B` for reading: from `kvm_run::s.regs` when synced (no ioctl after
    /// the first run), else from the cache, fetched by the GET ioctl when stale.
    /// The pointer is valid until the next `enter()`.
    template <class B>
    [[nodiscard, gnu::always_inline]] inline result<const typename B::layout*> load() noexcept {
        auto p = fetch<B>();
        if (!p) return p.err();
        return static_cast<const typename B::layout*>(*p);
    }

    /// Block `B` for writing: as `load`, then marks it dirty (`kvm_dirty_regs`
    /// bit when synced; else written by `enter()` with the SET ioctl).
    template <class B>
    [[nodiscard, gnu::always_inline]] inline result<typename B::layout*> modify() noexcept {
        auto p = fetch<B>();
        if (!p) return p.err();
        if ((held_blocks_ & block_bit<B>()) == 0 && ran_ && !completed_ &&
            detail::completion_pending(*run())) [[unlikely]] {
            // The first write to this block during an exit KVM has not completed: remember the
            // block as the exit left it, so enter() can complete the exit first and then apply
            // exactly the bytes the handler changed (whatever the order of answer and write).
            std::get<detail::block_cache<B>>(caches_).before = **p;
            held_blocks_ |= block_bit<B>();
            before_entry_ = true;
        }
        if (synced<B>()) {
            run()->kvm_dirty_regs |= block_traits<B>::sync_bit;
        } else {
            dirty_blocks_ |= block_bit<B>();
            before_entry_ = true;
        }
        return *p;
    }

    /// Writes block `B` now with its SET ioctl (not deferred to the next `KVM_RUN` as `modify`
    /// is), so a caller restoring state controls the order of the SETs (kvm/x86_64_state.hpp).
    /// The cached copy becomes `v` and a pending `modify` of `B` is dropped. Precondition: no
    /// exit awaits completion (call `complete_pending_io` first). Errors: the SET ioctl's name,
    /// errno and the vCPU id; on failure the cache is unchanged.
    template <class B>
    [[nodiscard]] result<void> store(const typename B::layout& v) noexcept {
        static_assert(list_contains_v<B, typename Arch::register_blocks>,
                      "kvm: B is not one of Arch::register_blocks");
        static_assert(KvmBlock<B>, "kvm: no block_traits<B> for this host (see kvm/traits.hpp)");
        constexpr auto io = block_traits<B>::set;
        if (!fd_) [[unlikely]]
            return moved_from(io.name);
        typename B::layout copy = v; // the SET ioctls only read their argument
        if (Sys::ioctl(fd_.get(), io.code, &copy) < 0) return failed(io.name);
        if (synced<B>()) {
            *sync_area<B>() = v;
            run()->kvm_dirty_regs &= ~block_traits<B>::sync_bit;
        } else {
            std::get<detail::block_cache<B>>(caches_).local = v;
            dirty_blocks_ &= ~block_bit<B>();
        }
        valid_blocks_ |= block_bit<B>();
        return ok();
    }

    /// True when block `B` travels through `kvm_run::s.regs`.
    template <class B>
    [[nodiscard]] bool synced() const noexcept {
        return sync_.synced(block_traits<B>::sync_bit);
    }

    // --- keyed banks and ONE_REG ----------------------------------------------

    /// Entry `key` of bank `B` (x86: MSR by index, KVM API 4.18 KVM_GET_MSRS);
    /// "MSR not supported" when KVM does not return exactly one entry.
    template <class B>
    [[nodiscard]] result<std::uint64_t> get_keyed(std::uint64_t key) noexcept {
        return keyed_traits<B>::template get<Sys>(fd_.get(), key);
    }
    /// Writes entry `key` of bank `B` (x86: KVM API 4.19 KVM_SET_MSRS).
    /// Precondition: no pending `modify` of a block holding the same state
    /// (e.g. EFER in `kvm_sregs`), which `KVM_RUN` would apply afterwards.
    template <class B>
    [[nodiscard]] result<void> set_keyed(std::uint64_t key, std::uint64_t value) noexcept {
        return keyed_traits<B>::template set<Sys>(fd_.get(), key, value);
    }

    /// Reads register `id` into `out` (KVM API 4.69 KVM_GET_ONE_REG). `out`
    /// must hold at least `KVM_REG_SIZE(id)` bytes, else EINVAL.
    [[nodiscard]] result<void> get_one_reg(std::uint64_t id, std::span<std::byte> out) noexcept {
        // A write held back during this exit (see set_one_reg) is what the handler reads back.
        for (std::size_t i = 0; i < held_regs_; ++i)
            if (held_[i].id == id && out.size() >= held_[i].size) {
                std::memcpy(out.data(), held_[i].bytes.data(), held_[i].size);
                return ok();
            }
        return one_reg(ioctls::vcpu::get_one_reg, id, out.data(), out.size());
    }
    /// Writes register `id` from `in` (KVM API 4.68 KVM_SET_ONE_REG).
    [[nodiscard]] result<void> set_one_reg(std::uint64_t id, std::span<const std::byte> in) noexcept {
        // During an exit KVM has not completed (an MMIO read, an SBI call...), a register write
        // is held back and applied by enter() after the completion, which would otherwise
        // overwrite it or move the PC past it. Wider registers or a full table complete the
        // exit now instead.
        if (ran_ && !completed_ && detail::completion_pending(*run())) [[unlikely]] {
            const std::uint64_t size = std::uint64_t{1} << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
            std::size_t slot = held_regs_;
            for (std::size_t i = 0; i < held_regs_; ++i)
                if (held_[i].id == id) slot = i;
            if (size <= held_[0].bytes.size() && in.size() >= size && slot < held_.size()) {
                held_[slot].id = id;
                held_[slot].size = static_cast<std::uint8_t>(size);
                std::memcpy(held_[slot].bytes.data(), in.data(), size);
                if (slot == held_regs_) ++held_regs_;
                before_entry_ = true;
                return ok();
            }
            if (auto c = complete_pending_io(); !c) return c;
        }
        // KVM_SET_ONE_REG only reads through kvm_one_reg::addr.
        return one_reg(ioctls::vcpu::set_one_reg, id, const_cast<std::byte*>(in.data()), in.size());
    }

    /// The ids of every register `get_one_reg`/`set_one_reg` reach on this vCPU (KVM API 4.84
    /// KVM_GET_REG_LIST), what a VMM saves and restores for migration or snapshots. The kernel's
    /// `struct kvm_reg_list { __u64 n; __u64 reg[]; }` is laid out in `storage` (word 0 is `n`),
    /// so no allocation; the ids are returned as a view into it. Errors: EINVAL for an empty
    /// `storage`; E2BIG when it is too small, with "needed" = words it must hold; the kernel's
    /// errno otherwise (x86 KVM has no register list: EINVAL).
    [[nodiscard]] result<std::span<const std::uint64_t>> reg_list(std::span<std::uint64_t> storage) noexcept {
        constexpr auto io = ioctls::vcpu::get_reg_list;
        if (storage.empty()) return error{io.name, EINVAL, "storage has no room for the count"};
        storage[0] = storage.size() - 1;
        // The kernel reads n, then writes n and at most n ids after it (4.84).
        if (Sys::ioctl(fd_.get(), io.code, storage.data()) < 0) {
            if (errno == E2BIG)
                return error{io.name, E2BIG, "storage too small for the register list"}
                    .with("vcpu_id", id_)
                    .with("needed", storage[0] + 1)
                    .with("size", storage.size());
            return failed(io.name);
        }
        if (storage[0] > storage.size() - 1) return error{io.name, EPROTO, "kernel listed more ids than room"};
        return std::span<const std::uint64_t>(storage.subspan(1, static_cast<std::size_t>(storage[0])));
    }

    // --- coalesced MMIO / PIO -------------------------------------------------

    /// Hands every write KVM buffered in the coalesced ring (KVM API 4.116
    /// KVM_REGISTER_COALESCED_MMIO) to `f(coalesced_write&)`, oldest first,
    /// consuming each entry before calling `f`. Stops and returns false when
    /// `f` returns false; true when the ring is empty. Ring indices are checked
    /// against the ring's capacity: a corrupt `first` is reset to `last`
    /// (entries are dropped, never read out of bounds). No allocation.
    template <class F>
    bool drain_coalesced(F&& f) noexcept {
        return ring_.drain(std::forward<F>(f));
    }
    /// Times `drain_coalesced` found a ring index out of range.
    [[nodiscard]] std::size_t coalesced_ring_errors() const noexcept { return ring_.errors(); }
    /// Entries the coalesced ring holds (`KVM_COALESCED_MMIO_MAX`), 0 without a ring.
    [[nodiscard]] std::uint32_t coalesced_ring_capacity() const noexcept { return ring_.capacity(); }

#if defined(__x86_64__)
    // --- x86 CPUID ----------------------------------------------------------------

    /// The host-supported CPUID leaves (KVM API 4.46 KVM_GET_SUPPORTED_CPUID on
    /// the system fd this vCPU's VM came from). Returns the entry count.
    [[nodiscard]] result<std::size_t> supported_cpuid(std::span<::vcpu::x86_64::cpuid_entry> buf) const noexcept {
        return detail::get_supported_cpuid<Sys>(system_fd_, buf);
    }
    /// Sets this vCPU's CPUID (KVM API "KVM_SET_CPUID2"). Call before the first run.
    [[nodiscard]] result<void> set_cpuid(std::span<const ::vcpu::x86_64::cpuid_entry> entries) noexcept {
        return detail::set_cpuid2<Sys>(fd_.get(), entries);
    }
#endif

    // --- raw access ---------------------------------------------------------------

    /// The vCPU fd (owned here).
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    /// The mapped `kvm_run` (valid while this object lives).
    [[nodiscard]] ::kvm_run* run() const noexcept { return reinterpret_cast<::kvm_run*>(map_.data()); }
    /// Bytes mapped at `run()`.
    [[nodiscard]] std::size_t mmap_size() const noexcept { return map_.size(); }
    /// `KVM_SYNC_*` bits in effect (`kvm_run::kvm_valid_regs`).
    [[nodiscard]] std::uint64_t sync_mask() const noexcept { return sync_.mask(); }
    /// Any vCPU ioctl this class does not wrap; errors carry the entry's name.
    /// Precondition: register caches are not relied on across it.
    [[nodiscard]] result<int> ioctl(ioctl_def<fd_kind::vcpu> io, void* arg) noexcept {
        const int rc = Sys::ioctl(fd_.get(), io.code, arg);
        if (rc < 0) return failed(io.name);
        return rc;
    }
    /// The `/dev/kvm` fd this vCPU's VM came from (not owned), for system queries such as
    /// KVM_GET_MSR_INDEX_LIST and KVM_CHECK_EXTENSION.
    [[nodiscard]] int system_fd() const noexcept { return system_fd_; }
    /// The `KVM_CREATE_VCPU` id.
    [[nodiscard]] unsigned id() const noexcept { return id_; }

private:
    hal_vcpu(basic_fd<Sys> fd, run_mapping<Sys> map, const vcpu_setup& s, std::uint64_t mask,
             std::unique_ptr<detail::kick_state> k) noexcept
        : fd_(std::move(fd)), map_(std::move(map)),
          ring_(map_.data(), map_.size(), s.page_size, s.coalesced_page_offset), kick_(std::move(k)),
          system_fd_(s.system_fd), sync_(mask, s.options.sync_idle_exits), before_entry_(true), id_(s.id) {}

    /// `KVM_RUN` again after `EAGAIN` (see `enter`), at most `max_again` times: EAGAIN again
    /// and again (an AP that never gets its SIPI, a broken kernel) must not spin for ever, so
    /// a kick or enough retries end it as an interrupted exit (`err` = EINTR).
    [[gnu::noinline]] int run_again(int& err) noexcept {
        int rc = -1;
        for (unsigned again = 1; err == EAGAIN; ++again) {
            if (again >= max_again || kick_->requests.load(std::memory_order_relaxed) != 0) {
                err = EINTR;
                return -1;
            }
            rc = Sys::ioctl(fd_.get(), ioctls::vcpu::run.code, nullptr);
            if (rc >= 0) {
                err = 0;
                return rc;
            }
            err = errno;
        }
        return rc;
    }

    /// The error of any use of a moved-from vCPU.
    [[nodiscard]] static error moved_from(const char* op) noexcept {
        return error{op, EBADF, "this vCPU was moved from"};
    }
    /// The error of vCPU ioctl `op` that just failed: errno and this vCPU's id.
    [[nodiscard]] error failed(const char* op, const char* detail = "") const noexcept {
        return last_error(op, detail).with("vcpu_id", id_);
    }

    /// Where synced block `B` lives in `kvm_run::s.regs`.
    template <class B>
    [[nodiscard]] typename B::layout* sync_area() const noexcept {
        // kvm_run::s holds the arch's kvm_sync_regs, whose members the block
        // layouts are asserted identical to (x86_64_abi.hpp); the mapping spans
        // sizeof(kvm_run) (checked in create()).
        return reinterpret_cast<typename B::layout*>(reinterpret_cast<std::byte*>(&run()->s) +
                                                     block_traits<B>::sync_offset);
    }

    /// Block `B` for reading or writing: inline when KVM stored it at the last exit (the common
    /// case with sync regs: a pointer into `kvm_run::s.regs`), else `fetch_slow`.
    template <class B>
    [[nodiscard, gnu::always_inline]] inline result<typename B::layout*> fetch() noexcept {
        static_assert(list_contains_v<B, typename Arch::register_blocks>,
                      "kvm: B is not one of Arch::register_blocks");
        static_assert(KvmBlock<B>, "kvm: no block_traits<B> for this host (see kvm/traits.hpp)");
        constexpr std::uint64_t bit = block_traits<B>::sync_bit;
        if (ran_ && sync_.stored(bit) && synced<B>() && fd_) [[likely]] {
            sync_.use(bit); // stored: nothing to put back
            return sync_area<B>();
        }
        return fetch_slow<B>();
    }

    template <class B>
    [[nodiscard, gnu::noinline]] result<typename B::layout*> fetch_slow() noexcept {
        if (!fd_) [[unlikely]]
            return moved_from(block_traits<B>::get.name);
        auto& c = std::get<detail::block_cache<B>>(caches_);
        typename B::layout* p = synced<B>() ? sync_area<B>() : &c.local;
        if (synced<B>()) {
            if (sync_.use(block_traits<B>::sync_bit)) before_entry_ = true; // put it back
            if (ran_ && sync_.stored(block_traits<B>::sync_bit))
                return p; // KVM stored it at the last exit
        }
        if ((valid_blocks_ & block_bit<B>()) == 0) {
            // A synced block with a write still pending (kvm_dirty_regs) holds the newest values:
            // fetching it from KVM would drop them.
            if (synced<B>() && (run()->kvm_dirty_regs & block_traits<B>::sync_bit) != 0) {
                valid_blocks_ |= block_bit<B>();
                return p;
            }
            constexpr auto io = block_traits<B>::get;
            if (Sys::ioctl(fd_.get(), io.code, p) < 0) return failed(io.name);
            valid_blocks_ |= block_bit<B>();
        }
        return p;
    }

    /// The work `enter()` does before `KVM_RUN` when `before_entry_` says there is some: SET
    /// ioctls for dirty unsynced blocks, then the sync-register adaptation. In the steady state
    /// (no unsynced block written, the synced blocks a handler reads already stored, no idle
    /// block due to drop) `enter()` skips it with two tests, also when handlers read and write
    /// synced registers at every exit (the tracker then adapts once per `sync_idle_exits`).
    [[nodiscard, gnu::noinline]] result<void> prepare_entry() noexcept {
        if (held_blocks_ != 0 || held_regs_ != 0) {
            if (auto c = complete_pending_io(); !c) return c;
        }
        completed_ = false; // the exit about to come is a new one
        if (auto f = flush(); !f) return f;
        sync_.adapt(*run());
        if (!ran_) {
            // Keep the boot state the first KVM_RUN is to apply: if that run fails, KVM may have
            // overwritten it in kvm_run (failed_run() puts it back and explains the failure).
            first_dirty_ = run()->kvm_dirty_regs;
            std::apply([&](auto&... c) { (keep_first(c), ...); }, caches_);
        }
        before_entry_ = !ran_;
        return ok();
    }

    template <class B>
    void keep_first(detail::block_cache<B>& c) noexcept {
        if (synced<B>() && (first_dirty_ & block_traits<B>::sync_bit) != 0) c.scratch = *sync_area<B>();
    }
    template <class B>
    void restore_first(detail::block_cache<B>& c, const char*& why) noexcept {
        if (!synced<B>() || (first_dirty_ & block_traits<B>::sync_bit) == 0) return;
        *sync_area<B>() = c.scratch;
        if constexpr (requires { block_traits<B>::explain_invalid(c.scratch); })
            if (why == nullptr) why = block_traits<B>::explain_invalid(c.scratch);
    }
    /// KVM_RUN failed with `err` (not EINTR). Before the first successful run, the writes the
    /// run was to apply are put back (KVM may have stored its own state over them) and stay
    /// pending, so a register read returns them and a retry applies them; when a pending block
    /// breaks an architectural rule, the error says which.
    [[gnu::noinline]] error failed_run(int err) noexcept {
        const char* why = nullptr;
        if (!ran_ && first_dirty_ != 0) {
            std::apply([&](auto&... c) { (restore_first(c, why), ...); }, caches_);
            run()->kvm_dirty_regs |= first_dirty_;
        }
        before_entry_ = true;
        return error{ioctls::vcpu::run.name, err, why != nullptr ? why : ""}.with("vcpu_id", id_);
    }

    template <class B>
    void save_held(detail::block_cache<B>& c, std::uint64_t& held_sync) noexcept {
        if ((held_blocks_ & block_bit<B>()) == 0) return;
        if (synced<B>()) {
            c.scratch = *sync_area<B>();
            held_sync |= block_traits<B>::sync_bit;
        }
    }
    /// After the completion: `c`'s block = completed state where the handler left a byte as
    /// the exit had it, the handler's byte where it changed one.
    template <class B>
    bool merge_held(detail::block_cache<B>& c, result<void>& r) noexcept {
        if ((held_blocks_ & block_bit<B>()) == 0) return true;
        auto* before = reinterpret_cast<const std::byte*>(&c.before);
        if (synced<B>()) {
            // kvm_run now holds the completed block; the handler's image is in scratch.
            auto* now = reinterpret_cast<std::byte*>(sync_area<B>());
            auto* mine = reinterpret_cast<const std::byte*>(&c.scratch);
            for (std::size_t i = 0; i < sizeof(typename B::layout); ++i)
                if (mine[i] != before[i]) now[i] = mine[i];
            return true;
        }
        // Unsynced: the handler's image is the cache; fetch the completed block beside it.
        constexpr auto io = block_traits<B>::get;
        if (Sys::ioctl(fd_.get(), io.code, &c.scratch) < 0) {
            r = failed(io.name, "reading the completed exit's registers");
            return false;
        }
        auto* mine = reinterpret_cast<std::byte*>(&c.local);
        auto* done = reinterpret_cast<const std::byte*>(&c.scratch);
        for (std::size_t i = 0; i < sizeof(typename B::layout); ++i)
            if (mine[i] == before[i]) mine[i] = done[i];
        valid_blocks_ |= block_bit<B>();
        dirty_blocks_ |= block_bit<B>();
        return true;
    }
    /// The ONE_REG writes held back during the exit, in order.
    [[nodiscard]] result<void> apply_held_regs() noexcept {
        const std::size_t n = held_regs_;
        held_regs_ = 0;
        for (std::size_t i = 0; i < n; ++i)
            if (auto s = one_reg(ioctls::vcpu::set_one_reg, held_[i].id, held_[i].bytes.data(),
                                 held_[i].size);
                !s)
                return s;
        return ok();
    }

    /// SET ioctls for dirty unsynced blocks.
    [[nodiscard]] result<void> flush() noexcept {
        result<void> r;
        if (dirty_blocks_ == 0) return r;
        std::apply(
            [&](auto&... c) {
                (void)((flush_one(c, r)) && ...);
            },
            caches_);
        return r;
    }
    template <class B>
    bool flush_one(detail::block_cache<B>& c, result<void>& r) noexcept {
        if ((dirty_blocks_ & block_bit<B>()) == 0) return true;
        constexpr auto io = block_traits<B>::set;
        if (Sys::ioctl(fd_.get(), io.code, &c.local) < 0) {
            r = failed(io.name);
            return false;
        }
        dirty_blocks_ &= ~block_bit<B>();
        return true;
    }
    /// Bit of block `B` in `valid_blocks_` / `dirty_blocks_`. The flags are
    /// kept together (not next to each block's image) so that the checks each
    /// entry makes touch one cache line: after KVM_RUN the kernel has usually
    /// evicted them, and a line per block cost ~1% of a PVM exit.
    template <class B>
    static constexpr std::uint32_t block_bit() noexcept {
        static_assert(list_index_v<B, typename Arch::register_blocks> < 32);
        return std::uint32_t{1} << list_index_v<B, typename Arch::register_blocks>;
    }
    void invalidate_unsynced() noexcept {
        valid_blocks_ = 0;
    }

    template <fd_kind K>
    [[nodiscard]] result<void> one_reg(ioctl_def<K> io, std::uint64_t id, std::byte* buf,
                                       std::size_t len) noexcept {
        const std::uint64_t need = std::uint64_t{1} << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
        if (len < need)
            return error{io.name, EINVAL, "buffer smaller than the register"}
                .with_hex("reg", id)
                .with("size", len)
                .with("needed", need);
        ::kvm_one_reg r{};
        r.id = id;
        r.addr = reinterpret_cast<std::uintptr_t>(buf); // the kernel copies KVM_REG_SIZE(id) bytes
        if (Sys::ioctl(fd_.get(), io.code, &r) < 0) return failed(io.name).with_hex("reg", id);
        return ok();
    }

    basic_fd<Sys> fd_;
    run_mapping<Sys> map_; ///< after fd_: unmapped before the fd closes
    coalesced_ring ring_;  ///< a view into map_
    std::unique_ptr<detail::kick_state> kick_;
    int system_fd_ = -1;
    bool ran_ = false; ///< KVM_RUN has stored synced blocks at least once
    typename caches_t::type caches_{};
    std::uint32_t valid_blocks_ = 0; ///< blocks whose storage holds the vCPU's current values
    std::uint32_t dirty_blocks_ = 0; ///< unsynced blocks modified since the last enter()
    detail::sync_tracker sync_;      ///< which synced blocks KVM stores at each exit
    bool before_entry_ = false;      ///< prepare_entry() has work: dirty, used or counting blocks
    bool completed_ = false;         ///< complete_pending_io() ran since the last exit
    std::uint64_t first_dirty_ = 0;  ///< kvm_dirty_regs the first KVM_RUN was given
    std::uint32_t requests_ = 0;     ///< kick requests taken at the last interrupted exit
    std::uint32_t held_blocks_ = 0;  ///< blocks a handler wrote during an uncompleted exit
    std::size_t held_regs_ = 0;      ///< ONE_REG writes held back, in held_
    std::array<detail::held_one_reg, 8> held_{};
    unsigned id_ = 0;                ///< KVM_CREATE_VCPU id, for errors
    /// `KVM_RUN` re-issued after `EAGAIN` at most this often in one `enter()`.
    static constexpr unsigned max_again = 1024;
};

} // namespace vcpu::kvm
