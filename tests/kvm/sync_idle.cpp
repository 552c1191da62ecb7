// Adaptive sync registers (include/kvm/vcpu.hpp): a synced block no handler touches for
// vcpu_options::sync_idle_exits exits leaves kvm_valid_regs; the next access fetches it with its
// GET ioctl, returns current values, and puts it back.
#include <doctest/doctest.h>

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <variant>

namespace x86 = vcpu::x86_64;

TEST_CASE("sync regs: idle blocks stop being stored, come back on access with current values") {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = 64 * 1024;
    o.irqchip = o.pit = false;
    auto m = vcpu::kvm::vm_init_x86_64(o, x86::real_mode{0, 0x1000, 0});
    REQUIRE(m);
    // L: inc ax; out 0x10, al; jmp L
    constexpr std::array<std::uint8_t, 5> code{0x40, 0xe6, 0x10, 0xeb, 0xfb};
    REQUIRE(m->memory.write(0x1000, std::as_bytes(std::span(code))));
    auto& cpu = m->vcpus.front();
    const auto mask = cpu.hal().sync_mask();
    if ((mask & KVM_SYNC_X86_REGS) == 0) {
        MESSAGE("KVM_CAP_SYNC_REGS lacks REGS here: nothing to check");
        return;
    }
    CHECK(cpu.hal().run()->kvm_valid_regs == mask);
    unsigned n = 0;
    auto exits = [&](unsigned count) {
        n = 0;
        auto r = cpu.run([&](vcpu::port_io&) { return ++n == count ? vcpu::action::stop : vcpu::action::resume; });
        REQUIRE(r);
    };
    exits(40); // > sync_idle_exits (16) without register access
    CHECK((cpu.hal().run()->kvm_valid_regs & KVM_SYNC_X86_REGS) == 0);
    // AX was incremented once per exit since reset (AX starts at 0 in real_mode).
    auto ax = cpu.get(x86::rax);
    REQUIRE(ax);
    CHECK((*ax & 0xffff) == 40);
    REQUIRE(cpu.set(x86::rax, 1000));
    exits(1); // the access puts REGS back for this entry; the write is applied by KVM
    CHECK((cpu.hal().run()->kvm_valid_regs & KVM_SYNC_X86_REGS) != 0);
    auto ax2 = cpu.get(x86::rax);
    REQUIRE(ax2);
    CHECK((*ax2 & 0xffff) == 1001);
}
