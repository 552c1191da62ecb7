// vCPU state save/restore (kvm/x86_64_state.hpp) on real KVM: a guest computes a checksum over a
// buffer, with its running values in registers and a table in memory, reporting every few
// thousand bytes with ucall::sync. The host stops it at one sync, saves the vCPU state and copies
// guest RAM, lets it finish (the uninterrupted result), then builds a SECOND VM in this process,
// loads the memory and the state into it (directly, or through the serialized blob) and runs it
// on: its result and table must equal the uninterrupted run's. Also: corrupt blobs are refused
// with a clear error, the typed calls round-trip, and a failing GET/SET ioctl (injected through
// the Sys seam on real KVM) is reported by name.
#include "support.hpp"

#include <arch/x86_64/registers.hpp>
#include <kvm/host.hpp>
#include <kvm/x86_64_state.hpp>

#include <algorithm>
#include <cstddef>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::x86_64;
namespace kvm = vcpu::kvm;

constexpr u64 data_len = 40000;
constexpr u64 step = 4000; // a sync every `step` bytes: 10 syncs, then the final one
constexpr u64 final_marker = 0xf17a1;

// ---- guest code -----------------------------------------------------------------------------

VCPU_GUEST_CODE void stepwise_checksum(const std::uint8_t* buf, u64 len, u64* table, u64 every) {
    u64 sum = 0, x = 0x9e3779b97f4a7c15ull;
    for (u64 i = 0; i < len; ++i) {
        sum += buf[i] * (i + 1);
        x = (x << 7 | x >> 57) ^ (buf[i] + sum);
        if ((i + 1) % every == 0) {
            table[i / every] = x ^ sum;
            ucall::sync(i + 1, sum, x);
        }
    }
    ucall::sync(final_marker, sum, x);
}

constexpr std::uint16_t in_port = 0x10;
constexpr std::uint32_t in_answer = 0xa1b2c3d4;
constexpr u64 rbx_value = 0x1234'5678'9abc;

/// `in eax, dx` with RBX zeroed just before and read right after; asserts both.
VCPU_GUEST_CODE void pending_in() {
    std::uint32_t value = 0;
    u64 rbx = 0;
    asm volatile("xor %%ebx, %%ebx\n\t"
                 "inl %w2, %0\n\t"
                 "mov %%rbx, %1"
                 : "=&a"(value), "=r"(rbx)
                 : "d"(in_port)
                 : "rbx", "memory");
    VCPU_GUEST_ASSERT(value == in_answer, value);
    VCPU_GUEST_ASSERT(rbx == rbx_value, rbx);
    ucall::sync(value, rbx);
}


// ---- FPU / vector state and a pending LAPIC timer across a restore --------------------------

/// Values the guest loads into its registers before the save and reads back after the restore.
/// Lives in the guest's copy of this executable's data (copied to the second VM with the RAM).
struct vector_state {
    u64 gpr_in[5], gpr_out[5];     ///< RBX, R12-R15
    u64 x87_in[3], x87_out[3];     ///< three doubles on the x87 stack (bit patterns)
    std::uint16_t fcw_in, fcw_out; ///< x87 control word
    std::uint32_t mxcsr_in, mxcsr_out;
    alignas(16) u64 xmm_in[32];    ///< XMM0-15, two words each
    alignas(16) u64 xmm_out[32];
    alignas(16) u64 ymm_in[32];    ///< the upper halves of YMM0-15 (with AVX)
    alignas(16) u64 ymm_out[32];
};
inline constinit vector_state vstate{};
inline constinit volatile u64 timer_ticks = 0;

constexpr std::uint8_t timer_vector = 0x50;
constexpr u64 apic = 0xfee00000; // the LAPIC's default base (SDM Vol. 3A §11.4.1), identity-mapped
/// LAPIC register offsets (SDM Vol. 3A Table 11-1).
namespace apic_reg {
constexpr u64 eoi = 0xb0, svr = 0xf0, lvt_timer = 0x320, initial_count = 0x380, current_count = 0x390,
              divide = 0x3e0;
}
constexpr u64 vector_sync_marker = 0x5a7e;
constexpr u64 vector_done_marker = 0xd0e;

VCPU_GUEST_CODE void on_timer(gx::exception_frame&) {
    timer_ticks = timer_ticks + 1;
    gx::mmio_write<std::uint32_t>(apic + apic_reg::eoi, 0);
}

