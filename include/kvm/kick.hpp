#pragma once
/// \file
/// The kick protocol of the KVM HAL: how another thread stops a running vCPU (KVM API 4.10
/// "KVM_RUN", `immediate_exit`; 4.17 KVM_SET_SIGNAL_MASK). `kicker` is the handle other threads
/// hold; `detail::kick_state` is what it shares with the vCPU; `hal_vcpu` (kvm/vcpu.hpp) takes
/// the posted requests at the next exit and binds the signal to its thread.

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>

#include <pthread.h>

namespace vcpu::kvm {

namespace detail {
/// What a vCPU and its kickers share. Allocated once per vCPU (setup path), so kickers stay
/// valid when the vCPU object moves.
struct kick_state {
    std::atomic<std::uint32_t> requests{0}; ///< bits posted by kickers, taken by the vCPU
    std::atomic<pthread_t> thread{};        ///< the thread running the vCPU (bind_kick_thread)
    std::atomic<int> signal{0};             ///< the signal that interrupts it; 0: none bound
    ::kvm_run* run = nullptr;               ///< for `immediate_exit`

    /// After KVM_RUN returned EINTR: clears `immediate_exit`, *then* takes the posted requests
    /// (see `kicker` for why this order loses none), and consumes a pending kick signal.
    [[nodiscard]] std::uint32_t take() noexcept {
        std::atomic_ref<std::uint8_t>(run->immediate_exit).store(0, std::memory_order_seq_cst);
        const std::uint32_t r = requests.exchange(0, std::memory_order_seq_cst);
        // When the vCPU thread blocks the kick signal, KVM_SET_SIGNAL_MASK lets it interrupt
        // KVM_RUN, but KVM restores the thread's mask before returning: the signal stays
        // pending and would end every later KVM_RUN at once. Consume it here (QEMU does the
        // same with sigtimedwait after KVM_RUN).
        if (const int sig = signal.load(std::memory_order_relaxed); sig != 0) {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, sig);
            const timespec now{};
            while (::sigtimedwait(&set, nullptr, &now) == sig) {
            }
        }
        return r;
    }
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
    /// A kicker for the vCPU whose kick state is `k` (made by `hal_vcpu::make_kicker()`).
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
/// `struct kvm_signal_mask { __u32 len; __u8 sigset[]; }` in the kernel's C layout (the C++ one
/// differs, see `with_c_flex_size`): `len` at 0, the kernel's 8-byte sigset at 4.
struct signal_mask_arg {
    static constexpr std::uint32_t set_bytes = 8; ///< the kernel's sigset_t
    alignas(std::uint32_t) std::array<std::byte, signal_mask_header_size + set_bytes> bytes{};
    /// `mask`'s first 64 bits (glibc's `sigset_t` starts with the kernel's set).
    explicit signal_mask_arg(const sigset_t& mask) noexcept {
        std::memcpy(bytes.data(), &set_bytes, sizeof set_bytes);
        std::memcpy(bytes.data() + signal_mask_header_size, &mask, set_bytes);
    }
};

/// The signal-side half of `hal_vcpu::bind_kick_thread`: installs a no-op handler for `sig`
/// when it has none and computes the mask `KVM_RUN` is to run with (this thread's, without
/// `sig`). Errors: "sigaction", "pthread_sigmask".
[[nodiscard]] inline result<signal_mask_arg> kick_signal_mask(int sig) noexcept {
    struct sigaction cur{};
    if (::sigaction(sig, nullptr, &cur) != 0) return last_error("sigaction").with("signal", sig);
    if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN) {
        if (auto r = install_kick_handler(sig); !r) return r.err();
    }
    sigset_t mask;
    if (const int e = ::pthread_sigmask(SIG_BLOCK, nullptr, &mask); e != 0) return error{"pthread_sigmask", e};
    sigdelset(&mask, sig);
    return signal_mask_arg(mask);
}
} // namespace detail

} // namespace vcpu::kvm
