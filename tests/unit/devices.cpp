// Platform devices: 16550A UART registers (THR/RBR, IER, IIR incl. THRE and FIFO bits, LCR/DLAB,
// MCR loopback, LSR, MSR, SCR, IRQ line), i8042 reset, CMOS/RTC BCD time, PCI conf1 "no devices".
#include <doctest/doctest.h>

#include <vcpu/bus.hpp>
#include <vcpu/devices/cmos_rtc.hpp>
#include <vcpu/devices/i8042.hpp>
#include <vcpu/devices/pci_absent.hpp>
#include <vcpu/devices/uart_8250.hpp>

#include <string>
#include <vector>

namespace {
using namespace vcpu::devices;
struct string_sink {
    std::string* out;
    void operator()(std::uint8_t b) const { out->push_back(static_cast<char>(b)); }
};
struct irq_log {
    std::vector<bool>* levels;
    void operator()(bool l) const { levels->push_back(l); }
};
using uart = uart_8250<string_sink, irq_log>;
constexpr std::uint64_t THR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
} // namespace

TEST_CASE("uart: THR writes reach the sink; LSR shows THRE|TEMT, DR only with data") {
    std::string out;
    std::vector<bool> irqs;
    uart u{string_sink{&out}, irq_log{&irqs}};
    u.write(THR, 1, 'h');
    u.write(THR, 1, 'i');
    CHECK(out == "hi");
    CHECK(u.read(LSR, 1) == (uart_bits::lsr_thre | uart_bits::lsr_temt));
    CHECK(u.receive('x'));
    CHECK((u.read(LSR, 1) & uart_bits::lsr_dr) != 0);
    CHECK(u.read(THR, 1) == 'x');
    CHECK((u.read(LSR, 1) & uart_bits::lsr_dr) == 0);
    CHECK(irqs.empty()); // IER = 0: no interrupt ever
}

TEST_CASE("uart: DLAB switches offsets 0/1 to the divisor latch") {
    std::string out;
    std::vector<bool> irqs;
    uart u{string_sink{&out}, irq_log{&irqs}};
    u.write(LCR, 1, 0x83); // DLAB + 8N1
    u.write(0, 1, 0x01);   // DLL: 115200 baud
    u.write(1, 1, 0x00);   // DLM
    CHECK(u.divisor() == 1);
    CHECK(u.read(0, 1) == 0x01);
    CHECK(u.read(1, 1) == 0x00);
    CHECK(out.empty()); // the DLL write did not transmit
    CHECK(u.read(IER, 1) == 0);
    u.write(LCR, 1, 0x03);
    CHECK(u.read(LCR, 1) == 0x03);
    u.write(IER, 1, 0xff);
    CHECK(u.read(IER, 1) == 0x0f); // reserved bits read 0
    CHECK(u.divisor() == 1);
}

TEST_CASE("uart: THRE interrupt raised on ETBEI, acknowledged by an IIR read, re-armed by THR") {
    std::string out;
    std::vector<bool> irqs;
    uart u{string_sink{&out}, irq_log{&irqs}};
    CHECK(u.read(IIR, 1) == uart_bits::iir_none);
    u.write(IER, 1, uart_bits::ier_etbei);
    CHECK(u.irq_level());
    REQUIRE(irqs == std::vector<bool>{true});
    CHECK(u.read(IIR, 1) == uart_bits::iir_thre); // the read acknowledges it
    CHECK(!u.irq_level());
    CHECK(u.read(IIR, 1) == uart_bits::iir_none);
    u.write(THR, 1, 'a');
    CHECK(u.irq_level());
    u.write(IER, 1, 0);
    CHECK(!u.irq_level());
    CHECK(irqs == std::vector<bool>{true, false, true, false});
}

TEST_CASE("uart: received data interrupt outranks THRE; FIFO bits in IIR when FCR enables it") {
    std::string out;
    std::vector<bool> irqs;
    uart u{string_sink{&out}, irq_log{&irqs}};
    u.write(FCR, 1, uart_bits::fcr_enable);
    u.write(IER, 1, uart_bits::ier_erbfi | uart_bits::ier_etbei);
    u.receive('k');
    CHECK(u.read(IIR, 1) == (uart_bits::iir_fifo_enabled | uart_bits::iir_rda));
    CHECK(u.read(THR, 1) == 'k');
    CHECK(u.read(IIR, 1) == (uart_bits::iir_fifo_enabled | uart_bits::iir_thre));
    CHECK(u.read(IIR, 1) == (uart_bits::iir_fifo_enabled | uart_bits::iir_none));
    u.write(FCR, 1, 0);
    CHECK(u.read(IIR, 1) == uart_bits::iir_none);
}

TEST_CASE("uart: FIFO holds 16 bytes, then overrun sets LSR.OE once") {
    uart_8250<> u;
    for (int i = 0; i < 16; ++i) CHECK(u.receive(static_cast<std::uint8_t>(i)));
    CHECK(!u.receive(99));
    CHECK((u.read(LSR, 1) & uart_bits::lsr_oe) != 0);
    CHECK((u.read(LSR, 1) & uart_bits::lsr_oe) == 0);
    for (int i = 0; i < 16; ++i) CHECK(u.read(THR, 1) == i);
    CHECK(u.rx_pending() == 0);
}

