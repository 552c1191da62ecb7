// Fuzzes the kvm-unit-tests machine's devices (vcpu/devices: fw_cfg, isa-debug-exit, pc-testdev
// ports / IRQ lines / MMIO window, ACPI PM timer with a fake clock) behind the compile-time port
// and MMIO buses (vcpu/bus.hpp), and the ACPI table writer (arch/x86_64/acpi.hpp).
//
// Input: a header — u8 CPU count, u8 ACPI flags (bit 0 MADT, bit 1 RSDP address off by 4), u16
// RSDP slot (0xd0000 + 16 * (slot mod 0x3800), so below, inside and above the BIOS area), u16 PM
// timer port, u16 SCI, u32 local APIC and u32 I/O APIC addresses, u32 RAM MiB and u16 max CPUs
// for fw_cfg, u64 clock start — then accesses, each u8 kind (port read / port write / rep port
// read / MMIO read / MMIO write / clock advance), u8 port or address selector, u8 size, u32
// value, u16 extra.
// Invariants: every read fills exactly `size` bytes per item (bytes after them untouched) with a
// value masked to that size; unmapped ports and addresses read all ones. fw_cfg (QEMU
// docs/specs/fw_cfg.rst): a 16-bit selector write picks a key and rewinds, each byte read
// returns the item's next byte — "QEMU" for key 0 after a fresh select, the RAM size, CPU counts,
// UUID, the big-endian file directory and the files — never running past the item, and 0 past
// its end or for no item; other accesses read all ones / are dropped. isa-debug-exit: every write
// stops the run loop, `code()` is the first value written (masked to its size; the device's
// documented "first write wins") and `exit_status()` is (code << 1 | 1) & 0xff; reads are 0.
// pc-testdev: the scratch register follows a byte-lane model (0xe0+k and 0xe8+k, cut at the
// register's end) and a read right after a write at the same port and size returns the written
// bytes; a 4-byte write to 0xe4 flushes the page; IRQ port 0x2000+n sets line n to value != 0;
// the 64 KiB MMIO window is RAM-like (1..8-byte little-endian, cut at its end). PM timer (ACPI
// 6.5 §4.8.3.3): reads equal the 3.579545 MHz tick count since construction masked to 24 bits,
// the tick count never decreases. ACPI tables: on success every checksum (RSDP 20 and 36 bytes,
// each table) sums to 0, every pointer (RSDT/XSDT entries, FADT DSDT/X_DSDT, RSDP) names a table
// whose whole length lies in the area written, which ends below 1 MiB; the MADT lists one local
// APIC per CPU and the I/O APIC; nothing outside that area changes; a failure ("write ACPI
// tables") happens exactly for a bad CPU count, misaligned or out-of-area RSDP or no room, and
// writes nothing.
#include "guest_ram.hpp" // all_equal

#include <arch/x86_64/acpi.hpp>
#include <vcpu/bus.hpp>
#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/devices/fw_cfg.hpp>
#include <vcpu/devices/isa_debug_exit.hpp>
#include <vcpu/devices/pc_testdev.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/memory.hpp>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>

