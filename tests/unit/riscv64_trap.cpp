// HS-mode trap decoding (RISC-V privileged spec, H extension): scause,
// htval/stval, htinst (transformed standard and compressed, pseudo, hostile),
// fetched original instructions, virtual instructions, SBI from the trap frame.
#include "riscv64_support.hpp"

#include <doctest/doctest.h>

#include <arch/riscv64/arch.hpp>

#include <cstdint>
#include <variant>

namespace rv = vcpu::riscv64;
namespace ec = rv::exception_code;
using rvtest::any_exit;

namespace {

rv::hs_trap guest_page_fault(std::uint64_t code, std::uint64_t gpa, std::uint64_t htinst,
                             rv::hs_guest_frame* f, std::uint32_t fetched = 0) {
    rv::hs_trap t{};
    t.scause = code;
    t.htval = gpa >> 2;
    t.stval = 0xffffffc000000000ull | (gpa & 0xfff); // a guest virtual address, same low bits
    t.htinst = htinst;
    t.fetched_insn = fetched;
    t.sepc = 0x80200000;
    t.frame = f;
    return t;
}

rv::mmio_trap expect_mmio(const any_exit& e) {
    REQUIRE(std::holds_alternative<rv::mmio_trap>(e));
    return std::get<rv::mmio_trap>(e);
}

} // namespace

TEST_CASE("riscv64 trap: every transformed standard load decodes width, sign and rd") {
    struct row {
        unsigned f3;
        std::uint8_t width;
        bool sign;
    };
    const row rows[] = {{0, 1, true}, {1, 2, true}, {2, 4, true}, {3, 8, false},
                        {4, 1, false}, {5, 2, false}, {6, 4, false}};
    for (const auto& r : rows) {
        CAPTURE(r.f3);
        rv::hs_guest_frame f{};
        f.x[12] = 0x1234; // rd's old value, overwritten by write_back
        auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000008, rvtest::load(r.f3, 12), &f);
        const auto m = expect_mmio(rvtest::decode(t));
        CHECK(m.address == 0x10000008);
        CHECK(m.size == r.width);
        CHECK(m.is_read());
        CHECK(m.sign_extend == r.sign);
        CHECK(m.reg == 12);
        CHECK(m.insn_length == 4);
        CHECK(m.gva == t.stval);
        CHECK(m.data.size() == r.width);
        m.set(0xfffffffffffffff0ull); // the device answers all high bits set
        m.write_back(f);
        const std::uint64_t truncated =
            r.width == 8 ? 0xfffffffffffffff0ull : (0xfffffffffffffff0ull & ((1ull << (r.width * 8)) - 1));
        CHECK(f.x[12] == (r.sign ? 0xfffffffffffffff0ull : truncated));
    }
}

TEST_CASE("riscv64 trap: transformed stores carry rs2's value truncated to the width") {
    const std::uint8_t widths[] = {1, 2, 4, 8};
    for (unsigned f3 = 0; f3 < 4; ++f3) {
        CAPTURE(f3);
        rv::hs_guest_frame f{};
        f.x[11] = 0x1122334455667788ull;
        auto t = guest_page_fault(ec::store_guest_page_fault, 0x10001000, rvtest::store(f3, 11), &f);
        const auto m = expect_mmio(rvtest::decode(t));
        CHECK(m.is_write());
        CHECK(m.size == widths[f3]);
        CHECK(m.reg == 11);
        const std::uint64_t mask = widths[f3] == 8 ? ~0ull : ((1ull << (widths[f3] * 8)) - 1);
        CHECK(m.value() == (0x1122334455667788ull & mask));
        m.write_back(f); // no-op for stores
        CHECK(f.x[11] == 0x1122334455667788ull);
    }
}

TEST_CASE("riscv64 trap: the guest physical address is htval << 2 | stval & 3") {
    rv::hs_guest_frame f{};
    rv::hs_trap t{};
    t.scause = ec::load_guest_page_fault;
    t.htval = 0x40000001; // GPA 0x1_0000_0004..7
    t.stval = 0x7;
    t.htinst = rvtest::load(0, 5);
    t.frame = &f;
    CHECK(expect_mmio(rvtest::decode(t)).address == 0x100000007ull);
}

