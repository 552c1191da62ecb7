// AArch64 exceptions in guest code: an undefined instruction and a translation fault come back
// typed (vector table slot, ESR_EL1, ELR_EL1, FAR_EL1) when the guest has no handler; a handler the
// guest installs for a vector slot runs instead and may resume.
#include "xarch_support.hpp"

#include <cstdint>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::aarch64;

// ---- guest code -----------------------------------------------------------------------------

} // namespace

// UDF #0 as the very first instruction, so the faulting PC is this function's address.
extern "C" void vcpu_test_udf();
asm(R"(
    .pushsection .text.vcpu_test_udf,"ax",%progbits
    .p2align 2
    .type vcpu_test_udf, %function
vcpu_test_udf:
    udf #0
    ret
    .size vcpu_test_udf, . - vcpu_test_udf
    .popsection
)");

namespace {

VCPU_GUEST_CODE void undefined_instruction() {
    ucall::sync(u64{1});
    vcpu_test_udf();
    ucall::sync(u64{2}); // not reached: no handler
}

constexpr u64 unmapped = u64{1} << 45; // outside the identity map and the executable
VCPU_GUEST_CODE void translation_fault() { (void)*reinterpret_cast<volatile const u64*>(unmapped); }

inline constinit u64 udf_seen = 0; // in the guest's copy of this executable's data
VCPU_GUEST_CODE void skip_udf(gx::exception_frame& f) {
    VCPU_GUEST_ASSERT(gx::exception_class(f.esr) == gx::ec::unknown, f.esr);
    ++udf_seen;
    f.elr += 4; // past UDF
}
VCPU_GUEST_CODE void handled_udf() {
    gx::set_handler(gx::slot::sync, &skip_udf);
    vcpu_test_udf();
    vcpu_test_udf();
    ucall::sync(udf_seen, gx::read_current_el(), gx::read_sctlr_el1() & 1);
    gx::set_handler(gx::slot::sync, nullptr);
    vcpu_test_udf(); // back to the default: reported to the host
}

template <class F>
auto run_guest(void (*fn)(), F&& on_sync) {
    auto m = guest_test::start(fn);
    auto r = vcpu::guest::run(*m->cpu, *m->space, std::forward<F>(on_sync), guest_test::fail_on_guest_assert());
    return std::pair{std::move(m), std::move(r)};
}

} // namespace

TEST_CASE("guest aarch64: an undefined instruction without a handler comes back as unhandled_exception") {
    std::vector<u64> syncs;
    auto out = run_guest(&undefined_instruction, [&](vcpu::guest::sync& s) { syncs.push_back(s[0]); });
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == gx::slot::sync);
    CHECK(gx::exception_class(e->error_code) == gx::ec::unknown);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&vcpu_test_udf));
    CHECK(syncs == std::vector<u64>{1});
}

TEST_CASE("guest aarch64: a translation fault reports ESR (data abort) and FAR") {
    auto out = run_guest(&translation_fault, [](vcpu::guest::sync&) {});
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->vector == gx::slot::sync);
    CHECK(gx::exception_class(e->error_code) == gx::ec::data_abort_same);
    CHECK(e->address == unmapped);
}

TEST_CASE("guest aarch64: a handler installed for a vector slot runs and resumes the guest") {
    std::vector<vcpu::guest::sync> syncs;
    auto out = run_guest(&handled_udf, [&](vcpu::guest::sync& s) { syncs.push_back(s); });
    auto& r = out.second;
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE(syncs.size() == 1);
    CHECK(syncs[0][0] == 2); // two UDFs skipped
    CHECK(syncs[0][1] == 1); // running at EL1
    CHECK(syncs[0][2] == 1); // SCTLR_EL1.M: the MMU is on
    const auto* e = std::get_if<vcpu::guest::unhandled_exception>(&*r);
    REQUIRE(e != nullptr);
    CHECK(e->pc == reinterpret_cast<std::uintptr_t>(&vcpu_test_udf));
}
