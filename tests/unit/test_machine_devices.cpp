// The QEMU test-machine devices kvm-unit-tests guests expect, each on its own and on a port/MMIO
// bus: fw_cfg (selector/data, fixed items, file directory), isa-debug-exit (status convention),
// pc-testdev (scratch register of 1/2/4 bytes, flush port, IRQ lines, MMIO window), the ACPI PM
// timer (3.579545 MHz, 24 bits, pinned clock) and the ACPI tables (checksums, pointers, fields).
#include <doctest/doctest.h>

#include <arch/x86_64/acpi.hpp>
#include <vcpu/bus.hpp>
#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/devices/fw_cfg.hpp>
#include <vcpu/devices/isa_debug_exit.hpp>
#include <vcpu/devices/pc_testdev.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {
using namespace vcpu::devices;
namespace acpi = vcpu::x86_64::acpi;

std::uint64_t read_item(fw_cfg& d, std::uint16_t key, unsigned bytes) {
    d.write(0, 2, key);
    std::uint64_t v = 0;
    for (unsigned i = 0; i < bytes; ++i) v |= std::uint64_t{d.read(1, 1)} << (8 * i);
    return v;
}

struct irq_events {
    std::vector<std::pair<unsigned, bool>>* log;
    void operator()(unsigned line, bool level) const { log->emplace_back(line, level); }
};
struct flush_log {
    std::vector<std::uint64_t>* log;
    void operator()(std::uint64_t gpa) const { log->push_back(gpa); }
};
struct fake_clock {
    std::uint64_t* ns;
    std::uint64_t operator()() const noexcept { return *ns; }
};

template <class T>
T get(std::span<const std::byte> v, std::uint64_t off) {
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) x |= std::uint64_t{std::to_integer<std::uint8_t>(v[off + i])} << (8 * i);
    return static_cast<T>(x);
}
} // namespace

TEST_CASE("fw_cfg: signature, id, RAM size, CPU counts through selector 0x510 / data 0x511") {
    fw_cfg d(fw_cfg_config{256ull << 20, 4, 0, {}});
    CHECK(read_item(d, 0x00, 4) == 0x554d4551); // "QEMU"
    CHECK(read_item(d, 0x01, 4) == 1);          // traditional interface, no DMA
    CHECK(read_item(d, 0x03, 8) == (256ull << 20));
    CHECK(read_item(d, 0x05, 2) == 4);
    CHECK(read_item(d, 0x0f, 2) == 4);          // max_cpus defaults to cpus
    CHECK(read_item(d, 0x04, 2) == 1);
    CHECK(d.selected() == 0x04);
    // Past the end of an item: zeros, and the offset stops.
    d.write(0, 2, 0x05);
    (void)d.read(1, 1);
    (void)d.read(1, 1);
    CHECK(d.read(1, 1) == 0);
    CHECK(d.read(1, 1) == 0);
    // Re-selecting rewinds.
    CHECK(read_item(d, 0x05, 2) == 4);
    // Unknown key: no item, zeros.
    CHECK(d.item_size(0x1234) == 0);
    CHECK(read_item(d, 0x1234, 4) == 0);
    // Wide reads are not valid on the data port: all ones; 1-byte reads of the selector port
    // read data too (QEMU's combined region).
    d.write(0, 2, 0x00);
    CHECK(d.read(1, 2) == 0xffffffffu);
    CHECK(d.read(0, 1) == 'Q');
    // A byte write to the selector does not select.
    d.write(0, 1, 0x03);
    CHECK(d.selected() == 0x00);
}

