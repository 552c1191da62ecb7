// The mock HAL's playback as basic_vcpu::run / step see it: exits nobody handles, hostile
// scripted records, coalesced writes before the exit they precede, and the answers the mock
// records. (Split from dispatch.cpp: each handler pack instantiates the whole exit loop, and
// packs that leave most exit types unhandled are the expensive ones to compile.)
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/exits.hpp>
#include <kvm/mock.hpp>

#include <doctest/doctest.h>
#include <linux/kvm.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace {

using arch = vcpu::arch::x86_64;
using vcpu::action;

/// Counts port I/O exits; everything else comes back (one type shared by the tests, so the
/// big-variant loop is instantiated once).
struct count_ports {
    int* n;
    void operator()(vcpu::port_io&) const noexcept { ++*n; }
};

vcpu::kvm::mock::mock_vcpu<arch> make(vcpu::kvm::mock::script s) {
    return vcpu::kvm::mock::make_vcpu<arch>(std::move(s));
}

std::vector<vcpu::kvm::mock::event> events_of(vcpu::kvm::mock::mock_vcpu<arch>& cpu,
                                          vcpu::kvm::mock::event::kind k) {
    std::vector<vcpu::kvm::mock::event> out;
    for (const auto& e : cpu.hal().events())
        if (e.what == k) out.push_back(e);
    return out;
}

} // namespace

TEST_CASE("dispatch: unhandled exits come back from run and step") {
    vcpu::kvm::mock::script s;
    s.io_out(0x80, 1, 1).hlt().io_out(0x80, 1, 2).shutdown();
    auto cpu = make(std::move(s));
    int io = 0;
    count_ports on_port{&io};

    auto r = cpu.run(on_port);
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::halt>(*r));
    CHECK(io == 1);

    auto st = cpu.step(on_port); // handled: nothing comes back
    REQUIRE(st);
    CHECK_FALSE(st->has_value());
    CHECK(io == 2);

    auto st2 = cpu.step(on_port);
    REQUIRE(st2);
    REQUIRE(st2->has_value());
    CHECK(std::holds_alternative<vcpu::shutdown>(**st2));

    auto st3 = cpu.step(on_port);
    REQUIRE_FALSE(st3);
    CHECK(st3.err().code == ENODATA);
}

TEST_CASE("dispatch: a hostile scripted exit comes back as malformed_exit") {
    vcpu::kvm::mock::script s;
    s.raw(KVM_EXIT_IO, [](::kvm_run& r) {
        r.io.direction = KVM_EXIT_IO_IN;
        r.io.size = 4;
        r.io.count = 1;
        r.io.data_offset = ~0ull - 2;
    });
    auto cpu = make(std::move(s));
    int io = 0;
    count_ports on_port{&io};
    auto r = cpu.run(on_port);
    REQUIRE(r);
    REQUIRE(std::holds_alternative<vcpu::malformed_exit>(*r));
    CHECK(std::get<vcpu::malformed_exit>(*r).reason == vcpu::malformed_exit::why::io_out_of_bounds);
    CHECK(io == 0);
}

TEST_CASE("dispatch: coalesced writes come first, in order, and a stop mid-ring resumes") {
    vcpu::kvm::mock::script s;
    s.coalesced(0xfe000000, 4, 0x11).coalesced(0xfe000004, 4, 0x22).coalesced(0x3f8, 1, 0x41, true);
    s.mmio_write(0xfe001000, 4, 0x33);
    s.hlt();
    auto cpu = make(std::move(s));
    std::vector<std::uint64_t> order;
    auto on_coalesced = [&](vcpu::coalesced_write& w) {
        order.push_back(w.address);
        // Stop after the second buffered write.
        return w.address == 0xfe000004 ? action::stop : action::resume;
    };
    auto on_mmio = [&](vcpu::mmio& m) { order.push_back(m.address); };
    auto on_halt = [](vcpu::halt&) { return action::stop; };
    int others = 0;
    auto rest = [&](auto&) { ++others; };

    auto r = cpu.run(on_coalesced, on_mmio, on_halt, rest);
    REQUIRE(r);
    REQUIRE(std::holds_alternative<vcpu::coalesced_write>(*r));
    const auto& w = std::get<vcpu::coalesced_write>(*r);
    CHECK(w.address == 0xfe000004);
    CHECK(w.size == 4);
    CHECK(w.value() == 0x22);
    CHECK_FALSE(w.pio);
    CHECK(order == std::vector<std::uint64_t>{0xfe000000, 0xfe000004});
    CHECK(cpu.hal().runs() == 1);

    // The rest of the ring, then the MMIO exit it preceded, without entering the guest again.
    auto st = cpu.step(on_coalesced, on_mmio, on_halt, rest);
    REQUIRE(st);
    CHECK_FALSE(st->has_value());
    CHECK(order == std::vector<std::uint64_t>{0xfe000000, 0xfe000004, 0x3f8, 0xfe001000});
    CHECK(cpu.hal().runs() == 1);

    auto r2 = cpu.run(on_coalesced, on_mmio, on_halt, rest);
    REQUIRE(r2);
    CHECK(std::holds_alternative<vcpu::halt>(*r2));
    CHECK(cpu.hal().runs() == 2);
    CHECK(order.size() == 4); // the halt exit had no coalesced writes before it
    CHECK(others == 0);
}

