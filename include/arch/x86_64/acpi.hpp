#pragma once
/// \file
/// A minimal set of ACPI tables for an x86 PC guest (ACPI Specification
/// 6.5, chapter 5 "ACPI Software Programming Model"): an RSDP in the BIOS
/// area 0xE0000..0xFFFFF where §5.2.5.1 tells the OS to search, an RSDT
/// and an XSDT listing a FADT (whose `PM_TMR_BLK` names the ACPI PM timer
/// port) and, optionally, a MADT with one Processor Local APIC per CPU and
/// the I/O APIC. The FADT points at an empty DSDT (a header with no AML)
/// so the table set is complete. All checksums are correct (§5.2.5.3,
/// §5.2.6: every byte of the table sums to 0 mod 256).
///
/// `write_acpi_tables` builds everything in a host buffer, then writes it
/// with one bounds-checked `basic_guest_memory` write. Setup-path code: no
/// exceptions, no allocation.

#include <arch/x86_64/mptable.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

namespace vcpu::x86_64::acpi {

static_assert(std::endian::native == std::endian::little,
              "ACPI tables are built from host structs: little-endian hosts only");

/// Root System Description Pointer, ACPI 2.0+ form (ACPI 6.5 §5.2.5.3,
/// Table 5.3). Every field is naturally aligned; `packed` only stops the
/// 64-bit `xsdt_address` from padding the struct to 40 bytes.
struct [[gnu::packed]] rsdp {
    std::array<char, 8> signature;       ///< "RSD PTR "
    std::uint8_t checksum;               ///< over the first 20 bytes
    std::array<char, 6> oem_id;  ///< OEM id, space-padded
    std::uint8_t revision;               ///< 2 for ACPI 2.0+
    std::uint32_t rsdt_address;  ///< physical address of the RSDT
    std::uint32_t length;                ///< 36
    std::uint64_t xsdt_address;  ///< physical address of the XSDT
    std::uint8_t extended_checksum;      ///< over all 36 bytes
    std::array<std::uint8_t, 3> reserved;  ///< 0
};
static_assert(sizeof(rsdp) == 36 && offsetof(rsdp, checksum) == 8 && offsetof(rsdp, revision) == 15 &&
              offsetof(rsdp, rsdt_address) == 16 && offsetof(rsdp, length) == 20 &&
              offsetof(rsdp, xsdt_address) == 24 && offsetof(rsdp, extended_checksum) == 32);

/// System Description Table header (ACPI 6.5 §5.2.6, Table 5.4).
struct sdt_header {
    std::array<char, 4> signature;  ///< table signature ("FACP", "APIC", "DSDT", ...)
    std::uint32_t length;          ///< whole table, header included
    std::uint8_t revision;  ///< table revision
    std::uint8_t checksum;         ///< whole table sums to 0
    /// @{
    /// OEM id, OEM table id and revision, ASL compiler (creator) id and revision.
    std::array<char, 6> oem_id;
    std::array<char, 8> oem_table_id;
    std::uint32_t oem_revision;
    std::array<char, 4> creator_id;
    std::uint32_t creator_revision;
    /// @}
};
static_assert(std::is_standard_layout_v<sdt_header> && sizeof(sdt_header) == 36 &&
              offsetof(sdt_header, length) == 4 && offsetof(sdt_header, checksum) == 9 &&
              offsetof(sdt_header, oem_table_id) == 16 && offsetof(sdt_header, creator_id) == 28);

/// Generic Address Structure (ACPI 6.5 §5.2.3.2, Table 5.1).
struct [[gnu::packed]] generic_address {
    std::uint8_t address_space_id;  ///< 0 system memory, 1 system I/O, ...
    std::uint8_t register_bit_width;  ///< width of the register in bits
    std::uint8_t register_bit_offset;  ///< bit offset of the register
    std::uint8_t access_size;  ///< 1 byte, 2 word, 3 dword, 4 qword access
    std::uint64_t address;  ///< address in that space
};
static_assert(sizeof(generic_address) == 12);

/// Fixed ACPI Description Table, revision 6 layout (ACPI 6.5 §5.2.9,
/// Table 5.9; 276 bytes). Packed because several fields (IAPC_BOOT_ARCH at
/// 109, X_FIRMWARE_CTRL at 132, the GAS fields) are not naturally aligned.
struct [[gnu::packed]] fadt {
    sdt_header header;                   ///< "FACP"
    std::uint32_t firmware_ctrl;         ///< FACS (0: none)
    /// @{
    /// Fields named as Table 5.9 names them (lower case): PM1/PM2/GPE blocks and lengths, SCI, SMI command, latencies, century register, boot flags, reset register, 64-bit X_ forms.
    std::uint32_t dsdt;
    std::uint8_t reserved0;
    std::uint8_t preferred_pm_profile;
    std::uint16_t sci_int;
    std::uint32_t smi_cmd;
    std::uint8_t acpi_enable;
    std::uint8_t acpi_disable;
    std::uint8_t s4bios_req;
    std::uint8_t pstate_cnt;
    std::uint32_t pm1a_evt_blk;
    std::uint32_t pm1b_evt_blk;
    std::uint32_t pm1a_cnt_blk;
    std::uint32_t pm1b_cnt_blk;
    std::uint32_t pm2_cnt_blk;
    std::uint32_t pm_tmr_blk;            ///< the PM timer's port
    std::uint32_t gpe0_blk;
    std::uint32_t gpe1_blk;
    std::uint8_t pm1_evt_len;
    std::uint8_t pm1_cnt_len;
    std::uint8_t pm2_cnt_len;
    std::uint8_t pm_tmr_len;             ///< 4
    std::uint8_t gpe0_blk_len;
    std::uint8_t gpe1_blk_len;
    std::uint8_t gpe1_base;
    std::uint8_t cst_cnt;
    std::uint16_t p_lvl2_lat;
    std::uint16_t p_lvl3_lat;
    std::uint16_t flush_size;
    std::uint16_t flush_stride;
    std::uint8_t duty_offset;
    std::uint8_t duty_width;
    std::uint8_t day_alrm;
    std::uint8_t mon_alrm;
    std::uint8_t century;
    std::uint16_t iapc_boot_arch;
    std::uint8_t reserved1;
    std::uint32_t flags;
    generic_address reset_reg;
    std::uint8_t reset_value;
    std::uint16_t arm_boot_arch;
    std::uint8_t fadt_minor_version;
    std::uint64_t x_firmware_ctrl;
    std::uint64_t x_dsdt;
    generic_address x_pm1a_evt_blk;
    generic_address x_pm1b_evt_blk;
    generic_address x_pm1a_cnt_blk;
    generic_address x_pm1b_cnt_blk;
    generic_address x_pm2_cnt_blk;
    generic_address x_pm_tmr_blk;
    generic_address x_gpe0_blk;
    generic_address x_gpe1_blk;
    generic_address sleep_control_reg;
    generic_address sleep_status_reg;
    std::uint64_t hypervisor_vendor_identity;
    /// @}
};
static_assert(sizeof(fadt) == 276);
static_assert(offsetof(fadt, dsdt) == 40 && offsetof(fadt, sci_int) == 46 && offsetof(fadt, pm_tmr_blk) == 76 &&
              offsetof(fadt, pm_tmr_len) == 91 && offsetof(fadt, iapc_boot_arch) == 109 &&
              offsetof(fadt, flags) == 112 && offsetof(fadt, fadt_minor_version) == 131 &&
              offsetof(fadt, x_dsdt) == 140 && offsetof(fadt, x_pm_tmr_blk) == 208 &&
              offsetof(fadt, hypervisor_vendor_identity) == 268);

/// MADT header fields after the SDT header (ACPI 6.5 §5.2.12, Table 5.19).
struct madt_header {
    sdt_header header;                   ///< "APIC"
    std::uint32_t local_apic_address;  ///< physical address of every CPU's local APIC
    std::uint32_t flags;                 ///< bit 0 PCAT_COMPAT: 8259s present
};
static_assert(std::is_standard_layout_v<madt_header> && sizeof(madt_header) == 44);

/// Processor Local APIC structure (ACPI 6.5 §5.2.12.2, Table 5.22).
struct madt_local_apic {
    std::uint8_t type;                   ///< 0
    std::uint8_t length;                 ///< 8
    std::uint8_t processor_uid;  ///< ACPI processor UID
    std::uint8_t apic_id;  ///< the processor's local APIC id
    std::uint32_t flags;                 ///< bit 0 Enabled
};
static_assert(std::is_standard_layout_v<madt_local_apic> && sizeof(madt_local_apic) == 8);

/// I/O APIC structure (ACPI 6.5 §5.2.12.3, Table 5.24).
struct madt_io_apic {
    std::uint8_t type;                   ///< 1
    std::uint8_t length;                 ///< 12
    std::uint8_t io_apic_id;  ///< I/O APIC id
    std::uint8_t reserved;  ///< 0
    std::uint32_t address;  ///< physical address of the I/O APIC registers
    std::uint32_t gsi_base;  ///< first global system interrupt it serves
};
static_assert(std::is_standard_layout_v<madt_io_apic> && sizeof(madt_io_apic) == 12);

/// Constants of the tables (ACPI 6.5 sections as noted).
inline constexpr std::uint64_t bios_area = 0xe0000;      ///< §5.2.5.1: search 0xE0000..0xFFFFF
inline constexpr std::uint64_t bios_area_end = 0x100000;  ///< one past the end of that area
inline constexpr std::uint64_t rsdp_align = 16;          ///< §5.2.5.1: on a 16-byte boundary
inline constexpr std::uint8_t rsdp_revision = 2;         ///< Table 5.3: 2 = ACPI 2.0+
inline constexpr std::size_t rsdp_v1_bytes = 20;         ///< the part the first checksum covers
inline constexpr std::uint8_t rsdt_revision = 1;         ///< §5.2.7
inline constexpr std::uint8_t xsdt_revision = 1;         ///< §5.2.8
inline constexpr std::uint8_t fadt_revision = 6;         ///< Table 5.9 "Major Version"
inline constexpr std::uint8_t fadt_minor = 5;            ///< ACPI 6.5
inline constexpr std::uint8_t dsdt_revision = 2;         ///< §5.2.11.1: 2 = 64-bit AML integers
inline constexpr std::uint8_t madt_revision = 5;         ///< Table 5.19 for ACPI 6.x
inline constexpr std::uint32_t madt_pcat_compat = 1u << 0; ///< Table 5.20
inline constexpr std::uint8_t madt_type_local_apic = 0;  ///< Table 5.21
inline constexpr std::uint8_t madt_type_io_apic = 1;  ///< Table 5.21
inline constexpr std::uint32_t madt_lapic_enabled = 1u << 0; ///< Table 5.23
inline constexpr std::uint16_t boot_arch_legacy_devices = 1u << 0; ///< Table 5.11
inline constexpr std::uint16_t boot_arch_8042 = 1u << 1;  ///< Table 5.11: an 8042 keyboard controller is present
inline constexpr std::uint32_t fadt_wbinvd = 1u << 0;    ///< Table 5.10
inline constexpr std::uint32_t fadt_tmr_val_ext = 1u << 8; ///< 32-bit PM timer (left clear: 24 bits)
inline constexpr std::uint8_t pm_tmr_len = 4;            ///< Table 5.9 PM_TMR_LEN
inline constexpr std::size_t max_table_bytes = 4096;     ///< everything written fits in one page
inline constexpr unsigned max_cpus = 254;                ///< 8-bit APIC ids, one left for the I/O APIC

/// What to describe.
struct acpi_options {
    unsigned cpus = 1;                            ///< local APIC ids 0 .. cpus-1
    std::uint16_t pm_timer_port = 0xb008;         ///< FADT PM_TMR_BLK (QEMU PIIX4: 0xb000 + 8)
    std::uint16_t sci_irq = 9;                    ///< FADT SCI_INT (QEMU PIIX4: IRQ 9)
    bool madt = true;                             ///< also write a MADT
    std::uint32_t local_apic_address = mp::local_apic_base;  ///< MADT local APIC address
    std::uint32_t io_apic_address = mp::io_apic_base;  ///< MADT I/O APIC address
    std::uint64_t rsdp_address = 0xf0000;         ///< in 0xE0000..0xFFFFF, 16-byte aligned
};

/// Where the tables went (guest physical; 0 for a table not written).
struct acpi_layout {
    /// @{
    /// Address of each table (0 when not written).
    std::uint64_t rsdp = 0, rsdt = 0, xsdt = 0, fadt = 0, dsdt = 0, madt = 0;
    /// @}
    std::uint64_t end = 0; ///< one past the last byte written
};

/// Sum of `bytes` mod 256 (a table is valid when the sum is 0).
[[nodiscard]] constexpr std::uint8_t byte_sum(std::span<const std::byte> bytes) noexcept {
    std::uint8_t s = 0;
    for (auto b : bytes) s = static_cast<std::uint8_t>(s + std::to_integer<std::uint8_t>(b));
    return s;
}

namespace detail {
inline constexpr std::array<char, 6> oem_id{'V', 'C', 'P', 'U', ' ', ' '};
inline constexpr std::array<char, 8> oem_table_id{'V', 'C', 'P', 'U', 'V', 'M', 'M', ' '};
inline constexpr std::array<char, 4> creator_id{'V', 'C', 'P', 'U'};

[[nodiscard]] constexpr sdt_header header(const char (&sig)[5], std::uint32_t length, std::uint8_t revision) noexcept {
    sdt_header h{};
    for (int i = 0; i < 4; ++i) h.signature[i] = sig[i];
    h.length = length;
    h.revision = revision;
    h.oem_id = oem_id;
    h.oem_table_id = oem_table_id;
    h.oem_revision = 1;
    h.creator_id = creator_id;
    h.creator_revision = 1;
    return h;
}

/// Copies `v` into `buf` at `off`.
template <class T>
void put(std::span<std::byte> buf, std::size_t off, const T& v) noexcept {
    std::memcpy(buf.data() + off, &v, sizeof(T));
}
/// Sets the byte at `checksum_at` so `[off, off+len)` sums to 0.
inline void seal(std::span<std::byte> buf, std::size_t off, std::size_t len, std::size_t checksum_at) noexcept {
    buf[checksum_at] = std::byte{0};
    buf[checksum_at] = static_cast<std::byte>(0x100 - byte_sum(buf.subspan(off, len)));
}
} // namespace detail

/// Writes RSDP, RSDT, XSDT, FADT, DSDT and (when `o.madt`) MADT into `mem`,
/// starting at `o.rsdp_address`, each table 16-byte aligned, in that order.
/// Errors ("write ACPI tables"): the RSDP address is not 16-byte aligned or
/// the tables do not end inside 0xE0000..0xFFFFF; `cpus` is 0 or above 254;
/// any guest-memory write error. A failing check writes nothing.
template <std::size_t N>
[[nodiscard]] result<acpi_layout> write_acpi_tables(basic_guest_memory<N>& mem, const acpi_options& o) noexcept {
    constexpr const char* op = "write ACPI tables";
    if (o.cpus == 0 || o.cpus > max_cpus) return error{op, EINVAL, "CPU count must be 1..254"};
    if (o.rsdp_address % rsdp_align != 0) return error{op, EINVAL, "RSDP address is not 16-byte aligned"};
    if (o.rsdp_address < bios_area || o.rsdp_address >= bios_area_end)
        return error{op, EINVAL, "RSDP address is outside 0xE0000..0xFFFFF (ACPI 6.5 5.2.5.1)"};

    auto align16 = [](std::size_t v) { return (v + 15) & ~std::size_t{15}; };
    const bool madt = o.madt;
    const std::size_t rsdt_entries = madt ? 2 : 1;
    // Offsets inside the buffer (buffer byte 0 = rsdp_address).
    const std::size_t rsdt_off = align16(sizeof(rsdp));
    const std::size_t rsdt_len = sizeof(sdt_header) + 4 * rsdt_entries;
    const std::size_t xsdt_off = align16(rsdt_off + rsdt_len);
    const std::size_t xsdt_len = sizeof(sdt_header) + 8 * rsdt_entries;
    const std::size_t fadt_off = align16(xsdt_off + xsdt_len);
    const std::size_t dsdt_off = align16(fadt_off + sizeof(fadt));
    const std::size_t dsdt_len = sizeof(sdt_header);
    const std::size_t madt_off = align16(dsdt_off + dsdt_len);
    const std::size_t madt_len = sizeof(madt_header) + o.cpus * sizeof(madt_local_apic) + sizeof(madt_io_apic);
    const std::size_t total = madt ? madt_off + madt_len : dsdt_off + dsdt_len;
    static_assert(sizeof(madt_header) + max_cpus * sizeof(madt_local_apic) + sizeof(madt_io_apic) + 0x200 <=
                  max_table_bytes, "the table buffer holds the largest MADT");
    if (total > bios_area_end - o.rsdp_address) return error{op, ENOSPC, "tables do not fit below 1 MiB"};

    std::array<std::byte, max_table_bytes> buf{};
    const std::span<std::byte> b(buf);
    const auto at = [&](std::size_t off) { return static_cast<std::uint32_t>(o.rsdp_address + off); };
    acpi_layout out{};
    out.rsdp = o.rsdp_address;
    out.rsdt = at(rsdt_off);
    out.xsdt = at(xsdt_off);
    out.fadt = at(fadt_off);
    out.dsdt = at(dsdt_off);
    out.madt = madt ? at(madt_off) : 0;
    out.end = o.rsdp_address + total;

    // RSDT and XSDT: the FADT first, then the MADT.
    detail::put(b, rsdt_off, detail::header("RSDT", static_cast<std::uint32_t>(rsdt_len), rsdt_revision));
    detail::put(b, xsdt_off, detail::header("XSDT", static_cast<std::uint32_t>(xsdt_len), xsdt_revision));
    const std::array<std::uint32_t, 2> entries{at(fadt_off), at(madt_off)};
    for (std::size_t i = 0; i < rsdt_entries; ++i) {
        detail::put(b, rsdt_off + sizeof(sdt_header) + 4 * i, entries[i]);
        detail::put(b, xsdt_off + sizeof(sdt_header) + 8 * i, std::uint64_t{entries[i]});
    }
    detail::seal(b, rsdt_off, rsdt_len, rsdt_off + offsetof(sdt_header, checksum));
    detail::seal(b, xsdt_off, xsdt_len, xsdt_off + offsetof(sdt_header, checksum));

    // FADT: the PM timer, the DSDT, legacy devices and an i8042.
    fadt f{};
    f.header = detail::header("FACP", sizeof(fadt), fadt_revision);
    f.dsdt = at(dsdt_off);
    f.x_dsdt = at(dsdt_off);
    f.sci_int = o.sci_irq;
    f.pm_tmr_blk = o.pm_timer_port;
    f.pm_tmr_len = pm_tmr_len;
    f.iapc_boot_arch = boot_arch_legacy_devices | boot_arch_8042;
    f.flags = fadt_wbinvd; // TMR_VAL_EXT clear: the timer is 24 bits
    f.fadt_minor_version = fadt_minor;
    detail::put(b, fadt_off, f);
    detail::seal(b, fadt_off, sizeof(fadt), fadt_off + offsetof(sdt_header, checksum));

    // DSDT: a definition block with no AML in it.
    detail::put(b, dsdt_off, detail::header("DSDT", static_cast<std::uint32_t>(dsdt_len), dsdt_revision));
    detail::seal(b, dsdt_off, dsdt_len, dsdt_off + offsetof(sdt_header, checksum));

    if (madt) {
        madt_header m{};
        m.header = detail::header("APIC", static_cast<std::uint32_t>(madt_len), madt_revision);
        m.local_apic_address = o.local_apic_address;
        m.flags = madt_pcat_compat;
        detail::put(b, madt_off, m);
        std::size_t p = madt_off + sizeof(madt_header);
        for (unsigned i = 0; i < o.cpus; ++i, p += sizeof(madt_local_apic))
            detail::put(b, p, madt_local_apic{madt_type_local_apic, sizeof(madt_local_apic), static_cast<std::uint8_t>(i),
                                              static_cast<std::uint8_t>(i), madt_lapic_enabled});
        // The I/O APIC takes the first id after the CPUs, as the MP table does.
        detail::put(b, p, madt_io_apic{madt_type_io_apic, sizeof(madt_io_apic), static_cast<std::uint8_t>(o.cpus), 0,
                                       o.io_apic_address, 0});
        detail::seal(b, madt_off, madt_len, madt_off + offsetof(sdt_header, checksum));
    }

    rsdp r{};
    r.signature = {'R', 'S', 'D', ' ', 'P', 'T', 'R', ' '};
    r.oem_id = detail::oem_id;
    r.revision = rsdp_revision;
    r.rsdt_address = at(rsdt_off);
    r.length = sizeof(rsdp);
    r.xsdt_address = at(xsdt_off);
    detail::put(b, 0, r);
    detail::seal(b, 0, rsdp_v1_bytes, offsetof(rsdp, checksum));
    detail::seal(b, 0, sizeof(rsdp), offsetof(rsdp, extended_checksum));

    VCPU_TRY_VOID(mem.write(o.rsdp_address, b.first(total)));
    return out;
}

} // namespace vcpu::x86_64::acpi
