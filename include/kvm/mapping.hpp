#pragma once
/// \file
/// `basic_mapping<Sys, Empty>`: the one owner of an `mmap`ed range in the KVM layer — guest RAM
/// (`basic_guest_ram`, kvm/vm.hpp) and a vCPU's `kvm_run` pages (`hal_vcpu`, kvm/vcpu.hpp).
/// Move-only; unmapped through the Sys policy on destruction. What an unmapped (or moved-from)
/// mapping looks like is the `Empty` policy's choice: `no_mapping` (null, 0 bytes) for RAM, and
/// `detached_run` for `kvm_run`, a zeroed `struct kvm_run` that is never null, so a vCPU's exit
/// path needs no null test and a stray use of a moved-from vCPU reads an empty exit instead of
/// faulting.

#include <kvm/sys.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <span>
#include <utility>

#include <sys/mman.h>

namespace vcpu::kvm {

namespace detail {
/// An empty mapping is null and 0 bytes long.
struct no_mapping {
    static std::byte* address() noexcept { return nullptr; }
    static constexpr std::size_t size = 0;
};

/// The `kvm_run` every detached vCPU shares: zeroed, process-wide (written only through a
/// moved-from vCPU, which is a caller bug; the exit it shows is exit reason 0, unknown).
inline ::kvm_run detached_run_page{};

/// An empty `kvm_run` mapping is `detached_run_page`, `sizeof(kvm_run)` bytes long.
struct detached_run {
    static std::byte* address() noexcept { return reinterpret_cast<std::byte*>(&detached_run_page); }
    static constexpr std::size_t size = sizeof(::kvm_run);
};
} // namespace detail

/// Owns `[data(), data() + size())` mapped with `Sys::mmap`, unmapped with `Sys::munmap`.
/// `Empty` gives the state of a mapping that owns nothing (default, moved-from, after `reset`):
/// static `address()` and `size`.
template <class Sys, class Empty = detail::no_mapping>
class basic_mapping {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");

public:
    /// Owns nothing.
    basic_mapping() noexcept = default;

    /// `mmap(nullptr, len, prot, flags, fd, offset)`. Errors: `what` with errno and the size.
    [[nodiscard]] static result<basic_mapping> map(const char* what, std::size_t len, int prot, int flags,
                                                   int fd = -1, off_t offset = 0) noexcept {
        void* p = Sys::mmap(nullptr, len, prot, flags, fd, offset);
        if (p == MAP_FAILED) return last_error(what).with("size", len);
        // The kernel mapped `len` bytes at p.
        return basic_mapping(static_cast<std::byte*>(p), len);
    }

    /// Takes `o`'s mapping, leaving it empty.
    basic_mapping(basic_mapping&& o) noexcept
        : p_(std::exchange(o.p_, Empty::address())), n_(std::exchange(o.n_, Empty::size)) {}
    /// Unmaps this mapping, then takes `o`'s.
    basic_mapping& operator=(basic_mapping&& o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, Empty::address());
            n_ = std::exchange(o.n_, Empty::size);
        }
        return *this;
    }
    basic_mapping(const basic_mapping&) = delete;
    basic_mapping& operator=(const basic_mapping&) = delete;
    ~basic_mapping() { reset(); }

    /// First mapped byte (`Empty::address()` when nothing is owned).
    [[nodiscard]] std::byte* data() const noexcept { return p_; }
    /// Mapped bytes (`Empty::size` when nothing is owned).
    [[nodiscard]] std::size_t size() const noexcept { return n_; }
    /// The mapped bytes.
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {p_, n_}; }
    /// True when a mapping is owned.
    [[nodiscard]] bool owns() const noexcept { return p_ != Empty::address(); }
    /// Unmaps (munmap errors are ignored: the range is gone or was never ours).
    void reset() noexcept {
        if (owns()) (void)Sys::munmap(p_, n_);
        p_ = Empty::address();
        n_ = Empty::size;
    }

private:
    basic_mapping(std::byte* p, std::size_t n) noexcept : p_(p), n_(n) {}

    std::byte* p_ = Empty::address();
    std::size_t n_ = Empty::size;
};

/// A vCPU's `kvm_run` mapping (KVM API 4.10: `mmap` of the vCPU fd at offset 0).
template <class Sys>
using run_mapping = basic_mapping<Sys, detail::detached_run>;

} // namespace vcpu::kvm
