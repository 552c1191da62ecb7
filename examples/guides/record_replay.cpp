// record_replay: record a run of the hello guest (examples/hello) to an exit trace, then replay
// the trace through the same handlers without KVM, as in docs/guides/testing-without-kvm.md.
//
//   record_replay [--kvm | --mock] [--expect FILE] [TRACE]
//
// --kvm records on /dev/kvm (exit 77, ctest: skipped, when it cannot be opened); --mock records
// over the mock HAL playing the exits the guest makes; with neither, KVM when /dev/kvm opens,
// else the mock. TRACE also writes the trace to that file: `record_replay --kvm
// tests/data/hello.trace` regenerates the trace that tests/unit/replay.cpp and the trace fuzzer
// read. --expect FILE also checks that the trace is byte for byte the one in FILE. Exit status 0
// when the replay reproduced the recorded run and caught a changed answer.

#include "../hello/guest.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <kvm/mock.hpp>
#include <kvm/record.hpp>
#include <kvm/replay.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace {

using arch = vcpu::arch::x86_64;
namespace kvm = vcpu::kvm;

/// What the VMM saw of the guest.
struct outcome {
    std::string printed;
    std::uint32_t answer_back = 0;
    bool halted = false;
    bool operator==(const outcome&) const = default;
};

/// The handlers of examples/hello, for any HAL: KVM, recording, mock or replay. `question` is
/// the number the VMM answers the guest's IN with (hello: 41).
template <class Cpu>
vcpu::result<outcome> run_hello(Cpu& cpu, std::uint32_t question = 41) {
    outcome o;
    auto last = cpu.run(
        [&](vcpu::port_io& io) {
            if (io.port != hello::debug_port) return vcpu::action::stop;
            if (io.is_in()) io.set(question);
            else if (io.size == 1) o.printed += static_cast<char>(io.value());
            else o.answer_back = io.value();
            return vcpu::action::resume;
        },
        [](vcpu::halt) { return vcpu::action::stop; });
    if (!last) return last.err();
    o.halted = std::holds_alternative<vcpu::halt>(*last);
    return o;
}

/// Runs `cpu` (a recording vCPU) through hello's handlers and returns the trace: from the
/// file when `path` is given (the recorder then writes full buffers there as it goes), else
/// from the recorder's buffer.
template <class Cpu>
vcpu::result<std::vector<std::byte>> record(Cpu& cpu, const char* path, outcome& seen) {
    if (path != nullptr)
        if (auto r = cpu.hal().open(path); !r) return r.err();
    auto o = run_hello(cpu);
    if (!o) return o.err();
    seen = *o;
    if (auto r = cpu.hal().finish(); !r) return r.err(); // records the last answer, flushes
    std::printf("recorded %llu exits\n", static_cast<unsigned long long>(cpu.hal().exits()));
    if (path != nullptr) return kvm::replay::read_file(path);
    const auto b = cpu.hal().bytes();
    return std::vector<std::byte>(b.begin(), b.end());
}

/// Records hello on /dev/kvm: the KVM HAL's vCPU moves into the recording HAL.
/// The error's operation is "open /dev/kvm" when there is no KVM to record on.
vcpu::result<std::vector<std::byte>> record_on_kvm(const char* path, outcome& seen) {
    kvm::x86_64_options opt;
    opt.ram_bytes = 64 * 1024;
    opt.irqchip = opt.pit = false;
    auto machine = kvm::vm_init_x86_64(opt, vcpu::x86_64::real_mode{0, hello::load_address, 0});
    if (!machine) return machine.err();
    const auto as_bytes = [](const auto& a) { return std::as_bytes(std::span(a)); };
    if (auto r = machine->memory.write(hello::load_address, as_bytes(hello::code)); !r) return r.err();
    if (auto r = machine->memory.write(hello::load_address + 0x20, as_bytes(hello::message)); !r)
        return r.err();

    using recording = kvm::record::hal<kvm::hal>;
    vcpu::basic_vcpu<arch, recording> cpu(
        recording::vcpu<arch>(std::move(machine->vcpus.front().hal())));
    return record(cpu, path, seen);
}

