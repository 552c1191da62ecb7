// The GDB stub on real KVM: Debian's gdb, in batch mode, debugs a C++ guest through
// vcpu::gdb::session and kvm::x86_64_gdb_target — a breakpoint on a guest function (by its
// symbol: the guest runs this executable's code at its own addresses), the argument register,
// a single step, a guest variable, a hardware write watchpoint, and the guest running to its end.
#include "support.hpp"
#include "../common/subprocess.hpp"

#include <kvm/host.hpp>
#include <kvm/x86_64_gdb.hpp>
#include <vcpu/gdb/session.hpp>
#include <vcpu/gdb/socket.hpp>

#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <variant>
#include <vector>


// ---- guest code (extern "C": gdb finds them by their plain names, with or without -g) --------

extern "C" {
constinit volatile long vcpu_gdb_counter = 0;

VCPU_GUEST_CODE __attribute__((noinline)) long vcpu_gdb_work(long x) {
    long acc = x;
    for (int i = 0; i < 3; ++i) {
        acc = acc * 3 + 1;
        vcpu_gdb_counter = acc;
    }
    return acc;
}

VCPU_GUEST_CODE void vcpu_gdb_guest(long x) {
    const long r = vcpu_gdb_work(x);
    vcpu::guest::ucall::sync(static_cast<std::uint64_t>(r));
}
}

namespace {
namespace kvm = vcpu::kvm;
namespace gdb = vcpu::gdb;



/// The main executable's load bias (what gdb's `symbol-file -o` wants for a PIE).
std::uintptr_t load_bias() {
    std::uintptr_t bias = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* out) {
            *static_cast<std::uintptr_t*>(out) = info->dlpi_addr;
            return 1; // the first object is the executable
        },
        &bias);
    return bias;
}

std::string hex(std::uint64_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

/// The run loop of a debugged single-vCPU guest: serves gdb, runs until a debug exit (or the
/// guest's end, reported as an exit), reports the stop, until gdb detaches or disconnects.
/// Records what it did in `log`, a failure in `error`, the guest's sync value in `synced`.
template <class Session, class Target, class Cpu, class Space>
void serve_guest(Session& s, Target& target, Cpu& cpu, const Space& space, std::vector<std::string>& log,
                 std::string& error, std::uint64_t& synced) {
    for (;;) {
        auto req = s.serve(target);
        if (!req) {
            error = req.err().message();
            return;
        }
        if (!gdb::is_running(req->kind)) {
            log.push_back(req->connection_closed ? "closed" : "detach");
            if (auto d = target.disarm(); !d) error = d.err().message();
            return;
        }
        const bool step = req->kind == gdb::request_kind::step;
        log.push_back(step ? "step" : "resume");
        if (auto a = target.arm(step ? std::optional<unsigned>(req->cpu) : std::nullopt); !a) {
            error = a.err().message();
            return;
        }
        std::optional<gdb::stop_reason> why;
        auto r = vcpu::guest::run(cpu, space, guest_test::fail_on_guest_assert(),
                                  [&](vcpu::guest::sync& sy) {
                                      synced = sy[0];
                                      return vcpu::action::resume;
                                  },
                                  [&](vcpu::debug& d) {
                                      why = target.stop_for(0, d);
                                      return vcpu::action::stop;
                                  },
                                  [&](vcpu::guest::done) {
                                      why = gdb::stop_reason{gdb::stop_kind::exited};
                                      return vcpu::action::stop;
                                  });
        if (!r) {
            error = r.err().message();
            return;
        }
        if (!why) {
            error = "the guest stopped with exit variant " + std::to_string(r->index());
            return;
        }
        log.push_back(why->kind == gdb::stop_kind::exited ? "exited" : "stopped");
        if (auto w = s.stopped(*why); !w) {
            error = w.err().message();
            return;
        }
    }
}

} // namespace

