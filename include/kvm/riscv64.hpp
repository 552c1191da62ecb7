#pragma once
/// \file
/// RISC-V 64 host glue for the KVM HAL.
///
/// - On a RISC-V host (`__riscv`): proof that every constant and ONE_REG id in
///   include/arch/riscv64/ equals the one the kernel's
///   `arch/riscv/include/uapi/asm/kvm.h` defines (the arch's headers restate
///   them so they compile on every host).
/// - Everywhere: `enable_sbi_extension`, the `KVM_REG_RISCV_SBI_EXT` switch a
///   VMM uses to receive an SBI extension that KVM leaves off by default (the
///   debug console, DBCN) as `KVM_EXIT_RISCV_SBI` exits; the typed ISA and SBI extension
///   switches `isa_extension_enabled` / `set_isa_extension` and `sbi_extension_enabled` /
///   `set_sbi_extension`, with errors that say why KVM refused (before the first run only).
///
/// KVM/riscv moves no register blocks (`struct kvm_regs` is empty there), so
/// no `block_traits` are needed: `arch::riscv64` declares `uses_one_reg`.

#include <arch/riscv64/abi.hpp>
#include <arch/riscv64/registers.hpp>
#include <kvm/exits_riscv64.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>

#if defined(__riscv)
#include <asm/kvm.h>
#include <linux/kvm.h>

