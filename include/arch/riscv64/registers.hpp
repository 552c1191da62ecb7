#pragma once
/// \file
/// The RISC-V 64 register file as KVM exposes it: `KVM_GET/SET_ONE_REG`
/// descriptors for the core registers (pc, x1-x31 by ABI name and number,
/// privilege mode), the guest's S-mode CSRs, the config registers (isa, ...)
/// and the timer registers. Ids are built as `arch/riscv/include/uapi/asm/kvm.h`
/// builds them (see abi.hpp). Register names and numbers: RISC-V unprivileged
/// spec, chapter "RV32I Base Integer Instruction Set" §2.1 and the psABI's
/// integer register convention table; CSRs: privileged spec chapter
/// "Supervisor-Level ISA".

#include <arch/riscv64/abi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/registers.hpp>

#include <array>
#include <cstdint>
#include <tuple>

namespace vcpu::riscv64 {

/// A 64-bit ONE_REG register.
template <access A = access::rw>
using reg64 = one_reg<std::uint64_t, A>;

namespace detail {
[[nodiscard]] constexpr reg64<> core(std::string_view name, std::uint64_t index) noexcept {
    return {name, abi::reg_id(abi::reg_type::core, index)};
}
[[nodiscard]] constexpr reg64<> csr(std::string_view name, std::uint64_t index) noexcept {
    return {name, abi::reg_id(abi::reg_type::csr, index)};
}
} // namespace detail

// --- Core registers (struct kvm_riscv_core) ---------------------------------
inline constexpr reg64<> pc = detail::core("pc", abi::core_index::pc);  ///< the guest PC (`kvm_riscv_core.regs.pc`)
/// @{
/// x1-x31 by their ABI names (unprivileged spec, "RISC-V Calling Convention"), as KVM's core registers.
inline constexpr reg64<> ra = detail::core("ra", 1);
inline constexpr reg64<> sp = detail::core("sp", 2);
inline constexpr reg64<> gp = detail::core("gp", 3);
inline constexpr reg64<> tp = detail::core("tp", 4);
inline constexpr reg64<> t0 = detail::core("t0", 5);
inline constexpr reg64<> t1 = detail::core("t1", 6);
inline constexpr reg64<> t2 = detail::core("t2", 7);
inline constexpr reg64<> s0 = detail::core("s0", 8); ///< also `fp`
inline constexpr reg64<> s1 = detail::core("s1", 9);
inline constexpr reg64<> a0 = detail::core("a0", 10);
inline constexpr reg64<> a1 = detail::core("a1", 11);
inline constexpr reg64<> a2 = detail::core("a2", 12);
inline constexpr reg64<> a3 = detail::core("a3", 13);
inline constexpr reg64<> a4 = detail::core("a4", 14);
inline constexpr reg64<> a5 = detail::core("a5", 15);
inline constexpr reg64<> a6 = detail::core("a6", 16);
inline constexpr reg64<> a7 = detail::core("a7", 17);
inline constexpr reg64<> s2 = detail::core("s2", 18);
inline constexpr reg64<> s3 = detail::core("s3", 19);
inline constexpr reg64<> s4 = detail::core("s4", 20);
inline constexpr reg64<> s5 = detail::core("s5", 21);
inline constexpr reg64<> s6 = detail::core("s6", 22);
inline constexpr reg64<> s7 = detail::core("s7", 23);
inline constexpr reg64<> s8 = detail::core("s8", 24);
inline constexpr reg64<> s9 = detail::core("s9", 25);
inline constexpr reg64<> s10 = detail::core("s10", 26);
inline constexpr reg64<> s11 = detail::core("s11", 27);
inline constexpr reg64<> t3 = detail::core("t3", 28);
inline constexpr reg64<> t4 = detail::core("t4", 29);
inline constexpr reg64<> t5 = detail::core("t5", 30);
inline constexpr reg64<> t6 = detail::core("t6", 31);
/// @}
/// Privilege mode the vCPU runs in: `abi::mode_s` or `abi::mode_u`.
inline constexpr reg64<> mode = detail::core("mode", abi::core_index::mode);

/// `x0`, hardwired to zero (unprivileged spec §2.1). KVM has no register for
/// it (core index 0 is `pc`), so its descriptor carries the reserved id 0,
/// which no ONE_REG class uses and KVM rejects. `gpr(0)` returns it only so
/// that `gpr` is total over 0..31; the library's decoders never move it
/// through a HAL: they read x0 as 0 and drop writes to it.
inline constexpr reg64<> zero{"zero", 0};

/// GPRs by register number (instruction `rd`/`rs1`/`rs2` fields): 0 = `zero`,
/// 1 = `ra`, ..., 31 = `t6`.
inline constexpr std::array<reg64<>, 32> gprs_by_number{
    zero, ra, sp, gp, tp, t0, t1, t2, s0, s1, a0, a1, a2, a3, a4, a5,
    a6, a7, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, t3, t4, t5, t6};

// --- Guest S-mode CSRs (struct kvm_riscv_csr, subtype GENERAL) ---------------
// KVM maps these onto the hardware's VS-mode CSRs (privileged spec, H
// extension: "Virtual Supervisor" CSRs vsstatus, vsie, ...).
/// @{
/// The guest's S-mode CSRs, by their privileged-spec names.
inline constexpr reg64<> sstatus = detail::csr("sstatus", abi::csr_index::sstatus);
inline constexpr reg64<> sie = detail::csr("sie", abi::csr_index::sie);
inline constexpr reg64<> stvec = detail::csr("stvec", abi::csr_index::stvec);
inline constexpr reg64<> sscratch = detail::csr("sscratch", abi::csr_index::sscratch);
inline constexpr reg64<> sepc = detail::csr("sepc", abi::csr_index::sepc);
inline constexpr reg64<> scause = detail::csr("scause", abi::csr_index::scause);
inline constexpr reg64<> stval = detail::csr("stval", abi::csr_index::stval);
inline constexpr reg64<> sip = detail::csr("sip", abi::csr_index::sip);
inline constexpr reg64<> satp = detail::csr("satp", abi::csr_index::satp);
inline constexpr reg64<> scounteren = detail::csr("scounteren", abi::csr_index::scounteren);
/// @}

// --- Config registers (struct kvm_riscv_config) ------------------------------
/// Single-letter ISA extensions as a bit mask (bit 0 = 'a' ... bit 25 = 'z');
/// writable only before the first run, and only to clear bits.
inline constexpr reg64<> isa{"isa", abi::reg_id(abi::reg_type::config, abi::config_index::isa)};
/// @{
/// CBOM block size (read-only), and the machine vendor, architecture and implementation ids the guest sees (writable before the first run).
inline constexpr reg64<access::ro> zicbom_block_size{
    "zicbom_block_size", abi::reg_id(abi::reg_type::config, abi::config_index::zicbom_block_size)};
inline constexpr reg64<> mvendorid{
    "mvendorid", abi::reg_id(abi::reg_type::config, abi::config_index::mvendorid)};
inline constexpr reg64<> marchid{"marchid",
                                 abi::reg_id(abi::reg_type::config, abi::config_index::marchid)};
inline constexpr reg64<> mimpid{"mimpid",
                                abi::reg_id(abi::reg_type::config, abi::config_index::mimpid)};
/// @}

// --- Timer registers (struct kvm_riscv_timer) --------------------------------
/// Timebase frequency in Hz (read-only).
inline constexpr reg64<access::ro> timer_frequency{
    "timer.frequency", abi::reg_id(abi::reg_type::timer, abi::timer_index::frequency)};
inline constexpr reg64<> timer_time{"timer.time",  ///< the timer's current time (`time` CSR value)
                                    abi::reg_id(abi::reg_type::timer, abi::timer_index::time)};
inline constexpr reg64<> timer_compare{  ///< the next timer interrupt (`stimecmp`)
    "timer.compare", abi::reg_id(abi::reg_type::timer, abi::timer_index::compare)};
/// `abi::timer_state_off` / `abi::timer_state_on`.
inline constexpr reg64<> timer_state{"timer.state",
                                     abi::reg_id(abi::reg_type::timer, abi::timer_index::state)};

/// The enable register of KVM SBI extension `e` (1 = on). KVM forwards
/// the console extension (DBCN) to userspace only when it is enabled.
[[nodiscard]] constexpr reg64<> sbi_extension_enable(abi::kvm_sbi_ext e) noexcept {
    return {"sbi_ext", abi::sbi_ext_reg(e)};
}

/// The ISA-extension register of `e` (`KVM_REG_RISCV_ISA_EXT`): 1 when the vCPU has it.
/// Reading one the kernel does not know fails with ENOENT.
[[nodiscard]] constexpr reg64<> isa_extension(abi::kvm_isa_ext e) noexcept {
    return {"isa_ext", abi::isa_ext_reg(e)};
}

/// Every statically named register, for dumps and uniqueness checks (`zero`
/// is left out: it is not a KVM register).
inline constexpr auto all_registers = std::make_tuple(
    pc, ra, sp, gp, tp, t0, t1, t2, s0, s1, a0, a1, a2, a3, a4, a5, a6, a7, s2, s3, s4, s5, s6,
    s7, s8, s9, s10, s11, t3, t4, t5, t6, mode, sstatus, sie, stvec, sscratch, sepc, scause,
    stval, sip, satp, scounteren, isa, zicbom_block_size, mvendorid, marchid, mimpid,
    timer_frequency, timer_time, timer_compare, timer_state);

// --- Bit fields ------------------------------------------------------------------

/// `sstatus` (privileged spec, "Supervisor Status Register (sstatus)").
namespace sstatus_bits {
inline constexpr bitfield<1> sie{};      ///< S-mode interrupt enable
inline constexpr bitfield<5> spie{};     ///< SIE before the trap
inline constexpr bitfield<8> spp{};      ///< privilege before the trap: 1 = S
inline constexpr bitfield<13, 2> fs{};   ///< FPU state (off/initial/clean/dirty)
inline constexpr bitfield<18> sum{};     ///< permit supervisor user-memory access
inline constexpr bitfield<32, 2, access::ro> uxl{}; ///< U-mode XLEN (2 = 64)
} // namespace sstatus_bits

/// `hstatus` (privileged spec, H extension, "Hypervisor Status Register (hstatus)").
namespace hstatus_bits {
inline constexpr bitfield<5> vsbe{};  ///< VSBE: VS-mode accesses are big-endian
inline constexpr bitfield<6> gva{};   ///< stval holds a guest virtual address
inline constexpr bitfield<7> spv{};   ///< the trap came from a virtualised mode (V=1)
inline constexpr bitfield<8> spvp{};  ///< privilege of the guest before the trap: 1 = VS
inline constexpr bitfield<9> hu{};  ///< HU: U-mode may use the hypervisor load/store instructions
inline constexpr bitfield<20> vtvm{};  ///< VTVM: SFENCE.VMA and satp accesses in VS-mode raise virtual instruction
inline constexpr bitfield<21> vtw{};  ///< WFI in VS-mode raises virtual instruction
inline constexpr bitfield<22> vtsr{};  ///< VTSR: SRET in VS-mode raises virtual instruction
inline constexpr bitfield<32, 2> vsxl{};  ///< VSXL: VS-mode XLEN (2 = 64)
} // namespace hstatus_bits

} // namespace vcpu::riscv64