namespace {
namespace dev = vcpu::devices;
namespace acpi = vcpu::x86_64::acpi;

struct fake_clock {
    const std::uint64_t* ns;
    std::uint64_t operator()() const noexcept { return *ns; }
};
struct events {
    std::optional<std::uint64_t> flushed;
    std::optional<std::pair<unsigned, bool>> irq;
};
struct flush_rec {
    events* e;
    void operator()(std::uint64_t gpa) const noexcept { e->flushed = gpa; }
};
struct irq_rec {
    events* e;
    void operator()(unsigned line, bool level) const noexcept { e->irq = {line, level}; }
};
using testdev = dev::pc_testdev_ports<flush_rec>;
using testirq = dev::pc_testdev_irq<irq_rec>;
using pm_timer = dev::acpi_pm_timer<fake_clock>;
using pio_bus = vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<dev::pc_testdev_port, dev::pc_testdev_port_count, testdev>,
                               vcpu::range<dev::isa_debug_exit_port, dev::isa_debug_exit_ports, dev::isa_debug_exit>,
                               vcpu::range<dev::fw_cfg_port, dev::fw_cfg_ports, dev::fw_cfg>,
                               vcpu::range<dev::pc_testdev_irq_port, dev::pc_testdev_irq_lines, testirq>,
                               vcpu::range<dev::acpi_pm_timer_port, dev::acpi_pm_timer_ports, pm_timer>>;
using iomem_bus =
    vcpu::mmio_bus<vcpu::unmapped::all_ones, vcpu::range<dev::pc_testdev_iomem_base, dev::pc_testdev_iomem_size, dev::pc_testdev_iomem>>;

constexpr std::uint16_t ports[] = {0x510, 0x511, 0x510, 0x511, 0x50f, 0x512, 0xf4, 0xf5, 0xf6, 0xf7, 0xf3, 0xf8,
                                   0xe0,  0xe1,  0xe2,  0xe3,  0xe4,  0xe5,  0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb,
                                   0xdf,  0xec,  0x2000, 0x2001, 0x2017, 0x2018, 0x1fff, 0xb008, 0xb009, 0xb00a,
                                   0xb00b, 0xb007, 0xb00c};

constexpr std::array<std::string_view, 3> file_names{"etc/test", "opt/org.vcpu/empty", "etc/e820"};
const std::array<std::uint8_t, 300> file0 = [] {
    std::array<std::uint8_t, 300> a{};
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::uint8_t>(i * 7 + 3);
    return a;
}();
const std::array<std::uint8_t, 20> file2{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
std::span<const std::uint8_t> file_bytes(std::size_t i) {
    return i == 0 ? std::span<const std::uint8_t>(file0) : i == 1 ? std::span<const std::uint8_t>() : std::span(file2);
}

/// The fw_cfg item under `key` as the harness models it from the spec (not from the device).
struct fw_model {
    std::uint64_t ram = 0;
    std::uint16_t cpus = 1, max_cpus = 0;
    std::array<std::uint8_t, 16> uuid{};
    std::uint64_t size(std::uint16_t key) const {
        switch (key) {
        case 0x00: case 0x01: return 4;
        case 0x02: return 16;
        case 0x03: return 8;
        case 0x04: case 0x05: case 0x0f: return 2;
        case 0x19: return 4 + 64 * file_names.size();
        default: break;
        }
        if (key >= 0x20 && key < 0x20 + file_names.size()) return file_bytes(key - 0x20).size();
        return 0;
    }
    std::uint8_t byte(std::uint16_t key, std::uint64_t off) const {
        if (off >= size(key)) return 0;
        auto le = [&](std::uint64_t v) { return static_cast<std::uint8_t>(v >> (8 * off)); };
        switch (key) {
        case 0x00: return static_cast<std::uint8_t>("QEMU"[off]);
        case 0x01: return le(1);
        case 0x02: return uuid[off];
        case 0x03: return le(ram);
        case 0x04: return le(1);
        case 0x05: return le(cpus);
        case 0x0f: return le(max_cpus != 0 ? max_cpus : cpus);
        case 0x19: {
            std::array<std::uint8_t, 4 + 64 * file_names.size()> d{};
            d[3] = static_cast<std::uint8_t>(file_names.size());
            for (std::size_t i = 0; i < file_names.size(); ++i) {
                auto* e = &d[4 + 64 * i];
                const auto n = file_bytes(i).size();
                e[2] = static_cast<std::uint8_t>(n >> 8), e[3] = static_cast<std::uint8_t>(n);
                e[5] = static_cast<std::uint8_t>(0x20 + i);
                std::memcpy(e + 8, file_names[i].data(), file_names[i].size());
            }
            return d[off];
        }
        default: return file_bytes(key - 0x20)[off];
        }
    }
};

constexpr std::size_t acpi_lo = 0xe0000, acpi_size = 0x20000;
constexpr std::byte acpi_fill{0xa5};

template <class T>
T le_at(std::span<const std::byte> m, std::uint64_t off) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(m[off + i])} << (8 * i);
    return static_cast<T>(v);
}

