// AArch64 and RISC-V (one source): vCPU state save/restore on real KVM (kvm/aarch64_state.hpp,
// kvm/riscv64_state.hpp; docs/state.md "AArch64 and RISC-V"). A C++ guest loads known values
// into callee-saved GPRs (arm64 X19-X28, riscv64 s2-s11) and every FP/SIMD register (arm64
// V0-V31, riscv64 F0-F31), arms its timer (arm64: the virtual timer, CNTV_CVAL_EL0 5 ms ahead
// with CNTV_CTL_EL0.ENABLE; riscv64: SBI set_timer 5 ms ahead, which KVM handles in the kernel)
// and ucalls. The host saves the vCPU there (the ucall exit completed first), writes state and
// RAM to a file, and a SECOND PROCESS (this executable re-executed) creates a fresh VM, copies
// the RAM back, loads the state and runs on. The guest checks every register it set and that
// its timer fires after the restore. These VMs have no interrupt controller, so the guest
// watches the timer's pending condition rather than taking the interrupt: arm64
// CNTV_CTL_EL0.ISTATUS; riscv64 time >= stimecmp (Sstc; the guest reads its vstimecmp), because
// sip.STIP never rises for a KVM guest on the emulated machine (QEMU 7.2), restored or not — it
// is printed, not judged. A second case saves with the timer already pending and checks it is still
// pending at the first instruction after the restore; a third reads the loaded state back.
#include "xarch_support.hpp"

#include <kvm/vcpu_state.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <variant>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
constexpr u64 marker = 0x5a7e'0001;

// ---- guest code -----------------------------------------------------------------------------

// Bits of the guest's verdict: 0-9 a GPR differed, 16-47 an FP/SIMD register, 59 the timer was
// not pending right after restore though it was at save, 60 the compare value changed, 61 the
// timer was disabled, 62 the timer never fired.
constexpr u64 bad_not_pending = u64{1} << 59, bad_compare = u64{1} << 60, bad_disabled = u64{1} << 61,
              bad_never_fired = u64{1} << 62;

#if defined(__aarch64__)
VCPU_GUEST_CODE inline u64 read_counter() { return VCPU_GUEST_READ_SYSREG(cntvct_el0); }
VCPU_GUEST_CODE inline bool timer_pending() { return (VCPU_GUEST_READ_SYSREG(cntv_ctl_el0) & 4) != 0; }
#else
VCPU_GUEST_CODE inline u64 read_counter() {
    u64 t;
    asm volatile("rdtime %0" : "=r"(t));
    return t;
}
// The guest's stimecmp (with Sstc, VS-mode reads vstimecmp: the compare value KVM restores).
VCPU_GUEST_CODE inline u64 read_stimecmp() {
    u64 v;
    asm volatile("csrr %0, 0x14d" : "=r"(v));
    return v;
}
VCPU_GUEST_CODE inline bool stip() {
    u64 sip;
    asm volatile("csrr %0, sip" : "=r"(sip));
    return (sip & (u64{1} << 5)) != 0; // STIP
}
// The timer's pending condition (privileged spec, Sstc: STIP = time >= stimecmp). Measured on the
// emulated machine (QEMU 7.2, Linux 6.12): sip.STIP of a KVM guest never rises there, with or
// without a restore, so the guest evaluates the condition itself and reports STIP separately.
VCPU_GUEST_CODE inline bool timer_pending() { return read_counter() >= read_stimecmp(); }
#endif

