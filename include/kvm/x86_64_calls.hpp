#pragma once
/// \file
/// x86-64 host glue, part 3: the vCPU state ioctls a VMM needs to save and restore a vCPU,
/// typed. Each is a free function on a `hal_vcpu<Sys, Arch>` (reach it from a `basic_vcpu` with
/// `.hal()`), goes through the ioctl table (kvm/ioctls.hpp) and the `Sys` seam, and returns
/// `result<T>` whose error names the ioctl, the errno and the vCPU id.
///
/// | call                              | KVM API                                   |
/// | --------------------------------- | ----------------------------------------- |
/// | `get_fpu` / `set_fpu`             | 4.22/4.23 KVM_GET/SET_FPU                 |
/// | `xsave_size`                      | 4.4 KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)    |
/// | `get_xsave` / `set_xsave`         | 4.42/4.43 KVM_GET/SET_XSAVE, 4.136 XSAVE2  |
/// | `get_xcrs` / `set_xcrs`           | 4.44/4.45 KVM_GET/SET_XCRS                |
/// | `get_lapic` / `set_lapic`         | 4.57/4.58 KVM_GET/SET_LAPIC               |
/// | `get_mp_state` / `set_mp_state`   | 4.38/4.39 KVM_GET/SET_MP_STATE            |
/// | `get_vcpu_events` / `set_...`     | 4.31/4.32 KVM_GET/SET_VCPU_EVENTS         |
/// | `get_debugregs` / `set_debugregs` | 4.33/4.34 KVM_GET/SET_DEBUGREGS           |
/// | `get_msrs` / `set_msrs`           | 4.18/4.19 KVM_GET/SET_MSRS, in bulk       |
/// | `msr_index_list`                  | 4.3 KVM_GET_MSR_INDEX_LIST (system fd)    |
/// | `get_tsc_khz` / `set_tsc_khz`     | 4.55/4.56 KVM_GET/SET_TSC_KHZ             |
///
/// The kernel structs without an arch mirror (`kvm_fpu`, `kvm_xcrs`, `kvm_lapic_state`,
/// `kvm_mp_state`) are used as they are: only this layer sees them. Events and debug registers
/// are the arch's register blocks, moved through the vCPU's block cache (`load` / `store`), so a
/// value read here agrees with what handlers see and wrote.
///
/// Setup and state-transfer path: `get_msrs`, `msr_index_list` and the XSAVE buffer allocate.
/// Compiled only on x86-64 hosts; elsewhere this header is empty.

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/x86_64_abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/arch.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace vcpu::kvm {

namespace x86_64_layout {
// The kernel structs used as they are: sizes pinned so a header change shows here, not in a
// serialized state (kvm/x86_64_state.hpp copies them byte for byte).
static_assert(sizeof(::kvm_fpu) == 416 && offsetof(::kvm_fpu, mxcsr) == 408);
static_assert(sizeof(::kvm_xcrs) == 392 && offsetof(::kvm_xcrs, xcrs) == 8 && sizeof(::kvm_xcr) == 16);
static_assert(sizeof(::kvm_lapic_state) == KVM_APIC_REG_SIZE && KVM_APIC_REG_SIZE == 1024);
static_assert(sizeof(::kvm_mp_state) == 4);
static_assert(detail::xsave_header_size == sizeof(::kvm_xsave::region));
} // namespace x86_64_layout

/// The XSAVE area as KVM_GET_XSAVE(2) writes it: at least 4096 bytes, in the standard
/// (non-compacted) format whose offsets follow the host's CPUID leaf 0xD.
struct xsave_area {
    std::vector<std::uint32_t> words; ///< `size() / 4` words
    /// Bytes of the area.
    [[nodiscard]] std::size_t size() const noexcept { return words.size() * sizeof(std::uint32_t); }
};

namespace detail {
template <class Sys, class Arch>
[[nodiscard]] result<void> vcpu_call(hal_vcpu<Sys, Arch>& cpu, ioctl_def<fd_kind::vcpu> io, void* arg) noexcept {
    auto r = cpu.ioctl(io, arg);
    if (!r) return r.err();
    return ok();
}
template <class T, class Sys, class Arch>
[[nodiscard]] result<T> vcpu_get(hal_vcpu<Sys, Arch>& cpu, ioctl_def<fd_kind::vcpu> io) noexcept {
    T v{};
    if (auto r = cpu.ioctl(io, &v); !r) return r.err();
    return v;
}
} // namespace detail

/// FPU, SSE and MXCSR (KVM API 4.22 KVM_GET_FPU). A VMM with XSAVE uses `get_xsave`, a superset.
template <class Sys, class Arch>
[[nodiscard]] result<::kvm_fpu> get_fpu(hal_vcpu<Sys, Arch>& cpu) noexcept {
    return detail::vcpu_get<::kvm_fpu>(cpu, ioctls::vcpu::get_fpu);
}
/// KVM API 4.23 KVM_SET_FPU.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_fpu(hal_vcpu<Sys, Arch>& cpu, const ::kvm_fpu& v) noexcept {
    auto copy = v; // the kernel only reads it
    return detail::vcpu_call(cpu, ioctls::vcpu::set_fpu, &copy);
}