TEST_CASE("fw_cfg: max_cpus and UUID; file directory big-endian with selectors from 0x20") {
    fw_cfg_config c{64ull << 20, 2, 8, {}};
    for (std::uint8_t i = 0; i < 16; ++i) c.uuid[i] = static_cast<std::uint8_t>(0xa0 + i);
    fw_cfg d(c);
    CHECK(read_item(d, 0x0f, 2) == 8);
    d.write(0, 2, 0x02);
    for (unsigned i = 0; i < 16; ++i) CHECK(d.read(1, 1) == 0xa0 + i);

    CHECK(d.item_size(0x19) == 4);
    d.write(0, 2, 0x19);
    for (int i = 0; i < 4; ++i) CHECK(d.read(1, 1) == 0); // empty directory: count 0

    const std::string hello = "hello fw_cfg";
    CHECK(d.add_file({"etc/test", std::as_bytes(std::span(hello.data(), hello.size()))}));
    CHECK_FALSE(d.add_file({"", {}}));
    CHECK_FALSE(d.add_file({std::string(56, 'n'), {}}));
    d.write(0, 2, 0x19);
    std::vector<std::uint8_t> dir(d.item_size(0x19));
    REQUIRE(dir.size() == 4 + 64);
    for (auto& b : dir) b = static_cast<std::uint8_t>(d.read(1, 1));
    CHECK(dir[3] == 1); // count, big-endian
    CHECK(dir[0] == 0);
    CHECK(((dir[4] << 24) | (dir[5] << 16) | (dir[6] << 8) | dir[7]) == static_cast<int>(hello.size()));
    CHECK(((dir[8] << 8) | dir[9]) == 0x20);
    CHECK(std::string(reinterpret_cast<const char*>(&dir[12])) == "etc/test");
    d.write(0, 2, 0x20);
    std::string got;
    for (std::size_t i = 0; i < hello.size(); ++i) got.push_back(static_cast<char>(d.read(1, 1)));
    CHECK(got == hello);
    CHECK(d.read(1, 1) == 0);

    basic_fw_cfg<1> one;
    CHECK(one.add_file({"a", {}}));
    CHECK_FALSE(one.add_file({"b", {}})); // full
}

TEST_CASE("fw_cfg on a port bus at 0x510 (16-bit selector write, byte reads)") {
    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<fw_cfg_port, fw_cfg_ports, fw_cfg>> bus(
        fw_cfg(fw_cfg_config{128ull << 20, 3, 0, {}}));
    bus.write(0x510, 2, 0x05);
    CHECK(bus.read(0x511, 1) == 3);
    CHECK(bus.read(0x511, 1) == 0);
    CHECK(bus.read(0x512, 1) == 0xff); // next port: nothing there
}

TEST_CASE("isa-debug-exit: a write stops the VM with status (code << 1) | 1") {
    isa_debug_exit d;
    CHECK_FALSE(d.exited());
    CHECK(d.read(0, 4) == 0);
    CHECK(d.write(0, 4, 0) == vcpu::action::stop);
    CHECK(d.exited());
    CHECK(d.code() == 0);
    CHECK(d.exit_status() == 1); // kvm-unit-tests: PASS
    CHECK(d.write(0, 4, 7) == vcpu::action::stop);
    CHECK(d.code() == 0); // the first verdict stands

    isa_debug_exit f;
    (void)f.write(0, 4, 1);
    CHECK(f.exit_status() == 3); // FAIL
    isa_debug_exit big;
    (void)big.write(0, 4, 0x80);
    CHECK(big.exit_status() == 1); // (0x80 << 1) | 1 = 0x101, cut to 8 bits as exit() does

    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<isa_debug_exit_port, isa_debug_exit_ports, isa_debug_exit>> bus;
    static_assert(decltype(bus)::may_stop);
    CHECK(bus.write(0xf3, 1, 1) == vcpu::action::resume);
    CHECK(bus.write(0xf4, 4, 2) == vcpu::action::stop);
    CHECK(bus.get<isa_debug_exit>().exit_status() == 5);
}

