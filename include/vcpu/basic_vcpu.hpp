#pragma once
/// \file
/// `basic_vcpu<Arch, Hal>`: an architecture policy composed with a HAL, with
/// no virtual dispatch. The exit loop — enter the guest, decode the exit,
/// dispatch it to the handler that takes its type — is a template, so each
/// (Arch, Hal, handlers) triple gets its own fully inlined loop.

#include <vcpu/concepts.hpp>
#include <vcpu/config.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/registers.hpp>
#include <vcpu/result.hpp>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

// GCC 12 at -O2 reports -Wmaybe-uninitialized inside std::variant's copy of
// the returned exit (a known false positive for large variants held in an
// optional); the exit is always constructed by `dispatch` before it is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace vcpu {

/// A virtual CPU of architecture `Arch` driven through HAL `Hal`.
///
/// Preconditions are checked with `static_assert`s that name the missing
/// piece of a user's policy. The object owns the HAL's per-vCPU state (for
/// KVM: the vCPU fd and its `kvm_run` mapping) and is move-only when that is.
template <class Arch, class Hal>
class basic_vcpu {
    static_assert(HasRegisterList<Arch>,
                  "vcpu: Arch does not model RegisterFile: it has no `registers` list");
    static_assert(HasGprIndexing<Arch>,
                  "vcpu: Arch does not model RegisterFile: it needs `gpr_count` and a static "
                  "`gpr(unsigned)` returning a register descriptor");
    static_assert(HasProgramCounter<Arch>,
                  "vcpu: Arch does not model RegisterFile: it has no `pc` register descriptor");
    static_assert(DeclaresRegisterStorage<Arch>,
                  "vcpu: Arch does not model RegisterFile: it must declare `register_blocks` and "
                  "`keyed_banks` (type_lists, may be empty) and `static constexpr bool uses_one_reg`");
    static_assert(HasExitTypes<Arch>,
                  "vcpu: Arch does not model ExitDecoder: it has no `exit_types` type_list");
    static_assert(HasVcpuState<Hal, Arch>,
                  "vcpu: Hal does not model HalFor<Hal, Arch>: it has no member template "
                  "`vcpu<Arch>` holding a vCPU's state");

public:
    using arch_type = Arch;
    using hal_type = Hal;
    using hal_vcpu = typename Hal::template vcpu<Arch>;
    using raw_exit = typename hal_vcpu::raw_exit;

    static_assert(EntersGuest<hal_vcpu>,
                  "vcpu: Hal::vcpu<Arch> does not model EntersGuest: it needs `raw_exit`, "
                  "`enter() noexcept -> result<void>` and `exit_record() noexcept -> raw_exit`");
    static_assert(MovesArchRegisters<hal_vcpu, Arch>,
                  "vcpu: Hal::vcpu<Arch> cannot move every register kind Arch declares "
                  "(load<B>/modify<B> per register block, get/set_keyed<B>, get/set_one_reg)");
    static_assert(DecodesRecord<Arch, raw_exit>,
                  "vcpu: Arch does not model ExitDecoder for this Hal: no visible "
                  "`exit_decoder<Arch, raw_exit>` specialization (for kvm::run_view, include "
                  "<kvm/exits.hpp> or <kvm/exits_<arch>.hpp>; see vcpu/decoder.hpp)");

    /// Takes ownership of a HAL vCPU (usually made by the HAL's VM object).
    explicit basic_vcpu(hal_vcpu&& h) noexcept(std::is_nothrow_move_constructible_v<hal_vcpu>)
        : hal_(std::move(h)) {}

    basic_vcpu(basic_vcpu&&) noexcept = default;
    basic_vcpu& operator=(basic_vcpu&&) noexcept = default;

    /// The HAL state, for HAL-specific operations (KVM: fds, `kvm_run`, ...).
    [[nodiscard]] hal_vcpu& hal() noexcept { return hal_; }
    [[nodiscard]] const hal_vcpu& hal() const noexcept { return hal_; }

    /// Reads register `r` (any storage kind) through the HAL.
    // Always inlined: out of line, each call built two 176-byte results on the stack (the
    // error's inline context), about 20 instructions per call on the GPR-touching exit path.
    template <RegisterDescriptor R>
    [[nodiscard, gnu::always_inline]] inline result<typename R::value_type> get(const R& r) noexcept {
        using T = typename R::value_type;
        static_assert(R::rights != access::wo, "vcpu: this register is write-only (access::wo)");
        if constexpr (detail::is_block_reg<R>::value) {
            auto b = hal_.template load<typename R::block>();
            if (!b) return b.err();
            return r.read_from(**b);
        } else if constexpr (detail::is_one_reg<R>::value) {
            T v{};
            auto s = hal_.get_one_reg(r.id, std::as_writable_bytes(std::span<T, 1>(&v, 1)));
            if (!s) return s.err();
            return v;
        } else {
            auto v = hal_.template get_keyed<typename R::bank>(r.key);
            if (!v) return v.err();
            return static_cast<T>(*v);
        }
    }