/// Bytes of this host's XSAVE area (KVM API 4.4, `KVM_CAP_XSAVE2` on the system fd: at least
/// 4096, more with dynamic features such as AMX enabled by `arch_prctl`), 4096 when the
/// kernel predates the capability, 0 without `KVM_CAP_XSAVE` (then only `get_fpu` applies).
/// Errors: "KVM_CHECK_EXTENSION" with errno and the capability.
template <class Sys, class Arch>
[[nodiscard]] result<std::size_t> xsave_size(const hal_vcpu<Sys, Arch>& cpu) noexcept {
    constexpr auto io = ioctls::system::check_extension;
    const int x2 = Sys::ioctl(cpu.system_fd(), io.code, detail::int_arg(KVM_CAP_XSAVE2));
    if (x2 < 0) return last_error(io.name).with("cap", KVM_CAP_XSAVE2);
    if (x2 > 0) return static_cast<std::size_t>(x2) < detail::xsave_header_size ? detail::xsave_header_size
                                                                               : static_cast<std::size_t>(x2);
    const int x1 = Sys::ioctl(cpu.system_fd(), io.code, detail::int_arg(KVM_CAP_XSAVE));
    if (x1 < 0) return last_error(io.name).with("cap", KVM_CAP_XSAVE);
    return x1 > 0 ? detail::xsave_header_size : 0;
}

/// The XSAVE area, `size` bytes (`xsave_size(cpu)`): KVM_GET_XSAVE2 when `size` > 4096 or the
/// host has `KVM_CAP_XSAVE2` (KVM API 4.136), else KVM_GET_XSAVE (4.42). Errors: EINVAL for a
/// `size` that is not a multiple of 4 or below 4096; the ioctl's name and errno.
template <class Sys, class Arch>
[[nodiscard]] result<xsave_area> get_xsave(hal_vcpu<Sys, Arch>& cpu, std::size_t size) noexcept {
    if (size < detail::xsave_header_size || size % 4 != 0)
        return error{ioctls::vcpu::get_xsave.name, EINVAL, "XSAVE area size must be a multiple of 4, >= 4096"}
            .with("size", size);
    xsave_area a;
    a.words.resize(size / 4);
    // KVM_GET_XSAVE2 writes the KVM_CAP_XSAVE2 size; plain KVM_GET_XSAVE exactly 4096 bytes.
    const auto io = size > detail::xsave_header_size ? ioctls::vcpu::get_xsave2 : ioctls::vcpu::get_xsave;
    if (auto r = detail::vcpu_call(cpu, io, a.words.data()); !r) return error(r.err()).with("size", size);
    return a;
}
/// KVM API 4.43 KVM_SET_XSAVE: the kernel reads `a.size()` bytes (4096, or the KVM_CAP_XSAVE2
/// size). Errors: EINVAL for an area below 4096 bytes; the ioctl's name and errno.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_xsave(hal_vcpu<Sys, Arch>& cpu, const xsave_area& a) noexcept {
    if (a.size() < detail::xsave_header_size)
        return error{ioctls::vcpu::set_xsave.name, EINVAL, "XSAVE area smaller than 4096 bytes"}.with("size", a.size());
    // KVM_SET_XSAVE only reads the area.
    return detail::vcpu_call(cpu, ioctls::vcpu::set_xsave, const_cast<std::uint32_t*>(a.words.data()));
}

/// Extended control registers, XCR0 (KVM API 4.44 KVM_GET_XCRS; needs `KVM_CAP_XCRS`).
template <class Sys, class Arch>
[[nodiscard]] result<::kvm_xcrs> get_xcrs(hal_vcpu<Sys, Arch>& cpu) noexcept {
    return detail::vcpu_get<::kvm_xcrs>(cpu, ioctls::vcpu::get_xcrs);
}
/// KVM API 4.45 KVM_SET_XCRS.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_xcrs(hal_vcpu<Sys, Arch>& cpu, const ::kvm_xcrs& v) noexcept {
    auto copy = v;
    return detail::vcpu_call(cpu, ioctls::vcpu::set_xcrs, &copy);
}