TEST_CASE("riscv64 trap: transformed compressed instructions (htinst bit 1 clear) are 2 bytes long") {
    rv::hs_guest_frame f{};
    // C.LW a0 transforms to LW a0 with bit 1 cleared: 0x2501.
    auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000000, 0x2501, &f);
    auto m = expect_mmio(rvtest::decode(t));
    CHECK(m.insn_length == 2);
    CHECK(m.size == 4);
    CHECK(m.sign_extend);
    CHECK(m.reg == 10);
    // C.SD s1 transforms to SD s1: store f3=3 rs2=9, bit 1 cleared.
    f.x[9] = 42;
    t = guest_page_fault(ec::store_guest_page_fault, 0x10000000, rvtest::store(3, 9) & ~2u, &f);
    m = expect_mmio(rvtest::decode(t));
    CHECK(m.insn_length == 2);
    CHECK(m.size == 8);
    CHECK(m.value() == 42);
}

TEST_CASE("riscv64 trap: original compressed loads/stores fetched by the HAL (htinst = 0)") {
    struct row {
        std::uint32_t insn;
        bool load;
        std::uint8_t width;
        bool sign;
        std::uint8_t reg;
        const char* name;
    };
    const row rows[] = {
        {0x4188, true, 4, true, 10, "c.lw a0,0(a1)"},
        {0x6188, true, 8, false, 10, "c.ld a0,0(a1)"},
        {0xc188, false, 4, false, 10, "c.sw a0,0(a1)"},
        {0xe188, false, 8, false, 10, "c.sd a0,0(a1)"},
        {0x4502, true, 4, true, 10, "c.lwsp a0,0(sp)"},
        {0x6502, true, 8, false, 10, "c.ldsp a0,0(sp)"},
        {0xc02a, false, 4, false, 10, "c.swsp a0,0(sp)"},
        {0xe02a, false, 8, false, 10, "c.sdsp a0,0(sp)"},
        {0x8188, true, 1, false, 10, "c.lbu a0,0(a1)"},
        {0x8588, true, 2, false, 10, "c.lhu a0,0(a1)"},
        {0x85c8, true, 2, true, 10, "c.lh a0,0(a1)"},
        {0x8988, false, 1, false, 10, "c.sb a0,0(a1)"},
        {0x8d88, false, 2, false, 10, "c.sh a0,0(a1)"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.name);
        rv::hs_guest_frame f{};
        f.x[10] = 0xa5a5a5a5a5a5a5a5ull;
        auto t = guest_page_fault(r.load ? ec::load_guest_page_fault : ec::store_guest_page_fault,
                                  0x10000000, 0, &f, r.insn);
        const auto m = expect_mmio(rvtest::decode(t));
        CHECK(m.is_read() == r.load);
        CHECK(m.size == r.width);
        CHECK(m.sign_extend == r.sign);
        CHECK(m.reg == r.reg);
        CHECK(m.insn_length == 2);
    }
    // A fetched 32-bit original: LD t0, 8(a1).
    rv::hs_guest_frame f{};
    auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000008, 0, &f, rvtest::load(3, 5, 11, 8));
    const auto m = expect_mmio(rvtest::decode(t));
    CHECK(m.size == 8);
    CHECK(m.reg == 5);
    CHECK(m.insn_length == 4);
}

TEST_CASE("riscv64 trap: x0 as destination and as source") {
    rv::hs_guest_frame f{};
    f.x[0] = 0xdead; // garbage in the x0 slot must never be read or changed
    auto t = guest_page_fault(ec::store_guest_page_fault, 0x10000000, rvtest::store(3, 0), &f);
    CHECK(expect_mmio(rvtest::decode(t)).value() == 0);
    t = guest_page_fault(ec::load_guest_page_fault, 0x10000000, rvtest::load(3, 0), &f);
    const auto m = expect_mmio(rvtest::decode(t));
    m.set(77);
    m.write_back(f);
    CHECK(f.x[0] == 0xdead);
}

