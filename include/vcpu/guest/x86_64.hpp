#pragma once
/// \file
/// The guest side of guest code on x86-64: what C++ functions that run *inside* the guest call.
///
/// - ucalls to the host (`vcpu/guest/ucall.hpp`): `ucall::sync(v...)`, `ucall::done()`,
///   `ucall::print(fmt, v...)`, `VCPU_GUEST_ASSERT(expr, v...)`; each fills a `ucall_record` on
///   the guest stack and does one `out` of its address to `ucall_port`.
/// - exceptions: 256 IDT entry stubs (`detail::vector_stubs`) that save the registers and call
///   the handler a test installed with `x86_64::set_handler(vector, fn)`, or report the exception
///   to the host as `unhandled_exception`.
/// - helpers: port and MMIO access, `cli`/`sti`/`hlt`, `rdmsr`/`wrmsr`, `read_cr2`, `spin`.
///
/// These functions are ordinary inline C++ compiled with the test; the host loader
/// (`vcpu/guest/x86_64_loader.hpp`) maps the whole executable into the guest at the same virtual
/// addresses, so they run there unchanged. Everything here is `VCPU_GUEST_CODE`: never
/// instrumented by a sanitizer (its runtime is not in the guest). Compiled only for x86-64;
/// elsewhere this header declares nothing but the macros.

#include <vcpu/config.hpp>
#include <vcpu/guest/calls.hpp>
#include <vcpu/guest/ucall.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)

namespace vcpu::guest {

/// The port a ucall's `out` goes to (no PC device decodes it): EAX = the record's address.
inline constexpr std::uint16_t ucall_port = 0x1000;
/// The port of a `sync` with at most six values, which needs no record: EAX = the count, the
/// values in RDI, RSI, R8, R9, R10, RBX (the host reads them from the exit's register state); only
/// the first `count` of those registers are written.
inline constexpr std::uint16_t ucall_sync_port = 0x1001;
/// Values a `sync` carries in registers.
inline constexpr std::size_t max_register_values = 6;


/// Calls to the host, made from guest code.
namespace ucall {

/// Sends `r` to the host: one `out` of its address (the record must lie below 4 GiB, as the
/// guest stack the loader sets up does).
VCPU_GUEST_CODE inline void send(ucall_record& r) noexcept {
    asm volatile("outl %0, %1"
                 :
                 : "a"(static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(&r))), "Nd"(ucall_port)
                 : "memory");
}

/// Hands up to eight integer values to the host (`vcpu::guest::sync`); returns when the host
/// resumes the guest. Up to six travel in registers (no guest memory written: on a host that
/// shadow-pages the guest that is most of a ucall's cost), more in a record.
template <detail::ucall_value... T>
VCPU_GUEST_CODE inline void sync(T... v) noexcept {
    if constexpr (sizeof...(T) <= max_register_values) {
        // No array and no lambda: both would be compiled without VCPU_GUEST_CODE's target and
        // not inlined (a call per value, and a zeroing `rep stos` on the guest stack). Every value
        // is computed before a register variable is set: a call in between (at -O0 nth_value is
        // one) would clobber R8-R10. Only the registers that carry values are written: on a
        // kvm-pvm host, zeroing the unused ones made every exit about 1.4 times as costly.
        constexpr auto n = static_cast<std::uint32_t>(sizeof...(T));
        const std::uint64_t v0 = detail::nth_value<0>(v...), v1 = detail::nth_value<1>(v...),
                            v2 = detail::nth_value<2>(v...), v3 = detail::nth_value<3>(v...),
                            v4 = detail::nth_value<4>(v...), v5 = detail::nth_value<5>(v...);
        if constexpr (n == 0) {
            asm volatile("outl %%eax, %%dx" : : "a"(n), "d"(ucall_sync_port) : "memory");
        } else if constexpr (n == 1) {
            asm volatile("outl %%eax, %%dx" : : "a"(n), "d"(ucall_sync_port), "D"(v0) : "memory");
        } else if constexpr (n == 2) {
            asm volatile("outl %%eax, %%dx" : : "a"(n), "d"(ucall_sync_port), "D"(v0), "S"(v1) : "memory");
        } else if constexpr (n == 3) {
            register std::uint64_t r8 asm("r8") = v2;
            asm volatile("outl %%eax, %%dx"
                         :
                         : "a"(n), "d"(ucall_sync_port), "D"(v0), "S"(v1), "r"(r8)
                         : "memory");
        } else if constexpr (n == 4) {
            register std::uint64_t r8 asm("r8") = v2;
            register std::uint64_t r9 asm("r9") = v3;
            asm volatile("outl %%eax, %%dx"
                         :
                         : "a"(n), "d"(ucall_sync_port), "D"(v0), "S"(v1), "r"(r8), "r"(r9)
                         : "memory");
        } else if constexpr (n == 5) {
            register std::uint64_t r8 asm("r8") = v2;
            register std::uint64_t r9 asm("r9") = v3;
            register std::uint64_t r10 asm("r10") = v4;
            asm volatile("outl %%eax, %%dx"
                         :
                         : "a"(n), "d"(ucall_sync_port), "D"(v0), "S"(v1), "r"(r8), "r"(r9), "r"(r10)
                         : "memory");
        } else {
            register std::uint64_t r8 asm("r8") = v2;
            register std::uint64_t r9 asm("r9") = v3;
            register std::uint64_t r10 asm("r10") = v4;
            register std::uint64_t rbx asm("rbx") = v5;
            asm volatile("outl %%eax, %%dx"
                         :
                         : "a"(n), "d"(ucall_sync_port), "D"(v0), "S"(v1), "r"(r8), "r"(r9), "r"(r10),
                           "r"(rbx)
                         : "memory");
        }
    } else {
        ucall_record r;
        fill(r, ucall_kind::sync, nullptr, nullptr, 0, v...);
        send(r);
    }
}

} // namespace ucall
} // namespace vcpu::guest

