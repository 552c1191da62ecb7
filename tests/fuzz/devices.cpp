// Fuzzes the device models' register files (vcpu/devices: 16550A UART, i8042, CMOS/RTC, PCI
// conf1 "no devices") behind the compile-time port bus (vcpu/bus.hpp), laid out as
// examples/vmm does, with port I/O exits of every size, rep ins/outs and bytes arriving on the
// UART line.
//
// Input: a sequence of operations, each u8 kind (read / write / rep read / rep write / receive),
// u8 port selector (the devices' ports, neighbours and unmapped ones), u8 size selector (1, 2,
// 4), u8 count (rep), u32 value.
// Invariants (PC16550D, IBM PC/AT i8042, MC146818A, PCI 3.0 §3.2.2.3.2): UART LSR always shows
// THRE and TEMT (transmission is instantaneous) and DR exactly when the RX FIFO holds data; the
// FIFO never holds more than 16 bytes; IIR bit 0 is clear exactly when the interrupt line is
// high, IIR bits 7:6 follow FCR bit 0, and the line callback fires only on changes; each THR
// write (DLAB clear) transmits one byte; SCR and the divisor latch read back; CMOS port 0x70
// reads back its index and RAM bytes (index & 0x7f, from 0x0e up, not the century) read back
// what was written, time registers are BCD; i8042 status always has the system flag, "output
// full" exactly while a byte waits, self test answers 0x55, 0xFE stops the run loop; PCI
// CONFIG_DATA reads all ones, CONFIG_ADDRESS reads back a 32-bit write; unmapped ports read all
// ones; every read is masked to its size.
#include "fuzz.hpp"

#include <vcpu/bus.hpp>
#include <vcpu/devices/cmos_rtc.hpp>
#include <vcpu/devices/i8042.hpp>
#include <vcpu/devices/pci_absent.hpp>
#include <vcpu/devices/uart_8250.hpp>
#include <vcpu/exits.hpp>

#include <array>
#include <optional>

