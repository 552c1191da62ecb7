// The AArch64 kvm_run decoder and a whole boot + exit loop on the mock HAL.
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/init.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <kvm/mock.hpp>

#include <doctest/doctest.h>

#include <linux/kvm.h>

#include <cstdint>
#include <variant>

namespace a64 = vcpu::aarch64;
using vcpu::arch::aarch64;

namespace {
template <class F>
void decode_one(vcpu::kvm::mock::script s, F&& f) {
    auto cpu = vcpu::kvm::mock::make_vcpu<aarch64>(std::move(s));
    REQUIRE(cpu.hal().enter());
    int calls = 0;
    vcpu::kvm::decode_aarch64(cpu.hal().exit_record(), [&](auto& e) noexcept {
        ++calls;
        f(e);
    });
    CHECK(calls == 1);
}
template <class Want, class F>
void expect(vcpu::kvm::mock::script s, F&& check) {
    bool seen = false;
    decode_one(std::move(s), [&]<class E>(E& e) {
        if constexpr (std::is_same_v<E, Want>) {
            seen = true;
            check(e);
        }
    });
    CHECK(seen);
}
} // namespace

TEST_CASE("kvm_run: MMIO read and write") {
    expect<vcpu::mmio>(vcpu::kvm::mock::script{}.mmio_write(0x0900'0000, 4, 0x1235), [](vcpu::mmio& m) {
        CHECK(m.address == 0x0900'0000);
        CHECK(m.is_write());
        CHECK(m.value() == 0x1235);
    });
    expect<vcpu::mmio>(vcpu::kvm::mock::script{}.mmio_read(0x0900'0008, 2), [](vcpu::mmio& m) {
        CHECK(m.is_read());
        CHECK(m.size == 2);
    });
}

TEST_CASE("kvm_run: hostile MMIO length and system-event ndata are malformed") {
    for (std::uint32_t len : {0u, 9u, 0xffff'ffffu})
        expect<vcpu::malformed_exit>(
            vcpu::kvm::mock::script{}.raw(KVM_EXIT_MMIO, [&](::kvm_run& r) { r.mmio.len = len; }),
            [](vcpu::malformed_exit& m) { CHECK(m.reason == vcpu::malformed_exit::why::mmio_size); });
    expect<vcpu::malformed_exit>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_SYSTEM_EVENT,
                                                          [](::kvm_run& r) { r.system_event.ndata = 17; }),
                                 [](vcpu::malformed_exit& m) {
                                     CHECK(m.reason == vcpu::malformed_exit::why::event_ndata);
                                 });
    expect<vcpu::malformed_exit>(
        vcpu::kvm::mock::script{}.raw(KVM_EXIT_INTERNAL_ERROR, [](::kvm_run& r) { r.internal.ndata = 100; }),
        [](vcpu::malformed_exit& m) { CHECK(m.reason == vcpu::malformed_exit::why::ndata); });
}

TEST_CASE("kvm_run: PSCI SYSTEM_OFF / RESET arrive as system events") {
    expect<vcpu::system_event>(vcpu::kvm::mock::script{}.system_event(KVM_SYSTEM_EVENT_SHUTDOWN),
                               [](vcpu::system_event& e) { CHECK(e.what == vcpu::system_event::kind::power_off); });
    expect<vcpu::system_event>(vcpu::kvm::mock::script{}.system_event(KVM_SYSTEM_EVENT_RESET),
                               [](vcpu::system_event& e) { CHECK(e.what == vcpu::system_event::kind::reset); });
    expect<vcpu::system_event>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_SYSTEM_EVENT,
                                                        [](::kvm_run& r) {
                                                            r.system_event.type = KVM_SYSTEM_EVENT_CRASH;
                                                            r.system_event.ndata = 1;
                                                            r.system_event.data[0] = 0xc0ffee;
                                                        }),
                               [](vcpu::system_event& e) {
                                   CHECK(e.what == vcpu::system_event::kind::crash);
                                   CHECK(e.ndata == 1);
                                   CHECK(e.data[0] == 0xc0ffee);
                               });
}

TEST_CASE("kvm_run: KVM_EXIT_ARM_NISV carries ESR ISS and the fault IPA") {
    expect<a64::nisv_abort>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_ARM_NISV,
                                                     [](::kvm_run& r) {
                                                         r.arm_nisv.esr_iss = a64::esr::dabt::wnr.bits();
                                                         r.arm_nisv.fault_ipa = 0x1000'0040;
                                                     }),
                            [](a64::nisv_abort& n) {
                                CHECK(n.ipa == 0x1000'0040);
                                CHECK(n.is_write());
                            });
}

