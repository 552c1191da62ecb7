// AArch64 vCPU features by capability on real KVM (kvm/aarch64.hpp): PMU v3, SVE (vector lengths
// and KVM_ARM_VCPU_FINALIZE) and PtrAuth, each requested through `required_init` only when the
// capability is there — its registers then appear in KVM_GET_REG_LIST, and a missing capability
// is a clear error — and a vCPU state with those features carried to a vCPU of a second VM
// (and refused by one without them).
#include "xarch_support.hpp"

#include <kvm/aarch64_state.hpp>
#include <kvm/vcpu_state.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace kvm = vcpu::kvm;
namespace ids = vcpu::kvm::aarch64_ids;
using hal_cpu = vcpu::kvm::hal_vcpu<vcpu::kvm::linux_sys, vcpu::arch::aarch64>;

struct bare_vm {
    std::optional<kvm::system> sys;
    std::optional<kvm::vm> vm;
};

bare_vm open_vm() {
    bare_vm b;
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    b.sys.emplace(std::move(*sys));
    auto vm = b.sys->create_vm();
    REQUIRE_MESSAGE(vm, vm.err().message());
    b.vm.emplace(std::move(*vm));
    return b;
}

bool has_cap(const kvm::vm& vm, long cap) {
    auto r = vm.check_extension(cap);
    REQUIRE_MESSAGE(r, r.err().message());
    return *r > 0;
}

std::vector<std::uint64_t> reg_list(hal_cpu& c) {
    std::vector<std::uint64_t> storage(4096);
    auto r = c.reg_list(storage);
    REQUIRE_MESSAGE(r, r.err().message());
    return {r->begin(), r->end()};
}

bool lists(const std::vector<std::uint64_t>& l, std::uint64_t id) { return std::find(l.begin(), l.end(), id) != l.end(); }

// Registers each feature brings (ARM ARM: PMCR_EL0 = 3,3,9,12,0; APIAKEYLO_EL1 = 3,0,2,1,0;
// KVM_REG_ARM64_SVE_ZREG(0, 0) = SVE class, U2048, index 0).
const std::uint64_t pmcr_el0 = ids::sys_reg(3, 3, 9, 12, 0);
const std::uint64_t apiakeylo_el1 = ids::sys_reg(3, 0, 2, 1, 0);
const std::uint64_t zreg0 = vcpu::aarch64::reg_arm64 | 0x0080000000000000ULL | ids::sve;

/// A vCPU of `vm` initialised with `f` (and SVE finalized); REQUIREs success.
hal_cpu make_cpu(kvm::vm& vm, unsigned id, kvm::aarch64::vcpu_features f,
                 const kvm::aarch64::sve_vector_lengths* vls = nullptr) {
    auto init = kvm::aarch64::required_init(vm, f);
    REQUIRE_MESSAGE(init, init.err().message());
    auto c = vm.create_hal_vcpu<vcpu::arch::aarch64>(id);
    REQUIRE_MESSAGE(c, c.err().message());
    auto ok = kvm::init_with_features(*c, *init, vls);
    REQUIRE_MESSAGE(ok, ok.err().message());
    return std::move(*c);
}

} // namespace

TEST_CASE("aarch64 features: PMU v3, SVE and PtrAuth by capability; their registers appear; a missing one is an error") {
    auto b = open_vm();
    auto plain = make_cpu(*b.vm, 0, {});
    const auto base = reg_list(plain);
    CHECK(!lists(base, pmcr_el0));
    CHECK(!lists(base, zreg0));
    CHECK(!lists(base, apiakeylo_el1));
    struct one {
        const char* name;
        long cap;
        kvm::aarch64::vcpu_features f;
        std::uint64_t reg;
    };
    const std::array<one, 3> all{{{"PMU v3", KVM_CAP_ARM_PMU_V3, {.pmu_v3 = true}, pmcr_el0},
                                  {"SVE", KVM_CAP_ARM_SVE, {.sve = true}, zreg0},
                                  {"PtrAuth", KVM_CAP_ARM_PTRAUTH_ADDRESS, {.ptrauth = true}, apiakeylo_el1}}};
    unsigned id = 1;
    for (const auto& o : all) {
        const std::string feature = o.name;
        CAPTURE(feature);
        const bool have = has_cap(*b.vm, o.cap) && (o.cap != KVM_CAP_ARM_PTRAUTH_ADDRESS ||
                                                    has_cap(*b.vm, KVM_CAP_ARM_PTRAUTH_GENERIC));
        if (!have) {
            auto init = kvm::aarch64::required_init(*b.vm, o.f);
            REQUIRE(!init);
            CHECK(init.err().code == ENOTSUP);
            CHECK(std::string(init.err().detail).find("the host lacks KVM_CAP_ARM_") != std::string::npos);
            MESSAGE("SKIPPED: ", std::string(o.name), " on real KVM: ", init.err().message());
            continue;
        }
        auto c = make_cpu(*b.vm, id++, o.f);
        const auto l = reg_list(c);
        CHECK(lists(l, o.reg));
        CHECK(l.size() > base.size());
        MESSAGE(std::string(o.name), ": ", l.size(), " registers (", base.size(), " without)");
    }
}