TEST_CASE("riscv64 trap: guest page faults that are not plain MMIO") {
    rv::hs_guest_frame f{};
    SUBCASE("htinst = 0 and nothing fetched: nested page fault, the VMM must fetch") {
        auto t = guest_page_fault(ec::store_guest_page_fault, 0x10000000, 0, &f);
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<vcpu::nested_page_fault>(e));
        const auto& n = std::get<vcpu::nested_page_fault>(e);
        CHECK(n.address == 0x10000000);
        CHECK(n.write);
        CHECK_FALSE(n.read);
        CHECK(n.syndrome == ec::store_guest_page_fault);
    }
    SUBCASE("instruction guest-page fault") {
        auto t = guest_page_fault(ec::insn_guest_page_fault, 0x80000000, 0, &f);
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<vcpu::nested_page_fault>(e));
        CHECK(std::get<vcpu::nested_page_fault>(e).exec);
    }
    SUBCASE("pseudoinstructions: implicit VS-stage page-table accesses") {
        const std::uint64_t pseudo[] = {0x2000, 0x3000, 0x2020, 0x3020};
        for (auto p : pseudo) {
            CAPTURE(p);
            auto t = guest_page_fault(ec::load_guest_page_fault, 0x80001000, p, &f);
            const auto e = rvtest::decode(t);
            REQUIRE(std::holds_alternative<vcpu::nested_page_fault>(e));
            CHECK(std::get<vcpu::nested_page_fault>(e).size == ((p & 0x1000) ? 8u : 4u));
        }
    }
    SUBCASE("a transformed AMO, an FP load, an HLV: not a plain load/store") {
        const std::uint32_t amoadd_w = (11u << 20) | (12u << 15) | (2u << 12) | (10u << 7) | 0x2fu;
        const std::uint32_t flw = (2u << 12) | (1u << 7) | 0x07u;
        const std::uint32_t hlv_d = (0x36cu << 20) | (4u << 12) | (10u << 7) | 0x73u;
        for (auto i : {amoadd_w, flw, hlv_d}) {
            CAPTURE(i);
            auto t = guest_page_fault(ec::store_guest_page_fault, 0x10000000, i, &f);
            CHECK(std::holds_alternative<vcpu::nested_page_fault>(rvtest::decode(t)));
        }
        // A fetched compressed FP load (c.fld) likewise.
        auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000000, 0, &f, 0x2188);
        CHECK(std::holds_alternative<vcpu::nested_page_fault>(rvtest::decode(t)));
    }
}

TEST_CASE("riscv64 trap: hostile htinst and records decode to malformed_exit, once") {
    rv::hs_guest_frame f{};
    const std::uint64_t hostile[] = {0x2, 0x4000, 0xffffffff00002503ull, 0x3010};
    for (auto h : hostile) {
        CAPTURE(h);
        int calls = 0;
        auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000000, h, &f);
        const auto e = rvtest::decode(t, &calls);
        CHECK(calls == 1);
        REQUIRE(std::holds_alternative<vcpu::malformed_exit>(e));
        CHECK(std::get<vcpu::malformed_exit>(e).reason == vcpu::malformed_exit::why::encoding);
    }
    // A store instruction reported with a *load* guest-page fault.
    auto t = guest_page_fault(ec::load_guest_page_fault, 0x10000000, rvtest::store(2, 5), &f);
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(t)));
    // No frame to take store data from / put load data into.
    t = guest_page_fault(ec::store_guest_page_fault, 0x10000000, rvtest::store(2, 5), nullptr);
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(t)));
    rv::hs_trap ecall{};
    ecall.scause = ec::ecall_vs;
    CHECK(std::holds_alternative<vcpu::malformed_exit>(rvtest::decode(ecall)));
}

TEST_CASE("riscv64 trap: interrupts, other exceptions and reserved causes") {
    rv::hs_trap t{};
    for (std::uint64_t code : {1, 2, 5, 6, 9, 10, 12, 13}) {
        CAPTURE(code);
        t.scause = rv::scause_interrupt | code;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<vcpu::external_interrupt>(e));
        CHECK(std::get<vcpu::external_interrupt>(e).vector == code);
    }
    t.scause = rv::scause_interrupt | 3; // M-mode software: never seen in HS-mode
    CHECK(std::holds_alternative<vcpu::unknown>(rvtest::decode(t)));
    for (std::uint64_t code : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 18, 19}) {
        CAPTURE(code);
        t.scause = code;
        t.stval = 0x1234;
        t.sepc = 0x80000010;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::guest_exception>(e));
        CHECK(std::get<rv::guest_exception>(e).code == code);
        CHECK(std::get<rv::guest_exception>(e).tval == 0x1234);
        CHECK(std::get<rv::guest_exception>(e).pc == 0x80000010);
    }
    for (std::uint64_t code : {14ull, 16ull, 17ull, 24ull, 63ull, 0x7fffffffffffffffull}) {
        CAPTURE(code);
        t.scause = code;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<vcpu::unknown>(e));
        CHECK(std::get<vcpu::unknown>(e).raw == code);
    }
}

