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

#include <array>
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

namespace detail {
/// A `struct kvm_msr_list` system ioctl (KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST):
/// asks for the count (E2BIG with `nmsrs` set), then the list. EPROTO when it keeps growing.
template <class Sys>
[[nodiscard]] result<std::vector<std::uint32_t>> msr_list(int system_fd, ioctl_def<fd_kind::system> io) {
    std::vector<std::uint32_t> buf(1, 0); // word 0 is nmsrs, the indices follow
    for (int attempt = 0; attempt < 4; ++attempt) {
        buf[0] = static_cast<std::uint32_t>(buf.size() - 1);
        if (Sys::ioctl(system_fd, io.code, buf.data()) == 0) {
            if (buf[0] > buf.size() - 1) return error{io.name, EPROTO, "kernel listed more MSRs than room"};
            return std::vector<std::uint32_t>(buf.begin() + 1, buf.begin() + 1 + buf[0]);
        }
        if (errno != E2BIG) return last_error(io.name);
        if (buf[0] > 65536) return error{io.name, EPROTO, "implausible MSR count"}.with("nmsrs", buf[0]);
        buf.resize(std::size_t{buf[0]} + 1); // the kernel wrote the count it needs
    }
    return error{io.name, EPROTO, "the MSR index list kept growing"};
}
} // namespace detail

