// Fuzzes record -> replay round trips (kvm/record.hpp over kvm/mock.hpp, then
// kvm/replay.hpp): a fuzzed session of exits is run through record::hal<mock::hal> with a VMM
// that answers every read; the trace it writes must parse, and replaying it through the same VMM
// must deliver the same exits with the same fields, OUT data and coalesced writes, accept every
// answer (the replay HAL checks each one against the recording) and end exactly after the last
// exit. Every input is played twice: as x86_64 exits, and as riscv64 exits (whose SBI and CSR
// answers also live in kvm_run, kvm/answer.hpp).
//
// Input: a sequence of exits, each: u8 kind (selects a KVM_EXIT_* reason, or takes a raw u32
// next), u8 n and n bytes written over the kvm_run exit union, u8 OUT-data length (<= 64) and
// the bytes, u8 coalesced-write count (<= 3) and per write u64 address, u8 size, u8 pio, u64
// value. Port I/O keeps KVM's layout (data at the second page, at most one page of data), as a
// trace records it.
#include "trace_common.hpp"

#include <kvm/mock.hpp>
#include <kvm/record.hpp>
#include <kvm/replay.hpp>
#include <kvm/trace.hpp>

#include <algorithm>
#include <iterator>

namespace {
using namespace vcpu_fuzz;

constexpr std::uint32_t x86_reasons[] = {KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_HLT, KVM_EXIT_SHUTDOWN, KVM_EXIT_INTR,
                                         KVM_EXIT_HYPERCALL, KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR,
                                         KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_DEBUG,
                                         KVM_EXIT_EXCEPTION, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_NMI, KVM_EXIT_UNKNOWN};
// The same positions for riscv64 where an exit exists there (IN/OUT stay: they decode as unknown).
constexpr std::uint32_t rv_reasons[] = {KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_RISCV_SBI, KVM_EXIT_SHUTDOWN, KVM_EXIT_INTR,
                                        KVM_EXIT_RISCV_CSR, KVM_EXIT_RISCV_SBI, KVM_EXIT_RISCV_CSR,
                                        KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_DEBUG,
                                        KVM_EXIT_RISCV_SBI, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_RISCV_CSR, KVM_EXIT_UNKNOWN};
static_assert(std::size(x86_reasons) == std::size(rv_reasons));
constexpr std::size_t nreasons = std::size(x86_reasons);

vcpu::kvm::mock::script script_from(input& in, const std::uint32_t (&reasons)[nreasons]) {
    vcpu::kvm::mock::script s;
    for (int n = 0; n < 24 && in.left() > 0; ++n) {
        const auto k = in.get<std::uint8_t>();
        const std::uint32_t reason = k < nreasons ? reasons[k] : k == 0xff ? in.get<std::uint32_t>() : reasons[k % nreasons];
        const auto len = in.get<std::uint8_t>();
        const auto u = in.take(len);
        const auto pio_len = std::min<std::size_t>(in.get<std::uint8_t>(), 64);
        const auto pio = in.take(pio_len);
        const unsigned nc = in.get<std::uint8_t>() % 4u;
        for (unsigned c = 0; c < nc; ++c) {
            const auto addr = in.get<std::uint64_t>();
            const auto size = in.get<std::uint8_t>();
            const bool is_pio = in.flag();
            s.coalesced(addr, size, in.get<std::uint64_t>(), is_pio);
        }
        s.raw(reason, [&](::kvm_run& r) {
            std::memcpy(reinterpret_cast<std::byte*>(&r) + offsetof(::kvm_run, io), u.data(), u.size());
            if (reason == static_cast<std::uint32_t>(KVM_EXIT_IO)) {
                r.io.data_offset = vcpu::kvm::mock::pio_data_offset;
                const unsigned size = r.io.size == 0 ? 1 : r.io.size;
                r.io.count = std::min<std::uint32_t>(r.io.count, 4096 / size);
            }
        });
        auto& e = s.mutable_exits().back();
        std::copy(reinterpret_cast<const std::byte*>(pio.data()), reinterpret_cast<const std::byte*>(pio.data()) + pio.size(),
                  e.pio.begin());
        e.pio_len = static_cast<std::uint16_t>(pio.size());
    }
    return s;
}
} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    auto exit = [](bytes_out& b, std::uint8_t kind, std::vector<std::uint8_t> u, std::vector<std::uint8_t> pio = {},
                   unsigned coalesced = 0) {
        b.put(kind).put(static_cast<std::uint8_t>(u.size())).raw(u).put(static_cast<std::uint8_t>(pio.size())).raw(pio);
        b.put(static_cast<std::uint8_t>(coalesced));
        for (unsigned c = 0; c < coalesced; ++c) b.put(std::uint64_t{0xd0000000 + c * 4}).put(std::uint8_t{4}).put(std::uint8_t{0}).put(std::uint64_t{c + 1});
    };
    // The io union: direction, size, port (u16), count (u32), data_offset (u64).
    auto io = [](std::uint8_t dir, std::uint8_t size, std::uint16_t port, std::uint32_t count) {
        std::vector<std::uint8_t> u = {dir, size, static_cast<std::uint8_t>(port), static_cast<std::uint8_t>(port >> 8)};
        for (int i = 0; i < 4; ++i) u.push_back(static_cast<std::uint8_t>(count >> (8 * i)));
        return u;
    };
    // The mmio union: phys_addr (u64), data[8], len (u32), is_write (u8).
    auto mmio = [](std::uint64_t a, std::uint32_t len, bool wr) {
        std::vector<std::uint8_t> u;
        for (int i = 0; i < 8; ++i) u.push_back(static_cast<std::uint8_t>(a >> (8 * i)));
        for (int i = 0; i < 8; ++i) u.push_back(static_cast<std::uint8_t>(0x10 + i));
        for (int i = 0; i < 4; ++i) u.push_back(static_cast<std::uint8_t>(len >> (8 * i)));
        u.push_back(wr);
        return u;
    };
    bytes_out s1;
    exit(s1, 0, io(KVM_EXIT_IO_OUT, 1, 0x3f8, 1), {'h'});
    exit(s1, 0, io(KVM_EXIT_IO_IN, 1, 0x3fd, 1));
    exit(s1, 1, mmio(0xfee00000, 4, false), {}, 2);
    exit(s1, 1, mmio(0xfee00010, 8, true));
    exit(s1, 5, {9, 0, 0, 0, 0, 0, 0, 0, 1});
    exit(s1, 6, {0, 0, 0, 0, 0, 0, 0, 0, 0x10});
    exit(s1, 2, {});
    out.add("mixed", s1);
    bytes_out s2;
    exit(s2, 0, io(KVM_EXIT_IO_IN, 4, 0x60, 1024));
    exit(s2, 0, io(KVM_EXIT_IO_OUT, 2, 0x80, 20), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    exit(s2, 0, io(KVM_EXIT_IO_IN, 3, 0x60, 1));
    exit(s2, 0, io(KVM_EXIT_IO_IN, 1, 0x61, 0));
    out.add("port_io", s2);
    bytes_out s3;
    exit(s3, 8, {2, 0, 0, 0, 2, 0, 0, 0, 7});
    exit(s3, 9, {1, 0, 0, 0, 3, 0, 0, 0, 0xaa});
    exit(s3, 9, {1, 0, 0, 0, 40});
    exit(s3, 10, {3, 0, 0, 0, 0, 0, 0, 0, 0x10});
    exit(s3, 11, {13, 0, 0, 0, 0x18});
    exit(s3, 12, {0x21});
    exit(s3, 13, {});
    exit(s3, 14, {0x7b});
    exit(s3, 1, mmio(0, 0, false));
    exit(s3, 1, mmio(0, 9, true));
    exit(s3, 3, {}, {}, 3);
    out.add("other_kinds", s3);
    bytes_out s4;
    s4.put(std::uint8_t{0xff}).put(std::uint32_t{0x1234}).put(std::uint8_t{0}).put(std::uint8_t{0}).put(std::uint8_t{0});
    exit(s4, 4, {});
    out.add("raw_reason", s4);
    out.add("empty", std::vector<std::uint8_t>{});
}

