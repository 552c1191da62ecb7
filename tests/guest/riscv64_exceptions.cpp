// RISC-V exceptions in guest code: an illegal instruction and a load page fault come back typed
// (cause, scause, sepc, stval) when the guest has no handler; a handler the guest installs for a
// cause runs instead and may resume.
#include "xarch_support.hpp"

#include <arch/riscv64/exits.hpp>

#include <cstdint>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::riscv64;
namespace code = vcpu::riscv64::exception_code;

} // namespace

// A 4-byte illegal instruction (`unimp` without RVC: csrrw x0, cycle, x0) as the very first
// instruction, so the faulting pc is this function's address.
extern "C" void vcpu_test_illegal();
asm(R"(
    .pushsection .text.vcpu_test_illegal,"ax",%progbits
    .p2align 2
    .type vcpu_test_illegal, %function
vcpu_test_illegal:
    .option push
    .option norvc
    unimp
    .option pop
    ret
    .size vcpu_test_illegal, . - vcpu_test_illegal
    .popsection
)");

namespace {

VCPU_GUEST_CODE void illegal_instruction() {
    ucall::sync(u64{1});
    vcpu_test_illegal();
    ucall::sync(u64{2}); // not reached: no handler
}

constexpr u64 unmapped = u64{1} << 45; // outside the identity map and the executable
VCPU_GUEST_CODE void page_fault() { (void)*reinterpret_cast<volatile const u64*>(unmapped); }

inline constinit u64 illegal_seen = 0; // in the guest's copy of this executable's data
VCPU_GUEST_CODE void skip_illegal(gx::exception_frame& f) {
    ++illegal_seen;
    f.sepc += 4; // past the 4-byte instruction
}
VCPU_GUEST_CODE void handled_illegal() {
    gx::set_handler(code::illegal_insn, &skip_illegal);
    vcpu_test_illegal();
    vcpu_test_illegal();
    ucall::sync(illegal_seen, VCPU_GUEST_READ_CSR(satp) >> 60);
    gx::set_handler(code::illegal_insn, nullptr);
    vcpu_test_illegal(); // back to the default: reported to the host
}

template <class F>
auto run_guest(void (*fn)(), F&& on_sync) {
    auto m = guest_test::start(fn);
    auto r = vcpu::guest::run(*m->cpu, *m->space, std::forward<F>(on_sync), guest_test::fail_on_guest_assert());
    return std::pair{std::move(m), std::move(r)};
}

} // namespace

TEST_CASE("guest riscv64: an illegal instruction without a handler comes back as unhandled_exception") {
    std::vector<u64> syncs;
    auto out = run_guest(&illegal_instruction, [&](vcpu::guest::sync& s) { syncs.push_back(s[0]); });
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == code::illegal_insn);
    CHECK(e->error_code == code::illegal_insn);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&vcpu_test_illegal));
    CHECK(syncs == std::vector<u64>{1});
}

TEST_CASE("guest riscv64: a load page fault reports scause and stval") {
    auto out = run_guest(&page_fault, [](vcpu::guest::sync&) {});
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == code::load_page_fault);
    CHECK(e->address == unmapped);
}

TEST_CASE("guest riscv64: a handler installed for a cause runs and resumes the guest") {
    std::vector<vcpu::guest::sync> syncs;
    auto out = run_guest(&handled_illegal, [&](vcpu::guest::sync& s) { syncs.push_back(s); });
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(syncs.size() == 1);
    CHECK(syncs[0][0] == 2); // two illegal instructions skipped
    CHECK(syncs[0][1] == 9); // satp.MODE: Sv48
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&vcpu_test_illegal));
}
