#pragma once
/// \file
/// RISC-V 64 exits: the kinds only RISC-V has, the HS-mode trap record of a
/// bare-metal hypervisor, and the two decoders:
///
/// - `decode(const kvm::run_view&, visit)`: Linux KVM exits (KVM API §5 "The
///   kvm_run structure": `KVM_EXIT_MMIO`, `KVM_EXIT_RISCV_SBI`,
///   `KVM_EXIT_RISCV_CSR`, `KVM_EXIT_SYSTEM_EVENT`, ...);
/// - `decode(const hs_trap&, visit)`: a trap taken in HS-mode from a guest
///   (V=1), per the RISC-V privileged spec, chapter "Hypervisor Extension":
///   `scause` (Table "Supervisor cause register (scause) values after trap",
///   with the H extension's codes 10, 20, 21, 22, 23), `stval`, `htval`
///   (guest physical address >> 2, section "Hypervisor Trap Value Register")
///   and `htinst` (section "Hypervisor Trap Instruction Register" and
///   "Transformed Instruction or Pseudoinstruction for mtinst or htinst").
///
/// SBI calls (RISC-V SBI spec v2.0, see sbi.hpp) decode the same way from
/// both sources: by extension and function into console, probe, HSM
/// (`cpu_up`/`cpu_down`/`hart_status_query`) and SRST (`system_event`)
/// exits, anything else into `sbi_call`. Their answers go to the record's
/// return slots: `kvm_run::riscv_sbi.ret[0..1]` (KVM copies them to a0/a1 and
/// steps over the ecall), or the trap frame's a0/a1.
///
/// Every guest-controlled size and encoding is validated; nothing is read
/// outside the record. Exits are views, valid until the vCPU runs again.

#include <arch/riscv64/abi.hpp>
#include <arch/riscv64/insn.hpp>
#include <arch/riscv64/sbi.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>


#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::riscv64 {

// ---------------------------------------------------------------------------
// scause codes
// ---------------------------------------------------------------------------

/// `scause` bit 63: the trap is an interrupt.
inline constexpr std::uint64_t scause_interrupt = std::uint64_t{1} << 63;

/// Exception codes (scause with bit 63 clear), privileged spec Table
/// "Supervisor cause register (scause) values after trap" and the H
/// extension's additions (as seen by HS-mode).
namespace exception_code {
/// @{
/// Exception codes, named as the privileged spec's scause table names them (ecall_u/hs/vs/m: environment call from U-, HS-, VS-, M-mode; the *_guest_page_fault codes and virtual_insn come from the H extension).
inline constexpr std::uint64_t insn_misaligned = 0, insn_access_fault = 1, illegal_insn = 2,
                               breakpoint = 3, load_misaligned = 4, load_access_fault = 5,
                               store_misaligned = 6, store_access_fault = 7, ecall_u = 8,
                               ecall_hs = 9, ecall_vs = 10, ecall_m = 11, insn_page_fault = 12,
                               load_page_fault = 13, store_page_fault = 15, software_check = 18,
                               hardware_error = 19, insn_guest_page_fault = 20,
                               load_guest_page_fault = 21, virtual_insn = 22,
                               store_guest_page_fault = 23;
/// @}
} // namespace exception_code

/// Interrupt codes (scause with bit 63 set).
namespace interrupt_code {
/// @{
/// Interrupt codes: supervisor and virtual-supervisor software, timer and external interrupts, supervisor guest external interrupt, counter overflow.
inline constexpr std::uint64_t s_software = 1, vs_software = 2, s_timer = 5, vs_timer = 6,
                               s_external = 9, vs_external = 10, s_guest_external = 12,
                               counter_overflow = 13;
/// @}
} // namespace interrupt_code

// ---------------------------------------------------------------------------
// Exit kinds only RISC-V has
// ---------------------------------------------------------------------------

