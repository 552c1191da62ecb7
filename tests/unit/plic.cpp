// The userspace RISC-V PLIC (vcpu/devices/plic.hpp): priorities, enables, thresholds, the
// claim/complete cycle of a level-triggered source, per-context outputs, bad accesses.
#include <doctest/doctest.h>

#include <vcpu/devices/plic.hpp>

#include <utility>
#include <vector>

namespace {
namespace m = vcpu::devices::plic_map;
struct recorder {
    std::vector<std::pair<unsigned, bool>>* log;
    void operator()(unsigned c, bool level) const { log->emplace_back(c, level); }
};
constexpr std::uint64_t enable(unsigned c) { return m::enable + m::enable_stride * c; }
constexpr std::uint64_t claim(unsigned c) { return m::context + m::context_stride * c + m::claim; }
constexpr std::uint64_t threshold(unsigned c) { return m::context + m::context_stride * c + m::threshold; }
} // namespace

TEST_CASE("plic: a level source through claim and complete on the enabled context") {
    std::vector<std::pair<unsigned, bool>> log;
    vcpu::devices::plic<recorder> p(2, 31, recorder{&log});
    p.write(4 * 10, 4, 1);          // priority of source 10
    p.write(enable(1), 4, 1u << 10); // context 1 takes it
    p.set_level(10, true);
    CHECK(p.is_pending(10));
    REQUIRE(log.size() == 1);
    CHECK(log[0] == std::pair<unsigned, bool>{1, true});
    CHECK(!p.output(0));
    CHECK(p.read(m::pending, 4) == 1u << 10);

    CHECK(p.read(claim(0), 4) == 0); // not enabled there
    CHECK(p.read(claim(1), 4) == 10);
    CHECK(!p.is_pending(10));
    CHECK(p.in_service(10));
    CHECK(log.back() == std::pair<unsigned, bool>{1, false});
    CHECK(p.read(claim(1), 4) == 0); // nothing else

    p.write(claim(1), 4, 10); // complete with the line still high: pends again
    CHECK(p.is_pending(10));
    CHECK(p.output(1));
    CHECK(p.read(claim(1), 4) == 10);
    p.set_level(10, false);
    p.write(claim(1), 4, 10);
    CHECK(!p.is_pending(10));
    CHECK(!p.output(1));
}

TEST_CASE("plic: priority 0 never interrupts; threshold masks; highest priority claimed first") {
    std::vector<std::pair<unsigned, bool>> log;
    vcpu::devices::plic<recorder> p(1, 31, recorder{&log});
    p.write(enable(0), 4, (1u << 3) | (1u << 5));
    p.set_level(3, true);
    CHECK(!p.output(0)); // priority 0
    p.write(4 * 3, 4, 2);
    CHECK(p.output(0));
    p.write(threshold(0), 4, 2);
    CHECK(!p.output(0)); // priority must exceed the threshold
    p.write(4 * 5, 4, 3);
    p.set_level(5, true);
    CHECK(p.output(0));
    CHECK(p.read(claim(0), 4) == 5);
    CHECK(p.read(claim(0), 4) == 3); // a claim ignores the threshold
    CHECK(p.read(threshold(0), 4) == 2);
}

TEST_CASE("plic: bad sizes, misaligned offsets, unknown sources and contexts are ignored") {
    std::vector<std::pair<unsigned, bool>> log;
    vcpu::devices::plic<recorder> p(1, 31, recorder{&log});
    p.write(4 * 1, 1, 7);
    CHECK(p.read(4 * 1, 4) == 0);
    p.write(4 * 1 + 2, 4, 7);
    CHECK(p.read(4 * 1, 4) == 0);
    p.write(enable(0), 4, 0xffff'ffff);
    CHECK(p.read(enable(0), 4) == 0xffff'fffe); // source 0 does not exist
    p.write(enable(3), 4, 1);                   // context 3 does not exist
    CHECK(p.read(enable(3), 4) == 0);
    CHECK(p.read(claim(5), 4) == 0);
    p.set_level(0, true);
    p.set_level(40, true);
    p.write(claim(0), 4, 99); // completing what was never claimed
    CHECK(log.empty());
    CHECK(m::size(2) == 0x202000);
}
