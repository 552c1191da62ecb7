#pragma once
/// \file
/// Exit kinds common to every architecture.
///
/// Each kind is its own value type; a handler is chosen by the type it
/// accepts, so nothing is squeezed through one lossy enum. Payloads that the
/// guest or the VMM reads or writes (port I/O data, MMIO data, answers to
/// reads) are *views* into the HAL's exit record (for KVM: the mapped
/// `kvm_run` area): they are valid until the vCPU runs again.
///
/// Decoders bounds-check every guest-controlled size, count and offset before
/// a view is formed; a record that fails a check decodes to `malformed_exit`.

#include <vcpu/config.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace vcpu {

/// Direction of a guest access, seen from the guest.
enum class direction : std::uint8_t {
    in,  ///< guest reads (port IN, MMIO load, MRS, CSR read): the VMM answers
    out, ///< guest writes (port OUT, MMIO store, MSR, CSR write)
};

/// The type of a 64-bit slot inside a kernel exit record (`__u64`, which is
/// `unsigned long long` on every Linux architecture). Answers are written
/// through pointers of this type so no aliasing rule is bent.
using record_u64 = unsigned long long;
static_assert(sizeof(record_u64) == 8);

/// Where a handler's answer goes inside an exit record: a 64-bit slot whose
/// declared type is either `__u64` (`unsigned long long`: x86 `hypercall.ret`,
/// `msr.data`) or `unsigned long` (the RISC-V `riscv_sbi.ret[]` and
/// `riscv_csr.ret_value` fields of `struct kvm_run`). Both are 8 bytes on
/// every LP64 KVM host, but they are distinct types, so the slot remembers
/// which one it points at and stores through a pointer of exactly that type:
/// no aliasing rule is bent and it stays usable in constant expressions.
class answer_slot {
public:
    constexpr answer_slot() noexcept = default;
    /// A null slot: answers are dropped.
    constexpr answer_slot(std::nullptr_t) noexcept {}
    /// A slot of type `__u64` (x86 `hypercall.ret`, `msr.data`; an AArch64 saved X register).
    constexpr answer_slot(record_u64* p) noexcept : ull_(p) {}
    /// A slot of type `unsigned long` (RISC-V `riscv_sbi.ret[]`, `riscv_csr.ret_value`).
    constexpr answer_slot(unsigned long* p) noexcept : ul_(p) {}

    /// True when the slot points somewhere.
    [[nodiscard]] constexpr explicit operator bool() const noexcept {
        return ull_ != nullptr || ul_ != nullptr;
    }
    /// Stores `v` (truncated to `unsigned long` on a non-LP64 host); a null
    /// slot ignores it.
    constexpr void store(std::uint64_t v) const noexcept {
        if (ull_ != nullptr) *ull_ = v;
        else if (ul_ != nullptr) *ul_ = static_cast<unsigned long>(v);
    }
    /// The value the slot holds now (0 for a null slot).
    [[nodiscard]] constexpr std::uint64_t load() const noexcept {
        if (ull_ != nullptr) return *ull_;
        if (ul_ != nullptr) return *ul_;
        return 0;
    }
    friend constexpr bool operator==(const answer_slot&, const answer_slot&) = default;

private:
    record_u64* ull_ = nullptr;
    unsigned long* ul_ = nullptr;
};