/// An SBI call no more specific exit describes. A `hypercall` whose `nr` is
/// the extension id (a7) and whose `args` are a0-a5, plus the function id
/// (a6); portable handlers taking `hypercall&` receive it. Answer with
/// `answer(error, value)` (`struct sbiret`); an unanswered call returns what
/// the slot held (KVM presets `SBI_ERR_NOT_SUPPORTED`).
struct sbi_call : hypercall {
    std::uint64_t function = 0; ///< FID (a6)
    /// The extension id (a7), which is `nr`.
    [[nodiscard]] constexpr std::uint64_t extension() const noexcept { return nr; }
};

/// Base extension `probe_extension(extension)`: answer whether the VMM
/// implements `extension` (value 0 = not available).
struct sbi_probe {
    std::uint64_t extension = 0;  ///< the extension id asked about (a0)
    /// @{
    /// Where the answer goes: `sbiret.error` (a0) and `sbiret.value` (a1).
    answer_slot error, value;
    /// @}
    /// Answers `SBI_SUCCESS` with `value` = `v` (0: not available).
    constexpr void answer(std::uint64_t v) const noexcept {
        error.store(sbi::as_reg(sbi::error::success));
        value.store(v);
    }
};

/// Console output: legacy `console_putchar`, DBCN `console_write_byte` (one
/// byte in `byte`), or DBCN `console_write` (`length` bytes at guest physical
/// `address`; the VMM reads guest memory, bounds-checked by its own memory
/// map). Call `done(n)` with the bytes written; until then the guest sees what
/// the slot held (KVM presets `SBI_ERR_NOT_SUPPORTED`).
struct console_write {
    bool in_memory = false;     ///< DBCN `console_write`: the bytes are in guest memory
    bool legacy = false;        ///< legacy extension 0x01 (returns only a0)
    std::uint8_t byte = 0;      ///< the byte, when `!in_memory`
    std::uint64_t address = 0;  ///< guest physical address, when `in_memory`
    std::uint64_t length = 0;   ///< bytes: 1 when `!in_memory`
    /// @{
    /// Where the answer goes: `sbiret.error` (a0) and `sbiret.value` (a1; not for legacy calls).
    answer_slot error, value;
    /// @}
    /// Reports success: `n` bytes written (legacy: a0 = 0).
    constexpr void done(std::uint64_t n = 1) const noexcept {
        error.store(0);
        if (!legacy) value.store(n);
    }
    /// Reports an SBI error (e.g. `sbi::error::invalid_address`).
    constexpr void fail(std::int64_t e) const noexcept { error.store(sbi::as_reg(e)); }
};

/// Console input: legacy `console_getchar` (answer the byte, or -1 for none,
/// with `legacy_char`) or DBCN `console_read` (`length` bytes to guest
/// physical `address`; answer the count with `done`).
struct console_read {
    bool legacy = false;  ///< legacy `console_getchar` (answer with `legacy_char`)
    std::uint64_t address = 0;  ///< DBCN: guest physical address of the buffer to fill
    std::uint64_t length = 0;  ///< DBCN: bytes asked for
    /// @{
    /// Where the answer goes: a0 (`sbiret.error`, or the legacy character) and a1 (`sbiret.value`).
    answer_slot error, value;
    /// @}
    /// Reports success: `n` bytes were written to guest memory.
    constexpr void done(std::uint64_t n) const noexcept {
        error.store(0);
        value.store(n);
    }
    /// Legacy getchar: a0 = the byte, or -1 when nothing is waiting.
    constexpr void legacy_char(int c) const noexcept {
        error.store(c < 0 ? ~std::uint64_t{0} : static_cast<std::uint64_t>(c & 0xff));
    }
};

/// HSM `hart_get_status(hart)`: answer one of `sbi::hart_state`.
struct hart_status_query {
    std::uint64_t hart = 0;  ///< the hart id asked about (a0)
    /// @{
    /// Where the answer goes: `sbiret.error` (a0) and `sbiret.value` (a1).
    answer_slot error, value;
    /// @}
    /// Answers `SBI_SUCCESS` with `value` = `state` (one of `sbi::hart_state`).
    constexpr void answer(std::uint64_t state) const noexcept {
        error.store(0);
        value.store(state);
    }
    /// Answers the SBI error `e` (e.g. `sbi::error::invalid_param` for a hart that does not exist).
    constexpr void fail(std::int64_t e) const noexcept { error.store(sbi::as_reg(e)); }
};

