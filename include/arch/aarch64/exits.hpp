#pragma once
/// \file
/// AArch64 exits: the kinds only AArch64 has, the ESR_EL2 syndrome layout,
/// and two decoders —
/// - from `kvm_run` (Linux KVM/arm64; Documentation/virt/kvm/api.rst §5
///   "The kvm_run structure"), and
/// - from an EL2 syndrome record (ESR_EL2 + FAR_EL2 + HPFAR_EL2 + the trapped
///   guest's X0-X30), for bare-metal EL2 hypervisors (ARM DDI 0487,
///   D17.2.37 "ESR_EL2", D17.2.40 "FAR_EL2", D17.2.72 "HPFAR_EL2").
///
/// Every guest-controlled field is validated before it is used: reserved
/// exception classes, inconsistent data-abort syndromes and out-of-range
/// `ndata` decode to `vcpu::malformed_exit`; SRT/Rt = 31 (XZR) reads as zero
/// and discards what is written to it.

#include <arch/aarch64/abi.hpp>
#include <arch/aarch64/psci.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/registers.hpp>


#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu::aarch64 {

// ---------------------------------------------------------------------------
// ESR_EL2 (ARM DDI 0487, D17.2.37)
// ---------------------------------------------------------------------------

/// ESR_EL2.EC values (ARM DDI 0487, D17.2.37, "EC, bits [31:26]" table).
enum class exception_class : std::uint8_t {
    unknown = 0x00,            ///< unknown reason
    wfx = 0x01,                ///< trapped WFI/WFE/WFIT/WFET
    cp15_32 = 0x03,            ///< AArch32 MCR/MRC cp15
    cp15_64 = 0x04,            ///< AArch32 MCRR/MRRC cp15
    cp14_32 = 0x05,            ///< AArch32 MCR/MRC cp14
    cp14_ls = 0x06,            ///< AArch32 LDC/STC cp14
    fp_access = 0x07,          ///< SVE/SIMD/FP access (CPTR/CPACR trap)
    cp10_id = 0x08,            ///< AArch32 VMRS of an ID register
    pac = 0x09,                ///< pointer authentication (HCR_EL2.API)
    ls64 = 0x0a,               ///< LD64B/ST64B
    cp14_64 = 0x0c,            ///< AArch32 MRRC cp14
    branch_target = 0x0d,      ///< BTI
    illegal_state = 0x0e,      ///< illegal execution state
    svc32 = 0x11,
    hvc32 = 0x12,
    smc32 = 0x13,
    svc64 = 0x15,
    hvc64 = 0x16,              ///< HVC from AArch64
    smc64 = 0x17,              ///< SMC from AArch64 trapped by HCR_EL2.TSC
    sys64 = 0x18,              ///< MSR/MRS/SYS trapped
    sve = 0x19,
    eret = 0x1a,               ///< ERET* (FEAT_NV)
    tstart = 0x1b,             ///< TSTART (FEAT_TME)
    fpac = 0x1c,               ///< PAC authentication failure
    sme = 0x1d,
    gpc = 0x1e,                ///< granule protection check (FEAT_RME)
    imp_def = 0x1f,            ///< IMPLEMENTATION DEFINED, EL3
    iabt_low = 0x20,           ///< instruction abort from a lower EL (stage 2)
    iabt_cur = 0x21,
    pc_align = 0x22,
    dabt_low = 0x24,           ///< data abort from a lower EL (stage 2: MMIO)
    dabt_cur = 0x25,
    sp_align = 0x26,
    mops = 0x27,               ///< memory copy/set (FEAT_MOPS)
    fp_exc32 = 0x28,
    fp_exc64 = 0x2c,
    serror = 0x2f,
    breakpoint_low = 0x30,
    breakpoint_cur = 0x31,
    software_step_low = 0x32,
    software_step_cur = 0x33,
    watchpoint_low = 0x34,
    watchpoint_cur = 0x35,
    bkpt32 = 0x38,
    vector_catch32 = 0x3a,
    brk64 = 0x3c,
};