/// Loads known values into RBX, R12-R15, (when `x87`) the x87 stack and control word, (when
/// `mxcsr`) MXCSR, XMM0-15 and (when `avx`) the upper halves of YMM0-15, reports (`sync(vector_sync_marker)`: the host saves here),
/// then stores every one of them back: the only code between load and store is the OUT.
[[gnu::noinline]] VCPU_GUEST_CODE void vector_roundtrip(vector_state* v, u64 avx, u64 x87, u64 mxcsr) {
#define VCPU_XMM(n) "movdqu " #n "*16+%c[xi](%[v]), %%xmm" #n "\n"
#define VCPU_YMM(n) "vinsertf128 $1, " #n "*16+%c[yi](%[v]), %%ymm" #n ", %%ymm" #n "\n"
#define VCPU_XMM_OUT(n) "movdqu %%xmm" #n ", " #n "*16+%c[xo](%[v])\n"
#define VCPU_YMM_OUT(n) "vextractf128 $1, %%ymm" #n ", " #n "*16+%c[yo](%[v])\n"
#define VCPU_ALL16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
    asm volatile("movq %c[gi]+0(%[v]), %%rbx\n movq %c[gi]+8(%[v]), %%r12\n movq %c[gi]+16(%[v]), %%r13\n"
                 "movq %c[gi]+24(%[v]), %%r14\n movq %c[gi]+32(%[v]), %%r15\n"
                 "testq %[x87], %[x87]\n jz 3f\n"
                 "fninit\n fldcw %c[fi](%[v])\n"
                 "fldl %c[xi87]+0(%[v])\n fldl %c[xi87]+8(%[v])\n fldl %c[xi87]+16(%[v])\n"
                 "3:\n"
                 "testq %[mx], %[mx]\n jz 5f\n"
                 "ldmxcsr %c[mi](%[v])\n"
                 "5:\n"
                 VCPU_ALL16(VCPU_XMM)
                 "testq %[avx], %[avx]\n jz 1f\n"
                 VCPU_ALL16(VCPU_YMM)
                 "1:\n"
                 "outl %%eax, %%dx\n" // ucall::sync(vector_sync_marker): the host saves the state here
                 "testq %[avx], %[avx]\n jz 2f\n"
                 VCPU_ALL16(VCPU_YMM_OUT)
                 "2:\n"
                 VCPU_ALL16(VCPU_XMM_OUT)
                 "testq %[mx], %[mx]\n jz 6f\n"
                 "stmxcsr %c[mo](%[v])\n"
                 "6:\n"
                 "testq %[x87], %[x87]\n jz 4f\n"
                 "fnstcw %c[fo](%[v])\n"
                 "fstpl %c[xo87]+0(%[v])\n fstpl %c[xo87]+8(%[v])\n fstpl %c[xo87]+16(%[v])\n"
                 "4:\n"
                 "movq %%rbx, %c[go]+0(%[v])\n movq %%r12, %c[go]+8(%[v])\n movq %%r13, %c[go]+16(%[v])\n"
                 "movq %%r14, %c[go]+24(%[v])\n movq %%r15, %c[go]+32(%[v])\n"
                 :
                 : [v] "r"(v), [avx] "r"(avx), [x87] "r"(x87), [mx] "r"(mxcsr), "a"(1u), "d"(vcpu::guest::ucall_sync_port), "D"(vector_sync_marker),
                   [gi] "i"(offsetof(vector_state, gpr_in)), [go] "i"(offsetof(vector_state, gpr_out)),
                   [xi87] "i"(offsetof(vector_state, x87_in)), [xo87] "i"(offsetof(vector_state, x87_out)),
                   [fi] "i"(offsetof(vector_state, fcw_in)), [fo] "i"(offsetof(vector_state, fcw_out)),
                   [mi] "i"(offsetof(vector_state, mxcsr_in)), [mo] "i"(offsetof(vector_state, mxcsr_out)),
                   [xi] "i"(offsetof(vector_state, xmm_in)), [xo] "i"(offsetof(vector_state, xmm_out)),
                   [yi] "i"(offsetof(vector_state, ymm_in)), [yo] "i"(offsetof(vector_state, ymm_out))
                 : "rbx", "r12", "r13", "r14", "r15", "memory", "cc");
#undef VCPU_XMM
#undef VCPU_YMM
#undef VCPU_XMM_OUT
#undef VCPU_YMM_OUT
#undef VCPU_ALL16
}