namespace detail {
/// Little-endian load of up to 8 bytes (all KVM hosts we model are LE).
[[nodiscard]] constexpr std::uint64_t load_le(std::span<const std::byte> b) noexcept {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < b.size() && i < 8; ++i)
        v |= static_cast<std::uint64_t>(std::to_integer<std::uint8_t>(b[i])) << (8 * i);
    return v;
}
constexpr void store_le(std::span<std::byte> b, std::uint64_t v) noexcept {
    for (std::size_t i = 0; i < b.size() && i < 8; ++i)
        b[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
} // namespace detail

/// Port I/O (x86 `in`/`out`/`ins`/`outs`). `count > 1` for `rep ins/outs`:
/// `data` then holds `count` consecutive items of `size` bytes, all in the
/// order the guest issues them. For `in`, the handler fills `data`.
struct port_io {
    std::uint16_t port = 0;  ///< port number
    std::uint8_t size = 0;  ///< bytes per item: 1, 2 or 4
    std::uint32_t count = 0; ///< items (>= 1)
    direction dir = direction::out;  ///< `in`: the guest reads and the handler fills `data`; `out`: the guest wrote `data`
    std::span<std::byte> data; ///< size * count bytes inside the exit record

    /// True for `in`/`ins`: the handler answers with `set` or `fill`.
    [[nodiscard]] constexpr bool is_in() const noexcept { return dir == direction::in; }
    /// True for `out`/`outs`: `data` holds what the guest wrote.
    [[nodiscard]] constexpr bool is_out() const noexcept { return dir == direction::out; }
    /// Item `i` (default: the first) as an integer.
    [[nodiscard]] constexpr std::uint32_t value(std::uint32_t i = 0) const noexcept {
        return i < count ? static_cast<std::uint32_t>(detail::load_le(data.subspan(i * size, size)))
                         : 0;
    }
    /// Sets item `i` (for `in`); out-of-range `i` is ignored.
    constexpr void set(std::uint32_t v, std::uint32_t i = 0) const noexcept {
        if (i < count) detail::store_le(data.subspan(i * size, size), v);
    }
    /// Sets every item (for `rep ins` from a device that returns one value).
    constexpr void fill(std::uint32_t v) const noexcept {
        for (std::uint32_t i = 0; i < count; ++i) set(v, i);
    }
};

/// Memory-mapped I/O: a guest access to a physical address no memory slot
/// backs. For reads the handler fills `data`.
struct mmio {
    std::uint64_t address = 0; ///< guest physical address
    std::uint8_t size = 0;     ///< 1..8 bytes
    direction dir = direction::out;  ///< `in`: a load the handler answers; `out`: a store
    std::span<std::byte> data; ///< `size` bytes inside the exit record

    /// True for a load: answer with `set`.
    [[nodiscard]] constexpr bool is_read() const noexcept { return dir == direction::in; }
    /// True for a store: `value()` is what the guest wrote.
    [[nodiscard]] constexpr bool is_write() const noexcept { return dir == direction::out; }
    /// The `size` bytes of `data` as a little-endian integer (the stored value, or the answer so far).
    [[nodiscard]] constexpr std::uint64_t value() const noexcept { return detail::load_le(data); }
    /// Answers a load: stores the low `size` bytes of `v` into `data`, little-endian.
    constexpr void set(std::uint64_t v) const noexcept { detail::store_le(data, v); }
};

/// A coalesced MMIO/PIO write the kernel buffered without exiting (KVM
/// `KVM_REGISTER_COALESCED_MMIO`). Delivered, in guest order, before the exit
/// that follows them.
struct coalesced_write {
    std::uint64_t address = 0; ///< GPA, or port number when `pio`
    std::uint32_t size = 0;    ///< 1..8
    bool pio = false;  ///< true: a port write (`KVM_REGISTER_COALESCED_MMIO` with `KVM_COALESCED_MMIO_PIO`), false: MMIO
    /// Copied out of the ring: the kernel reuses a slot once it is consumed.
    std::array<std::byte, 8> bytes{};
    /// The `size` bytes written.
    [[nodiscard]] constexpr std::span<const std::byte> data() const noexcept {
        return std::span<const std::byte>(bytes).first(size <= 8 ? size : 8);
    }
    /// The bytes written as a little-endian integer.
    [[nodiscard]] constexpr std::uint64_t value() const noexcept { return detail::load_le(data()); }
};

/// A system-register / MSR / CSR access the hypervisor traps.
/// `id` is the architecture's encoding: x86 MSR index, AArch64
/// (Op0,Op1,CRn,CRm,Op2) packed as KVM's `ARM64_SYS_REG` index
/// (`aarch64::sys_encoding::index()`: op0<<14|op1<<11|CRn<<7|CRm<<3|op2, which
/// sorts like the ARM ARM's encoding order), RISC-V CSR number.
/// For reads the handler calls `answer`; `fail` asks the hypervisor to inject
/// the architecture's fault (x86 \#GP, AArch64 UNDEF, RISC-V illegal insn).
struct sysreg {
    std::uint64_t id = 0;  ///< the register: MSR index, AArch64 `sys_encoding::index()`, or CSR number
    direction dir = direction::in;  ///< `in`: the guest reads (answer it), `out`: the guest writes `value`
    std::uint64_t value = 0;           ///< value written (dir == out)
    answer_slot result;                ///< where a read's answer goes
    std::uint8_t* fault = nullptr;     ///< set to 1 to fail the access; may be null
    std::uint8_t gpr = 0xff;           ///< destination/source GPR when known, else 0xff
    std::uint32_t reason = 0;          ///< x86: KVM_MSR_EXIT_REASON_* bits; else 0

    /// True for a read (MRS, RDMSR, CSR read): answer with `answer`.
    [[nodiscard]] constexpr bool is_read() const noexcept { return dir == direction::in; }
    /// Answers a read: stores `v` where the guest's destination register gets it.
    constexpr void answer(std::uint64_t v) const noexcept { result.store(v); }
    /// Makes the access fault in the guest (only where the record has a fault flag: x86 MSR exits).
    constexpr void fail() const noexcept {
        if (fault != nullptr) *fault = 1;
    }
};

/// A hypercall the kernel forwards (x86 `KVM_EXIT_HYPERCALL`, AArch64 HVC/SMC
/// not handled as PSCI, RISC-V SBI extension not otherwise decoded).
struct hypercall {
    std::uint64_t nr = 0;                ///< function / call number
    std::array<std::uint64_t, 6> args{}; ///< arguments in calling-convention order
    answer_slot ret;                     ///< where the return value goes; may be null
    answer_slot ret2;                    ///< second return value (SBI a1); may be null
    /// Sets the return value the guest sees (x86 RAX, SBI a0, SMCCC X0).
    constexpr void answer(std::uint64_t r) const noexcept { ret.store(r); }
    /// Sets both return values (SBI `error`/`value` in a0/a1, SMCCC X0/X1).
    constexpr void answer(std::uint64_t r, std::uint64_t r2) const noexcept {
        ret.store(r);
        ret2.store(r2);
    }
};

/// The guest halted (x86 HLT, AArch64 WFI/WFE, RISC-V WFI) with nothing for
/// the kernel to wake it with.
struct halt {
    bool wait_for_event = false; ///< AArch64 WFE rather than WFI
};

/// The vCPU can no longer run: x86 triple fault, or the kernel gave up.
struct shutdown {};

/// A platform-level request (PSCI SYSTEM_OFF/RESET, SBI SRST, crash...).
struct system_event {
    /// What the platform asked for.
    enum class kind : std::uint8_t { power_off, reset, crash, wakeup, suspend, other };
    kind what = kind::other;  ///< the request, from `raw_type`
    std::uint32_t raw_type = 0;              ///< KVM_SYSTEM_EVENT_* or arch code
    std::array<std::uint64_t, 16> data{};    ///< arch-specific reason words (all KVM gives)
    std::uint8_t ndata = 0;  ///< valid words in `data`
};

/// A request to start another vCPU (PSCI CPU_ON, SBI HSM hart_start).
struct cpu_up {
    std::uint64_t target = 0;  ///< MPIDR (AArch64) or hart id (RISC-V) or APIC id
    std::uint64_t entry = 0;   ///< guest physical entry point
    std::uint64_t context = 0; ///< value for the new CPU's first argument register
    answer_slot ret;           ///< status returned to the caller; may be null
    /// Stores the status returned to the caller of CPU_ON / hart_start.
    constexpr void answer(std::uint64_t r) const noexcept { ret.store(r); }
};

/// The calling vCPU stops itself (PSCI CPU_OFF, SBI HSM hart_stop).
struct cpu_down {};

/// Access to guest-physical memory the hypervisor could not satisfy
/// (second-stage fault that is not emulated MMIO).
struct nested_page_fault {
    std::uint64_t address = 0; ///< guest physical address
    std::uint64_t size = 0;    ///< bytes, 0 when unknown
    /// @{
    /// Kind of the faulting access (none set when the record does not say).
    bool read = false, write = false, exec = false;
    /// @}
    std::uint64_t syndrome = 0; ///< arch detail: ESR_EL2, scause, KVM flags
};

/// A host interrupt arrived while the guest ran (bare-metal HALs).
struct external_interrupt {
    std::uint32_t vector = 0;  ///< interrupt: GIC INTID (AArch64 EL2) or RISC-V interrupt code (5 timer, 9 external, ...)
};

/// The HAL returned to userspace without a guest exit: another thread kicked
/// the vCPU (KVM: a signal or `immediate_exit` interrupted `KVM_RUN`).
/// `requests` holds the request bits the kickers posted since the last
/// interrupted exit; they are taken (cleared) by this exit, so every request
/// is reported exactly once. 0 when something else interrupted the run (a
/// signal not sent by a kicker).
struct interrupted {
    std::uint32_t requests = 0;  ///< request bits posted by the kickers since the last interrupted exit
};

/// The hardware refused to enter the guest (VM-entry failure, bad state).
struct fail_entry {
    std::uint64_t hardware_reason = 0; ///< e.g. VMX exit qualification / SVM code
    std::uint32_t cpu = 0;             ///< host CPU it happened on
};

/// The kernel hit an internal error running the guest.
struct internal_error {
    std::uint32_t suberror = 0;           ///< KVM_INTERNAL_ERROR_*
    std::span<const record_u64> data;     ///< bounded by the record's `ndata`
};

/// A debug exit (breakpoint, single step, watchpoint).
/// x86: `exception` vector, `pc`, `status` = DR6, `control` = DR7.
/// AArch64: `status` = ESR_EL2 (HSR), `address` = FAR.
struct debug {
    std::uint64_t pc = 0;  ///< guest PC of the debug event (x86)
    std::uint32_t exception = 0;  ///< x86: exception vector (1 = \#DB, 3 = \#BP); AArch64: ESR_EL2.EC
    std::uint64_t status = 0;  ///< x86: DR6; AArch64: ESR_EL2
    std::uint64_t control = 0;  ///< x86: DR7; else 0
    std::uint64_t address = 0;  ///< AArch64: FAR_EL2 (the watchpoint address); else 0
};

/// The dirty-page ring of this vCPU is full (`KVM_EXIT_DIRTY_RING_FULL`):
/// harvest it and reset it before running again.
struct dirty_ring_full {};

/// An exit reason the decoder does not know, with the raw code.
struct unknown {
    std::uint64_t raw = 0;  ///< the exit reason (KVM `exit_reason`, ESR_EL2.EC, or scause)
    std::uint64_t detail = 0; ///< hardware exit reason when the HAL reports one
};

/// An exit record that fails validation: a size, count or offset that would
/// reach outside the record. The access is never performed.
struct malformed_exit {
    /// What failed validation.
    enum class why : std::uint8_t {
        io_size,          ///< port access size not 1, 2 or 4
        io_count,         ///< zero items
        io_out_of_bounds, ///< data_offset + size*count past the mapping
        mmio_size,        ///< MMIO length 0 or > 8
        ndata,            ///< internal-error ndata larger than its array
        coalesced_ring,   ///< coalesced ring indices out of range
        event_ndata,      ///< system-event ndata larger than its array
        encoding,         ///< instruction/syndrome that cannot be decoded
    };
    why reason = why::io_size;  ///< the check that failed
    std::uint64_t raw_reason = 0; ///< the record's exit reason
    std::uint64_t value = 0;      ///< the offending value
    /// A one-line message for the failed check.
    [[nodiscard]] constexpr std::string_view describe() const noexcept {
        switch (reason) {
        case why::io_size: return "port I/O size is not 1, 2 or 4";
        case why::io_count: return "port I/O count is zero";
        case why::io_out_of_bounds: return "port I/O data lies outside the kvm_run mapping";
        case why::mmio_size: return "MMIO length is 0 or larger than 8";
        case why::ndata: return "internal-error ndata exceeds its array";
        case why::coalesced_ring: return "coalesced MMIO ring index out of range";
        case why::event_ndata: return "system-event ndata exceeds its array";
        case why::encoding: return "undecodable instruction or syndrome";
        }
        return "malformed exit";
    }
};

namespace detail {
/// Hands `visit` a `malformed_exit{w, raw, value}`: the one way every decoder
/// (the `kvm_run` prologue and each arch's `kvm_run`, ESR_EL2 and scause
/// decoders) reports a record that fails a check.
template <class Visitor>
constexpr void malformed(Visitor& visit, malformed_exit::why w, std::uint64_t raw,
                         std::uint64_t value) noexcept {
    malformed_exit m{w, raw, value};
    visit(m);
}
} // namespace detail

/// What a handler tells the run loop: go on running the guest, or return this
/// exit to `run()`'s caller. A handler may also return `void` (= resume).
enum class action : std::uint8_t { resume, stop };

} // namespace vcpu