    /// Writes register `r`; does not compile for `access::ro` registers.
    template <RegisterDescriptor R>
    [[nodiscard, gnu::always_inline]] inline result<void> set(const R& r, const typename R::value_type& v) noexcept {
        static_assert(R::rights != access::ro, "vcpu: this register is read-only (access::ro)");
        if constexpr (detail::is_block_reg<R>::value) {
            auto b = hal_.template modify<typename R::block>();
            if (!b) return b.err();
            r.write_to(**b, v);
            return ok();
        } else if constexpr (detail::is_one_reg<R>::value) {
            auto tmp = v;
            return hal_.set_one_reg(r.id, std::as_bytes(std::span<const std::remove_cvref_t<decltype(tmp)>, 1>(&tmp, 1)));
        } else {
            return hal_.template set_keyed<typename R::bank>(r.key, static_cast<std::uint64_t>(v));
        }
    }

    /// Applies a boot-state policy (see `CpuInitFor`).
    template <class P>
    [[nodiscard]] result<void> init(const P& policy) noexcept {
        static_assert(CpuInitFor<P, basic_vcpu>,
                      "vcpu: the init policy does not model CpuInitFor: it needs a const "
                      "`apply(cpu) -> result<void>` accepting this vCPU type");
        return policy.apply(*this);
    }

    /// The variant `run()` returns for handler types `Hs...`.
    template <class... Hs>
    using exit_for = unhandled_exit_t<typename Arch::exit_types, Hs...>;

    /// One step: drain buffered (coalesced) writes, enter the guest unless an
    /// exit is still pending, decode and dispatch. Returns the exit when no
    /// handler took it or its handler said `action::stop`, else `nullopt`.
    template <class... Hs>
    [[nodiscard]] result<std::optional<exit_for<Hs...>>> step(Hs&&... hs) noexcept {
        static_assert(every_handler_called<typename Arch::exit_types, Hs...>);
        const busy_guard guard(running_);
        if (!guard) return guard.error_of("vcpu step");
        std::optional<exit_for<Hs...>> out;
        if (auto e = advance(out, hs...); !e) return e.err();
        return out;
    }

    /// Runs the guest, handling exits with `hs...`, until an exit comes back
    /// (unhandled, or its handler returned `action::stop`) or the HAL fails.
    /// No allocation, no exceptions, no virtual calls.
    template <class... Hs>
    [[nodiscard]] result<exit_for<Hs...>> run(Hs&&... hs) noexcept {
        static_assert(every_handler_called<typename Arch::exit_types, Hs...>);
        const busy_guard guard(running_);
        if (!guard) return guard.error_of("vcpu run");
        // One slot for the returned exit, outside the loop: building and
        // returning a fresh optional<variant> per exit (as step() does) costs
        // more than decode + dispatch (benchmarks/framework.cpp, docs/benchmarks.md).
        std::optional<exit_for<Hs...>> out;
        for (;;) {
            if (auto e = advance(out, hs...); !e) return e.err();
            if (out) return std::move(*out);
        }
    }

private:
    /// The body of `step`: stores an exit that comes back into `out` (left
    /// empty otherwise).
    template <class Out, class... Hs>
    [[gnu::always_inline]] inline result<void> advance(std::optional<Out>& out, Hs&... hs) noexcept {
        if (pending_) [[unlikely]] {
            pending_ = false; // entered earlier; its coalesced writes were being delivered
        } else if (auto e = hal_.enter(); !e) {
            return e;
        }
        if constexpr (requires(hal_vcpu& v) { v.drain_coalesced([](coalesced_write&) { return true; }); }) {
            const bool go_on = hal_.drain_coalesced(
                [&](coalesced_write& w) noexcept { return dispatch<Out>(w, out, hs...); });
            if (!go_on) [[unlikely]] {
                pending_ = true; // the exit itself is dispatched by the next call
                return ok();
            }
        }
        decode_exit<Arch>(hal_.exit_record(), [&]<class E>(E& e) noexcept {
            static_assert(list_contains_v<E, typename Arch::exit_types>,
                          "vcpu: the decoder produced an exit type missing from Arch::exit_types");
            (void)dispatch<Out>(e, out, hs...);
        });
        return ok();
    }

    /// Marks the vCPU as running for the duration of a `run()`/`step()`; a second thread (or
    /// a handler re-entering) finds it taken and gets EBUSY instead of racing on the exit
    /// record. One atomic exchange per call, not per exit.
    class busy_guard {
    public:
        // A word, not a bool: a one-byte atomic exchange needs libatomic on some targets.
        explicit busy_guard(std::uint32_t& flag) noexcept
            : flag_(flag), mine_(std::atomic_ref<std::uint32_t>(flag).exchange(1, std::memory_order_acquire) == 0) {}
        ~busy_guard() {
            if (mine_) std::atomic_ref<std::uint32_t>(flag_).store(0, std::memory_order_release);
        }
        busy_guard(const busy_guard&) = delete;
        busy_guard& operator=(const busy_guard&) = delete;
        explicit operator bool() const noexcept { return mine_; }
        [[nodiscard]] static error error_of(const char* op) noexcept {
            return error{op, EBUSY, "another thread (or a handler) is running this vCPU already"};
        }

    private:
        std::uint32_t& flag_;
        bool mine_;
    };

    hal_vcpu hal_;
    bool pending_ = false; ///< an exit was entered but not yet dispatched
    alignas(std::atomic_ref<std::uint32_t>::required_alignment) std::uint32_t running_ = 0; ///< a run()/step() is on
};

} // namespace vcpu

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
