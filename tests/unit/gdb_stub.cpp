// vcpu/gdb: the remote-protocol framing, the session's answers to each packet against a fake
// x86-64 target over a socketpair, the software-breakpoint table, and Debian's gdb in batch mode
// driving the stub over TCP (registers, memory, a breakpoint, a step, a watchpoint, detach).
// GCC 12 at -O3 (the cross builds) reports a false -Wrestrict overlap inside std::string's
// operator+ used by the packet strings below (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
#include <doctest/doctest.h>

#include "../common/subprocess.hpp"

#include <arch/x86_64/gdb.hpp>
#include <arch/aarch64/gdb.hpp>
#include <arch/riscv64/gdb.hpp>
#include <vcpu/gdb/breakpoints.hpp>
#include <vcpu/gdb/protocol.hpp>
#include <vcpu/gdb/session.hpp>
#include <vcpu/gdb/socket.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>


namespace {
namespace gdb = vcpu::gdb;

/// Two vCPUs with the x86-64 register file as raw bytes, 64 KiB of memory at 0x1000, and
/// software breakpoints through the library's table; hardware breakpoints only on vCPU-visible
/// addresses (to test the ENOTSUP path, read watchpoints are refused).
struct fake_target {
    static constexpr std::uint64_t base = 0x1000;
    std::array<std::array<std::byte, 536>, 2> regs{};
    std::vector<std::byte> mem = std::vector<std::byte>(0x10000);
    gdb::software_breakpoints<8> sw;
    std::vector<gdb::breakpoint> hw;

    const gdb::arch_desc& arch() const { return vcpu::x86_64::gdb_arch; }
    unsigned cpu_count() const { return 2; }
    static std::size_t offset(std::size_t n) {
        std::size_t o = 0;
        for (std::size_t i = 0; i < n; ++i) o += vcpu::x86_64::gdb_arch.registers[i].bits / 8u;
        return o;
    }
    vcpu::result<void> read_register(unsigned cpu, std::size_t n, std::span<std::byte> out) {
        if (n == static_cast<std::size_t>(vcpu::x86_64::gdb_reg::fop)) return vcpu::error{"fop", EIO};
        std::memcpy(out.data(), regs[cpu].data() + offset(n), out.size());
        return vcpu::ok();
    }
    vcpu::result<void> write_register(unsigned cpu, std::size_t n, std::span<const std::byte> in) {
        std::memcpy(regs[cpu].data() + offset(n), in.data(), in.size());
        return vcpu::ok();
    }
    vcpu::result<std::size_t> raw_read(std::uint64_t a, std::span<std::byte> out) {
        if (a < base || a >= base + mem.size()) return std::size_t{0};
        const std::size_t n = std::min<std::size_t>(out.size(), base + mem.size() - a);
        std::memcpy(out.data(), mem.data() + (a - base), n);
        return n;
    }
    vcpu::result<void> raw_write(std::uint64_t a, std::span<const std::byte> in) {
        if (a < base || a + in.size() > base + mem.size()) return vcpu::error{"write", EFAULT};
        std::memcpy(mem.data() + (a - base), in.data(), in.size());
        return vcpu::ok();
    }
    vcpu::result<std::size_t> read_memory(unsigned, std::uint64_t a, std::span<std::byte> out) {
        auto n = raw_read(a, out);
        if (n) sw.hide(a, out.first(*n));
        return n;
    }
    vcpu::result<void> write_memory(unsigned, std::uint64_t a, std::span<const std::byte> in) { return raw_write(a, in); }
    vcpu::result<void> insert_breakpoint(const gdb::breakpoint& bp) {
        if (bp.kind == gdb::break_kind::software)
            return sw.insert(bp.address, arch().sw_breakpoint, [&](std::uint64_t a, std::span<std::byte> o) { return raw_read(a, o); },
                             [&](std::uint64_t a, std::span<const std::byte> i) { return raw_write(a, i); });
        if (bp.kind == gdb::break_kind::read) return vcpu::error{"Z3", ENOTSUP};
        hw.push_back(bp);
        return vcpu::ok();
    }
    vcpu::result<void> remove_breakpoint(const gdb::breakpoint& bp) {
        if (bp.kind == gdb::break_kind::software)
            return sw.remove(bp.address, [&](std::uint64_t a, std::span<const std::byte> i) { return raw_write(a, i); });
        std::erase(hw, bp);
        return vcpu::ok();
    }
    void set_u64(unsigned cpu, vcpu::x86_64::gdb_reg r, std::uint64_t v) {
        std::memcpy(regs[cpu].data() + offset(static_cast<std::size_t>(r)), &v, 8);
    }
    std::uint64_t u64(unsigned cpu, vcpu::x86_64::gdb_reg r) const {
        std::uint64_t v;
        std::memcpy(&v, regs[cpu].data() + offset(static_cast<std::size_t>(r)), 8);
        return v;
    }
};
static_assert(gdb::GdbTarget<fake_target>);
static_assert(gdb::GdbTransport<gdb::stream>);

/// The debugger's end of a socketpair: sends packets, reads replies (acks stripped).
struct client {
    int fd;
    void send_raw(std::string_view s) const { REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size())); }
    void send(std::string_view payload) const { send_raw(gdb::frame(payload)); }
    /// Sends `escaped` as it is (binary data gdb already escaped), with its checksum.
    void send_escaped(std::string_view escaped) const {
        const auto cs = gdb::checksum(escaped);
        send_raw("$" + std::string(escaped) + "#" + gdb::hex_digit(cs >> 4) + gdb::hex_digit(cs));
    }
    /// The next packet's payload (skipping `+`), checking its checksum.
    std::string reply() const {
        gdb::packet_reader r;
        char c;
        for (;;) {
            REQUIRE(::recv(fd, &c, 1, 0) == 1);
            auto k = r.feed(c);
            if (k == gdb::input_kind::packet) return r.payload();
            REQUIRE(k != gdb::input_kind::bad_checksum);
        }
    }
};