/// True when `ec` is an EC value the ARM ARM defines (all others are
/// reserved and can only come from a corrupt or forged syndrome).
[[nodiscard]] constexpr bool is_defined(std::uint32_t ec) noexcept {
    switch (ec) {
    case 0x00: case 0x01: case 0x03: case 0x04: case 0x05: case 0x06: case 0x07: case 0x08:
    case 0x09: case 0x0a: case 0x0c: case 0x0d: case 0x0e: case 0x11: case 0x12: case 0x13:
    case 0x15: case 0x16: case 0x17: case 0x18: case 0x19: case 0x1a: case 0x1b: case 0x1c:
    case 0x1d: case 0x1e: case 0x1f: case 0x20: case 0x21: case 0x22: case 0x24: case 0x25:
    case 0x26: case 0x27: case 0x28: case 0x2c: case 0x2f: case 0x30: case 0x31: case 0x32:
    case 0x33: case 0x34: case 0x35: case 0x38: case 0x3a: case 0x3c:
        return true;
    default:
        return false;
    }
}

/// ESR_EL2 fields (D17.2.37) and the ISS encodings the decoders read.
namespace esr {
inline constexpr bitfield<26, 6> ec{};   ///< exception class
inline constexpr bitfield<25> il{};      ///< 32-bit instruction
inline constexpr bitfield<0, 25> iss{};  ///< instruction-specific syndrome
inline constexpr bitfield<32, 24> iss2{}; ///< ISS2 (FEAT_LS64 & co.)

/// ISS for data aborts (D17.2.37, "ISS encoding for an exception from a Data Abort").
namespace dabt {
inline constexpr bitfield<24> isv{};    ///< bits [23:14] hold a valid instruction syndrome
inline constexpr bitfield<22, 2> sas{}; ///< access size: 1 << SAS bytes
inline constexpr bitfield<21> sse{};    ///< sign-extend the loaded value
inline constexpr bitfield<16, 5> srt{}; ///< transfer register Xt/Wt (31 = XZR)
inline constexpr bitfield<15> sf{};     ///< 64-bit register (Xt rather than Wt)
inline constexpr bitfield<14> ar{};     ///< acquire/release semantics
inline constexpr bitfield<13> vncr{};  ///< VNCR: the fault came from a VNCR_EL2-based access (FEAT_NV2)
inline constexpr bitfield<10> fnv{};    ///< FAR not valid
inline constexpr bitfield<9> ea{};      ///< external abort
inline constexpr bitfield<8> cm{};      ///< cache maintenance
inline constexpr bitfield<7> s1ptw{};   ///< stage-2 fault on a stage-1 table walk
inline constexpr bitfield<6> wnr{};     ///< write, not read
inline constexpr bitfield<0, 6> dfsc{}; ///< data fault status code
} // namespace dabt

/// ISS for trapped MSR/MRS/System instructions (D17.2.37, "ISS encoding for
/// an exception from MSR, MRS, or System instruction execution in AArch64 state").
namespace sys64 {
/// @{
/// The trapped instruction's Op0, Op2, Op1, CRn, Rt and CRm.
inline constexpr bitfield<20, 2> op0{};
inline constexpr bitfield<17, 3> op2{};
inline constexpr bitfield<14, 3> op1{};
inline constexpr bitfield<10, 4> crn{};
inline constexpr bitfield<5, 5> rt{};
inline constexpr bitfield<1, 4> crm{};
/// @}
inline constexpr bitfield<0> direction{}; ///< 1 = read (MRS), 0 = write (MSR)
} // namespace sys64

/// ISS for HVC/SMC (imm16) and WFx (TI: 0 WFI, 1 WFE, 2 WFIT, 3 WFET).
inline constexpr bitfield<0, 16> imm16{};
inline constexpr bitfield<0, 2> wfx_ti{};  ///< WFx TI: which of WFI/WFE/WFIT/WFET trapped

/// Builds an ESR_EL2 value (for tests and replay tools).
[[nodiscard]] constexpr std::uint64_t make(exception_class c, std::uint32_t iss_value,
                                           bool il32 = true) noexcept {
    return ec.bits(static_cast<std::uint64_t>(c)) | il.bits(il32 ? 1 : 0) | iss.bits(iss_value);
}
} // namespace esr

/// HPFAR_EL2.FIPA (D17.2.72): IPA[55:12] of the faulting access in bits [47:4].
namespace hpfar_bits {
inline constexpr bitfield<4, 44> fipa{};  ///< FIPA: faulting IPA bits [55:12]
inline constexpr bitfield<63> ns{};  ///< NS: the faulting IPA is in the non-secure space
} // namespace hpfar_bits

