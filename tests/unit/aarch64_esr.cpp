// ESR_EL2 decoding (ARM DDI 0487, D17.2.37) for every exception class the
// EL2 decoder handles, including hostile syndromes.
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/exits.hpp>
#include <arch/aarch64/psci.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <variant>

namespace a64 = vcpu::aarch64;
using a64::exception_class;
using a64::el2_syndrome;

namespace {

using any_exit = vcpu::list_concat_t<vcpu::type_list<std::monostate>, a64::exit_types>;
template <class L> struct to_variant;
template <class... T> struct to_variant<vcpu::type_list<T...>> { using type = std::variant<T...>; };
using exit_variant = to_variant<any_exit>::type;

/// Decodes `s` and returns the one exit (checking it was exactly one).
exit_variant decode(const el2_syndrome& s) {
    exit_variant out;
    int calls = 0;
    vcpu::decode_exit<vcpu::arch::aarch64>(s, [&]<class E>(E& e) noexcept {
        ++calls;
        out.emplace<E>(e);
    });
    CHECK(calls == 1);
    return out;
}

/// ISS of a data abort (D17.2.37 "ISS encoding for an exception from a Data Abort").
constexpr std::uint32_t dabt_iss(bool isv, unsigned sas, bool sse, unsigned srt, bool sf, bool wnr,
                                 unsigned dfsc = 0x07 /* translation fault, level 3 */) {
    namespace d = a64::esr::dabt;
    return static_cast<std::uint32_t>(d::isv.bits(isv) | d::sas.bits(sas) | d::sse.bits(sse) |
                                      d::srt.bits(srt) | d::sf.bits(sf) | d::wnr.bits(wnr) |
                                      d::dfsc.bits(dfsc));
}

el2_syndrome sync(exception_class ec, std::uint32_t iss, a64::gpr_frame& f, std::uint64_t far = 0,
                  std::uint64_t hpfar = 0) {
    return el2_syndrome{a64::esr::make(ec, iss), far, hpfar, &f, a64::el2_vector::sync, 0};
}

} // namespace

TEST_CASE("EC table: defined vs reserved exception classes") {
    CHECK(a64::is_defined(0x00));
    CHECK(a64::is_defined(0x16));
    CHECK(a64::is_defined(0x24));
    CHECK(a64::is_defined(0x3c));
    for (unsigned ec : {0x02u, 0x0bu, 0x0fu, 0x10u, 0x14u, 0x23u, 0x29u, 0x2au, 0x2bu, 0x2du, 0x2eu,
                        0x36u, 0x37u, 0x39u, 0x3bu, 0x3du, 0x3eu, 0x3fu})
        CHECK_FALSE(a64::is_defined(ec));
}

TEST_CASE("reserved EC decodes to malformed_exit with the raw syndrome") {
    a64::gpr_frame f{};
    el2_syndrome s{std::uint64_t{0x3f} << 26 | 0x1234, 0, 0, &f, a64::el2_vector::sync, 0};
    auto e = decode(s);
    auto* m = std::get_if<vcpu::malformed_exit>(&e);
    REQUIRE(m != nullptr);
    CHECK(m->reason == vcpu::malformed_exit::why::encoding);
    CHECK(m->raw_reason == 0x3f);
    CHECK(m->value == s.esr);
}

TEST_CASE("a sync exit without a GPR frame is malformed, not a null dereference") {
    el2_syndrome s{a64::esr::make(exception_class::dabt_low, dabt_iss(true, 2, false, 1, false, true)),
                   0, 0, nullptr, a64::el2_vector::sync, 0};
    CHECK(std::holds_alternative<vcpu::malformed_exit>(decode(s)));
}