/// Arms the LAPIC timer (one-shot, `count` bus cycles), loads and checks the vector state around
/// the save (vector_roundtrip), then waits for the timer interrupt. Reports: how many values
/// differ, the ticks seen before arming, at the save, right after the restore and at the end,
/// and the timer's current count at the save and right after the restore.
VCPU_GUEST_CODE void vector_timer_guest(u64 avx, u64 x87, u64 mxcsr, u64 count) {
    vector_state* v = &vstate;
    for (unsigned i = 0; i < 5; ++i) v->gpr_in[i] = 0x0123'4567'89ab'0000ull + i * 0x1111;
    v->x87_in[0] = 0x3ff8'0000'0000'0000ull;  // 1.5
    v->x87_in[1] = 0xc002'0000'0000'0000ull;  // -2.25
    v->x87_in[2] = 0x7e37'e43c'8800'759cull;  // 1e300
    v->fcw_in = 0x027f;                       // 53-bit precision, all exceptions masked
    v->mxcsr_in = 0x9fc0;                     // FTZ, DAZ, all exceptions masked
    for (unsigned i = 0; i < 32; ++i) {
        v->xmm_in[i] = 0xa5a5'0000'0000'0000ull ^ (u64{i} * 0x0101'0101'0101ull);
        v->ymm_in[i] = 0x5a5a'0000'0000'0000ull ^ (u64{i} * 0x0202'0202'0202ull);
    }
    gx::set_handler(timer_vector, &on_timer);
    gx::mmio_write<std::uint32_t>(apic + apic_reg::svr, 0x1ff);           // software-enable, spurious 0xff
    gx::mmio_write<std::uint32_t>(apic + apic_reg::divide, 0xb);          // divide by 1
    gx::mmio_write<std::uint32_t>(apic + apic_reg::lvt_timer, timer_vector); // one-shot, unmasked
    const u64 ticks_before_arm = timer_ticks;
    gx::sti();
    gx::mmio_write<std::uint32_t>(apic + apic_reg::initial_count, static_cast<std::uint32_t>(count));
    const u64 count_at_save = gx::mmio_read<std::uint32_t>(apic + apic_reg::current_count);
    const u64 ticks_at_save = timer_ticks;
    vector_roundtrip(v, avx, x87, mxcsr);
    const u64 ticks_after_restore = timer_ticks;
    const u64 count_after_restore = gx::mmio_read<std::uint32_t>(apic + apic_reg::current_count);
    u64 differ = 0;
    for (unsigned i = 0; i < 5; ++i) differ += v->gpr_out[i] != v->gpr_in[i];
    if (x87 != 0) {
        for (unsigned i = 0; i < 3; ++i) differ += v->x87_out[i] != v->x87_in[2 - i]; // popped in reverse
        differ += v->fcw_out != v->fcw_in;
    }
    if (mxcsr != 0) differ += v->mxcsr_out != v->mxcsr_in;
    for (unsigned i = 0; i < 32; ++i) {
        differ += v->xmm_out[i] != v->xmm_in[i];
        if (avx != 0) differ += v->ymm_out[i] != v->ymm_in[i];
    }
    // Wait for the timer: it must still be pending, and fire once its count runs out.
    u64 after_zero = 0;
    while (timer_ticks == 0 && after_zero < 20'000'000) {
        if (gx::mmio_read<std::uint32_t>(apic + apic_reg::current_count) == 0) ++after_zero;
        gx::pause();
    }
    gx::cli();
    ucall::sync(vector_done_marker, differ, ticks_before_arm + ticks_at_save * 10 + ticks_after_restore * 100 + timer_ticks * 1000,
                count_at_save, count_after_restore);
}

// ---- host -----------------------------------------------------------------------------------

struct outcome {
    u64 sum = 0, x = 0;
    std::vector<u64> table;
    bool operator==(const outcome&) const = default;
};

/// A machine with the in-kernel irqchip (so the LAPIC is part of the state) and no PIT.
template <class Sys = vcpu::kvm::linux_sys>
vcpu::result<kvm::basic_x86_64_machine<Sys>> make_machine() {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = true;
    o.pit = false;
    return kvm::vm_init_x86_64<Sys>(o, vcpu::x86_64::cpuid_setup<>{});
}

struct stopped {
    kvm::x86_64_vcpu_state state;
    std::vector<std::byte> ram;
    u64 stopped_at = 0; ///< bytes checksummed when saved
    outcome uninterrupted;
    u64 buf = 0, table = 0;
};