/// The faulting IPA: HPFAR_EL2.FIPA gives the page, FAR_EL2[11:0] the offset
/// (D17.2.72, "HPFAR_EL2 ... FIPA", as KVM's `kvm_vcpu_get_fault_ipa` + FAR).
[[nodiscard]] constexpr std::uint64_t fault_ipa(std::uint64_t hpfar, std::uint64_t far) noexcept {
    return (hpfar_bits::fipa.get(hpfar) << 12) | (far & 0xfff);
}

// ---------------------------------------------------------------------------
// AArch64 exit kinds
// ---------------------------------------------------------------------------

/// An emulatable data abort (ISV = 1) decoded from ESR_EL2: the common
/// `vcpu::mmio` (so portable MMIO handlers take it) plus the destination
/// register and extension rules of the trapped load/store.
///
/// `data` views the low `size` bytes of the guest's saved Xt. For reads it is
/// cleared before the handler runs; `set(v)` stores `v` with SSE/SF applied,
/// and a portable handler that writes only `data` is completed by
/// `complete_mmio_read` (the EL2 HAL calls it before returning to the guest,
/// as KVM does in `kvm_handle_mmio_return`). SRT = 31 (XZR): writes carry 0,
/// read answers are discarded.
struct mmio_access : mmio {
    std::uint8_t srt = 31;          ///< Xt/Wt number; 31 = XZR
    bool sign_extend = false;       ///< SSE
    bool sf = true;                 ///< 64-bit destination (Xt)
    bool acquire_release = false;   ///< AR: LDAR/STLR & co.
    record_u64* reg = nullptr;      ///< the saved Xt (or the XZR discard slot)

    /// Stores a read's answer into Xt, truncated to `size`, sign-extended
    /// when SSE, and limited to 32 bits when the destination is Wt.
    constexpr void set(std::uint64_t v) const noexcept {
        if (reg != nullptr) *reg = extend(v);
    }
    /// `v` as the load instruction leaves it in the register.
    [[nodiscard]] constexpr std::uint64_t extend(std::uint64_t v) const noexcept {
        const unsigned bits = size * 8u;
        if (bits < 64) {
            v &= (std::uint64_t{1} << bits) - 1;
            if (sign_extend && (v >> (bits - 1)) != 0) v |= ~std::uint64_t{0} << bits;
        }
        return sf ? v : (v & 0xffffffffu);
    }
};

/// A data abort KVM or the EL2 decoder cannot emulate because the syndrome
/// carries no instruction information (ISV = 0, or FAR not valid): load/store
/// pair, writeback, SIMD... (`KVM_EXIT_ARM_NISV` with
/// `KVM_CAP_ARM_NISV_TO_USER`). The VMM must decode the instruction itself
/// or inject an abort.
struct nisv_abort {
    std::uint64_t esr_iss = 0; ///< ESR_EL2 ISS (KVM: `arm_nisv.esr_iss`)
    std::uint64_t ipa = 0;     ///< faulting IPA (KVM: `arm_nisv.fault_ipa`)
    /// True when the faulting access was a write (ISS.WnR).
    [[nodiscard]] constexpr bool is_write() const noexcept { return esr::dabt::wnr.test(esr_iss); }
};

/// An SMCCC call the hypervisor forwards: the common `hypercall` (`nr` = the
/// function id in W0/X0) plus the conduit and the HVC/SMC immediate.
/// From the EL2 decoder `args` are X1-X6 and `ret`/`ret2` are X0/X1.
/// From KVM (`KVM_EXIT_HYPERCALL`, SMCCC filter, Linux 6.7+) only `nr` and
/// the conduit are in `kvm_run`: read X1-X17 and answer in X0-X3 through the
/// register file (`ret` is null).
struct smccc_call : hypercall {
    bool smc = false;        ///< SMC conduit rather than HVC
    std::uint16_t imm16 = 0; ///< the instruction's immediate (SMCCC uses 0)
};

