#pragma once
/// \file
/// x86-64 boot states (`CpuInitFor` models): real mode, the flat 32-bit
/// protected mode of the Linux boot protocol, 64-bit long mode with
/// identity-mapped page tables built on the host, and the CPUID / MSR steps
/// a minimal KVM VMM performs before booting Linux (the host-supported CPUID
/// plus the KVM signature leaf 0x40000000; IA32_MISC_ENABLE with fast strings).

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/init.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace vcpu::x86_64 {

namespace detail {
/// A present, accessed code or data segment with base 0.
[[nodiscard]] constexpr segment flat_segment(std::uint16_t selector, std::uint8_t type,
                                             std::uint8_t dpl, bool db, bool l) noexcept {
    segment s{};
    s.base = 0;
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = type;
    s.present = 1;
    s.dpl = dpl;
    s.db = db ? 1 : 0;
    s.s = 1;
    s.l = l ? 1 : 0;
    s.g = 1;
    return s;
}

template <class Cpu>
[[nodiscard]] result<void> set_data_segments(Cpu& cpu, const segment& d) noexcept {
    for (const auto& r : {ds, es, fs, gs, ss})
        if (auto e = cpu.set(r, d); !e) return e;
    return ok();
}
} // namespace detail

/// Real mode at `cs:ip` (base = cs * 16), data segments at 0, RFLAGS reset
/// value (SDM Vol. 3A §9.1.1). For 16-bit boot code and tiny test guests.
struct real_mode {
    std::uint16_t cs_selector = 0;
    std::uint16_t ip = 0x1000;
    std::uint16_t sp = 0;

    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        auto sr = cpu.hal().template modify<sregs_block>();
        if (!sr) return sr.err();
        auto& s = **sr;
        auto seg16 = [](std::uint16_t sel, std::uint8_t type) {
            segment x{};
            x.base = std::uint64_t{sel} << 4;
            x.limit = 0xffff;
            x.selector = sel;
            x.type = type;
            x.present = 1;
            x.s = 1;
            return x;
        };
        s.cs = seg16(cs_selector, segment_type::code_xr_accessed);
        s.ds = s.es = s.fs = s.gs = s.ss = seg16(0, segment_type::data_rw_accessed);
        s.cr0 = cr0_bits::et.bits();
        s.efer = 0;
        auto gr = cpu.hal().template modify<regs_block>();
        if (!gr) return gr.err();
        auto& g = **gr;
        g = regs_layout{};
        g.rip = ip;
        g.rsp = sp;
        g.rflags = rflags_bits::reset_value;
        return ok();
    }
};

/// Flat 32-bit protected mode as the Linux x86 boot protocol's 32-bit entry
/// wants it (Documentation/arch/x86/boot.rst, "32-bit Boot Protocol"): CS and
/// DS/ES/SS are 4 GiB flat segments (base 0, limit ~0, G=1, D/B=1) with the
/// `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) selectors, CR0.PE=1, paging
/// off, interrupts off, RIP = the protected-mode kernel (0x100000) and RSI =
/// `boot_params` (0x10000); EBP, EDI and EBX are zero.
struct flat_protected_mode {
    std::uint64_t entry = 0x100000;
    std::uint64_t boot_params = 0x10000;

    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        auto sr = cpu.hal().template modify<sregs_block>();
        if (!sr) return sr.err();
        auto& s = **sr;
        s.cs = detail::flat_segment(0x10, segment_type::code_xr_accessed, 0, true, false);
        s.ds = s.es = s.fs = s.gs = s.ss =
            detail::flat_segment(0x18, segment_type::data_rw_accessed, 0, true, false);
        s.cr0 = (s.cr0 | cr0_bits::pe.bits()) & ~cr0_bits::pg.bits();
        s.efer = 0;
        auto gr = cpu.hal().template modify<regs_block>();
        if (!gr) return gr.err();
        auto& g = **gr;
        g = regs_layout{};
        g.rip = entry;
        g.rsi = boot_params;
        g.rflags = rflags_bits::reset_value;
        return ok();
    }
};

/// Page-table entry bits (SDM Vol. 3A §4.5, Tables 4-14 to 4-19).
namespace pte {
inline constexpr std::uint64_t present = 1u << 0;
inline constexpr std::uint64_t writable = 1u << 1;
inline constexpr std::uint64_t user = 1u << 2;
inline constexpr std::uint64_t large = 1u << 7; ///< PS: 2 MiB page in a PDE
} // namespace pte

