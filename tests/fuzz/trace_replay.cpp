// Fuzzes the exit-trace parser and the replay HAL (kvm/trace.hpp, kvm/replay.hpp) with
// arbitrary trace bytes; the seeds include tests/data/hello.trace, recorded on /dev/kvm
// (examples/guides/record_replay.cpp).
//
// Input: the trace file.
// Invariants: trace::parse either accepts every byte as header + records (record lengths adding
// up to the file size, each exit payload splitting into its parts) or fails with "read trace"
// EPROTO and a reason; replay::hal::vcpu::make fails whenever parse does (with parse's error or
// its own "read trace" EPROTO ordering error); a replay through basic_vcpu delivers each exit once, ends
// with "replay" ENODATA after the last exit or "replay" EPROTO naming a wrong answer, and never
// reads outside the trace or its kvm_run area (ASan). A trace that replays to the end replays
// the same way a second time after rewind().
#include "trace_common.hpp"

#include <kvm/mock.hpp>
#include <kvm/record.hpp>
#include <kvm/replay.hpp>
#include <kvm/trace.hpp>

#include <cstdio>

namespace {
using namespace vcpu_fuzz;
using replay_vcpu = vcpu::kvm::replay::hal::vcpu<trace_arch>;

void check_trace_error(const vcpu::error& e) {
    VCPU_FUZZ_CHECK(std::string_view(e.op) == "read trace" && e.code == EPROTO);
    VCPU_FUZZ_CHECK(e.detail != nullptr && e.detail[0] != '\0');
}
} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    // hello.trace, found from the working directory (scripts/fuzz and ctest run from the tree).
    for (const char* p : {"tests/data/hello.trace", "../tests/data/hello.trace", "../../tests/data/hello.trace"}) {
        if (std::FILE* f = std::fopen(p, "rb")) {
            std::vector<std::uint8_t> b(1 << 16);
            b.resize(std::fread(b.data(), 1, b.size(), f));
            std::fclose(f);
            out.add("hello", b);
            auto cut = b;
            cut.resize(cut.size() - 5);
            out.add("hello_truncated", cut);
            auto other = b;
            other[10] = 2; // aarch64
            out.add("hello_other_arch", other);
            auto bad_answer = b;
            bad_answer[bad_answer.size() - 1] ^= 0xff;
            out.add("hello_bad_last_record", bad_answer);
            break;
        }
    }
    // A session of every recordable kind, recorded through the mock.
    vcpu::kvm::mock::script s;
    const std::byte xyz[] = {std::byte{'x'}, std::byte{'y'}, std::byte{'z'}};
    s.io_out(0x3f8, 1, 'A').io_in(0x3fd, 1).io_in(0x60, 4, 3).coalesced(0xd0001000, 4, 7).coalesced(0x510, 2, 9, true)
        .mmio_write(0xd0000000, 4, 0x11).mmio_read(0xd0000004, 8).hypercall(9, {1, 2, 3, 4, 5, 6})
        .io_string_out(0x3f8, 1, xyz).system_event(KVM_SYSTEM_EVENT_RESET).interrupted().shutdown()
        .raw(KVM_EXIT_X86_RDMSR, [](::kvm_run& r) { r.msr.index = 0x10; })
        .raw(KVM_EXIT_INTERNAL_ERROR, [](::kvm_run& r) { r.internal.ndata = 40; })
        .raw(KVM_EXIT_IO, [](::kvm_run& r) { r.io.size = 3; r.io.count = 1; r.io.data_offset = 4096; })
        .hlt();
    using rec = vcpu::kvm::record::hal<vcpu::kvm::mock::hal>;
    vcpu::basic_vcpu<trace_arch, rec> cpu{rec::vcpu<trace_arch>(vcpu::kvm::mock::hal::vcpu<trace_arch>(s))};
    session_log log;
    (void)run_session(cpu, log);
    (void)cpu.hal().finish();
    const auto t = cpu.hal().bytes();
    const auto* p = reinterpret_cast<const std::uint8_t*>(t.data());
    out.add("mock_session", std::vector<std::uint8_t>(p, p + t.size()));
    out.add("header_only", std::vector<std::uint8_t>(p, p + vcpu::kvm::trace::header_bytes));
    auto bad_version = std::vector<std::uint8_t>(p, p + t.size());
    bad_version[offsetof(vcpu::kvm::trace::file_header, version)] = 9;
    out.add("bad_version", bad_version);
    auto bad_len = std::vector<std::uint8_t>(p, p + t.size());
    bad_len[vcpu::kvm::trace::header_bytes] = 0xff; // first record's length
    out.add("bad_record_length", bad_len);
    out.add("empty", std::vector<std::uint8_t>{});
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* b = reinterpret_cast<const std::byte*>(data);
    const std::span<const std::byte> bytes(b, size);

    std::size_t records = 0, covered = vcpu::kvm::trace::header_bytes;
    const auto parsed = vcpu::kvm::trace::parse(bytes, vcpu::kvm::trace::arch_id<trace_arch>(), [&](const vcpu::kvm::trace::record& r) {
        ++records;
        VCPU_FUZZ_CHECK(inside(r.payload.data(), r.payload.size(), data, size));
        covered += vcpu::kvm::trace::record_head_bytes + r.payload.size();
        if (r.type == vcpu::kvm::trace::record_type::exit) {
            const auto e = vcpu::kvm::trace::split_exit(r.payload);
            VCPU_FUZZ_CHECK(e.has_value());
            VCPU_FUZZ_CHECK(e->exit_union.size() <= vcpu::kvm::trace::union_bytes && e->pio.size() <= vcpu::kvm::trace::max_pio_bytes);
            VCPU_FUZZ_CHECK(inside(e->pio.data(), e->pio.size(), r.payload.data(), r.payload.size()));
        }
        return true;
    });
    if (!parsed) {
        check_trace_error(parsed.err());
    } else {
        VCPU_FUZZ_CHECK(covered == size); // every byte is header or a record
    }

    // The replay HAL over a copy of exactly these bytes (a heap buffer of the input's size).
    auto made = replay_vcpu::make(std::vector<std::byte>(b, b + size));
    if (!made) {
        check_trace_error(made.err());
        // make() stops at the first record out of order, which may come before what parse rejects.
        const std::string_view d = made.err().detail;
        if (!parsed) VCPU_FUZZ_CHECK(d == parsed.err().detail || d == "exit records are out of order" ||
                                     d == "answer or coalesced record without its exit");
        note("trace: %s", made.err().message().c_str());
        return 0;
    }
    VCPU_FUZZ_CHECK(parsed.has_value() && made->size() <= records);
    const std::size_t n = made->size();
    vcpu::basic_vcpu<trace_arch, vcpu::kvm::replay::hal> cpu(std::move(*made));
    session_log log;
    const vcpu::error end = run_session(cpu, log);
    VCPU_FUZZ_CHECK(std::string_view(end.op) == "replay" && (end.code == ENODATA || end.code == EPROTO));
    VCPU_FUZZ_CHECK(end.detail != nullptr && end.detail[0] != '\0' && !end.message().empty());
    VCPU_FUZZ_CHECK(cpu.hal().delivered() <= n && log.exits <= n);
    if (end.code == ENODATA) {
        VCPU_FUZZ_CHECK(cpu.hal().delivered() == n && log.exits == n);
        // Deterministic: a second pass sees the same exits.
        cpu.hal().rewind();
        session_log again;
        const vcpu::error end2 = run_session(cpu, again);
        VCPU_FUZZ_CHECK(end2.code == ENODATA && again.words == log.words);
    }
    note("trace: %zu records, %zu exits, replay ended: %s", records, n, end.message().c_str());
    return 0;
}
