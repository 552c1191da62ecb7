// vcpu::basic_bus: compile-time routing, unmapped-access policies, rep ins/outs, access sizes,
// and plugging into basic_vcpu::run through the mock HAL.
#include <doctest/doctest.h>

#include <arch/x86_64/arch.hpp>
#include <vcpu/bus.hpp>
#include <kvm/mock.hpp>

#include <array>
#include <cstdint>
#include <variant>
#include <vector>

namespace {

/// Records every access; reads return base_tag + offset.
struct probe {
    std::uint64_t tag = 0;
    std::vector<std::array<std::uint64_t, 3>> writes; // offset, size, value
    std::uint64_t reads = 0;
    std::uint64_t read(std::uint64_t off, std::uint8_t) {
        ++reads;
        return tag + off;
    }
    void write(std::uint64_t off, std::uint8_t size, std::uint64_t v) { writes.push_back({off, size, v}); }
};
struct probe_a : probe { probe_a() { tag = 0xa00; } };
struct probe_b : probe { probe_b() { tag = 0xb00; } };
struct probe_c : probe { probe_c() { tag = 0xc00; } };

/// A device that stops the run loop on any write.
struct stopper {
    int n = 0;
    std::uint8_t read(std::uint64_t, std::uint8_t) { return 0; }
    vcpu::action write(std::uint64_t, std::uint8_t, std::uint64_t) {
        ++n;
        return vcpu::action::stop;
    }
};

// Declared out of address order on purpose: the bus sorts at compile time.
using bus3 = vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<0x3f8, 8, probe_a>,
                            vcpu::range<0x60, 1, probe_b>, vcpu::range<0x70, 2, probe_c>>;
using bus3_linear = vcpu::basic_bus<vcpu::port_io, vcpu::unmapped::all_ones, vcpu::lookup::linear,
                                    vcpu::range<0x3f8, 8, probe_a>, vcpu::range<0x60, 1, probe_b>,
                                    vcpu::range<0x70, 2, probe_c>>;

// Routing is a constant expression: checked by the compiler, for both lookups.
static_assert(bus3::find(0x3f8) == 0 && bus3::find(0x3ff) == 0 && bus3::find(0x400) == -1);
static_assert(bus3::find(0x60) == 1 && bus3::find(0x61) == -1 && bus3::find(0x5f) == -1);
static_assert(bus3::find(0x70) == 2 && bus3::find(0x71) == 2 && bus3::find(0x72) == -1);
static_assert(bus3_linear::find(0x71) == 2 && bus3_linear::find(0x3f7) == -1);
static_assert(!bus3::may_stop && std::is_void_v<bus3::result_type>);
static_assert(vcpu::port_bus<vcpu::unmapped::report, vcpu::range<0, 1, probe_a>>::may_stop);
static_assert(vcpu::port_bus<vcpu::unmapped::ignore, vcpu::range<0, 1, stopper>>::may_stop);
static_assert(vcpu::port_bus<vcpu::unmapped::ignore>::find(0) == -1);

/// A port_io over a local buffer.
struct io_buf {
    std::array<std::byte, 64> b{};
    vcpu::port_io io(std::uint16_t port, std::uint8_t size, std::uint32_t count, vcpu::direction d) {
        return vcpu::port_io{port, size, count, d, std::span<std::byte>(b).first(size * count)};
    }
};

} // namespace

TEST_CASE("bus: find agrees between lookups and with a brute-force scan over the port space") {
    for (std::uint64_t p = 0; p < 0x10000; ++p) {
        std::ptrdiff_t want = -1;
        if (p >= 0x3f8 && p < 0x400) want = 0;
        if (p == 0x60) want = 1;
        if (p == 0x70 || p == 0x71) want = 2;
        REQUIRE(bus3::find(p) == want);
        REQUIRE(bus3_linear::find(p) == want);
    }
}

TEST_CASE("bus: reads and writes reach the right device with the offset from its base") {
    bus3 bus;
    CHECK(bus.read(0x3fd, 1) == 0xa05 % 0x100); // masked to one byte
    CHECK(bus.read(0x3fd, 2) == 0xa05);
    CHECK(bus.read(0x71, 4) == 0xc01);
    CHECK(bus.write(0x60, 1, 0x1fe) == vcpu::action::resume);
    REQUIRE(bus.get<probe_b>().writes.size() == 1);
    CHECK(bus.get<probe_b>().writes[0] == std::array<std::uint64_t, 3>{0, 1, 0xfe}); // masked
    CHECK(bus.get<probe_a>().writes.empty());
    CHECK(bus.get<probe_c>().writes.empty());
}

