// Exceptions in guest code: #UD and #PF come back typed (vector, error code, RIP, CR2) when the
// guest has no handler; a handler the guest installs for a vector runs instead and may resume.
#include "support.hpp"

#include <cstdint>
#include <variant>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::x86_64;

// ---- guest code -----------------------------------------------------------------------------

/// UD2 at its very first byte, so the faulting RIP is this function's address.
[[gnu::naked]] void raise_ud() { asm("ud2\n ret"); }

VCPU_GUEST_CODE void undefined_opcode() {
    ucall::sync(u64{1});
    raise_ud();
    ucall::sync(u64{2}); // not reached: #UD has no handler
}

constexpr u64 unmapped = u64{1} << 45; // outside the identity map and the executable
VCPU_GUEST_CODE void page_fault() {
    (void)*reinterpret_cast<volatile const u64*>(unmapped);
}

inline constinit u64 ud_seen = 0; // in the guest's copy of this executable's data
VCPU_GUEST_CODE void skip_ud(gx::exception_frame& f) {
    ++ud_seen;
    f.rip += 2; // past UD2
}
VCPU_GUEST_CODE void handled_ud() {
    gx::set_handler(6, &skip_ud);
    raise_ud();
    raise_ud();
    ucall::sync(ud_seen);
    gx::set_handler(6, nullptr);
    raise_ud(); // back to the default: reported to the host
}

/// Starts `fn` in a fresh machine and runs it until an exception, a sync handled by `on_sync`, or
/// anything else comes back.
template <class F>
auto run_guest(vcpu::result<vcpu::kvm::x86_64_machine>& m, void (*fn)(), F&& on_sync) {
    auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(fn));
    REQUIRE_MESSAGE(space, space.err().message());
    REQUIRE(space->enter(m->vcpus[0], vcpu::guest::x86_64::call(fn)));
    return vcpu::guest::run(m->vcpus[0], *space, std::forward<F>(on_sync), guest_test::fail_on_guest_assert());
}

} // namespace

TEST_CASE("guest x86-64: #UD without a handler comes back as unhandled_exception with vector and RIP") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    std::vector<u64> syncs;
    auto r = run_guest(m, &undefined_opcode, [&](vcpu::guest::sync& s) { syncs.push_back(s[0]); });
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == 6);
    CHECK(e->name() == "#UD");
    CHECK(e->error_code == 0);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&raise_ud));
    CHECK(syncs == std::vector<u64>{1});
}

TEST_CASE("guest x86-64: #PF comes back with its error code and CR2") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    auto r = run_guest(m, &page_fault, [](vcpu::guest::sync&) {});
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == 14);
    CHECK(e->address == unmapped);
    CHECK((e->error_code & 1) == 0); // not present (SDM Vol. 3A §4.7: P = 0)
    CHECK((e->error_code & 2) == 0); // a read
}

TEST_CASE("guest x86-64: a handler the guest installs takes the vector and resumes") {
    auto m = guest_test::make_machine();
    REQUIRE(m);
    std::vector<u64> syncs;
    auto r = run_guest(m, &handled_ud, [&](vcpu::guest::sync& s) { syncs.push_back(s[0]); });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(syncs == std::vector<u64>{2}); // the handler ran twice, in the guest
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == 6);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&raise_ud));
}