TEST_CASE("guest x86-64 debug: Debian's gdb breaks, steps, reads a variable and watches a store through the stub") {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = o.pit = false;
    auto m = kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&vcpu_gdb_guest));
    REQUIRE_MESSAGE(space, space.err().message());
    auto& cpu = m->vcpus[0];
    REQUIRE(space->enter(cpu, vcpu::guest::x86_64::call(&vcpu_gdb_guest, 7)));

    // PVM emulates guest CPL0 code: INT3 is an emulation failure there and data breakpoints do
    // not fire (guest.x86_64.calls shows both), so breakpoints live in debug registers and the
    // watchpoint part is skipped; the nested x86 machine runs all of it with INT3.
    const bool pvm = kvm::describe_host().kind == kvm::host_kind::pvm;
    std::array<std::remove_reference_t<decltype(cpu.hal())>*, 1> cpus{&cpu.hal()};
    auto memory = [&](std::uint64_t gpa, std::size_t n) { return m->memory.at(gpa, n); };
    kvm::x86_64_gdb_target target{std::span(cpus), memory, pvm};
    static_assert(gdb::GdbTarget<decltype(target)>);

    auto l = gdb::listener::open(0);
    REQUIRE_MESSAGE(l, l.err().message());
    std::vector<std::string> log; // what the run loop saw
    std::string loop_error;
    std::uint64_t synced = 0;
    std::thread vmm([&] {
        auto conn = l->accept(90000);
        if (!conn) {
            loop_error = conn.err().message();
            return;
        }
        gdb::session s(std::move(*conn));
        serve_guest(s, target, cpu, *space, log, loop_error, synced);
    });

    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    REQUIRE(n > 0);
    exe[n] = '\0';
    char out_template[] = "/tmp/vcpu-gdb-guest-XXXXXX";
    const int fd = ::mkstemp(out_template);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::vector<std::string> args{"gdb", "-nx", "-q", "-batch", "-ex", "set confirm off", "-ex",
                                  "symbol-file -o " + hex(load_bias()) + " " + exe, "-ex",
                                  "target remote 127.0.0.1:" + std::to_string(l->port()), "-ex", "break vcpu_gdb_work",
                                  "-ex", "continue", "-ex", "print/x $rdi", "-ex", "stepi", "-ex", "info symbol $pc", "-ex",
                                  "print (long)vcpu_gdb_counter"};
    if (!pvm) {
        args.insert(args.end(), {"-ex", "watch *(long*)&vcpu_gdb_counter", "-ex", "continue", "-ex", "delete 2"});
    } else {
        MESSAGE("SKIPPED: the watchpoint part: data breakpoints do not fire on this host (PVM)");
    }
    args.insert(args.end(), {"-ex", "delete", "-ex", "continue"});
    const int rc = test_support::run_with_timeout(args, out_template, 120);
    vmm.join();
    const std::string out = test_support::read_file(out_template);
    std::remove(out_template);
    INFO("gdb output:\n" << out);
    if (std::getenv("VCPU_SHOW_GDB") != nullptr) MESSAGE("gdb output:\n" << out);
    INFO("run loop: " << [&] {
        std::string s;
        for (const auto& e : log) s += e + " ";
        return s;
    }());
    if (rc == -2 && std::getenv("VCPU_KVM_HOST_LABEL") != nullptr) {
        // Inside the nested x86 machine (scripts/xarch-run sets the label) there is no gdb; the
        // scripted-client case below runs the same stub against the guest there, INT3 included.
        MESSAGE("SKIPPED: Debian's gdb is not in the nested x86 machine (the scripted-client case covers the stub there)");
        return;
    }
    REQUIRE_MESSAGE(rc != -2, "gdb not found: scripts/deps installs Debian's gdb");
    CHECK(rc == 0);
    CHECK(loop_error.empty());
    CHECK(out.find("Breakpoint 1, ") != std::string::npos);
    CHECK(out.find("vcpu_gdb_work") != std::string::npos);
    CHECK(out.find("$1 = 0x7") != std::string::npos);
    CHECK(out.find("vcpu_gdb_work + ") != std::string::npos); // `info symbol $pc` after the step
    CHECK(out.find("$2 = 0") != std::string::npos);           // the counter before the loop
    if (!pvm) {
        CHECK(out.find("Hardware watchpoint 2") != std::string::npos);
        CHECK(out.find("New value = 22") != std::string::npos); // 7 * 3 + 1
    }
    CHECK(out.find("exited normally") != std::string::npos);
    CHECK(synced == ((7 * 3 + 1) * 3 + 1) * 3 + 1); // the guest ran to its end, unchanged
}