TEST_CASE("riscv64 trap: virtual instructions — CSR accesses, WFI, anything else") {
    rv::hs_guest_frame f{};
    rv::hs_trap t{};
    t.scause = ec::virtual_insn;
    t.sepc = 0x80000100;
    t.frame = &f;
    SUBCASE("csrr a0, hstatus: a read answered into a0") {
        t.stval = rvtest::csr(2, 0x600, 10, 0);
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::csr_access>(e));
        const auto& c = std::get<rv::csr_access>(e);
        CHECK(c.id == 0x600);
        CHECK(c.is_read());
        CHECK(c.write_mask == 0);
        CHECK(c.gpr == 10);
        c.answer(0x200000000ull);
        CHECK(f.x[10] == 0x200000000ull);
    }
    SUBCASE("csrw hstatus, a1 (rd = x0): write, old value dropped") {
        f.x[11] = 0xabc;
        t.stval = rvtest::csr(1, 0x600, 0, 11);
        const auto c = std::get<rv::csr_access>(rvtest::decode(t));
        CHECK_FALSE(c.is_read());
        CHECK(c.write_mask == ~0ull);
        CHECK(c.updated(0x5) == 0xabc);
        c.answer(1); // ignored: rd is x0
        CHECK(f.x[0] == 0);
    }
    SUBCASE("csrrsi / csrrci with an immediate, fetched by the HAL (stval = 0)") {
        t.stval = 0;
        t.fetched_insn = rvtest::csr(6, 0x144, 5, 0x6);
        auto c = std::get<rv::csr_access>(rvtest::decode(t));
        CHECK(c.updated(0x1) == 0x7);
        t.fetched_insn = rvtest::csr(7, 0x144, 5, 0x6);
        c = std::get<rv::csr_access>(rvtest::decode(t));
        CHECK(c.updated(0xf) == 0x9);
    }
    SUBCASE("wfi: halt") {
        t.stval = rv::insn::wfi;
        CHECK(std::holds_alternative<vcpu::halt>(rvtest::decode(t)));
    }
    SUBCASE("another instruction, or none at all") {
        t.stval = 0x12000073; // sfence.vma in VS-mode with hstatus.VTVM
        auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::virtual_instruction>(e));
        CHECK(std::get<rv::virtual_instruction>(e).insn == 0x12000073);
        CHECK(std::get<rv::virtual_instruction>(e).pc == 0x80000100);
        t.stval = 0;
        e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::virtual_instruction>(e));
        CHECK(std::get<rv::virtual_instruction>(e).insn == 0);
    }
}

TEST_CASE("riscv64 trap: SBI calls from the trap frame answer into a0/a1") {
    rv::hs_guest_frame f{};
    rv::hs_trap t{};
    t.scause = ec::ecall_vs;
    t.frame = &f;
    SUBCASE("HSM hart_start becomes cpu_up") {
        f.x[17] = rv::sbi::ext::hsm;
        f.x[16] = rv::sbi::hsm_fid::hart_start;
        f.x[10] = 1;
        f.x[11] = 0x80200000;
        f.x[12] = 0x82200000;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<vcpu::cpu_up>(e));
        const auto& u = std::get<vcpu::cpu_up>(e);
        CHECK(u.target == 1);
        CHECK(u.entry == 0x80200000);
        CHECK(u.context == 0x82200000);
        u.answer(0);
        CHECK(f.x[10] == 0);
    }
    SUBCASE("an unknown extension: sbi_call, answered as (error, value)") {
        f.x[17] = 0x0a000000;
        f.x[16] = 7;
        for (unsigned i = 0; i < 6; ++i) f.x[10 + i] = 100 + i;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::sbi_call>(e));
        const auto& c = std::get<rv::sbi_call>(e);
        CHECK(c.extension() == 0x0a000000);
        CHECK(c.function == 7);
        CHECK(c.args[5] == 105);
        c.answer(rv::sbi::as_reg(rv::sbi::error::not_supported), 9);
        CHECK(f.x[10] == rv::sbi::as_reg(-2));
        CHECK(f.x[11] == 9);
    }
    SUBCASE("legacy putchar answers only a0") {
        f.x[17] = rv::sbi::ext::legacy_console_putchar;
        f.x[10] = 'Z';
        f.x[11] = 0x5555;
        const auto e = rvtest::decode(t);
        REQUIRE(std::holds_alternative<rv::console_write>(e));
        const auto& w = std::get<rv::console_write>(e);
        CHECK(w.byte == 'Z');
        CHECK(w.legacy);
        w.done();
        CHECK(f.x[10] == 0);
        CHECK(f.x[11] == 0x5555);
    }
}