/// A CSR access the hypervisor emulates (KVM: `KVM_EXIT_RISCV_CSR`; HS-mode:
/// a virtual-instruction trap on a Zicsr instruction). A `sysreg` with `id` =
/// CSR number; the access reads the old value (answer it with `answer(old)`,
/// it goes to rd) and, when `write_mask != 0`, writes `updated(old)`.
/// `dir` is `out` when some bits are written, else `in`.
struct csr_access : sysreg {
    std::uint64_t new_value = 0;  ///< bits to write (when `write_mask` has them)
    std::uint64_t write_mask = 0;  ///< which bits the instruction writes (0: a read only)
    /// The CSR's value after the access: `(old & ~write_mask) | (new_value & write_mask)`.
    [[nodiscard]] constexpr std::uint64_t updated(std::uint64_t old) const noexcept {
        return (old & ~write_mask) | (new_value & write_mask);
    }
};

/// The saved guest state of an HS-mode hypervisor's trap entry (what
/// axvisor's riscv_vcpu keeps as guest GPRs), and a scratch buffer for MMIO
/// data. `x[0]` is never read (x0 reads as zero) and never written.
struct hs_guest_frame {
    std::array<std::uint64_t, 32> x{};  ///< x0-x31 of the guest (x0 unused)
    std::array<std::byte, 8> mmio{}; ///< data of the MMIO access being emulated
};

/// A guest load or store to an address no memory backs, decoded from a guest
/// page fault in HS-mode. An `mmio` (portable handlers taking `mmio&` receive
/// it) plus what the hypervisor needs to finish the instruction: for loads,
/// `write_back(frame)` puts the handler's data, sign- or zero-extended, into
/// `rd`; then the guest's `sepc` advances by `insn_length`.
struct mmio_trap : mmio {
    std::uint8_t reg = 0;        ///< loads: rd; stores: rs2 (its value is already in `data`)
    bool sign_extend = false;    ///< LB/LH/LW, C.LW, C.LWSP, C.LH
    std::uint8_t insn_length = 4; ///< 2 for a compressed instruction
    std::uint64_t gva = 0; ///< stval: the guest virtual address (the spec's GVA)
    /// Completes a load: `frame.x[reg] = extend(data)`; no-op for stores and x0.
    constexpr void write_back(hs_guest_frame& frame) const noexcept {
        if (dir != direction::in || reg == 0 || reg >= 32) return;
        frame.x[reg] = insn::extend(value(), size, sign_extend);
    }
};

/// A virtual-instruction trap (scause 22) the decoder does not turn into a
/// CSR access or a WFI `halt`: the hypervisor emulates it or injects an
/// illegal-instruction exception into the guest.
struct virtual_instruction {
    std::uint32_t insn = 0;     ///< faulting instruction bits (0 when neither stval nor the HAL had them)
    std::uint8_t length = 4;  ///< bytes of the instruction: 2 (compressed) or 4
    std::uint64_t pc = 0;       ///< sepc
};

/// Any other exception taken to HS-mode from the guest (one `hedeleg` did not
/// delegate to VS-mode): the hypervisor reflects it or stops the guest.
struct guest_exception {
    std::uint64_t code = 0; ///< `exception_code`
    std::uint64_t tval = 0; ///< stval
    std::uint64_t pc = 0;   ///< sepc
};

/// A trap taken in HS-mode from the guest: the CSRs the trap entry read, and
/// the saved guest GPRs (for SBI arguments, store data and load results).
struct hs_trap {
    std::uint64_t scause = 0;  ///< scause: the trap's cause (bit 63: interrupt)
    std::uint64_t stval = 0;  ///< stval: fault address or instruction bits
    std::uint64_t htval = 0;   ///< guest physical address >> 2 (guest page faults), or 0
    std::uint64_t htinst = 0;  ///< transformed instruction / pseudoinstruction, or 0 = not provided
    std::uint64_t sepc = 0;  ///< sepc: the guest PC of the trap
    /// The trapping instruction read from guest memory by the HAL when
    /// `htinst` is 0 (e.g. with HLVX.HU at sepc), or 0 when it did not.
    std::uint32_t fetched_insn = 0;
    hs_guest_frame* frame = nullptr; ///< required for ecalls, stores and loads
};

