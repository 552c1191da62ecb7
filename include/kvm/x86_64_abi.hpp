#pragma once
/// \file
/// x86-64 host glue, part 1: proof that the arch-neutral mirrors in
/// include/arch/x86_64/abi.hpp are byte-identical to the kernel's structs,
/// the register-block and MSR-bank traits, and the CPUID ioctls.
///
/// Compiled only on x86-64 hosts; elsewhere this header is empty.

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/traits.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/registers.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <type_traits>

namespace vcpu::kvm {

namespace x86_64_layout {
namespace x = ::vcpu::x86_64;

// Each mirror must be passable to the kernel in place of its struct.
#define VCPU_KVM_SAME_FIELD(M, K, f)                                                               \
    static_assert(offsetof(M, f) == offsetof(K, f) && sizeof(M::f) == sizeof(K::f),               \
                  "kvm: " #M "::" #f " differs from " #K "::" #f)

static_assert(sizeof(x::regs_layout) == sizeof(::kvm_regs));
VCPU_KVM_SAME_FIELD(x::regs_layout, ::kvm_regs, rax);
VCPU_KVM_SAME_FIELD(x::regs_layout, ::kvm_regs, rsp);
VCPU_KVM_SAME_FIELD(x::regs_layout, ::kvm_regs, r15);
VCPU_KVM_SAME_FIELD(x::regs_layout, ::kvm_regs, rip);
VCPU_KVM_SAME_FIELD(x::regs_layout, ::kvm_regs, rflags);

static_assert(sizeof(x::segment) == sizeof(::kvm_segment));
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, base);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, limit);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, selector);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, type);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, present);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, db);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, l);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, g);
VCPU_KVM_SAME_FIELD(x::segment, ::kvm_segment, unusable);

static_assert(sizeof(x::dtable) == sizeof(::kvm_dtable));
VCPU_KVM_SAME_FIELD(x::dtable, ::kvm_dtable, base);
VCPU_KVM_SAME_FIELD(x::dtable, ::kvm_dtable, limit);

static_assert(sizeof(x::sregs_layout) == sizeof(::kvm_sregs));
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, cs);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, ss);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, ldt);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, gdt);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, idt);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, cr0);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, cr8);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, efer);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, apic_base);
VCPU_KVM_SAME_FIELD(x::sregs_layout, ::kvm_sregs, interrupt_bitmap);

static_assert(sizeof(x::events_layout) == sizeof(::kvm_vcpu_events));
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, exception);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, interrupt);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, nmi);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, sipi_vector);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, flags);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, smi);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, exception_has_payload);
VCPU_KVM_SAME_FIELD(x::events_layout, ::kvm_vcpu_events, exception_payload);

static_assert(sizeof(x::debugregs_layout) == sizeof(::kvm_debugregs));
VCPU_KVM_SAME_FIELD(x::debugregs_layout, ::kvm_debugregs, db);
VCPU_KVM_SAME_FIELD(x::debugregs_layout, ::kvm_debugregs, dr6);
VCPU_KVM_SAME_FIELD(x::debugregs_layout, ::kvm_debugregs, dr7);
VCPU_KVM_SAME_FIELD(x::debugregs_layout, ::kvm_debugregs, flags);

static_assert(sizeof(x::sync_regs_layout) == sizeof(::kvm_sync_regs));
VCPU_KVM_SAME_FIELD(x::sync_regs_layout, ::kvm_sync_regs, regs);
VCPU_KVM_SAME_FIELD(x::sync_regs_layout, ::kvm_sync_regs, sregs);
VCPU_KVM_SAME_FIELD(x::sync_regs_layout, ::kvm_sync_regs, events);
static_assert(offsetof(::kvm_run, s) + sizeof(::kvm_sync_regs) <= sizeof(::kvm_run),
              "kvm: kvm_run::s must hold kvm_sync_regs");

static_assert(sizeof(x::cpuid_entry) == sizeof(::kvm_cpuid_entry2));
VCPU_KVM_SAME_FIELD(x::cpuid_entry, ::kvm_cpuid_entry2, function);
VCPU_KVM_SAME_FIELD(x::cpuid_entry, ::kvm_cpuid_entry2, index);
VCPU_KVM_SAME_FIELD(x::cpuid_entry, ::kvm_cpuid_entry2, flags);
VCPU_KVM_SAME_FIELD(x::cpuid_entry, ::kvm_cpuid_entry2, eax);
VCPU_KVM_SAME_FIELD(x::cpuid_entry, ::kvm_cpuid_entry2, edx);
static_assert(x::cpuid_flag_significant_index == KVM_CPUID_FLAG_SIGNIFCANT_INDEX);

static_assert(sizeof(x::msr_entry) == sizeof(::kvm_msr_entry));
VCPU_KVM_SAME_FIELD(x::msr_entry, ::kvm_msr_entry, index);
VCPU_KVM_SAME_FIELD(x::msr_entry, ::kvm_msr_entry, data);