TEST_CASE("pc-testdev: scratch register at 0xe0 of 1, 2 and 4 bytes; byte port 0xe8; flush 0xe4") {
    std::vector<std::uint64_t> flushes;
    pc_testdev_ports<flush_log> d(flush_log{&flushes});
    d.write(0, 4, 0x12345678);
    CHECK(d.read(0, 4) == 0x12345678);
    CHECK(d.read(0, 1) == 0x78);
    CHECK(d.read(0, 2) == 0x5678);
    CHECK(d.read(1, 1) == 0x56);
    CHECK(d.read(2, 2) == 0x1234);
    CHECK(d.read(3, 1) == 0x12);
    d.write(1, 1, 0xab);
    CHECK(d.scratch() == 0x1234ab78);
    d.write(2, 2, 0xcdef);
    CHECK(d.scratch() == 0xcdefab78);
    d.write(0, 2, 0x1122);
    CHECK(d.scratch() == 0xcdef1122);
    // A 4-byte access at offset 2 is cut at the register's end, never past it.
    d.write(2, 4, 0xffffffff);
    CHECK(d.scratch() == 0xffff1122);
    CHECK(d.read(3, 4) == 0xff);
    // 0xe8..0xeb reach the same register.
    d.write(8, 1, 0x99);
    CHECK(d.scratch() == 0xffff1199);
    CHECK(d.read(8 + 1, 1) == 0x11);
    // Flush: 4-byte writes only, page address.
    CHECK(d.read(4, 4) == 0);
    d.write(4, 4, 0x12345);
    d.write(4, 2, 0x9999);
    REQUIRE(flushes.size() == 1);
    CHECK(flushes[0] == 0x12000);
    CHECK(d.scratch() == 0xffff1199); // flush writes leave the scratch alone

    // On a bus with string I/O semantics.
    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<pc_testdev_port, pc_testdev_port_count, pc_testdev_ports<>>> bus;
    bus.write(0xe0, 4, 0xdeadbeef);
    CHECK(bus.read(0xe0, 4) == 0xdeadbeef);
    CHECK(bus.read(0xe2, 2) == 0xdead);
    CHECK(bus.read(0xec, 1) == 0xff);
}

TEST_CASE("pc-testdev: 0x2000 + n drives IRQ line n") {
    std::vector<std::pair<unsigned, bool>> log;
    vcpu::port_bus<vcpu::unmapped::all_ones,
                   vcpu::range<pc_testdev_irq_port, pc_testdev_irq_lines, pc_testdev_irq<irq_events>>>
        bus(pc_testdev_irq<irq_events>(irq_events{&log}));
    bus.write(0x2000 + 4, 1, 1);
    bus.write(0x2000 + 4, 1, 0);
    bus.write(0x2000 + 23, 1, 0x80);
    bus.write(0x2000 + 24, 1, 1); // outside the range: nothing
    CHECK(bus.read(0x2005, 1) == 0);
    REQUIRE(log.size() == 3);
    CHECK(log[0] == std::pair<unsigned, bool>{4, true});
    CHECK(log[1] == std::pair<unsigned, bool>{4, false});
    CHECK(log[2] == std::pair<unsigned, bool>{23, true});
}

TEST_CASE("pc-testdev: 64 KiB RAM-like MMIO window at 0xff000000") {
    auto bus = std::make_unique<vcpu::mmio_bus<
        vcpu::unmapped::all_ones, vcpu::range<pc_testdev_iomem_base, pc_testdev_iomem_size, pc_testdev_iomem>>>();
    bus->write(0xff000000, 8, 0x0123456789abcdefull);
    CHECK(bus->read(0xff000000, 8) == 0x0123456789abcdefull);
    CHECK(bus->read(0xff000002, 2) == 0x89ab);
    bus->write(0xff00fff0, 4, 0xcafef00d);
    CHECK(bus->read(0xff00fff0, 4) == 0xcafef00d);
    CHECK(bus->read(0xff000100, 4) == 0); // zero-initialised
    // The last bytes: an 8-byte access at 0xfffc keeps 4 bytes, reads zeros past the end.
    bus->write(0xff00fffc, 8, 0x1111111122222222ull);
    CHECK(bus->read(0xff00fffc, 8) == 0x22222222ull);
    CHECK(bus->read(0xff010000, 4) == 0xffffffffu); // outside the window
    pc_testdev_iomem m;
    CHECK(m.read(0x10000, 4) == 0);
    m.write(0x10000, 4, 1); // no stray write
}

