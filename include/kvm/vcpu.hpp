#pragma once
/// \file
/// `hal_vcpu<Sys, Arch>`: the KVM HAL's per-vCPU state — the vCPU fd, its
/// `kvm_run` mapping, the register-block cache with `KVM_CAP_SYNC_REGS`, the
/// coalesced MMIO/PIO ring and the kick facility. It models
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

#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/traits.hpp>
#include <kvm/x86_64_abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <kvm/run.hpp>
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

/// Per-vCPU choices made at creation.
struct vcpu_options {
    /// `KVM_SYNC_*` bits to request (x86: `KVM_SYNC_X86_REGS`,
    /// `KVM_SYNC_X86_SREGS`, `KVM_SYNC_X86_EVENTS`). Intersected with what
    /// `KVM_CAP_SYNC_REGS` reports and with the arch's synced blocks.
    /// Default: all. 0 forces the GET/SET ioctl path (for benchmarks).
    std::uint64_t sync_regs = ~std::uint64_t{0};
    /// Exits in a row without a `load`/`modify` of a synced block after which
    /// KVM stops storing it in `kvm_run` (until the next access). 0: never.
    std::uint32_t sync_idle_exits = 16;
};

/// What a VM tells a new vCPU (normally filled by `basic_vm::create_vcpu`).
struct vcpu_setup {
    int system_fd = -1;                 ///< `/dev/kvm`, not owned (x86 CPUID queries)
    std::size_t mmap_size = 0;          ///< `KVM_GET_VCPU_MMAP_SIZE`
    std::size_t page_size = 4096;       ///< host page size
    long coalesced_page_offset = 0;     ///< `KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO)`; 0 = none
    std::uint64_t kernel_sync_regs = 0; ///< `KVM_CHECK_EXTENSION(KVM_CAP_SYNC_REGS)`
    vcpu_options options{};
    unsigned id = 0;                    ///< the `KVM_CREATE_VCPU` id (named in errors)
};

namespace detail {
/// What a vCPU and its kickers share. Allocated once per vCPU (setup path), so kickers stay
/// valid when the vCPU object moves.
struct kick_state {
    std::atomic<std::uint32_t> requests{0}; ///< bits posted by kickers, taken by the vCPU
    std::atomic<pthread_t> thread{};        ///< the thread running the vCPU (bind_kick_thread)
    std::atomic<int> signal{0};             ///< the signal that interrupts it; 0: none bound
    ::kvm_run* run = nullptr;               ///< for `immediate_exit`
};
} // namespace detail

/// A handle other threads use to stop a vCPU: `kick(bits)` posts request bits, sets
/// `kvm_run::immediate_exit` and signals the vCPU thread (once it called
/// `hal_vcpu::bind_kick_thread`). The vCPU's next return from the guest is an `interrupted`
/// exit whose `requests` holds every bit posted since the previous one: a kick that lands while
/// the vCPU runs guest code interrupts `KVM_RUN`; one that lands while its thread is in
/// userspace makes the next `KVM_RUN` return at once. No kick is lost: the vCPU clears
/// `immediate_exit` *before* taking the bits, and a kicker posts the bits *before* setting it
/// (both sequentially consistent), so a request taken late still finds the flag set.
/// Thread-safe; copyable; valid while the vCPU lives (KVM API 4.10 "KVM_RUN", `immediate_exit`).
class kicker {
public:
    explicit kicker(detail::kick_state* k) noexcept : k_(k) {}
    /// Posts `requests` (at least one bit) and interrupts the vCPU. Errors: `pthread_kill`'s.
    [[nodiscard]] result<void> kick(std::uint32_t requests = 1) const noexcept {
        k_->requests.fetch_or(requests == 0 ? 1 : requests, std::memory_order_seq_cst);
        std::atomic_ref<std::uint8_t>(k_->run->immediate_exit).store(1, std::memory_order_seq_cst);
        if (const int sig = k_->signal.load(std::memory_order_acquire); sig != 0)
            if (const int e = ::pthread_kill(k_->thread.load(std::memory_order_acquire), sig); e != 0)
                return error{"pthread_kill", e, "signalling the vCPU thread"}.with("signal", sig);
        return ok();
    }
    /// As `kick(1)`, signalling `thread` with `sig` when the vCPU thread did not bind itself.
    [[nodiscard]] result<void> kick(pthread_t thread, int sig) const noexcept {
        if (k_->signal.load(std::memory_order_acquire) != 0) return kick(std::uint32_t{1});
        k_->requests.fetch_or(1, std::memory_order_seq_cst);
        std::atomic_ref<std::uint8_t>(k_->run->immediate_exit).store(1, std::memory_order_seq_cst);
        if (const int e = ::pthread_kill(thread, sig); e != 0) return error{"pthread_kill", e}.with("signal", sig);
        return ok();
    }

private:
    detail::kick_state* k_;
};

