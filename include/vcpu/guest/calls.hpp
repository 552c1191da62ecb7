#pragma once
/// \file
/// The architecture-neutral guest side of ucalls: what guest code on every architecture calls.
///
/// - `VCPU_GUEST_CODE` (mark every function that runs in the guest) and `VCPU_GUEST_ASSERT`;
/// - `ucall::fill` (a `ucall_record`, field by field); `ucall::done()`, `ucall::print(fmt, v...)`
///   and `ucall::assert_failed(...)` (`vcpu/guest/detail/record_calls.hpp`) are built on
///   `ucall::send(record)`, which each architecture's guest header defines with its transport (x86-64: `out` to a port, `vcpu/guest/x86_64.hpp`;
///   AArch64: an MMIO store, `vcpu/guest/aarch64.hpp`; RISC-V: an SBI call,
///   `vcpu/guest/riscv64.hpp`). `ucall::sync` is per architecture too (its fast path uses
///   registers).
///
/// `fill` and the value conversions also compile on the host, for tests that script ucall records
/// on the mock HAL.

#include <vcpu/config.hpp>
#include <vcpu/guest/ucall.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

/// Marks a function that runs in the guest. Everywhere: no sanitizer instrumentation (the ASan,
/// TSan and UBSan runtimes exist only in the host process). On x86-64 also general-purpose
/// registers only (no SSE/MMX, so the compiler never vectorises guest code: SSE needs CPUID,
/// CR4.OSFXSR and XCR0 support that not every KVM host gives a guest — on a kvm-pvm host `pxor`
/// in the guest fails KVM's emulator), so such a function cannot use floating point there. On
/// AArch64 and RISC-V the loaders turn the FP unit on (CPACR_EL1.FPEN, sstatus.FS), so compiled
/// SIMD/FP code runs. Put it on every function you run in the guest.
#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#define VCPU_GUEST_CODE __attribute__((target("no-sse,no-sse2,no-mmx"), no_sanitize("address", "thread", "undefined")))
#elif defined(__clang__) || defined(__GNUC__)
#define VCPU_GUEST_CODE __attribute__((no_sanitize("address", "thread", "undefined")))
#else
#define VCPU_GUEST_CODE
#endif

/// In guest code: when `expr` is false, reports the expression, this file and line and up to
/// eight integer values to the host (`vcpu::guest::assert_fail`) and never returns.
#define VCPU_GUEST_ASSERT(expr, ...)                                                                \
    do {                                                                                            \
        if (!(expr)) [[unlikely]]                                                                   \
            ::vcpu::guest::ucall::assert_failed(#expr, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__); \
    } while (0)

namespace vcpu::guest {

namespace detail {
/// A ucall value: integers (sign-extended), enums, pointers (their address), bool.
template <class T>
VCPU_GUEST_CODE constexpr std::uint64_t to_value(T v) noexcept {
    if constexpr (std::is_pointer_v<T> || std::is_null_pointer_v<T>)
        return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(v));
    else if constexpr (std::is_enum_v<T>)
        return to_value(static_cast<std::underlying_type_t<T>>(v));
    else if constexpr (std::is_signed_v<T>)
        return static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
    else
        return static_cast<std::uint64_t>(v);
}
/// Value `I` of `v...` as a ucall value, 0 past the end.
template <std::size_t I, class... T>
VCPU_GUEST_CODE constexpr std::uint64_t nth_value(T... v) noexcept {
    std::uint64_t r = 0;
    std::size_t i = 0;
    ((r = (i++ == I ? to_value(v) : r)), ...);
    (void)i;
    return r;
}
template <class T>
concept ucall_value = std::is_integral_v<T> || std::is_enum_v<T> || std::is_pointer_v<T> ||
                      std::is_null_pointer_v<T>;
} // namespace detail

/// Calls to the host, made from guest code.
namespace ucall {

/// A record of kind `k`. Filled field by field, never by aggregate initialisation: a compiler may
/// turn that into a call to the C library's `memset`, which is not mapped in the guest. Values
/// past `count` are left as they are (the host reads only `count`).
template <class... T>
VCPU_GUEST_CODE inline void fill(ucall_record& r, ucall_kind k, const char* text, const char* file,
                                 std::uint64_t line, T... v) noexcept {
    static_assert(sizeof...(T) <= max_values, "vcpu::guest::ucall: at most eight values");
    r.magic = ucall_magic;
    r.kind = static_cast<std::uint16_t>(k);
    r.count = static_cast<std::uint16_t>(sizeof...(T));
    r.text = detail::to_value(text);
    r.file = detail::to_value(file);
    r.line = line;
    std::size_t i = 0;
    ((r.values[i++] = detail::to_value(v)), ...);
    (void)i;
}

} // namespace ucall
} // namespace vcpu::guest

namespace vcpu::guest {

/// A `T`-sized load from (guest virtual = physical in the identity map) `addr`, as one load
/// instruction with a plain base register (on AArch64 the data abort then has a valid syndrome,
/// ISV = 1); an address no memory slot backs is an MMIO exit on the host. The same on every
/// architecture; each arch's guest namespace re-exports it.
template <class T>
VCPU_GUEST_CODE inline T mmio_read(std::uint64_t addr) noexcept {
    static_assert(std::is_integral_v<T> && sizeof(T) <= 8);
    return *reinterpret_cast<const volatile T*>(static_cast<std::uintptr_t>(addr));
}
/// A `T`-sized store to `addr` (see `mmio_read`).
template <class T>
VCPU_GUEST_CODE inline void mmio_write(std::uint64_t addr, T v) noexcept {
    static_assert(std::is_integral_v<T> && sizeof(T) <= 8);
    *reinterpret_cast<volatile T*>(static_cast<std::uintptr_t>(addr)) = v;
}

} // namespace vcpu::guest
