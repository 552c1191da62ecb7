// The pending-I/O contract (tests/kvm/pending_io.cpp) written as guest code: a port IN or an MMIO
// read that the host handler answers while it also writes RBX; the guest checks both values with
// VCPU_GUEST_ASSERT, so a lost answer or register write fails at the guest's line.
#include "support.hpp"

#include <arch/x86_64/registers.hpp>

#include <cstdint>
#include <variant>

namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;

constexpr std::uint16_t port = 0x10;
constexpr u64 mmio_gpa = 0xd0000000; // identity-mapped, no memory slot: an MMIO exit
constexpr u32 answer = 0xa1b2c3d4;
constexpr u64 rbx_value = 0x1234'5678'9abc;

// ---- guest code -----------------------------------------------------------------------------

/// `in eax, dx` (or `mov eax, [mmio]`) with RBX zeroed just before; RBX read right after.
VCPU_GUEST_CODE void pending_io(int use_mmio) {
    u32 value = 0;
    u64 rbx = 0;
    if (use_mmio != 0)
        asm volatile("xor %%ebx, %%ebx\n\t"
                     "movl (%2), %0\n\t"
                     "mov %%rbx, %1"
                     : "=&a"(value), "=r"(rbx)
                     : "r"(mmio_gpa)
                     : "rbx", "memory");
    else
        asm volatile("xor %%ebx, %%ebx\n\t"
                     "inl %w2, %0\n\t"
                     "mov %%rbx, %1"
                     : "=&a"(value), "=r"(rbx)
                     : "d"(port)
                     : "rbx", "memory");
    VCPU_GUEST_ASSERT(value == answer, value);
    VCPU_GUEST_ASSERT(rbx == rbx_value, rbx);
    ucall::sync(value, rbx);
}

} // namespace

TEST_CASE("guest x86-64: a handler's answer and its RBX write both reach the guest") {
    for (const bool mmio : {false, true}) {
        for (const bool rbx_first : {false, true}) {
            CAPTURE(mmio);
            CAPTURE(rbx_first);
            auto m = guest_test::make_machine();
            REQUIRE(m);
            auto space = vcpu::guest::x86_64::space::load(m->memory, reinterpret_cast<const void*>(&pending_io));
            REQUIRE_MESSAGE(space, space.err().message());
            auto& cpu = m->vcpus[0];
            REQUIRE(space->enter(cpu, vcpu::guest::x86_64::call(&pending_io, mmio ? 1 : 0)));
            unsigned answered = 0;
            auto answer_with_rbx = [&](auto&& set) {
                if (rbx_first) CHECK(cpu.set(vcpu::x86_64::rbx, rbx_value));
                set();
                if (!rbx_first) CHECK(cpu.set(vcpu::x86_64::rbx, rbx_value));
                ++answered;
            };
            u64 synced = 0;
            auto r = vcpu::guest::run(
                cpu, *space,
                [&](vcpu::port_io& io) {
                    REQUIRE(io.port == port);
                    REQUIRE(io.is_in());
                    answer_with_rbx([&] { io.set(answer); });
                },
                [&](vcpu::mmio& mm) {
                    REQUIRE(mm.address == mmio_gpa);
                    REQUIRE(mm.is_read());
                    answer_with_rbx([&] { mm.set(answer); });
                },
                [&](vcpu::guest::sync& s) { synced = s[1]; }, guest_test::fail_on_guest_assert(),
                [](vcpu::guest::done) { return vcpu::action::stop; });
            REQUIRE_MESSAGE(r, r.err().message());
            CHECK(std::holds_alternative<vcpu::guest::done>(*r));
            CHECK(answered == 1);
            CHECK(synced == rbx_value);
        }
    }
}