TEST_CASE("dispatch: unhandled coalesced writes come back one by one") {
    vcpu::kvm::mock::script s;
    s.coalesced(0x10, 2, 0xaaaa, true).coalesced(0x20, 1, 0xbb, true).hlt();
    auto cpu = make(std::move(s));
    int io = 0;
    count_ports on_port{&io};
    auto r = cpu.run(on_port);
    REQUIRE(r);
    REQUIRE(std::holds_alternative<vcpu::coalesced_write>(*r));
    CHECK(std::get<vcpu::coalesced_write>(*r).address == 0x10);
    CHECK(std::get<vcpu::coalesced_write>(*r).pio);
    CHECK(std::get<vcpu::coalesced_write>(*r).value() == 0xaaaa);
    auto r2 = cpu.run(on_port);
    REQUIRE(r2);
    REQUIRE(std::holds_alternative<vcpu::coalesced_write>(*r2));
    CHECK(std::get<vcpu::coalesced_write>(*r2).address == 0x20);
    CHECK(std::get<vcpu::coalesced_write>(*r2).data().size() == 1);
    auto r3 = cpu.run(on_port);
    REQUIRE(r3);
    CHECK(std::holds_alternative<vcpu::halt>(*r3));
    CHECK(cpu.hal().runs() == 1);
    CHECK(io == 0);
}