namespace vcpu::kvm::riscv64_layout {
namespace r = ::vcpu::riscv64;
namespace a = ::vcpu::riscv64::abi;

static_assert(a::reg_riscv == KVM_REG_RISCV);
static_assert(a::reg_size_u64 == KVM_REG_SIZE_U64 && a::reg_size_u32 == KVM_REG_SIZE_U32);
static_assert(a::type_bits(a::reg_type::config) == KVM_REG_RISCV_CONFIG);
static_assert(a::type_bits(a::reg_type::core) == KVM_REG_RISCV_CORE);
static_assert(a::type_bits(a::reg_type::csr) == KVM_REG_RISCV_CSR);
static_assert(a::type_bits(a::reg_type::timer) == KVM_REG_RISCV_TIMER);
static_assert(a::type_bits(a::reg_type::fp_f) == KVM_REG_RISCV_FP_F);
static_assert(a::type_bits(a::reg_type::fp_d) == KVM_REG_RISCV_FP_D);
static_assert(a::type_bits(a::reg_type::isa_ext) == KVM_REG_RISCV_ISA_EXT);
static_assert(a::mode_s == KVM_RISCV_MODE_S && a::mode_u == KVM_RISCV_MODE_U);
static_assert(a::timer_state_off == KVM_RISCV_TIMER_STATE_OFF &&
              a::timer_state_on == KVM_RISCV_TIMER_STATE_ON);
static_assert(sizeof(::kvm_riscv_core) == 33 * sizeof(unsigned long),
              "kvm: struct kvm_riscv_core is 32 registers (pc + x1..x31) and mode");
static_assert(sizeof(unsigned long) == 8, "riscv64: LP64");

#define VCPU_KVM_RV_CORE(reg, field)                                                               \
    static_assert(r::reg.id == (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE |           \
                                KVM_REG_RISCV_CORE_REG(field)),                                    \
                  "kvm: riscv64::" #reg " id differs from <asm/kvm.h>")
VCPU_KVM_RV_CORE(pc, regs.pc);
VCPU_KVM_RV_CORE(ra, regs.ra);
VCPU_KVM_RV_CORE(sp, regs.sp);
VCPU_KVM_RV_CORE(gp, regs.gp);
VCPU_KVM_RV_CORE(tp, regs.tp);
VCPU_KVM_RV_CORE(t0, regs.t0);
VCPU_KVM_RV_CORE(t1, regs.t1);
VCPU_KVM_RV_CORE(t2, regs.t2);
VCPU_KVM_RV_CORE(s0, regs.s0);
VCPU_KVM_RV_CORE(s1, regs.s1);
VCPU_KVM_RV_CORE(a0, regs.a0);
VCPU_KVM_RV_CORE(a1, regs.a1);
VCPU_KVM_RV_CORE(a2, regs.a2);
VCPU_KVM_RV_CORE(a3, regs.a3);
VCPU_KVM_RV_CORE(a4, regs.a4);
VCPU_KVM_RV_CORE(a5, regs.a5);
VCPU_KVM_RV_CORE(a6, regs.a6);
VCPU_KVM_RV_CORE(a7, regs.a7);
VCPU_KVM_RV_CORE(s2, regs.s2);
VCPU_KVM_RV_CORE(s3, regs.s3);
VCPU_KVM_RV_CORE(s4, regs.s4);
VCPU_KVM_RV_CORE(s5, regs.s5);
VCPU_KVM_RV_CORE(s6, regs.s6);
VCPU_KVM_RV_CORE(s7, regs.s7);
VCPU_KVM_RV_CORE(s8, regs.s8);
VCPU_KVM_RV_CORE(s9, regs.s9);
VCPU_KVM_RV_CORE(s10, regs.s10);
VCPU_KVM_RV_CORE(s11, regs.s11);
VCPU_KVM_RV_CORE(t3, regs.t3);
VCPU_KVM_RV_CORE(t4, regs.t4);
VCPU_KVM_RV_CORE(t5, regs.t5);
VCPU_KVM_RV_CORE(t6, regs.t6);
VCPU_KVM_RV_CORE(mode, mode);
#undef VCPU_KVM_RV_CORE

#define VCPU_KVM_RV_REG(reg, cls, idx)                                                             \
    static_assert(r::reg.id == (KVM_REG_RISCV | KVM_REG_SIZE_U64 | cls | idx),                     \
                  "kvm: riscv64::" #reg " id differs from <asm/kvm.h>")
VCPU_KVM_RV_REG(sstatus, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(sstatus));
VCPU_KVM_RV_REG(sie, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(sie));
VCPU_KVM_RV_REG(stvec, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(stvec));
VCPU_KVM_RV_REG(sscratch, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(sscratch));
VCPU_KVM_RV_REG(sepc, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(sepc));
VCPU_KVM_RV_REG(scause, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(scause));
VCPU_KVM_RV_REG(stval, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(stval));
VCPU_KVM_RV_REG(sip, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(sip));
VCPU_KVM_RV_REG(satp, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(satp));
VCPU_KVM_RV_REG(scounteren, KVM_REG_RISCV_CSR, KVM_REG_RISCV_CSR_REG(scounteren));
VCPU_KVM_RV_REG(isa, KVM_REG_RISCV_CONFIG, KVM_REG_RISCV_CONFIG_REG(isa));
VCPU_KVM_RV_REG(zicbom_block_size, KVM_REG_RISCV_CONFIG, KVM_REG_RISCV_CONFIG_REG(zicbom_block_size));
VCPU_KVM_RV_REG(timer_frequency, KVM_REG_RISCV_TIMER, KVM_REG_RISCV_TIMER_REG(frequency));
VCPU_KVM_RV_REG(timer_time, KVM_REG_RISCV_TIMER, KVM_REG_RISCV_TIMER_REG(time));
VCPU_KVM_RV_REG(timer_compare, KVM_REG_RISCV_TIMER, KVM_REG_RISCV_TIMER_REG(compare));
VCPU_KVM_RV_REG(timer_state, KVM_REG_RISCV_TIMER, KVM_REG_RISCV_TIMER_REG(state));
#undef VCPU_KVM_RV_REG

// Fields that newer kernels added: checked when the toolchain's header has them.
#ifdef KVM_REG_RISCV_SBI_EXT
static_assert(a::type_bits(a::reg_type::sbi_ext) == KVM_REG_RISCV_SBI_EXT);
static_assert(a::sbi_ext_reg(a::kvm_sbi_ext::dbcn) ==
              (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_SBI_EXT |
               KVM_REG_RISCV_SBI_SINGLE | KVM_RISCV_SBI_EXT_DBCN));
static_assert(static_cast<unsigned>(a::kvm_sbi_ext::srst) == KVM_RISCV_SBI_EXT_SRST &&
              static_cast<unsigned>(a::kvm_sbi_ext::hsm) == KVM_RISCV_SBI_EXT_HSM &&
              static_cast<unsigned>(a::kvm_sbi_ext::vendor) == KVM_RISCV_SBI_EXT_VENDOR);
#endif

static_assert(a::interrupt_set == KVM_INTERRUPT_SET && a::interrupt_unset == KVM_INTERRUPT_UNSET);
// The ISA extension ids a 6.1 UAPI header has (the cross toolchain's); the later ones
// (zicboz...zicond) follow the 6.12 header's enum order and are read with ENOENT tolerated.
static_assert(static_cast<unsigned>(a::kvm_isa_ext::a) == KVM_RISCV_ISA_EXT_A &&
              static_cast<unsigned>(a::kvm_isa_ext::c) == KVM_RISCV_ISA_EXT_C &&
              static_cast<unsigned>(a::kvm_isa_ext::h) == KVM_RISCV_ISA_EXT_H &&
              static_cast<unsigned>(a::kvm_isa_ext::m) == KVM_RISCV_ISA_EXT_M &&
              static_cast<unsigned>(a::kvm_isa_ext::svpbmt) == KVM_RISCV_ISA_EXT_SVPBMT &&
              static_cast<unsigned>(a::kvm_isa_ext::sstc) == KVM_RISCV_ISA_EXT_SSTC &&
              static_cast<unsigned>(a::kvm_isa_ext::svinval) == KVM_RISCV_ISA_EXT_SVINVAL &&
              static_cast<unsigned>(a::kvm_isa_ext::zihintpause) == KVM_RISCV_ISA_EXT_ZIHINTPAUSE &&
              static_cast<unsigned>(a::kvm_isa_ext::zicbom) == KVM_RISCV_ISA_EXT_ZICBOM);
static_assert(a::isa_ext_reg(a::kvm_isa_ext::sstc) ==
              (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_ISA_EXT | KVM_RISCV_ISA_EXT_SSTC));

// kvm_run's RISC-V exit payloads are `unsigned long`, which answer_slot stores
// through with their own type.
static_assert(sizeof(::kvm_run{}.riscv_sbi.ret[0]) == 8 && sizeof(::kvm_run{}.riscv_csr.ret_value) == 8);

} // namespace vcpu::kvm::riscv64_layout
#endif // __riscv

namespace vcpu::kvm {

/// KVM API 4.16 KVM_INTERRUPT on RISC-V: raises (`KVM_INTERRUPT_SET`) or lowers
/// (`KVM_INTERRUPT_UNSET`) the virtual supervisor external interrupt of the vCPU with fd
/// `vcpu_fd` — how a userspace interrupt controller (e.g. `vcpu::devices::plic`) drives a
/// hart. An asynchronous vCPU ioctl on riscv (no vCPU lock): callable from any thread while
/// the vCPU runs. Errors: "KVM_INTERRUPT" with errno.
template <class Sys = linux_sys>
[[nodiscard]] result<void> riscv_external_interrupt(int vcpu_fd, bool level) noexcept {
    constexpr auto io = ioctls::vcpu::interrupt;
    ::kvm_interrupt i{};
    i.irq = level ? riscv64::abi::interrupt_set : riscv64::abi::interrupt_unset;
    if (Sys::ioctl(vcpu_fd, io.code, &i) < 0) return last_error(io.name);
    return ok();
}

/// Turns KVM's implementation of SBI extension `e` on or off for one vCPU
/// (`KVM_SET_ONE_REG` of `KVM_REG_RISCV_SBI_EXT | KVM_REG_RISCV_SBI_SINGLE | e`,
/// Linux >= 6.6; KVM API 4.68). Must precede the vCPU's first `KVM_RUN`.
/// `cpu` is a `basic_vcpu<arch::riscv64, Hal>` (any HAL that moves ONE_REG).
/// Errors: the kernel's (`ENOENT` when it does not know the extension).
template <class Cpu>
[[nodiscard]] result<void> enable_sbi_extension(Cpu& cpu, riscv64::abi::kvm_sbi_ext e,
                                                bool on = true) noexcept {
    return cpu.set(riscv64::sbi_extension_enable(e), on ? 1 : 0);
}

namespace detail {
/// The error of a refused ISA/SBI extension switch, saying why KVM refuses such writes.
[[nodiscard]] inline error extension_refused(const error& e, const char* what, std::uint64_t id, bool on,
                                             unsigned vcpu_id) noexcept {
    const char* why = e.code == EBUSY    ? "extensions can only change before the vCPU's first KVM_RUN"
                      : e.code == ENOENT ? "the kernel does not know this extension"
                      : e.code == EINVAL ? "the host cannot give (or take away) this extension"
                                         : what;
    return error{e.op, e.code, why}.with_hex("reg", id).with("on", on ? 1 : 0).with("vcpu_id", vcpu_id);
}
} // namespace detail

/// True when the vCPU has ISA extension `e` (`KVM_GET_ONE_REG` of `KVM_REG_RISCV_ISA_EXT | e`,
/// KVM API 4.68). Errors: "KVM_GET_ONE_REG" (ENOENT: the kernel does not know `e`).
template <class Cpu>
[[nodiscard]] result<bool> isa_extension_enabled(Cpu& cpu, riscv64::abi::kvm_isa_ext e) noexcept {
    auto r = cpu.get(riscv64::isa_extension(e));
    if (!r) return r.err();
    return *r != 0;
}
/// Gives the vCPU ISA extension `e` or takes it away (`KVM_SET_ONE_REG` of
/// `KVM_REG_RISCV_ISA_EXT | e`); call it before the first `KVM_RUN` (KVM sizes the vCPU's
/// registers by it: without F and D, no FP registers are listed; KVM documents EBUSY after the
/// first run, yet Linux 6.12 in the emulated machine accepted a switch then, measured). Errors:
/// "KVM_SET_ONE_REG" with EBUSY (after the first run), ENOENT (unknown to the kernel) or EINVAL
/// (the host cannot hide or give it: Sstc, measured), saying so.
template <class Cpu>
[[nodiscard]] result<void> set_isa_extension(Cpu& cpu, riscv64::abi::kvm_isa_ext e, bool on) noexcept {
    if (auto r = cpu.set(riscv64::isa_extension(e), on ? 1 : 0); !r)
        return detail::extension_refused(r.err(), "ISA extension refused", riscv64::abi::isa_ext_reg(e), on,
                                         cpu.hal().id());
    return ok();
}
/// True when KVM implements SBI extension `e` for the vCPU (`KVM_REG_RISCV_SBI_EXT`, Linux >= 6.6).
template <class Cpu>
[[nodiscard]] result<bool> sbi_extension_enabled(Cpu& cpu, riscv64::abi::kvm_sbi_ext e) noexcept {
    auto r = cpu.get(riscv64::sbi_extension_enable(e));
    if (!r) return r.err();
    return *r != 0;
}
/// Turns KVM's SBI extension `e` on or off for the vCPU, normally before its first `KVM_RUN` (a
/// disabled extension answers the guest SBI_ERR_NOT_SUPPORTED; the vendor and DBCN ones reach user
/// space when on; Linux 6.12 accepted a switch after the first run, measured). Errors as
/// `set_isa_extension`.
template <class Cpu>
[[nodiscard]] result<void> set_sbi_extension(Cpu& cpu, riscv64::abi::kvm_sbi_ext e, bool on) noexcept {
    if (auto r = cpu.set(riscv64::sbi_extension_enable(e), on ? 1 : 0); !r)
        return detail::extension_refused(r.err(), "SBI extension refused", riscv64::abi::sbi_ext_reg(e), on,
                                         cpu.hal().id());
    return ok();
}

} // namespace vcpu::kvm
