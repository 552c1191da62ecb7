#pragma once
/// \file
/// An Intel MultiProcessor Specification 1.4 table: the MP floating pointer
/// structure (§4.1) followed by an MP configuration table (§4.2) with one
/// processor entry per vCPU (§4.3.1), an ISA bus (§4.3.2), one I/O APIC at
/// 0xfec00000 (§4.3.3), ISA IRQs 0..15 routed to I/O APIC pins 0..15 (§4.3.4,
/// identity, matching KVM's default GSI routing) and ExtINT/NMI on LINT0/LINT1
/// (§4.3.5). With it Linux finds the CPUs and uses the I/O APIC instead of
/// the 8259 PIC ("virtual wire"), which the x86nest kit found necessary for
/// stable timer interrupts.

#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace vcpu::x86_64 {

/// MP spec 1.4 constants.
namespace mp {
inline constexpr std::uint32_t floating_signature = 0x5f504d5f; ///< "_MP_"
inline constexpr std::uint32_t config_signature = 0x504d4350;   ///< "PCMP"
inline constexpr std::uint8_t spec_rev = 4;                    ///< version 1.4
inline constexpr std::uint32_t local_apic_base = 0xfee00000;  ///< default local APIC address
inline constexpr std::uint32_t io_apic_base = 0xfec00000;  ///< default I/O APIC address
inline constexpr std::uint8_t local_apic_version = 0x14;  ///< local APIC version reported in processor entries
inline constexpr std::uint8_t io_apic_version = 0x11;  ///< I/O APIC version reported in its entry
inline constexpr unsigned isa_irqs = 16;  ///< ISA interrupts routed through the I/O APIC (one entry each)
/// Configuration table entry types (MP spec Table 4-3).
enum class entry_type : std::uint8_t { processor = 0, bus = 1, io_apic = 2, io_interrupt = 3, local_interrupt = 4 };
/// Interrupt types of interrupt assignment entries (MP spec Table 4-10).
enum class interrupt_type : std::uint8_t { intr = 0, nmi = 1, smi = 2, extint = 3 };
inline constexpr std::uint8_t cpu_enabled = 0x01;  ///< processor entry flag EN: usable
inline constexpr std::uint8_t cpu_bsp = 0x02;  ///< processor entry flag BP: the bootstrap processor
inline constexpr std::size_t floating_size = 16;  ///< bytes of the MP floating pointer structure
inline constexpr std::size_t header_size = 44;  ///< bytes of the configuration table header
inline constexpr std::size_t processor_size = 20;  ///< bytes of a processor entry
inline constexpr std::size_t small_entry_size = 8;  ///< bytes of a bus, I/O APIC or interrupt entry
/// Bytes `write_mptable` needs for `cpus` processors.
[[nodiscard]] constexpr std::size_t table_bytes(unsigned cpus) noexcept {
    return floating_size + header_size + cpus * processor_size + small_entry_size * (2 + isa_irqs + 2);
}
inline constexpr unsigned max_cpus = 32; ///< keeps the table inside the 1 KiB at 0x9fc00
static_assert(table_bytes(max_cpus) <= 1024);
} // namespace mp

