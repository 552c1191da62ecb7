#pragma once
/// \file
/// x86-64 KVM ABI mirrors: the register blocks KVM moves for x86 guests,
/// restated so the x86-64 architecture compiles on every host (the host's
/// `<asm/kvm.h>` describes *its* architecture). Field order and sizes follow
/// the Linux x86 KVM API (Documentation/virt/kvm/api.rst, `KVM_GET_REGS`,
/// `KVM_GET_SREGS`, `KVM_GET_VCPU_EVENTS`, `KVM_GET_DEBUGREGS`,
/// `KVM_GET_SUPPORTED_CPUID`, `KVM_GET_MSRS`, `KVM_CAP_SYNC_REGS`).
/// `include/kvm/x86_64.hpp` asserts on x86 hosts that every layout here is
/// identical to the kernel's.

#include <vcpu/config.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace vcpu::x86_64 {

/// `struct kvm_regs`: GPRs in the kernel's order, then RIP and RFLAGS.
struct regs_layout {
    /// @{
    /// The registers, in `kvm_regs` order.
    std::uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    std::uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    std::uint64_t rip, rflags;
    /// @}
};

/// `struct kvm_segment`: a segment register with its hidden descriptor part
/// (SDM Vol. 3A §3.4.5 "Segment Descriptors").
struct segment {
    std::uint64_t base = 0;  ///< linear base address
    std::uint32_t limit = 0;  ///< limit in bytes (KVM expands it by the granularity)
    std::uint16_t selector = 0;  ///< the visible selector
    std::uint8_t type = 0;    ///< descriptor type field (SDM Table 3-1 / 3-2)
    std::uint8_t present = 0; ///< P
    std::uint8_t dpl = 0;     ///< descriptor privilege level
    std::uint8_t db = 0;      ///< D/B: 32-bit default operand size
    std::uint8_t s = 0;       ///< 1 = code/data, 0 = system
    std::uint8_t l = 0;       ///< 64-bit code segment
    std::uint8_t g = 0;       ///< granularity: limit in 4 KiB units
    std::uint8_t avl = 0;  ///< AVL: available to software
    std::uint8_t unusable = 0;  ///< 1: the segment is not usable (a null selector loaded)
    std::uint8_t padding = 0;  ///< ABI padding
    friend constexpr bool operator==(const segment&, const segment&) = default;
};

/// `struct kvm_dtable`: GDTR/IDTR.
struct dtable {
    std::uint64_t base = 0;  ///< linear base address of the table
    std::uint16_t limit = 0;  ///< limit: size in bytes minus 1
    std::uint16_t padding[3] = {};  ///< ABI padding
    friend constexpr bool operator==(const dtable& a, const dtable& b) noexcept {
        return a.base == b.base && a.limit == b.limit;
    }
};

/// Interrupt vectors KVM tracks in `interrupt_bitmap` (`KVM_NR_INTERRUPTS`).
inline constexpr std::size_t nr_interrupts = 256;

/// `struct kvm_sregs`.
struct sregs_layout {
    /// @{
    /// Segment registers, TR, LDTR, GDTR and IDTR.
    segment cs, ds, es, fs, gs, ss;
    segment tr, ldt;
    dtable gdt, idt;
    /// @}
    /// @{
    /// CR0, CR2 (page-fault address), CR3, CR4 and CR8 (TPR).
    std::uint64_t cr0, cr2, cr3, cr4, cr8;
    /// @}
    std::uint64_t efer;  ///< IA32_EFER
    std::uint64_t apic_base;  ///< IA32_APIC_BASE
    std::uint64_t interrupt_bitmap[(nr_interrupts + 63) / 64];  ///< pending external interrupts, one bit per vector (at most one set)
};

/// `struct kvm_vcpu_events`: pending/injected exception, interrupt, NMI, SMI.
struct events_layout {
    struct {
        std::uint8_t injected, nr, has_error_code, pending;
        std::uint32_t error_code;
    } exception;  ///< exception being injected or pending: `nr`, error code
    struct {
        std::uint8_t injected, nr, soft, shadow;
    } interrupt;  ///< interrupt being injected: `nr`, software interrupt, STI/MOV SS shadow
    struct {
        std::uint8_t injected, pending, masked, pad;
    } nmi;  ///< NMI injected, pending, masked
    std::uint32_t sipi_vector;  ///< SIPI vector (valid with `KVM_VCPUEVENT_VALID_SIPI_VECTOR`)
    std::uint32_t flags;  ///< `KVM_VCPUEVENT_VALID_*`: which parts are valid or to be set
    struct {
        std::uint8_t smm, pending, smm_inside_nmi, latched_init;
    } smi;  ///< SMM state: in SMM, SMI pending, inside NMI, INIT latched
    struct {
        std::uint8_t pending;
    } triple_fault;  ///< a triple fault pending (`KVM_CAP_X86_TRIPLE_FAULT_EVENT`)
    std::uint8_t reserved[26];  ///< ABI padding
    std::uint8_t exception_has_payload;  ///< `exception_payload` is valid (`KVM_CAP_EXCEPTION_PAYLOAD`)
    std::uint64_t exception_payload;  ///< the exception's payload: CR2 for \#PF, DR6 bits for \#DB
};