TEST_CASE("ACPI PM timer: 3.579545 MHz from a pinned clock, 24 bits, wraps") {
    std::uint64_t ns = 5'000'000'000;
    acpi_pm_timer<fake_clock> t(fake_clock{&ns});
    CHECK(t.read(0, 4) == 0);
    ns += 1'000'000'000; // one second later
    CHECK(t.read(0, 4) == 3579545);
    CHECK(t.read(1, 1) == ((3579545u >> 8) & 0xff));
    ns += 1000; // 1 us = 3.58 ticks
    CHECK(t.count() == 3579548);
    // 2^24 ticks = 4.687 s: the count wraps to 24 bits.
    ns = 5'000'000'000 + 10'000'000'000ull;
    CHECK(t.count() == (35795450u & 0xffffffu));
    CHECK(t.count() < (1u << 24));
    t.write(0, 4, 0); // read-only: ignored
    CHECK(t.count() == (35795450u & 0xffffffu));
    // No overflow in the conversion even after years of uptime.
    CHECK(pm_timer_ticks(100ull * 365 * 24 * 3600 * 1'000'000'000ull) == 100ull * 365 * 24 * 3600 * 3579545ull);
    CHECK(pm_timer_ticks(999'999'999) == 3579544);
    // The real clock runs forward.
    acpi_pm_timer<> real;
    const auto a = real.count();
    std::uint32_t b = a;
    for (int i = 0; i < 1000000 && b == a; ++i) b = real.count();
    CHECK(b != a);
}

namespace {
std::vector<std::byte> acpi_guest() { return std::vector<std::byte>(1 << 20, std::byte{0xcc}); }
} // namespace

TEST_CASE("ACPI: RSDP in the BIOS area, RSDT/XSDT -> FADT (PM timer) + MADT, checksums") {
    auto ram = acpi_guest();
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram, false}));
    acpi::acpi_options o;
    o.cpus = 4;
    auto r = acpi::write_acpi_tables(mem, o);
    REQUIRE(r);
    const std::span<const std::byte> m(ram);
    CHECK(r->rsdp == 0xf0000);
    CHECK(r->end <= 0x100000);
    // RSDP: signature, both checksums, pointers.
    CHECK(std::memcmp(&ram[r->rsdp], "RSD PTR ", 8) == 0);
    CHECK(acpi::byte_sum(m.subspan(r->rsdp, 20)) == 0);
    CHECK(acpi::byte_sum(m.subspan(r->rsdp, 36)) == 0);
    CHECK(get<std::uint8_t>(m, r->rsdp + 15) == 2);
    CHECK(get<std::uint32_t>(m, r->rsdp + 16) == r->rsdt);
    CHECK(get<std::uint32_t>(m, r->rsdp + 20) == 36);
    CHECK(get<std::uint64_t>(m, r->rsdp + 24) == r->xsdt);

    auto table = [&](std::uint64_t at, const char* sig) {
        CAPTURE(sig);
        CHECK(std::memcmp(&ram[at], sig, 4) == 0);
        const auto len = get<std::uint32_t>(m, at + 4);
        CHECK(len >= 36);
        CHECK(acpi::byte_sum(m.subspan(at, len)) == 0);
        return len;
    };
    CHECK(table(r->rsdt, "RSDT") == 36 + 2 * 4);
    CHECK(table(r->xsdt, "XSDT") == 36 + 2 * 8);
    CHECK(get<std::uint32_t>(m, r->rsdt + 36) == r->fadt);
    CHECK(get<std::uint32_t>(m, r->rsdt + 40) == r->madt);
    CHECK(get<std::uint64_t>(m, r->xsdt + 36) == r->fadt);
    CHECK(get<std::uint64_t>(m, r->xsdt + 44) == r->madt);

    CHECK(table(r->fadt, "FACP") == 276);
    CHECK(get<std::uint8_t>(m, r->fadt + 8) == 6);
    CHECK(get<std::uint32_t>(m, r->fadt + 40) == r->dsdt);
    CHECK(get<std::uint64_t>(m, r->fadt + 140) == r->dsdt);
    CHECK(get<std::uint32_t>(m, r->fadt + 76) == 0xb008); // PM_TMR_BLK
    CHECK(get<std::uint8_t>(m, r->fadt + 91) == 4);       // PM_TMR_LEN
    CHECK((get<std::uint32_t>(m, r->fadt + 112) & acpi::fadt_tmr_val_ext) == 0); // 24-bit timer
    CHECK(get<std::uint16_t>(m, r->fadt + 46) == 9);
    CHECK(table(r->dsdt, "DSDT") == 36);

    CHECK(table(r->madt, "APIC") == 44 + 4 * 8 + 12);
    CHECK(get<std::uint32_t>(m, r->madt + 36) == 0xfee00000);
    CHECK(get<std::uint32_t>(m, r->madt + 40) == 1);
    for (unsigned i = 0; i < 4; ++i) {
        const std::uint64_t e = r->madt + 44 + 8 * i;
        CHECK(get<std::uint8_t>(m, e) == 0);
        CHECK(get<std::uint8_t>(m, e + 1) == 8);
        CHECK(get<std::uint8_t>(m, e + 3) == i);
        CHECK(get<std::uint32_t>(m, e + 4) == 1);
    }
    const std::uint64_t io = r->madt + 44 + 32;
    CHECK(get<std::uint8_t>(m, io) == 1);
    CHECK(get<std::uint8_t>(m, io + 1) == 12);
    CHECK(get<std::uint8_t>(m, io + 2) == 4);
    CHECK(get<std::uint32_t>(m, io + 4) == 0xfec00000);
    // Each table 16-byte aligned, nothing written past the end.
    for (auto a : {r->rsdt, r->xsdt, r->fadt, r->dsdt, r->madt}) CHECK(a % 16 == 0);
    CHECK(ram[r->end] == std::byte{0xcc});
    CHECK(ram[r->rsdp - 1] == std::byte{0xcc});
}

