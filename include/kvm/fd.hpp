#pragma once
/// \file
/// `basic_fd<Sys>`: a move-only owner of one file descriptor, closed through
/// the Sys policy (see sys.hpp). The KVM handles (system, VM, vCPU) and the
/// eventfds the VM hands out are built on it.

#include <kvm/sys.hpp>
#include <vcpu/config.hpp>

#include <utility>

namespace vcpu::kvm {

/// Owns a file descriptor (or none: -1). Move-only; closes on destruction.
template <class Sys>
class basic_fd {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");

public:
    /// No descriptor.
    basic_fd() noexcept = default;
    /// Adopts `fd` (may be -1 or, for tests, a descriptor that is not open).
    explicit basic_fd(int fd) noexcept : fd_(fd) {}
    /// Takes `o`'s fd, leaving it closed (-1).
    basic_fd(basic_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    /// Closes this fd, then takes `o`'s.
    basic_fd& operator=(basic_fd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    basic_fd(const basic_fd&) = delete;
    basic_fd& operator=(const basic_fd&) = delete;
    ~basic_fd() { reset(); }

    /// The descriptor number (-1 when empty). Ownership stays here.
    [[nodiscard]] int get() const noexcept { return fd_; }
    /// True when a descriptor is held.
    [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
    /// Gives up ownership without closing.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the held descriptor (errors from close are ignored: the fd is
    /// gone either way, see close(2) NOTES) and adopts `fd`.
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) (void)Sys::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// A descriptor owned through the real system calls.
using unique_fd = basic_fd<linux_sys>;

} // namespace vcpu::kvm