/// The ACPI writer: success exactly when the inputs are valid, checksums, pointers, contents.
void check_acpi(vcpu_fuzz::input& in) {
    const unsigned cpus = in.get<std::uint8_t>();
    const auto aflags = in.get<std::uint8_t>();
    acpi::acpi_options o;
    o.cpus = cpus;
    o.madt = (aflags & 1) != 0;
    o.rsdp_address = 0xd0000 + 16ull * (in.get<std::uint16_t>() % 0x3800) + ((aflags & 2) != 0 ? 4 : 0);
    o.pm_timer_port = in.get<std::uint16_t>();
    o.sci_irq = in.get<std::uint16_t>();
    o.local_apic_address = in.get<std::uint32_t>();
    o.io_apic_address = in.get<std::uint32_t>();

    // Guest memory: the BIOS area only, between canaries (a write elsewhere fails or shows).
    static std::vector<std::byte> buf(4096 + acpi_size + 4096);
    std::fill(buf.begin(), buf.end(), acpi_fill);
    const std::span<std::byte> area(buf.data() + 4096, acpi_size);
    vcpu::basic_guest_memory<1> mem;
    VCPU_FUZZ_CHECK(mem.add({acpi_lo, area, false}));
    const auto r = acpi::write_acpi_tables(mem, o);
    VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(buf.data(), 4096, acpi_fill) &&
                    vcpu_fuzz::all_equal(buf.data() + 4096 + acpi_size, 4096, acpi_fill));

    // The layout the spec asks for: RSDP, RSDT, XSDT, FADT, DSDT, MADT, each 16-byte aligned.
    auto a16 = [](std::uint64_t v) { return (v + 15) & ~std::uint64_t{15}; };
    const std::uint64_t e = o.madt ? 2 : 1;
    const std::uint64_t dsdt_end = a16(a16(a16(48 + 36 + 4 * e) + 36 + 8 * e) + 276) + 36;
    const std::uint64_t total = o.madt ? a16(dsdt_end) + 44 + 8ull * cpus + 12 : dsdt_end;
    const bool valid = cpus >= 1 && cpus <= 254 && o.rsdp_address % 16 == 0 && o.rsdp_address >= 0xe0000 &&
                       o.rsdp_address < 0x100000 && o.rsdp_address + total <= 0x100000;
    if (!r) {
        vcpu_fuzz::note("acpi: %s", r.err().message().c_str());
        VCPU_FUZZ_CHECK(!valid);
        VCPU_FUZZ_CHECK(std::string_view(r.err().op) == "write ACPI tables" && r.err().code != 0);
        VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(area.data(), area.size(), acpi_fill));
        return;
    }
    VCPU_FUZZ_CHECK(valid);
    VCPU_FUZZ_CHECK(r->rsdp == o.rsdp_address && r->end == o.rsdp_address + total && r->end <= 0x100000);
    const std::uint64_t lo = r->rsdp, hi = r->end;
    const std::span<const std::byte> m(area);
    auto rel = [&](std::uint64_t gpa) { return gpa - acpi_lo; };
    // Nothing outside [lo, hi) changed.
    VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(area.data(), rel(lo), acpi_fill));
    VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(area.data() + rel(hi), acpi_size - rel(hi), acpi_fill));

    // RSDP (§5.2.5.3).
    VCPU_FUZZ_CHECK(std::memcmp(&m[rel(lo)], "RSD PTR ", 8) == 0);
    VCPU_FUZZ_CHECK(acpi::byte_sum(m.subspan(rel(lo), 20)) == 0 && acpi::byte_sum(m.subspan(rel(lo), 36)) == 0);
    VCPU_FUZZ_CHECK(le_at<std::uint8_t>(m, rel(lo) + 15) == 2 && le_at<std::uint32_t>(m, rel(lo) + 20) == 36);
    // A table at `gpa`: its header and whole length inside [lo, hi), signature, checksum 0.
    std::array<std::pair<std::uint64_t, std::uint64_t>, 6> seen{};
    std::size_t nseen = 0;
    auto table = [&](std::uint64_t gpa, const char* sig) -> std::uint64_t {
        VCPU_FUZZ_CHECK(gpa >= lo + 36 && gpa + 36 <= hi);
        const auto len = le_at<std::uint32_t>(m, rel(gpa) + 4);
        VCPU_FUZZ_CHECK(len >= 36 && len <= hi - gpa);
        VCPU_FUZZ_CHECK(std::memcmp(&m[rel(gpa)], sig, 4) == 0);
        VCPU_FUZZ_CHECK(acpi::byte_sum(m.subspan(rel(gpa), len)) == 0);
        for (std::size_t i = 0; i < nseen; ++i)
            VCPU_FUZZ_CHECK(seen[i].first == gpa || gpa + len <= seen[i].first || seen[i].second <= gpa);
        if (nseen < seen.size()) seen[nseen++] = {gpa, gpa + len};
        return len;
    };
    const auto rsdt = le_at<std::uint32_t>(m, rel(lo) + 16);
    const auto xsdt = le_at<std::uint64_t>(m, rel(lo) + 24);
    VCPU_FUZZ_CHECK(rsdt == r->rsdt && xsdt == r->xsdt);
    VCPU_FUZZ_CHECK(table(rsdt, "RSDT") == 36 + 4 * e);
    VCPU_FUZZ_CHECK(table(xsdt, "XSDT") == 36 + 8 * e);
    for (std::uint64_t i = 0; i < e; ++i) {
        const auto p = le_at<std::uint32_t>(m, rel(rsdt) + 36 + 4 * i);
        VCPU_FUZZ_CHECK(le_at<std::uint64_t>(m, rel(xsdt) + 36 + 8 * i) == p);
        if (i == 0) {
            VCPU_FUZZ_CHECK(p == r->fadt && table(p, "FACP") == 276);
            const auto dsdt = le_at<std::uint32_t>(m, rel(p) + 40);
            VCPU_FUZZ_CHECK(le_at<std::uint64_t>(m, rel(p) + 140) == dsdt && dsdt == r->dsdt);
            VCPU_FUZZ_CHECK(table(dsdt, "DSDT") == 36);
            VCPU_FUZZ_CHECK(le_at<std::uint32_t>(m, rel(p) + 76) == o.pm_timer_port);
            VCPU_FUZZ_CHECK(le_at<std::uint16_t>(m, rel(p) + 46) == o.sci_irq);
            VCPU_FUZZ_CHECK((le_at<std::uint32_t>(m, rel(p) + 112) & acpi::fadt_tmr_val_ext) == 0); // 24-bit timer
        } else {
            VCPU_FUZZ_CHECK(p == r->madt && table(p, "APIC") == 44 + 8ull * cpus + 12);
            VCPU_FUZZ_CHECK(le_at<std::uint32_t>(m, rel(p) + 36) == o.local_apic_address);
            std::uint64_t at = rel(p) + 44;
            for (unsigned c = 0; c < cpus; ++c, at += 8)
                VCPU_FUZZ_CHECK(le_at<std::uint8_t>(m, at) == 0 && le_at<std::uint8_t>(m, at + 1) == 8 &&
                                le_at<std::uint8_t>(m, at + 3) == c && (le_at<std::uint32_t>(m, at + 4) & 1) == 1);
            VCPU_FUZZ_CHECK(le_at<std::uint8_t>(m, at) == 1 && le_at<std::uint8_t>(m, at + 1) == 12 &&
                            le_at<std::uint8_t>(m, at + 2) == cpus && le_at<std::uint32_t>(m, at + 4) == o.io_apic_address);
        }
    }
    if (!o.madt) VCPU_FUZZ_CHECK(r->madt == 0);
    vcpu_fuzz::note("acpi: %u CPUs at 0x%llx..0x%llx", cpus, static_cast<unsigned long long>(lo),
                    static_cast<unsigned long long>(hi));
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    enum : std::uint8_t { prd = 0, pwr = 1, prep = 2, mrd = 3, mwr = 4, tick = 5 };
    struct hdr {
        std::uint8_t cpus = 4, aflags = 1;
        std::uint16_t slot = 0x2000; // 0xf0000
        std::uint16_t pm = 0xb008, sci = 9;
        std::uint32_t lapic = 0xfee00000, ioapic = 0xfec00000, ram_mib = 128;
        std::uint16_t max_cpus = 0;
        std::uint64_t clock = 5'000'000'000;
    };
    auto header = [](bytes_out& b, hdr h) {
        b.put(h.cpus).put(h.aflags).put(h.slot).put(h.pm).put(h.sci).put(h.lapic).put(h.ioapic).put(h.ram_mib);
        b.put(h.max_cpus).put(h.clock);
    };
    auto port_sel = [](std::uint16_t port) {
        for (std::uint8_t i = 0; i < sizeof ports / sizeof ports[0]; ++i)
            if (ports[i] == port) return i;
        return std::uint8_t{0};
    };
    auto op = [&](bytes_out& b, std::uint8_t kind, std::uint16_t port, std::uint8_t size, std::uint32_t value,
                  std::uint16_t extra = 0) {
        b.put(kind).put(port_sel(port)).put(static_cast<std::uint8_t>(size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : size - 1));
        b.put(value).put(extra);
    };
    // fw_cfg the way kvm-unit-tests reads it: signature, CPU count, RAM size, then the directory.
    bytes_out fw;
    header(fw, {});
    op(fw, pwr, 0x510, 2, 0x00);
    for (int i = 0; i < 6; ++i) op(fw, prd, 0x511, 1, 0);
    op(fw, pwr, 0x510, 2, 0x05), op(fw, prd, 0x511, 1, 0), op(fw, prd, 0x511, 1, 0), op(fw, prd, 0x511, 1, 0);
    op(fw, pwr, 0x510, 2, 0x03), op(fw, prep, 0x511, 1, 0, 10);
    op(fw, pwr, 0x510, 2, 0x19), op(fw, prep, 0x511, 1, 0, 15), op(fw, prep, 0x510, 1, 0, 15);
    op(fw, pwr, 0x510, 2, 0x20), op(fw, prep, 0x511, 1, 0, 15), op(fw, prd, 0x511, 2, 0), op(fw, pwr, 0x511, 1, 0x20);
    op(fw, pwr, 0x510, 4, 0x01), op(fw, prd, 0x511, 1, 0), op(fw, pwr, 0x510, 2, 0x22), op(fw, prep, 0x511, 1, 0, 15);
    op(fw, pwr, 0x510, 2, 0x80000007), op(fw, prd, 0x511, 1, 0), op(fw, prd, 0x50f, 1, 0), op(fw, prd, 0x512, 4, 0);
    out.add("fw_cfg", fw);
    bytes_out ex;
    header(ex, {.cpus = 1, .aflags = 0});
    op(ex, prd, 0xf4, 4, 0), op(ex, pwr, 0xf4, 4, 0x80), op(ex, pwr, 0xf5, 1, 3), op(ex, prd, 0xf7, 1, 0);
    op(ex, pwr, 0xf3, 1, 1), op(ex, pwr, 0xf8, 2, 1);
    out.add("isa_debug_exit", ex);
    bytes_out td;
    header(td, {.cpus = 254, .slot = 0x2f00});
    op(td, pwr, 0xe0, 4, 0x12345678), op(td, prd, 0xe0, 1, 0), op(td, prd, 0xe1, 2, 0), op(td, pwr, 0xe2, 2, 0xbeef);
    op(td, prd, 0xe0, 4, 0), op(td, pwr, 0xeb, 4, 0xaabbccdd), op(td, prd, 0xe8, 4, 0), op(td, pwr, 0xe4, 4, 0x12345fff);
    op(td, pwr, 0xe4, 2, 0x1000), op(td, prd, 0xe4, 4, 0), op(td, pwr, 0xe9, 1, 0x42), op(td, prd, 0xe1, 1, 0);
    op(td, pwr, 0x2000, 1, 1), op(td, pwr, 0x2017, 1, 0), op(td, pwr, 0x2001, 4, 0x100), op(td, prd, 0x2000, 1, 0);
    op(td, pwr, 0x2018, 1, 1), op(td, prd, 0xec, 2, 0), op(td, prd, 0xdf, 1, 0);
    op(td, mwr, 0, 8, 0x89abcdef, 0), op(td, mrd, 0, 8, 0, 0), op(td, mrd, 0, 2, 0, 2);
    op(td, mwr, 1, 8, 0x11223344, 4), op(td, mrd, 1, 8, 0, 4), op(td, mrd, 2, 4, 0, 3);
    out.add("pc_testdev", td);
    bytes_out pm;
    header(pm, {.cpus = 0, .clock = ~0ull - 2'000'000'000});
    op(pm, prd, 0xb008, 4, 0), op(pm, tick, 0, 1, 1'000'000'000), op(pm, prd, 0xb008, 4, 0);
    op(pm, prd, 0xb009, 1, 0), op(pm, prd, 0xb00a, 2, 0), op(pm, prd, 0xb00b, 4, 0), op(pm, tick, 0, 1, 0xffffffff);
    op(pm, prd, 0xb008, 4, 0), op(pm, pwr, 0xb008, 4, 0), op(pm, tick, 0, 1, 999), op(pm, prd, 0xb008, 2, 0);
    op(pm, prd, 0xb007, 4, 0), op(pm, prd, 0xb00c, 1, 0);
    out.add("pm_timer", pm);
    for (auto [name, h] : {std::pair<const char*, hdr>{"acpi_misaligned", {.aflags = 3}},
                           {"acpi_below_bios_area", {.slot = 0x0100}},
                           {"acpi_no_room", {.cpus = 200, .slot = 0x2ff0}},
                           {"acpi_255_cpus", {.cpus = 255}},
                           {"acpi_no_madt_last_slot", {.aflags = 0, .slot = 0x2ff0}},
                           {"acpi_no_madt_top_fits", {.aflags = 0, .slot = 0x2fe2}},
                           {"fw_cfg_max_cpus", {.ram_mib = 0xffffffff, .max_cpus = 288}}}) {
        bytes_out b;
        header(b, h);
        op(b, pwr, 0x510, 2, 0x0f), op(b, prd, 0x511, 1, 0), op(b, prd, 0x511, 1, 0);
        op(b, pwr, 0x510, 2, 0x03), op(b, prep, 0x511, 1, 0, 9);
        out.add(name, b);
    }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    check_acpi(in);
    const std::uint64_t ram = std::uint64_t{in.get<std::uint32_t>()} << 20;
    const auto max_cpus = in.get<std::uint16_t>();
    std::uint64_t now = in.get<std::uint64_t>();
    fw_model fw;
    fw.ram = ram;
    fw.cpus = static_cast<std::uint16_t>(1 + (max_cpus & 0xff));
    fw.max_cpus = max_cpus;
    for (std::size_t i = 0; i < fw.uuid.size(); ++i) fw.uuid[i] = static_cast<std::uint8_t>(ram >> (i % 8) ^ i);

    events ev;
    pio_bus b(testdev(flush_rec{&ev}), dev::isa_debug_exit{}, dev::fw_cfg(dev::fw_cfg_config{fw.ram, fw.cpus, fw.max_cpus, fw.uuid}),
              testirq(irq_rec{&ev}), pm_timer(fake_clock{&now}));
    auto& fwd = b.get<dev::fw_cfg>();
    for (std::size_t i = 0; i < file_names.size(); ++i)
        VCPU_FUZZ_CHECK(fwd.add_file({file_names[i], std::as_bytes(file_bytes(i))}));
    static auto mmio = std::make_unique<iomem_bus>();
    *mmio = iomem_bus{};
    static std::array<std::uint8_t, dev::pc_testdev_iomem_size> shadow;
    shadow.fill(0);
    const std::uint64_t start = now;
    std::uint64_t last_ticks = 0;

    std::uint16_t key = 0;
    std::uint64_t key_off = 0;
    std::uint32_t scratch = 0;
    std::optional<std::uint32_t> exit_code;
    std::array<std::byte, 4 * 16 + 16> buf{};

    for (int step = 0; step < 512 && in.left() > 0; ++step) {
        const auto kind = in.get<std::uint8_t>() % 6;
        const auto sel = in.get<std::uint8_t>();
        const auto size_sel = in.get<std::uint8_t>();
        auto value = in.get<std::uint32_t>();
        const auto extra = in.get<std::uint16_t>();

        if (kind == 5) { // the clock moves forward (never past 2^64 - 1)
            now += std::min<std::uint64_t>(value * (1ull + (extra & 0xff)), ~0ull - now);
            continue;
        }
        if (kind == 3 || kind == 4) { // MMIO
            const std::uint8_t sz = static_cast<std::uint8_t>(1 + size_sel % 8);
            std::uint64_t off = extra;
            if (sel % 4 == 1) off = dev::pc_testdev_iomem_size - 1 - (extra & 7); // straddles the end
            if (sel % 4 == 2) off = dev::pc_testdev_iomem_size + (extra & 0xff); // past the window
            if (sel % 4 == 3) off = ~0ull - dev::pc_testdev_iomem_base - (extra & 7); // top of the address space
            const std::uint64_t gpa = dev::pc_testdev_iomem_base + off;
            std::fill(buf.begin(), buf.end(), std::byte{0xcc});
            vcpu::mmio io{gpa, sz, kind == 3 ? vcpu::direction::in : vcpu::direction::out, std::span(buf).first(sz)};
            const std::uint64_t v64 = value | std::uint64_t{extra} << 32 | std::uint64_t{sel} << 48;
            if (kind == 4) io.set(v64);
            (void)(*mmio)(io);
            VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(buf.data() + sz, buf.size() - sz, std::byte{0xcc}));
            const std::uint64_t mask = sz == 8 ? ~0ull : (1ull << (8 * sz)) - 1;
            if (kind == 4) {
                for (std::uint64_t i = 0; i < sz && off + i < shadow.size(); ++i) shadow[off + i] = static_cast<std::uint8_t>(v64 >> (8 * i));
                continue;
            }
            VCPU_FUZZ_CHECK(io.value() <= mask);
            if (off >= shadow.size()) {
                VCPU_FUZZ_CHECK(io.value() == mask);
            } else {
                std::uint64_t want = 0;
                for (std::uint64_t i = 0; i < sz && off + i < shadow.size(); ++i) want |= std::uint64_t{shadow[off + i]} << (8 * i);
                VCPU_FUZZ_CHECK(io.value() == want);
            }
            continue;
        }

        const std::uint16_t port = ports[sel % (sizeof ports / sizeof ports[0])];
        const std::uint8_t sz = std::array<std::uint8_t, 3>{1, 2, 4}[size_sel % 3];
        const std::uint32_t mask = sz == 4 ? ~0u : (1u << (8 * sz)) - 1;
        const bool is_read = kind != 1;
        const std::uint32_t count = kind == 2 ? 1 + extra % 16 : 1;
        if (port == dev::fw_cfg_port && !is_read && (value & 0x80000000u) == 0) value &= 0x27; // mostly real keys
        std::fill(buf.begin(), buf.end(), std::byte{0xcc});
        vcpu::port_io io{port, sz, count, is_read ? vcpu::direction::in : vcpu::direction::out,
                         std::span(buf).first(std::size_t{sz} * count)};
        if (!is_read) io.fill(value);
        ev = {};
        const vcpu::action a = b(io);
        const std::uint32_t v = value & mask;
        if (is_read) {
            VCPU_FUZZ_CHECK(vcpu_fuzz::all_equal(buf.data() + std::size_t{sz} * count, buf.size() - std::size_t{sz} * count,
                                                 std::byte{0xcc}));
            for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) <= mask);
        }
        VCPU_FUZZ_CHECK(a == vcpu::action::resume || (!is_read && port >= 0xf4 && port <= 0xf7));

        if (port == 0x510 || port == 0x511) {
            if (!is_read) {
                if (port == 0x510 && sz == 2) key = static_cast<std::uint16_t>(v), key_off = 0;
            } else {
                for (std::uint32_t i = 0; i < count; ++i) {
                    if (sz != 1) {
                        VCPU_FUZZ_CHECK(io.value(i) == mask);
                        continue;
                    }
                    if (key == 0 && key_off < 4) VCPU_FUZZ_CHECK(io.value(i) == static_cast<std::uint8_t>("QEMU"[key_off]));
                    VCPU_FUZZ_CHECK(io.value(i) == fw.byte(key, key_off));
                    if (key_off >= fw.size(key)) VCPU_FUZZ_CHECK(io.value(i) == 0);
                    if (key_off < fw.size(key)) ++key_off;
                }
            }
            VCPU_FUZZ_CHECK(fwd.selected() == key && fwd.item_size(key) == fw.size(key));
        } else if (port >= 0xf4 && port <= 0xf7) {
            auto& d = b.get<dev::isa_debug_exit>();
            if (is_read) {
                for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == 0);
            } else {
                VCPU_FUZZ_CHECK(a == vcpu::action::stop);
                if (!exit_code) exit_code = v;
            }
            VCPU_FUZZ_CHECK(d.exited() == exit_code.has_value());
            if (exit_code) VCPU_FUZZ_CHECK(d.code() == *exit_code && d.exit_status() == static_cast<int>(((*exit_code << 1) | 1) & 0xff));
        } else if (port >= 0xe0 && port <= 0xeb) {
            const unsigned off = port - 0xe0;
            auto lane = [&](unsigned k) {
                const unsigned n = std::min<unsigned>(sz, 4 - k);
                return static_cast<std::uint32_t>(((1ull << (8 * n)) - 1) << (8 * k));
            };
            if (off >= 4 && off < 8) {
                if (is_read) for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == 0);
                if (!is_read && off == 4 && sz == 4) VCPU_FUZZ_CHECK(ev.flushed && *ev.flushed == (v & ~0xfffu));
                else VCPU_FUZZ_CHECK(!ev.flushed);
            } else {
                const unsigned k = off & 3;
                if (is_read) {
                    for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == (scratch & lane(k)) >> (8 * k));
                } else {
                    scratch = (scratch & ~lane(k)) | (static_cast<std::uint32_t>(std::uint64_t{v} << (8 * k)) & lane(k));
                    // Round trip: the same port and size read back what was written (cut at the register's end).
                    VCPU_FUZZ_CHECK(b.read(port, sz) == (v & (lane(k) >> (8 * k))));
                }
                VCPU_FUZZ_CHECK(b.get<testdev>().scratch() == scratch && !ev.flushed);
            }
        } else if (port >= 0x2000 && port <= 0x2017) {
            if (is_read) for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == 0);
            else VCPU_FUZZ_CHECK(ev.irq && ev.irq->first == port - 0x2000u && ev.irq->second == (v != 0));
        } else if (port >= 0xb008 && port <= 0xb00b) {
            const std::uint64_t ticks = dev::pm_timer_ticks(now - start);
            VCPU_FUZZ_CHECK(ticks >= last_ticks); // monotonic
            last_ticks = ticks;
            const std::uint32_t count24 = static_cast<std::uint32_t>(ticks) & 0xffffff;
            VCPU_FUZZ_CHECK(b.get<pm_timer>().count() == count24 && count24 <= 0xffffff);
            if (is_read)
                for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == ((count24 >> (8 * (port - 0xb008))) & mask));
        } else if (is_read) { // unmapped neighbours
            for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == mask);
        }
        if (!(port >= 0x2000 && port <= 0x2017 && !is_read)) VCPU_FUZZ_CHECK(!ev.irq);
    }
    vcpu_fuzz::note("test_machine: key 0x%x offset %llu, scratch 0x%x, exit %s", key, static_cast<unsigned long long>(key_off),
                    scratch, exit_code ? "yes" : "no");
    return 0;
}
