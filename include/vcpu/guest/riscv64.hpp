#pragma once
/// \file
/// The guest side of guest code on RISC-V 64 (S-mode, VS-mode under KVM, Sv48 paging): what C++
/// functions that run *inside* the guest call.
///
/// - ucalls (`vcpu/guest/ucall.hpp`) travel as **one SBI call** (`ecall`) to a vendor extension
///   (`ucall_extension`, in the SBI spec's vendor range 0x09000000-0x09FFFFFF): KVM forwards the
///   vendor and experimental ranges to user space as `KVM_EXIT_RISCV_SBI` with a0-a5, a6 (FID)
///   and a7 (EID) copied into `kvm_run`, so the host reads six values from the exit itself — no
///   register ioctl, no guest memory, no MMIO address to keep free. `ucall::sync(v...)` of up to
///   six values passes them in a0-a5 with FID `fid_sync + count`; every other ucall fills a
///   `ucall_record` on the guest stack and passes its address in a0 with FID `fid_record`. KVM
///   writes the host's answer (`kvm_run->riscv_sbi.ret`) to a0/a1 and steps over the `ecall`.
/// - exceptions: `stvec` (direct mode) points at `vcpu_guest_riscv64_trap`, which saves x1-x31,
///   sepc, sstatus, scause and stval and calls the handler a test installed with
///   `riscv64::set_handler(scause, fn)`, or reports the trap to the host as
///   `unhandled_exception{vector = cause code (bit 31 set for an interrupt), error_code = scause,
///   pc = sepc, address = stval}`.
/// - helpers: MMIO access, sstatus.SIE on/off, WFI, CSR reads, `spin`.
///
/// Compiled only for RISC-V 64; elsewhere this header declares nothing but the neutral parts and
/// the transport constants the host side needs.

#include <vcpu/config.hpp>
#include <vcpu/guest/calls.hpp>
#include <vcpu/guest/ucall.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace vcpu::guest::riscv64 {

/// The SBI extension id of ucalls (vendor range, RISC-V SBI spec v2.0 §3: "0x09000000-0x09FFFFFF
/// Vendor-Specific Extensions"): "VCP" + 0x50.
inline constexpr std::uint64_t ucall_extension = 0x0956'4350;
/// FID: a0 holds a `ucall_record`'s address.
inline constexpr std::uint64_t fid_record = 0;
/// FID `fid_sync + n`: a `sync` of n <= 6 values in a0..a(n-1).
inline constexpr std::uint64_t fid_sync = 0x10;
/// Values a `sync` carries in registers.
inline constexpr std::size_t max_register_values = 6;

