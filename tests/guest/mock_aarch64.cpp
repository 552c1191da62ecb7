// AArch64 guest code on the mock HAL, on any host: the loader's EL1 boot state and stage-1 tables
// checked without /dev/kvm, and ucall exits scripted (MMIO stores to the ucall page: a sync value
// itself, or a record written into guest memory) and decoded through vcpu::guest::run — including
// a hostile record, which must come back as bad_ucall — plus the pending MMIO read with a GPR write.
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/registers.hpp>
#include <kvm/mock.hpp>
#include <vcpu/guest/aarch64.hpp>
#include <vcpu/guest/aarch64_loader.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/memory.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace gx = vcpu::guest::aarch64;
namespace ucall = vcpu::guest::ucall;
namespace a64 = vcpu::aarch64;

// Never runs here (the mock executes nothing): the loader only needs its address.
VCPU_GUEST_CODE int guest_entry(int a, long b) { return a + static_cast<int>(b); }

constexpr u64 ram_base = 0x4000'0000;
/// 64 MiB of host memory as guest RAM at 1 GiB.
struct ram {
    std::vector<std::byte> bytes = std::vector<std::byte>(std::size_t{64} << 20);
    vcpu::guest_memory mem;
    ram() { REQUIRE(mem.add(vcpu::guest_region{ram_base, bytes, false})); }
};

void put(vcpu::guest_memory& mem, u64 gpa, const vcpu::guest::ucall_record& r) {
    REQUIRE(mem.write(gpa, std::as_bytes(std::span(&r, 1))));
}

template <class Cpu, class R>
u64 reg(Cpu& cpu, const R& r) {
    auto v = cpu.get(r);
    REQUIRE(v);
    return static_cast<u64>(*v);
}

} // namespace

TEST_CASE("guest aarch64 mock: the loader's EL1 state, AAPCS64 arguments and stage-1 tables") {
    ram r;
    const gx::runtime_symbols sym{0x4123'4800, 0x4123'4900};
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry), {}, sym);
    REQUIRE_MESSAGE(space, space.err().message());
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::aarch64>(vcpu::kvm::mock::script{});
    REQUIRE(space->enter(cpu, vcpu::guest::call(&guest_entry, 7, -3L)));

    CHECK(reg(cpu, a64::pc) == reinterpret_cast<std::uintptr_t>(&guest_entry));
    CHECK(reg(cpu, a64::x0) == 7);
    CHECK(reg(cpu, a64::x1) == static_cast<u64>(-3L));
    CHECK(reg(cpu, a64::x2) == 0);
    CHECK(reg(cpu, a64::lr) == sym.returned);
    CHECK(reg(cpu, a64::vbar_el1) == sym.vectors);
    CHECK(reg(cpu, a64::sp_el1) == space->stack_top());
    CHECK(space->stack_top() % 16 == 0);
    CHECK(reg(cpu, a64::pstate) == 0x3c5); // EL1h, DAIF masked
    CHECK((reg(cpu, a64::sctlr_el1) & 1) == 1); // MMU on
    CHECK(reg(cpu, a64::ttbr0_el1) == space->page_table_root());
    CHECK(reg(cpu, a64::tcr_el1) == gx::el1::tcr);
    CHECK(reg(cpu, a64::mair_el1) == gx::el1::mair);

    // The entry point maps to its page in the image copy, which holds the host's bytes.
    const u64 entry = reinterpret_cast<std::uintptr_t>(&guest_entry);
    const u64 gpa = space->translate(entry);
    CHECK(gpa == space->layout().image + (entry - space->image_va()));
    std::array<std::byte, 16> copy{};
    REQUIRE(r.mem.read(gpa, copy));
    CHECK(std::memcmp(copy.data(), reinterpret_cast<const void*>(entry), copy.size()) == 0);
    // RAM and device memory are identity-mapped; nothing above 4 GiB but the executable.
    CHECK(space->translate(space->free_begin() + 0x1234) == space->free_begin() + 0x1234);
    CHECK(space->translate(gx::ucall_mmio) == gx::ucall_mmio);
    CHECK(space->translate(u64{1} << 45) == 0);
}