TEST_CASE("uart: MCR loopback (Linux's autoconfig test), MSR and SCR") {
    std::string out;
    std::vector<bool> irqs;
    uart u{string_sink{&out}, irq_log{&irqs}};
    u.write(SCR, 1, 0xa5);
    CHECK(u.read(SCR, 1) == 0xa5);
    u.write(MCR, 1, uart_bits::mcr_loop | 0x0a); // LOOP | OUT2 | RTS
    CHECK((u.read(MSR, 1) & 0xf0) == 0x90);     // DCD | CTS, as serial8250 autoconfig expects
    u.write(THR, 1, 'L');
    CHECK(out.empty()); // looped back, not transmitted
    CHECK(u.read(THR, 1) == 'L');
    u.write(MCR, 1, uart_bits::mcr_out2);
    CHECK(u.read(MCR, 1) == uart_bits::mcr_out2);
    CHECK(u.read(MSR, 1) == (uart_bits::msr_dcd | uart_bits::msr_dsr | uart_bits::msr_cts));
}

TEST_CASE("uart on a port bus at COM1") {
    std::string out;
    std::vector<bool> irqs;
    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<com1_base, uart_ports, uart>> bus(
        uart{string_sink{&out}, irq_log{&irqs}});
    std::array<std::byte, 8> d{};
    const char msg[] = "ok";
    std::memcpy(d.data(), msg, 2);
    vcpu::port_io rep{0x3f8, 1, 2, vcpu::direction::out, std::span<std::byte>(d).first(2)};
    bus(rep); // rep outsb
    CHECK(out == "ok");
    CHECK(bus.read(0x3fd, 1) == 0x60);
    CHECK(bus.read(0x2fd, 1) == 0xff); // COM2 absent
}

TEST_CASE("i8042: 0xFE to port 0x64 is a reset request that stops the loop") {
    i8042 k;
    CHECK(k.read(4, 1) == i8042_status::system_flag); // no input pending: kb_wait passes
    CHECK(k.write(4, 1, 0xaa) == vcpu::action::resume);
    CHECK((k.read(4, 1) & i8042_status::output_full) != 0);
    CHECK(k.read(0, 1) == 0x55);
    CHECK(!k.reset_requested());
    CHECK(k.write(0, 1, 0xfe) == vcpu::action::resume); // 0xfe on the data port is not a reset
    CHECK(k.write(4, 1, 0xfe) == vcpu::action::stop);
    CHECK(k.reset_requested());
}

TEST_CASE("i8042: the AUX-port probe gets answers at once (no AUX channel), never a timeout") {
    i8042 k;
    // Linux i8042_check_aux(): 0xD3 + 0x5a (AUX loop) must answer without the AUX-data bit...
    CHECK(k.write(4, 1, 0xd3) == vcpu::action::resume);
    CHECK((k.read(4, 1) & i8042_status::output_full) == 0); // nothing until the data byte
    CHECK(k.write(0, 1, 0x5a) == vcpu::action::resume);
    CHECK(k.read(4, 1) == (i8042_status::system_flag | i8042_status::output_full)); // bit 0x20 clear
    CHECK(k.read(0, 1) == 0x5a);
    // ...then 0xA9 (AUX interface test) reports an error code, so the AUX port is dropped.
    CHECK(k.write(4, 1, 0xa9) == vcpu::action::resume);
    CHECK((k.read(4, 1) & i8042_status::output_full) != 0);
    CHECK(k.read(0, 1) == 0x01);
    CHECK((k.read(4, 1) & i8042_status::output_full) == 0);
    // A data byte after the loop command is not taken as a command byte.
    CHECK(k.write(4, 1, 0x20) == vcpu::action::resume);
    CHECK(k.read(0, 1) == 0x00);
}

TEST_CASE("cmos: time registers in BCD through ports 0x70/0x71") {
    struct fixed {
        rtc_time operator()() const noexcept { return rtc_time{59, 7, 23, 3, 31, 12, 2026}; }
    };
    cmos_rtc<fixed> c;
    auto reg = [&](std::uint8_t i) {
        c.write(0, 1, i | 0x80); // NMI-mask bit is ignored for the index
        return c.read(1, 1);
    };
    CHECK(reg(0x00) == 0x59);
    CHECK(reg(0x02) == 0x07);
    CHECK(reg(0x04) == 0x23);
    CHECK(reg(0x07) == 0x31);
    CHECK(reg(0x08) == 0x12);
    CHECK(reg(0x09) == 0x26);
    CHECK(reg(0x32) == 0x20);
    CHECK((reg(0x0a) & 0x80) == 0); // no update in progress
    CHECK(reg(0x0b) == 0x02);       // 24h, BCD
    c.write(0, 1, 0x40);
    c.write(1, 1, 0x77);
    CHECK(reg(0x40) == 0x77);
    c.write(0, 1, 0x00);
    c.write(1, 1, 0x11); // time registers are not writable here
    CHECK(reg(0x00) == 0x59);
}

TEST_CASE("pci_absent: CONFIG_ADDRESS reads back, CONFIG_DATA floats to all ones") {
    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<0xcf8, 8, pci_absent>> bus;
    bus.write(0xcf8, 4, 0x80000000);
    CHECK(bus.read(0xcf8, 4) == 0x80000000);
    CHECK(bus.read(0xcfc, 4) == 0xffffffff);
    CHECK(bus.read(0xcfe, 2) == 0xffff);
    bus.write(0xcf8, 1, 0); // byte writes do not change the address
    CHECK(bus.get<pci_absent>().config_address() == 0x80000000);
}