/// Every exit type the riscv64 decoders can produce.
using exit_types =
    type_list<mmio, coalesced_write, halt, system_event, cpu_up, cpu_down, nested_page_fault,
              external_interrupt, interrupted, fail_entry, internal_error, dirty_ring_full,
              unknown, malformed_exit, sbi_call, sbi_probe, console_write, console_read,
              hart_status_query, csr_access, mmio_trap, virtual_instruction, guest_exception>;

namespace detail {

/// `KVM_SYSTEM_EVENT_SHUTDOWN` / `_RESET` values: an SRST decoded from an HS-mode trap
/// carries the same `raw_type` as one KVM reports (asserted in kvm/exits_riscv64.hpp).
inline constexpr std::uint32_t linux_event_shutdown = 1, linux_event_reset = 2;

/// Decodes one SBI call (EID `ext`, FID `fid`, a0-a5 `args`) into a typed exit
/// answering through `ret0`/`ret1` (a0/a1).
template <class Visitor>
constexpr void decode_sbi(std::uint64_t ext, std::uint64_t fid,
                          const std::array<std::uint64_t, 6>& args, answer_slot ret0,
                          answer_slot ret1, Visitor& visit) noexcept {
    namespace e = sbi::ext;
    switch (ext) {
    case e::legacy_console_putchar: {
        console_write w{false, true, static_cast<std::uint8_t>(args[0] & 0xff), 0, 1, ret0, {}};
        visit(w);
        return;
    }
    case e::legacy_console_getchar: {
        console_read r{true, 0, 1, ret0, {}};
        visit(r);
        return;
    }
    case e::legacy_shutdown: {
        system_event s{};
        s.what = system_event::kind::power_off;
        s.raw_type = linux_event_shutdown;
        visit(s);
        return;
    }
    case e::base:
        if (fid == sbi::base_fid::probe_extension) {
            sbi_probe p{args[0], ret0, ret1};
            visit(p);
            return;
        }
        break;
    case e::hsm:
        if (fid == sbi::hsm_fid::hart_start) {
            // hart_start(hartid, start_addr, opaque): the new hart starts with
            // a0 = hartid and a1 = opaque (`context`).
            cpu_up u{args[0], args[1], args[2], ret0};
            visit(u);
            return;
        }
        if (fid == sbi::hsm_fid::hart_stop) {
            cpu_down d{};
            visit(d);
            return;
        }
        if (fid == sbi::hsm_fid::hart_get_status) {
            hart_status_query q{args[0], ret0, ret1};
            visit(q);
            return;
        }
        break;
    case e::srst:
        if (fid == sbi::srst_fid::system_reset && args[0] <= sbi::reset_type::warm_reboot) {
            // Shaped as KVM reports SRST itself (kvm_riscv_vcpu_sbi_system_reset):
            // data[0] = reset_reason; data[1] adds the reset_type.
            system_event s{};
            const bool off = args[0] == sbi::reset_type::shutdown;
            s.what = off ? system_event::kind::power_off : system_event::kind::reset;
            s.raw_type = off ? linux_event_shutdown : linux_event_reset;
            s.data[0] = args[1];
            s.data[1] = args[0];
            s.ndata = 2;
            visit(s);
            return;
        }
        break;
    case e::dbcn:
        // On RV64 base_addr_hi holds address bits 64..127: non-zero cannot be
        // a guest physical address, so such calls stay generic `sbi_call`s
        // (the VMM answers SBI_ERR_INVALID_PARAM or NOT_SUPPORTED).
        if (fid == sbi::dbcn_fid::console_write && args[2] == 0) {
            console_write w{true, false, 0, args[1], args[0], ret0, ret1};
            visit(w);
            return;
        }
        if (fid == sbi::dbcn_fid::console_read && args[2] == 0) {
            console_read r{false, args[1], args[0], ret0, ret1};
            visit(r);
            return;
        }
        if (fid == sbi::dbcn_fid::console_write_byte) {
            console_write w{false, false, static_cast<std::uint8_t>(args[0] & 0xff), 0, 1, ret0, ret1};
            visit(w);
            return;
        }
        break;
    default: break;
    }
    sbi_call c{};
    c.nr = ext;
    c.function = fid;
    c.args = args;
    c.ret = ret0;
    c.ret2 = ret1;
    visit(c);
}

using ::vcpu::detail::malformed;

} // namespace detail