/// The in-kernel local APIC's registers (KVM API 4.57 KVM_GET_LAPIC). Without the in-kernel
/// irqchip KVM answers ENXIO.
template <class Sys, class Arch>
[[nodiscard]] result<::kvm_lapic_state> get_lapic(hal_vcpu<Sys, Arch>& cpu) noexcept {
    return detail::vcpu_get<::kvm_lapic_state>(cpu, ioctls::vcpu::get_lapic);
}
/// KVM API 4.58 KVM_SET_LAPIC.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_lapic(hal_vcpu<Sys, Arch>& cpu, const ::kvm_lapic_state& v) noexcept {
    auto copy = v;
    return detail::vcpu_call(cpu, ioctls::vcpu::set_lapic, &copy);
}

/// The vCPU's multiprocessing state, `KVM_MP_STATE_*` (KVM API 4.38 KVM_GET_MP_STATE). On x86
/// it also accepts pending INIT/SIPI events, which may reset registers: read it before them.
template <class Sys, class Arch>
[[nodiscard]] result<std::uint32_t> get_mp_state(hal_vcpu<Sys, Arch>& cpu) noexcept {
    auto r = detail::vcpu_get<::kvm_mp_state>(cpu, ioctls::vcpu::get_mp_state);
    if (!r) return r.err();
    return r->mp_state;
}
/// KVM API 4.39 KVM_SET_MP_STATE.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_mp_state(hal_vcpu<Sys, Arch>& cpu, std::uint32_t mp_state) noexcept {
    ::kvm_mp_state m{};
    m.mp_state = mp_state;
    if (auto r = detail::vcpu_call(cpu, ioctls::vcpu::set_mp_state, &m); !r)
        return error(r.err()).with("mp_state", mp_state);
    return ok();
}

/// Pending and injected exception, interrupt, NMI and SMI state (KVM API 4.31
/// KVM_GET_VCPU_EVENTS), through the vCPU's block cache (synced in `kvm_run` when it can be).
template <class Sys, class Arch>
[[nodiscard]] result<::vcpu::x86_64::events_layout> get_vcpu_events(hal_vcpu<Sys, Arch>& cpu) noexcept {
    auto p = cpu.template load<::vcpu::x86_64::events_block>();
    if (!p) return p.err();
    return **p;
}
/// KVM API 4.32 KVM_SET_VCPU_EVENTS, now (`hal_vcpu::store`).
template <class Sys, class Arch>
[[nodiscard]] result<void> set_vcpu_events(hal_vcpu<Sys, Arch>& cpu, const ::vcpu::x86_64::events_layout& v) noexcept {
    return cpu.template store<::vcpu::x86_64::events_block>(v);
}
/// DR0-3, DR6, DR7 (KVM API 4.33 KVM_GET_DEBUGREGS), through the block cache.
template <class Sys, class Arch>
[[nodiscard]] result<::vcpu::x86_64::debugregs_layout> get_debugregs(hal_vcpu<Sys, Arch>& cpu) noexcept {
    auto p = cpu.template load<::vcpu::x86_64::debugregs_block>();
    if (!p) return p.err();
    return **p;
}
/// KVM API 4.34 KVM_SET_DEBUGREGS, now (`hal_vcpu::store`).
template <class Sys, class Arch>
[[nodiscard]] result<void> set_debugregs(hal_vcpu<Sys, Arch>& cpu, const ::vcpu::x86_64::debugregs_layout& v) noexcept {
    return cpu.template store<::vcpu::x86_64::debugregs_block>(v);
}

/// The MSR indices KVM can save and restore for a guest (KVM API 4.3 KVM_GET_MSR_INDEX_LIST on
/// the system fd `system_fd`): asks for the count (E2BIG with `nmsrs` set), then the list.
/// Errors: "KVM_GET_MSR_INDEX_LIST" with errno; EPROTO when the list keeps growing.
template <class Sys>
[[nodiscard]] result<std::vector<std::uint32_t>> msr_index_list(int system_fd) {
    constexpr auto io = ioctls::system::get_msr_index_list;
    std::vector<std::uint32_t> buf(1, 0); // word 0 is nmsrs, the indices follow
    for (int attempt = 0; attempt < 4; ++attempt) {
        buf[0] = static_cast<std::uint32_t>(buf.size() - 1);
        if (Sys::ioctl(system_fd, io.code, buf.data()) == 0) {
            if (buf[0] > buf.size() - 1) return error{io.name, EPROTO, "kernel listed more MSRs than room"};
            return std::vector<std::uint32_t>(buf.begin() + 1, buf.begin() + 1 + buf[0]);
        }
        if (errno != E2BIG) return last_error(io.name);
        buf.resize(std::size_t{buf[0]} + 1); // the kernel wrote the count it needs
    }
    return error{io.name, EPROTO, "the MSR index list kept growing"};
}
/// As `msr_index_list(system_fd)` for the host of `cpu`.
template <class Sys, class Arch>
[[nodiscard]] result<std::vector<std::uint32_t>> msr_index_list(const hal_vcpu<Sys, Arch>& cpu) {
    return msr_index_list<Sys>(cpu.system_fd());
}