struct pair_fixture {
    int fds[2]{};
    pair_fixture() { REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0); }
};

} // namespace

TEST_CASE("gdb protocol: checksums, framing with escapes, hex") {
    CHECK(gdb::frame("OK") == "$OK#9a");
    CHECK(gdb::frame("") == "$#00");
    // `#`, `$`, `}`, `*` are escaped, and the checksum covers the escaped bytes.
    const std::string f = gdb::frame("a#b");
    CHECK(f == "$a}\x03" "b#" + std::string(1, gdb::hex_digit(gdb::checksum("a}\x03" "b") >> 4)) +
                   gdb::hex_digit(gdb::checksum("a}\x03" "b")));
    std::string un;
    CHECK(gdb::unescape_binary("a}\x03" "b}]", un));
    CHECK(un == "a#b}");
    CHECK_FALSE(gdb::unescape_binary("ab}", un));
    std::array<std::byte, 2> b{};
    CHECK(gdb::parse_hex_bytes("0aFf", b));
    CHECK(b[0] == std::byte{0x0a});
    CHECK(b[1] == std::byte{0xff});
    CHECK_FALSE(gdb::parse_hex_bytes("0aF", b));
    CHECK_FALSE(gdb::parse_hex_bytes("0aFg", b));
    CHECK(gdb::parse_hex_number("ffffffff81000000") == 0xffffffff81000000ull);
    CHECK_FALSE(gdb::parse_hex_number("10000000000000000").has_value()); // 17 digits
    CHECK_FALSE(gdb::parse_hex_number("").has_value());
    std::string n;
    gdb::append_hex_number(n, 0);
    gdb::append_hex_number(n, 0x1f);
    CHECK(n == "01f");
}