TEST_CASE("ACPI: without a MADT, at 0xe0000, and the errors") {
    auto ram = acpi_guest();
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram, false}));
    acpi::acpi_options o;
    o.madt = false;
    o.rsdp_address = 0xe0000;
    o.pm_timer_port = 0x608;
    auto r = acpi::write_acpi_tables(mem, o);
    REQUIRE(r);
    const std::span<const std::byte> m(ram);
    CHECK(r->madt == 0);
    CHECK(get<std::uint32_t>(m, r->rsdt + 4) == 40);
    CHECK(get<std::uint32_t>(m, r->fadt + 76) == 0x608);
    CHECK(acpi::byte_sum(m.subspan(r->rsdt, 40)) == 0);

    auto fails = [&](acpi::acpi_options bad, const char* what) {
        auto before = ram;
        auto e = acpi::write_acpi_tables(mem, bad);
        REQUIRE_FALSE(e);
        CHECK(std::string(e.err().detail).find(what) != std::string::npos);
        CHECK(ram == before);
    };
    acpi::acpi_options b;
    b.cpus = 0;
    fails(b, "CPU count");
    b.cpus = 255;
    fails(b, "CPU count");
    b = {};
    b.rsdp_address = 0xf0008;
    fails(b, "16-byte");
    b.rsdp_address = 0xd0000;
    fails(b, "outside 0xE0000");
    b.rsdp_address = 0xfff00;
    b.cpus = 64;
    fails(b, "do not fit");
    // Guest memory without the BIOS area: the write error comes back.
    std::vector<std::byte> small(0x80000);
    vcpu::guest_memory sm;
    REQUIRE(sm.add({0, small, false}));
    auto e = acpi::write_acpi_tables(sm, acpi::acpi_options{});
    REQUIRE_FALSE(e);
    CHECK(std::string_view(e.err().op) == "write guest memory");
}

TEST_CASE("ACPI: 254 CPUs fit") {
    auto ram = acpi_guest();
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram, false}));
    acpi::acpi_options o;
    o.cpus = 254;
    auto r = acpi::write_acpi_tables(mem, o);
    REQUIRE(r);
    const std::span<const std::byte> m(ram);
    const auto len = get<std::uint32_t>(m, r->madt + 4);
    CHECK(len == 44 + 254 * 8 + 12);
    CHECK(acpi::byte_sum(m.subspan(r->madt, len)) == 0);
}