static_assert(static_cast<std::uint64_t>(x::sync_bit::regs) == KVM_SYNC_X86_REGS);
static_assert(static_cast<std::uint64_t>(x::sync_bit::sregs) == KVM_SYNC_X86_SREGS);
static_assert(static_cast<std::uint64_t>(x::sync_bit::events) == KVM_SYNC_X86_EVENTS);

#undef VCPU_KVM_SAME_FIELD
} // namespace x86_64_layout

/// `kvm_regs`: KVM API 4.11/4.12 KVM_GET_REGS/KVM_SET_REGS, synced by `KVM_SYNC_X86_REGS`.
template <>
struct block_traits<::vcpu::x86_64::regs_block> {
    /// @{
    /// The GET and SET ioctls, the `kvm_valid_regs`/`kvm_dirty_regs` sync bit, and the offset of the block in `kvm_sync_regs`.
    static constexpr auto get = ioctls::vcpu::get_regs;
    static constexpr auto set = ioctls::vcpu::set_regs;
    static constexpr std::uint64_t sync_bit = KVM_SYNC_X86_REGS;
    static constexpr std::size_t sync_offset = offsetof(::kvm_sync_regs, regs);
    /// @}
};
/// `kvm_sregs`: KVM API 4.13/4.14 KVM_GET_SREGS/KVM_SET_SREGS, synced by `KVM_SYNC_X86_SREGS`.
template <>
struct block_traits<::vcpu::x86_64::sregs_block> {
    /// @{
    /// The GET and SET ioctls, the sync bit, and the offset of the block in `kvm_sync_regs`.
    static constexpr auto get = ioctls::vcpu::get_sregs;
    static constexpr auto set = ioctls::vcpu::set_sregs;
    static constexpr std::uint64_t sync_bit = KVM_SYNC_X86_SREGS;
    static constexpr std::size_t sync_offset = offsetof(::kvm_sync_regs, sregs);
    /// @}
    /// Why KVM would refuse this block (explains a failed KVM_RUN / KVM_SET_SREGS), or null.
    [[nodiscard]] static constexpr const char* explain_invalid(const ::vcpu::x86_64::sregs_layout& s) noexcept {
        return ::vcpu::x86_64::invalid_state_reason(s);
    }
};
/// `kvm_vcpu_events`: KVM API 4.31/4.32 KVM_GET/SET_VCPU_EVENTS, synced by `KVM_SYNC_X86_EVENTS`.
template <>
struct block_traits<::vcpu::x86_64::events_block> {
    /// @{
    /// The GET and SET ioctls, the sync bit, and the offset of the block in `kvm_sync_regs`.
    static constexpr auto get = ioctls::vcpu::get_vcpu_events;
    static constexpr auto set = ioctls::vcpu::set_vcpu_events;
    static constexpr std::uint64_t sync_bit = KVM_SYNC_X86_EVENTS;
    static constexpr std::size_t sync_offset = offsetof(::kvm_sync_regs, events);
    /// @}
};
/// `kvm_debugregs`: KVM API 4.33/4.34 KVM_GET/SET_DEBUGREGS; never synced.
template <>
struct block_traits<::vcpu::x86_64::debugregs_block> {
    /// @{
    /// The GET and SET ioctls; not synced through `kvm_run` (sync bit and offset 0).
    static constexpr auto get = ioctls::vcpu::get_debugregs;
    static constexpr auto set = ioctls::vcpu::set_debugregs;
    static constexpr std::uint64_t sync_bit = 0;
    static constexpr std::size_t sync_offset = 0;
    /// @}
};

namespace detail {
/// `struct kvm_msrs` with exactly one entry, in the kernel's C layout.
struct one_msr {
    std::uint32_t nmsrs = 1;
    std::uint32_t pad = 0;
    ::vcpu::x86_64::msr_entry entry{};
};
static_assert(offsetof(one_msr, entry) == c_flex_header_size && offsetof(::kvm_msrs, pad) == 4,
              "kvm: one_msr must match the C layout of struct kvm_msrs");
} // namespace detail