/// Runs the guest until the sync after `stop_after` bytes and returns what that sync reported.
template <class Cpu>
vcpu::guest::sync run_until(Cpu& cpu, vcpu::guest::x86_64::space& space, u64 stop_after) {
    vcpu::guest::sync last{};
    for (;;) {
        auto r = vcpu::guest::run(cpu, space, [](vcpu::guest::sync&) { return vcpu::action::stop; },
                                  guest_test::fail_on_guest_assert());
        REQUIRE_MESSAGE(r, r.err().message());
        const auto* s = std::get_if<vcpu::guest::sync>(&*r);
        if (s == nullptr) {
            std::string what = "exit variant index " + std::to_string(r->index());
            if (const auto* u = std::get_if<vcpu::guest::unhandled_exception>(&*r))
                what += ": guest exception " + std::to_string(u->vector) + " at " + std::to_string(u->pc);
            if (const auto* f = std::get_if<vcpu::x86_64::emulation_failure>(&*r); f != nullptr && !f->insn.empty())
                what += ": emulation failure, first byte " + std::to_string(f->insn[0]);
            FAIL("expected a sync: " << what);
        }
        last = *s;
        if ((*s)[0] == stop_after || (*s)[0] == final_marker) return last;
    }
}

template <class Machine>
outcome finish(Machine& m, vcpu::guest::x86_64::space& space, u64 table) {
    const auto s = run_until(m.vcpus[0], space, final_marker);
    REQUIRE(s.size() == 3);
    outcome o{s[1], s[2], std::vector<u64>(data_len / step)};
    REQUIRE(m.memory.read(table, std::as_writable_bytes(std::span(o.table))));
    return o;
}

/// VM 1: runs to the sync after `stop_after` bytes, saves state and RAM, runs to the end.
stopped run_and_save(u64 stop_after) {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&stepwise_checksum));
    REQUIRE_MESSAGE(space, space.err().message());
    stopped st;
    st.buf = space->free_begin();
    st.table = st.buf + data_len;
    std::vector<std::uint8_t> data(data_len);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 13 + (i >> 8));
    REQUIRE(m->memory.write(st.buf, std::as_bytes(std::span(data))));
    REQUIRE(space->enter(m->vcpus[0], vcpu::guest::x86_64::call(&stepwise_checksum, st.buf, data_len,
                                                               st.table, step)));
    const auto at = run_until(m->vcpus[0], *space, stop_after);
    REQUIRE(at[0] == stop_after);
    st.stopped_at = at[0];
    const auto t0 = std::chrono::steady_clock::now();
    auto saved = kvm::save_state(m->vcpus[0]);
    MESSAGE("save_state: " << std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count()
                           << " us");
    REQUIRE_MESSAGE(saved, saved.err().message());
    st.state = std::move(*saved);
    const auto ram = m->ram.bytes();
    st.ram.assign(ram.begin(), ram.end());
    st.uninterrupted = finish(*m, *space, st.table);
    return st;
}

/// VM 2, same process: loads RAM and `state`, runs on to the end.
outcome restore_and_finish(const stopped& st, const kvm::x86_64_vcpu_state& state) {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    // The space only translates guest addresses for the ucall records; the RAM copy replaces
    // what it loaded with VM 1's (same layout).
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&stepwise_checksum));
    REQUIRE_MESSAGE(space, space.err().message());
    const auto ram = m->ram.bytes();
    REQUIRE(ram.size() == st.ram.size());
    std::copy(st.ram.begin(), st.ram.end(), ram.begin());
    const auto t0 = std::chrono::steady_clock::now();
    auto l = kvm::load_state(m->vcpus[0], state);
    MESSAGE("load_state: " << std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count()
                           << " us");
    REQUIRE_MESSAGE(l, l.err().message());
    // Read back before running: what KVM now holds is what was loaded (MSRs and LAPIC aside:
    // the TSC and the APIC timer count move on).
    auto again = kvm::save_state(m->vcpus[0]);
    REQUIRE_MESSAGE(again, again.err().message());
    CHECK(std::memcmp(&again->regs, &state.regs, sizeof state.regs) == 0);
    CHECK(std::memcmp(&again->sregs, &state.sregs, sizeof state.sregs) == 0);
    CHECK(again->xsave.words == state.xsave.words);
    CHECK(std::memcmp(&again->xcrs, &state.xcrs, sizeof state.xcrs) == 0);
    CHECK(std::memcmp(&again->debugregs, &state.debugregs, sizeof state.debugregs) == 0);
    CHECK(std::memcmp(&again->events, &state.events, sizeof state.events) == 0);
    CHECK(again->mp_state == state.mp_state);
    CHECK(again->msrs.size() == state.msrs.size());
    return finish(*m, *space, st.table);
}

} // namespace

TEST_CASE("guest x86-64 state: a vCPU saved mid-run finishes in a second VM with the uninterrupted result") {
    const auto st = run_and_save(3 * step);
    CHECK(st.state.has_lapic); // in-kernel irqchip
    CHECK(!st.state.msrs.empty());
    CHECK(st.state.regs.rip != 0);
    CHECK(st.uninterrupted.sum != 0);
    const auto resumed = restore_and_finish(st, st.state);
    CHECK(resumed.sum == st.uninterrupted.sum);
    CHECK(resumed.x == st.uninterrupted.x);
    CHECK(resumed.table == st.uninterrupted.table);
}

