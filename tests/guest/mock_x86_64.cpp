// Guest code on the mock HAL: the loader's boot state and page tables checked without /dev/kvm, and
// ucall exits scripted (records written into guest memory, one OUT each) and decoded through
// vcpu::guest::run — including hostile records, which must come back as bad_ucall.
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/guest/x86_64_loader.hpp>
#include <vcpu/memory.hpp>
#include <kvm/mock.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace gx = vcpu::guest::x86_64;
namespace ucall = vcpu::guest::ucall;

VCPU_GUEST_CODE int guest_entry(int a, long b) { return a + static_cast<int>(b); }

/// 64 MiB of host memory as guest RAM at GPA 0.
struct ram {
    std::vector<std::byte> bytes = std::vector<std::byte>(std::size_t{64} << 20);
    vcpu::guest_memory mem;
    ram() { REQUIRE(mem.add(vcpu::guest_region{0, bytes, false})); }
};

/// The guest physical address `va` maps to, walking the tables the loader built (4 KiB or 2 MiB).
u64 walk(const vcpu::guest_memory& mem, u64 cr3, u64 va) {
    auto entry = [&](u64 table, u64 i) {
        u64 e = 0;
        REQUIRE(mem.read(table + 8 * i, std::as_writable_bytes(std::span(&e, 1))));
        REQUIRE((e & 1) != 0);
        return e;
    };
    const u64 pdpte = entry(cr3 & ~u64{0xfff}, (va >> 39) & 511);
    const u64 pde = entry(pdpte & 0x000ffffffffff000ULL, (va >> 30) & 511);
    const u64 pdentry = entry(pde & 0x000ffffffffff000ULL, (va >> 21) & 511);
    if ((pdentry & 0x80) != 0) return (pdentry & 0x000fffffffe00000ULL) | (va & 0x1fffff);
    const u64 pte = entry(pdentry & 0x000ffffffffff000ULL, (va >> 12) & 511);
    return (pte & 0x000ffffffffff000ULL) | (va & 0xfff);
}

/// Writes the record `r` at `gpa`.
void put(vcpu::guest_memory& mem, u64 gpa, const vcpu::guest::ucall_record& r) {
    REQUIRE(mem.write(gpa, std::as_bytes(std::span(&r, 1))));
}

} // namespace

TEST_CASE("guest x86-64 mock: the loader's long-mode state, SysV arguments and page tables") {
    ram r;
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry));
    REQUIRE_MESSAGE(space, space.err().message());
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(vcpu::kvm::mock::script{});
    REQUIRE(space->enter(cpu, gx::call(&guest_entry, 7, -3L)));

    auto& g = cpu.hal().block<vcpu::x86_64::regs_block>();
    CHECK(g.rip == reinterpret_cast<std::uintptr_t>(&guest_entry));
    CHECK(g.rdi == 7);
    CHECK(g.rsi == static_cast<u64>(-3L));
    CHECK(g.rsp == space->stack_top() - 24);
    CHECK((g.rsp + 8) % 16 == 0); // SysV: RSP + 8 aligned at entry
    u64 ret = 0;
    REQUIRE(r.mem.read(g.rsp, std::as_writable_bytes(std::span(&ret, 1))));
    CHECK(ret == reinterpret_cast<std::uintptr_t>(&gx::detail::returned));

    auto& s = cpu.hal().block<vcpu::x86_64::sregs_block>();
    CHECK(s.cs.l == 1);
    CHECK(s.cs.selector == gx::selector::code);
    CHECK(vcpu::x86_64::cr0_bits::pg.test(s.cr0));
    CHECK(vcpu::x86_64::cr4_bits::osfxsr.test(s.cr4));
    CHECK(vcpu::x86_64::cr4_bits::pae.test(s.cr4));
    CHECK((s.efer & (u64{1} << vcpu::x86_64::efer_bits::lma.lsb)) != 0);
    CHECK(s.idt.limit == 4095);
    CHECK(s.tr.selector == gx::selector::tss);
    CHECK(s.cr3 == space->page_table_root());

    // The entry's code is at the same virtual address in the guest, backed by a copy of its bytes.
    const u64 va = reinterpret_cast<std::uintptr_t>(&guest_entry);
    const u64 gpa = walk(r.mem, s.cr3, va);
    CHECK(gpa == space->layout().image + (va - space->image_va()));
    CHECK(std::memcmp(r.mem.at(gpa, 16).data(), reinterpret_cast<const void*>(va), 16) == 0);
    // Guest RAM is identity-mapped.
    CHECK(walk(r.mem, s.cr3, 0x345678) == 0x345678);
    CHECK(walk(r.mem, s.cr3, space->free_begin()) == space->free_begin());
}

