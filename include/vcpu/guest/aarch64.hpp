#pragma once
/// \file
/// The guest side of guest code on AArch64 (EL1, MMU on): what C++ functions that run *inside*
/// the guest call.
///
/// - ucalls (`vcpu/guest/ucall.hpp`) travel as **one 64-bit MMIO store** into the ucall page
///   (`ucall_mmio`, no memory slot there: `KVM_EXIT_MMIO`; arm64 KVM sends no unknown HVC to user
///   space before Linux 6.7's SMCCC filter, and an MMIO store needs no register read: the value
///   is in the exit). `ucall::sync(v)` of one value stores `v` itself to `ucall_sync_mmio`
///   (nothing written to guest memory), `sync()` with none stores to `ucall_sync0_mmio`; every
///   other ucall fills a `ucall_record` on the guest stack and stores its address to
///   `ucall_mmio`. Each store is a plain `STR Xt, [Xn]` so that KVM gets a valid ESR_EL2.ISV.
/// - exceptions: a VBAR_EL1 table (`vcpu_guest_aarch64_vectors`, 16 entries of 0x80 bytes, ARM
///   ARM D1.10.2) whose entries save X0-X30, Q0-Q31, ELR/SPSR/ESR/FAR and call the handler a test
///   installed with `aarch64::set_handler(slot, fn)` for that entry, or report the exception to
///   the host as `unhandled_exception{vector = slot, error_code = ESR_EL1, pc = ELR_EL1,
///   address = FAR_EL1}`.
/// - helpers: MMIO access, DAIF mask/unmask, WFI, system-register reads, `spin`.
///
/// Compiled only for AArch64; elsewhere this header declares nothing but the neutral parts
/// (`vcpu/guest/calls.hpp`) and the transport constants the host side needs.

#include <vcpu/config.hpp>
#include <vcpu/guest/calls.hpp>
#include <vcpu/guest/ucall.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace vcpu::guest::aarch64 {

/// The ucall page: guest physical (= virtual) addresses no memory slot covers, mapped as
/// Device-nGnRnE by the loader, below the guest RAM of `aarch64::layout`.
inline constexpr std::uint64_t ucall_mmio = 0x0fff'0000;   ///< store: a record's address
inline constexpr std::uint64_t ucall_sync_mmio = ucall_mmio + 8;   ///< store: `sync(v)`, the value
inline constexpr std::uint64_t ucall_sync0_mmio = ucall_mmio + 16; ///< store: `sync()`, ignored

/// Vector table slots (ARM ARM D1.10.2, Table D1-7): `slot = 4 * source + kind`, source 0
/// current EL with SP_EL0, 1 current EL with SP_ELx, 2 lower EL AArch64, 3 lower EL AArch32; kind
/// 0 synchronous, 1 IRQ, 2 FIQ, 3 SError. Guest code runs at EL1h: its exceptions arrive in
/// slots 4-7.
namespace slot {
/// @{
/// The slots of guest code's own exceptions (current EL, SP_ELx): synchronous, IRQ, FIQ, SError.
inline constexpr unsigned sync = 4, irq = 5, fiq = 6, serror = 7;
/// @}
} // namespace slot

/// ESR_ELx.EC values guest tests meet (ARM ARM D17.2.37).
namespace ec {
/// @{
/// Exception classes: unknown reason, SVC, HVC and trapped MSR/MRS/SYS from AArch64, instruction abort and data abort at the same EL, PC and SP alignment faults, BRK.
inline constexpr std::uint32_t unknown = 0x00, svc64 = 0x15, hvc64 = 0x16, sys64 = 0x18,
                               inst_abort_same = 0x21, pc_align = 0x22, data_abort_same = 0x25,
                               sp_align = 0x26, brk64 = 0x3c;
/// @}
} // namespace ec

/// ESR_ELx.EC of an `unhandled_exception::error_code` (= ESR_EL1).
[[nodiscard]] constexpr std::uint32_t exception_class(std::uint64_t esr) noexcept {
    return static_cast<std::uint32_t>((esr >> 26) & 0x3f);
}

/// The registers an exception entry saved (lowest address first). A handler may change any of
/// them, e.g. `elr += 4` to step over the faulting instruction; ERET restores them.
struct exception_frame {
    std::uint64_t x[31];  ///< X0-X30
    /// @{
    /// ELR_EL1 (where ERET returns), SPSR_EL1, ESR_EL1 and FAR_EL1 of the exception.
    std::uint64_t elr, spsr, esr, far;
    /// @}
    std::uint64_t slot; ///< vector table slot (see `slot`)
};
static_assert(sizeof(exception_frame) == 36 * 8 && std::is_standard_layout_v<exception_frame>);
static_assert(offsetof(exception_frame, elr) == 248 && offsetof(exception_frame, slot) == 280);

