// RISC-V kvm_run decoding (KVM API §5): MMIO, KVM_EXIT_RISCV_SBI by extension
// and function with the handlers' answers written back to riscv_sbi.ret[0..1],
// KVM_EXIT_RISCV_CSR, system events, failures, hostile records; and the same
// through basic_vcpu<riscv64, mock::hal>.
#include "riscv64_support.hpp"

#include <doctest/doctest.h>

#include <arch/riscv64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <kvm/mock.hpp>

#include <linux/kvm.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <variant>

namespace rv = vcpu::riscv64;
namespace sbi = vcpu::riscv64::sbi;
using A = vcpu::arch::riscv64;

namespace {

struct run_area {
    std::unique_ptr<::kvm_run> r = std::make_unique<::kvm_run>();
    run_area() { std::memset(static_cast<void*>(r.get()), 0, sizeof(::kvm_run)); }
    vcpu::kvm::run_view view() { return {r.get(), sizeof(::kvm_run)}; }
    ::kvm_run& sbi_call(std::uint64_t ext, std::uint64_t fid, std::array<std::uint64_t, 6> a = {}) {
        r->exit_reason = KVM_EXIT_RISCV_SBI;
        r->riscv_sbi.extension_id = ext;
        r->riscv_sbi.function_id = fid;
        for (std::size_t i = 0; i < 6; ++i) r->riscv_sbi.args[i] = a[i];
        r->riscv_sbi.ret[0] = static_cast<unsigned long>(sbi::as_reg(sbi::error::not_supported));
        r->riscv_sbi.ret[1] = 0;
        return *r;
    }
};

} // namespace

TEST_CASE("riscv64 kvm_run: MMIO read and write") {
    run_area a;
    a.r->exit_reason = KVM_EXIT_MMIO;
    a.r->mmio.phys_addr = 0x10000000;
    a.r->mmio.len = 4;
    a.r->mmio.is_write = 0;
    auto e = rvtest::decode(a.view());
    REQUIRE(std::holds_alternative<vcpu::mmio>(e));
    const auto& m = std::get<vcpu::mmio>(e);
    CHECK(m.is_read());
    m.set(0xcafe);
    std::uint32_t back = 0;
    std::memcpy(&back, a.r->mmio.data, 4);
    CHECK(back == 0xcafe);
    for (std::uint32_t bad : {0u, 9u, 0xffffffffu}) {
        a.r->mmio.len = bad;
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<vcpu::malformed_exit>(e));
        CHECK(std::get<vcpu::malformed_exit>(e).reason == vcpu::malformed_exit::why::mmio_size);
    }
}

