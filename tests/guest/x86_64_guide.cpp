// The program docs/guest-code.md walks through, compiled and run as guest.x86_64.guide.
// [guide-guest]
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/guest/x86_64_loader.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <variant>

namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::x86_64;

// Runs in the guest: sums `n` 32-bit words the host put at `words`, asks the host (port 0x20) for
// a bonus, and reports.
VCPU_GUEST_CODE void sum_words(const std::uint32_t* words, std::uint64_t n) {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) sum += words[i];
    ucall::print("summed %lu words", n);
    const std::uint32_t bonus = gx::inl(0x20);
    VCPU_GUEST_ASSERT(bonus == 1000, bonus);
    ucall::sync(sum + bonus);
} // returning is ucall::done()
// [guide-guest]

// [guide-host]
TEST_CASE("guide: sum words in the guest") {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = o.pit = false;
    auto m = vcpu::kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
    REQUIRE(m);

    auto space = gx::space::load(m->memory, reinterpret_cast<const void*>(&sum_words));
    REQUIRE_MESSAGE(space, space.err().message());
    const std::uint64_t words = space->free_begin(); // guest RAM the test may use
    for (std::uint32_t i = 0; i < 100; ++i) REQUIRE(m->memory.write_le(words + 4 * i, i));

    auto& cpu = m->vcpus[0];
    REQUIRE(space->enter(cpu, gx::call(&sum_words, words, 100)));
    std::uint64_t result = 0;
    std::string log;
    auto r = vcpu::guest::run(
        cpu, *space,
        [](vcpu::port_io& io) { if (io.port == 0x20 && io.is_in()) io.set(1000); },
        [&](vcpu::guest::print& p) { log += p.text(); },
        [&](vcpu::guest::sync& s) { result = s[0]; },
        [](vcpu::guest::assert_fail& a) {
            ADD_FAIL_CHECK_AT(a.file.data(), static_cast<int>(a.line), std::string(a.expression));
            return vcpu::action::stop;
        },
        [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(std::holds_alternative<vcpu::guest::done>(*r));
    CHECK(result == 4950 + 1000);
    CHECK(log == "summed 100 words");
}
// [guide-host]
