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
#include <vcpu/kvm_record.hpp>
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
};

/// A handle another thread uses to kick a vCPU out of `KVM_RUN`.
///
/// `kick(thread)` sets `kvm_run::immediate_exit` and sends `sig` to the
/// thread running the vCPU; the signal interrupts `KVM_RUN` (or, if the thread
/// is not in `KVM_RUN` yet, `immediate_exit` makes the next one return at
/// once), and `enter()` reports it as an `interrupted` exit. Preconditions:
/// `install_kick_handler(sig)` was called (otherwise the default action of
/// `sig` kills the process); the vCPU outlives the kicker; after handling the
/// interrupted exit the vCPU thread clears the flag with `immediate_exit(false)`.
/// (KVM API 4.10 "KVM_RUN", `immediate_exit`.)
class kicker {
public:
    /// A kicker for the `kvm_run` area `run` (mapped by a `hal_vcpu`).
    explicit kicker(::kvm_run* run) noexcept : run_(run) {}
    /// Sets `immediate_exit` and signals `thread`. Returns `pthread_kill`'s error.
    [[nodiscard]] result<void> kick(pthread_t thread, int sig = SIGUSR1) const noexcept {
        // The byte lives in the shared kvm_run page; atomic_ref orders the store
        // before the signal without a data race with the vCPU thread.
        std::atomic_ref<std::uint8_t>(run_->immediate_exit).store(1, std::memory_order_release);
        if (const int e = ::pthread_kill(thread, sig); e != 0) return error{"pthread_kill", e};
        return ok();
    }

private:
    ::kvm_run* run_;
};

/// Installs a no-op handler for `sig` without `SA_RESTART`, so that the signal
/// a `kicker` sends interrupts `KVM_RUN` with `EINTR` instead of terminating
/// the process. Process-wide; call once at setup.
[[nodiscard]] inline result<void> install_kick_handler(int sig = SIGUSR1) noexcept {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    if (::sigaction(sig, &sa, nullptr) != 0) return last_error("sigaction");
    return ok();
}

namespace detail {
/// Cached image and state of one register block.
template <class B>
struct block_cache {
    typename B::layout local{}; ///< storage when the block is not synced
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

/// `struct kvm_coalesced_mmio_ring` header size in the kernel's C layout (see
/// `flex_array_offset` in x86_64_abi.hpp for why the UAPI struct is not used).
inline constexpr std::size_t coalesced_ring_header = 2 * sizeof(std::uint32_t);
/// The ring header of a vCPU without a coalesced ring: `first == last`, never written (a
/// ring of capacity 0), so the drain needs no null test per exit.
alignas(8) inline std::uint32_t no_coalesced_ring[2] = {0, 0};
static_assert(sizeof(::kvm_coalesced_mmio) == 24, "kvm: struct kvm_coalesced_mmio is 24 bytes");
} // namespace detail

/// The KVM HAL's vCPU for architecture `Arch` with Sys policy `Sys`. Move-only;
/// owns the vCPU fd and unmaps `kvm_run` on destruction.
template <class Sys, class Arch>
class hal_vcpu {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");
    using caches_t = detail::block_caches<typename Arch::register_blocks>;

public:
    /// The exit record `Arch::decode` reads: the mapped `kvm_run`.
    using raw_exit = ::vcpu::kvm_run_view;
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
                         "mapping is smaller than struct kvm_run"};
        void* p = Sys::mmap(nullptr, s.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (p == MAP_FAILED) return last_error("mmap kvm_run");
        // The vCPU fd's page 0 is struct kvm_run (KVM API 4.10), and the mapping
        // spans at least sizeof(kvm_run) (checked above).
        auto* run = static_cast<::kvm_run*>(p);
        const std::uint64_t mask = s.kernel_sync_regs & s.options.sync_regs & arch_sync_bits;
        run->kvm_valid_regs = mask;
        run->kvm_dirty_regs = 0;
        return hal_vcpu(std::move(fd), run, s, mask);
    }