/// A guest exception handler.
using exception_handler = void (*)(exception_frame&);

} // namespace vcpu::guest::aarch64

#if defined(__aarch64__)

namespace vcpu::guest {
namespace ucall {

VCPU_GUEST_CODE inline void send(ucall_record& r) noexcept {
    asm volatile("str %x0, [%x1]" : : "r"(&r), "r"(aarch64::ucall_mmio) : "memory");
}

/// Hands up to eight integer values to the host (`vcpu::guest::sync`); returns when the host
/// resumes the guest. None or one value: one store, no guest memory written; more: a record.
template <detail::ucall_value... T>
VCPU_GUEST_CODE inline void sync(T... v) noexcept {
    if constexpr (sizeof...(T) == 0) {
        asm volatile("str xzr, [%x0]" : : "r"(aarch64::ucall_sync0_mmio) : "memory");
    } else if constexpr (sizeof...(T) == 1) {
        asm volatile("str %x0, [%x1]" : : "r"(detail::to_value(v...)), "r"(aarch64::ucall_sync_mmio) : "memory");
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

/// Guest-side AArch64 helpers.
namespace aarch64 {

/// MMIO loads and stores: the same on every architecture (vcpu/guest/calls.hpp).
using ::vcpu::guest::mmio_read;
using ::vcpu::guest::mmio_write;

/// Unmask / mask IRQs (PSTATE.I). The loader starts guest code with DAIF all masked.
VCPU_GUEST_CODE inline void enable_irq() noexcept { asm volatile("msr daifclr, #2" ::: "memory"); }
VCPU_GUEST_CODE inline void disable_irq() noexcept { asm volatile("msr daifset, #2" ::: "memory"); }
/// WFI. With no interrupt source KVM blocks the vCPU in the kernel (it does not exit).
VCPU_GUEST_CODE inline void wfi() noexcept { asm volatile("wfi" ::: "memory"); }
/// Busy-waits about `n` YIELD instructions; a signal to the vCPU thread interrupts it.
VCPU_GUEST_CODE inline void spin(std::uint64_t n) noexcept {
    for (std::uint64_t i = 0; i < n; ++i) asm volatile("yield" ::: "memory");
}

/// `MRS Xt, <reg>` as an expression: `VCPU_GUEST_READ_SYSREG(cntvct_el0)` (GNU statement
/// expression: any register name the assembler knows).
#define VCPU_GUEST_READ_SYSREG(reg)                                                                 \
    __extension__({                                                                                 \
        std::uint64_t vcpu_v_;                                                                      \
        asm volatile("mrs %0, " #reg : "=r"(vcpu_v_));                                             \
        vcpu_v_;                                                                                    \
    })

VCPU_GUEST_CODE inline std::uint64_t read_esr_el1() noexcept {
    std::uint64_t v;
    asm volatile("mrs %0, esr_el1" : "=r"(v));
    return v;
}
VCPU_GUEST_CODE inline std::uint64_t read_tpidr_el1() noexcept {
    std::uint64_t v;
    asm volatile("mrs %0, tpidr_el1" : "=r"(v));
    return v;
}
VCPU_GUEST_CODE inline std::uint64_t read_sctlr_el1() noexcept {
    std::uint64_t v;
    asm volatile("mrs %0, sctlr_el1" : "=r"(v));
    return v;
}
VCPU_GUEST_CODE inline std::uint64_t read_current_el() noexcept {
    std::uint64_t v;
    asm volatile("mrs %0, CurrentEL" : "=r"(v));
    return (v >> 2) & 3;
}

namespace detail {
/// Per-slot handlers, in the guest's own copy of this executable's data.
inline constinit exception_handler handlers[16] = {};
} // namespace detail

/// Makes `h` handle vector table slot `s` (call in guest code; `nullptr` restores the report).
VCPU_GUEST_CODE inline void set_handler(unsigned s, exception_handler h) noexcept {
    detail::handlers[s & 15] = h;
}

} // namespace aarch64
} // namespace vcpu::guest

/// The C++ half of every vector entry: calls the installed handler, else reports the exception
/// to the host (and never returns). Called from the vector table by name: C linkage.
extern "C" [[gnu::used, gnu::visibility("hidden")]] VCPU_GUEST_CODE inline void
vcpu_guest_aarch64_exception(vcpu::guest::aarch64::exception_frame* f) noexcept {
    using namespace vcpu::guest;
    if (const auto h = aarch64::detail::handlers[f->slot & 15]; h != nullptr) {
        h(*f);
        return;
    }
    ucall_record r;
    ucall::fill(r, ucall_kind::exception, nullptr, nullptr, 0, f->slot, f->esr, f->elr, f->far);
    for (;;) ucall::send(r);
}

namespace vcpu::guest::aarch64::detail {
/// Where a guest entry function returns to (the loader puts its address in X30): `done`.
[[noreturn]] VCPU_GUEST_CODE inline void returned() noexcept { ::vcpu::guest::ucall::done(); }
} // namespace vcpu::guest::aarch64::detail

// The vector table (2 KiB aligned, VBAR_EL1 requirement), in a COMDAT group so that every
// translation unit may carry it and the linker keeps one. Each 0x80-byte entry makes room for
// the frame (the 288-byte `exception_frame`, then 512 bytes for Q0-Q31: compiled handlers may
// use SIMD registers), saves X0/X1, puts its slot number in X1 and branches to the common path,
// which saves the rest, calls
// `vcpu_guest_aarch64_exception(frame)`, restores (ELR/SPSR from the frame, so a handler can
// move the return point) and ERETs. Exceptions from EL1h stay on SP_EL1, the code's own stack
// (AAPCS64 has no red zone).
asm(R"(
    .pushsection .text.vcpu_guest_aarch64_vectors,"axG",%progbits,vcpu_guest_aarch64_vectors,comdat
    .p2align 11
    .globl vcpu_guest_aarch64_vectors
    .hidden vcpu_guest_aarch64_vectors
    .type vcpu_guest_aarch64_vectors, %function
vcpu_guest_aarch64_vectors:
    .set .Lvcpu_slot, 0
    .rept 16
    .p2align 7
    sub sp, sp, #(288 + 512)
    stp x0, x1, [sp]
    mov x1, #.Lvcpu_slot
    b .Lvcpu_aarch64_common
    .set .Lvcpu_slot, .Lvcpu_slot + 1
    .endr
.Lvcpu_aarch64_common:
    stp q0, q1, [sp, #288]
    stp q2, q3, [sp, #320]
    stp q4, q5, [sp, #352]
    stp q6, q7, [sp, #384]
    stp q8, q9, [sp, #416]
    stp q10, q11, [sp, #448]
    stp q12, q13, [sp, #480]
    stp q14, q15, [sp, #512]
    stp q16, q17, [sp, #544]
    stp q18, q19, [sp, #576]
    stp q20, q21, [sp, #608]
    stp q22, q23, [sp, #640]
    stp q24, q25, [sp, #672]
    stp q26, q27, [sp, #704]
    stp q28, q29, [sp, #736]
    stp q30, q31, [sp, #768]
    mov x0, sp
    str x1, [x0, #280]
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    mrs x2, elr_el1
    mrs x3, spsr_el1
    stp x30, x2, [x0, #240]
    mrs x4, esr_el1
    mrs x5, far_el1
    stp x3, x4, [x0, #256]
    str x5, [x0, #272]
    bl vcpu_guest_aarch64_exception
    mov x0, sp
    ldp x30, x2, [x0, #240]
    ldr x3, [x0, #256]
    msr elr_el1, x2
    msr spsr_el1, x3
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldp q0, q1, [sp, #288]
    ldp q2, q3, [sp, #320]
    ldp q4, q5, [sp, #352]
    ldp q6, q7, [sp, #384]
    ldp q8, q9, [sp, #416]
    ldp q10, q11, [sp, #448]
    ldp q12, q13, [sp, #480]
    ldp q14, q15, [sp, #512]
    ldp q16, q17, [sp, #544]
    ldp q18, q19, [sp, #576]
    ldp q20, q21, [sp, #608]
    ldp q22, q23, [sp, #640]
    ldp q24, q25, [sp, #672]
    ldp q26, q27, [sp, #704]
    ldp q28, q29, [sp, #736]
    ldp q30, q31, [sp, #768]
    ldp x0, x1, [sp]
    add sp, sp, #(288 + 512)
    eret
    .size vcpu_guest_aarch64_vectors, . - vcpu_guest_aarch64_vectors
    .popsection
)");

extern "C" const char vcpu_guest_aarch64_vectors[];

#endif // __aarch64__