TEST_CASE("gdb protocol: the reader reports packets, bad checksums, acks, interrupts, overflow") {
    gdb::packet_reader r(8);
    auto feed = [&](std::string_view s) {
        gdb::input_kind last = gdb::input_kind::none;
        for (char c : s) last = r.feed(c);
        return last;
    };
    CHECK(feed("$OK#9a") == gdb::input_kind::packet);
    CHECK(r.payload() == "OK");
    CHECK(feed("$OK#9b") == gdb::input_kind::bad_checksum);
    CHECK(feed("$OK#zz") == gdb::input_kind::bad_checksum);
    CHECK(feed("+") == gdb::input_kind::ack);
    CHECK(feed("-") == gdb::input_kind::nack);
    CHECK(feed("\x03") == gdb::input_kind::interrupt);
    CHECK(feed(gdb::frame("123456789")) == gdb::input_kind::overflow); // 9 > limit 8
    CHECK(feed(gdb::frame("12345678")) == gdb::input_kind::packet);
    // 0x03 inside a packet is data, not an interrupt.
    CHECK(feed("$a\x03") == gdb::input_kind::none);
    CHECK(r.in_packet());
}

TEST_CASE("gdb arch descriptions match gdb's layouts") {
    CHECK(vcpu::x86_64::gdb_arch.register_bytes() == 536);
    CHECK(std::string_view(vcpu::x86_64::gdb_arch.registers[16].name) == "rip");
    CHECK(std::string_view(vcpu::x86_64::gdb_arch.registers[56].name) == "mxcsr");
    CHECK(vcpu::aarch64::gdb_arch.register_bytes() == 31 * 8 + 8 + 8 + 4 + 32 * 16 + 8);
    CHECK(std::string_view(vcpu::aarch64::gdb_arch.registers[32].name) == "pc");
    CHECK(std::string_view(vcpu::riscv64::gdb_arch.registers[32].name) == "pc");
    CHECK(std::string_view(vcpu::riscv64::gdb_arch.registers[2].name) == "sp");
    CHECK(vcpu::riscv64::gdb_arch.registers.size() == 68);
    for (const auto* a : {&vcpu::x86_64::gdb_arch, &vcpu::aarch64::gdb_arch, &vcpu::riscv64::gdb_arch})
        for (const auto& reg : a->registers) CHECK(reg.bits % 8 == 0);
}