/// MSRs: KVM API 4.18/4.19 KVM_GET_MSRS/KVM_SET_MSRS, one entry per call.
/// Both ioctls return how many entries they processed; anything but 1 means
/// KVM does not know the MSR.
template <>
struct keyed_traits<::vcpu::x86_64::msr_bank> {
    /// Reads MSR `index`.
    template <class Sys>
    [[nodiscard]] static result<std::uint64_t> get(int vcpu_fd, std::uint64_t index) noexcept {
        detail::one_msr m;
        m.entry.index = static_cast<std::uint32_t>(index);
        const int n = Sys::ioctl(vcpu_fd, ioctls::vcpu::get_msrs.code, &m);
        if (n < 0) return last_error(ioctls::vcpu::get_msrs.name).with_hex("msr", index);
        if (n != 1) return error{ioctls::vcpu::get_msrs.name, EINVAL, "MSR not supported"}.with_hex("msr", index);
        return m.entry.data;
    }
    /// Writes MSR `index`.
    template <class Sys>
    [[nodiscard]] static result<void> set(int vcpu_fd, std::uint64_t index,
                                          std::uint64_t value) noexcept {
        detail::one_msr m;
        m.entry.index = static_cast<std::uint32_t>(index);
        m.entry.data = value;
        const int n = Sys::ioctl(vcpu_fd, ioctls::vcpu::set_msrs.code, &m);
        if (n < 0) return last_error(ioctls::vcpu::set_msrs.name).with_hex("msr", index).with_hex("value", value);
        if (n != 1)
            return error{ioctls::vcpu::set_msrs.name, EINVAL, "MSR not supported"}.with_hex("msr", index).with_hex("value", value);
        return ok();
    }
};

namespace detail {
/// `struct kvm_cpuid2` followed by `n` entries, in the kernel's C layout
/// (entries at `c_flex_header_size`), on the C heap: setup path only, and
/// `malloc` so that `-fno-exceptions` builds see ENOMEM rather than a throw.
class cpuid2_buffer {
public:
    explicit cpuid2_buffer(std::size_t n) noexcept
        : n_(n), p_(static_cast<std::byte*>(std::calloc(1, c_flex_header_size + n * sizeof(::kvm_cpuid_entry2)))) {
        if (p_ != nullptr) set_nent(static_cast<std::uint32_t>(n));
    }
    cpuid2_buffer(const cpuid2_buffer&) = delete;
    cpuid2_buffer& operator=(const cpuid2_buffer&) = delete;
    ~cpuid2_buffer() { std::free(p_); }

    [[nodiscard]] bool ok() const noexcept { return p_ != nullptr; }
    /// The ioctl argument: the kernel reads `nent` and then `nent` entries.
    [[nodiscard]] void* arg() const noexcept { return p_; }
    [[nodiscard]] std::uint32_t nent() const noexcept {
        std::uint32_t v = 0;
        std::memcpy(&v, p_, sizeof v);
        return v;
    }
    void set_nent(std::uint32_t v) noexcept { std::memcpy(p_, &v, sizeof v); }
    /// Entry bytes; `i < n` (the allocation holds `n` entries).
    [[nodiscard]] std::byte* entries() const noexcept { return p_ + c_flex_header_size; }
    [[nodiscard]] std::size_t capacity() const noexcept { return n_; }

private:
    std::size_t n_;
    std::byte* p_;
};

/// KVM API 4.46 KVM_GET_SUPPORTED_CPUID into a caller buffer. E2BIG from the
/// kernel (buffer too small) is returned as an error, not retried.
template <class Sys>
[[nodiscard]] result<std::size_t> get_supported_cpuid(int system_fd,
                                                      std::span<::vcpu::x86_64::cpuid_entry> out) noexcept {
    constexpr auto io = ioctls::system::get_supported_cpuid;
    if (out.size() > 0xffffffffu) return error{io.name, E2BIG, "buffer larger than nent allows"};
    cpuid2_buffer b(out.size());
    if (!b.ok()) return error{io.name, ENOMEM, "cannot allocate the kvm_cpuid2 buffer"};
    if (Sys::ioctl(system_fd, io.code, b.arg()) < 0)
        return last_error(io.name, errno == E2BIG ? "buffer has fewer entries than KVM reports" : "")
            .with("entries", out.size());
    const std::size_t n = b.nent() <= out.size() ? b.nent() : out.size();
    // Layouts asserted identical above (x86_64_layout); memcpy avoids aliasing questions.
    if (n != 0) std::memcpy(out.data(), b.entries(), n * sizeof(::kvm_cpuid_entry2));
    return n;
}

/// KVM API "KVM_SET_CPUID2" (x86 vcpu ioctl).
template <class Sys>
[[nodiscard]] result<void> set_cpuid2(int vcpu_fd,
                                      std::span<const ::vcpu::x86_64::cpuid_entry> in) noexcept {
    constexpr auto io = ioctls::vcpu::set_cpuid2;
    if (in.size() > 0xffffffffu) return error{io.name, E2BIG, "too many CPUID entries"};
    cpuid2_buffer b(in.size());
    if (!b.ok()) return error{io.name, ENOMEM, "cannot allocate the kvm_cpuid2 buffer"};
    if (!in.empty()) std::memcpy(b.entries(), in.data(), in.size() * sizeof(::kvm_cpuid_entry2));
    if (Sys::ioctl(vcpu_fd, io.code, b.arg()) < 0) return last_error(io.name).with("entries", in.size());
    return ok();
}
} // namespace detail

} // namespace vcpu::kvm

#endif // __x86_64__
