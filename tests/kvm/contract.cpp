// The vCPU contract on real KVM (issue: "a sound vCPU contract"): a failed first KVM_RUN keeps
// the pending boot state and names what is wrong; a moved-from vCPU gives EBADF, not a crash;
// a second thread calling run() on a running vCPU gets EBUSY, not fake exits.
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <arch/x86_64/registers.hpp>
#include <kvm/kvm.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <chrono>
#include <thread>
#include <variant>

#if defined(__x86_64__)

namespace {

namespace x86 = vcpu::x86_64;

vcpu::kvm::x86_64_options small() {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = 64 * 1024;
    o.irqchip = o.pit = false;
    return o;
}

} // namespace

TEST_CASE("contract: a refused first KVM_RUN keeps the boot state pending and says why") {
    auto m = vcpu::kvm::vm_init_x86_64(small(), x86::real_mode{0, 0x1000, 0});
    REQUIRE_MESSAGE(m, (m ? "" : m.err().message()));
    // mov al, 0x2a ; out 0xe9, al ; hlt
    const std::array<std::uint8_t, 5> code{0xb0, 0x2a, 0xe6, 0xe9, 0xf4};
    REQUIRE(m->memory.write(0x1000, std::as_bytes(std::span(code))));
    auto& cpu = m->vcpus.front();
    auto cr0 = cpu.get(x86::cr0);
    REQUIRE(cr0);
    REQUIRE(cpu.set(x86::cr0, *cr0 | x86::cr0_bits::pg.bits())); // paging without PE
    auto r = cpu.run([](vcpu::port_io&) { return vcpu::action::stop; });
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().op) == "KVM_RUN");
    CHECK(r.err().code == EINVAL);
    CHECK(r.err().message().find("CR0.PG set without CR0.PE") != std::string::npos);
    auto rip = cpu.get(x86::rip);
    REQUIRE(rip);
    CHECK(*rip == 0x1000); // still the pending entry point, not KVM's reset vector
    REQUIRE(cpu.set(x86::cr0, *cr0));
    unsigned out = 0;
    auto r2 = cpu.run([&](vcpu::port_io& io) { out = io.value(); },
                      [](vcpu::halt) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r2, (r2 ? "" : r2.err().message()));
    CHECK(std::holds_alternative<vcpu::halt>(*r2));
    CHECK(out == 0x2a);
}

TEST_CASE("contract: a moved-from vCPU fails with EBADF and says so") {
    auto m = vcpu::kvm::vm_init_x86_64(small(), x86::real_mode{0, 0x1000, 0});
    REQUIRE(m);
    auto moved = std::move(m->vcpus.front());
    auto& old = m->vcpus.front();
    auto r = old.run([](vcpu::halt) { return vcpu::action::stop; });
    REQUIRE_FALSE(r);
    CHECK(r.err().code == EBADF);
    CHECK(r.err().message().find("moved from") != std::string::npos);
    auto g = old.get(x86::rax);
    REQUIRE_FALSE(g);
    CHECK(g.err().code == EBADF);
    CHECK_FALSE(old.set(x86::rbx, 1));
    CHECK(moved.get(x86::rip)); // the new owner works
}

TEST_CASE("contract: a second thread calling run() on a running vCPU gets EBUSY") {
    auto m = vcpu::kvm::vm_init_x86_64(small(), x86::real_mode{0, 0x1000, 0});
    REQUIRE(m);
    // out 0xe9, al (tells the test the first thread is inside run()) ; jmp $ (never exits)
    const std::array<std::uint8_t, 4> spin{0xe6, 0xe9, 0xeb, 0xfe};
    REQUIRE(m->memory.write(0x1000, std::as_bytes(std::span(spin))));
    auto& cpu = m->vcpus.front();
    auto kicker = cpu.hal().make_kicker();
    std::atomic<bool> inside{false};
    int first = -1;
    std::thread a([&] {
        first = cpu.hal().bind_kick_thread(SIGUSR1) ? 0 : 1;
        auto r = cpu.run([&](vcpu::port_io&) { inside.store(true); },
                         [](vcpu::interrupted& e) {
                             return e.requests != 0 ? vcpu::action::stop : vcpu::action::resume;
                         });
        if (first == 0) first = r && std::holds_alternative<vcpu::interrupted>(*r) ? 0 : 2;
        inside.store(true); // also when run() failed early, so the test cannot wait for ever
    });
    while (!inside.load()) std::this_thread::yield();
    auto second = cpu.step([](vcpu::interrupted&) {}, vcpu::allow_unused([](vcpu::port_io&) {}));
    REQUIRE_FALSE(second);
    CHECK(second.err().code == EBUSY);
    CHECK(std::string(second.err().op) == "vcpu step");
    REQUIRE(kicker.kick(1));
    a.join();
    CHECK(first == 0);
}

#endif // __x86_64__