TEST_CASE("gdb session: every packet against a fake two-vCPU x86-64 target") {
    pair_fixture p;
    fake_target t;
    t.set_u64(0, vcpu::x86_64::gdb_reg::rip, 0x1000);
    t.set_u64(1, vcpu::x86_64::gdb_reg::rip, 0x2000);
    for (std::size_t i = 0; i < 16; ++i) t.mem[i] = static_cast<std::byte>(0x90 + i);
    gdb::session s(gdb::stream(p.fds[0]));
    client c{p.fds[1]};
    vcpu::result<gdb::request> req = gdb::request{};
    // Serve in a thread; each exchange below ends in a request or a closed connection.
    auto serve = [&] { std::thread th([&] { req = s.serve(t); }); return th; };
    std::thread th = serve();

    c.send("qSupported:multiprocess+;swbreak+;hwbreak+");
    CHECK(c.reply().find("swbreak+") != std::string::npos);
    c.send("?");
    CHECK(c.reply() == "T05thread:1;");
    c.send("qfThreadInfo");
    CHECK(c.reply() == "m1,2");
    c.send("qsThreadInfo");
    CHECK(c.reply() == "l");
    c.send("qAttached");
    CHECK(c.reply() == "1");
    c.send("qXfer:features:read:target.xml:0,fff");
    {
        const std::string x = c.reply();
        CHECK(x.rfind("l<?xml", 0) == 0);
        CHECK(x.find("<architecture>i386:x86-64</architecture>") != std::string::npos);
        CHECK(x.find("name=\"xmm15\" bitsize=\"128\"") != std::string::npos);
        CHECK(x.find("regnum=\"56\"") != std::string::npos);
    }
    c.send("qXfer:features:read:target.xml:0,10"); // in pieces: `m` until the last
    CHECK(c.reply() == "m<?xml version=\"1");
    c.send("qXfer:features:read:other.xml:0,10");
    CHECK(c.reply() == "E02");
    // Registers: `g` is 536 bytes in hex, fop (unreadable) shows as xx.
    c.send("g");
    {
        const std::string g = c.reply();
        REQUIRE(g.size() == 2 * 536);
        CHECK(g.substr(2 * 128, 16) == "0010000000000000"); // rip, little-endian
        CHECK(g.substr(2 * fake_target::offset(39), 8) == "xxxxxxxx");
    }
    c.send("Hg2");
    CHECK(c.reply() == "OK");
    c.send("p10");
    CHECK(c.reply() == "0020000000000000");
    c.send("P10=0830000000000000");
    CHECK(c.reply() == "OK");
    CHECK(t.u64(1, vcpu::x86_64::gdb_reg::rip) == 0x3008);
    c.send("P99=00");
    CHECK(c.reply() == "E16"); // EINVAL
    c.send("Hg3");
    CHECK(c.reply() == "E16"); // no such thread
    c.send("T2");
    CHECK(c.reply() == "OK");
    c.send("T3");
    CHECK(c.reply() == "E16");
    c.send("Hg1");
    CHECK(c.reply() == "OK");
    // Memory: read, unmapped, write in hex and in binary with escapes.
    c.send("m1000,4");
    CHECK(c.reply() == "90919293");
    c.send("m100000,4");
    CHECK(c.reply() == "E0e"); // EFAULT
    c.send("M1004,2:abcd");
    CHECK(c.reply() == "OK");
    c.send("m1004,2");
    CHECK(c.reply() == "abcd");
    c.send_escaped(std::string("X1008,3:") + "}\x03" "}]*"); // '#' and '}' escaped; '*' is data from gdb
    CHECK(c.reply() == "OK");
    CHECK(t.mem[8] == std::byte{'#'});
    CHECK(t.mem[9] == std::byte{'}'});
    CHECK(t.mem[10] == std::byte{'*'});
    c.send_escaped(std::string("X1008,2:") + "}\x03" "}]*"); // three bytes for a length of two
    CHECK(c.reply() == "E16");
    c.send("X1008,0:"); // gdb's probe for X support
    CHECK(c.reply() == "OK");
    c.send("M1000,2:zz");
    CHECK(c.reply() == "E16");
    // Breakpoints: Z0 writes INT3 but reads show the original byte; Z3 unsupported -> empty.
    c.send("Z0,1001,1");
    CHECK(c.reply() == "OK");
    CHECK(t.mem[1] == std::byte{0xcc});
    c.send("m1000,2");
    CHECK(c.reply() == "9091");
    c.send("Z3,2000,4");
    CHECK(c.reply().empty());
    c.send("Z2,2000,8");
    CHECK(c.reply() == "OK");
    REQUIRE(t.hw.size() == 1);
    CHECK(t.hw[0] == gdb::breakpoint{gdb::break_kind::write, 0x2000, 8});
    c.send("z0,1001,1");
    CHECK(c.reply() == "OK");
    CHECK(t.mem[1] == std::byte{0x91});
    c.send("vCont?");
    CHECK(c.reply() == "vCont;c;C;s;S");
    c.send("qRcmd,6869"); // not offered: empty reply
    CHECK(c.reply().empty());
    // A corrupted packet is NAKed; a NAK from gdb resends our last reply.
    c.send_raw("$m1000,1#00");
    {
        char ch = 0;
        REQUIRE(::recv(c.fd, &ch, 1, 0) == 1);
        CHECK(ch == '-');
    }
    c.send_raw("-");
    CHECK(c.reply().empty()); // the qRcmd reply again
    // vCont;s:2 -> step vCPU 1.
    c.send("vCont;s:2;c");
    th.join();
    REQUIRE(req);
    CHECK(req->kind == gdb::request_kind::step);
    CHECK(req->cpu == 1);
    CHECK(gdb::is_running(req->kind));
    REQUIRE(s.stopped({gdb::stop_kind::step, 1}));
    CHECK(c.reply() == "T05thread:2;");

    th = serve();
    c.send("c");
    th.join();
    REQUIRE(req);
    CHECK(req->kind == gdb::request_kind::resume);
    // While "running": Ctrl-C is noticed without blocking; nothing pending is not.
    auto none = s.interrupt_requested();
    REQUIRE(none);
    CHECK_FALSE(*none);
    c.send_raw("\x03");
    for (int i = 0; i < 100; ++i) { // the byte crosses the socketpair at once; allow a moment
        auto irq = s.interrupt_requested();
        REQUIRE(irq);
        if (*irq) break;
        REQUIRE(i < 99);
        ::usleep(1000);
    }
    REQUIRE(s.stopped({gdb::stop_kind::interrupt, 0}));
    CHECK(c.reply() == "T02thread:1;");
    REQUIRE(s.stopped({gdb::stop_kind::software, 0}));
    CHECK(c.reply() == "T05swbreak:;thread:1;");
    REQUIRE(s.stopped({gdb::stop_kind::hardware, 1}));
    CHECK(c.reply() == "T05hwbreak:;thread:2;");
    REQUIRE(s.stopped({gdb::stop_kind::watch, 0, 0x2004, gdb::break_kind::access}));
    CHECK(c.reply() == "T05awatch:2004;thread:1;");

    th = serve();
    c.send_raw("\x03"); // while stopped: the stop is reported again
    CHECK(c.reply() == "T05awatch:2004;thread:1;");
    c.send("QStartNoAckMode");
    CHECK(c.reply() == "OK");
    c.send("m1000,1");
    {
        char ch = 0;
        REQUIRE(::recv(c.fd, &ch, 1, 0) == 1);
        CHECK(ch == '$'); // no '+' any more
        std::string rest;
        while (rest.size() < 5) {
            REQUIRE(::recv(c.fd, &ch, 1, 0) == 1);
            rest += ch;
        }
        CHECK(rest.substr(0, 2) == "90");
    }
    c.send("D;1");
    th.join();
    REQUIRE(req);
    CHECK(req->kind == gdb::request_kind::detach);
    CHECK_FALSE(req->connection_closed);
    CHECK(c.reply() == "OK");
    REQUIRE(s.stopped({gdb::stop_kind::exited, 0, 0, gdb::break_kind::write, 3}));
    CHECK(c.reply() == "W03");

    th = serve();
    ::close(c.fd);
    th.join();
    REQUIRE(req);
    CHECK(req->kind == gdb::request_kind::detach);
    CHECK(req->connection_closed);
}