/// A PSCI call the hypervisor handles itself (PSCI_VERSION, PSCI_FEATURES,
/// AFFINITY_INFO, CPU_SUSPEND, ...). CPU_ON, CPU_OFF, SYSTEM_OFF/RESET/RESET2
/// decode to `cpu_up`, `cpu_down` and `system_event` instead.
struct psci_call {
    psci::call_id id{};  ///< the decoded PSCI function and calling convention
    std::uint32_t function_id = 0;      ///< W0 as the guest passed it
    std::array<std::uint64_t, 3> args{}; ///< X1-X3 (W1-W3 for SMC32)
    answer_slot ret;                    ///< X0
    /// Stores `v` into X0 (for a value a function returns, e.g. PSCI_VERSION).
    constexpr void answer(std::uint64_t v) const noexcept { ret.store(v); }
    /// Stores the PSCI status `s` into X0, sign-extended as the caller sees it.
    constexpr void answer(psci::status s) const noexcept { ret.store(psci::to_x0(s)); }
};

/// Every exit type the AArch64 decoders can produce.
using exit_types =
    type_list<mmio, mmio_access, coalesced_write, nisv_abort, sysreg, smccc_call, psci_call, halt,
              system_event, cpu_up, cpu_down, external_interrupt, nested_page_fault, interrupted,
              fail_entry, internal_error, debug, dirty_ring_full, unknown, malformed_exit>;

// ---------------------------------------------------------------------------
// The EL2 syndrome record
// ---------------------------------------------------------------------------

/// The guest's general-purpose registers as an EL2 exception entry saves
/// them: X0-X30 in `x[0..30]`, and `x[31]` a discard slot standing for XZR
/// (the decoder zeroes it; answers written to XZR land there).
struct gpr_frame {
    std::array<record_u64, 32> x{};  ///< X0-X30, then the XZR discard slot
};
static_assert(sizeof(gpr_frame) == 32 * 8);

/// Which EL2 vector the guest exit came through (D1.10.2 "Exception vectors").
enum class el2_vector : std::uint8_t { sync, irq, fiq, serror };

/// What a bare-metal EL2 hypervisor has after a guest exit: the syndrome
/// registers and the saved GPRs. Models the raw record of
/// `ExitDecoder<arch::aarch64, el2_syndrome>`.
struct el2_syndrome {
    std::uint64_t esr = 0;   ///< ESR_EL2
    std::uint64_t far = 0;   ///< FAR_EL2
    std::uint64_t hpfar = 0; ///< HPFAR_EL2
    gpr_frame* gprs = nullptr; ///< saved X0-X30; required for sync exits
    el2_vector vector = el2_vector::sync;  ///< which exception vector the exit came through
    std::uint32_t intid = 0; ///< for IRQ/FIQ: the INTID the HAL acknowledged, if any
};

/// Applies SSE/SF/size to the Xt of a completed MMIO read (idempotent). The
/// EL2 HAL calls this before returning to the guest after a data-abort exit;
/// any syndrome that `decode` does not turn into an `mmio_access` read (other
/// exception classes, and data aborts it reports as `nested_page_fault`,
/// `nisv_abort` or `malformed_exit`) leaves the frame alone.
inline void complete_mmio_read(const el2_syndrome& s) noexcept {
    using namespace esr;
    if (s.gprs == nullptr || s.vector != el2_vector::sync) return;
    if (ec.get(s.esr) != static_cast<std::uint64_t>(exception_class::dabt_low)) return;
    if (!dabt::isv.test(s.esr) || dabt::wnr.test(s.esr)) return;
    // The same conditions as `detail::decode_data_abort`: no emulated access, no completion.
    if (dabt::s1ptw.test(s.esr) || dabt::cm.test(s.esr) || dabt::ea.test(s.esr) || dabt::fnv.test(s.esr))
        return;
    if (dabt::sas.get(s.esr) == 3 && (!dabt::sf.test(s.esr) || dabt::sse.test(s.esr))) return;
    const auto rt = static_cast<unsigned>(dabt::srt.get(s.esr));
    mmio_access m{};
    m.size = static_cast<std::uint8_t>(1u << dabt::sas.get(s.esr));
    m.sign_extend = dabt::sse.test(s.esr);
    m.sf = dabt::sf.test(s.esr);
    s.gprs->x[rt] = rt == 31 ? 0 : m.extend(s.gprs->x[rt]);
    s.gprs->x[31] = 0;
}