    /// Takes over `o`'s fd, mapping and caches; `o` is left empty.
    hal_vcpu(hal_vcpu&& o) noexcept
        : fd_(std::move(o.fd_)), run_(std::exchange(o.run_, detached_run())),
          mmap_size_(std::exchange(o.mmap_size_, sizeof(::kvm_run))),
          ring_(std::exchange(o.ring_, empty_ring())), ring_max_(std::exchange(o.ring_max_, 0)), dropped_(o.dropped_),
          sync_mask_(o.sync_mask_),
          system_fd_(o.system_fd_), ran_(o.ran_), caches_(std::move(o.caches_)),
          valid_blocks_(o.valid_blocks_), dirty_blocks_(o.dirty_blocks_), idle_limit_(o.idle_limit_),
          run_valid_(o.run_valid_), used_(o.used_), counting_(o.counting_),
          before_entry_(o.before_entry_), idle_(o.idle_) {}
    /// Releases this vCPU's mapping and fd, then takes over `o`'s.
    hal_vcpu& operator=(hal_vcpu&& o) noexcept {
        if (this != &o) {
            unmap();
            fd_ = std::move(o.fd_);
            run_ = std::exchange(o.run_, detached_run());
            mmap_size_ = std::exchange(o.mmap_size_, sizeof(::kvm_run));
            ring_ = std::exchange(o.ring_, empty_ring());
            ring_max_ = std::exchange(o.ring_max_, 0);
            dropped_ = o.dropped_;
            sync_mask_ = o.sync_mask_;
            system_fd_ = o.system_fd_;
            ran_ = o.ran_;
            valid_blocks_ = o.valid_blocks_;
            dirty_blocks_ = o.dirty_blocks_;
            idle_limit_ = o.idle_limit_;
            run_valid_ = o.run_valid_;
            used_ = o.used_;
            counting_ = o.counting_;
            before_entry_ = o.before_entry_;
            idle_ = o.idle_;
            caches_ = std::move(o.caches_);
        }
        return *this;
    }
    hal_vcpu(const hal_vcpu&) = delete;
    hal_vcpu& operator=(const hal_vcpu&) = delete;
    /// Unmaps `kvm_run`, then closes the vCPU fd.
    ~hal_vcpu() { unmap(); }

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
        int rc = 0;
        int err = 0;
        for (;;) {
            rc = Sys::ioctl(fd_.get(), ioctls::vcpu::run.code, nullptr);
            if (rc >= 0) [[likely]]
                break;
            err = errno; // read only on failure: errno is a call into libc
            if (err != EAGAIN) break;
        }
        invalidate_unsynced();
        if (rc < 0) {
            if (err != EINTR) return error{ioctls::vcpu::run.name, err};
            // KVM stores synced registers on the EINTR path too.
            ran_ = true;
            run_->exit_reason = KVM_EXIT_INTR;
            return ok();
        }
        ran_ = true;
        return ok();
    }

    /// The exit record of the last `enter()`: valid until the next one.
    [[nodiscard]] raw_exit exit_record() const noexcept {
        // create() refused mappings smaller than struct kvm_run and the size never changes;
        // saying so lets the decoder's own size check fold away.
        if (mmap_size_ < sizeof(::kvm_run) || run_ == nullptr) __builtin_unreachable();
        return raw_exit{run_, mmap_size_};
    }

    /// Sets or clears `kvm_run::immediate_exit` (KVM API 4.10): while set,
    /// `KVM_RUN` returns `EINTR` at once.
    void immediate_exit(bool on) noexcept {
        // Shared with the kernel and with kicker threads: byte-wide atomic store.
        std::atomic_ref<std::uint8_t>(run_->immediate_exit)
            .store(on ? 1 : 0, std::memory_order_release);
    }
    /// A handle for kicking this vCPU from another thread (see `kicker`).
    [[nodiscard]] kicker make_kicker() const noexcept { return kicker(run_); }

    // --- register blocks ------------------------------------------------------

    /// Block `B` for reading: from `kvm_run::s.regs` when synced (no ioctl after
    /// the first run), else from the cache, fetched by the GET ioctl when stale.
    /// The pointer is valid until the next `enter()`.
    template <class B>
    [[nodiscard]] result<const typename B::layout*> load() noexcept {
        auto p = fetch<B>();
        if (!p) return p.err();
        return static_cast<const typename B::layout*>(*p);
    }

    /// Block `B` for writing: as `load`, then marks it dirty (`kvm_dirty_regs`
    /// bit when synced; else written by `enter()` with the SET ioctl).
    template <class B>
    [[nodiscard]] result<typename B::layout*> modify() noexcept {
        auto p = fetch<B>();
        if (!p) return p.err();
        if (synced<B>()) {
            run_->kvm_dirty_regs |= block_traits<B>::sync_bit;
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
        return one_reg(ioctls::vcpu::get_one_reg, id, out.data(), out.size());
    }
    /// Writes register `id` from `in` (KVM API 4.68 KVM_SET_ONE_REG).
    [[nodiscard]] result<void> set_one_reg(std::uint64_t id, std::span<const std::byte> in) noexcept {
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
        auto* hdr = reinterpret_cast<std::uint32_t*>(ring_);
        std::atomic_ref<std::uint32_t> first(hdr[0]);
        std::atomic_ref<std::uint32_t> last(hdr[1]);
        for (;;) {
            const std::uint32_t i = first.load(std::memory_order_relaxed); // only we write it
            const std::uint32_t end = last.load(std::memory_order_acquire); // entries before it are written
            if (i == end) return true;
            if (i >= ring_max_ || end >= ring_max_) {
                ++dropped_;
                if (end < ring_max_) first.store(end, std::memory_order_release);
                return true;
            }
            ::kvm_coalesced_mmio e;
            std::memcpy(&e, ring_ + detail::coalesced_ring_header + i * sizeof(e), sizeof e);
            coalesced_write w;
            w.address = e.phys_addr;
            w.size = e.len <= 8 ? e.len : 8;
            w.pio = e.pio != 0;
            std::memcpy(w.bytes.data(), e.data, w.size);
            first.store((i + 1) % ring_max_, std::memory_order_release);
            if (!f(w)) return false;
        }
    }
    /// Times `drain_coalesced` found a ring index out of range.
    [[nodiscard]] std::size_t coalesced_ring_errors() const noexcept { return dropped_; }
    /// Entries the coalesced ring holds (`KVM_COALESCED_MMIO_MAX`), 0 without a ring.
    [[nodiscard]] std::uint32_t coalesced_ring_capacity() const noexcept { return ring_max_; }

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
    [[nodiscard]] ::kvm_run* run() const noexcept { return run_; }
    /// Bytes mapped at `run()`.
    [[nodiscard]] std::size_t mmap_size() const noexcept { return mmap_size_; }
    /// `KVM_SYNC_*` bits in effect (`kvm_run::kvm_valid_regs`).
    [[nodiscard]] std::uint64_t sync_mask() const noexcept { return sync_mask_; }
    /// Any vCPU ioctl this class does not wrap; errors carry the entry's name.
    /// Precondition: register caches are not relied on across it.
    [[nodiscard]] result<int> ioctl(ioctl_def<fd_kind::vcpu> io, void* arg) noexcept {
        const int rc = Sys::ioctl(fd_.get(), io.code, arg);
        if (rc < 0) return last_error(io.name);
        return rc;
    }

private:
    hal_vcpu(basic_fd<Sys> fd, ::kvm_run* run, const vcpu_setup& s, std::uint64_t mask) noexcept
        : fd_(std::move(fd)), run_(run), mmap_size_(s.mmap_size), sync_mask_(mask),
          system_fd_(s.system_fd), idle_limit_(s.options.sync_idle_exits), run_valid_(mask),
          counting_(s.options.sync_idle_exits != 0 ? mask & tracked_sync_bits : 0),
          before_entry_(counting_ != 0) {
        // KVM API 4.116: the ring is page `coalesced_page_offset` of the vCPU
        // mapping; only use it when that page lies wholly inside the mapping.
        const std::size_t page = s.page_size;
        if (s.coalesced_page_offset > 0 && page > detail::coalesced_ring_header &&
            static_cast<std::size_t>(s.coalesced_page_offset) < mmap_size_ / page &&
            (static_cast<std::size_t>(s.coalesced_page_offset) + 1) * page <= mmap_size_) {
            // In bounds of the mapping (checked just above).
            ring_ = reinterpret_cast<std::byte*>(run_) +
                    static_cast<std::size_t>(s.coalesced_page_offset) * page;
            // KVM_COALESCED_MMIO_MAX, computed from the runtime page size.
            ring_max_ = static_cast<std::uint32_t>((page - detail::coalesced_ring_header) /
                                                   sizeof(::kvm_coalesced_mmio));
        }
    }

    void unmap() noexcept {
        if (run_ != detached_run()) (void)Sys::munmap(run_, mmap_size_);
        run_ = detached_run();
        mmap_size_ = sizeof(::kvm_run);
        ring_ = empty_ring();
        ring_max_ = 0;
    }

    /// Where synced block `B` lives in `kvm_run::s.regs`.
    template <class B>
    [[nodiscard]] typename B::layout* sync_area() const noexcept {
        // kvm_run::s holds the arch's kvm_sync_regs, whose members the block
        // layouts are asserted identical to (x86_64_abi.hpp); the mapping spans
        // sizeof(kvm_run) (checked in create()).
        return reinterpret_cast<typename B::layout*>(reinterpret_cast<std::byte*>(&run_->s) +
                                                     block_traits<B>::sync_offset);
    }

    template <class B>
    [[nodiscard]] result<typename B::layout*> fetch() noexcept {
        static_assert(list_contains_v<B, typename Arch::register_blocks>,
                      "kvm: B is not one of Arch::register_blocks");
        static_assert(KvmBlock<B>, "kvm: no block_traits<B> for this host (see kvm/traits.hpp)");
        auto& c = std::get<detail::block_cache<B>>(caches_);
        typename B::layout* p = synced<B>() ? sync_area<B>() : &c.local;
        if (synced<B>()) {
            used_ |= block_traits<B>::sync_bit;
            before_entry_ = true;
            if (ran_ && (run_valid_ & block_traits<B>::sync_bit) != 0)
                return p; // KVM stored it at the last exit
        }
        if ((valid_blocks_ & block_bit<B>()) == 0) {
            constexpr auto io = block_traits<B>::get;
            if (Sys::ioctl(fd_.get(), io.code, p) < 0) return last_error(io.name);
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
            run_->kvm_valid_regs = valid;
            run_valid_ = valid;
        }
    }

    /// The work `enter()` does before `KVM_RUN` when `before_entry_` says there is some: SET
    /// ioctls for dirty unsynced blocks, then the sync-register adaptation. In the steady state
    /// (no register touched, every idle block already out of kvm_valid_regs) `enter()` skips it
    /// with one test.
    [[nodiscard]] result<void> prepare_entry() noexcept {
        if (auto f = flush(); !f) return f;
        adapt_sync();
        before_entry_ = counting_ != 0;
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
            r = last_error(io.name);
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
        if (len < need) return error{io.name, EINVAL, "buffer smaller than the register"};
        ::kvm_one_reg r{};
        r.id = id;
        r.addr = reinterpret_cast<std::uintptr_t>(buf); // the kernel copies KVM_REG_SIZE(id) bytes
        if (Sys::ioctl(fd_.get(), io.code, &r) < 0) return last_error(io.name);
        return ok();
    }

    basic_fd<Sys> fd_;
    /// The `kvm_run` of a moved-from vCPU: never null, so the exit path needs no null test and
    /// a stray use of a moved-from object reads a zeroed record instead of faulting. Its vCPU fd
    /// is -1, so entering it fails with EBADF before anything is read.
    static ::kvm_run* detached_run() noexcept {
        static ::kvm_run r{};
        return &r;
    }
    ::kvm_run* run_ = detached_run();
    std::size_t mmap_size_ = 0;
    static std::byte* empty_ring() noexcept {
        return reinterpret_cast<std::byte*>(detail::no_coalesced_ring);
    }
    std::byte* ring_ = empty_ring(); ///< the coalesced ring page, or the empty header
    std::uint32_t ring_max_ = 0;
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
    std::array<std::uint32_t, 8> idle_{}; ///< exits without access, per sync bit 0..7
    /// Sync bits whose idleness is tracked (0..7); blocks beyond them are always stored.
    static constexpr std::uint64_t tracked_sync_bits = 0xff;
};

} // namespace vcpu::kvm
