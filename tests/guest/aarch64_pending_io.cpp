// The pending-I/O contract (tests/kvm/pending_io.cpp) written as aarch64 guest code: an MMIO read
// that the host handler answers while it also writes X19 (before or after the answer); the guest
// checks both values with VCPU_GUEST_ASSERT, so a lost answer or register write fails at the
// guest's line.
#include "xarch_support.hpp"

#include <arch/aarch64/registers.hpp>

#include <cstdint>
#include <variant>

namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;

constexpr u64 mmio_gpa = 0x1000'0000; // identity-mapped device memory, no memory slot: an MMIO exit
constexpr u32 answer = 0xa1b2c3d4;
constexpr u64 reg_value = 0x1234'5678'9abc;

// ---- guest code -----------------------------------------------------------------------------

/// A 32-bit load from the device with X19 zeroed just before and read right after.
VCPU_GUEST_CODE void pending_read() {
    u32 value = 0;
    u64 reg = 0;
    asm volatile("mov x19, xzr\n\t"
                 "ldr %w0, [%2]\n\t"
                 "mov %1, x19"
                 : "=&r"(value), "=&r"(reg)
                 : "r"(mmio_gpa)
                 : "x19", "memory");
    VCPU_GUEST_ASSERT(value == answer, value);
    VCPU_GUEST_ASSERT(reg == reg_value, reg);
    ucall::sync(value, reg);
}

} // namespace

TEST_CASE("guest aarch64: a handler's MMIO answer and its X19 write both reach the guest") {
    for (const bool reg_first : {false, true}) {
        CAPTURE(reg_first);
        auto m = guest_test::start(&pending_read);
        auto& cpu = *m->cpu;
        unsigned answered = 0;
        vcpu::guest::sync synced;
        auto r = vcpu::guest::run(
            cpu, *m->space,
            [&](vcpu::mmio& mm) {
                REQUIRE(mm.address == mmio_gpa);
                REQUIRE(mm.is_read());
                REQUIRE(mm.size == 4);
                if (reg_first) CHECK(cpu.set(vcpu::aarch64::xregs[19], reg_value));
                mm.set(answer);
                if (!reg_first) CHECK(cpu.set(vcpu::aarch64::xregs[19], reg_value));
                ++answered;
            },
            [&](vcpu::guest::sync& s) { synced = s; }, guest_test::fail_on_guest_assert(),
            [](vcpu::guest::done) { return vcpu::action::stop; });
        REQUIRE_MESSAGE(r, r.err().message());
        CHECK(std::holds_alternative<vcpu::guest::done>(*r));
        CHECK(answered == 1);
        CHECK(synced[0] == answer);
        CHECK(synced[1] == reg_value);
    }
}