TEST_CASE("guest x86-64 state: saved during an IN exit, the answer and a handler's RBX write survive") {
    // The host answers the IN and writes RBX, then stops without resuming: save() must complete
    // the exit first (KVM_RUN with immediate_exit), or the answer never reaches RAX.
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&pending_in));
    REQUIRE_MESSAGE(space, space.err().message());
    auto& cpu = m->vcpus[0];
    REQUIRE(space->enter(cpu, vcpu::guest::x86_64::call(&pending_in)));
    auto r = vcpu::guest::run(cpu, *space,
                              [&](vcpu::port_io& io) {
                                  REQUIRE(io.port == in_port);
                                  io.set(in_answer);
                                  CHECK(cpu.set(vcpu::x86_64::rbx, rbx_value));
                                  return vcpu::action::stop;
                              },
                              guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(std::holds_alternative<vcpu::port_io>(*r));
    auto saved = kvm::save_state(cpu);
    REQUIRE_MESSAGE(saved, saved.err().message());
    CHECK((saved->regs.rax & 0xffffffff) == in_answer);
    CHECK(saved->regs.rbx == rbx_value);
    const auto blob = saved->serialize();

    auto m2 = make_machine();
    REQUIRE_MESSAGE(m2, m2.err().message());
    auto space2 = vcpu::guest::x86_64::space::load(m2->memory, reinterpret_cast<const void*>(&pending_in));
    REQUIRE_MESSAGE(space2, space2.err().message());
    const auto from = m->ram.bytes();
    std::copy(from.begin(), from.end(), m2->ram.bytes().begin());
    auto back = kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE_MESSAGE(back, back.err().message());
    auto l = kvm::load_state(m2->vcpus[0], *back);
    REQUIRE_MESSAGE(l, l.err().message());
    auto r2 = vcpu::guest::run(m2->vcpus[0], *space2, [](vcpu::guest::sync&) { return vcpu::action::stop; },
                               guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r2, r2.err().message());
    const auto* s = std::get_if<vcpu::guest::sync>(&*r2);
    REQUIRE(s != nullptr);
    CHECK((*s)[0] == in_answer);
    CHECK((*s)[1] == rbx_value);
}

TEST_CASE("guest x86-64 state: round trip through the serialized blob") {
    const auto st = run_and_save(7 * step);
    const auto blob = st.state.serialize();
    auto back = kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE_MESSAGE(back, back.err().message());
    CHECK(back->serialize() == blob);
    CHECK(std::memcmp(&back->regs, &st.state.regs, sizeof back->regs) == 0);
    CHECK(back->msrs.size() == st.state.msrs.size());
    const auto resumed = restore_and_finish(st, *back);
    CHECK(resumed == st.uninterrupted);
}

TEST_CASE("guest x86-64 state: a corrupt, truncated or foreign blob is refused with a clear error") {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    auto s = kvm::save_state(m->vcpus[0]);
    REQUIRE_MESSAGE(s, s.err().message());
    const auto blob = s->serialize();
    REQUIRE(kvm::x86_64_vcpu_state::deserialize(blob));
    auto refused = [](std::vector<std::byte> b, int code, const char* text) {
        auto r = kvm::x86_64_vcpu_state::deserialize(b);
        REQUIRE(!r);
        CHECK(r.err().code == code);
        const std::string msg = r.err().message();
        CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
        CHECK(msg.find("x86_64_vcpu_state::deserialize") != std::string::npos);
    };
    refused({}, EINVAL, "truncated");
    refused(std::vector<std::byte>(blob.begin(), blob.begin() + 20), EINVAL, "truncated");
    refused(std::vector<std::byte>(blob.begin(), blob.end() - 1), EINVAL, "truncated");
    auto longer = blob;
    longer.push_back(std::byte{0});
    refused(longer, EINVAL, "trailing");
    auto flipped = blob;
    flipped[blob.size() / 2] ^= std::byte{0x40};
    refused(flipped, EBADMSG, "corrupt");
    auto magic = blob;
    magic[4] = std::byte{'a'}; // "vcpua86s": another arch's state
    refused(magic, EINVAL, "magic");
    auto version = blob;
    version[8] = std::byte{99};
    refused(version, EPROTO, "version");
    auto count = blob;
    count[24] ^= std::byte{1}; // msr_count: sizes no longer agree
    refused(count, EINVAL, "body size");
}