namespace {
/// Records the session of `data` as `Arch` exits over the mock, replays the trace, compares.
template <class Arch>
void roundtrip(const std::uint8_t* data, std::size_t size, const std::uint32_t (&reasons)[nreasons]) {
    input in(data, size);
    const auto script = script_from(in, reasons);
    const std::size_t n = script.exits().size();

    using rec = vcpu::kvm::record::hal<vcpu::kvm::mock::hal>;
    using log_t = basic_session_log<typename Arch::exit_types>;
    vcpu::basic_vcpu<Arch, rec> a{typename rec::template vcpu<Arch>(vcpu::kvm::mock::hal::vcpu<Arch>(script))};
    log_t recorded;
    const vcpu::error end_a = run_session(a, recorded);
    VCPU_FUZZ_CHECK(std::string_view(end_a.op) == "mock enter" && end_a.code == ENODATA);
    VCPU_FUZZ_CHECK(recorded.exits == n && a.hal().exits() == n);
    VCPU_FUZZ_CHECK(a.hal().finish().has_value());
    const auto t = a.hal().bytes();

    auto made = vcpu::kvm::replay::hal::vcpu<Arch>::make(std::vector<std::byte>(t.begin(), t.end()));
    VCPU_FUZZ_CHECK(made.has_value());
    VCPU_FUZZ_CHECK(made->size() == n);
    vcpu::basic_vcpu<Arch, vcpu::kvm::replay::hal> b(std::move(*made));
    log_t replayed;
    const vcpu::error end_b = run_session(b, replayed);
    if (end_b.code != ENODATA) std::fprintf(stderr, "replay (%s): %s\n", Arch::name.data(), end_b.message().c_str());
    VCPU_FUZZ_CHECK(std::string_view(end_b.op) == "replay" && end_b.code == ENODATA);
    VCPU_FUZZ_CHECK(b.hal().verify_last().has_value());
    VCPU_FUZZ_CHECK(replayed.exits == n);
    if (replayed.words != recorded.words) {
        const std::size_t k = std::min(replayed.words.size(), recorded.words.size());
        std::size_t i = 0;
        while (i < k && replayed.words[i] == recorded.words[i]) ++i;
        std::fprintf(stderr, "%s: logs differ at word %zu of %zu/%zu: recorded 0x%llx, replayed 0x%llx\n",
                     Arch::name.data(), i, recorded.words.size(), replayed.words.size(),
                     static_cast<unsigned long long>(i < recorded.words.size() ? recorded.words[i] : 0),
                     static_cast<unsigned long long>(i < replayed.words.size() ? replayed.words[i] : 0));
        for (std::size_t j = i >= 6 ? i - 6 : 0; j < i; ++j)
            std::fprintf(stderr, "  word %zu: 0x%llx\n", j, static_cast<unsigned long long>(recorded.words[j]));
    }
    VCPU_FUZZ_CHECK(replayed.words == recorded.words);
    note("roundtrip %s: %zu exits, %zu trace bytes, %zu logged words", Arch::name.data(), n, t.size(),
         recorded.words.size());
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    roundtrip<trace_arch>(data, size, x86_reasons);
    roundtrip<vcpu::arch::riscv64>(data, size, rv_reasons);
    return 0;
}