// Arms the timer `ticks` ahead, optionally waits until it fired, loads the registers, ucalls
// sync(marker) (where the host saves), stores the registers, then judges and reports.
VCPU_GUEST_CODE void state_guest(u64 seed, u64 ticks, u64 wait_fired) {
    u64 gin[10], gout[10], vin[64], vout[64];
    for (u64 i = 0; i < 10; ++i) gin[i] = (seed + i) * 0x9e3779b97f4a7c15ull;
    for (u64 i = 0; i < 64; ++i) vin[i] = ~((seed ^ i) * 0xc2b2ae3d27d4eb4full);
    const u64 cval = read_counter() + ticks;
#if defined(__aarch64__)
    asm volatile("msr cntv_cval_el0, %0\n msr cntv_ctl_el0, %1\n isb" : : "r"(cval), "r"(u64{1}) : "memory");
#else
    {
        register u64 a0 asm("a0") = cval;
        register u64 a1 asm("a1") = 0;
        register u64 a6 asm("a6") = 0;          // FID 0: sbi_set_timer
        register u64 a7 asm("a7") = 0x54494D45; // "TIME" (SBI spec §6)
        asm volatile("ecall" : "+r"(a0), "+r"(a1) : "r"(a6), "r"(a7) : "memory");
    }
#endif
    if (wait_fired != 0)
        while (!timer_pending()) {
        }
    const bool pending_at_save = timer_pending();
#if defined(__aarch64__)
    asm volatile("ldp x19, x20, [%0, #0]\n ldp x21, x22, [%0, #16]\n ldp x23, x24, [%0, #32]\n"
                 "ldp x25, x26, [%0, #48]\n ldp x27, x28, [%0, #64]\n"
                 "ldp q0, q1, [%1, #0]\n ldp q2, q3, [%1, #32]\n ldp q4, q5, [%1, #64]\n ldp q6, q7, [%1, #96]\n"
                 "ldp q8, q9, [%1, #128]\n ldp q10, q11, [%1, #160]\n ldp q12, q13, [%1, #192]\n"
                 "ldp q14, q15, [%1, #224]\n ldp q16, q17, [%1, #256]\n ldp q18, q19, [%1, #288]\n"
                 "ldp q20, q21, [%1, #320]\n ldp q22, q23, [%1, #352]\n ldp q24, q25, [%1, #384]\n"
                 "ldp q26, q27, [%1, #416]\n ldp q28, q29, [%1, #448]\n ldp q30, q31, [%1, #480]\n"
                 "str %4, [%5]\n" // ucall::sync(marker): the exit the host saves at
                 "stp x19, x20, [%2, #0]\n stp x21, x22, [%2, #16]\n stp x23, x24, [%2, #32]\n"
                 "stp x25, x26, [%2, #48]\n stp x27, x28, [%2, #64]\n"
                 "stp q0, q1, [%3, #0]\n stp q2, q3, [%3, #32]\n stp q4, q5, [%3, #64]\n stp q6, q7, [%3, #96]\n"
                 "stp q8, q9, [%3, #128]\n stp q10, q11, [%3, #160]\n stp q12, q13, [%3, #192]\n"
                 "stp q14, q15, [%3, #224]\n stp q16, q17, [%3, #256]\n stp q18, q19, [%3, #288]\n"
                 "stp q20, q21, [%3, #320]\n stp q22, q23, [%3, #352]\n stp q24, q25, [%3, #384]\n"
                 "stp q26, q27, [%3, #416]\n stp q28, q29, [%3, #448]\n stp q30, q31, [%3, #480]\n"
                 :
                 : "r"(gin), "r"(vin), "r"(gout), "r"(vout), "r"(marker), "r"(vcpu::guest::aarch64::ucall_sync_mmio)
                 : "memory", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "v0", "v1", "v2",
                   "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17",
                   "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31");
    const u64 cval_after = VCPU_GUEST_READ_SYSREG(cntv_cval_el0);
    const bool enabled = (VCPU_GUEST_READ_SYSREG(cntv_ctl_el0) & 1) != 0;
#else
    {
        register u64 a0 asm("a0") = marker;
        register u64 a6 asm("a6") = vcpu::guest::riscv64::fid_sync + 1;
        register u64 a7 asm("a7") = vcpu::guest::riscv64::ucall_extension;
        asm volatile("ld s2, 0(%1)\n ld s3, 8(%1)\n ld s4, 16(%1)\n ld s5, 24(%1)\n ld s6, 32(%1)\n"
                     "ld s7, 40(%1)\n ld s8, 48(%1)\n ld s9, 56(%1)\n ld s10, 64(%1)\n ld s11, 72(%1)\n"
                     "fld f0, 0(%2)\n fld f1, 8(%2)\n fld f2, 16(%2)\n fld f3, 24(%2)\n fld f4, 32(%2)\n"
                     "fld f5, 40(%2)\n fld f6, 48(%2)\n fld f7, 56(%2)\n fld f8, 64(%2)\n fld f9, 72(%2)\n"
                     "fld f10, 80(%2)\n fld f11, 88(%2)\n fld f12, 96(%2)\n fld f13, 104(%2)\n fld f14, 112(%2)\n"
                     "fld f15, 120(%2)\n fld f16, 128(%2)\n fld f17, 136(%2)\n fld f18, 144(%2)\n"
                     "fld f19, 152(%2)\n fld f20, 160(%2)\n fld f21, 168(%2)\n fld f22, 176(%2)\n"
                     "fld f23, 184(%2)\n fld f24, 192(%2)\n fld f25, 200(%2)\n fld f26, 208(%2)\n"
                     "fld f27, 216(%2)\n fld f28, 224(%2)\n fld f29, 232(%2)\n fld f30, 240(%2)\n fld f31, 248(%2)\n"
                     "ecall\n" // ucall::sync(marker): the exit the host saves at
                     "sd s2, 0(%3)\n sd s3, 8(%3)\n sd s4, 16(%3)\n sd s5, 24(%3)\n sd s6, 32(%3)\n"
                     "sd s7, 40(%3)\n sd s8, 48(%3)\n sd s9, 56(%3)\n sd s10, 64(%3)\n sd s11, 72(%3)\n"
                     "fsd f0, 0(%4)\n fsd f1, 8(%4)\n fsd f2, 16(%4)\n fsd f3, 24(%4)\n fsd f4, 32(%4)\n"
                     "fsd f5, 40(%4)\n fsd f6, 48(%4)\n fsd f7, 56(%4)\n fsd f8, 64(%4)\n fsd f9, 72(%4)\n"
                     "fsd f10, 80(%4)\n fsd f11, 88(%4)\n fsd f12, 96(%4)\n fsd f13, 104(%4)\n fsd f14, 112(%4)\n"
                     "fsd f15, 120(%4)\n fsd f16, 128(%4)\n fsd f17, 136(%4)\n fsd f18, 144(%4)\n"
                     "fsd f19, 152(%4)\n fsd f20, 160(%4)\n fsd f21, 168(%4)\n fsd f22, 176(%4)\n"
                     "fsd f23, 184(%4)\n fsd f24, 192(%4)\n fsd f25, 200(%4)\n fsd f26, 208(%4)\n"
                     "fsd f27, 216(%4)\n fsd f28, 224(%4)\n fsd f29, 232(%4)\n fsd f30, 240(%4)\n fsd f31, 248(%4)\n"
                     : "+r"(a0)
                     : "r"(gin), "r"(vin), "r"(gout), "r"(vout), "r"(a6), "r"(a7)
                     : "memory", "a1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "f0", "f1", "f2",
                       "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12", "f13", "f14", "f15", "f16", "f17",
                       "f18", "f19", "f20", "f21", "f22", "f23", "f24", "f25", "f26", "f27", "f28", "f29", "f30",
                       "f31");
    }
    const u64 cval_after = read_stimecmp(); // what SBI set_timer armed, as restored
    const bool enabled = true;
#endif
    const u64 since_armed = read_counter() - (cval - ticks); // guest ticks from arming to here
    u64 bad = 0;
    if (pending_at_save && !timer_pending()) bad |= bad_not_pending;
    for (u64 i = 0; i < 10; ++i)
        if (gout[i] != gin[i]) bad |= u64{1} << i;
#if defined(__aarch64__)
    for (u64 i = 0; i < 64; ++i) // V0-V31: two words each
        if (vout[i] != vin[i]) bad |= u64{1} << (16 + i / 2);
#else
    for (u64 i = 0; i < 32; ++i) // F0-F31
        if (vout[i] != vin[i]) bad |= u64{1} << (16 + i);
#endif
    if (cval_after != cval) bad |= bad_compare;
    if (!enabled) bad |= bad_disabled;
    // The timer fires after the restore (its remaining ticks), bounded by 2000 periods of guest time.
    const u64 start = read_counter();
    u64 waited = 0;
    while (!timer_pending()) {
        waited = read_counter() - start;
        if (waited > 2000 * ticks) {
            bad |= bad_never_fired;
            break;
        }
    }
    ucall::sync(bad);
    ucall::sync(waited);
    ucall::sync(since_armed);
#if defined(__riscv)
    ucall::sync(u64{stip()});
#else
    ucall::sync(u64{1}); // ISTATUS is the pending bit itself
#endif
}