namespace detail {

/// A guest page fault (scause 20/21/23): MMIO when the trapping instruction is
/// known and is a plain load/store of the fault's direction, else a nested
/// page fault.
template <class Visitor>
constexpr void decode_guest_page_fault(const hs_trap& t, std::uint64_t code, Visitor& visit) noexcept {
    namespace ec = exception_code;
    // Privileged spec, H extension, "Hypervisor Trap Value Register": htval is
    // the guest physical address shifted right by 2; the low bits come from stval.
    const std::uint64_t gpa = (t.htval << 2) | (t.stval & 3u);
    nested_page_fault npf{};
    npf.address = gpa;
    npf.read = code == ec::load_guest_page_fault;
    npf.write = code == ec::store_guest_page_fault;
    npf.exec = code == ec::insn_guest_page_fault;
    npf.syndrome = t.scause;
    if (code == ec::insn_guest_page_fault) {
        visit(npf);
        return;
    }
    std::optional<insn::mem_access> acc;
    switch (insn::classify_htinst(t.htinst)) {
    case insn::htinst_kind::transformed: acc = insn::decode_transformed(t.htinst); break;
    case insn::htinst_kind::pseudo: // implicit VS-stage page-table walk: not MMIO
        npf.size = (t.htinst & 0x1000u) != 0 ? 8 : 4;
        visit(npf);
        return;
    case insn::htinst_kind::reserved:
        malformed(visit, malformed_exit::why::encoding, t.scause, t.htinst);
        return;
    case insn::htinst_kind::none:
        if (t.fetched_insn == 0) { // nothing to decode: the VMM must fetch it
            visit(npf);
            return;
        }
        acc = insn::decode_original(t.fetched_insn);
        break;
    }
    if (!acc) { // AMO, LR/SC, FP, HLV/HSV...: not a plain load/store
        visit(npf);
        return;
    }
    const bool load = acc->op == insn::mem_op::load;
    if (load != (code == ec::load_guest_page_fault)) {
        malformed(visit, malformed_exit::why::encoding, t.scause,
                  t.htinst != 0 ? t.htinst : t.fetched_insn);
        return;
    }
    if (t.frame == nullptr) {
        malformed(visit, malformed_exit::why::encoding, t.scause, 0);
        return;
    }
    hs_guest_frame& f = *t.frame;
    const auto data = std::span<std::byte>(f.mmio).first(acc->width);
    if (load) {
        for (auto& b : f.mmio) b = std::byte{0};
    } else {
        ::vcpu::detail::store_le(data, acc->reg == 0 ? 0 : f.x[acc->reg & 31u]);
    }
    mmio_trap m{};
    m.address = gpa;
    m.size = acc->width;
    m.dir = load ? direction::in : direction::out;
    m.data = data;
    m.reg = acc->reg;
    m.sign_extend = acc->sign_extend;
    m.insn_length = acc->length;
    m.gva = t.stval;
    visit(m);
}

/// A virtual-instruction trap (scause 22): CSR accesses become `csr_access`
/// (old value answered into rd, like KVM's `csr_insn`), WFI becomes `halt`.
template <class Visitor>
constexpr void decode_virtual_instruction(const hs_trap& t, Visitor& visit) noexcept {
    // stval holds the instruction bits when the hardware provides them
    // (privileged spec, "Supervisor Trap Value (stval) Register"), else 0.
    const std::uint32_t bits =
        t.stval != 0 && t.stval <= 0xffffffffu ? static_cast<std::uint32_t>(t.stval) : t.fetched_insn;
    if (bits == insn::wfi) {
        halt h{};
        visit(h);
        return;
    }
    if (const auto op = insn::decode_csr(bits); op && t.frame != nullptr) {
        hs_guest_frame& f = *t.frame;
        const std::uint64_t src = op->immediate ? op->rs1 : (op->rs1 == 0 ? 0 : f.x[op->rs1 & 31u]);
        csr_access e{};
        e.id = op->csr;
        e.new_value = op->new_value(src);
        e.write_mask = op->write_mask(src);
        e.dir = e.write_mask != 0 ? direction::out : direction::in;
        e.value = e.new_value;
        if (op->rd != 0) e.result = answer_slot(&f.x[op->rd & 31u]);
        e.gpr = op->rd;
        visit(e);
        return;
    }
    virtual_instruction v{bits, insn::length_of(bits), t.sepc};
    visit(v);
}

} // namespace detail

