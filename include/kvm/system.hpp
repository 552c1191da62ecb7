#pragma once
/// \file
/// `basic_system<Sys>`: the `/dev/kvm` fd (KVM API 4.1-4.5 system ioctls) —
/// API version check, capability queries, VM creation, and on x86 the
/// host-supported CPUID.

#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vm.hpp>
#include <kvm/x86_64_abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace vcpu::kvm {

/// The KVM system fd. Move-only. Must outlive the VMs and vCPUs made from it.
template <class Sys>
class basic_system {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");

public:
    /// Opens `path` (`O_RDWR | O_CLOEXEC`) and checks KVM API 4.1
    /// KVM_GET_API_VERSION == `KVM_API_VERSION` (12). Errors: `open_op` ("open
    /// /dev/kvm", whatever the path: callers match it to tell "no KVM here") with
    /// errno and the path tried; "KVM_GET_API_VERSION" with errno, or EPROTO with
    /// the version found when it differs.
    [[nodiscard]] static result<basic_system> open(const char* path = "/dev/kvm") noexcept {
        if (path == nullptr) return error{open_op, EFAULT, "path is null"};
        basic_fd<Sys> fd(Sys::open(path, O_RDWR | O_CLOEXEC));
        if (!fd) return last_error(open_op).with_text("path", path);
        basic_system s(std::move(fd));
        auto v = s.api_version();
        if (!v) return error(v.err()).with_text("path", path);
        if (*v != KVM_API_VERSION)
            return error{ioctls::system::get_api_version.name, EPROTO, "KVM API version is not 12"}
                .with("version", *v)
                .with("expected", KVM_API_VERSION)
                .with_text("path", path);
        return s;
    }

    /// The operation name of a failed `open()` of the device node.
    static constexpr const char* open_op = "open /dev/kvm";

    /// Adopts `fd` without checks (tests use bad fds to exercise errors).
    explicit basic_system(basic_fd<Sys> fd) noexcept : fd_(std::move(fd)) {}

    /// The `/dev/kvm` fd.
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }

    /// KVM API 4.1 KVM_GET_API_VERSION.
    [[nodiscard]] result<int> api_version() const noexcept {
        return call(ioctls::system::get_api_version, nullptr);
    }
    /// KVM API 4.4 KVM_CHECK_EXTENSION: 0 when `cap` is absent, else a
    /// positive, capability-specific value.
    [[nodiscard]] result<int> check_extension(long cap) const noexcept {
        auto r = call(ioctls::system::check_extension, detail::int_arg(static_cast<std::uint64_t>(cap)));
        if (!r) return error(r.err()).with("cap", cap);
        return r;
    }
    /// `check_extension(cap) > 0`, with a query failure reported as absent.
    [[nodiscard]] bool has_extension(long cap) const noexcept {
        auto r = check_extension(cap);
        return r && *r > 0;
    }
    /// KVM API 4.5 KVM_GET_VCPU_MMAP_SIZE: bytes each vCPU fd maps (kvm_run
    /// plus extra pages such as the coalesced MMIO ring).
    [[nodiscard]] result<std::size_t> vcpu_mmap_size() const noexcept {
        auto r = call(ioctls::system::get_vcpu_mmap_size, nullptr);
        if (!r) return r.err();
        if (static_cast<std::size_t>(*r) < sizeof(::kvm_run))
            return error{ioctls::system::get_vcpu_mmap_size.name, EPROTO,
                         "mapping is smaller than struct kvm_run"}
                .with("mmap_size", *r)
                .with("needed", sizeof(::kvm_run));
        return static_cast<std::size_t>(*r);
    }

    /// KVM API 4.2 KVM_CREATE_VM with machine type `type` (0: default), and
    /// the vCPU mapping size its vCPUs will need.
    [[nodiscard]] result<basic_vm<Sys>> create_vm(unsigned long type = 0) const noexcept {
        auto size = vcpu_mmap_size();
        if (!size) return size.err();
        auto fd = call(ioctls::system::create_vm, detail::int_arg(type));
        if (!fd) return error(fd.err()).with("type", type);
        return basic_vm<Sys>(basic_fd<Sys>(*fd), fd_.get(), *size);
    }

#if defined(__x86_64__)
    /// KVM API 4.46 KVM_GET_SUPPORTED_CPUID into `buf`; returns the number of
    /// entries filled. A buffer smaller than KVM's list fails with E2BIG
    /// (the buffer is not grown; 256 entries suffice on current hosts).
    [[nodiscard]] result<std::size_t> supported_cpuid(std::span<::vcpu::x86_64::cpuid_entry> buf) const noexcept {
        return detail::get_supported_cpuid<Sys>(fd_.get(), buf);
    }
#endif

    /// Any system ioctl this class does not wrap; errors carry the entry's name.
    [[nodiscard]] result<int> ioctl(ioctl_def<fd_kind::system> io, void* arg) const noexcept {
        return call(io, arg);
    }

private:
    [[nodiscard]] result<int> call(ioctl_def<fd_kind::system> io, void* arg) const noexcept {
        const int rc = Sys::ioctl(fd_.get(), io.code, arg);
        if (rc < 0) return last_error(io.name);
        return rc;
    }
    basic_fd<Sys> fd_;
};

/// Production system handle.
using system = basic_system<linux_sys>;

} // namespace vcpu::kvm