/// The MSR indices KVM can save and restore for a guest (KVM API 4.3 KVM_GET_MSR_INDEX_LIST on
/// the system fd `system_fd`): asks for the count (E2BIG with `nmsrs` set), then the list.
/// Errors: "KVM_GET_MSR_INDEX_LIST" with errno; EPROTO when the list keeps growing.
template <class Sys>
[[nodiscard]] result<std::vector<std::uint32_t>> msr_index_list(int system_fd) {
    return detail::msr_list<Sys>(system_fd, ioctls::system::get_msr_index_list);
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

// ---- the rest of the x86 vCPU calls ------------------------------------------------------------

namespace detail {
/// A `struct kvm_cpuid2` ioctl that KVM answers with E2BIG, without saying how many entries it
/// needs, when the buffer is too small (KVM_GET_CPUID2, KVM_GET_EMULATED_CPUID): starts at 64
/// entries and doubles up to `max_cpuid_grow` (KVM_MAX_CPUID_ENTRIES is 256 today).
inline constexpr std::size_t max_cpuid_grow = 4096;
template <class Sys>
[[nodiscard]] result<std::vector<::vcpu::x86_64::cpuid_entry>> cpuid2_grow(int fd, unsigned long code, const char* name) {
    for (std::size_t n = 64; n <= max_cpuid_grow; n *= 2) {
        cpuid2_buffer b(n);
        if (!b.ok()) return error{name, ENOMEM, "cannot allocate the kvm_cpuid2 buffer"}.with("entries", n);
        if (Sys::ioctl(fd, code, b.arg()) == 0) {
            if (b.nent() > n) return error{name, EPROTO, "kernel reported more entries than room"}.with("nent", b.nent());
            std::vector<::vcpu::x86_64::cpuid_entry> out(b.nent());
            // Layouts asserted identical (kvm/x86_64_abi.hpp).
            if (!out.empty()) std::memcpy(static_cast<void*>(out.data()), b.entries(), out.size() * sizeof(::kvm_cpuid_entry2));
            return out;
        }
        if (errno != E2BIG) return last_error(name).with("entries", n);
    }
    return error{name, E2BIG, "more CPUID entries than the library allows"}.with("entries", max_cpuid_grow);
}
} // namespace detail

/// The vCPU's CPUID entries as KVM_SET_CPUID2 gave them (KVM API "KVM_GET_CPUID2"). KVM answers
/// E2BIG for a buffer that is too small without saying the size, so the buffer doubles from 64
/// entries until it fits. Errors: "KVM_GET_CPUID2" with errno and the entries offered.
template <class Sys, class Arch>
[[nodiscard]] result<std::vector<::vcpu::x86_64::cpuid_entry>> get_cpuid2(const hal_vcpu<Sys, Arch>& cpu) {
    auto r = detail::cpuid2_grow<Sys>(cpu.fd(), ioctls::vcpu::get_cpuid2.code, ioctls::vcpu::get_cpuid2.name);
    if (!r) return error(r.err()).with("vcpu_id", cpu.id());
    return r;
}

/// Tells KVM the guest was paused by the host (KVM API "KVM_KVMCLOCK_CTRL"): the guest's
/// kvmclock page gets `PVCLOCK_GUEST_STOPPED`, so its soft-lockup watchdog does not fire after a
/// long stop. Errors: "KVM_KVMCLOCK_CTRL" EINVAL when the guest has not enabled kvmclock
/// (`MSR_KVM_SYSTEM_TIME_NEW` with bit 0 set).
template <class Sys, class Arch>
[[nodiscard]] result<void> kvmclock_ctrl(hal_vcpu<Sys, Arch>& cpu) noexcept {
    if (auto r = cpu.ioctl(ioctls::vcpu::kvmclock_ctrl, nullptr); !r) {
        auto e = r.err();
        if (e.code == EINVAL) e.detail = "the guest has not enabled kvmclock";
        return e;
    }
    return ok();
}

/// Queues a non-maskable interrupt on the vCPU (KVM API "KVM_NMI"); the guest takes it at its
/// next entry unless NMIs are blocked. Works with and without the in-kernel irqchip (with it,
/// LINT1 must be configured for NMI delivery by the guest, as on real hardware).
template <class Sys, class Arch>
[[nodiscard]] result<void> inject_nmi(hal_vcpu<Sys, Arch>& cpu) noexcept {
    return detail::vcpu_call(cpu, ioctls::vcpu::nmi, nullptr);
}

/// Queues a system-management interrupt (KVM API "KVM_SMI", needs `KVM_CAP_X86_SMM`); it shows
/// as `events.smi.pending` until the vCPU enters SMM. Errors: "KVM_SMI" with errno (ENOTTY
/// without SMM support).
template <class Sys, class Arch>
[[nodiscard]] result<void> inject_smi(hal_vcpu<Sys, Arch>& cpu) noexcept {
    return detail::vcpu_call(cpu, ioctls::vcpu::smi, nullptr);
}

/// Injects external interrupt `vector` (KVM API "KVM_INTERRUPT", x86 meaning): only for a VM
/// WITHOUT the in-kernel irqchip, where userspace plays the PIC. KVM holds one vector and
/// delivers it when the guest can take it (RFLAGS.IF set, no interrupt shadow): request an
/// interrupt window or inject when `kvm_run::ready_for_interrupt_injection` says so. Errors:
/// "KVM_INTERRUPT" ENXIO "the VM has an in-kernel irqchip" (use KVM_IRQ_LINE or an MSI),
/// EEXIST "an interrupt is already queued", with the vector.
template <class Sys, class Arch>
[[nodiscard]] result<void> inject_interrupt(hal_vcpu<Sys, Arch>& cpu, std::uint8_t vector) noexcept {
    ::kvm_interrupt irq{};
    irq.irq = vector;
    if (auto r = cpu.ioctl(ioctls::vcpu::interrupt, &irq); !r) {
        auto e = r.err();
        if (e.code == ENXIO) e.detail = "the VM has an in-kernel irqchip: use KVM_IRQ_LINE or an MSI";
        else if (e.code == EEXIST) e.detail = "an interrupt is already queued";
        return e.with("vector", vector);
    }
    return ok();
}

/// A guest virtual address translated through the vCPU's page tables (KVM API "KVM_TRANSLATE").
struct translation {
    std::uint64_t gva = 0;       ///< the address asked about
    std::uint64_t gpa = 0;       ///< its guest physical address (meaningful when `valid`)
    bool valid = false;          ///< the page is mapped (present at every level)
    bool writeable = false;      ///< as KVM reports it: x86 KVM always says 1 (it does not check)
    bool usermode = false;       ///< as KVM reports it: x86 KVM always says 0
};

/// Translates `gva` with the vCPU's current CR3/paging mode as KVM holds it (KVM API
/// "KVM_TRANSLATE"). An unmapped address is not an error: `valid` is false. x86 KVM walks
/// the tables for a supervisor read and fills `writeable`/`usermode` with constants (1, 0):
/// only `valid` and `gpa` carry information. Precondition:
/// control registers written with `modify` reach KVM only at the next KVM_RUN; translate after
/// a run (or after `store<sregs_block>`). Errors: "KVM_TRANSLATE" with errno and the address.
template <class Sys, class Arch>
[[nodiscard]] result<translation> translate(hal_vcpu<Sys, Arch>& cpu, std::uint64_t gva) noexcept {
    ::kvm_translation t{};
    t.linear_address = gva;
    if (auto r = cpu.ioctl(ioctls::vcpu::translate, &t); !r) return error(r.err()).with_hex("gva", gva);
    return translation{gva, t.physical_address, t.valid != 0, t.writeable != 0, t.usermode != 0};
}

/// What an x86 hardware breakpoint watches: DR7's R/W field (SDM Vol. 3B §18.2.4, "Debug
/// Control Register (DR7)").
enum class breakpoint_type : std::uint8_t {
    execute = 0,    ///< instruction fetch (`length` must be `one`)
    write = 1,      ///< data writes
    io = 2,         ///< port I/O (needs CR4.DE in the guest)
    read_write = 3, ///< data reads or writes (not instruction fetches)
};
/// How many bytes a hardware breakpoint covers: DR7's LEN field (SDM Vol. 3B §18.2.4; the
/// address must be aligned to it, §18.2.5).
enum class breakpoint_length : std::uint8_t {
    one = 0,   ///< 1 byte
    two = 1,   ///< 2 bytes
    eight = 2, ///< 8 bytes (64-bit mode)
    four = 3,  ///< 4 bytes
};
/// Bytes of `l`.
[[nodiscard]] constexpr std::uint64_t bytes_of(breakpoint_length l) noexcept {
    switch (l) {
    case breakpoint_length::one: return 1;
    case breakpoint_length::two: return 2;
    case breakpoint_length::eight: return 8;
    case breakpoint_length::four: return 4;
    }
    return 0;
}
/// One hardware breakpoint or watchpoint (a debug address register DR0-DR3 the host owns).
struct hw_breakpoint {
    bool enabled = false;                              ///< this slot is in use
    std::uint64_t address = 0;                         ///< guest linear address
    breakpoint_type type = breakpoint_type::execute;   ///< what fires it
    breakpoint_length length = breakpoint_length::one; ///< bytes covered
};
/// Number of hardware breakpoint slots on x86 (DR0-DR3).
inline constexpr std::size_t hw_breakpoint_slots = 4;

/// Host-side debugging of the guest (KVM API "KVM_SET_GUEST_DEBUG"): what makes the vCPU
/// stop with a `vcpu::debug` exit. `debug.exception` is 1 (\#DB: single step, hardware
/// breakpoint or watchpoint; `debug.status` is DR6, bit i = slot i fired, bit 14 = single step)
/// or 3 (\#BP: an `int3`, with `debug.pc` at the `int3`).
struct guest_debug {
    bool enable = true;                ///< false turns guest debugging off (everything below ignored)
    bool single_step = false;          ///< exit after every guest instruction
    bool software_breakpoints = false; ///< `int3` exits to the host instead of raising \#BP in the guest
    bool block_irq = false;            ///< no interrupt delivery while single-stepping (`KVM_GUESTDBG_BLOCKIRQ`)
    std::array<hw_breakpoint, hw_breakpoint_slots> hw{}; ///< DR0-DR3; any enabled one turns `KVM_GUESTDBG_USE_HW_BP` on
};

namespace detail {
/// `g` as the kernel's struct, or the reason it cannot be one.
[[nodiscard]] inline result<::kvm_guest_debug> to_kvm(const guest_debug& g) noexcept {
    constexpr const char* op = "KVM_SET_GUEST_DEBUG";
    ::kvm_guest_debug d{};
    if (!g.enable) return d; // control 0: debugging off
    d.control = KVM_GUESTDBG_ENABLE;
    if (g.single_step) d.control |= KVM_GUESTDBG_SINGLESTEP;
    if (g.software_breakpoints) d.control |= KVM_GUESTDBG_USE_SW_BP;
    if (g.block_irq) d.control |= KVM_GUESTDBG_BLOCKIRQ;
    // DR7 (SDM Vol. 3B §18.2.4): L<i> at bit 2i, R/W<i> at 16+4i, LEN<i> at 18+4i; bit 10 reads as 1.
    std::uint64_t dr7 = 1u << 10;
    bool any = false;
    for (std::size_t i = 0; i < hw_breakpoint_slots; ++i) {
        const auto& b = g.hw[i];
        if (!b.enabled) continue;
        if (b.type == breakpoint_type::execute && b.length != breakpoint_length::one)
            return error{op, EINVAL, "an instruction breakpoint must have length one"}.with("slot", i);
        if (b.address % bytes_of(b.length) != 0)
            return error{op, EINVAL, "breakpoint address not aligned to its length"}
                .with("slot", i)
                .with_hex("address", b.address)
                .with("length", bytes_of(b.length));
        if (static_cast<unsigned>(b.type) > 3 || static_cast<unsigned>(b.length) > 3)
            return error{op, EINVAL, "bad breakpoint type or length"}.with("slot", i);
        d.arch.debugreg[i] = b.address;
        dr7 |= std::uint64_t{1} << (2 * i);
        dr7 |= std::uint64_t{static_cast<std::uint8_t>(b.type)} << (16 + 4 * i);
        dr7 |= std::uint64_t{static_cast<std::uint8_t>(b.length)} << (18 + 4 * i);
        any = true;
    }
    if (any) {
        d.control |= KVM_GUESTDBG_USE_HW_BP;
        d.arch.debugreg[7] = dr7;
    }
    return d;
}

/// Makes KVM hold the register block `B` this vCPU would apply at its next KVM_RUN: a pending
/// `modify` of RIP, RFLAGS or the segments must be in KVM before KVM_SET_GUEST_DEBUG reads them.
/// Only a block that differs from KVM's is written (a needless KVM_SET_REGS would drop a
/// pending exception).
template <class B, class Sys, class Arch>
[[nodiscard]] result<void> push_block(hal_vcpu<Sys, Arch>& cpu) noexcept {
    auto mine = cpu.template load<B>();
    if (!mine) return mine.err();
    typename B::layout kernel{};
    if (auto r = cpu.ioctl(block_traits<B>::get, &kernel); !r) return r.err();
    if (std::memcmp(&kernel, *mine, sizeof kernel) == 0) return ok();
    const typename B::layout copy = **mine;
    return cpu.template store<B>(copy);
}
} // namespace detail

/// Sets host-side guest debugging (KVM API "KVM_SET_GUEST_DEBUG"): single-stepping, `int3` as
/// a debug exit, hardware breakpoints and watchpoints in DR0-DR3 (the guest's own debug
/// registers are kept apart and restored by KVM). First completes a pending exit and pushes
/// pending writes of RIP, RFLAGS and the segments to KVM, which computes where single-stepping
/// starts from them. To go on past an `int3` exit, move RIP past it (1 byte); past an
/// instruction breakpoint, disable that slot (or set RFLAGS.RF). Errors: "KVM_SET_GUEST_DEBUG"
/// EINVAL naming the slot for an execute breakpoint longer than one byte or an unaligned
/// address; the ioctl's errno and the control word.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_guest_debug(hal_vcpu<Sys, Arch>& cpu, const guest_debug& g) noexcept {
    auto d = detail::to_kvm(g);
    if (!d) return error(d.err()).with("vcpu_id", cpu.id());
    VCPU_TRY_VOID(cpu.complete_pending_io());
    VCPU_TRY_VOID(detail::push_block<::vcpu::x86_64::sregs_block>(cpu));
    VCPU_TRY_VOID(detail::push_block<::vcpu::x86_64::regs_block>(cpu));
    if (auto r = cpu.ioctl(ioctls::vcpu::set_guest_debug, &*d); !r) return error(r.err()).with_hex("control", d->control);
    return ok();
}