// ---- host side ------------------------------------------------------------------------------

u64 timer_ticks_5ms(guest_test::machine& m) {
#if defined(__aarch64__)
    (void)m;
    u64 f;
    asm volatile("mrs %0, cntfrq_el0" : "=r"(f));
    return f / 200;
#else
    auto f = m.cpu->get(vcpu::riscv64::timer_frequency);
    REQUIRE_MESSAGE(f, f.err().message());
    return *f / 200;
#endif
}

/// Runs until the guest's sync(marker): the vCPU then sits in the uncompleted ucall exit.
void run_to_marker(guest_test::machine& m) {
    u64 seen = 0;
    auto r = vcpu::guest::run(
        *m.cpu, *m.space,
        [&](vcpu::guest::sync& s) {
            seen = s[0];
            return vcpu::action::stop;
        },
        [](vcpu::interrupted&) { return vcpu::action::resume; }, guest_test::fail_on_guest_assert(),
        [](vcpu::guest::unhandled_exception& e) {
            FAIL("guest exception: vector ", e.vector, " syndrome 0x", std::hex, e.error_code, " pc 0x", e.pc);
            return vcpu::action::stop;
        });
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(seen == marker);
}

/// Runs the restored guest to its verdict: returns {bad, ticks waited for the timer, ticks from
/// arming the timer to the first check after the restore}.
std::array<u64, 3> run_to_verdict(guest_test::machine& m) {
    std::vector<u64> syncs;
    auto r = vcpu::guest::run(
        *m.cpu, *m.space, [&](vcpu::guest::sync& s) { syncs.push_back(s[0]); },
        [](vcpu::interrupted&) { return vcpu::action::resume; }, guest_test::fail_on_guest_assert(),
        [](vcpu::guest::unhandled_exception& e) {
            FAIL("guest exception after restore: vector ", e.vector, " syndrome 0x", std::hex, e.error_code, " pc 0x",
                 e.pc);
            return vcpu::action::stop;
        },
        [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*r));
    REQUIRE(syncs.size() == 4);
    std::printf("state %s: after the restore the guest's pending-interrupt bit (arm64 ISTATUS, riscv64 sip.STIP) "
                "reads %llu\n", GUEST_ARCH, static_cast<unsigned long long>(syncs[3]));
    return {syncs[0], syncs[1], syncs[2]};
}