namespace detail {
/// `struct kvm_msrs` + entries in the kernel's C layout (entries at `c_flex_header_size`):
/// word-aligned `std::uint64_t` storage, two `__u32` then 16-byte entries.
[[nodiscard]] inline std::vector<std::uint64_t> msrs_buffer(std::span<const ::vcpu::x86_64::msr_entry> e) {
    static_assert(c_flex_header_size == sizeof(std::uint64_t) && sizeof(::vcpu::x86_64::msr_entry) == 16);
    std::vector<std::uint64_t> b(1 + e.size() * 2, 0);
    const auto n = static_cast<std::uint32_t>(e.size());
    std::memcpy(b.data(), &n, sizeof n);
    if (!e.empty()) std::memcpy(b.data() + 1, e.data(), e.size_bytes());
    return b;
}
} // namespace detail

/// Reads the MSRs `entries[i].index` into `entries[i].data` in one KVM_GET_MSRS (KVM API 4.18).
/// Returns how many KVM read: it stops at the first MSR it cannot read, so a result below
/// `entries.size()` names `entries[result]` as the MSR that failed. Errors: "KVM_GET_MSRS" with
/// errno; E2BIG for more than 2^32-1 entries.
template <class Sys, class Arch>
[[nodiscard]] result<std::size_t> get_msrs(hal_vcpu<Sys, Arch>& cpu, std::span<::vcpu::x86_64::msr_entry> entries) {
    constexpr auto io = ioctls::vcpu::get_msrs;
    if (entries.size() > 0xffffffffu) return error{io.name, E2BIG, "too many MSRs"};
    auto b = detail::msrs_buffer(entries);
    auto r = cpu.ioctl(io, b.data());
    if (!r) return error(r.err()).with("msrs", entries.size());
    const auto n = static_cast<std::size_t>(*r) <= entries.size() ? static_cast<std::size_t>(*r) : entries.size();
    if (n != 0) std::memcpy(static_cast<void*>(entries.data()), b.data() + 1, n * sizeof(::vcpu::x86_64::msr_entry));
    return n;
}
/// Writes the MSRs in one KVM_SET_MSRS (KVM API 4.19). Returns how many KVM wrote (it stops at
/// the first MSR it refuses). Errors as `get_msrs`.
template <class Sys, class Arch>
[[nodiscard]] result<std::size_t> set_msrs(hal_vcpu<Sys, Arch>& cpu, std::span<const ::vcpu::x86_64::msr_entry> entries) {
    constexpr auto io = ioctls::vcpu::set_msrs;
    if (entries.size() > 0xffffffffu) return error{io.name, E2BIG, "too many MSRs"};
    auto b = detail::msrs_buffer(entries);
    auto r = cpu.ioctl(io, b.data());
    if (!r) return error(r.err()).with("msrs", entries.size());
    return static_cast<std::size_t>(*r);
}

/// The vCPU's guest TSC frequency in kHz (KVM API 4.55 KVM_GET_TSC_KHZ).
template <class Sys, class Arch>
[[nodiscard]] result<std::uint32_t> get_tsc_khz(hal_vcpu<Sys, Arch>& cpu) noexcept {
    auto r = cpu.ioctl(ioctls::vcpu::get_tsc_khz, nullptr);
    if (!r) return r.err();
    return static_cast<std::uint32_t>(*r);
}
/// KVM API 4.56 KVM_SET_TSC_KHZ (needs TSC scaling on the host unless `khz` is the host's own
/// frequency, within KVM's tolerance).
template <class Sys, class Arch>
[[nodiscard]] result<void> set_tsc_khz(hal_vcpu<Sys, Arch>& cpu, std::uint32_t khz) noexcept {
    if (auto r = cpu.ioctl(ioctls::vcpu::set_tsc_khz, detail::int_arg(khz)); !r) return error(r.err()).with("khz", khz);
    return ok();
}

} // namespace vcpu::kvm

#endif // __x86_64__