/// Installs a no-op handler for `sig` without `SA_RESTART`, so that the signal
/// a `kicker` sends interrupts `KVM_RUN` with `EINTR` instead of terminating
/// the process. Process-wide; call once at setup.
[[nodiscard]] inline result<void> install_kick_handler(int sig = SIGUSR1) noexcept {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    if (::sigaction(sig, &sa, nullptr) != 0) return last_error("sigaction").with("signal", sig);
    return ok();
}

namespace detail {
/// Cached image and state of one register block.
template <class B>
struct block_cache {
    typename B::layout local{};   ///< storage when the block is not synced
    typename B::layout before{};  ///< the block as the exit left it, before a handler wrote it
    typename B::layout scratch{}; ///< the handler's image while KVM completes the exit
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

/// A ONE_REG write held back while its exit is completed (see `completion_pending`).
struct held_one_reg {
    std::uint64_t id = 0;
    std::array<std::byte, 16> bytes{};
    std::uint8_t size = 0;
};
/// Position of block `B` in `List` (bit in `hal_vcpu`'s valid/dirty masks).
template <class B, class List> struct block_index;
template <class B, class... Bs> struct block_index<B, type_list<Bs...>> {
    static constexpr unsigned value = [] {
        constexpr bool m[] = {std::is_same_v<B, Bs>..., false};
        unsigned i = 0;
        while (i < sizeof...(Bs) && !m[i]) ++i;
        return i;
    }();
};
template <class List> struct block_caches;
template <class... B> struct block_caches<type_list<B...>> {
    using type = std::tuple<block_cache<B>...>;
    /// Union of the blocks' sync bits.
    static constexpr std::uint64_t sync_bits = (std::uint64_t{0} | ... | block_traits<B>::sync_bit);
};

/// `struct kvm_coalesced_mmio_ring` header size in the kernel's C layout
/// (`c_flex_header_size` in ioctls.hpp says why the UAPI struct is not used).
inline constexpr std::size_t coalesced_ring_header = c_flex_header_size;
/// The ring header of a vCPU without a coalesced ring: `first == last`, never written (a
/// ring of capacity 0), so the drain needs no null test per exit.
alignas(8) inline std::uint32_t no_coalesced_ring[2] = {0, 0};

/// The mapped `kvm_run` of a vCPU fd (KVM API 4.10, mmap of the vCPU fd at offset 0) and the
/// coalesced ring page inside it. Move-only; moving leaves the source *detached*: a per-thread
/// zeroed `kvm_run` that is never null, so the exit path needs no null test and a stray use of
/// a moved-from vCPU reads an empty record instead of faulting.
template <class Sys>
struct run_mapping {
    ::kvm_run* run = detached();
    std::size_t size = sizeof(::kvm_run);
    std::byte* ring = reinterpret_cast<std::byte*>(no_coalesced_ring); ///< ring page, or the empty header
    std::uint32_t ring_max = 0;                                         ///< ring entries (0: none)

