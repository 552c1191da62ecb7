// AArch64 register ids (against arm64 <asm/kvm.h> values), the system-register
// table's compile-time checks, and the EL2 initial-state constants.
#include <arch/aarch64/el2.hpp>
#include <arch/aarch64/registers.hpp>
#include <arch/aarch64/sysregs.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstdint>

namespace a64 = vcpu::aarch64;

// Ids as arm64's <asm/kvm.h> macros produce them on Linux 6.1 (computed by
// hand from KVM_REG_ARM64 | KVM_REG_SIZE_* | KVM_REG_ARM_CORE | offset/4;
// include/kvm/aarch64.hpp asserts the same against the real header on arm64).
static_assert(a64::x0.id == 0x6030'0000'0010'0000ULL);
static_assert(a64::xregs[30].id == 0x6030'0000'0010'003cULL);
static_assert(a64::sp.id == 0x6030'0000'0010'003eULL);
static_assert(a64::pc.id == 0x6030'0000'0010'0040ULL);
static_assert(a64::pstate.id == 0x6030'0000'0010'0042ULL);
static_assert(a64::sp_el1.id == 0x6030'0000'0010'0044ULL);
static_assert(a64::elr_el1.id == 0x6030'0000'0010'0046ULL);
static_assert(a64::spsr_el1.id == 0x6030'0000'0010'0048ULL);
static_assert(a64::vregs[0].id == 0x6040'0000'0010'0054ULL);
static_assert(a64::vregs[31].id == 0x6040'0000'0010'00d0ULL);
static_assert(a64::fpsr.id == 0x6020'0000'0010'00d4ULL);
static_assert(a64::fpcr.id == 0x6020'0000'0010'00d5ULL);
static_assert(a64::sctlr_el1.id == 0x6030'0000'0013'c080ULL);   // ARM64_SYS_REG(3,0,1,0,0)
static_assert(a64::timer_cnt.id == 0x6030'0000'0013'df1aULL);   // KVM_REG_ARM_TIMER_CNT
static_assert(a64::timer_cval.id == 0x6030'0000'0013'df02ULL);  // KVM_REG_ARM_TIMER_CVAL
static_assert(a64::psci_version_reg.id == 0x6030'0000'0014'0000ULL);

TEST_CASE("register ids: core, FP/SIMD, sysreg and firmware groups") {
    CHECK((a64::pc.id & 0xff00'0000'0000'0000ULL) == 0x6000'0000'0000'0000ULL);
    CHECK(a64::pc.width_bits() == 64);
    CHECK(a64::vregs[3].width_bits() == 128);
    CHECK(a64::fpsr.width_bits() == 32);
    // Size field agrees with the value type for every register.
    std::size_t mismatches = 0;
    std::apply(
        [&](const auto&... r) {
            ((mismatches += (std::uint64_t{1} << ((r.id >> a64::reg_size_shift) & 0xf)) * 8 != r.width_bits()), ...);
        },
        a64::all_registers);
    CHECK(mismatches == 0);
    // sysreg index round trip.
    for (std::uint32_t i : {0u, 0xc080u, 0xdf1au, 0xffffu})
        CHECK(a64::sys_encoding::from_index(i).index() == i);
}

TEST_CASE("sysreg table: compile-time checked, binary-searched") {
    static_assert(a64::el1_sysregs::size == 16);
    static_assert(a64::el1_sysregs::find(a64::sys_encoding{3, 0, 1, 0, 0})->name == "SCTLR_EL1");
    static_assert(a64::el1_sysregs::find(a64::sys_encoding{3, 3, 0, 0, 1})->name == "CTR_EL0");
    static_assert(a64::el1_sysregs::find(a64::sys_encoding{3, 0, 0, 0, 1}) == nullptr);
    static_assert(a64::detail::first_unsorted(a64::el1_sysreg_entries) == a64::detail::no_entry);
    constexpr std::array<a64::sysreg_desc, 3> bad{{{{3, 0, 1, 0, 0}, "B"}, {{3, 0, 0, 0, 0}, "A"},
                                                   {{3, 0, 0, 0, 0}, "A2"}}};
    static_assert(a64::detail::first_unsorted(bad) == 1);
    static_assert(a64::detail::first_duplicate(bad) == 2);
    for (const auto& d : a64::el1_sysregs::entries()) CHECK(a64::el1_sysregs::find(d.enc) == &d);

    // handle(): read-only registers answer reads and fail writes.
    unsigned long long out = 0;
    std::uint8_t fault = 0;
    vcpu::sysreg rd{};
    rd.id = a64::sys_encoding{3, 0, 0, 0, 0}.index();
    rd.dir = vcpu::direction::in;
    rd.result = &out;
    CHECK(a64::el1_sysregs::handle(rd));
    CHECK(out == 0x410fd034);
    vcpu::sysreg wr = rd;
    wr.dir = vcpu::direction::out;
    wr.fault = &fault;
    CHECK(a64::el1_sysregs::handle(wr));
    CHECK(fault == 1);
    vcpu::sysreg em = rd;
    em.id = a64::sys_encoding{3, 0, 1, 0, 0}.index(); // SCTLR_EL1: emulate
    CHECK_FALSE(a64::el1_sysregs::handle(em));
}

TEST_CASE("EL2 initial state constants (arm_vcpu defaults)") {
    namespace e = a64::el2;
    CHECK(e::hcr::vm.test(e::hcr::guest_default));
    CHECK(e::hcr::rw.test(e::hcr::guest_default));
    CHECK(e::hcr::tsc.test(e::hcr::guest_default));
    CHECK(e::hcr::imo.test(e::hcr::guest_default));
    CHECK(e::hcr::fmo.test(e::hcr::guest_default));
    CHECK_FALSE(e::hcr::twi.test(e::hcr::guest_default));
    CHECK(e::vtcr::t0sz.get(e::vtcr::ipa40_4k) == 24);
    CHECK(e::vtcr::ps.get(e::vtcr::ipa40_4k) == 2);
    CHECK(e::vtcr::tg0.get(e::vtcr::ipa40_4k) == 0);
    const auto v48 = *e::vtcr::for_pa_range(5);
    CHECK(e::vtcr::t0sz.get(v48) == 16);
    CHECK(e::vtcr::sl0.get(v48) == 2); // 4 levels from L0
    CHECK(e::vtcr::levels(48) == 4);
    CHECK(e::vtcr::levels(39) == 3);
    CHECK_FALSE(e::vtcr::for_pa_range(6)); // 52-bit needs LPA2
    CHECK_FALSE(e::vtcr::for_pa_range(7)); // reserved
    CHECK(e::sctlr_el1_reset == 0x30c50830);
    CHECK(e::spsr_el1h_daif == 0x3c5);
    const auto s = e::initial_state::for_vcpu(0x102, 0x4008'0000, 0x4400'0000);
    CHECK(s.vmpidr_el2 == 0x8000'0102);
    CHECK(s.elr_el2 == 0x4008'0000);
    CHECK(s.x0 == 0x4400'0000);
}