/// Writes identity-mapping 4-level page tables at `tables` (4 KiB aligned):
/// one PML4, one PDPT and one page directory per GiB, 2 MiB pages covering
/// `[0, gib GiB)`. Needs `(2 + gib) * 4096` bytes of guest memory.
template <std::size_t N>
[[nodiscard]] result<void> build_identity_map(basic_guest_memory<N>& mem, std::uint64_t tables,
                                              unsigned gib, bool user) noexcept {
    if ((tables & 0xfff) != 0) return error{"build page tables", EINVAL, "table address not 4 KiB aligned"};
    if (gib == 0 || gib > 512) return error{"build page tables", EINVAL, "1..512 GiB can be mapped"};
    const std::uint64_t flags = pte::present | pte::writable | (user ? pte::user : 0);
    const std::uint64_t pml4 = tables, pdpt = tables + 0x1000, pd0 = tables + 0x2000;
    // Check the whole area first so a failure writes nothing.
    if (mem.at(tables, (2 + std::uint64_t{gib}) * 0x1000).empty())
        return error{"build page tables", EFAULT, "tables do not fit in guest memory"};
    std::array<std::byte, 0x1000> zero{};
    for (std::uint64_t p = 0; p < 2 + gib; ++p)
        if (auto e = mem.write(tables + p * 0x1000, zero); !e) return e;
    if (auto e = mem.write_le(pml4, pdpt | flags); !e) return e;
    for (unsigned g = 0; g < gib; ++g) {
        const std::uint64_t pd = pd0 + std::uint64_t{g} * 0x1000;
        if (auto e = mem.write_le(pdpt + 8 * g, pd | flags); !e) return e;
        for (unsigned i = 0; i < 512; ++i) {
            const std::uint64_t addr = (std::uint64_t{g} << 30) | (std::uint64_t{i} << 21);
            if (auto e = mem.write_le(pd + 8 * i, addr | flags | pte::large); !e) return e;
        }
    }
    return ok();
}

/// 64-bit long mode with paging on, identity-mapped with 2 MiB pages over the
/// first `map_gib` GiB (SDM Vol. 3A §10.8.5 "Initializing IA-32e Mode").
/// With `user = true` the guest starts at CPL3 (CS/SS DPL 3, RFLAGS.IOPL = 3
/// so port I/O is allowed, pages user-accessible).
template <std::size_t N = 8>
struct long_mode {
    basic_guest_memory<N>* memory = nullptr; ///< where the page tables go
    std::uint64_t entry = 0x100000;
    std::uint64_t stack = 0;
    std::uint64_t tables = 0x9000; ///< PML4; PDPT and PDs follow
    unsigned map_gib = 1;
    bool user = false;

    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        if (memory == nullptr) return error{"long mode init", EINVAL, "no guest memory given"};
        if (auto e = build_identity_map(*memory, tables, map_gib, user); !e) return e;
        auto sr = cpu.hal().template modify<sregs_block>();
        if (!sr) return sr.err();
        auto& s = **sr;
        const std::uint8_t dpl = user ? 3 : 0;
        s.cs = detail::flat_segment(static_cast<std::uint16_t>(0x08 | dpl),
                                    segment_type::code_xr_accessed, dpl, false, true);
        s.ds = s.es = s.fs = s.gs = s.ss = detail::flat_segment(
            static_cast<std::uint16_t>(0x10 | dpl), segment_type::data_rw_accessed, dpl, true, false);
        s.cr3 = tables;
        s.cr4 = cr4_bits::pae.bits();
        s.cr0 = cr0_bits::pe.bits() | cr0_bits::mp.bits() | cr0_bits::et.bits() |
                cr0_bits::ne.bits() | cr0_bits::wp.bits() | cr0_bits::pg.bits();
        s.efer = efer_bits::lme.bits() | (std::uint64_t{1} << efer_bits::lma.lsb);
        auto gr = cpu.hal().template modify<regs_block>();
        if (!gr) return gr.err();
        auto& g = **gr;
        g = regs_layout{};
        g.rip = entry;
        g.rsp = stack;
        g.rflags = rflags_bits::reset_value | (user ? rflags_bits::iopl.bits(3) : 0);
        return ok();
    }
};

/// KVM's paravirtual CPUID signature leaf (Documentation/virt/kvm/x86/cpuid.rst).
inline constexpr std::uint32_t kvm_cpuid_signature = 0x40000000;
inline constexpr std::uint32_t kvm_cpuid_features = 0x40000001;

// ---------------------------------------------------------------------------
// HAL operations x86-64 boot states need beyond moving registers
// ---------------------------------------------------------------------------

/// Named step: the HAL vCPU reports the CPUID leaves the host can offer a
/// guest (KVM: `KVM_GET_SUPPORTED_CPUID`), filling `out` and returning how
/// many entries it wrote.
template <class V>
concept ReportsSupportedCpuid = requires(const V& v, std::span<cpuid_entry> out) {
    { v.supported_cpuid(out) } noexcept -> std::same_as<result<std::size_t>>;
};

/// Named step: the HAL vCPU installs the guest's CPUID table (KVM:
/// `KVM_SET_CPUID2`).
template <class V>
concept SetsCpuid = requires(V& v, std::span<const cpuid_entry> in) {
    { v.set_cpuid(in) } noexcept -> std::same_as<result<void>>;
};

/// **CpuidHal** — the x86-64 HAL operations beyond the `HalFor` concept:
/// what `cpuid_setup` (and so `linux_boot_state`) calls on `cpu.hal()`. A
/// HAL without them still runs x86-64 guests; only these boot states need
/// them, and each reports the missing step by name.
template <class V>
concept CpuidHal = ReportsSupportedCpuid<V> && SetsCpuid<V>;