/// The nested-virtualization state of a vCPU (KVM API "KVM_GET_NESTED_STATE"): the kernel's
/// `struct kvm_nested_state` — a 128-byte header (flags, format VMX/SVM, size, the format's
/// header) then `size - 128` bytes of data (the VMCS12 or VMCB12 and shadow copies) — kept as
/// opaque bytes in 8-byte words.
struct nested_state {
    std::vector<std::uint64_t> words; ///< the struct's bytes, `size()` of them used (rounded up to 8)

    /// Bytes of the state (`kvm_nested_state::size`), 0 when empty.
    [[nodiscard]] std::uint32_t size() const noexcept { return header().size; }
    /// `KVM_STATE_NESTED_*` flags (guest mode, run pending, ...).
    [[nodiscard]] std::uint16_t flags() const noexcept { return header().flags; }
    /// `KVM_STATE_NESTED_FORMAT_VMX` (0) or `_SVM` (1).
    [[nodiscard]] std::uint16_t format() const noexcept { return header().format; }
    /// The bytes, `size()` of them.
    [[nodiscard]] std::span<const std::byte> bytes() const noexcept {
        const std::size_t n = size() <= words.size() * 8 ? size() : 0;
        return std::as_bytes(std::span(words)).first(n);
    }
    /// The fixed header: flags, format, size (zeroes when empty).
    [[nodiscard]] ::kvm_nested_state header() const noexcept {
        ::kvm_nested_state h{};
        if (words.size() * 8 >= sizeof h) std::memcpy(&h, words.data(), sizeof h);
        return h;
    }
};
static_assert(sizeof(::kvm_nested_state) == 128, "kvm: struct kvm_nested_state's header is 128 bytes");