TEST_CASE("guest x86-64 state: typed calls round-trip on a fresh vCPU") {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    auto fpu = kvm::get_fpu(cpu);
    REQUIRE_MESSAGE(fpu, fpu.err().message());
    fpu->fcw = 0x27f;
    REQUIRE(kvm::set_fpu(cpu, *fpu));
    CHECK(kvm::get_fpu(cpu)->fcw == 0x27f);

    auto size = kvm::xsave_size(cpu);
    REQUIRE_MESSAGE(size, size.err().message());
    REQUIRE(*size >= 4096);
    auto xs = kvm::get_xsave(cpu, *size);
    REQUIRE_MESSAGE(xs, xs.err().message());
    CHECK(xs->size() == *size);
    xs->words[6] = 0x1f80 | 0x40; // MXCSR (legacy area, byte 24) with DAZ
    xs->words[128] |= 0x3;        // XSTATE_BV (header, byte 512): x87 and SSE not in init state
    REQUIRE(kvm::set_xsave(cpu, *xs));
    auto xs2 = kvm::get_xsave(cpu, *size);
    REQUIRE_MESSAGE(xs2, xs2.err().message());
    CHECK(xs2->words[6] == (0x1f80 | 0x40));

    auto mp = kvm::get_mp_state(cpu);
    REQUIRE_MESSAGE(mp, mp.err().message());
    CHECK(*mp == KVM_MP_STATE_RUNNABLE);
    REQUIRE(kvm::set_mp_state(cpu, *mp));

    auto lapic = kvm::get_lapic(cpu);
    REQUIRE_MESSAGE(lapic, lapic.err().message());
    REQUIRE(kvm::set_lapic(cpu, *lapic));
    auto xcrs = kvm::get_xcrs(cpu);
    REQUIRE_MESSAGE(xcrs, xcrs.err().message());
    CHECK(xcrs->nr_xcrs >= 1);
    REQUIRE(kvm::set_xcrs(cpu, *xcrs));

    auto list = kvm::msr_index_list(cpu);
    REQUIRE_MESSAGE(list, list.err().message());
    CHECK(std::find(list->begin(), list->end(), 0xc0000082u) != list->end()); // MSR_LSTAR
    std::vector<vcpu::x86_64::msr_entry> e{{0xc0000082u, 0, 0}, {0xc0000081u, 0, 0}};
    e[0].data = 0xffffffff81000000ull;
    auto w = kvm::set_msrs(cpu, e);
    REQUIRE_MESSAGE(w, w.err().message());
    CHECK(*w == 2);
    e[0].data = 0;
    auto n = kvm::get_msrs(cpu, e);
    REQUIRE_MESSAGE(n, n.err().message());
    CHECK(*n == 2);
    CHECK(e[0].data == 0xffffffff81000000ull);

    auto dr = kvm::get_debugregs(cpu);
    REQUIRE_MESSAGE(dr, dr.err().message());
    dr->db[0] = 0x1000;
    REQUIRE(kvm::set_debugregs(cpu, *dr));
    CHECK(kvm::get_debugregs(cpu)->db[0] == 0x1000);

    auto khz = kvm::get_tsc_khz(cpu);
    REQUIRE_MESSAGE(khz, khz.err().message());
    CHECK(*khz > 0);
    REQUIRE(kvm::set_tsc_khz(cpu, *khz));
}

namespace {
/// Real KVM, but the ioctl whose request code is `fail_code` fails with `fail_errno`.
struct failing_sys : vcpu::kvm::linux_sys {
    static inline unsigned long fail_code = 0;
    static inline int fail_errno = EIO;
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_code) {
            errno = fail_errno;
            return -1;
        }
        return vcpu::kvm::linux_sys::ioctl(fd, req, arg);
    }
};
} // namespace

