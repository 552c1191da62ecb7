// Device models' save/load (vcpu/devices/device_state.hpp, issue 14): each device's state
// round-trips into a fresh device that then behaves the same; every truncation, a flipped
// header byte, another device's record, another version, trailing bytes and out-of-range
// values are refused with a clear error and leave the loading device unchanged.
#include <doctest/doctest.h>

#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/devices/cmos_rtc.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/devices/fw_cfg.hpp>
#include <vcpu/devices/i8042.hpp>
#include <vcpu/devices/isa_debug_exit.hpp>
#include <vcpu/devices/pc_testdev.hpp>
#include <vcpu/devices/uart_8250.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {
using namespace vcpu::devices;
using bytes = std::vector<std::byte>;

struct string_sink {
    std::string* out;
    void operator()(std::uint8_t b) const { out->push_back(static_cast<char>(b)); }
};
struct irq_log {
    std::vector<bool>* levels;
    void operator()(bool l) const { levels->push_back(l); }
};
using uart = uart_8250<string_sink, irq_log>;
struct fake_clock {
    std::uint64_t* ns;
    std::uint64_t operator()() const noexcept { return *ns; }
};
constexpr std::uint64_t THR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, SCR = 7;

template <class D>
bytes saved(const D& d) {
    bytes b;
    d.save(b);
    return b;
}

/// Every way a record `good` for device type D can be broken must be refused by `fresh()`'s
/// load with an error, leaving it as `fresh()` was (compared by its saved state).
template <class Make>
void refuses_broken(const bytes& good, Make fresh) {
    auto ref = fresh();
    const bytes before = saved(ref);
    auto check_refused = [&](const bytes& bad, const char* what) {
        auto d = fresh();
        auto r = d.load(bad);
        INFO(what << " (" << bad.size() << " of " << good.size() << " bytes)");
        REQUIRE_FALSE(r);
        CHECK(r.err().message().find("::load") != std::string::npos);
        CHECK(saved(d) == before);
    };
    for (std::size_t n = 0; n < good.size(); ++n)
        check_refused(bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n)), "truncated");
    for (std::size_t i = 0; i < device_record_header_bytes; ++i) {
        bytes bad = good;
        bad[i] ^= std::byte{0x40};
        check_refused(bad, "header byte flipped");
    }
    bytes longer = good;
    longer.push_back(std::byte{0});
    check_refused(longer, "trailing byte");
    bytes bigger = good; // a size field that claims one more body byte, and the byte
    bigger[8] = static_cast<std::byte>(std::to_integer<unsigned>(bigger[8]) + 1);
    bigger.push_back(std::byte{0});
    check_refused(bigger, "body longer than the version's fields");
    bytes v2 = good;
    v2[4] = std::byte{2};
    auto d = fresh();
    auto r = d.load(v2);
    REQUIRE_FALSE(r);
    CHECK(r.err().code == EPROTO);
    CHECK(r.err().message().find("unsupported device state version") != std::string::npos);
}
} // namespace

TEST_CASE("device snapshot: the record format and next_device_record") {
    i8042 k;
    cmos_rtc<> c;
    bytes all;
    k.save(all);
    c.save(all);
    std::span<const std::byte> rest(all);
    auto a = next_device_record(rest);
    REQUIRE(a);
    CHECK(a->size() == device_record_header_bytes + 6);
    CHECK(std::to_integer<char>((*a)[0]) == 'I');
    auto b = next_device_record(rest);
    REQUIRE(b);
    CHECK(b->size() == device_record_header_bytes + 129);
    CHECK(rest.empty());
    auto none = next_device_record(rest);
    REQUIRE_FALSE(none);
    CHECK(none.err().message().find("truncated") != std::string::npos);
    // A size field past the end.
    bytes cut(all.begin(), all.end() - 1);
    std::span<const std::byte> r2(cut);
    REQUIRE(next_device_record(r2));
    auto short_rec = next_device_record(r2);
    REQUIRE_FALSE(short_rec);
    CHECK(short_rec.err().message().find("shorter than its size") != std::string::npos);
    // Another device's record.
    i8042 k2;
    auto wrong = k2.load(*b);
    REQUIRE_FALSE(wrong);
    CHECK(wrong.err().message().find("wrong device tag") != std::string::npos);
    CHECK(wrong.err().message().find("CMOS") != std::string::npos);
}