/// `struct kvm_debugregs`: DR0-3, DR6, DR7.
struct debugregs_layout {
    std::uint64_t db[4];  ///< DR0-DR3: breakpoint addresses
    /// @{
    /// DR6 (debug status) and DR7 (debug control).
    std::uint64_t dr6, dr7;
    /// @}
    std::uint64_t flags;  ///< reserved by KVM, 0
    std::uint64_t reserved[9];  ///< ABI padding
};

/// `struct kvm_sync_regs` for x86 (`kvm_run->s.regs` with `KVM_CAP_SYNC_REGS`).
struct sync_regs_layout {
    regs_layout regs;  ///< `kvm_regs`
    sregs_layout sregs;  ///< `kvm_sregs`
    events_layout events;  ///< `kvm_vcpu_events`
};

/// `KVM_SYNC_X86_*` bits of `kvm_run->kvm_valid_regs` / `kvm_dirty_regs`.
enum class sync_bit : std::uint64_t { regs = 1u << 0, sregs = 1u << 1, events = 1u << 2 };

/// `struct kvm_cpuid_entry2`.
struct cpuid_entry {
    std::uint32_t function = 0;  ///< CPUID leaf (EAX input)
    std::uint32_t index = 0;  ///< CPUID subleaf (ECX input), when `flags` says it matters
    std::uint32_t flags = 0; ///< `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (bit 0) etc.
    /// @{
    /// The register values CPUID returns for this leaf.
    std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
    /// @}
    std::uint32_t padding[3] = {};  ///< ABI padding
};

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry applies only to `index`.
inline constexpr std::uint32_t cpuid_flag_significant_index = 1u << 0;

/// `struct kvm_msr_entry`.
struct msr_entry {
    std::uint32_t index = 0;  ///< MSR index
    std::uint32_t reserved = 0;  ///< ABI padding
    std::uint64_t data = 0;  ///< MSR value
};

// Register blocks (see vcpu/registers.hpp): tags naming a layout. The KVM
// HAL maps each to its ioctls and sync bit in include/kvm/x86_64.hpp.

/// GPRs, RIP, RFLAGS (`KVM_GET_REGS`, synced with `KVM_SYNC_X86_REGS`).
struct regs_block {
    /// The struct the HAL loads and stores.
    using layout = regs_layout;
    /// The kernel's struct name (for messages).
    static constexpr std::string_view name = "kvm_regs";
};
/// Segments, control registers, EFER, APIC base (`KVM_GET_SREGS`).
struct sregs_block {
    /// The struct the HAL loads and stores.
    using layout = sregs_layout;
    /// The kernel's struct name (for messages).
    static constexpr std::string_view name = "kvm_sregs";
};
/// Exception/interrupt/NMI/SMI state (`KVM_GET_VCPU_EVENTS`).
struct events_block {
    /// The struct the HAL loads and stores.
    using layout = events_layout;
    /// The kernel's struct name (for messages).
    static constexpr std::string_view name = "kvm_vcpu_events";
};
/// Debug registers (`KVM_GET_DEBUGREGS`; not synced through `kvm_run`).
struct debugregs_block {
    /// The struct the HAL loads and stores.
    using layout = debugregs_layout;
    /// The kernel's struct name (for messages).
    static constexpr std::string_view name = "kvm_debugregs";
};
/// Model-specific registers by index (`KVM_GET_MSRS` / `KVM_SET_MSRS`).
struct msr_bank {
    /// The bank's name (for messages).
    static constexpr std::string_view name = "msr";
};

static_assert(sizeof(regs_layout) == 144 && std::is_standard_layout_v<regs_layout>);
static_assert(sizeof(segment) == 24 && std::is_standard_layout_v<segment>);
static_assert(sizeof(dtable) == 16);
static_assert(sizeof(sregs_layout) == 312 && std::is_standard_layout_v<sregs_layout>);
static_assert(sizeof(events_layout) == 64 && offsetof(events_layout, exception_payload) == 56);
static_assert(sizeof(debugregs_layout) == 128);
static_assert(sizeof(sync_regs_layout) == 520);
static_assert(sizeof(cpuid_entry) == 40);
static_assert(sizeof(msr_entry) == 16);

/// `struct kvm_debug_exit_arch` for x86.
struct debug_exit_layout {
    std::uint32_t exception;  ///< exception vector (1 \#DB, 3 \#BP)
    std::uint32_t pad;  ///< ABI padding
    /// @{
    /// RIP of the event, DR6 and DR7 at the exit.
    std::uint64_t pc, dr6, dr7;
    /// @}
};
static_assert(sizeof(debug_exit_layout) == 32);

} // namespace vcpu::x86_64