/// Bytes KVM needs for this host's nested state (KVM API "KVM_CAP_NESTED_STATE" on the system
/// fd), 0 when the host cannot save nested state (no nested virtualization, or a host such as
/// PVM that lacks the capability). Errors: "KVM_CHECK_EXTENSION" with errno and the capability.
template <class Sys, class Arch>
[[nodiscard]] result<std::size_t> nested_state_size(const hal_vcpu<Sys, Arch>& cpu) noexcept {
    constexpr auto io = ioctls::system::check_extension;
    const int n = Sys::ioctl(cpu.system_fd(), io.code, detail::int_arg(KVM_CAP_NESTED_STATE));
    if (n < 0) return last_error(io.name).with("cap", KVM_CAP_NESTED_STATE);
    return static_cast<std::size_t>(n);
}

/// Reads the nested state into a buffer of `size` bytes (`nested_state_size`, at least 128;
/// KVM API "KVM_GET_NESTED_STATE"). When KVM needs more it says how much (E2BIG), and the read
/// is retried once at that size. Errors: EINVAL for `size` below 128 or above 64 MiB;
/// "KVM_GET_NESTED_STATE" with errno, the size offered and the vCPU id.
template <class Sys, class Arch>
[[nodiscard]] result<nested_state> get_nested_state(hal_vcpu<Sys, Arch>& cpu, std::size_t size) {
    constexpr auto io = ioctls::vcpu::get_nested_state;
    constexpr std::size_t max_size = std::size_t{64} << 20;
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (size < sizeof(::kvm_nested_state) || size > max_size)
            return error{io.name, EINVAL, "nested state size out of range"}.with("size", size).with("vcpu_id", cpu.id());
        nested_state s;
        s.words.assign((size + 7) / 8, 0);
        const auto sz = static_cast<std::uint32_t>(size);
        std::memcpy(reinterpret_cast<std::byte*>(s.words.data()) + offsetof(::kvm_nested_state, size), &sz, sizeof sz);
        auto r = cpu.ioctl(io, s.words.data());
        if (r) {
            if (s.size() > size || s.size() < sizeof(::kvm_nested_state))
                return error{io.name, EPROTO, "kernel reported a nested state size out of range"}.with("size", s.size());
            s.words.resize((s.size() + 7) / 8);
            return s;
        }
        if (r.err().code != E2BIG) return error(r.err()).with("size", size);
        size = s.size(); // KVM wrote the size it needs
    }
    return error{io.name, E2BIG, "the nested state kept growing"}.with("size", size).with("vcpu_id", cpu.id());
}

/// Writes nested state read by `get_nested_state` (KVM API "KVM_SET_NESTED_STATE"); restore it
/// after sregs, MSRs and the other vCPU state, as KVM checks it against them. Errors: EINVAL
/// when `s` is shorter than its header or than the size it states; "KVM_SET_NESTED_STATE" with
/// errno, the format, flags and size.
template <class Sys, class Arch>
[[nodiscard]] result<void> set_nested_state(hal_vcpu<Sys, Arch>& cpu, const nested_state& s) noexcept {
    constexpr auto io = ioctls::vcpu::set_nested_state;
    if (s.words.size() * 8 < sizeof(::kvm_nested_state) || s.size() < sizeof(::kvm_nested_state) ||
        s.size() > s.words.size() * 8)
        return error{io.name, EINVAL, "nested state shorter than its header or its stated size"}
            .with("bytes", s.words.size() * 8)
            .with("size", s.size());
    // KVM_SET_NESTED_STATE only reads the buffer.
    if (auto r = cpu.ioctl(io, const_cast<std::uint64_t*>(s.words.data())); !r)
        return error(r.err()).with("format", s.format()).with_hex("flags", s.flags()).with("size", s.size());
    return ok();
}

} // namespace vcpu::kvm

#endif // __x86_64__