TEST_CASE("device snapshot: 16550A registers, divisor latch, FIFO, IIR and IRQ level round-trip") {
    std::string out1, out2;
    std::vector<bool> irq1, irq2;
    uart u{string_sink{&out1}, irq_log{&irq1}};
    u.write(LCR, 1, 0x83); // DLAB
    u.write(THR, 1, 0x01); // DLL
    u.write(IER, 1, 0x00); // DLM
    u.write(LCR, 1, 0x03);
    u.write(FCR, 1, 0x01);
    u.write(MCR, 1, 0x0b);
    u.write(SCR, 1, 0x5a);
    u.write(IER, 1, uart_bits::ier_erbfi | uart_bits::ier_elsi);
    for (int i = 0; i < 5; ++i) CHECK(u.receive(static_cast<std::uint8_t>('a' + i)));
    CHECK(u.read(THR, 1) == 'a'); // the FIFO's head moves: the saved order must follow it
    u.write(THR, 1, 'x');
    REQUIRE(u.irq_level());
    const bytes s = saved(u);

    uart v{string_sink{&out2}, irq_log{&irq2}};
    REQUIRE(v.load(s));
    CHECK(irq2.empty()); // load does not drive the line
    CHECK(v.irq_level());
    v.sync_irq();
    REQUIRE(irq2.size() == 1);
    CHECK(irq2[0]);
    CHECK(v.divisor() == 1);
    CHECK(v.transmitted() == 1);
    CHECK(v.rx_pending() == 4);
    CHECK(saved(v) == s);
    CHECK(v.read(LCR, 1) == 0x03);
    CHECK(v.read(MCR, 1) == 0x0b);
    CHECK(v.read(SCR, 1) == 0x5a);
    CHECK(v.read(IER, 1) == (uart_bits::ier_erbfi | uart_bits::ier_elsi));
    CHECK(v.read(IIR, 1) == (uart_bits::iir_rda | uart_bits::iir_fifo_enabled));
    CHECK((v.read(LSR, 1) & uart_bits::lsr_dr) != 0);
    std::string got;
    for (int i = 0; i < 4; ++i) got.push_back(static_cast<char>(v.read(THR, 1)));
    CHECK(got == "bcde");
    CHECK(v.read(IIR, 1) == (uart_bits::iir_none | uart_bits::iir_fifo_enabled));
    CHECK_FALSE(v.irq_level());
    // A full FIFO with an overrun and a pending THRE.
    uart_8250<> w;
    w.write(IER, 1, uart_bits::ier_mask);
    for (int i = 0; i < 17; ++i) (void)w.receive(static_cast<std::uint8_t>(i));
    const bytes full = saved(w);
    uart_8250<> x;
    REQUIRE(x.load(full));
    CHECK(x.rx_pending() == 16);
    CHECK(x.read(IIR, 1) == uart_bits::iir_rls);
    CHECK((x.read(LSR, 1) & uart_bits::lsr_oe) != 0);
    CHECK(x.read(THR, 1) == 0);

    refuses_broken(s, [&] {
        uart f{string_sink{&out2}, irq_log{&irq2}};
        f.write(SCR, 1, 0x77);
        return f;
    });
}

TEST_CASE("device snapshot: 16550A values no register holds are refused") {
    uart_8250<> u;
    u.write(IER, 1, uart_bits::ier_etbei);
    const bytes s = saved(u);
    // Body: divisor(2) ier lcr mcr scr fifo thre overrun level transmitted(8) count fifo...
    const std::size_t body = device_record_header_bytes;
    auto refused = [&](std::size_t at, std::uint8_t v, const char* what) {
        bytes bad = s;
        bad[body + at] = std::byte{v};
        uart_8250<> f;
        f.write(SCR, 1, 0x11);
        const bytes before = saved(f);
        auto r = f.load(bad);
        REQUIRE_FALSE(r);
        CHECK(r.err().message().find(what) != std::string::npos);
        CHECK(saved(f) == before);
    };
    refused(2, 0x10, "IER has bits");
    refused(4, 0x20, "MCR has bits");
    refused(6, 2, "flag byte");
    refused(9, 0, "contradicts");       // THRE pending with ETBEI set, but level 0
    refused(18, 17, "receive FIFO");     // count > 16
}

TEST_CASE("device snapshot: i8042 round-trip and refusals") {
    i8042 k;
    CHECK(k.write(4, 1, 0x20) == vcpu::action::resume); // read command byte: output pending
    CHECK(k.write(4, 1, 0x60) == vcpu::action::resume); // waits for a data byte
    const bytes s = saved(k);
    i8042 j;
    REQUIRE(j.load(s));
    CHECK(saved(j) == s);
    CHECK(j.read(4, 1) == (i8042_status::system_flag | i8042_status::output_full));
    (void)j.write(0, 1, 0x47); // the pending write-command-byte takes it
    CHECK(j.read(0, 1) == 0x00);
    (void)j.write(4, 1, 0x20);
    CHECK(j.read(0, 1) == 0x47);
    refuses_broken(s, [] { return i8042{}; });
    bytes both = s;
    both[device_record_header_bytes + 3] = std::byte{1};
    both[device_record_header_bytes + 4] = std::byte{1};
    i8042 f;
    auto r = f.load(both);
    REQUIRE_FALSE(r);
    CHECK(r.err().message().find("two commands") != std::string::npos);
}

