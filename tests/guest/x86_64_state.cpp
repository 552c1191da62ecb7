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
#include <kvm/x86_64_state.hpp>

#include <algorithm>
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
        REQUIRE(s != nullptr);
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