/// The slot of a trap cause in the handler table: exception code, or 32 + interrupt code.
[[nodiscard]] constexpr unsigned handler_index(std::uint64_t scause) noexcept {
    return static_cast<unsigned>(((scause >> 63) != 0 ? 32 : 0) + (scause & 31));
}
/// The `unhandled_exception::vector` of a trap cause: the code, bit 31 set for an interrupt.
[[nodiscard]] constexpr std::uint32_t vector_of(std::uint64_t scause) noexcept {
    return static_cast<std::uint32_t>((scause & 0xff) | ((scause >> 63) != 0 ? 0x8000'0000u : 0));
}

/// The registers the trap entry saved. `x[n]` is register xn (`x[0]` unused, `x[2]` the
/// interrupted sp, read only). A handler may change any other, e.g. `sepc += 4` to step over the
/// faulting instruction; SRET resumes there.
struct exception_frame {
    std::uint64_t x[32];  ///< x0-x31 (`x[0]` unused, `x[2]` read only)
    /// @{
    /// sepc (where SRET returns), sstatus, scause and stval of the trap.
    std::uint64_t sepc, sstatus, scause, stval;
    /// @}
};
static_assert(sizeof(exception_frame) == 36 * 8 && std::is_standard_layout_v<exception_frame>);
static_assert(offsetof(exception_frame, sepc) == 256 && offsetof(exception_frame, stval) == 280);

/// A guest trap handler.
using exception_handler = void (*)(exception_frame&);

} // namespace vcpu::guest::riscv64

#if defined(__riscv) && __riscv_xlen == 64

namespace vcpu::guest {
namespace ucall {

VCPU_GUEST_CODE inline void send(ucall_record& r) noexcept {
    register std::uint64_t a0 asm("a0") = detail::to_value(&r);
    register std::uint64_t a1 asm("a1");
    register std::uint64_t a6 asm("a6") = riscv64::fid_record;
    register std::uint64_t a7 asm("a7") = riscv64::ucall_extension;
    asm volatile("ecall" : "+r"(a0), "=r"(a1) : "r"(a6), "r"(a7) : "memory");
}

/// Hands up to eight integer values to the host (`vcpu::guest::sync`); returns when the host
/// resumes the guest. Up to six travel in a0-a5 (the exit carries them), more in a record.
template <detail::ucall_value... T>
VCPU_GUEST_CODE inline void sync(T... v) noexcept {
    if constexpr (sizeof...(T) <= riscv64::max_register_values) {
        // Every value computed before a register variable is set (a call in between would
        // clobber them); a0/a1 come back holding the SBI return values.
        const std::uint64_t v0 = detail::nth_value<0>(v...), v1 = detail::nth_value<1>(v...),
                            v2 = detail::nth_value<2>(v...), v3 = detail::nth_value<3>(v...),
                            v4 = detail::nth_value<4>(v...), v5 = detail::nth_value<5>(v...);
        register std::uint64_t a0 asm("a0") = v0;
        register std::uint64_t a1 asm("a1") = v1;
        register std::uint64_t a2 asm("a2") = v2;
        register std::uint64_t a3 asm("a3") = v3;
        register std::uint64_t a4 asm("a4") = v4;
        register std::uint64_t a5 asm("a5") = v5;
        register std::uint64_t a6 asm("a6") = riscv64::fid_sync + sizeof...(T);
        register std::uint64_t a7 asm("a7") = riscv64::ucall_extension;
        asm volatile("ecall"
                     : "+r"(a0), "+r"(a1)
                     : "r"(a2), "r"(a3), "r"(a4), "r"(a5), "r"(a6), "r"(a7)
                     : "memory");
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

/// Guest-side RISC-V helpers.
namespace riscv64 {

/// MMIO loads and stores: the same on every architecture (vcpu/guest/calls.hpp).
using ::vcpu::guest::mmio_read;
using ::vcpu::guest::mmio_write;

/// sstatus.SIE on / off (the loader starts guest code with it off).
VCPU_GUEST_CODE inline void enable_irq() noexcept { asm volatile("csrsi sstatus, 2" ::: "memory"); }
VCPU_GUEST_CODE inline void disable_irq() noexcept { asm volatile("csrci sstatus, 2" ::: "memory"); }
/// WFI.
VCPU_GUEST_CODE inline void wfi() noexcept { asm volatile("wfi" ::: "memory"); }
/// Busy-waits about `n` loop iterations; a signal to the vCPU thread interrupts it.
VCPU_GUEST_CODE inline void spin(std::uint64_t n) noexcept {
    for (std::uint64_t i = 0; i < n; ++i) asm volatile("nop" ::: "memory");
}

/// `csrr` as an expression: `VCPU_GUEST_READ_CSR(sstatus)` (GNU statement expression).
#define VCPU_GUEST_READ_CSR(csr)                                                                    \
    __extension__({                                                                                 \
        std::uint64_t vcpu_v_;                                                                      \
        asm volatile("csrr %0, " #csr : "=r"(vcpu_v_));                                            \
        vcpu_v_;                                                                                    \
    })

namespace detail {
/// Per-cause handlers (`handler_index`), in the guest's own copy of this executable's data.
inline constinit exception_handler handlers[64] = {};
} // namespace detail

/// Makes `h` handle traps with cause `scause` (call in guest code; `nullptr` restores the report).
VCPU_GUEST_CODE inline void set_handler(std::uint64_t scause, exception_handler h) noexcept {
    detail::handlers[handler_index(scause)] = h;
}

} // namespace riscv64
} // namespace vcpu::guest

/// The C++ half of the trap entry: calls the installed handler, else reports the trap to the
/// host (and never returns). Called from `vcpu_guest_riscv64_trap` by name: C linkage.
extern "C" [[gnu::used, gnu::visibility("hidden")]] VCPU_GUEST_CODE inline void
vcpu_guest_riscv64_exception(vcpu::guest::riscv64::exception_frame* f) noexcept {
    using namespace vcpu::guest;
    if (const auto h = riscv64::detail::handlers[riscv64::handler_index(f->scause)]; h != nullptr) {
        h(*f);
        return;
    }
    ucall_record r;
    ucall::fill(r, ucall_kind::exception, nullptr, nullptr, 0, riscv64::vector_of(f->scause), f->scause, f->sepc,
                f->stval);
    for (;;) ucall::send(r);
}

namespace vcpu::guest::riscv64::detail {
/// Where a guest entry function returns to (the loader puts its address in ra): `done`.
[[noreturn]] VCPU_GUEST_CODE inline void returned() noexcept { ::vcpu::guest::ucall::done(); }
} // namespace vcpu::guest::riscv64::detail

// The trap entry (stvec, direct mode: 4-byte aligned), in a COMDAT group so that every
// translation unit may carry it and the linker keeps one. Traps from S-mode stay on the code's
// own stack (the RISC-V psABI has no red zone). FP registers are not saved: guest handlers are
// integer code.
asm(R"(
    .pushsection .text.vcpu_guest_riscv64_trap,"axG",%progbits,vcpu_guest_riscv64_trap,comdat
    .p2align 2
    .globl vcpu_guest_riscv64_trap
    .hidden vcpu_guest_riscv64_trap
    .type vcpu_guest_riscv64_trap, %function
vcpu_guest_riscv64_trap:
    addi sp, sp, -288
    sd x1, 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    sd x\n, (\n * 8)(sp)
    .endr
    addi t0, sp, 288
    sd t0, 16(sp)
    csrr t0, sepc
    sd t0, 256(sp)
    csrr t0, sstatus
    sd t0, 264(sp)
    csrr t0, scause
    sd t0, 272(sp)
    csrr t0, stval
    sd t0, 280(sp)
    mv a0, sp
    call vcpu_guest_riscv64_exception
    ld t0, 256(sp)
    csrw sepc, t0
    ld t0, 264(sp)
    csrw sstatus, t0
    ld x1, 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    ld x\n, (\n * 8)(sp)
    .endr
    addi sp, sp, 288
    sret
    .size vcpu_guest_riscv64_trap, . - vcpu_guest_riscv64_trap
    .popsection
)");

extern "C" const char vcpu_guest_riscv64_trap[];

#endif // __riscv && __riscv_xlen == 64