namespace {
namespace dev = vcpu::devices;

struct line_state {
    bool level = false;
    std::uint64_t changes = 0, sent = 0;
};
struct sink {
    line_state* s;
    void operator()(std::uint8_t) const noexcept { ++s->sent; }
};
struct irq {
    line_state* s;
    void operator()(bool level) const noexcept {
        VCPU_FUZZ_CHECK(level != s->level); // called only when the level changes
        s->level = level;
        ++s->changes;
    }
};
/// A pinned clock, so time registers are deterministic.
struct fixed_clock {
    dev::rtc_time t{59, 59, 23, 7, 31, 12, 2099};
    dev::rtc_time operator()() const noexcept { return t; }
};
using uart = dev::uart_8250<sink, irq>;
using bus = vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<dev::i8042_data_port, 5, dev::i8042>,
                           vcpu::range<dev::cmos_index_port, 2, dev::cmos_rtc<fixed_clock>>,
                           vcpu::range<dev::com1_base, dev::uart_ports, uart>,
                           vcpu::range<dev::pci_config_address_port, 8, dev::pci_absent>>;

constexpr std::uint16_t ports[] = {0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x60, 0x64, 0x61,
                                   0x62, 0x70, 0x71, 0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff,
                                   0x3f7, 0x400, 0x5f, 0x72, 0xcf7, 0xd00, 0x80, 0x2f8};

bool is_bcd(std::uint8_t v) { return (v & 0x0f) <= 9 && (v >> 4) <= 9; }

/// The model state the harness tracks next to the devices.
struct model {
    bool fifo_enabled = false;
    std::optional<std::uint8_t> scr;
    std::uint8_t cmos_index = 0;
    std::array<std::optional<std::uint8_t>, 128> cmos{};
    std::optional<std::uint32_t> pci_address;
    bool kbd_output = false, expect_command_byte = false, expect_aux_byte = false;
    std::uint8_t kbd_value = 0, command_byte = 0;
};

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    enum : std::uint8_t { rd = 0, wr = 1, rep_rd = 2, rep_wr = 3, rx = 4 };
    auto op = [](bytes_out& b, std::uint8_t kind, std::uint16_t port, std::uint8_t size, std::uint32_t value,
                 std::uint8_t count = 1) {
        std::uint8_t sel = 0;
        for (std::uint8_t i = 0; i < sizeof ports / sizeof ports[0]; ++i)
            if (ports[i] == port) sel = i;
        b.put(kind).put(sel).put(static_cast<std::uint8_t>(size == 1 ? 0 : size == 2 ? 1 : 2)).put(count).put(value);
    };
    bytes_out linux_probe; // what Linux's 8250 driver does at boot, roughly
    op(linux_probe, wr, 0x3fb, 1, 0x83), op(linux_probe, wr, 0x3f8, 1, 1), op(linux_probe, wr, 0x3f9, 1, 0);
    op(linux_probe, wr, 0x3fb, 1, 0x03), op(linux_probe, wr, 0x3fa, 1, 0xc7), op(linux_probe, rd, 0x3fa, 1, 0);
    op(linux_probe, wr, 0x3f9, 1, 0x02), op(linux_probe, rd, 0x3fa, 1, 0), op(linux_probe, wr, 0x3f8, 1, 'L');
    op(linux_probe, rd, 0x3fd, 1, 0), op(linux_probe, wr, 0x3ff, 1, 0xa5), op(linux_probe, rd, 0x3ff, 1, 0);
    out.add("uart_probe", linux_probe);
    bytes_out rxb;
    op(rxb, wr, 0x3f9, 1, 0x05);
    for (int i = 0; i < 18; ++i) op(rxb, rx, 0x3f8, 1, 'a' + i);
    op(rxb, rd, 0x3fa, 1, 0), op(rxb, rd, 0x3fd, 1, 0), op(rxb, rep_rd, 0x3f8, 1, 0, 20), op(rxb, rd, 0x3fd, 1, 0);
    out.add("uart_rx_overrun", rxb);
    bytes_out loop;
    op(loop, wr, 0x3fc, 1, 0x1f), op(loop, wr, 0x3f9, 1, 0x01), op(loop, rep_wr, 0x3f8, 1, 0x41, 8);
    op(loop, rd, 0x3fe, 1, 0), op(loop, rd, 0x3fa, 1, 0), op(loop, rep_rd, 0x3f8, 1, 0, 8), op(loop, wr, 0x3fa, 1, 0x03);
    out.add("uart_loopback", loop);
    bytes_out kbd;
    op(kbd, rd, 0x64, 1, 0), op(kbd, wr, 0x64, 1, 0xaa), op(kbd, rd, 0x64, 1, 0), op(kbd, rd, 0x60, 1, 0);
    op(kbd, wr, 0x64, 1, 0x60), op(kbd, wr, 0x60, 1, 0x47), op(kbd, wr, 0x64, 1, 0x20), op(kbd, rd, 0x60, 1, 0);
    op(kbd, rd, 0x61, 1, 0), op(kbd, wr, 0x64, 1, 0xfe);
    out.add("i8042_selftest_reset", kbd);
    bytes_out cmos;
    for (std::uint8_t r : {0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x32})
        op(cmos, wr, 0x70, 1, r | 0x80u), op(cmos, rd, 0x71, 1, 0);
    op(cmos, wr, 0x70, 1, 0x8e), op(cmos, wr, 0x71, 1, 0x42), op(cmos, wr, 0x70, 1, 0x0e), op(cmos, rd, 0x71, 1, 0);
    op(cmos, wr, 0x70, 1, 0x00), op(cmos, wr, 0x71, 1, 0x99), op(cmos, rd, 0x71, 1, 0), op(cmos, rd, 0x70, 2, 0);
    out.add("cmos", cmos);
    bytes_out pci;
    op(pci, wr, 0xcf8, 4, 0x80000000), op(pci, rd, 0xcf8, 4, 0), op(pci, rd, 0xcfc, 2, 0), op(pci, rd, 0xcfe, 1, 0);
    op(pci, wr, 0xcfc, 4, 0x12345678), op(pci, rd, 0xcfc, 4, 0), op(pci, wr, 0xcf8, 2, 0x1234), op(pci, rd, 0xcf9, 1, 0);
    op(pci, rep_rd, 0xcfc, 4, 0, 4);
    out.add("pci_conf1", pci);
    bytes_out unmapped;
    op(unmapped, rd, 0x80, 4, 0), op(unmapped, wr, 0x2f8, 1, 1), op(unmapped, rd, 0x400, 2, 0), op(unmapped, rep_rd, 0xd00, 2, 0, 3);
    out.add("unmapped", unmapped);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    line_state line;
    bus b(dev::i8042{}, dev::cmos_rtc<fixed_clock>{}, uart{sink{&line}, irq{&line}}, dev::pci_absent{});
    auto& u = b.get<uart>();
    auto& kbd = b.get<dev::i8042>();
    model m;
    std::array<std::byte, 4 * 255> buf{};
    for (int step = 0; step < 256 && in.left() > 0; ++step) {
        const auto kind = in.get<std::uint8_t>() % 5;
        const std::uint16_t port = ports[in.get<std::uint8_t>() % (sizeof ports / sizeof ports[0])];
        const std::uint8_t sz = std::array<std::uint8_t, 3>{1, 2, 4}[in.get<std::uint8_t>() % 3];
        const std::uint32_t count = kind >= 2 && kind <= 3 ? 1 + in.get<std::uint8_t>() % 16 : (in.get<std::uint8_t>(), 1);
        const auto value = in.get<std::uint32_t>();
        const std::uint32_t mask = sz == 4 ? ~0u : (1u << (8 * sz)) - 1;

        if (kind == 4) { // a byte arrives on the line
            const bool had_room = u.rx_pending() < uart::fifo_size;
            VCPU_FUZZ_CHECK(u.receive(static_cast<std::uint8_t>(value)) == had_room);
            VCPU_FUZZ_CHECK(u.rx_pending() <= uart::fifo_size);
            VCPU_FUZZ_CHECK(line.level == u.irq_level() && u.irq_level() == (u.iir() != dev::uart_bits::iir_none));
            continue;
        }
        const bool is_read = kind == 0 || kind == 2;
        vcpu::port_io io{port, sz, count, is_read ? vcpu::direction::in : vcpu::direction::out,
                         std::span<std::byte>(buf).first(std::size_t{sz} * count)};
        if (!is_read) io.fill(value);
        else std::fill(io.data.begin(), io.data.end(), std::byte{0xcc});

        // What the read of the first item must show, from state before the access.
        const std::uint64_t rx_before = u.rx_pending();
        const bool level_before = u.irq_level();
        const std::uint64_t sent_before = line.sent, tx_before = u.transmitted();
        const std::uint8_t index_before = m.cmos_index;
        const bool kbd_out_before = m.kbd_output;
        const std::uint8_t lcr = static_cast<std::uint8_t>(b.read(0x3fb, 1));
        const bool dlab = (lcr & 0x80) != 0, loop = (b.read(0x3fc, 1) & 0x10) != 0;

        const vcpu::action a = b(io);
        VCPU_FUZZ_CHECK(u.rx_pending() <= uart::fifo_size);
        VCPU_FUZZ_CHECK(line.level == u.irq_level() && u.irq_level() == (u.iir() != dev::uart_bits::iir_none));
        for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) <= mask);

        const std::uint32_t v0 = io.value(0);
        const auto off = port - dev::com1_base;
        if (port >= dev::com1_base && port < dev::com1_base + 8) {
            if (is_read) {
                if (off == 5) { // LSR
                    VCPU_FUZZ_CHECK((v0 & 0x60) == 0x60);
                    VCPU_FUZZ_CHECK(((v0 & 1) != 0) == (rx_before > 0));
                } else if (off == 2) { // IIR
                    VCPU_FUZZ_CHECK(((v0 & 1) == 0) == level_before);
                    VCPU_FUZZ_CHECK((v0 & 0xc0) == (m.fifo_enabled ? 0xc0u : 0u));
                } else if (off == 7 && m.scr) {
                    VCPU_FUZZ_CHECK((v0 & 0xff) == *m.scr);
                } else if (off == 0 && !dlab) {
                    VCPU_FUZZ_CHECK(u.rx_pending() == rx_before - std::min<std::uint64_t>(rx_before, count));
                }
            } else {
                const auto byte = static_cast<std::uint8_t>(value);
                if (off == 0 && !dlab) {
                    VCPU_FUZZ_CHECK(u.transmitted() == tx_before + count);
                    VCPU_FUZZ_CHECK(line.sent == sent_before + (loop ? 0 : count));
                } else if (off == 0) {
                    VCPU_FUZZ_CHECK((u.divisor() & 0xff) == byte && line.sent == sent_before);
                } else if (off == 1 && dlab) {
                    VCPU_FUZZ_CHECK((u.divisor() >> 8) == byte);
                } else if (off == 2) {
                    m.fifo_enabled = (byte & 1) != 0;
                    if (byte & 2) VCPU_FUZZ_CHECK(u.rx_pending() == 0);
                } else if (off == 7) {
                    m.scr = byte;
                }
            }
        } else if (port == dev::cmos_index_port || port == dev::cmos_data_port) {
            if (!is_read && port == dev::cmos_index_port) {
                m.cmos_index = static_cast<std::uint8_t>(value);
            } else if (!is_read) {
                const unsigned i = index_before & 0x7f;
                if (i >= 0x0e) m.cmos[i] = static_cast<std::uint8_t>(value);
            } else if (port == dev::cmos_index_port) {
                VCPU_FUZZ_CHECK((v0 & 0xff) == index_before);
            } else {
                const unsigned i = index_before & 0x7f; // bit 7 is the NMI mask, not an address bit
                if (i <= 0x09 || i == 0x32) VCPU_FUZZ_CHECK(is_bcd(static_cast<std::uint8_t>(v0)));
                else if (i >= 0x0e && m.cmos[i]) VCPU_FUZZ_CHECK((v0 & 0xff) == *m.cmos[i]);
            }
        } else if (port >= dev::i8042_data_port && port < dev::i8042_data_port + 5) {
            if (is_read && port == dev::i8042_command_port) {
                VCPU_FUZZ_CHECK((v0 & 0x04) != 0 && ((v0 & 0x01) != 0) == kbd_out_before && (v0 & 0x02) == 0);
            } else if (is_read && port == dev::i8042_data_port) {
                VCPU_FUZZ_CHECK((v0 & 0xff) == (kbd_out_before ? m.kbd_value : 0));
                m.kbd_output = false;
            } else if (!is_read && port == dev::i8042_command_port) {
                const auto cmd = static_cast<std::uint8_t>(value);
                if (cmd == 0xfe) VCPU_FUZZ_CHECK(a == vcpu::action::stop && kbd.reset_requested());
                if (cmd == 0xaa) m.kbd_output = true, m.kbd_value = 0x55;
                if (cmd == 0x20) m.kbd_output = true, m.kbd_value = m.command_byte;
                if (cmd == 0x60) m.expect_command_byte = true;
                if (cmd == 0xa9) m.kbd_output = true, m.kbd_value = 0x01;
                if (cmd == 0xd3) m.expect_aux_byte = true;
            } else if (!is_read && port == dev::i8042_data_port) {
                if (m.expect_command_byte) m.command_byte = static_cast<std::uint8_t>(value);
                else if (m.expect_aux_byte) m.kbd_output = true, m.kbd_value = static_cast<std::uint8_t>(value);
                m.expect_command_byte = m.expect_aux_byte = false;
            } else if (is_read) {
                VCPU_FUZZ_CHECK(v0 == 0); // 0x61..0x63: decoded by nobody here
            }
        } else if (port >= dev::pci_config_address_port && port < dev::pci_config_address_port + 8) {
            const auto o = port - dev::pci_config_address_port;
            if (is_read && o >= 4) {
                for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == mask);
            } else if (is_read && o == 0 && sz == 4 && m.pci_address) {
                VCPU_FUZZ_CHECK(v0 == *m.pci_address);
            } else if (!is_read && o == 0 && sz == 4) {
                m.pci_address = value;
            }
        } else if (is_read) { // unmapped: all ones
            for (std::uint32_t i = 0; i < count; ++i) VCPU_FUZZ_CHECK(io.value(i) == mask);
        }
        if (a == vcpu::action::stop) VCPU_FUZZ_CHECK(kbd.reset_requested());
    }
    vcpu_fuzz::note("devices: %llu bytes sent, %llu line changes", static_cast<unsigned long long>(line.sent),
                    static_cast<unsigned long long>(line.changes));
    return 0;
}