TEST_CASE("guest x86-64 mock: scripted ucalls decode to typed exits; hostile records to bad_ucall") {
    ram r;
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry));
    REQUIRE_MESSAGE(space, space.err().message());
    const u64 at = space->free_begin();
    // Records as guest code fills them; string pointers are this executable's, which the guest
    // sees at the same addresses.
    vcpu::guest::ucall_record rec{};
    ucall::fill(rec, vcpu::guest::ucall_kind::sync, nullptr, nullptr, 0, 1, -2, u64{3});
    put(r.mem, at, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::print, "%s=%04x %d%%|%-3u|", nullptr, 0, "v", 0xab, -7, 5u);
    put(r.mem, at + 0x100, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::assert_fail, "a == b", "guest.cpp", 42, 1, 2);
    put(r.mem, at + 0x200, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::exception, nullptr, nullptr, 0, u64{13}, u64{0x10}, u64{0x1234}, u64{0});
    put(r.mem, at + 0x300, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::print, "%d %d", nullptr, 0, 1); // one value short
    put(r.mem, at + 0x400, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::assert_fail, "x", nullptr, 0); // file 0: unmapped
    rec.file = u64{1} << 46;
    put(r.mem, at + 0x500, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::done, nullptr, nullptr, 0);
    rec.magic = 0;
    put(r.mem, at + 0x600, rec);
    ucall::fill(rec, vcpu::guest::ucall_kind::done, nullptr, nullptr, 0);
    put(r.mem, at + 0x700, rec);

    vcpu::kvm::mock::script sc;
    for (u64 off : {0x000, 0x100, 0x200, 0x300, 0x400, 0x500, 0x600})
        sc.io_out(vcpu::guest::ucall_port, 4, static_cast<std::uint32_t>(at + off));
    sc.io_out(0x10, 1, 0x41);                              // an ordinary port write
    sc.io_out(vcpu::guest::ucall_port, 4, 0xfffff000);     // a record outside guest RAM
    sc.io_out(vcpu::guest::ucall_port, 4, static_cast<std::uint32_t>(at + 0x700));
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(std::move(sc));

    std::vector<std::string> seen;
    auto res = vcpu::guest::run(
        cpu, *space,
        [&](vcpu::guest::sync& s) {
            CHECK(s.size() == 3);
            CHECK(s[0] == 1);
            CHECK(s[1] == static_cast<u64>(-2));
            CHECK(s[2] == 3);
            seen.push_back("sync");
        },
        [&](vcpu::guest::print& p) { seen.push_back("print " + std::string(p.text())); },
        [&](vcpu::guest::assert_fail& a) {
            CHECK(a.expression == "a == b");
            CHECK(a.file == "guest.cpp");
            CHECK(a.line == 42);
            CHECK(a.count == 2);
            seen.push_back("assert");
        },
        [&](vcpu::guest::unhandled_exception& e) {
            CHECK(e.name() == "#GP");
            CHECK(e.error_code == 0x10);
            CHECK(e.pc == 0x1234);
            seen.push_back("exception");
        },
        [&](vcpu::guest::bad_ucall& b) { seen.push_back("bad " + std::string(b.describe())); },
        [&](vcpu::port_io& io) { seen.push_back("port " + std::to_string(io.port)); },
        [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(res, res.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*res));
    const std::vector<std::string> want{
        "sync",
        "print v=00ab -7%|5  |",
        "assert",
        "exception",
        "bad print format is malformed or needs more values than were sent",
        "bad ucall string is outside guest memory or not NUL-terminated",
        "bad ucall record has no magic",
        "port 16",
        "bad ucall record is not in mapped guest memory",
    };
    CHECK(seen == want);
}

TEST_CASE("guest x86-64 mock: an unhandled ucall exit comes back from run, typed") {
    ram r;
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry));
    REQUIRE_MESSAGE(space, space.err().message());
    vcpu::guest::ucall_record rec{};
    ucall::fill(rec, vcpu::guest::ucall_kind::sync, nullptr, nullptr, 0, u64{99});
    put(r.mem, space->free_begin(), rec);
    vcpu::kvm::mock::script sc;
    sc.io_out(vcpu::guest::ucall_port, 4, static_cast<std::uint32_t>(space->free_begin()));
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(std::move(sc));
    // No sync handler: the sync is in the returned variant.
    auto res = vcpu::guest::run(cpu, *space, [](vcpu::guest::done) {});
    REQUIRE(res);
    const auto* s = std::get_if<vcpu::guest::sync>(&*res);
    REQUIRE(s != nullptr);
    CHECK((*s)[0] == 99);
}

TEST_CASE("guest x86-64 mock: a sync of up to six values comes in registers") {
    ram r;
    auto space = gx::space::load(r.mem, reinterpret_cast<const void*>(&guest_entry));
    REQUIRE_MESSAGE(space, space.err().message());
    vcpu::kvm::mock::script sc;
    sc.io_out(vcpu::guest::ucall_sync_port, 4, 6);
    sc.io_out(vcpu::guest::ucall_sync_port, 4, 7); // more than six: refused
    sc.io_out(vcpu::guest::ucall_sync_port, 1, 1); // not a 4-byte OUT: an ordinary port
    auto cpu = vcpu::kvm::mock::make_vcpu<vcpu::arch::x86_64>(std::move(sc));
    auto& g = cpu.hal().block<vcpu::x86_64::regs_block>();
    g.rdi = 1;
    g.rsi = 2;
    g.r8 = 3;
    g.r9 = 4;
    g.r10 = 5;
    g.rbx = 6;
    g.r11 = 77; // not a value register
    g.rdx = 99; // the port register, never a value
    std::vector<u64> got;
    std::string bad;
    auto res = vcpu::guest::run(
        cpu, *space, [&](vcpu::guest::sync& s) { got.assign(s.values.begin(), s.values.begin() + s.size()); },
        [&](vcpu::guest::bad_ucall& b) { bad = b.describe(); },
        [](vcpu::port_io&) { return vcpu::action::stop; });
    REQUIRE(res);
    CHECK(got == std::vector<u64>{1, 2, 3, 4, 5, 6});
    CHECK(bad == "register ucall has a bad count or its registers could not be read");
    const auto* io = std::get_if<vcpu::port_io>(&*res);
    REQUIRE(io != nullptr);
    CHECK(io->port == vcpu::guest::ucall_sync_port);
}