TEST_CASE("data abort ISV=1: MMIO write with IPA from HPFAR_EL2 + FAR_EL2") {
    a64::gpr_frame f{};
    f.x[5] = 0xdead'beef'0000'1235;
    // HPFAR_EL2.FIPA = IPA[55:12] in [47:4]; NS bit set to check it is ignored.
    const std::uint64_t hpfar = (std::uint64_t{0x0900'0} << 4) | (std::uint64_t{1} << 63);
    auto e = decode(sync(exception_class::dabt_low, dabt_iss(true, 2, false, 5, false, true), f,
                         0xffff'0000'0000'0abc, hpfar));
    auto* m = std::get_if<a64::mmio_access>(&e);
    REQUIRE(m != nullptr);
    CHECK(m->address == 0x0900'0abc);
    CHECK(m->size == 4);
    CHECK(m->is_write());
    CHECK(m->srt == 5);
    CHECK_FALSE(m->sf);
    CHECK(m->value() == 0x0000'1235); // only the low SAS bytes of X5
    // A portable handler sees it as vcpu::mmio.
    const vcpu::mmio& base = *m;
    CHECK(base.data.size() == 4);
}

TEST_CASE("data abort ISV=1: MMIO read answered with sign extension into Wt/Xt") {
    a64::gpr_frame f{};
    f.x[3] = 0x1111'2222'3333'4444; // stale: cleared before the handler runs
    SUBCASE("LDRSH Xt: 16-bit, SSE, SF") {
        auto e = decode(sync(exception_class::dabt_low, dabt_iss(true, 1, true, 3, true, false), f));
        auto& m = std::get<a64::mmio_access>(e);
        CHECK(m.is_read());
        CHECK(f.x[3] == 0);
        m.set(0x8001);
        CHECK(f.x[3] == 0xffff'ffff'ffff'8001);
    }
    SUBCASE("LDRSB Wt: 8-bit, SSE, 32-bit destination") {
        auto e = decode(sync(exception_class::dabt_low, dabt_iss(true, 0, true, 3, false, false), f));
        std::get<a64::mmio_access>(e).set(0x80);
        CHECK(f.x[3] == 0xffff'ff80);
    }
    SUBCASE("portable handler writes data bytes; complete_mmio_read applies SSE/SF") {
        auto s = sync(exception_class::dabt_low, dabt_iss(true, 1, true, 3, true, false), f);
        auto e = decode(s);
        vcpu::mmio& base = std::get<a64::mmio_access>(e);
        base.set(0xfffe); // writes 2 bytes only
        CHECK(f.x[3] == 0xfffe);
        a64::complete_mmio_read(s);
        CHECK(f.x[3] == 0xffff'ffff'ffff'fffe);
        a64::complete_mmio_read(s); // idempotent
        CHECK(f.x[3] == 0xffff'ffff'ffff'fffe);
    }
    SUBCASE("LDR Xt: 64-bit, zero-extended") {
        auto e = decode(sync(exception_class::dabt_low, dabt_iss(true, 3, false, 3, true, false), f));
        std::get<a64::mmio_access>(e).set(0x8000'0000'0000'0001);
        CHECK(f.x[3] == 0x8000'0000'0000'0001);
    }
}

TEST_CASE("complete_mmio_read leaves Xt alone for a data abort the decoder did not emulate") {
    // Found by tests/fuzz/aarch64_esr: with ISV=1 and a read, complete_mmio_read truncated or
    // sign-extended Xt even when the decoder had reported a nested_page_fault (EA, CM, S1PTW),
    // a nisv_abort (FnV) or a malformed_exit (64-bit access with SSE or to a W register), so an
    // EL2 HAL completing "the data abort" corrupted a guest register the VMM never answered.
    namespace d = a64::esr::dabt;
    const std::uint32_t read_w3 = dabt_iss(true, 1, true, 3, false, false); // LDRSH W3
    const std::uint32_t forged[] = {
        read_w3 | static_cast<std::uint32_t>(d::ea.bits(1)),
        read_w3 | static_cast<std::uint32_t>(d::cm.bits(1)),
        read_w3 | static_cast<std::uint32_t>(d::s1ptw.bits(1)),
        read_w3 | static_cast<std::uint32_t>(d::fnv.bits(1)),
        dabt_iss(true, 3, true, 3, true, false),  // 64-bit load with SSE
        dabt_iss(true, 3, false, 3, false, false), // 64-bit load into W3
    };
    for (std::uint32_t iss : forged) {
        a64::gpr_frame f{};
        f.x[3] = 0x1234'5678'9abc'def0;
        const auto s = sync(exception_class::dabt_low, iss, f);
        const auto e = decode(s);
        CHECK_FALSE(std::holds_alternative<a64::mmio_access>(e));
        a64::complete_mmio_read(s);
        CHECK(f.x[3] == 0x1234'5678'9abc'def0);
    }
}

TEST_CASE("data abort SRT=31 is XZR: writes carry zero, read answers are discarded") {
    a64::gpr_frame f{};
    f.x[31] = 0x55; // garbage in the discard slot
    auto w = decode(sync(exception_class::dabt_low, dabt_iss(true, 3, false, 31, true, true), f));
    CHECK(std::get<a64::mmio_access>(w).value() == 0);
    auto r = decode(sync(exception_class::dabt_low, dabt_iss(true, 2, false, 31, false, false), f));
    std::get<a64::mmio_access>(r).set(0x1234);
    for (unsigned i = 0; i < 31; ++i) CHECK(f.x[i] == 0);
}

TEST_CASE("data abort ISV=0 or FnV=1 decodes to nisv_abort with ISS and IPA") {
    a64::gpr_frame f{};
    const std::uint64_t hpfar = std::uint64_t{0x10000} << 4;
    auto e = decode(sync(exception_class::dabt_low, dabt_iss(false, 0, false, 0, false, true), f,
                         0x10, hpfar));
    auto* n = std::get_if<a64::nisv_abort>(&e);
    REQUIRE(n != nullptr);
    CHECK(n->ipa == 0x1000'0010);
    CHECK(n->is_write());
    auto e2 = decode(sync(exception_class::dabt_low,
                          dabt_iss(true, 2, false, 1, false, true) |
                              static_cast<std::uint32_t>(a64::esr::dabt::fnv.bits()),
                          f));
    CHECK(std::holds_alternative<a64::nisv_abort>(e2));
}

TEST_CASE("forged data-abort syndromes are malformed") {
    a64::gpr_frame f{};
    // 64-bit access into a W register.
    CHECK(std::holds_alternative<vcpu::malformed_exit>(
        decode(sync(exception_class::dabt_low, dabt_iss(true, 3, false, 1, false, false), f))));
    // Sign-extending 64-bit load.
    CHECK(std::holds_alternative<vcpu::malformed_exit>(
        decode(sync(exception_class::dabt_low, dabt_iss(true, 3, true, 1, true, false), f))));
}

TEST_CASE("stage-1 walk, cache maintenance and external aborts are nested page faults") {
    a64::gpr_frame f{};
    namespace d = a64::esr::dabt;
    for (std::uint64_t bit : {d::s1ptw.bits(), d::cm.bits(), d::ea.bits()}) {
        auto e = decode(sync(exception_class::dabt_low,
                             dabt_iss(true, 2, false, 1, false, false) | static_cast<std::uint32_t>(bit), f));
        CHECK(std::holds_alternative<vcpu::nested_page_fault>(e));
    }
    auto i = decode(sync(exception_class::iabt_low, 0x07, f, 0x123, std::uint64_t{0x4} << 4));
    auto& p = std::get<vcpu::nested_page_fault>(i);
    CHECK(p.exec);
    CHECK(p.address == 0x4123);
}

TEST_CASE("WFI and WFE are halts") {
    a64::gpr_frame f{};
    CHECK_FALSE(std::get<vcpu::halt>(decode(sync(exception_class::wfx, 0, f))).wait_for_event);
    CHECK(std::get<vcpu::halt>(decode(sync(exception_class::wfx, 1, f))).wait_for_event);
}

TEST_CASE("IRQ/FIQ vectors are external interrupts; SError is unknown") {
    el2_syndrome s{};
    s.vector = a64::el2_vector::irq;
    s.intid = 27;
    CHECK(std::get<vcpu::external_interrupt>(decode(s)).vector == 27);
    s.vector = a64::el2_vector::serror;
    CHECK(std::get<vcpu::unknown>(decode(s)).raw == 0x2f);
    s.vector = static_cast<a64::el2_vector>(9);
    CHECK(std::holds_alternative<vcpu::malformed_exit>(decode(s)));
}

TEST_CASE("MSR/MRS trap decodes to sysreg with the KVM sysreg index") {
    namespace s64 = a64::esr::sys64;
    a64::gpr_frame f{};
    f.x[7] = 0xabcd;
    // MSR SCTLR_EL1, X7 (op0=3 op1=0 CRn=1 CRm=0 op2=0), direction 0 = write
    const auto iss = static_cast<std::uint32_t>(s64::op0.bits(3) | s64::op1.bits(0) | s64::crn.bits(1) |
                                                s64::crm.bits(0) | s64::op2.bits(0) | s64::rt.bits(7));
    auto w = std::get<vcpu::sysreg>(decode(sync(exception_class::sys64, iss, f)));
    CHECK(w.id == a64::sys_encoding{3, 0, 1, 0, 0}.index());
    CHECK_FALSE(w.is_read());
    CHECK(w.value == 0xabcd);
    CHECK(w.gpr == 7);
    // MRS X2, MPIDR_EL1 (3,0,0,0,5)
    const auto iss2 = static_cast<std::uint32_t>(s64::op0.bits(3) | s64::op2.bits(5) | s64::rt.bits(2) |
                                                 s64::direction.bits());
    auto r = std::get<vcpu::sysreg>(decode(sync(exception_class::sys64, iss2, f)));
    CHECK(r.is_read());
    CHECK(a64::sys_encoding::from_index(static_cast<std::uint32_t>(r.id)) == a64::sys_encoding{3, 0, 0, 0, 5});
    r.answer(0x8000'0001);
    CHECK(f.x[2] == 0x8000'0001);
    // MRS XZR: the answer goes to the discard slot.
    const auto iss3 = static_cast<std::uint32_t>(s64::op0.bits(3) | s64::rt.bits(31) | s64::direction.bits());
    std::get<vcpu::sysreg>(decode(sync(exception_class::sys64, iss3, f))).answer(7);
    CHECK(f.x[30] == 0);
}

TEST_CASE("HVC #0 with PSCI function ids") {
    namespace p = a64::psci;
    a64::gpr_frame f{};
    SUBCASE("CPU_ON (SMC64) -> cpu_up with target MPIDR, entry, context; answer in X0") {
        f.x[0] = p::id64(p::function::cpu_on);
        f.x[1] = 0x0000'0001'0000'0203;
        f.x[2] = 0x4008'0000;
        f.x[3] = 0x4400'0000;
        auto c = std::get<vcpu::cpu_up>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(c.target == 0x0000'0001'0000'0203);
        CHECK(c.entry == 0x4008'0000);
        CHECK(c.context == 0x4400'0000);
        c.answer(p::to_x0(p::status::already_on));
        CHECK(f.x[0] == static_cast<std::uint64_t>(-4));
    }
    SUBCASE("CPU_ON (SMC32) masks arguments to 32 bits") {
        f.x[0] = 0xffff'ffff'0000'0000 | p::id32(p::function::cpu_on); // W0 only
        f.x[2] = 0xffff'ffff'8000'0000;
        auto c = std::get<vcpu::cpu_up>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(c.entry == 0x8000'0000);
    }
    SUBCASE("CPU_OFF") {
        f.x[0] = p::id32(p::function::cpu_off);
        CHECK(std::holds_alternative<vcpu::cpu_down>(decode(sync(exception_class::hvc64, 0, f))));
    }
    SUBCASE("SYSTEM_OFF and SYSTEM_RESET") {
        f.x[0] = p::id32(p::function::system_off);
        auto off = std::get<vcpu::system_event>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(off.what == vcpu::system_event::kind::power_off);
        CHECK(off.raw_type == 0x8400'0008);
        f.x[0] = p::id32(p::function::system_reset);
        CHECK(std::get<vcpu::system_event>(decode(sync(exception_class::smc64, 0, f))).what ==
              vcpu::system_event::kind::reset);
        f.x[0] = p::id64(p::function::system_reset2);
        f.x[1] = 0x8000'0000;
        f.x[2] = 42;
        auto r2 = std::get<vcpu::system_event>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(r2.ndata == 2);
        CHECK(r2.data[1] == 42);
    }
    SUBCASE("VERSION and FEATURES are psci_call") {
        f.x[0] = p::id32(p::function::version);
        auto v = std::get<a64::psci_call>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(v.id.fn == p::function::version);
        v.answer(p::version_1_1);
        CHECK(f.x[0] == 0x10001);
        f.x[0] = p::id32(p::function::features);
        f.x[1] = p::id64(p::function::cpu_on);
        auto ft = std::get<a64::psci_call>(decode(sync(exception_class::hvc64, 0, f)));
        CHECK(ft.id.fn == p::function::features);
        CHECK(ft.args[0] == 0xc400'0003);
        ft.answer(p::status::not_supported);
        CHECK(f.x[0] == ~std::uint64_t{0});
    }
    SUBCASE("a non-PSCI function or a non-zero immediate is an smccc_call with X0-X6") {
        for (std::uint64_t i = 0; i < 7; ++i) f.x[i] = 0xc600'0000 + i;
        auto h = decode(sync(exception_class::hvc64, 0, f));
        auto& c = std::get<a64::smccc_call>(h);
        CHECK(c.nr == 0xc600'0000);
        CHECK(c.args[5] == 0xc600'0006);
        CHECK_FALSE(c.smc);
        c.answer(1, 2);
        CHECK(f.x[0] == 1);
        CHECK(f.x[1] == 2);
        f.x[0] = p::id32(p::function::system_off);
        auto imm = std::get<a64::smccc_call>(decode(sync(exception_class::smc64, 0x4711, f)));
        CHECK(imm.imm16 == 0x4711);
        CHECK(imm.smc);
        // A portable hypercall handler takes it.
        const vcpu::hypercall& base = imm;
        CHECK(base.nr == 0x8400'0008);
    }
}

TEST_CASE("debug exception classes become debug exits; other defined ECs unknown") {
    a64::gpr_frame f{};
    for (auto ec : {exception_class::breakpoint_low, exception_class::software_step_low,
                    exception_class::watchpoint_low, exception_class::brk64}) {
        auto d = std::get<vcpu::debug>(decode(sync(ec, 0x42, f, 0x1000)));
        CHECK(d.exception == static_cast<std::uint32_t>(ec));
        CHECK(d.address == 0x1000);
    }
    auto u = std::get<vcpu::unknown>(decode(sync(exception_class::fp_access, 0, f)));
    CHECK(u.raw == 0x07);
    CHECK(std::get<vcpu::unknown>(decode(sync(exception_class::unknown, 0, f))).raw == 0);
}

TEST_CASE("PSCI function-id decoding (ARM DEN 0022 Table 5-1)") {
    namespace p = a64::psci;
    CHECK(p::decode(0x8400'0000) == p::call_id{p::function::version, false});
    CHECK(p::decode(0xc400'0003) == p::call_id{p::function::cpu_on, true});
    CHECK(p::decode(0x8400'0003) == p::call_id{p::function::cpu_on, false});
    CHECK(p::decode(0x8400'0014) == p::call_id{p::function::mem_protect_check_range, false});
    CHECK_FALSE(p::decode(0xc400'0008)); // SYSTEM_OFF has no SMC64 form
    CHECK_FALSE(p::decode(0x8400'0015)); // beyond PSCI 1.1
    CHECK_FALSE(p::decode(0x0400'0000)); // yielding call
    CHECK_FALSE(p::decode(0x8500'0000)); // another service owner
    CHECK_FALSE(p::decode(0x8401'0000)); // bits [23:16] set
    CHECK(p::name(p::function::system_off) == "SYSTEM_OFF");
    for (unsigned n = 0; n <= p::last_function; ++n)
        CHECK(p::decode(0x8400'0000u | n).has_value());
}