namespace {
/// The debugger's end of a socketpair: gdb's packets by hand, replies checked by the caller.
struct scripted_gdb {
    int fd;
    void send(std::string_view payload) const {
        const std::string f = gdb::frame(payload);
        REQUIRE(::send(fd, f.data(), f.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(f.size()));
    }
    std::string reply() const {
        gdb::packet_reader r;
        char c;
        for (;;) {
            pollfd p{fd, POLLIN, 0};
            REQUIRE_MESSAGE(::poll(&p, 1, 120000) == 1, "no reply from the stub within 120 s");
            REQUIRE(::recv(fd, &c, 1, 0) == 1);
            if (r.feed(c) == gdb::input_kind::packet) return r.payload();
        }
    }
    std::string ask(std::string_view payload) const {
        send(payload);
        return reply();
    }
};
std::string le_hex(std::uint64_t v) {
    std::string s;
    gdb::append_hex(s, std::as_bytes(std::span(&v, 1)));
    return s;
}
/// Joins the run-loop thread however the test case ends: shuts the debugger's end down first, so
/// a stub waiting for a packet sees the connection close.
struct loop_joiner {
    std::thread& thread;
    int fd;
    ~loop_joiner() {
        ::shutdown(fd, SHUT_RDWR);
        if (thread.joinable()) thread.join();
    }
};
std::string hex_digits(std::uint64_t v) {
    std::string s;
    gdb::append_hex_number(s, v);
    return s;
}
} // namespace

TEST_CASE("guest x86-64 debug: the stub's packets against a real guest (breakpoint, registers, step, watchpoint, exit)") {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = o.pit = false;
    auto m = kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&vcpu_gdb_guest));
    REQUIRE_MESSAGE(space, space.err().message());
    auto& cpu = m->vcpus[0];
    REQUIRE(space->enter(cpu, vcpu::guest::x86_64::call(&vcpu_gdb_guest, 7)));
    const bool pvm = kvm::describe_host().kind == kvm::host_kind::pvm;
    std::array<std::remove_reference_t<decltype(cpu.hal())>*, 1> cpus{&cpu.hal()};
    auto memory = [&](std::uint64_t gpa, std::size_t n) { return m->memory.at(gpa, n); };
    kvm::x86_64_gdb_target target{std::span(cpus), memory, pvm};

    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    std::vector<std::string> log;
    std::string loop_error;
    std::uint64_t synced = 0;
    std::thread vmm([&] {
        gdb::session s{gdb::stream(fds[0])};
        serve_guest(s, target, cpu, *space, log, loop_error, synced);
    });
    loop_joiner joiner{vmm, fds[1]};
    INFO("run loop error: " << loop_error);
    INFO("run loop: " << [&] {
        std::string s;
        for (const auto& e : log) s += e + " ";
        return s;
    }());
    scripted_gdb g{fds[1]};
    const auto work = reinterpret_cast<std::uint64_t>(&vcpu_gdb_work);
    const auto counter = reinterpret_cast<std::uint64_t>(&vcpu_gdb_counter);

    CHECK(g.ask("?") == "T05thread:1;");
    CHECK(g.ask("p10") == le_hex(reinterpret_cast<std::uint64_t>(&vcpu_gdb_guest))); // RIP before the first run
    // Guest memory by the guest's virtual addresses: the function's first bytes as the host has them.
    {
        std::string want;
        gdb::append_hex(want, std::span(reinterpret_cast<const std::byte*>(&vcpu_gdb_work), 8));
        CHECK(g.ask("m" + hex_digits(work) + ",8") == want);
    }
    // Where breakpoints fire (KVM on hardware: INT3; PVM: a debug register), stop at the function
    // by a breakpoint; QEMU TCG's SVM in the nested machine intercepts neither INT3 nor DR0-DR3
    // (guest.x86_64.debug shows it), so there single steps walk to it instead.
    const auto host = kvm::describe_host();
    const bool qemu_svm = host.kind == kvm::host_kind::svm && std::string(host.cpu.data()).find("QEMU") != std::string::npos;
    auto rip_now = [&] {
        std::array<std::byte, 8> b{};
        REQUIRE(gdb::parse_hex_bytes(g.ask("p10"), b));
        std::uint64_t v = 0;
        std::memcpy(&v, b.data(), 8);
        return v;
    };
    if (!qemu_svm) {
        CHECK(g.ask("Z0," + hex_digits(work) + ",1") == "OK");
        if (!pvm) { // INT3 in guest memory, hidden from reads
            std::string want;
            gdb::append_hex(want, std::span(reinterpret_cast<const std::byte*>(&vcpu_gdb_work), 1));
            CHECK(g.ask("m" + hex_digits(work) + ",1") == want);
        }
        CHECK(g.ask("vCont;c") == "T05swbreak:;thread:1;");
        CHECK(g.ask("z0," + hex_digits(work) + ",1") == "OK");
    } else {
        MESSAGE("SKIPPED: breakpoints: QEMU TCG's SVM (nested machine) intercepts neither INT3 nor DR0-DR3; "
                "single steps walk to the function instead");
        int steps = 0;
        for (; steps < 500 && rip_now() != work; ++steps) REQUIRE(g.ask("vCont;s:1") == "T05thread:1;");
        MESSAGE("stepped " << steps << " instructions to vcpu_gdb_work");
    }
    CHECK(rip_now() == work); // at the function, before its first instruction
    CHECK(g.ask("p5") == le_hex(7)); // RDI: the argument
    CHECK(g.ask("vCont;s:1") == "T05thread:1;");
    {
        const std::uint64_t v = rip_now();
        CHECK(v > work);
        CHECK(v < work + 16); // one instruction further
    }
    // A register write goes into the vCPU's register cache (applied at the next run) and reads back.
    CHECK(g.ask("P3=efbeadde00000000") == "OK"); // RBX
    CHECK(g.ask("p3") == "efbeadde00000000");
    if (!pvm && !qemu_svm) {
        CHECK(g.ask("Z2," + hex_digits(counter) + ",8") == "OK");
        CHECK(g.ask("vCont;c") == "T05watch:" + hex_digits(counter) + ";thread:1;");
        CHECK(g.ask("m" + hex_digits(counter) + ",8") == le_hex(22)); // 7 * 3 + 1, just stored
        CHECK(g.ask("z2," + hex_digits(counter) + ",8") == "OK");
    } else {
        MESSAGE("SKIPPED: the watchpoint part: data breakpoints do not fire on this host (PVM, or QEMU TCG's SVM)");
    }
    CHECK(g.ask("c") == "W00");
    ::shutdown(fds[1], SHUT_RDWR);
    vmm.join();
    ::close(fds[1]);
    CHECK(loop_error.empty());
    CHECK(synced == ((7 * 3 + 1) * 3 + 1) * 3 + 1);
    REQUIRE(log.size() >= 4);
    CHECK(log.front() != "closed");
    CHECK(log[log.size() - 2] == "exited"); // the guest ran to its end under the stub
    CHECK(log.back() == "closed");

}