#include <vcpu/guest/detail/record_calls.hpp>

namespace vcpu::guest {

/// Guest-side x86-64 helpers.
namespace x86_64 {

/// OUT of a byte to `port`.
VCPU_GUEST_CODE inline void outb(std::uint16_t port, std::uint8_t v) noexcept {
    asm volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
/// OUT of a word to `port`.
VCPU_GUEST_CODE inline void outw(std::uint16_t port, std::uint16_t v) noexcept {
    asm volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
/// OUT of a doubleword to `port`.
VCPU_GUEST_CODE inline void outl(std::uint16_t port, std::uint32_t v) noexcept {
    asm volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
/// IN of a byte from `port`.
VCPU_GUEST_CODE inline std::uint8_t inb(std::uint16_t port) noexcept {
    std::uint8_t v;
    asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
/// IN of a word from `port`.
VCPU_GUEST_CODE inline std::uint16_t inw(std::uint16_t port) noexcept {
    std::uint16_t v;
    asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
/// IN of a doubleword from `port`.
VCPU_GUEST_CODE inline std::uint32_t inl(std::uint16_t port) noexcept {
    std::uint32_t v;
    asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

/// MMIO loads and stores: the same on every architecture (vcpu/guest/calls.hpp).
using ::vcpu::guest::mmio_read;
using ::vcpu::guest::mmio_write;

/// CLI: mask interrupts.
VCPU_GUEST_CODE inline void cli() noexcept { asm volatile("cli" ::: "memory"); }
/// STI: unmask interrupts (after the next instruction).
VCPU_GUEST_CODE inline void sti() noexcept { asm volatile("sti" ::: "memory"); }
/// HLT. With KVM's in-kernel irqchip a halt with interrupts off never returns to the host.
VCPU_GUEST_CODE inline void hlt() noexcept { asm volatile("hlt" ::: "memory"); }
/// PAUSE (a spin-loop hint).
VCPU_GUEST_CODE inline void pause() noexcept { asm volatile("pause" ::: "memory"); }
/// Busy-waits about `n` PAUSE instructions.
VCPU_GUEST_CODE inline void spin(std::uint64_t n) noexcept {
    for (std::uint64_t i = 0; i < n; ++i) pause();
}

/// RDMSR of `msr` (\#GP in the guest when the MSR does not exist).
VCPU_GUEST_CODE inline std::uint64_t rdmsr(std::uint32_t msr) noexcept {
    std::uint32_t lo, hi;
    asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
    return (std::uint64_t{hi} << 32) | lo;
}
/// WRMSR of `v` to `msr`.
VCPU_GUEST_CODE inline void wrmsr(std::uint32_t msr, std::uint64_t v) noexcept {
    asm volatile("wrmsr"
                 :
                 : "c"(msr), "a"(static_cast<std::uint32_t>(v)), "d"(static_cast<std::uint32_t>(v >> 32))
                 : "memory");
}
/// CR2: the linear address of the last page fault.
VCPU_GUEST_CODE inline std::uint64_t read_cr2() noexcept {
    std::uint64_t v;
    asm volatile("mov %%cr2, %0" : "=r"(v));
    return v;
}

/// The registers an exception stub saved, in stack order (lowest address first). A handler may
/// change any of them, e.g. `rip` to skip the faulting instruction; IRETQ restores them.
struct exception_frame {
    /// @{
    /// The general-purpose registers at the time of the exception.
    std::uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    std::uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    /// @}
    std::uint64_t vector;  ///< the exception vector
    std::uint64_t error_code; ///< 0 for vectors without one (SDM Vol. 3A Table 6-1)
    /// @{
    /// The interrupt frame the CPU pushed (IRETQ pops it).
    std::uint64_t rip, cs, rflags, rsp, ss;
    /// @}
};
static_assert(sizeof(exception_frame) == 22 * 8 && std::is_standard_layout_v<exception_frame>);
static_assert(offsetof(exception_frame, vector) == 15 * 8 && offsetof(exception_frame, rip) == 17 * 8);

/// A guest exception handler.
using exception_handler = void (*)(exception_frame&);

namespace detail {
/// Per-vector handlers, in the guest's own copy of this executable's data.
inline constinit exception_handler handlers[256] = {};

/// Stub size: `vector_stubs` + 16 * v is the IDT entry of vector v.
inline constexpr std::size_t stub_bytes = 16;
} // namespace detail

/// Makes `h` handle `vector` (call in guest code; `nullptr` restores the default report).
VCPU_GUEST_CODE inline void set_handler(std::uint8_t vector, exception_handler h) noexcept {
    detail::handlers[vector] = h;
}

} // namespace x86_64
} // namespace vcpu::guest

/// The C++ half of every exception stub: calls the installed handler, else reports the exception
/// to the host (and never returns). Called from `vector_stubs` by name, so it has C linkage.
extern "C" [[gnu::used, gnu::visibility("hidden")]] VCPU_GUEST_CODE inline void
vcpu_guest_x86_64_exception(vcpu::guest::x86_64::exception_frame* f) noexcept {
    using namespace vcpu::guest;
    if (const auto h = x86_64::detail::handlers[f->vector & 0xff]; h != nullptr) {
        h(*f);
        return;
    }
    ucall_record r;
    ucall::fill(r, ucall_kind::exception, nullptr, nullptr, 0, f->vector, f->error_code, f->rip,
                x86_64::read_cr2());
    for (;;) ucall::send(r);
}

/// Called by `detail::returned` when a guest entry function returns: `ucall::done()`.
extern "C" [[gnu::used, gnu::visibility("hidden"), noreturn]] VCPU_GUEST_CODE inline void
vcpu_guest_x86_64_returned() noexcept {
    vcpu::guest::ucall::done();
}

namespace vcpu::guest::x86_64::detail {

/// 256 IDT entry stubs of `stub_bytes` each, then the common path: push a zero error code where
/// the CPU pushes none (SDM Vol. 3A §6.13: vectors 8, 10-14, 17, 21, 29, 30 have one), push the
/// vector, save the 15 GPRs and the x87/SSE state (FXSAVE64), call
/// `vcpu_guest_x86_64_exception(frame)`, restore, IRETQ. Entered on IST1, so an exception never
/// writes into the interrupted code's red zone. The stack is 16-byte aligned at the call: the
/// CPU aligns RSP before pushing the 48-byte frame, and 8 + 15 pushes of 8 bytes keep it so.
[[gnu::naked, gnu::aligned(16)]] inline void vector_stubs() noexcept {
    asm(".balign 16\n"
        ".set .Lvcpu_vector, 0\n"
        ".rept 256\n"
        ".balign 16\n"
        ".if (.Lvcpu_vector == 8) || (.Lvcpu_vector >= 10 && .Lvcpu_vector <= 14) || "
        "(.Lvcpu_vector == 17) || (.Lvcpu_vector == 21) || (.Lvcpu_vector == 29) || (.Lvcpu_vector == 30)\n"
        ".else\n"
        "pushq $0\n"
        ".endif\n"
        "pushq $.Lvcpu_vector\n"
        "jmp .Lvcpu_exception_common\n"
        ".set .Lvcpu_vector, .Lvcpu_vector + 1\n"
        ".endr\n"
        ".Lvcpu_exception_common:\n"
        "pushq %rax\n pushq %rbx\n pushq %rcx\n pushq %rdx\n pushq %rsi\n pushq %rdi\n pushq %rbp\n"
        "pushq %r8\n pushq %r9\n pushq %r10\n pushq %r11\n pushq %r12\n pushq %r13\n pushq %r14\n"
        "pushq %r15\n"
        "movq %rsp, %rdi\n"
        "subq $512, %rsp\n"
        "fxsave64 (%rsp)\n"
        "call vcpu_guest_x86_64_exception\n"
        "fxrstor64 (%rsp)\n"
        "addq $512, %rsp\n"
        "popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %r11\n popq %r10\n popq %r9\n"
        "popq %r8\n popq %rbp\n popq %rdi\n popq %rsi\n popq %rdx\n popq %rcx\n popq %rbx\n"
        "popq %rax\n"
        "addq $16, %rsp\n"
        "iretq\n");
}

/// Where a guest entry function returns to (the loader puts its address under the first stack
/// frame): realigns the stack as a call would and reports `done`.
[[gnu::naked]] inline void returned() noexcept {
    asm("andq $-16, %rsp\n"
        "call vcpu_guest_x86_64_returned\n"
        "ud2\n");
}

} // namespace vcpu::guest::x86_64::detail

#endif // __x86_64__
