// The pending-I/O contract (tests/kvm/pending_io.cpp) written as riscv64 guest code: an MMIO read
// that the host handler answers while it also writes s2 (before or after the answer); the guest
// checks both values with VCPU_GUEST_ASSERT, so a lost answer or register write fails at the
// guest's line.
#include "xarch_support.hpp"

#include <arch/riscv64/registers.hpp>

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

/// A 32-bit load from the device with s2 zeroed just before and read right after.
VCPU_GUEST_CODE void pending_read() {
    u32 value = 0;
    u64 reg = 0;
    asm volatile("li s2, 0\n\t"
                 "lw %0, 0(%2)\n\t"
                 "mv %1, s2"
                 : "=&r"(value), "=&r"(reg)
                 : "r"(mmio_gpa)
                 : "s2", "memory");
    VCPU_GUEST_ASSERT(value == answer, value);
    VCPU_GUEST_ASSERT(reg == reg_value, reg);
    ucall::sync(value, reg);
}

} // namespace

TEST_CASE("guest riscv64: a handler's MMIO answer and its s2 write both reach the guest") {
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
                if (reg_first) CHECK(cpu.set(vcpu::riscv64::s2, reg_value));
                mm.set(answer);
                if (!reg_first) CHECK(cpu.set(vcpu::riscv64::s2, reg_value));
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
