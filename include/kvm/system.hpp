#pragma once
/// \file
/// `basic_system<Sys>`: the `/dev/kvm` fd (KVM API 4.1-4.5 system ioctls) —
/// API version check, capability queries (raw, typed, and all a VMM requires at once), VM
/// creation, and on x86 the host-supported and emulated CPUID and the feature MSRs.
///
/// | call                                  | KVM API                                          |
/// | ------------------------------------- | ------------------------------------------------ |
/// | `max_vcpus` / `max_vcpu_id` / `nr_vcpus` | KVM_CAP_MAX_VCPUS / _MAX_VCPU_ID / _NR_VCPUS  |
/// | `nr_memslots`                         | KVM_CAP_NR_MEMSLOTS                              |
/// | `arm_vm_ipa_size`                     | KVM_CAP_ARM_VM_IPA_SIZE (arm64)                  |
/// | `vm_types`                            | KVM_CAP_VM_TYPES (x86)                           |
/// | `guest_debug_hw_bps` / `_wps`         | KVM_CAP_GUEST_DEBUG_HW_BPS / _WPS (arm64)        |
/// | `require`                             | KVM_CHECK_EXTENSION for each capability needed   |
/// | `msr_feature_index_list`              | 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST (x86)         |
/// | `get_feature_msrs`                    | 4.18 KVM_GET_MSRS on the system fd (x86)         |
/// | `emulated_cpuid`                      | KVM_GET_EMULATED_CPUID (x86)                     |
///
/// The typed queries and `require` do not allocate; the x86 lists do (setup path).

#include <kvm/caps.hpp>
#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vm.hpp>
#include <kvm/x86_64_abi.hpp>
#include <kvm/x86_64_calls.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

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

    // --- typed capability queries (KVM API 8 "Other capabilities" and 4.4) ---------------------

    /// Most vCPUs a VM may have (`KVM_CAP_MAX_VCPUS`; when absent, `nr_vcpus()`, as the API
    /// says). Errors: "KVM_CHECK_EXTENSION" with errno and the capability.
    [[nodiscard]] result<unsigned> max_vcpus() const noexcept {
        auto r = check_extension(KVM_CAP_MAX_VCPUS);
        if (!r) return r.err();
        if (*r > 0) return static_cast<unsigned>(*r);
        return nr_vcpus();
    }
    /// One more than the largest vCPU id (`KVM_CAP_MAX_VCPU_ID`; when absent, `max_vcpus()`).
    [[nodiscard]] result<unsigned> max_vcpu_id() const noexcept {
        auto r = check_extension(KVM_CAP_MAX_VCPU_ID);
        if (!r) return r.err();
        if (*r > 0) return static_cast<unsigned>(*r);
        return max_vcpus();
    }
    /// The recommended most vCPUs (`KVM_CAP_NR_VCPUS`: the host's CPU count; 4 when absent).
    [[nodiscard]] result<unsigned> nr_vcpus() const noexcept {
        auto r = check_extension(KVM_CAP_NR_VCPUS);
        if (!r) return r.err();
        return *r > 0 ? static_cast<unsigned>(*r) : 4u;
    }
    /// Memory slots per address space of a VM (`KVM_CAP_NR_MEMSLOTS`; 0 when the host does not
    /// say).
    [[nodiscard]] result<unsigned> nr_memslots() const noexcept {
        auto r = check_extension(KVM_CAP_NR_MEMSLOTS);
        if (!r) return r.err();
        return static_cast<unsigned>(*r);
    }
    /// arm64: the largest guest physical address size in bits a VM may ask for in the
    /// `KVM_CREATE_VM` type (`KVM_CAP_ARM_VM_IPA_SIZE`); 0 when the capability is absent (other
    /// arches, or an arm64 host fixed at the default 40 bits).
    [[nodiscard]] result<unsigned> arm_vm_ipa_size() const noexcept {
        auto r = check_extension(KVM_CAP_ARM_VM_IPA_SIZE);
        if (!r) return r.err();
        return static_cast<unsigned>(*r);
    }
    /// x86: the VM types `KVM_CREATE_VM` accepts (`KVM_CAP_VM_TYPES`); only the default when
    /// the kernel predates the capability. On other arches: the empty set.
    [[nodiscard]] result<vm_type_set> vm_types() const noexcept {
        auto r = check_extension(cap_vm_types);
        if (!r) return r.err();
#if defined(__x86_64__)
        if (*r == 0) return vm_type_set{1u << static_cast<unsigned>(x86_vm_type::default_vm)};
#endif
        return vm_type_set{static_cast<std::uint32_t>(*r)};
    }
    /// arm64: hardware breakpoints a VMM may set with KVM_SET_GUEST_DEBUG
    /// (`KVM_CAP_GUEST_DEBUG_HW_BPS`); 0 when absent (x86 has four, DR0-DR3, without the cap).
    [[nodiscard]] result<unsigned> guest_debug_hw_bps() const noexcept {
        auto r = check_extension(KVM_CAP_GUEST_DEBUG_HW_BPS);
        if (!r) return r.err();
        return static_cast<unsigned>(*r);
    }
    /// arm64: hardware watchpoints for KVM_SET_GUEST_DEBUG (`KVM_CAP_GUEST_DEBUG_HW_WPS`); 0
    /// when absent.
    [[nodiscard]] result<unsigned> guest_debug_hw_wps() const noexcept {
        auto r = check_extension(KVM_CAP_GUEST_DEBUG_HW_WPS);
        if (!r) return r.err();
        return static_cast<unsigned>(*r);
    }

    /// Checks every capability of `needs` and reports, in ONE error, every one the host lacks
    /// (answers below `at_least`, or whose query failed), not just the first: op
    /// "KVM_CHECK_EXTENSION", EOPNOTSUPP, detail "host lacks required capabilities", then
    /// `lacking` = how many, and each lacking capability by name with the host's answer (-1 when
    /// the query failed). The error holds `error_context::max_values` values: past five
    /// lacking capabilities the message ends in ", ..."; `lacking_out`, when given, receives
    /// the count and then the first `lacking_out.size()` of them all. No allocation.
    [[nodiscard]] result<void> require(std::span<const capability_need> needs,
                                       std::span<capability_need> lacking_out = {},
                                       std::size_t* lacking_count = nullptr) const noexcept {
        error e{ioctls::system::check_extension.name, EOPNOTSUPP, "host lacks required capabilities"};
        std::size_t lacking = 0;
        for (const auto& n : needs) {
            auto r = check_extension(n.cap);
            if (r && *r >= n.at_least) continue;
            if (lacking < lacking_out.size()) lacking_out[lacking] = n;
            ++lacking;
        }
        if (lacking_count != nullptr) *lacking_count = lacking;
        if (lacking == 0) return ok();
        e.with("lacking", lacking);
        for (const auto& n : needs) {
            auto r = check_extension(n.cap);
            if (r && *r >= n.at_least) continue;
            e.with(n.name, r ? static_cast<long>(*r) : -1L);
        }
        return e;
    }