    run_mapping() noexcept = default;
    run_mapping(::kvm_run* r, std::size_t n) noexcept : run(r), size(n) {}
    run_mapping(run_mapping&& o) noexcept
        : run(std::exchange(o.run, detached())), size(std::exchange(o.size, sizeof(::kvm_run))),
          ring(std::exchange(o.ring, reinterpret_cast<std::byte*>(no_coalesced_ring))),
          ring_max(std::exchange(o.ring_max, 0)) {}
    run_mapping& operator=(run_mapping&& o) noexcept {
        if (this != &o) {
            release();
            run = std::exchange(o.run, detached());
            size = std::exchange(o.size, sizeof(::kvm_run));
            ring = std::exchange(o.ring, reinterpret_cast<std::byte*>(no_coalesced_ring));
            ring_max = std::exchange(o.ring_max, 0);
        }
        return *this;
    }
    run_mapping(const run_mapping&) = delete;
    run_mapping& operator=(const run_mapping&) = delete;
    ~run_mapping() { release(); }

    [[nodiscard]] bool attached() const noexcept { return run != detached(); }
    static ::kvm_run* detached() noexcept {
        static thread_local ::kvm_run r{};
        return &r;
    }

private:
    void release() noexcept {
        if (attached()) (void)Sys::munmap(run, size);
        run = detached();
        size = sizeof(::kvm_run);
        ring = reinterpret_cast<std::byte*>(no_coalesced_ring);
        ring_max = 0;
    }
};
static_assert(sizeof(::kvm_coalesced_mmio) == 24, "kvm: struct kvm_coalesced_mmio is 24 bytes");
} // namespace detail

/// The KVM HAL's vCPU for architecture `Arch` with Sys policy `Sys`. Move-only;
/// owns the vCPU fd and unmaps `kvm_run` on destruction.
template <class Sys, class Arch>
class hal_vcpu {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");
    using caches_t = detail::block_caches<typename Arch::register_blocks>;

public:
    /// The exit record `exit_decoder<Arch, kvm::run_view>` reads: the mapped `kvm_run`.
    using raw_exit = ::vcpu::kvm::run_view;
    using arch_type = Arch;
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
        void* p = Sys::mmap(nullptr, s.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (p == MAP_FAILED)
            return last_error("mmap kvm_run").with("vcpu_id", s.id).with("size", s.mmap_size);
        // The vCPU fd's page 0 is struct kvm_run (KVM API 4.10), and the mapping
        // spans at least sizeof(kvm_run) (checked above).
        auto* run = static_cast<::kvm_run*>(p);
        const std::uint64_t mask = s.kernel_sync_regs & s.options.sync_regs & arch_sync_bits;
        run->kvm_valid_regs = mask;
        run->kvm_dirty_regs = 0;
        auto k = std::make_unique<detail::kick_state>();
        k->run = run;
        return hal_vcpu(std::move(fd), run, s, mask, std::move(k));
    }