TEST_CASE("aarch64 features: SVE vector lengths are set between init and finalize, and only then") {
    auto b = open_vm();
    if (!has_cap(*b.vm, KVM_CAP_ARM_SVE)) {
        MESSAGE("SKIPPED: the host has no KVM_CAP_ARM_SVE");
        return;
    }
    auto init = kvm::aarch64::required_init(*b.vm, {.sve = true});
    REQUIRE_MESSAGE(init, init.err().message());
    auto c = b.vm->create_hal_vcpu<vcpu::arch::aarch64>(0);
    REQUIRE(c);
    REQUIRE(kvm::arm_vcpu_init(*c, *init));
    auto host = kvm::get_sve_vector_lengths(*c);
    REQUIRE_MESSAGE(host, host.err().message());
    REQUIRE(host->max_vq() >= 1);
    // Before finalize the register list is refused (KVM API 4.84: EPERM).
    std::vector<std::uint64_t> storage(4096);
    auto early = c->reg_list(storage);
    REQUIRE(!early);
    CHECK(early.err().code == EPERM);
    kvm::aarch64::sve_vector_lengths one_vq;
    unsigned smallest = 1;
    while (!host->has(smallest)) ++smallest;
    one_vq.with(smallest);
    REQUIRE(kvm::set_sve_vector_lengths(*c, one_vq));
    REQUIRE(kvm::arm_vcpu_finalize(*c, vcpu::aarch64::feature::sve));
    auto now = kvm::get_sve_vector_lengths(*c);
    REQUIRE(now);
    CHECK(*now == one_vq);
    auto late = kvm::set_sve_vector_lengths(*c, *host);
    REQUIRE(!late);
    CHECK(late.err().code == EPERM);
    CHECK(std::string(late.err().detail).find("before KVM_ARM_VCPU_FINALIZE") != std::string::npos);
    MESSAGE("SVE: host max VL ", host->max_vq() * 128, " bits, vCPU limited to ", smallest * 128);
    CHECK(lists(reg_list(*c), zreg0));
}

TEST_CASE("aarch64 features: a state with the features moves to a second VM; a vCPU without them refuses it") {
    auto b1 = open_vm();
    kvm::aarch64::vcpu_features f{.pmu_v3 = has_cap(*b1.vm, KVM_CAP_ARM_PMU_V3), .sve = has_cap(*b1.vm, KVM_CAP_ARM_SVE)};
    if (!f.pmu_v3 && !f.sve) {
        MESSAGE("SKIPPED: the host has neither KVM_CAP_ARM_PMU_V3 nor KVM_CAP_ARM_SVE");
        return;
    }
    auto src = make_cpu(*b1.vm, 0, f);
    // Distinct values in a feature register, so the check sees them travel.
    std::array<std::byte, 256> z{};
    for (std::size_t i = 0; i < z.size(); ++i) z[i] = static_cast<std::byte>(i * 3 + 1);
    if (f.sve) REQUIRE(src.set_one_reg(zreg0, z));
    auto st = kvm::aarch64_vcpu_state::save(src);
    REQUIRE_MESSAGE(st, st.err().message());
    auto back = kvm::aarch64_vcpu_state::deserialize(st->serialize());
    REQUIRE(back);
    auto b2 = open_vm();
    auto dst = make_cpu(*b2.vm, 0, f);
    auto loaded = back->load(dst);
    REQUIRE_MESSAGE(loaded, loaded.err().message());
    if (f.sve) {
        std::array<std::byte, 256> got{};
        REQUIRE(dst.get_one_reg(zreg0, got));
        CHECK(got == z);
    }
    auto b3 = open_vm();
    auto plain = make_cpu(*b3.vm, 0, {});
    auto refused = back->load(plain);
    REQUIRE(!refused);
    CHECK(std::string(refused.err().op) == "aarch64_vcpu_state::load");
    CHECK(std::string(refused.err().detail).find("vCPU features differ") != std::string::npos);
    const std::string with = std::string("state with") + (f.pmu_v3 ? " PMU" : "") + (f.sve ? " SVE" : "");
    MESSAGE(with, ": ", st->ids.size(), " registers, ", st->values.size(), " value bytes");
}