TEST_CASE("dispatch: the mock records the answers handlers leave") {
    vcpu::kvm::mock::script s;
    s.io_in(0x71, 1).mmio_read(0xfee00030, 4).hypercall(42, {1, 2, 3, 4, 5, 6}).io_in(0x60, 2, 2);
    auto cpu = make(std::move(s));
    std::uint64_t hc_sum = 0;
    auto r = cpu.run(
        [](vcpu::port_io& io) {
            if (io.port == 0x71) io.set(0x42);
            else io.fill(0x1234);
        },
        [](vcpu::mmio& m) { m.set(0x00050014); },
        [&](vcpu::hypercall& h) {
            for (auto a : h.args) hc_sum += a;
            h.answer(h.nr + 1);
        },
        [](auto&) {});
    REQUIRE_FALSE(r); // the script ran out: every answer has been recorded
    CHECK(r.err().code == ENODATA);
    CHECK(hc_sum == 21);
    auto answers = events_of(cpu, vcpu::kvm::mock::event::kind::answer);
    REQUIRE(answers.size() == 4);
    CHECK(answers[0].index == 0);
    CHECK(answers[0].value == 0x42);
    CHECK(answers[1].index == 1);
    CHECK(answers[1].value == 0x00050014);
    CHECK(answers[2].index == 2);
    CHECK(answers[2].value == 43);
    CHECK(answers[3].index == 3);
    CHECK(answers[3].value == 0x12341234); // both 16-bit items of the rep ins
    auto enters = events_of(cpu, vcpu::kvm::mock::event::kind::enter);
    REQUIRE(enters.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(enters[i].index == i);
}


TEST_CASE("dispatch: in the mock, a handler's answer and its register writes both land, in either order") {
    // The KVM HAL holds register writes made during an uncompleted exit until KVM completed it
    // (tests/kvm/pending_io.cpp); the mock has no deferred completion, so the same handler code
    // must leave the answer and the registers as written whatever their order.
    namespace x86 = vcpu::x86_64;
    for (const bool answer_first : {true, false}) {
        CAPTURE(answer_first);
        vcpu::kvm::mock::script s;
        s.io_in(0x71, 2).mmio_read(0x10000000, 4);
        auto cpu = make(std::move(s));
        int handled = 0;
        auto r = cpu.run(
            [&](vcpu::port_io& io) {
                if (!answer_first) REQUIRE(cpu.set(x86::rbx, 0x1111));
                io.set(0xbeef);
                if (answer_first) REQUIRE(cpu.set(x86::rbx, 0x1111));
                REQUIRE(cpu.set(x86::rip, 0x2000));
                ++handled;
            },
            [&](vcpu::mmio& m) {
                if (!answer_first) REQUIRE(cpu.set(x86::rcx, 0x2222));
                m.set(0xcafef00d);
                if (answer_first) REQUIRE(cpu.set(x86::rcx, 0x2222));
                ++handled;
            },
            [](auto&) {});
        REQUIRE_FALSE(r); // the script ran out after both exits
        CHECK(handled == 2);
        const auto answers = events_of(cpu, vcpu::kvm::mock::event::kind::answer);
        REQUIRE(answers.size() == 2);
        CHECK(answers[0].value == 0xbeef);
        CHECK(answers[1].value == 0xcafef00d);
        CHECK(cpu.get(x86::rbx).value() == 0x1111);
        CHECK(cpu.get(x86::rcx).value() == 0x2222);
        CHECK(cpu.get(x86::rip).value() == 0x2000);
        CHECK_FALSE(events_of(cpu, vcpu::kvm::mock::event::kind::block_write).empty());
    }
}

TEST_CASE("mock: string port I/O carries up to a page per exit, and more is an error") {
    // A full page of `rep outsb` data arrives intact; a shorter exit after it sees only its own
    // bytes; an IN after them gets a zeroed data area.
    std::vector<std::byte> page(vcpu::kvm::mock::pio_data_bytes);
    for (std::size_t i = 0; i < page.size(); ++i) page[i] = std::byte(i * 7 + 1);
    const std::byte two[2] = {std::byte{0xaa}, std::byte{0xbb}};
    vcpu::kvm::mock::script s;
    s.io_string_out(0x3f8, 1, page).io_string_out(0x3f8, 1, two).io_in(0x3f8, 1, 8);
    auto cpu = make(std::move(s));
    std::vector<std::vector<std::byte>> seen;
    auto r = cpu.run([&](vcpu::port_io& io) {
        seen.emplace_back(io.data.begin(), io.data.end());
        if (seen.size() == 3) return action::stop;
        return action::resume;
    });
    REQUIRE(r);
    REQUIRE(seen.size() == 3);
    CHECK(seen[0] == page);
    CHECK(seen[1] == std::vector<std::byte>(std::begin(two), std::end(two)));
    CHECK(seen[2] == std::vector<std::byte>(8, std::byte{0}));

    // One byte more than an exit carries: the run fails with E2BIG, naming the exit, rather
    // than playing truncated data.
    std::vector<std::byte> too_long(vcpu::kvm::mock::pio_data_bytes + 1, std::byte{1});
    vcpu::kvm::mock::script big;
    big.hlt().io_string_out(0x3f8, 1, too_long);
    auto cpu2 = make(std::move(big));
    auto h = cpu2.run([](vcpu::halt) {});
    REQUIRE_FALSE(h);
    CHECK(h.err().code == E2BIG);
    CHECK(h.err().message().find("longer than one exit carries") != std::string::npos);
}

TEST_CASE("mock: string port I/O is never truncated silently: E2BIG or EINVAL naming the op and exit") {
    auto refused = [](vcpu::kvm::mock::script s, int code, const char* why) {
        auto cpu = make(std::move(s));
        auto r = cpu.run(vcpu::allow_unused([](vcpu::port_io&) {}), [](vcpu::halt) {});
        REQUIRE_FALSE(r);
        CHECK(r.err().code == code);
        CHECK(std::string(r.err().op) == "mock enter");
        CHECK_MESSAGE(r.err().message().find(why) != std::string::npos, r.err().message());
        CHECK(r.err().value("exit") == 1);
        CHECK(r.err().value("port") == 0x3f8);
    };
    // An IN whose size * count exceeds the data page (a `rep insw` of 2049 words).
    vcpu::kvm::mock::script in;
    in.hlt().io_in(0x3f8, 2, 2049);
    refused(std::move(in), E2BIG, "longer than one exit carries");
    // OUT data that is not a whole number of units: 5 bytes of `rep outsw`.
    const std::byte five[5] = {};
    vcpu::kvm::mock::script ragged;
    ragged.hlt().io_string_out(0x3f8, 2, five);
    refused(std::move(ragged), EINVAL, "not a whole number of size-byte units");
    // A size of 0 with data.
    vcpu::kvm::mock::script zero;
    zero.hlt().io_string_out(0x3f8, 0, five);
    refused(std::move(zero), EINVAL, "not a whole number");
    // The largest string IN that fits is played whole, and its answer is the handler's bytes.
    vcpu::kvm::mock::script page;
    page.io_in(0x3f8, 4, vcpu::kvm::mock::pio_data_bytes / 4).hlt();
    auto cpu = make(std::move(page));
    std::size_t seen = 0;
    auto r = cpu.run([&](vcpu::port_io& io) {
        seen = io.data.size();
        for (auto& b : io.data) b = std::byte{0x5a};
    }, [](vcpu::halt) { return action::stop; });
    REQUIRE(r);
    CHECK(seen == vcpu::kvm::mock::pio_data_bytes);
}