/// Writes the floating pointer at `addr` and the configuration table right
/// after it, for `cpus` processors with local APIC ids 0..cpus-1 (CPU 0 is
/// the BSP). The I/O APIC gets id `cpus`. Errors: EINVAL for 0 or more than
/// `mp::max_cpus` CPUs; guest-memory write errors.
template <std::size_t N>
[[nodiscard]] result<void> write_mptable(basic_guest_memory<N>& mem, std::uint64_t addr, unsigned cpus) noexcept {
    using namespace mp;
    if (cpus == 0 || cpus > max_cpus) return error{"write MP table", EINVAL, "1..32 CPUs supported"};
    if (addr > 0xffffffffu - 1024) return error{"write MP table", EINVAL, "table must lie below 4 GiB"};
    std::array<std::uint8_t, 1024> t{};
    std::size_t n = 0;
    auto u8 = [&](std::uint64_t v) { t[n++] = static_cast<std::uint8_t>(v); };
    auto u16 = [&](std::uint64_t v) { u8(v); u8(v >> 8); };
    auto u32 = [&](std::uint64_t v) { u16(v); u16(v >> 16); };
    auto checksum = [&](std::size_t from, std::size_t to) {
        std::uint8_t s = 0;
        for (std::size_t i = from; i < to; ++i) s = static_cast<std::uint8_t>(s + t[i]);
        return static_cast<std::uint8_t>(-s);
    };
    const std::uint64_t config = addr + floating_size;
    // §4.1 floating pointer: signature, table address, length in 16-byte units, rev, checksum, features.
    u32(floating_signature);
    u32(config);
    u8(1);
    u8(spec_rev);
    u8(0); // checksum, below
    u8(0); // feature byte 1 = 0: a configuration table is present
    u32(0);
    t[10] = checksum(0, floating_size);
    // §4.2 header.
    const std::size_t h = n;
    u32(config_signature);
    u16(0); // base table length, below
    u8(spec_rev);
    u8(0); // checksum, below
    for (char c : {'V', 'C', 'P', 'U', ' ', ' ', ' ', ' '}) u8(static_cast<std::uint8_t>(c));
    for (char c : {'V', 'C', 'P', 'U', '-', 'V', 'M', 'M', ' ', ' ', ' ', ' '}) u8(static_cast<std::uint8_t>(c));
    u32(0); // OEM table pointer
    u16(0); // OEM table size
    u16(cpus + 2 + isa_irqs + 2); // entry count
    u32(local_apic_base);
    u16(0); // extended table length
    u8(0);  // extended table checksum
    u8(0);
    // §4.3.1 processors: family 6 signature, FPU + APIC feature flags.
    for (unsigned i = 0; i < cpus; ++i) {
        u8(static_cast<std::uint8_t>(entry_type::processor));
        u8(i);
        u8(local_apic_version);
        u8(cpu_enabled | (i == 0 ? cpu_bsp : 0));
        u32(0x600);
        u32(0x201);
        u32(0);
        u32(0);
    }
    // §4.3.2 bus 0: ISA.
    u8(static_cast<std::uint8_t>(entry_type::bus));
    u8(0);
    for (char c : {'I', 'S', 'A', ' ', ' ', ' '}) u8(static_cast<std::uint8_t>(c));
    // §4.3.3 the I/O APIC.
    const std::uint8_t ioapic_id = static_cast<std::uint8_t>(cpus);
    u8(static_cast<std::uint8_t>(entry_type::io_apic));
    u8(ioapic_id);
    u8(io_apic_version);
    u8(1); // enabled
    u32(io_apic_base);
    // §4.3.4 ISA IRQ i -> I/O APIC pin i, bus-default polarity and trigger.
    for (unsigned irq = 0; irq < isa_irqs; ++irq) {
        u8(static_cast<std::uint8_t>(entry_type::io_interrupt));
        u8(static_cast<std::uint8_t>(interrupt_type::intr));
        u16(0);
        u8(0);
        u8(irq);
        u8(ioapic_id);
        u8(irq);
    }
    // §4.3.5 ExtINT on LINT0 of the BSP, NMI on LINT1 of every CPU.
    u8(static_cast<std::uint8_t>(entry_type::local_interrupt));
    u8(static_cast<std::uint8_t>(interrupt_type::extint));
    u16(0);
    u8(0);
    u8(0);
    u8(0);
    u8(0);
    u8(static_cast<std::uint8_t>(entry_type::local_interrupt));
    u8(static_cast<std::uint8_t>(interrupt_type::nmi));
    u16(0);
    u8(0);
    u8(0);
    u8(0xff);
    u8(1);
    const std::size_t len = n - h;
    t[h + 4] = static_cast<std::uint8_t>(len);
    t[h + 5] = static_cast<std::uint8_t>(len >> 8);
    t[h + 7] = checksum(h, n);
    return mem.write(addr, std::as_bytes(std::span(t.data(), n)));
}

} // namespace vcpu::x86_64