using state_t = vcpu::kvm::vcpu_state_t<guest_test::arch>;
constexpr const char* file_env = "VCPU_XARCH_STATE_FILE";

double ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

/// Registers whose value moves by itself between a save and a read-back: the counters.
bool moves_by_itself(u64 id) {
#if defined(__aarch64__)
    return id == vcpu::kvm::aarch64_ids::timer_cnt || id == vcpu::kvm::aarch64_ids::ptimer_cnt;
#else
    return id == vcpu::riscv64::timer_time.id;
#endif
}

} // namespace

TEST_CASE("guest " GUEST_ARCH ": state saved at a ucall continues in a second process: registers, FP/SIMD, timer") {
    auto m = guest_test::make_machine(reinterpret_cast<const void*>(&state_guest));
    const u64 ticks = timer_ticks_5ms(*m);
    REQUIRE(m->space->enter(*m->cpu, vcpu::guest::call(&state_guest, u64{0x1234}, ticks, u64{0})));
    run_to_marker(*m);
    auto t0 = std::chrono::steady_clock::now();
    auto st = vcpu::kvm::save_state(*m->cpu);
    const double save_ms = ms_since(t0);
    REQUIRE_MESSAGE(st, st.err().message());
    const auto blob = st->serialize();
    std::printf("state %s: %zu registers, %zu value bytes, blob %zu bytes, save %.2f ms, mp_state %u\n", GUEST_ARCH,
                st->ids.size(), st->values.size(), blob.size(), save_ms, st->mp_state);
    auto back = state_t::deserialize(blob);
    REQUIRE_MESSAGE(back, back.err().message());
    CHECK(back->serialize() == blob);

    // The file: [blob size][blob][RAM].
    const std::string path = "xarch_state." + std::to_string(::getpid()) + ".bin";
    {
        std::ofstream f(path, std::ios::binary);
        const u64 n = blob.size();
        f.write(reinterpret_cast<const char*>(&n), sizeof n);
        f.write(reinterpret_cast<const char*>(blob.data()), static_cast<std::streamsize>(blob.size()));
        auto ram = m->memory.at(guest_test::ram_base, guest_test::ram_bytes);
        REQUIRE(ram.size() == guest_test::ram_bytes);
        f.write(reinterpret_cast<const char*>(ram.data()), static_cast<std::streamsize>(ram.size()));
        REQUIRE(f.good());
    }
    m.reset(); // the first VM is gone before the second process starts
    std::fflush(stdout);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::setenv(file_env, path.c_str(), 1);
        char* args[] = {const_cast<char*>("vcpu_guest_tests"),
                        const_cast<char*>("--test-case=*restored in a second process*"),
                        const_cast<char*>("--no-skip"), const_cast<char*>("--minimal"),
                        const_cast<char*>("--no-intro"), const_cast<char*>("--no-version"), nullptr};
        ::execv("/proc/self/exe", args);
        std::_Exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ::unlink(path.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK_MESSAGE(WEXITSTATUS(status) == 0, "the second process failed (its output is above)");
}

// Runs only as the second process of the case above (doctest::skip() otherwise).
TEST_CASE("guest " GUEST_ARCH ": state restored in a second process" * doctest::skip()) {
    const char* path = std::getenv(file_env);
    REQUIRE_MESSAGE(path != nullptr, "run by the case above, with ", file_env, " set");
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    u64 n = 0;
    f.read(reinterpret_cast<char*>(&n), sizeof n);
    REQUIRE(n < (u64{1} << 20));
    std::vector<std::byte> blob(n);
    f.read(reinterpret_cast<char*>(blob.data()), static_cast<std::streamsize>(n));
    auto st = state_t::deserialize(blob);
    REQUIRE_MESSAGE(st, st.err().message());
    // A fresh VM; loading the image builds this process's tables, the file's RAM replaces them
    // with the first process's (its executable may sit at other addresses: ASLR).
    auto m = guest_test::make_machine(reinterpret_cast<const void*>(&state_guest));
    auto ram = m->memory.at(guest_test::ram_base, guest_test::ram_bytes);
    f.read(reinterpret_cast<char*>(ram.data()), static_cast<std::streamsize>(ram.size()));
    REQUIRE(f.gcount() == static_cast<std::streamsize>(ram.size()));
    auto t0 = std::chrono::steady_clock::now();
    auto loaded = vcpu::kvm::load_state(*m->cpu, *st);
    const double load_ms = ms_since(t0);
    REQUIRE_MESSAGE(loaded, loaded.err().message());
    const auto [bad, waited, since_armed] = run_to_verdict(*m);
    std::printf("state %s (second process, pid %d): load %.2f ms; guest verdict 0x%llx; %llu guest ticks from arming "
                "the timer (5 ms ahead) to the first check after restore, then %llu more until its pending bit (no "
                "interrupt controller)\n",
                GUEST_ARCH, static_cast<int>(::getpid()), load_ms, static_cast<unsigned long long>(bad),
                static_cast<unsigned long long>(since_armed), static_cast<unsigned long long>(waited));
    CHECK_MESSAGE(bad == 0, "guest verdict bits: 0-9 GPR, 16-47 FP/SIMD, 60 compare, 61 disabled, 62 never fired");
}

TEST_CASE("guest " GUEST_ARCH ": a timer pending at save is pending at the first instruction after restore") {
    auto m = guest_test::make_machine(reinterpret_cast<const void*>(&state_guest));
    const u64 ticks = timer_ticks_5ms(*m);
    REQUIRE(m->space->enter(*m->cpu, vcpu::guest::call(&state_guest, u64{0x777}, ticks, u64{1})));
    run_to_marker(*m);
    auto st = vcpu::kvm::save_state(*m->cpu);
    REQUIRE_MESSAGE(st, st.err().message());
    auto m2 = guest_test::make_machine(reinterpret_cast<const void*>(&state_guest));
    auto from = m->memory.at(guest_test::ram_base, guest_test::ram_bytes);
    auto to = m2->memory.at(guest_test::ram_base, guest_test::ram_bytes);
    std::memcpy(to.data(), from.data(), to.size());
    auto back = state_t::deserialize(st->serialize());
    REQUIRE(back);
    auto loaded = vcpu::kvm::load_state(*m2->cpu, *back);
    REQUIRE_MESSAGE(loaded, loaded.err().message());

    // Read back before running: every register as loaded, but the counter (it runs).
    auto again = vcpu::kvm::save_state(*m2->cpu);
    REQUIRE_MESSAGE(again, again.err().message());
    REQUIRE(again->ids.size() == back->ids.size());
    std::size_t differ = 0;
    for (auto id : back->ids) {
        if (moves_by_itself(id)) continue;
        auto a = back->value(id);
        auto b = again->value(id);
        if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size()) != 0) {
            ++differ;
            MESSAGE("register 0x", std::hex, id, " reads back 0x", vcpu::kvm::detail::low_word(b), ", loaded 0x",
                    vcpu::kvm::detail::low_word(a));
        }
    }
    CHECK(differ == 0);
    CHECK(again->mp_state == back->mp_state);
    m.reset();
    const auto [bad, waited, since_armed] = run_to_verdict(*m2);
    (void)waited;
    (void)since_armed;
    CHECK_MESSAGE(bad == 0, "guest verdict bits: 0-9 GPR, 16-47 FP/SIMD, 59 not pending after restore, 60 compare, "
                            "61 disabled, 62 never fired");
}