TEST_CASE("bus: unmapped policies") {
    SUBCASE("all_ones reads 0xff.. at the access size and drops writes") {
        bus3 bus;
        CHECK(bus.read(0x80, 1) == 0xff);
        CHECK(bus.read(0x80, 2) == 0xffff);
        CHECK(bus.read(0x80, 4) == 0xffffffff);
        CHECK(bus.write(0x80, 1, 1) == vcpu::action::resume);
    }
    SUBCASE("ignore reads 0") {
        vcpu::port_bus<vcpu::unmapped::ignore, vcpu::range<0x10, 1, probe_a>> bus;
        CHECK(bus.read(0x11, 4) == 0);
    }
    SUBCASE("report stops the loop for unmapped reads and writes only") {
        vcpu::port_bus<vcpu::unmapped::report, vcpu::range<0x10, 1, probe_a>> bus;
        io_buf b;
        auto out = b.io(0x11, 1, 1, vcpu::direction::out);
        CHECK(bus(out) == vcpu::action::stop);
        auto in = b.io(0x11, 1, 1, vcpu::direction::in);
        CHECK(bus(in) == vcpu::action::stop);
        auto hit = b.io(0x10, 1, 1, vcpu::direction::out);
        CHECK(bus(hit) == vcpu::action::resume);
    }
}

TEST_CASE("bus: rep ins/outs go item by item, at sizes 1, 2 and 4") {
    bus3 bus;
    io_buf b;
    for (std::uint8_t size : {1, 2, 4}) {
        auto in = b.io(0x3f8, size, 3, vcpu::direction::in);
        bus(in);
        for (std::uint32_t i = 0; i < 3; ++i) CHECK(in.value(i) == (0xa00 & vcpu::detail::size_mask(size)));
    }
    CHECK(bus.get<probe_a>().reads == 9);
    auto out = b.io(0x60, 2, 4, vcpu::direction::out);
    for (std::uint32_t i = 0; i < 4; ++i) out.set(0x1100 + i, i);
    bus(out);
    REQUIRE(bus.get<probe_b>().writes.size() == 4);
    for (std::uint32_t i = 0; i < 4; ++i)
        CHECK(bus.get<probe_b>().writes[i] == std::array<std::uint64_t, 3>{0, 2, 0x1100 + i});
    // rep ins from nothing: every item all-ones.
    auto none = b.io(0x90, 1, 5, vcpu::direction::in);
    bus(none);
    for (std::uint32_t i = 0; i < 5; ++i) CHECK(none.value(i) == 0xff);
}

TEST_CASE("bus: a stopping device ends a rep outs at the item that stopped") {
    vcpu::port_bus<vcpu::unmapped::ignore, vcpu::range<0x64, 1, stopper>> bus;
    io_buf b;
    auto out = b.io(0x64, 1, 3, vcpu::direction::out);
    CHECK(bus(out) == vcpu::action::stop);
    CHECK(bus.get<stopper>().n == 1);
}

TEST_CASE("bus: MMIO bus with 8-byte accesses") {
    vcpu::mmio_bus<vcpu::unmapped::all_ones, vcpu::range<0xfee00000, 0x1000, probe_a>,
                   vcpu::range<0xfec00000, 0x100, probe_b>>
        bus;
    std::array<std::byte, 8> d{};
    vcpu::mmio rd{0xfec00010, 8, vcpu::direction::in, d};
    bus(rd);
    CHECK(rd.value() == 0xb10);
    vcpu::mmio wr{0xfee00300, 4, vcpu::direction::out, d};
    wr.set(0x12345678);
    bus(wr);
    REQUIRE(bus.get<probe_a>().writes.size() == 1);
    CHECK(bus.get<probe_a>().writes[0] == std::array<std::uint64_t, 3>{0x300, 4, 0x12345678});
    vcpu::mmio un{0x1000, 8, vcpu::direction::in, d};
    bus(un);
    CHECK(un.value() == ~std::uint64_t{0});
}

TEST_CASE("bus: plugs into basic_vcpu::run as a handler") {
    vcpu::kvm::mock::script s;
    s.io_out(0x60, 1, 0x42).io_in(0x3fa, 1).io_out(0x999, 1, 1).hlt();
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(std::move(s));
    vcpu::port_bus<vcpu::unmapped::report, vcpu::range<0x3f8, 8, probe_a>, vcpu::range<0x60, 1, probe_b>>
        bus;
    auto r = cpu.run(bus);
    REQUIRE(r);
    // The unmapped write to 0x999 comes back as the exit.
    REQUIRE(std::holds_alternative<vcpu::port_io>(*r));
    CHECK(std::get<vcpu::port_io>(*r).port == 0x999);
    REQUIRE(bus.get<probe_b>().writes.size() == 1);
    CHECK(bus.get<probe_b>().writes[0][2] == 0x42);
    CHECK(bus.get<probe_a>().reads == 1);
}