#if defined(__x86_64__)
    /// The MSRs that describe host features a VMM may expose to guests (KVM API 4.3
    /// KVM_GET_MSR_FEATURE_INDEX_LIST, `KVM_CAP_GET_MSR_FEATURES`): e.g. IA32_ARCH_CAPABILITIES,
    /// the VMX capability MSRs. Allocates. Errors: the ioctl's name and errno.
    [[nodiscard]] result<std::vector<std::uint32_t>> msr_feature_index_list() const {
        return detail::msr_list<Sys>(fd_.get(), ioctls::system::get_msr_feature_index_list);
    }
    /// Reads feature MSRs (indices from `msr_feature_index_list`) with KVM_GET_MSRS on the
    /// system fd (KVM API 4.18). Returns how many KVM read (it stops at the first it cannot).
    /// Errors: "KVM_GET_MSRS" with errno and the count.
    [[nodiscard]] result<std::size_t> get_feature_msrs(std::span<::vcpu::x86_64::msr_entry> entries) const {
        constexpr auto io = ioctls::system::get_feature_msrs;
        if (entries.size() > 0xffffffffu) return error{io.name, E2BIG, "too many MSRs"};
        auto b = detail::msrs_buffer(entries);
        const int rc = Sys::ioctl(fd_.get(), io.code, b.data());
        if (rc < 0) return last_error(io.name).with("msrs", entries.size());
        const auto n = static_cast<std::size_t>(rc) <= entries.size() ? static_cast<std::size_t>(rc) : entries.size();
        if (n != 0) std::memcpy(static_cast<void*>(entries.data()), b.data() + 1, n * sizeof(::vcpu::x86_64::msr_entry));
        return n;
    }
    /// The CPUID bits KVM emulates even when the host CPU lacks them (KVM API
    /// "KVM_GET_EMULATED_CPUID"; e.g. MOVBE, RDPID): a VMM may expose them, at an emulation
    /// cost. Sized as `get_cpuid2` (doubling on E2BIG). Allocates.
    [[nodiscard]] result<std::vector<::vcpu::x86_64::cpuid_entry>> emulated_cpuid() const {
        return detail::cpuid2_grow<Sys>(fd_.get(), ioctls::system::get_emulated_cpuid.code,
                                        ioctls::system::get_emulated_cpuid.name);
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