namespace detail {

using ::vcpu::detail::malformed;

template <class Visitor>
inline void decode_data_abort(const el2_syndrome& s, Visitor& visit) noexcept {
    using namespace esr;
    using why = malformed_exit::why;
    const std::uint64_t e = s.esr;
    const std::uint64_t ipa = fault_ipa(s.hpfar, s.far);
    const bool write = dabt::wnr.test(e);
    if (dabt::s1ptw.test(e) || dabt::cm.test(e) || dabt::ea.test(e)) {
        // Not an access to emulate: a stage-1 walk hit stage 2, a cache
        // maintenance op, or an external abort.
        nested_page_fault f{ipa, 0, !write, write, false, e};
        visit(f);
        return;
    }
    if (!dabt::isv.test(e) || dabt::fnv.test(e)) {
        nisv_abort n{iss.get(e), ipa};
        visit(n);
        return;
    }
    const auto sas = static_cast<unsigned>(dabt::sas.get(e));
    const bool sse = dabt::sse.test(e), sf = dabt::sf.test(e);
    // A 64-bit access needs an X register and is never sign-extended
    // (D17.2.37: "SSE ... 0 for a 64-bit access"); anything else is forged.
    if (sas == 3 && (!sf || sse)) {
        malformed(visit, why::encoding, static_cast<std::uint64_t>(exception_class::dabt_low), e);
        return;
    }
    const auto rt = static_cast<std::uint8_t>(dabt::srt.get(e));
    auto& x = s.gprs->x;
    x[31] = 0;
    mmio_access m{};
    m.address = ipa;
    m.size = static_cast<std::uint8_t>(1u << sas);
    m.dir = write ? direction::out : direction::in;
    m.srt = rt;
    m.sign_extend = sse;
    m.sf = sf;
    m.acquire_release = dabt::ar.test(e);
    m.reg = &x[rt];
    if (!write) x[rt] = 0; // the load defines all of Xt; a partial answer stays zero-extended
    // Little-endian: the low `size` bytes of the saved register are the data.
    m.data = std::span<std::byte>(reinterpret_cast<std::byte*>(&x[rt]), m.size);
    visit(m);
}

template <class Visitor>
inline void decode_hvc_smc(const el2_syndrome& s, bool smc, Visitor& visit) noexcept {
    auto& x = s.gprs->x;
    const auto imm = static_cast<std::uint16_t>(esr::imm16.get(s.esr));
    const auto fid = static_cast<std::uint32_t>(x[0]);
    if (imm == 0) {
        if (const auto p = psci::decode(fid)) {
            const std::uint64_t mask = p->is64 ? ~std::uint64_t{0} : 0xffffffffu;
            const std::uint64_t a1 = x[1] & mask, a2 = x[2] & mask, a3 = x[3] & mask;
            switch (p->fn) {
            case psci::function::cpu_on: {
                cpu_up c{a1, a2, a3, &x[0]};
                visit(c);
                return;
            }
            case psci::function::cpu_off: {
                cpu_down c{};
                visit(c);
                return;
            }
            case psci::function::system_off:
            case psci::function::system_reset:
            case psci::function::system_reset2: {
                system_event ev{};
                ev.what = p->fn == psci::function::system_off ? system_event::kind::power_off
                                                              : system_event::kind::reset;
                ev.raw_type = fid;
                if (p->fn == psci::function::system_reset2) {
                    ev.data[0] = a1; // reset_type
                    ev.data[1] = a2; // cookie
                    ev.ndata = 2;
                }
                visit(ev);
                return;
            }
            default: {
                psci_call c{*p, fid, {a1, a2, a3}, &x[0]};
                visit(c);
                return;
            }
            }
        }
    }
    smccc_call c{};
    c.nr = x[0];
    for (std::size_t i = 0; i < 6; ++i) c.args[i] = x[i + 1];
    c.ret = &x[0];
    c.ret2 = &x[1];
    c.smc = smc;
    c.imm16 = imm;
    visit(c);
}
} // namespace detail

