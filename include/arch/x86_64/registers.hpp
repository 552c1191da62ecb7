#pragma once
/// \file
/// The x86-64 register file: descriptors for every register KVM exposes and
/// the architectural bit fields VMMs set, each citing the Intel SDM.

#include <arch/x86_64/abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/registers.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>

namespace vcpu::x86_64 {

/// A register of `kvm_regs` (the general-purpose block, `regs_block`).
template <class T = std::uint64_t, access A = access::rw>
using gp = block_reg<regs_block, T, A>;
/// A register of `kvm_sregs` (segments, descriptor tables, control registers: `sregs_block`).
template <class T = std::uint64_t, access A = access::rw>
using sys = block_reg<sregs_block, T, A>;

// --- General-purpose registers, RIP, RFLAGS (kvm_regs) ----------------------
/// @{
/// General-purpose registers, RIP and RFLAGS, as `kvm_regs` holds them (KVM_GET_REGS/KVM_SET_REGS).
inline constexpr gp<> rax{"rax", offsetof(regs_layout, rax)};
inline constexpr gp<> rbx{"rbx", offsetof(regs_layout, rbx)};
inline constexpr gp<> rcx{"rcx", offsetof(regs_layout, rcx)};
inline constexpr gp<> rdx{"rdx", offsetof(regs_layout, rdx)};
inline constexpr gp<> rsi{"rsi", offsetof(regs_layout, rsi)};
inline constexpr gp<> rdi{"rdi", offsetof(regs_layout, rdi)};
inline constexpr gp<> rsp{"rsp", offsetof(regs_layout, rsp)};
inline constexpr gp<> rbp{"rbp", offsetof(regs_layout, rbp)};
inline constexpr gp<> r8{"r8", offsetof(regs_layout, r8)};
inline constexpr gp<> r9{"r9", offsetof(regs_layout, r9)};
inline constexpr gp<> r10{"r10", offsetof(regs_layout, r10)};
inline constexpr gp<> r11{"r11", offsetof(regs_layout, r11)};
inline constexpr gp<> r12{"r12", offsetof(regs_layout, r12)};
inline constexpr gp<> r13{"r13", offsetof(regs_layout, r13)};
inline constexpr gp<> r14{"r14", offsetof(regs_layout, r14)};
inline constexpr gp<> r15{"r15", offsetof(regs_layout, r15)};
inline constexpr gp<> rip{"rip", offsetof(regs_layout, rip)};
inline constexpr gp<> rflags{"rflags", offsetof(regs_layout, rflags)};
/// @}

/// GPRs in instruction-encoding order (SDM Vol. 2A §2.1.5, Table 2-2 and
/// REX.R/B): 0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI,
/// 7 = RDI, 8-15 = R8-R15. Decoders index with ModRM.reg/rm.
inline constexpr std::array<gp<>, 16> gprs_by_encoding{
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15};

// --- Segment and descriptor-table registers, control registers (kvm_sregs) ---
/// @{
/// Segment registers (selector, base, limit and attributes as `kvm_segment`).
inline constexpr sys<segment> cs{"cs", offsetof(sregs_layout, cs)};
inline constexpr sys<segment> ds{"ds", offsetof(sregs_layout, ds)};
inline constexpr sys<segment> es{"es", offsetof(sregs_layout, es)};
inline constexpr sys<segment> fs{"fs", offsetof(sregs_layout, fs)};
inline constexpr sys<segment> gs{"gs", offsetof(sregs_layout, gs)};
inline constexpr sys<segment> ss{"ss", offsetof(sregs_layout, ss)};
inline constexpr sys<segment> tr{"tr", offsetof(sregs_layout, tr)};
inline constexpr sys<segment> ldt{"ldt", offsetof(sregs_layout, ldt)};
/// @}
/// @{
/// GDTR and IDTR (base and limit).
inline constexpr sys<dtable> gdt{"gdt", offsetof(sregs_layout, gdt)};
inline constexpr sys<dtable> idt{"idt", offsetof(sregs_layout, idt)};
/// @}
/// @{
/// CR0, CR2, CR3, CR4, CR8 (TPR), EFER and the APIC base, as `kvm_sregs` holds them.
inline constexpr sys<> cr0{"cr0", offsetof(sregs_layout, cr0)};
inline constexpr sys<> cr2{"cr2", offsetof(sregs_layout, cr2)};
inline constexpr sys<> cr3{"cr3", offsetof(sregs_layout, cr3)};
inline constexpr sys<> cr4{"cr4", offsetof(sregs_layout, cr4)};
inline constexpr sys<> cr8{"cr8", offsetof(sregs_layout, cr8)};
inline constexpr sys<> efer{"efer", offsetof(sregs_layout, efer)};
inline constexpr sys<> apic_base{"apic_base", offsetof(sregs_layout, apic_base)};
/// @}

// --- Debug registers (kvm_debugregs) -----------------------------------------
/// @{
/// DR6 (debug status) and DR7 (debug control), from `kvm_debugregs`.
inline constexpr block_reg<debugregs_block, std::uint64_t> dr6{"dr6", offsetof(debugregs_layout, dr6)};
inline constexpr block_reg<debugregs_block, std::uint64_t> dr7{"dr7", offsetof(debugregs_layout, dr7)};
/// @}

// --- Model-specific registers (SDM Vol. 4, Table 2-2 "IA-32 Architectural MSRs")
/// Any MSR by index.
[[nodiscard]] constexpr keyed_reg<msr_bank> msr(std::uint32_t index) noexcept {
    return {"msr", index};
}
/// @{
/// Architectural MSRs (SDM Vol. 4, Table 2-2), by SDM name; the key is the MSR index.
inline constexpr keyed_reg<msr_bank> ia32_tsc{"IA32_TIME_STAMP_COUNTER", 0x10};
inline constexpr keyed_reg<msr_bank> ia32_apic_base{"IA32_APIC_BASE", 0x1b};
inline constexpr keyed_reg<msr_bank> ia32_sysenter_cs{"IA32_SYSENTER_CS", 0x174};
inline constexpr keyed_reg<msr_bank> ia32_sysenter_esp{"IA32_SYSENTER_ESP", 0x175};
inline constexpr keyed_reg<msr_bank> ia32_sysenter_eip{"IA32_SYSENTER_EIP", 0x176};
inline constexpr keyed_reg<msr_bank> ia32_misc_enable{"IA32_MISC_ENABLE", 0x1a0};
inline constexpr keyed_reg<msr_bank> ia32_pat{"IA32_PAT", 0x277};
inline constexpr keyed_reg<msr_bank> ia32_efer{"IA32_EFER", 0xc0000080};
inline constexpr keyed_reg<msr_bank> ia32_star{"IA32_STAR", 0xc0000081};
inline constexpr keyed_reg<msr_bank> ia32_lstar{"IA32_LSTAR", 0xc0000082};
inline constexpr keyed_reg<msr_bank> ia32_cstar{"IA32_CSTAR", 0xc0000083};
inline constexpr keyed_reg<msr_bank> ia32_fmask{"IA32_FMASK", 0xc0000084};
inline constexpr keyed_reg<msr_bank> ia32_fs_base{"IA32_FS_BASE", 0xc0000100};
inline constexpr keyed_reg<msr_bank> ia32_gs_base{"IA32_GS_BASE", 0xc0000101};
inline constexpr keyed_reg<msr_bank> ia32_kernel_gs_base{"IA32_KERNEL_GS_BASE", 0xc0000102};
inline constexpr keyed_reg<msr_bank> ia32_tsc_aux{"IA32_TSC_AUX", 0xc0000103};
/// @}

/// Every statically named register, for dumps and uniqueness checks.
inline constexpr auto all_registers = std::make_tuple(
    rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags,
    cs, ds, es, fs, gs, ss, tr, ldt, gdt, idt, cr0, cr2, cr3, cr4, cr8, efer, apic_base, dr6, dr7,
    ia32_tsc, ia32_apic_base, ia32_sysenter_cs, ia32_sysenter_esp, ia32_sysenter_eip,
    ia32_misc_enable, ia32_pat, ia32_efer, ia32_star, ia32_lstar, ia32_cstar, ia32_fmask,
    ia32_fs_base, ia32_gs_base, ia32_kernel_gs_base, ia32_tsc_aux);

// --- Bit fields ----------------------------------------------------------------

/// RFLAGS (SDM Vol. 1 §3.4.3, Figure 3-8).
namespace rflags_bits {
inline constexpr bitfield<0> cf{};  ///< CF: carry
inline constexpr bitfield<1, 1, access::ro> reserved1{}; ///< always 1
inline constexpr bitfield<2> pf{};  ///< PF: parity
inline constexpr bitfield<6> zf{};  ///< ZF: zero
inline constexpr bitfield<7> sf{};  ///< SF: sign
inline constexpr bitfield<8> tf{};  ///< TF: trap (single step)
inline constexpr bitfield<9> if_{};  ///< IF: interrupt enable
inline constexpr bitfield<10> df{};  ///< DF: direction
inline constexpr bitfield<11> of{};  ///< OF: overflow
inline constexpr bitfield<12, 2> iopl{};  ///< IOPL: I/O privilege level
inline constexpr bitfield<17> vm{};  ///< VM: virtual-8086 mode
inline constexpr bitfield<18> ac{};  ///< AC: alignment check
inline constexpr bitfield<21> id{};  ///< ID: CPUID available
/// The value RFLAGS has after reset (SDM Vol. 3A §9.1.1, Table 9-1).
inline constexpr std::uint64_t reset_value = 0x2;
} // namespace rflags_bits

/// CR0 (SDM Vol. 3A §2.5, Figure 2-7).
namespace cr0_bits {
inline constexpr bitfield<0> pe{};  ///< protection enable
inline constexpr bitfield<1> mp{};  ///< monitor coprocessor
inline constexpr bitfield<2> em{};  ///< emulation
inline constexpr bitfield<3> ts{};  ///< task switched
inline constexpr bitfield<4> et{};  ///< extension type
inline constexpr bitfield<5> ne{};  ///< numeric error
inline constexpr bitfield<16> wp{}; ///< write protect
inline constexpr bitfield<18> am{}; ///< alignment mask
inline constexpr bitfield<29> nw{}; ///< not write-through
inline constexpr bitfield<30> cd{}; ///< cache disable
inline constexpr bitfield<31> pg{}; ///< paging
} // namespace cr0_bits

/// CR4 (SDM Vol. 3A §2.5, Figure 2-7).
namespace cr4_bits {
inline constexpr bitfield<0> vme{};  ///< VME: virtual-8086 mode extensions
inline constexpr bitfield<1> pvi{};  ///< PVI: protected-mode virtual interrupts
inline constexpr bitfield<2> tsd{};  ///< TSD: time stamp disable (RDTSC at CPL 0 only)
inline constexpr bitfield<3> de{};  ///< DE: debugging extensions
inline constexpr bitfield<4> pse{};  ///< PSE: 4-MiB pages in 32-bit paging
inline constexpr bitfield<5> pae{};  ///< PAE: physical address extension (required for long mode)
inline constexpr bitfield<6> mce{};  ///< MCE: machine-check enable
inline constexpr bitfield<7> pge{};  ///< PGE: global pages
inline constexpr bitfield<9> osfxsr{};  ///< OSFXSR: FXSAVE/FXRSTOR and SSE enabled
inline constexpr bitfield<10> osxmmexcpt{};  ///< OSXMMEXCPT: unmasked SIMD floating-point exceptions
inline constexpr bitfield<12> la57{};  ///< LA57: 5-level paging
inline constexpr bitfield<13> vmxe{};  ///< VMXE: VMX enable
inline constexpr bitfield<16> fsgsbase{};  ///< FSGSBASE: RDFSBASE & co. enabled
inline constexpr bitfield<18> osxsave{};  ///< OSXSAVE: XSAVE and XCR0 enabled
inline constexpr bitfield<20> smep{};  ///< SMEP: supervisor-mode execution prevention
inline constexpr bitfield<21> smap{};  ///< SMAP: supervisor-mode access prevention
} // namespace cr4_bits

/// IA32_EFER (SDM Vol. 3A §2.2.1, Table 2-1 / Vol. 4 Table 2-2).
namespace efer_bits {
inline constexpr bitfield<0> sce{};                    ///< SYSCALL enable
inline constexpr bitfield<8> lme{};                    ///< long mode enable
inline constexpr bitfield<10, 1, access::ro> lma{};    ///< long mode active (set by the CPU)
inline constexpr bitfield<11> nxe{};                   ///< execute-disable enable
} // namespace efer_bits

/// IA32_MISC_ENABLE (SDM Vol. 4 Table 2-2, MSR 0x1A0).
namespace misc_enable_bits {
inline constexpr bitfield<0> fast_strings{}; ///< fast-string enable
} // namespace misc_enable_bits

/// Segment descriptor type field values (SDM Vol. 3A §3.4.5.1, Table 3-1, and
/// §3.5, Table 3-2) as KVM's `kvm_segment::type` holds them.
namespace segment_type {
inline constexpr std::uint8_t data_rw = 0x2;           ///< read/write
inline constexpr std::uint8_t data_rw_accessed = 0x3;  ///< read/write, accessed
inline constexpr std::uint8_t code_xr = 0xa;           ///< execute/read
inline constexpr std::uint8_t code_xr_accessed = 0xb;  ///< execute/read, accessed
inline constexpr std::uint8_t ldt = 0x2;               ///< system: LDT
inline constexpr std::uint8_t tss_busy_16 = 0x3;       ///< system: 16-bit busy TSS
inline constexpr std::uint8_t tss_busy_64 = 0xb;       ///< system: 32/64-bit busy TSS
} // namespace segment_type

/// Why a system-register state is one no x86 CPU can be in (and KVM refuses with EINVAL, see
/// `kvm_is_valid_sregs`), or null when none of these rules is broken. The rules: SDM Vol. 3A
/// §2.5 (CR0.PG requires CR0.PE; CR0.NW requires CR0.CD), §9.8.5 (IA-32e mode: paging with
/// EFER.LME requires CR4.PAE; EFER.LMA equals LME && PG), §3.4.5 / §5.2.1 (a 64-bit code
/// segment, CS.L, has CS.D clear). Used to explain a failed entry.
[[nodiscard]] constexpr const char* invalid_state_reason(const sregs_layout& s) noexcept {
    const bool pg = cr0_bits::pg.test(s.cr0), pe = cr0_bits::pe.test(s.cr0);
    const bool lme = efer_bits::lme.test(s.efer), lma = efer_bits::lma.test(s.efer);
    if (pg && !pe) return "CR0.PG set without CR0.PE";
    if (cr0_bits::nw.test(s.cr0) && !cr0_bits::cd.test(s.cr0)) return "CR0.NW set without CR0.CD";
    if (pg && lme && !cr4_bits::pae.test(s.cr4)) return "EFER.LME and CR0.PG set without CR4.PAE";
    if (lma != (lme && pg)) return "EFER.LMA differs from EFER.LME && CR0.PG";
    if (s.cs.l != 0 && s.cs.db != 0) return "CS.L and CS.D both set";
    return nullptr;
}

/// x86 exception vectors (SDM Vol. 3A §6.15, Table 6-1).
namespace vector {
/// @{
/// Vector numbers by mnemonic: \#DE 0, \#DB 1, NMI 2, \#BP 3, \#OF 4, \#BR 5, \#UD 6, \#NM 7, \#DF 8, \#TS 10, \#NP 11, \#SS 12, \#GP 13, \#PF 14, \#MF 16, \#AC 17, \#MC 18, \#XM 19, \#VE 20.
inline constexpr std::uint8_t de = 0, db = 1, nmi = 2, bp = 3, of = 4, br = 5, ud = 6, nm = 7,
                              df = 8, ts = 10, np = 11, ss = 12, gp = 13, pf = 14, mf = 16,
                              ac = 17, mc = 18, xm = 19, ve = 20;
/// @}
} // namespace vector

} // namespace vcpu::x86_64
