// The arm64 in-kernel GICv3 and ITS through the typed helpers of kvm/aarch64_gic.hpp on real KVM:
// created, configured (distributor and redistributor addresses, number of interrupt ids), then
// initialised after the vCPUs, and every setting read back from KVM — the addresses, the number
// of ids, and what the distributor's own registers say about it (GICD_TYPER.ITLinesNumber,
// GICD_PIDR2.ArchRev) and a redistributor's GICR_TYPER; a misaligned address and a late change
// are refused with their errno, group and attribute; the ITS where the host has it.
#include "xarch_support.hpp"

#include <kvm/aarch64_gic.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {
namespace kvm = vcpu::kvm;
namespace gic = vcpu::kvm::aarch64;
using sys_t = kvm::linux_sys;
constexpr std::uint64_t dist_base = 0x0800'0000, redist_base = 0x080a'0000, its_base = 0x0808'0000;
} // namespace

TEST_CASE("aarch64 vGICv3: create, configure, init after the vCPUs; KVM and the distributor agree") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto g = gic::vgic_v3<sys_t>::create(*vm, {.dist = dist_base, .redist = redist_base});
    REQUIRE_MESSAGE(g, g.err().message());
    auto init = kvm::aarch64::preferred_init(*vm);
    REQUIRE(init);
    std::vector<kvm::hal_vcpu<sys_t, vcpu::arch::aarch64>> cpus;
    for (unsigned i = 0; i < 2; ++i) {
        auto c = vm->create_hal_vcpu<vcpu::arch::aarch64>(i);
        REQUIRE_MESSAGE(c, c.err().message());
        REQUIRE(kvm::arm_vcpu_init(*c, *init));
        cpus.push_back(std::move(*c));
    }
    REQUIRE(g->set_nr_irqs(128));
    auto ok = g->init();
    REQUIRE_MESSAGE(ok, ok.err().message());

    auto d = g->dist_base();
    REQUIRE_MESSAGE(d, d.err().message());
    CHECK(*d == dist_base);
    auto r = g->redist_base();
    REQUIRE(r);
    CHECK(*r == redist_base);
    auto n = g->nr_irqs();
    REQUIRE(n);
    CHECK(*n == 128);
    auto typer = g->dist_reg(gic::gicd::typer);
    REQUIRE_MESSAGE(typer, typer.err().message());
    CHECK((*typer & 0x1f) == 128 / 32 - 1); // ITLinesNumber: 32 * (N + 1) interrupt ids
    auto pidr2 = g->dist_reg(gic::gicd::pidr2);
    REQUIRE(pidr2);
    CHECK(((*pidr2 >> 4) & 0xf) == 3); // ArchRev: GICv3
    // GICR_TYPER (offset 0x8) of vCPU 1 (affinity 0.0.0.1): Processor_Number (bits 23:8) is 1, and
    // Last (bit 4) marks the last redistributor of the region.
    auto rtyper = g->redist_reg(1, 0x8);
    REQUIRE_MESSAGE(rtyper, rtyper.err().message());
    CHECK(((*rtyper >> 8) & 0xffff) == 1);
    CHECK(((*rtyper >> 4) & 1) == 1);

    auto late = g->set_nr_irqs(256);
    REQUIRE(!late);
    CHECK(late.err().code == EBUSY);
    CHECK(late.err().value("group") == gic::vgic_attr::grp_nr_irqs);
    char text[96];
    std::snprintf(text, sizeof text, "GICD_TYPER 0x%x, GICD_IIDR 0x%x, GICR_TYPER(vCPU 1) 0x%x", *typer,
                  g->dist_reg(gic::gicd::iidr).value_or(0u), *rtyper);
    MESSAGE(std::string(text));

    auto its = gic::vgic_its<sys_t>::create(*vm, its_base);
    if (!its) {
        CHECK(its.err().code == ENODEV);
        MESSAGE("SKIPPED: ITS: ", its.err().message());
        return;
    }
    auto b = its->base();
    REQUIRE(b);
    CHECK(*b == its_base);
    auto typer_its = its->reg(0x8); // GITS_TYPER: Physical (bit 0) = 1, LPIs supported
    REQUIRE_MESSAGE(typer_its, typer_its.err().message());
    CHECK((*typer_its & 1) == 1);
    MESSAGE("ITS base ", std::to_string(*b), ", GITS_TYPER low byte ", std::to_string(*typer_its & 0xff));
}

TEST_CASE("aarch64 vGICv3: a misaligned address is refused, naming the attribute") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto g = gic::vgic_v3<sys_t>::create(*vm, {.dist = dist_base + 0x1000, .redist = redist_base});
    REQUIRE(!g);
    CHECK(std::string(g.err().op) == "KVM_SET_DEVICE_ATTR");
    CHECK(g.err().code == EINVAL);
    CHECK(g.err().value("attr") == gic::vgic_attr::addr_dist);
}