TEST_CASE("guest x86-64 state: a failing GET or SET ioctl is reported by name") {
    namespace io = vcpu::kvm::ioctls;
    auto m = make_machine<failing_sys>();
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    auto good = kvm::x86_64_vcpu_state::save(cpu);
    REQUIRE_MESSAGE(good, good.err().message());
    const bool xsave2 = good->xsave.size() > 4096;
    const unsigned long xsave_get = xsave2 ? io::vcpu::get_xsave2.code : io::vcpu::get_xsave.code;

    struct injected {
        unsigned long code;
        const char* name;
    };
    const injected gets[] = {
        {io::vcpu::get_vcpu_events.code, "KVM_GET_VCPU_EVENTS"}, {io::vcpu::get_mp_state.code, "KVM_GET_MP_STATE"},
        {xsave_get, xsave2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE"}, {io::vcpu::get_xcrs.code, "KVM_GET_XCRS"},
        {io::vcpu::get_lapic.code, "KVM_GET_LAPIC"},           {io::vcpu::get_msrs.code, "KVM_GET_MSRS"},
        {io::system::get_msr_index_list.code, "KVM_GET_MSR_INDEX_LIST"},
        {io::vcpu::get_regs.code, "KVM_GET_REGS"},             {io::vcpu::get_sregs.code, "KVM_GET_SREGS"},
        {io::vcpu::get_debugregs.code, "KVM_GET_DEBUGREGS"},
    };
    for (const auto& g : gets) {
        CAPTURE(g.name);
        // A fresh vCPU each time: register blocks already read are cached and need no GET.
        auto fresh = make_machine<failing_sys>();
        REQUIRE_MESSAGE(fresh, fresh.err().message());
        failing_sys::fail_code = g.code;
        failing_sys::fail_errno = EFAULT;
        auto r = kvm::x86_64_vcpu_state::save(fresh->vcpus[0].hal());
        failing_sys::fail_code = 0;
        REQUIRE(!r);
        CHECK(std::string(r.err().op) == g.name);
        CHECK(r.err().code == EFAULT);
    }
    const injected sets[] = {
        {io::vcpu::set_sregs.code, "KVM_SET_SREGS"},     {io::vcpu::set_xcrs.code, "KVM_SET_XCRS"},
        {io::vcpu::set_xsave.code, "KVM_SET_XSAVE"},     {io::vcpu::set_regs.code, "KVM_SET_REGS"},
        {io::vcpu::set_lapic.code, "KVM_SET_LAPIC"},     {io::vcpu::set_msrs.code, "KVM_SET_MSRS"},
        {io::vcpu::set_vcpu_events.code, "KVM_SET_VCPU_EVENTS"}, {io::vcpu::set_mp_state.code, "KVM_SET_MP_STATE"},
        {io::vcpu::set_debugregs.code, "KVM_SET_DEBUGREGS"},
    };
    for (const auto& s : sets) {
        CAPTURE(s.name);
        failing_sys::fail_code = s.code;
        failing_sys::fail_errno = EINVAL;
        auto r = good->load(cpu);
        failing_sys::fail_code = 0;
        REQUIRE(!r);
        CHECK(std::string(r.err().op) == s.name);
        CHECK(r.err().code == EINVAL);
        CHECK(r.err().message().find("vcpu_id") != std::string::npos);
    }
    REQUIRE(good->load(cpu)); // nothing injected: loads
}

namespace {
/// The host's CPUID has AVX (CPUID.01H:ECX[28]), XSAVE (ECX[26]) and the AVX state component
/// (CPUID.(EAX=0DH,ECX=0):EAX[2]); returns the YMM_Hi128 offset in the standard XSAVE layout
/// (CPUID.(EAX=0DH,ECX=2):EBX), 0 without AVX.
template <class Cpu>
std::uint32_t avx_offset(Cpu& cpu) {
    std::vector<vcpu::x86_64::cpuid_entry> e(256);
    auto n = cpu.hal().supported_cpuid(e);
    REQUIRE_MESSAGE(n, n.err().message());
    bool avx = false, xsave = false, ymm_state = false;
    std::uint32_t offset = 0;
    for (std::size_t i = 0; i < *n; ++i) {
        if (e[i].function == 1) {
            avx = (e[i].ecx >> 28 & 1) != 0;
            xsave = (e[i].ecx >> 26 & 1) != 0;
        }
        if (e[i].function == 0xd && e[i].index == 0) ymm_state = (e[i].eax >> 2 & 1) != 0;
        if (e[i].function == 0xd && e[i].index == 2) offset = e[i].ebx;
    }
    return avx && xsave && ymm_state ? offset : 0;
}
} // namespace

TEST_CASE("guest x86-64 state: x87, MXCSR, XMM/YMM registers and a pending LAPIC timer survive a restore into a second VM") {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0];
    auto space = gx::space::load(m->memory, reinterpret_cast<const void*>(&vector_timer_guest));
    REQUIRE_MESSAGE(space, space.err().message());
    const std::uint32_t ymm_offset = avx_offset(cpu);
    const bool avx = ymm_offset != 0;
    // 0.5 s at KVM's default APIC bus cycle of 1 ns with divide-by-1: pending well past the save.
    constexpr u64 timer_count = 500'000'000;
    // PVM runs guest CPL0 code through KVM's instruction emulator, which has MOVDQU but neither
    // the x87 loads nor LDMXCSR/STMXCSR: those parts are skipped there (the nested x86 machine
    // checks them).
    const bool pvm = kvm::describe_host().kind == kvm::host_kind::pvm;
    const bool x87 = !pvm, mxcsr = !pvm;
    if (pvm)
        MESSAGE("SKIPPED: x87 stack and MXCSR: guest CPL0 x87 loads and LDMXCSR are emulation failures on this host "
                "(PVM); GPRs and XMM0-15 are checked");
    REQUIRE(space->enter(cpu, gx::call(&vector_timer_guest, u64{avx}, u64{x87}, u64{mxcsr}, timer_count)));
    if (avx) {
        // The guest runs AVX code: CR4.OSXSAVE (SDM Vol. 3A §2.5) and XCR0 = x87 | SSE | AVX.
        auto cr4 = cpu.get(vcpu::x86_64::cr4);
        REQUIRE(cr4);
        REQUIRE(cpu.set(vcpu::x86_64::cr4, *cr4 | (u64{1} << 18)));
        ::kvm_xcrs x{};
        x.nr_xcrs = 1;
        x.xcrs[0].xcr = 0;
        x.xcrs[0].value = 0x7;
        auto r = kvm::set_xcrs(cpu.hal(), x);
        REQUIRE_MESSAGE(r, r.err().message());
    } else {
        MESSAGE("SKIPPED: the host CPUID has no AVX: the upper halves of YMM0-15 are not checked");
    }
    const auto at = run_until(cpu, *space, vector_sync_marker);
    REQUIRE(at[0] == vector_sync_marker);
    const auto t0 = std::chrono::steady_clock::now();
    auto saved = kvm::save_state(cpu);
    MESSAGE("save_state: " << std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count()
                           << " us");
    REQUIRE_MESSAGE(saved, saved.err().message());
    // What the host saved holds the guest's values (standard XSAVE layout, SDM Vol. 1 §13.4).
    const auto& xs = saved->xsave;
    REQUIRE(xs.size() >= 4096);
    if (mxcsr) CHECK(xs.words[6] == 0x9fc0); // MXCSR at byte 24
    u64 xmm0[2];
    std::memcpy(xmm0, reinterpret_cast<const std::byte*>(xs.words.data()) + 160, sizeof xmm0); // XMM0 at byte 160
    CHECK(xmm0[0] == 0xa5a5'0000'0000'0000ull); // vector_timer_guest's xmm_in[0]
    if (avx) {
        u64 ymm0_hi[2];
        std::memcpy(ymm0_hi, reinterpret_cast<const std::byte*>(xs.words.data()) + ymm_offset, sizeof ymm0_hi);
        CHECK(ymm0_hi[0] == 0x5a5a'0000'0000'0000ull); // ymm_in[0]
    }
    REQUIRE(saved->has_lapic);
    std::uint32_t count_saved = 0;
    std::memcpy(&count_saved, saved->lapic.regs + 0x390, sizeof count_saved); // TMCCT
    CHECK(count_saved > 0);                                                   // still pending
    CHECK(count_saved <= timer_count);
    const auto blob = saved->serialize();
    auto back = kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE_MESSAGE(back, back.err().message());
    const auto ram = m->ram.bytes();
    std::vector<std::byte> ram_copy(ram.begin(), ram.end());

    // The second VM: same RAM, the state from the blob; the first VM never runs again.
    auto m2 = make_machine();
    REQUIRE_MESSAGE(m2, m2.err().message());
    auto space2 = gx::space::load(m2->memory, reinterpret_cast<const void*>(&vector_timer_guest));
    REQUIRE_MESSAGE(space2, space2.err().message());
    std::copy(ram_copy.begin(), ram_copy.end(), m2->ram.bytes().begin());
    auto l = kvm::load_state(m2->vcpus[0], *back);
    REQUIRE_MESSAGE(l, l.err().message());
    const auto end = run_until(m2->vcpus[0], *space2, vector_done_marker);
    REQUIRE(end.size() == 5);
    CHECK(end[0] == vector_done_marker);
    CHECK_MESSAGE(end[1] == 0, "values that differ after the restore: " << end[1]);
    // ticks before arming + 10 x at the save + 100 x right after the restore + 1000 x at the end
    CHECK_MESSAGE(end[2] == 1000, "timer ticks (before arm, at save, after restore, end) encoded: " << end[2]);
    CHECK(end[3] > 0);
    CHECK(end[4] > 0);            // still pending right after the restore
    CHECK(end[4] <= end[3]);      // and counting down from where it was
    MESSAGE("LAPIC timer count at save " << end[3] << ", after restore " << end[4] << std::string(avx ? ", AVX checked" : ""));
}