/// Decodes an EL2 guest exit (ESR_EL2 per ARM DDI 0487 D17.2.37) and hands
/// exactly one typed exit to `visit`:
///
/// | source                        | exit                                         |
/// | ----------------------------- | -------------------------------------------- |
/// | IRQ / FIQ vector              | `external_interrupt{intid}`                  |
/// | SError vector                 | `unknown{0x2f, esr}`                         |
/// | EC 0x01 WFI/WFE               | `halt{wait_for_event = TI[0]}`               |
/// | EC 0x16/0x17 HVC64/SMC64      | PSCI → `cpu_up`/`cpu_down`/`system_event`/`psci_call`; else `smccc_call` |
/// | EC 0x18 MSR/MRS               | `sysreg{id = sys_encoding::index(), gpr = Rt}` |
/// | EC 0x20 instruction abort     | `nested_page_fault{exec}`                    |
/// | EC 0x24 data abort, ISV=1     | `mmio_access`                                |
/// | EC 0x24, ISV=0 or FnV=1       | `nisv_abort`                                 |
/// | EC 0x24, S1PTW/CM/EA          | `nested_page_fault`                          |
/// | EC 0x30/0x32/0x34/0x3c        | `debug{exception = EC, status = ESR, address = FAR}` |
/// | other defined EC              | `unknown{EC, ESR}`                           |
/// | reserved EC, forged syndrome, no GPR frame | `malformed_exit{encoding}`      |
///
/// Side effects: only on the GPR frame the record points to — `x[31]` is
/// zeroed, and for MMIO reads Xt is cleared before the handler answers.
template <class Visitor>
[[gnu::always_inline]] inline void decode(const el2_syndrome& s, Visitor&& visit) noexcept {
    using why = malformed_exit::why;
    switch (s.vector) {
    case el2_vector::irq:
    case el2_vector::fiq: {
        external_interrupt e{s.intid};
        visit(e);
        return;
    }
    case el2_vector::serror: {
        unknown u{static_cast<std::uint64_t>(exception_class::serror), s.esr};
        visit(u);
        return;
    }
    case el2_vector::sync:
        break;
    default:
        detail::malformed(visit, why::encoding, 0, static_cast<std::uint64_t>(s.vector));
        return;
    }
    const auto ec = static_cast<std::uint32_t>(esr::ec.get(s.esr));
    if (!is_defined(ec)) {
        detail::malformed(visit, why::encoding, ec, s.esr);
        return;
    }
    if (s.gprs == nullptr) {
        detail::malformed(visit, why::encoding, ec, 0);
        return;
    }
    switch (static_cast<exception_class>(ec)) {
    case exception_class::wfx: {
        halt h{(esr::wfx_ti.get(s.esr) & 1u) != 0};
        visit(h);
        return;
    }
    case exception_class::hvc64:
        detail::decode_hvc_smc(s, false, visit);
        return;
    case exception_class::smc64:
        detail::decode_hvc_smc(s, true, visit);
        return;
    case exception_class::sys64: {
        namespace f = esr::sys64;
        const std::uint64_t iss = esr::iss.get(s.esr);
        const sys_encoding enc{static_cast<std::uint8_t>(f::op0.get(iss)),
                               static_cast<std::uint8_t>(f::op1.get(iss)),
                               static_cast<std::uint8_t>(f::crn.get(iss)),
                               static_cast<std::uint8_t>(f::crm.get(iss)),
                               static_cast<std::uint8_t>(f::op2.get(iss))};
        const auto rt = static_cast<std::uint8_t>(f::rt.get(iss));
        auto& x = s.gprs->x;
        x[31] = 0;
        const bool read = f::direction.test(iss);
        sysreg r{};
        r.id = enc.index();
        r.dir = read ? direction::in : direction::out;
        r.value = read ? 0 : x[rt];
        r.result = read ? answer_slot(&x[rt]) : answer_slot{};
        r.gpr = rt;
        visit(r);
        return;
    }
    case exception_class::iabt_low: {
        nested_page_fault f{fault_ipa(s.hpfar, s.far), 0, false, false, true, s.esr};
        visit(f);
        return;
    }
    case exception_class::dabt_low:
        detail::decode_data_abort(s, visit);
        return;
    case exception_class::breakpoint_low:
    case exception_class::software_step_low:
    case exception_class::watchpoint_low:
    case exception_class::brk64: {
        debug d{0, ec, s.esr, 0, s.far};
        visit(d);
        return;
    }
    default: {
        unknown u{ec, s.esr};
        visit(u);
        return;
    }
    }
}

} // namespace vcpu::aarch64