TEST_CASE("riscv64 kvm_run: SBI extensions decode by extension and function") {
    run_area a;
    SUBCASE("legacy console putchar / getchar") {
        a.sbi_call(sbi::ext::legacy_console_putchar, 0, {'h'});
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::console_write>(e));
        std::get<rv::console_write>(e).done();
        CHECK(a.r->riscv_sbi.ret[0] == 0);
        a.sbi_call(sbi::ext::legacy_console_getchar, 0);
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::console_read>(e));
        std::get<rv::console_read>(e).legacy_char(-1);
        CHECK(a.r->riscv_sbi.ret[0] == ~0ul);
        std::get<rv::console_read>(e).legacy_char('x');
        CHECK(a.r->riscv_sbi.ret[0] == 'x');
    }
    SUBCASE("legacy shutdown and SRST become system events") {
        a.sbi_call(sbi::ext::legacy_shutdown, 0);
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<vcpu::system_event>(e));
        CHECK(std::get<vcpu::system_event>(e).what == vcpu::system_event::kind::power_off);
        a.sbi_call(sbi::ext::srst, sbi::srst_fid::system_reset,
                   {sbi::reset_type::warm_reboot, sbi::reset_reason::system_failure});
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<vcpu::system_event>(e));
        const auto& s = std::get<vcpu::system_event>(e);
        CHECK(s.what == vcpu::system_event::kind::reset);
        CHECK(s.raw_type == KVM_SYSTEM_EVENT_RESET);
        CHECK(s.data[0] == sbi::reset_reason::system_failure);
        CHECK(s.data[1] == sbi::reset_type::warm_reboot);
        // A reset type the spec reserves stays a generic call for the VMM to refuse.
        a.sbi_call(sbi::ext::srst, sbi::srst_fid::system_reset, {0x10000000});
        CHECK(std::holds_alternative<rv::sbi_call>(rvtest::decode(a.view())));
    }
    SUBCASE("base probe") {
        a.sbi_call(sbi::ext::base, sbi::base_fid::probe_extension, {sbi::ext::dbcn});
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::sbi_probe>(e));
        CHECK(std::get<rv::sbi_probe>(e).extension == sbi::ext::dbcn);
        std::get<rv::sbi_probe>(e).answer(1);
        CHECK(a.r->riscv_sbi.ret[0] == 0);
        CHECK(a.r->riscv_sbi.ret[1] == 1);
        a.sbi_call(sbi::ext::base, sbi::base_fid::get_spec_version);
        CHECK(std::holds_alternative<rv::sbi_call>(rvtest::decode(a.view())));
    }
    SUBCASE("HSM start / stop / status") {
        a.sbi_call(sbi::ext::hsm, sbi::hsm_fid::hart_start, {3, 0x80200000, 0x1234});
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<vcpu::cpu_up>(e));
        CHECK(std::get<vcpu::cpu_up>(e).target == 3);
        std::get<vcpu::cpu_up>(e).answer(sbi::as_reg(sbi::error::already_started));
        CHECK(a.r->riscv_sbi.ret[0] == static_cast<unsigned long>(-7L));
        a.sbi_call(sbi::ext::hsm, sbi::hsm_fid::hart_stop);
        CHECK(std::holds_alternative<vcpu::cpu_down>(rvtest::decode(a.view())));
        a.sbi_call(sbi::ext::hsm, sbi::hsm_fid::hart_get_status, {2});
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::hart_status_query>(e));
        std::get<rv::hart_status_query>(e).answer(sbi::hart_state::stopped);
        CHECK(a.r->riscv_sbi.ret[0] == 0);
        CHECK(a.r->riscv_sbi.ret[1] == sbi::hart_state::stopped);
        a.sbi_call(sbi::ext::hsm, sbi::hsm_fid::hart_suspend);
        CHECK(std::holds_alternative<rv::sbi_call>(rvtest::decode(a.view())));
    }
    SUBCASE("DBCN write, write_byte, read; a 128-bit address stays generic") {
        a.sbi_call(sbi::ext::dbcn, sbi::dbcn_fid::console_write, {12, 0x80001000, 0});
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::console_write>(e));
        const auto& w = std::get<rv::console_write>(e);
        CHECK(w.in_memory);
        CHECK(w.address == 0x80001000);
        CHECK(w.length == 12);
        w.done(12);
        CHECK(a.r->riscv_sbi.ret[0] == 0);
        CHECK(a.r->riscv_sbi.ret[1] == 12);
        a.sbi_call(sbi::ext::dbcn, sbi::dbcn_fid::console_write_byte, {0x141});
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::console_write>(e));
        CHECK(std::get<rv::console_write>(e).byte == 0x41);
        CHECK_FALSE(std::get<rv::console_write>(e).in_memory);
        a.sbi_call(sbi::ext::dbcn, sbi::dbcn_fid::console_read, {4, 0x80002000, 0});
        e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::console_read>(e));
        CHECK(std::get<rv::console_read>(e).length == 4);
        a.sbi_call(sbi::ext::dbcn, sbi::dbcn_fid::console_write, {12, 0x80001000, 1});
        CHECK(std::holds_alternative<rv::sbi_call>(rvtest::decode(a.view())));
    }
    SUBCASE("anything else is an sbi_call; an unanswered one keeps KVM's NOT_SUPPORTED") {
        a.sbi_call(0x09000001, 5, {1, 2, 3, 4, 5, 6});
        auto e = rvtest::decode(a.view());
        REQUIRE(std::holds_alternative<rv::sbi_call>(e));
        const auto& c = std::get<rv::sbi_call>(e);
        CHECK(c.nr == 0x09000001);
        CHECK(c.function == 5);
        CHECK(c.args == std::array<std::uint64_t, 6>{1, 2, 3, 4, 5, 6});
        CHECK(a.r->riscv_sbi.ret[0] == static_cast<unsigned long>(-2L));
        c.answer(0, 99);
        CHECK(a.r->riscv_sbi.ret[0] == 0);
        CHECK(a.r->riscv_sbi.ret[1] == 99);
    }
}

