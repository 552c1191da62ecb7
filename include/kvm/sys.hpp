#pragma once
/// \file
/// The one seam through which the KVM HAL reaches the kernel.
///
/// Every `open`, `close`, `ioctl`, `mmap`, `munmap` and `eventfd` the HAL
/// makes goes through a *Sys policy*: a stateless type with static member
/// functions shaped like the libc calls (return -1 / `MAP_FAILED` and set
/// `errno` on failure). `linux_sys` calls the kernel; tests substitute a
/// policy that counts calls or injects `EINTR`, `EBADF`, `ENOMEM`. Policies
/// are template parameters (`basic_system<Sys>` with `using system =
/// basic_system<linux_sys>`), so production code pays nothing for the seam.

#include <vcpu/config.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

namespace vcpu::kvm {

/// **SysPolicy** — *intent*: the system calls the KVM HAL makes, as static
/// functions, so tests can fake them.
///
/// *Minimal complete definition*: static `open(path, flags)`, `close(fd)`,
/// `ioctl(fd, request, void* arg)`, `mmap(addr, len, prot, flags, fd, off)`,
/// `munmap(addr, len)`, `eventfd(initval, flags)`, all `noexcept`.
///
/// *Laws*: each behaves like the libc function of the same name: failure is
/// -1 (`MAP_FAILED` for `mmap`) with `errno` set; no other side effects.
///
/// *Models*: `linux_sys`; the counting and fault-injecting policies in
/// tests/kvm.
template <class S>
concept SysPolicy = requires(const char* path, int fd, unsigned long req, void* p,
                             std::size_t len, off_t off) {
    { S::open(path, 0) } noexcept -> std::same_as<int>;
    { S::close(fd) } noexcept -> std::same_as<int>;
    { S::ioctl(fd, req, p) } noexcept -> std::same_as<int>;
    { S::mmap(p, len, 0, 0, fd, off) } noexcept -> std::same_as<void*>;
    { S::munmap(p, len) } noexcept -> std::same_as<int>;
    { S::eventfd(0u, 0) } noexcept -> std::same_as<int>;
};

/// The production Sys policy: the real Linux system calls.
struct linux_sys {
    /// `open(2)`; the HAL always adds `O_CLOEXEC` itself.
    static int open(const char* path, int flags) noexcept { return ::open(path, flags); }
    /// `close(2)`.
    static int close(int fd) noexcept { return ::close(fd); }
    /// `ioctl(2)` with one pointer-sized argument (KVM API 2 "General
    /// description": every KVM ioctl takes at most one argument, a pointer or
    /// an integer passed in the pointer's place).
    static int ioctl(int fd, unsigned long req, void* arg) noexcept { return ::ioctl(fd, req, arg); }
    /// `mmap(2)`.
    static void* mmap(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept {
        return ::mmap(addr, len, prot, flags, fd, off);
    }
    /// `munmap(2)`.
    static int munmap(void* addr, std::size_t len) noexcept { return ::munmap(addr, len); }
    /// `eventfd(2)`.
    static int eventfd(unsigned initval, int flags) noexcept { return ::eventfd(initval, flags); }
};

static_assert(SysPolicy<linux_sys>);

namespace detail {
/// An integer ioctl argument in the pointer slot. The kernel reads such
/// arguments (`KVM_CREATE_VCPU` id, `KVM_CHECK_EXTENSION` cap,
/// `KVM_SET_TSS_ADDR` address) as an `unsigned long` and never dereferences
/// them, so the pointer is only a carrier.
[[nodiscard]] inline void* int_arg(std::uint64_t v) noexcept {
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(v));
}
} // namespace detail

} // namespace vcpu::kvm