/// Records over the mock instead: the script is the guest's exits (one OUT per byte, the IN,
/// the 16-bit OUT of its answer, HLT). The trace has the same form as one made on KVM.
vcpu::result<std::vector<std::byte>> record_on_mock(const char* path, outcome& seen) {
    kvm::mock::script s;
    for (const char* c = hello::message; *c != '\0'; ++c)
        s.io_out(hello::debug_port, 1, static_cast<std::uint8_t>(*c));
    s.io_in(hello::debug_port, 2).io_out(hello::debug_port, 2, 42).hlt();

    using recording = kvm::record::hal<kvm::mock::hal>;
    vcpu::basic_vcpu<arch, recording> cpu(
        recording::vcpu<arch>(kvm::mock::hal::vcpu<arch>(std::move(s))));
    return record(cpu, path, seen);
}

int failures = 0;
void check(bool ok, const char* what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    if (!ok) ++failures;
}

} // namespace

int main(int argc, char** argv) {
    enum class source { any, kvm, mock } from = source::any;
    const char* path = nullptr;
    const char* expect = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--expect") == 0 && i + 1 < argc) expect = argv[++i];
        else if (std::strcmp(argv[i], "--kvm") == 0) from = source::kvm;
        else if (std::strcmp(argv[i], "--mock") == 0) from = source::mock;
        else path = argv[i];
    }

    // 1. Record.
    outcome recorded;
    auto trace = from == source::mock ? record_on_mock(path, recorded) : record_on_kvm(path, recorded);
    if (!trace && std::strcmp(trace.err().op, "open /dev/kvm") == 0) {
        if (from == source::kvm) {
            std::printf("SKIPPED: %s\n", trace.err().message().c_str());
            return 77;
        }
        std::printf("no /dev/kvm: recording over the mock HAL\n");
        trace = record_on_mock(path, recorded);
    }
    if (!trace) {
        std::fprintf(stderr, "record_replay: record: %s\n", trace.err().message().c_str());
        return 1;
    }

    if (expect != nullptr) {
        auto want = kvm::replay::read_file(expect);
        check(want && *want == *trace, "the trace is byte for byte the expected one");
    }

    // 2. Replay the trace through the same handlers: no KVM, the same exits in the same order,
    //    and every answer the handlers give is compared with the recorded one.
    auto rv = kvm::replay::hal::vcpu<arch>::make(*trace);
    if (!rv) {
        std::fprintf(stderr, "record_replay: bad trace: %s\n", rv.err().message().c_str());
        return 1;
    }
    vcpu::basic_vcpu<arch, kvm::replay::hal> replayed(std::move(*rv));
    auto again = run_hello(replayed);
    auto last_answer = replayed.hal().verify_last(); // run() checked all answers but the last
    check(again && last_answer, "the replay ran to the end with every answer as recorded");
    check(again && *again == recorded, "the replay printed and answered what the recorded run did");
    check(replayed.hal().delivered() == replayed.hal().size(), "every recorded exit was delivered");

    // 3. A VMM that changed its answer is caught at the next entry, with the exit named.
    auto rv2 = kvm::replay::hal::vcpu<arch>::make(*trace);
    if (!rv2) return 1;
    vcpu::basic_vcpu<arch, kvm::replay::hal> changed(std::move(*rv2));
    auto drift = run_hello(changed, 40);
    check(!drift && drift.err().code == EPROTO, "answering 40 instead of 41 fails the replay");
    if (!drift) std::printf("  %s\n", drift.err().message().c_str());

    std::fputs(recorded.printed.c_str(), stdout);
    std::printf("%s\n", failures == 0 ? "record_replay: all checks passed" : "record_replay: FAILED");
    return failures == 0 ? 0 : 1;
}