/// Decodes one HS-mode trap from a guest and hands the typed exit to `visit`
/// (exactly once). Interrupts become `external_interrupt` (vector = interrupt
/// code: 5 timer, 9 external, 1 software, 12 guest external), ecalls from
/// VS-mode become SBI exits (arguments from `frame`, answers into its a0/a1),
/// guest page faults become `mmio_trap` or `nested_page_fault`, virtual
/// instructions `csr_access`/`halt`/`virtual_instruction`, other defined
/// exceptions `guest_exception`, and reserved codes `unknown`.
template <class Visitor>
constexpr void decode(const hs_trap& t, Visitor&& visit) noexcept {
    namespace ec = exception_code;
    const std::uint64_t code = t.scause & ~scause_interrupt;
    if ((t.scause & scause_interrupt) != 0) {
        namespace ic = interrupt_code;
        switch (code) {
        case ic::s_software: case ic::vs_software: case ic::s_timer: case ic::vs_timer:
        case ic::s_external: case ic::vs_external: case ic::s_guest_external:
        case ic::counter_overflow: {
            external_interrupt e{static_cast<std::uint32_t>(code)};
            visit(e);
            return;
        }
        default: {
            unknown u{t.scause, t.stval};
            visit(u);
            return;
        }
        }
    }
    switch (code) {
    case ec::ecall_vs: {
        if (t.frame == nullptr) {
            detail::malformed(visit, malformed_exit::why::encoding, t.scause, 0);
            return;
        }
        auto& x = t.frame->x;
        const std::array<std::uint64_t, 6> args{x[10], x[11], x[12], x[13], x[14], x[15]};
        const std::uint64_t ext = x[17];
        // Legacy extensions return only a0 (SBI spec chapter 5): a1 is kept.
        const answer_slot ret1 = ext <= sbi::ext::legacy_last ? answer_slot{} : answer_slot(&x[11]);
        detail::decode_sbi(ext, x[16], args, answer_slot(&x[10]), ret1, visit);
        return;
    }
    case ec::insn_guest_page_fault:
    case ec::load_guest_page_fault:
    case ec::store_guest_page_fault:
        detail::decode_guest_page_fault(t, code, visit);
        return;
    case ec::virtual_insn:
        detail::decode_virtual_instruction(t, visit);
        return;
    case ec::insn_misaligned: case ec::insn_access_fault: case ec::illegal_insn:
    case ec::breakpoint: case ec::load_misaligned: case ec::load_access_fault:
    case ec::store_misaligned: case ec::store_access_fault: case ec::ecall_u:
    case ec::ecall_hs: case ec::ecall_m: case ec::insn_page_fault: case ec::load_page_fault:
    case ec::store_page_fault: case ec::software_check: case ec::hardware_error: {
        guest_exception g{code, t.stval, t.sepc};
        visit(g);
        return;
    }
    default: {
        unknown u{t.scause, t.stval};
        visit(u);
        return;
    }
    }
}

} // namespace vcpu::riscv64