TEST_CASE("riscv64 kvm_run: CSR exits, system events, failures, unknown") {
    run_area a;
    a.r->exit_reason = KVM_EXIT_RISCV_CSR;
    a.r->riscv_csr.csr_num = 0x015; // seed
    a.r->riscv_csr.new_value = 0;
    a.r->riscv_csr.write_mask = 0;
    auto e = rvtest::decode(a.view());
    REQUIRE(std::holds_alternative<rv::csr_access>(e));
    CHECK(std::get<rv::csr_access>(e).is_read());
    std::get<rv::csr_access>(e).answer(0x8000abcd);
    CHECK(a.r->riscv_csr.ret_value == 0x8000abcd);
    a.r->riscv_csr.new_value = 0xf0;
    a.r->riscv_csr.write_mask = 0xff;
    e = rvtest::decode(a.view());
    CHECK_FALSE(std::get<rv::csr_access>(e).is_read());
    CHECK(std::get<rv::csr_access>(e).updated(0x1234) == 0x12f0);

    std::memset(static_cast<void*>(a.r.get()), 0, sizeof(::kvm_run));
    a.r->exit_reason = KVM_EXIT_SYSTEM_EVENT;
    a.r->system_event.type = KVM_SYSTEM_EVENT_SHUTDOWN;
    a.r->system_event.ndata = 1;
    a.r->system_event.data[0] = 0;
    e = rvtest::decode(a.view());
    REQUIRE(std::holds_alternative<vcpu::system_event>(e));
    CHECK(std::get<vcpu::system_event>(e).what == vcpu::system_event::kind::power_off);
    a.r->system_event.ndata = 1000;
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(a.view())));

    a.r->exit_reason = KVM_EXIT_INTERNAL_ERROR;
    a.r->internal.ndata = 17;
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(a.view())));
    a.r->internal.ndata = 2;
    CHECK(std::get<vcpu::internal_error>(rvtest::decode(a.view())).data.size() == 2);

    a.r->exit_reason = KVM_EXIT_FAIL_ENTRY;
    a.r->fail_entry.hardware_entry_failure_reason = 7;
    CHECK(std::get<vcpu::fail_entry>(rvtest::decode(a.view())).hardware_reason == 7);
    a.r->exit_reason = KVM_EXIT_INTR;
    CHECK(std::holds_alternative<vcpu::interrupted>(rvtest::decode(a.view())));
    a.r->exit_reason = 0xdead;
    CHECK(std::get<vcpu::unknown>(rvtest::decode(a.view())).raw == 0xdead);

    vcpu::kvm::run_view tiny{a.r.get(), 16};
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(tiny)));
    vcpu::kvm::run_view null{nullptr, 0};
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(null)));
}

TEST_CASE("riscv64 mock: handlers answer SBI calls and MMIO reads; SRST ends run()") {
    vcpu::kvm::mock::script s;
    auto sbi_exit = [&](std::uint64_t ext, std::uint64_t fid, std::array<std::uint64_t, 6> args) {
        s.raw(KVM_EXIT_RISCV_SBI, [&](::kvm_run& r) {
            r.riscv_sbi.extension_id = ext;
            r.riscv_sbi.function_id = fid;
            for (std::size_t i = 0; i < 6; ++i) r.riscv_sbi.args[i] = args[i];
            r.riscv_sbi.ret[0] = static_cast<unsigned long>(-2L);
        });
    };
    sbi_exit(sbi::ext::dbcn, sbi::dbcn_fid::console_write_byte, {'o'});
    sbi_exit(sbi::ext::legacy_console_putchar, 0, {'k'});
    s.mmio_read(0x10000000, 8);
    sbi_exit(0x09000000, 1, {});
    sbi_exit(sbi::ext::srst, sbi::srst_fid::system_reset, {sbi::reset_type::shutdown, 0});
    auto cpu = vcpu::kvm::mock::make_vcpu<A>(std::move(s));
    REQUIRE(cpu.init(rv::boot{0x80000000, 0, 0x82200000}));

    std::string console;
    std::uint64_t sbi_ret0 = 1;
    auto r = cpu.run(
        [&](rv::console_write& w) {
            console += static_cast<char>(w.byte);
            w.done();
        },
        [](vcpu::mmio& m) { m.set(0x1122334455667788ull); },
        [&](vcpu::hypercall& h) { // a portable handler takes the sbi_call
            h.answer(0, 5);
            sbi_ret0 = h.ret.load();
        });
    REQUIRE(r);
    REQUIRE(std::holds_alternative<vcpu::system_event>(*r));
    CHECK(std::get<vcpu::system_event>(*r).what == vcpu::system_event::kind::power_off);
    CHECK(console == "ok");
    CHECK(sbi_ret0 == 0);
    CHECK(cpu.hal().run().riscv_sbi.extension_id == sbi::ext::srst);
    // The MMIO read's answer was recorded before the next exit overwrote it.
    bool saw = false;
    for (const auto& ev : cpu.hal().events())
        if (ev.what == vcpu::kvm::mock::event::kind::answer && ev.value == 0x1122334455667788ull) saw = true;
    CHECK(saw);
}