TEST_CASE("gdb software breakpoints: capacity, idempotence, unmapped memory") {
    std::array<std::byte, 16> mem{};
    auto rd = [&](std::uint64_t a, std::span<std::byte> o) -> vcpu::result<std::size_t> {
        if (a + o.size() > mem.size()) return std::size_t{0};
        std::memcpy(o.data(), mem.data() + a, o.size());
        return o.size();
    };
    auto wr = [&](std::uint64_t a, std::span<const std::byte> i) -> vcpu::result<void> {
        std::memcpy(mem.data() + a, i.data(), i.size());
        return vcpu::ok();
    };
    gdb::software_breakpoints<2> sw;
    const std::array<std::byte, 4> brk{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
    mem[4] = std::byte{0x55};
    REQUIRE(sw.insert(4, brk, rd, wr));
    REQUIRE(sw.insert(4, brk, rd, wr)); // again: nothing changes, the saved bytes stay the program's
    CHECK(sw.size() == 1);
    CHECK(mem[4] == std::byte{1});
    std::array<std::byte, 8> view{};
    std::memcpy(view.data(), mem.data(), 8);
    sw.hide(0, view);
    CHECK(view[4] == std::byte{0x55});
    auto far = sw.insert(14, brk, rd, wr); // 14..17 is past the end
    REQUIRE_FALSE(far);
    CHECK(far.err().code == EFAULT);
    REQUIRE(sw.insert(8, brk, rd, wr));
    auto full = sw.insert(0, brk, rd, wr);
    REQUIRE_FALSE(full);
    CHECK(full.err().code == ENOSPC);
    REQUIRE(sw.remove(4, wr));
    CHECK(mem[4] == std::byte{0x55});
    CHECK_FALSE(sw.contains(4));
    REQUIRE(sw.remove(4, wr)); // absent: nothing to do
}

#if defined(__x86_64__)
namespace {
} // namespace

TEST_CASE("gdb session: Debian's gdb in batch mode drives the stub over TCP") {
    auto l = gdb::listener::open(0);
    REQUIRE_MESSAGE(l, (l ? "" : l.err().message()));
    fake_target t;
    t.set_u64(0, vcpu::x86_64::gdb_reg::rip, 0x1000);
    for (std::size_t i = 0; i < 16; ++i) t.mem[i] = static_cast<std::byte>(0x90 + i);
    std::vector<std::string> served; // what the run loop was asked, in order
    std::string loop_error;
    std::thread vmm([&] {
        auto conn = l->accept(60000);
        if (!conn) {
            loop_error = conn.err().message();
            return;
        }
        gdb::session s(std::move(*conn));
        for (;;) {
            auto req = s.serve(t);
            if (!req) {
                loop_error = req.err().message();
                return;
            }
            if (!gdb::is_running(req->kind)) {
                served.push_back(req->kind == gdb::request_kind::kill ? "kill" : "detach");
                return;
            }
            // The fake guest: a step advances RIP by one; a continue runs to the next software
            // breakpoint after RIP, else writes 42 to a watched address, else ends.
            const std::uint64_t rip = t.u64(req->cpu, vcpu::x86_64::gdb_reg::rip);
            vcpu::result<void> sent = vcpu::ok();
            if (req->kind == gdb::request_kind::step) {
                served.push_back("step");
                t.set_u64(req->cpu, vcpu::x86_64::gdb_reg::rip, rip + 1);
                sent = s.stopped({gdb::stop_kind::step, req->cpu});
            } else {
                served.push_back("resume");
                std::uint64_t next = 0;
                for (std::uint64_t a = rip + 1; a < rip + 0x100 && next == 0; ++a)
                    if (t.sw.contains(a)) next = a;
                if (next != 0) {
                    t.set_u64(req->cpu, vcpu::x86_64::gdb_reg::rip, next);
                    sent = s.stopped({gdb::stop_kind::software, req->cpu});
                } else if (!t.hw.empty()) {
                    const auto w = t.hw.front();
                    t.mem[w.address - fake_target::base] = std::byte{42};
                    sent = s.stopped({gdb::stop_kind::watch, req->cpu, w.address, w.kind});
                } else {
                    sent = s.stopped({gdb::stop_kind::exited, req->cpu, 0, gdb::break_kind::write, 0});
                }
            }
            if (!sent) {
                loop_error = sent.err().message();
                return;
            }
        }
    });
    char out_template[] = "/tmp/vcpu-gdb-XXXXXX";
    const int fd = ::mkstemp(out_template);
    REQUIRE(fd >= 0);
    ::close(fd);
    const std::string port = std::to_string(l->port());
    const int rc = test_support::run_with_timeout(
        {"gdb", "-nx", "-q", "-batch", "-ex", "set architecture i386:x86-64", "-ex",
         "target remote 127.0.0.1:" + port, "-ex", "info registers rip", "-ex", "x/2xb 0x1000", "-ex",
         "break *0x1004", "-ex", "continue", "-ex", "stepi", "-ex", "print/x $rip", "-ex", "set var $rax = 0x1234",
         "-ex", "print/x $rax", "-ex", "watch *(long*)0x1100", "-ex", "continue", "-ex", "detach"},
        out_template, 60);
    vmm.join();
    const std::string out = test_support::read_file(out_template);
    std::remove(out_template);
    INFO("gdb output:\n" << out);
    REQUIRE_MESSAGE(rc != -2, "gdb not found: scripts/deps installs Debian's gdb");
    CHECK(rc == 0);
    CHECK(loop_error.empty());
    CHECK(out.find("rip            0x1000") != std::string::npos);
    CHECK(out.find("0x1000:\t0x90\t0x91") != std::string::npos);
    CHECK(out.find("Breakpoint 1, 0x0000000000001004") != std::string::npos);
    CHECK(out.find("$1 = 0x1005") != std::string::npos);
    CHECK(out.find("$2 = 0x1234") != std::string::npos);
    CHECK(out.find("New value = 42") != std::string::npos);
    CHECK(t.u64(0, vcpu::x86_64::gdb_reg::rax) == 0x1234);
    CHECK(t.sw.size() == 0); // gdb removed its breakpoint before detaching
    CHECK(t.mem[4] == std::byte{0x94});
    const std::vector<std::string> expected{"resume", "step", "resume", "detach"};
    CHECK(served == expected);
}
#endif