    /// Moves take over the fd, the mapping and the caches; the moved-from vCPU has no fd and a
    /// detached `kvm_run`, so using it fails with EBADF ("this vCPU was moved from").
    hal_vcpu(hal_vcpu&&) noexcept = default;
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
        if (before_entry_) [[unlikely]] {
            if (auto f = prepare_entry(); !f) return f;
        }
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
            map_.run->exit_reason = KVM_EXIT_INTR;
            take_requests();
            return ok();
        }
        ran_ = true;
        return ok();
    }

    /// The exit record of the last `enter()`: valid until the next one.
    [[nodiscard]] raw_exit exit_record() const noexcept {
        // create() refused mappings smaller than struct kvm_run and the size never changes;
        // saying so lets the decoder's own size check fold away.
        if (map_.size < sizeof(::kvm_run) || map_.run == nullptr) __builtin_unreachable();
        return raw_exit{map_.run, map_.size, requests_};
    }

    /// Sets or clears `kvm_run::immediate_exit` (KVM API 4.10): while set,
    /// `KVM_RUN` returns `EINTR` at once.
    void immediate_exit(bool on) noexcept {
        // Shared with the kernel and with kicker threads: byte-wide atomic store.
        std::atomic_ref<std::uint8_t>(map_.run->immediate_exit)
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
        struct sigaction cur{};
        if (::sigaction(sig, nullptr, &cur) != 0) return last_error("sigaction").with("signal", sig);
        if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN) {
            if (auto r = install_kick_handler(sig); !r) return r;
        }
        sigset_t mask;
        if (const int e = ::pthread_sigmask(SIG_BLOCK, nullptr, &mask); e != 0)
            return error{"pthread_sigmask", e};
        sigdelset(&mask, sig);
        // struct kvm_signal_mask { __u32 len; __u8 sigset[]; } with the kernel's 8-byte sigset
        // after the header (glibc's sigset_t starts with the same 64 bits).
        // The C layout (the C++ one differs, see detail::with_c_flex_size): len at 0, set at 4.
        constexpr std::size_t head = sizeof(std::uint32_t);
        alignas(std::uint32_t) std::array<std::byte, head + 8> arg{};
        const std::uint32_t len = 8;
        std::memcpy(arg.data(), &len, sizeof len);
        std::memcpy(arg.data() + head, &mask, 8);
        if (Sys::ioctl(fd_.get(), ioctls::vcpu::set_signal_mask.code, arg.data()) < 0)
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
    [[nodiscard, gnu::noinline]] result<void> complete_pending_io() noexcept {
        if (!ran_ || completed_ || !detail::completion_pending(*map_.run)) {
            held_blocks_ = 0;
            return apply_held_regs();
        }
        // The handler's images of the synced blocks it wrote, kept while KVM stores its own.
        const std::uint64_t dirty = map_.run->kvm_dirty_regs;
        const std::uint64_t valid = map_.run->kvm_valid_regs;
        std::uint64_t held_sync = 0;
        std::apply([&](auto&... c) { (save_held(c, held_sync), ...); }, caches_);
        // Nothing of the handler's may reach KVM before the completion; KVM stores the completed
        // state of the held synced blocks into kvm_run on the way out.
        map_.run->kvm_dirty_regs = 0;
        map_.run->kvm_valid_regs = valid | held_sync;
        // Load then store, not exchange: a one-byte exchange needs libatomic on some targets
        // (riscv64). A kick landing between the two has posted its bits first; the check of
        // the bits below restores its flag.
        std::atomic_ref<std::uint8_t> ie(map_.run->immediate_exit);
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
        map_.run->kvm_valid_regs = valid;
        completed_ = true;
        before_entry_ = true; // prepare_entry() resets completed_ before the next KVM_RUN
        if (rc < 0 && err != EINTR) {
            map_.run->kvm_dirty_regs = dirty;
            held_blocks_ = 0;
            held_regs_ = 0;
            return error{ioctls::vcpu::run.name, err, "completing the exit before the handler's register writes"}
                .with("vcpu_id", id_)
                .with("exit_reason", map_.run->exit_reason);
        }
        // Merge: the completed state, with the bytes the handler changed on top.
        result<void> r;
        std::apply([&](auto&... c) { (void)((merge_held(c, r)) && ...); }, caches_);
        map_.run->kvm_dirty_regs = dirty | held_sync;
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
            detail::completion_pending(*map_.run)) [[unlikely]] {
            // The first write to this block during an exit KVM has not completed: remember the
            // block as the exit left it, so enter() can complete the exit first and then apply
            // exactly the bytes the handler changed (whatever the order of answer and write).
            std::get<detail::block_cache<B>>(caches_).before = **p;
            held_blocks_ |= block_bit<B>();
            before_entry_ = true;
        }
        if (synced<B>()) {
            map_.run->kvm_dirty_regs |= block_traits<B>::sync_bit;
        } else {
            dirty_blocks_ |= block_bit<B>();
            before_entry_ = true;
        }
        return *p;
    }

    /// True when block `B` travels through `kvm_run::s.regs`.
    template <class B>
    [[nodiscard]] bool synced() const noexcept {
        return (sync_mask_ & block_traits<B>::sync_bit) != 0;
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
        if (ran_ && !completed_ && detail::completion_pending(*map_.run)) [[unlikely]] {
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

    // --- coalesced MMIO / PIO -------------------------------------------------

    /// Hands every write KVM buffered in the coalesced ring (KVM API 4.116
    /// KVM_REGISTER_COALESCED_MMIO) to `f(coalesced_write&)`, oldest first,
    /// consuming each entry before calling `f`. Stops and returns false when
    /// `f` returns false; true when the ring is empty. Ring indices are checked
    /// against the ring's capacity: a corrupt `first` is reset to `last`
    /// (entries are dropped, never read out of bounds). No allocation.
    template <class F>
    bool drain_coalesced(F&& f) noexcept {
        // The ring page is mapped with kvm_run (checked at creation); first/last
        // are naturally aligned u32s shared with the kernel, hence atomic_ref.
        auto* hdr = reinterpret_cast<std::uint32_t*>(map_.ring);
        std::atomic_ref<std::uint32_t> first(hdr[0]);
        std::atomic_ref<std::uint32_t> last(hdr[1]);
        for (;;) {
            const std::uint32_t i = first.load(std::memory_order_relaxed); // only we write it
            const std::uint32_t end = last.load(std::memory_order_acquire); // entries before it are written
            if (i == end) return true;
            if (i >= map_.ring_max || end >= map_.ring_max) {
                ++dropped_;
                if (end < map_.ring_max) first.store(end, std::memory_order_release);
                return true;
            }
            ::kvm_coalesced_mmio e;
            std::memcpy(&e, map_.ring + detail::coalesced_ring_header + i * sizeof(e), sizeof e);
            coalesced_write w;
            w.address = e.phys_addr;
            w.size = e.len <= 8 ? e.len : 8;
            w.pio = e.pio != 0;
            std::memcpy(w.bytes.data(), e.data, w.size);
            first.store((i + 1) % map_.ring_max, std::memory_order_release);
            if (!f(w)) return false;
        }
    }
    /// Times `drain_coalesced` found a ring index out of range.
    [[nodiscard]] std::size_t coalesced_ring_errors() const noexcept { return dropped_; }
    /// Entries the coalesced ring holds (`KVM_COALESCED_MMIO_MAX`), 0 without a ring.
    [[nodiscard]] std::uint32_t coalesced_ring_capacity() const noexcept { return map_.ring_max; }

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
    [[nodiscard]] ::kvm_run* run() const noexcept { return map_.run; }
    /// Bytes mapped at `run()`.
    [[nodiscard]] std::size_t mmap_size() const noexcept { return map_.size; }
    /// `KVM_SYNC_*` bits in effect (`kvm_run::kvm_valid_regs`).
    [[nodiscard]] std::uint64_t sync_mask() const noexcept { return sync_mask_; }
    /// Any vCPU ioctl this class does not wrap; errors carry the entry's name.
    /// Precondition: register caches are not relied on across it.
    [[nodiscard]] result<int> ioctl(ioctl_def<fd_kind::vcpu> io, void* arg) noexcept {
        const int rc = Sys::ioctl(fd_.get(), io.code, arg);
        if (rc < 0) return failed(io.name);
        return rc;
    }
    /// The `KVM_CREATE_VCPU` id.
    [[nodiscard]] unsigned id() const noexcept { return id_; }

private:
    hal_vcpu(basic_fd<Sys> fd, ::kvm_run* run, const vcpu_setup& s, std::uint64_t mask,
             std::unique_ptr<detail::kick_state> k) noexcept
        : fd_(std::move(fd)), map_(run, s.mmap_size), kick_(std::move(k)), sync_mask_(mask),
          system_fd_(s.system_fd), idle_limit_(s.options.sync_idle_exits), run_valid_(mask),
          counting_(s.options.sync_idle_exits != 0 ? mask & tracked_sync_bits : 0),
          before_entry_(true), id_(s.id) {
        // KVM API 4.116: the ring is page `coalesced_page_offset` of the vCPU
        // mapping; only use it when that page lies wholly inside the mapping.
        const std::size_t page = s.page_size;
        if (s.coalesced_page_offset > 0 && page > detail::coalesced_ring_header &&
            static_cast<std::size_t>(s.coalesced_page_offset) < map_.size / page &&
            (static_cast<std::size_t>(s.coalesced_page_offset) + 1) * page <= map_.size) {
            // In bounds of the mapping (checked just above).
            map_.ring = reinterpret_cast<std::byte*>(map_.run) +
                    static_cast<std::size_t>(s.coalesced_page_offset) * page;
            // KVM_COALESCED_MMIO_MAX, computed from the runtime page size.
            map_.ring_max = static_cast<std::uint32_t>((page - detail::coalesced_ring_header) /
                                                   sizeof(::kvm_coalesced_mmio));
        }
    }


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

    /// After KVM_RUN returned EINTR: clear `immediate_exit`, *then* take the posted requests
    /// (see `kicker` for why this order loses none).
    void take_requests() noexcept {
        std::atomic_ref<std::uint8_t>(map_.run->immediate_exit).store(0, std::memory_order_seq_cst);
        requests_ = kick_->requests.exchange(0, std::memory_order_seq_cst);
        // When the vCPU thread blocks the kick signal, KVM_SET_SIGNAL_MASK lets it interrupt
        // KVM_RUN, but KVM restores the thread's mask before returning: the signal stays
        // pending and would end every later KVM_RUN at once. Consume it here (QEMU does the
        // same with sigtimedwait after KVM_RUN).
        if (const int sig = kick_->signal.load(std::memory_order_relaxed); sig != 0) {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, sig);
            const timespec now{};
            while (::sigtimedwait(&set, nullptr, &now) == sig) {
            }
        }
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
        return reinterpret_cast<typename B::layout*>(reinterpret_cast<std::byte*>(&map_.run->s) +
                                                     block_traits<B>::sync_offset);
    }

    template <class B>
    [[nodiscard]] result<typename B::layout*> fetch() noexcept {
        static_assert(list_contains_v<B, typename Arch::register_blocks>,
                      "kvm: B is not one of Arch::register_blocks");
        static_assert(KvmBlock<B>, "kvm: no block_traits<B> for this host (see kvm/traits.hpp)");
        if (!fd_) [[unlikely]]
            return moved_from(block_traits<B>::get.name);
        auto& c = std::get<detail::block_cache<B>>(caches_);
        typename B::layout* p = synced<B>() ? sync_area<B>() : &c.local;
        if (synced<B>()) {
            used_ |= block_traits<B>::sync_bit;
            before_entry_ = true;
            if (ran_ && (run_valid_ & block_traits<B>::sync_bit) != 0)
                return p; // KVM stored it at the last exit
        }
        if ((valid_blocks_ & block_bit<B>()) == 0) {
            // A synced block with a write still pending (kvm_dirty_regs) holds the newest values:
            // fetching it from KVM would drop them.
            if (synced<B>() && (map_.run->kvm_dirty_regs & block_traits<B>::sync_bit) != 0) {
                valid_blocks_ |= block_bit<B>();
                return p;
            }
            constexpr auto io = block_traits<B>::get;
            if (Sys::ioctl(fd_.get(), io.code, p) < 0) return failed(io.name);
            valid_blocks_ |= block_bit<B>();
        }
        return p;
    }

    /// Drops from `kvm_valid_regs` the synced blocks idle for `idle_limit_`
    /// exits, puts back those accessed since the last entry; remembers what
    /// this KVM_RUN will store.
    void adapt_sync() noexcept {
        std::uint64_t valid = run_valid_;
        for (std::uint64_t m = (used_ | counting_) & tracked_sync_bits; m != 0; m &= m - 1) {
            const auto b = static_cast<unsigned>(__builtin_ctzll(m));
            const std::uint64_t bit = std::uint64_t{1} << b;
            if ((used_ & bit) != 0) {
                idle_[b] = 0;
                valid |= bit;
                if (idle_limit_ != 0) counting_ |= bit;
            } else if (++idle_[b] >= idle_limit_) {
                valid &= ~bit;
                counting_ &= ~bit;
            }
        }
        used_ = 0;
        if (valid != run_valid_) {
            map_.run->kvm_valid_regs = valid;
            run_valid_ = valid;
        }
    }

    /// The work `enter()` does before `KVM_RUN` when `before_entry_` says there is some: SET
    /// ioctls for dirty unsynced blocks, then the sync-register adaptation. In the steady state
    /// (no register touched, every idle block already out of kvm_valid_regs) `enter()` skips it
    /// with one test.
    [[nodiscard, gnu::noinline]] result<void> prepare_entry() noexcept {
        if (held_blocks_ != 0 || held_regs_ != 0) {
            if (auto c = complete_pending_io(); !c) return c;
        }
        completed_ = false; // the exit about to come is a new one
        if (auto f = flush(); !f) return f;
        adapt_sync();
        if (!ran_) {
            // Keep the boot state the first KVM_RUN is to apply: if that run fails, KVM may have
            // overwritten it in kvm_run (failed_run() puts it back and explains the failure).
            first_dirty_ = map_.run->kvm_dirty_regs;
            std::apply([&](auto&... c) { (keep_first(c), ...); }, caches_);
        }
        before_entry_ = counting_ != 0 || !ran_;
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
            map_.run->kvm_dirty_regs |= first_dirty_;
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
        static_assert(detail::block_index<B, typename Arch::register_blocks>::value < 32);
        return std::uint32_t{1} << detail::block_index<B, typename Arch::register_blocks>::value;
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
    detail::run_mapping<Sys> map_; ///< after fd_: unmapped before the fd closes
    std::unique_ptr<detail::kick_state> kick_;
    std::size_t dropped_ = 0;
    std::uint64_t sync_mask_ = 0;
    int system_fd_ = -1;
    bool ran_ = false; ///< KVM_RUN has stored synced blocks at least once
    typename caches_t::type caches_{};
    std::uint32_t valid_blocks_ = 0; ///< blocks whose storage holds the vCPU's current values
    std::uint32_t dirty_blocks_ = 0; ///< unsynced blocks modified since the last enter()
    std::uint32_t idle_limit_ = 0;   ///< vcpu_options::sync_idle_exits
    std::uint64_t run_valid_ = 0;    ///< kvm_valid_regs of the last KVM_RUN (only we write it)
    std::uint64_t used_ = 0;         ///< synced blocks accessed since the last enter()
    std::uint64_t counting_ = 0;     ///< synced blocks in kvm_valid_regs, idle count running
    bool before_entry_ = false;      ///< prepare_entry() has work: dirty, used_ or counting_
    bool completed_ = false;         ///< complete_pending_io() ran since the last exit
    std::uint64_t first_dirty_ = 0;  ///< kvm_dirty_regs the first KVM_RUN was given
    std::uint32_t requests_ = 0;     ///< kick requests taken at the last interrupted exit
    std::uint32_t held_blocks_ = 0;  ///< blocks a handler wrote during an uncompleted exit
    std::size_t held_regs_ = 0;      ///< ONE_REG writes held back, in held_
    std::array<detail::held_one_reg, 8> held_{};
    std::array<std::uint32_t, 8> idle_{}; ///< exits without access, per sync bit 0..7
    unsigned id_ = 0;                     ///< KVM_CREATE_VCPU id, for errors
    /// `KVM_RUN` re-issued after `EAGAIN` at most this often in one `enter()`.
    static constexpr unsigned max_again = 1024;
    /// Sync bits whose idleness is tracked (0..7); blocks beyond them are always stored.
    static constexpr std::uint64_t tracked_sync_bits = 0xff;
};

} // namespace vcpu::kvm