TEST_CASE("device snapshot: CMOS RAM and index round-trip; the time comes from the clock") {
    cmos_rtc<> c;
    c.write(0, 1, 0x40);
    c.write(1, 1, 0x99);
    c.write(0, 1, 0x8f); // NMI mask bit kept in the index
    const bytes s = saved(c);
    cmos_rtc<> d;
    REQUIRE(d.load(s));
    CHECK(d.index() == 0x8f);
    CHECK(d.reg(0x40) == 0x99);
    CHECK(saved(d) == s);
    refuses_broken(s, [] { return cmos_rtc<>{}; });
}

TEST_CASE("device snapshot: fw_cfg selector and offset round-trip; an offset past the item is refused") {
    fw_cfg f(fw_cfg_config{64u << 20, 2, 0, {}});
    f.write(0, 2, 0x00); // signature
    CHECK(f.read(1, 1) == 'Q');
    CHECK(f.read(1, 1) == 'E');
    const bytes s = saved(f);
    fw_cfg g(fw_cfg_config{64u << 20, 2, 0, {}});
    REQUIRE(g.load(s));
    CHECK(g.selected() == 0);
    CHECK(g.offset() == 2);
    CHECK(g.read(1, 1) == 'M');
    refuses_broken(s, [] { return fw_cfg(fw_cfg_config{64u << 20, 2, 0, {}}); });
    bytes past = s;
    past[device_record_header_bytes + 2] = std::byte{5}; // offset 5 of a 4-byte item
    fw_cfg h(fw_cfg_config{64u << 20, 2, 0, {}});
    auto r = h.load(past);
    REQUIRE_FALSE(r);
    CHECK(r.err().message().find("past the selected item") != std::string::npos);
    CHECK(h.offset() == 0);
}

TEST_CASE("device snapshot: pc-testdev scratch and MMIO window, isa-debug-exit") {
    pc_testdev_ports<> p;
    p.write(0, 4, 0xcafef00d);
    const bytes ps = saved(p);
    pc_testdev_ports<> q;
    REQUIRE(q.load(ps));
    CHECK(q.scratch() == 0xcafef00d);
    refuses_broken(ps, [] { return pc_testdev_ports<>{}; });

    auto m = std::make_unique<pc_testdev_iomem>();
    m->write(0, 4, 0xdeadbeef);
    m->write(0xfffc, 4, 0x0badf00d);
    bytes ms;
    m->save(ms);
    CHECK(ms.size() == device_record_header_bytes + pc_testdev_iomem_size);
    auto n = std::make_unique<pc_testdev_iomem>();
    REQUIRE(n->load(ms));
    CHECK(n->read(0, 4) == 0xdeadbeef);
    CHECK(n->read(0xfffc, 4) == 0x0badf00d);
    bytes cut(ms.begin(), ms.end() - 1);
    auto o = std::make_unique<pc_testdev_iomem>();
    REQUIRE_FALSE(o->load(cut));
    CHECK(o->read(0, 4) == 0);

    isa_debug_exit x;
    (void)x.write(0, 4, 3);
    const bytes xs = saved(x);
    isa_debug_exit y;
    REQUIRE(y.load(xs));
    CHECK(y.exited());
    CHECK(y.exit_status() == 7);
    refuses_broken(xs, [] { return isa_debug_exit{}; });
    isa_debug_exit clean;
    bytes code_only = saved(clean);
    code_only[device_record_header_bytes] = std::byte{9};
    auto r = clean.load(code_only);
    REQUIRE_FALSE(r);
    CHECK(r.err().message().find("code without a write") != std::string::npos);
}

TEST_CASE("device snapshot: the PM timer continues from the saved count, whatever the new clock reads") {
    std::uint64_t ns1 = 7'000'000'000, ns2 = 1'000; // the restoring host's clock is far behind
    acpi_pm_timer<fake_clock> t(fake_clock{&ns1});
    ns1 += 250'000'000; // 0.25 s
    const auto count = t.count();
    CHECK(count == pm_timer_ticks(250'000'000));
    const bytes s = saved(t);
    acpi_pm_timer<fake_clock> u(fake_clock{&ns2});
    REQUIRE(u.load(s));
    CHECK(u.count() == count);
    ns2 += 1'000'000'000;
    CHECK(u.count() == (pm_timer_ticks(1'250'000'000) & acpi_pm_timer<fake_clock>::mask));
    refuses_broken(s, [&] { return acpi_pm_timer<fake_clock>(fake_clock{&ns2}); });
}