TEST_CASE("guest aarch64 mock: scripted ucalls come back typed through guest::run") {
    ram r;
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry));
    REQUIRE_MESSAGE(space, space.err().message());
    const u64 rec = space->free_begin();
    static const char fmt[] = "n=%d s=%s";
    static const char arg[] = "guest";
    vcpu::guest::ucall_record pr{}, as{}, ex{}, bad{}, many{}, dn{};
    ucall::fill(pr, vcpu::guest::ucall_kind::print, fmt, nullptr, 0, -4, arg);
    ucall::fill(as, vcpu::guest::ucall_kind::assert_fail, "x == 1", __FILE__, 99, u64{2});
    ucall::fill(ex, vcpu::guest::ucall_kind::exception, nullptr, nullptr, 0, u64{gx::slot::sync},
                u64{0x0200'0000}, u64{0x40'1000}, u64{0});
    ucall::fill(many, vcpu::guest::ucall_kind::sync, nullptr, nullptr, 0, 1, 2, 3, 4, 5, 6, 7, 8);
    ucall::fill(dn, vcpu::guest::ucall_kind::done, nullptr, nullptr, 0);
    bad = many;
    bad.magic = 0;
    const vcpu::guest::ucall_record* records[] = {&pr, &as, &ex, &bad, &many, &dn};
    vcpu::kvm::mock::script s;
    s.mmio_write(gx::ucall_sync_mmio, 8, 42).mmio_write(gx::ucall_sync0_mmio, 8, 0).mmio_write(0x1000'0000, 4, 5);
    for (std::size_t i = 0; i < 6; ++i) {
        put(r.mem, rec + 0x100 * i, *records[i]);
        s.mmio_write(gx::ucall_mmio, 8, rec + 0x100 * i);
    }
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::aarch64>(std::move(s));
    std::vector<vcpu::guest::sync> syncs;
    std::string printed;
    std::vector<std::string> seen;
    auto run = vcpu::guest::run(
        cpu, *space, [&](vcpu::guest::sync& y) { syncs.push_back(y); },
        [&](vcpu::guest::print& p) { printed = std::string(p.text()); },
        [&](vcpu::mmio& m) { seen.push_back("mmio " + std::to_string(m.address) + "=" + std::to_string(m.value())); },
        [&](vcpu::guest::assert_fail& a) {
            seen.push_back(std::string(a.expression) + "@" + std::to_string(a.line));
            CHECK(a.file == __FILE__);
        },
        [&](vcpu::guest::unhandled_exception& e) {
            CHECK(e.vector == gx::slot::sync);
            CHECK(gx::exception_class(e.error_code) == gx::ec::unknown + 0); // 0x02000000: EC 0, IL
            CHECK(e.pc == 0x40'1000);
            seen.push_back("exception");
        },
        [&](vcpu::guest::bad_ucall& b) {
            CHECK(b.reason == vcpu::guest::bad_ucall::why::magic);
            seen.push_back("bad");
        },
        [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(run, run.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*run));
    REQUIRE(syncs.size() == 3);
    CHECK(syncs[0].size() == 1);
    CHECK(syncs[0][0] == 42);
    CHECK(syncs[1].size() == 0);
    CHECK(syncs[2].size() == 8);
    CHECK(syncs[2][7] == 8);
    CHECK(printed == "n=-4 s=guest");
    CHECK(seen == std::vector<std::string>{"mmio 268435456=5", "x == 1@99", "exception", "bad"});
}

TEST_CASE("guest aarch64 mock: a pending MMIO read answered while the handler writes X19") {
    vcpu::kvm::mock::script s;
    s.mmio_read(0x1000'0000, 4).system_event(KVM_SYSTEM_EVENT_SHUTDOWN);
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::aarch64>(std::move(s));
    auto r = cpu.run([&](vcpu::mmio& m) {
        CHECK(cpu.set(a64::xregs[19], 0x1234));
        m.set(0xa1b2c3d4);
    });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::system_event>(*r));
    CHECK(reg(cpu, a64::xregs[19]) == 0x1234);
    bool answered = false;
    for (const auto& e : cpu.hal().events())
        if (e.what == vcpu::kvm::mock::event::kind::answer) answered = e.value == 0xa1b2c3d4;
    CHECK(answered);
}