/// A CPUID hook that changes nothing.
struct keep_cpuid {
    constexpr void operator()(std::span<cpuid_entry>, std::size_t&) const noexcept {}
};

/// Hides `function`/`index` pairs from the guest (a ready-made hook).
struct hide_leaf {
    std::uint32_t function = 0;
    constexpr void operator()(std::span<cpuid_entry> e, std::size_t& n) const noexcept {
        std::size_t w = 0;
        for (std::size_t i = 0; i < n; ++i)
            if (e[i].function != function) e[w++] = e[i];
        n = w;
    }
};

/// CPUID as the minimal C VMM sets it: what `KVM_GET_SUPPORTED_CPUID` offers,
/// plus the KVM signature leaf 0x40000000 ("KVMKVMKVM") and features leaf
/// 0x40000001 when the host list lacks them, leaf 1 EBX[31:24] = `apic_id`,
/// leaf 1 ECX[31] "hypervisor present" (unless `hypervisor` is false);
/// then `hook(entries, count)` may hide or change leaves before
/// `KVM_SET_CPUID2`. Needs a HAL vCPU that models `CpuidHal`.
///
/// The hypervisor bit: `KVM_GET_SUPPORTED_CPUID` leaves it clear and every VMM sets it (QEMU,
/// kvmtool, Firecracker). Linux looks at the KVM leaves only when it is set; without it a Linux
/// guest has no kvm-clock (it fell back to jiffies after a failed PIT calibration in the nested
/// machine), no paravirtual EOI, spinlocks or TLB flush, and writes port 0x80 for I/O delays.
template <class Hook = keep_cpuid>
struct cpuid_setup {
    std::uint32_t apic_id = 0;
    [[no_unique_address]] Hook hook{}; // an empty hook (the default) takes no space
    bool hypervisor = true;            ///< set CPUID.01H:ECX[31]

    static constexpr std::size_t max_entries = 256;

    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        using hal_vcpu = std::remove_cvref_t<decltype(cpu.hal())>;
        static_assert(ReportsSupportedCpuid<hal_vcpu>,
                      "x86_64::cpuid_setup: the HAL vCPU does not model ReportsSupportedCpuid: it "
                      "needs `supported_cpuid(std::span<cpuid_entry>) const noexcept -> "
                      "result<std::size_t>`");
        static_assert(SetsCpuid<hal_vcpu>,
                      "x86_64::cpuid_setup: the HAL vCPU does not model SetsCpuid: it needs "
                      "`set_cpuid(std::span<const cpuid_entry>) noexcept -> result<void>`");
        std::array<cpuid_entry, max_entries> buf{};
        auto got = cpu.hal().supported_cpuid(std::span<cpuid_entry>(buf.data(), max_entries - 2));
        if (!got) return got.err();
        std::size_t n = *got;
        bool have_sig = false, have_feat = false;
        for (std::size_t i = 0; i < n; ++i) {
            auto& e = buf[i];
            if (e.function == kvm_cpuid_signature) have_sig = true;
            if (e.function == kvm_cpuid_features) have_feat = true;
            if (e.function == 1) {
                e.ebx = (e.ebx & 0x00ffffffu) | (apic_id << 24);
                if (hypervisor) e.ecx |= 1u << 31;
            }
        }
        if (!have_sig) {
            // "KVMKVMKVM\0\0\0" in EBX, ECX, EDX; EAX = highest leaf.
            buf[n++] = cpuid_entry{kvm_cpuid_signature, 0, 0, kvm_cpuid_features,
                                   0x4b4d564b, 0x564b4d56, 0x0000004d, {}};
        }
        if (!have_feat) buf[n++] = cpuid_entry{kvm_cpuid_features, 0, 0, 0, 0, 0, 0, {}};
        hook(std::span<cpuid_entry>(buf.data(), n), n);
        if (n > max_entries) return error{"cpuid setup", E2BIG, "hook grew the CPUID list"};
        return cpu.hal().set_cpuid(std::span<const cpuid_entry>(buf.data(), n));
    }
};

/// IA32_MISC_ENABLE with fast-string operation enabled, as that VMM writes it.
struct misc_enable_fast_strings {
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        return cpu.set(ia32_misc_enable, misc_enable_bits::fast_strings.bits());
    }
};

/// The minimal C VMM's whole x86-64 CPU hook: flat protected mode at the
/// Linux 32-bit entry, host CPUID + KVM leaves, fast strings.
[[nodiscard]] inline auto linux_boot_state(std::uint32_t apic_id = 0,
                                           std::uint64_t entry = 0x100000,
                                           std::uint64_t boot_params = 0x10000) noexcept {
    return init_sequence(flat_protected_mode{entry, boot_params}, cpuid_setup<>{apic_id, {}},
                         misc_enable_fast_strings{});
}

} // namespace vcpu::x86_64