TEST_CASE("kvm_run: SMCCC hypercall forwarding, debug, fail entry, unknown") {
    expect<a64::smccc_call>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_HYPERCALL,
                                                     [](::kvm_run& r) {
                                                         r.hypercall.nr = 0xc600'0001;
                                                         r.hypercall.longmode = 1; // KVM_HYPERCALL_EXIT_SMC
                                                     }),
                            [](a64::smccc_call& c) {
                                CHECK(c.nr == 0xc600'0001);
                                CHECK(c.smc);
                                CHECK_FALSE(c.ret); // answered through X0-X3
                            });
    expect<vcpu::debug>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_DEBUG,
                                                 [](::kvm_run& r) {
                                                     a64::debug_exit_layout d{
                                                         static_cast<std::uint32_t>(a64::esr::make(a64::exception_class::brk64, 0x3e8)),
                                                         0, 0xfff0};
                                                     std::memcpy(&r.debug, &d, sizeof d);
                                                 }),
                        [](vcpu::debug& d) {
                            CHECK(d.exception == 0x3c);
                            CHECK(d.address == 0xfff0);
                        });
    expect<vcpu::fail_entry>(vcpu::kvm::mock::script{}.raw(KVM_EXIT_FAIL_ENTRY,
                                                      [](::kvm_run& r) {
                                                          r.fail_entry.hardware_entry_failure_reason = 1;
                                                          r.fail_entry.cpu = 3;
                                                      }),
                             [](vcpu::fail_entry& f) {
                                 CHECK(f.hardware_reason == 1);
                                 CHECK(f.cpu == 3);
                             });
    expect<vcpu::interrupted>(vcpu::kvm::mock::script{}.interrupted(), [](vcpu::interrupted&) {});
    expect<vcpu::unknown>(vcpu::kvm::mock::script{}.raw(0xdead, [](::kvm_run&) {}),
                          [](vcpu::unknown& u) { CHECK(u.raw == 0xdead); });
}

TEST_CASE("kvm_boot on the mock HAL: KVM_ARM_VCPU_INIT with PSCI 0.2, then PC, X0-X3, PSTATE") {
    using kind = vcpu::kvm::mock::event::kind;
    auto cpu = vcpu::kvm::mock::make_vcpu<aarch64>(vcpu::kvm::mock::script{}.system_event(KVM_SYSTEM_EVENT_SHUTDOWN));
    a64::vcpu_init init{};
    init.target = 5; // KVM_ARM_TARGET_GENERIC_V8
    init.with(a64::feature::sve);
    REQUIRE(cpu.init(a64::kvm_boot{init, 0x4008'0000, 0x4400'0000}));
    auto ev = cpu.hal().events();
    REQUIRE(ev.size() >= 2);
    CHECK(ev[0].what == kind::vcpu_init);
    CHECK(ev[0].key == 5);
    CHECK(ev[0].value == ((1u << a64::feature::psci_0_2) | (1u << a64::feature::sve)));
    CHECK(ev[1].what == kind::vcpu_finalize);
    CHECK(ev[1].key == a64::feature::sve);
    CHECK(*cpu.get(a64::pc) == 0x4008'0000);
    CHECK(*cpu.get(a64::x0) == 0x4400'0000);
    CHECK(*cpu.get(a64::pstate) == 0x3c5);

    SUBCASE("a secondary (power_off) vCPU gets no entry state: CPU_ON provides it") {
        auto sec = vcpu::kvm::mock::make_vcpu<aarch64>(vcpu::kvm::mock::script{});
        a64::vcpu_init i2{};
        i2.with(a64::feature::power_off);
        REQUIRE(sec.init(a64::kvm_boot{i2, 0x1234, 0}));
        CHECK(sec.hal().events().size() == 1);
    }
}

TEST_CASE("run loop: MMIO handlers answer, PSCI SYSTEM_OFF ends the run as a typed exit") {
    auto cpu = vcpu::kvm::mock::make_vcpu<aarch64>(vcpu::kvm::mock::script{}
                                                  .mmio_read(0x0900'0000, 4)
                                                  .mmio_write(0x0900'0004, 4, 0x1235)
                                                  .system_event(KVM_SYSTEM_EVENT_SHUTDOWN));
    std::uint64_t written = 0;
    auto r = cpu.run([&](vcpu::mmio& m) {
        if (m.is_read()) m.set(0x1234);
        else written = m.value();
    });
    REQUIRE(r);
    auto* ev = std::get_if<vcpu::system_event>(&*r);
    REQUIRE(ev != nullptr);
    CHECK(ev->what == vcpu::system_event::kind::power_off);
    CHECK(written == 0x1235);
}

TEST_CASE("register set/get through ONE_REG ids, including 128-bit V registers") {
    auto cpu = vcpu::kvm::mock::make_vcpu<aarch64>(vcpu::kvm::mock::script{});
    REQUIRE(cpu.set(aarch64::gpr(7), 77));
    CHECK(*cpu.get(a64::xregs[7]) == 77);
    REQUIRE(cpu.set(a64::vregs[31], vcpu::u128{1, 2}));
    CHECK(*cpu.get(a64::vregs[31]) == vcpu::u128{1, 2});
    REQUIRE(cpu.set(a64::fpcr, 0x0300'0000u));
    CHECK(*cpu.get(a64::fpcr) == 0x0300'0000u);
}
