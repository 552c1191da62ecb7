// RISC-V vCPU features on real KVM (kvm/riscv64.hpp): ISA extensions taken away before the first
// run (D and F: their registers leave KVM_GET_REG_LIST), refused with a reason for one KVM cannot
// hide (Sstc), and what KVM does with a change after the first run; SBI extensions switched on and
// off.
#include "xarch_support.hpp"

#include <kvm/riscv64_state.hpp>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <vector>
#include <string>
#include <variant>

namespace {

using u64 = std::uint64_t;
namespace rv = vcpu::riscv64::abi;

VCPU_GUEST_CODE void read_stimecmp() {
    u64 v;
    asm volatile("csrr %0, 0x14d" : "=r"(v));
    vcpu::guest::ucall::sync(u64{1});
}

/// Runs the guest to its end; returns the exception it took, if any.
std::optional<vcpu::guest::unhandled_exception> run_guest(guest_test::machine& m) {
    std::optional<vcpu::guest::unhandled_exception> ex;
    auto r = vcpu::guest::run(
        *m.cpu, *m.space, [](vcpu::guest::sync&) {}, guest_test::fail_on_guest_assert(),
        [&](vcpu::guest::unhandled_exception& e) {
            ex = e;
            return vcpu::action::stop;
        },
        [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    return ex;
}

} // namespace

TEST_CASE("riscv64 features: D and F taken away before the first run: no FP registers; Sstc refused with the reason") {
    auto m = guest_test::start(&read_stimecmp);
    auto fp_regs = [&] {
        std::vector<std::uint64_t> storage(2048);
        auto l = m->cpu->hal().reg_list(storage);
        REQUIRE_MESSAGE(l, l.err().message());
        std::size_t n = 0;
        for (auto id : *l) {
            const u64 type = (id >> rv::type_shift) & 0xff;
            if (type == static_cast<u64>(rv::reg_type::fp_f) || type == static_cast<u64>(rv::reg_type::fp_d)) ++n;
        }
        return n;
    };
    auto has_d = vcpu::kvm::isa_extension_enabled(*m->cpu, rv::kvm_isa_ext::d);
    REQUIRE_MESSAGE(has_d, has_d.err().message());
    if (!*has_d) {
        MESSAGE("SKIPPED: the host gives no D extension to KVM guests");
        return;
    }
    const std::size_t with_fp = fp_regs();
    CHECK(with_fp >= 33); // f0-f31 and fcsr
    REQUIRE(vcpu::kvm::set_isa_extension(*m->cpu, rv::kvm_isa_ext::d, false));
    REQUIRE(vcpu::kvm::set_isa_extension(*m->cpu, rv::kvm_isa_ext::f, false));
    auto d = vcpu::kvm::isa_extension_enabled(*m->cpu, rv::kvm_isa_ext::d);
    REQUIRE(d);
    CHECK(!*d);
    CHECK(fp_regs() == 0);
    // Sstc has no means to be hidden from a guest (measured on 6.12: EINVAL), and says so.
    auto sstc = vcpu::kvm::set_isa_extension(*m->cpu, rv::kvm_isa_ext::sstc, false);
    if (!sstc) {
        CHECK(sstc.err().code == EINVAL);
        CHECK(std::string(sstc.err().detail).find("cannot give (or take away)") != std::string::npos);
    }
    CHECK(!run_guest(*m).has_value());
    // After the first run KVM documents EBUSY for ISA changes; Linux 6.12 in the emulated machine
    // accepted both the extension switch and a changed `isa` (measured): either way the vCPU must
    // end up as KVM says, and state load writes them only when they differ (kvm/riscv64_state.hpp).
    auto late = vcpu::kvm::set_isa_extension(*m->cpu, rv::kvm_isa_ext::d, true);
    auto d_after = vcpu::kvm::isa_extension_enabled(*m->cpu, rv::kvm_isa_ext::d);
    REQUIRE(d_after);
    if (late) CHECK(*d_after);
    else CHECK((late.err().code == EBUSY && std::string(late.err().detail).find("first KVM_RUN") != std::string::npos));
    auto isa = m->cpu->get(vcpu::riscv64::isa);
    REQUIRE(isa);
    const u64 want = *isa ^ (u64{1} << ('c' - 'a'));
    auto isa_late = m->cpu->set(vcpu::riscv64::isa, want);
    auto isa_now = m->cpu->get(vcpu::riscv64::isa);
    REQUIRE(isa_now);
    if (isa_late) CHECK(*isa_now == want);
    else CHECK((isa_late.err().code == EBUSY && *isa_now == *isa));
    MESSAGE("after the first run: enabling D ", late ? std::string("accepted") : late.err().message(),
            "; changing isa ", isa_late ? std::string("accepted") : isa_late.err().message());
    MESSAGE("FP registers listed: ", with_fp, " with F/D, ", fp_regs(), " without");
}

TEST_CASE("riscv64 features: SBI extensions switch on and off before the first run only") {
    auto m = guest_test::start(&read_stimecmp);
    auto dbcn = vcpu::kvm::sbi_extension_enabled(*m->cpu, rv::kvm_sbi_ext::dbcn);
    if (!dbcn && dbcn.err().code == ENOENT) {
        MESSAGE("SKIPPED: this kernel has no KVM_REG_RISCV_SBI_EXT DBCN (Linux < 6.8)");
        return;
    }
    REQUIRE_MESSAGE(dbcn, dbcn.err().message());
    const bool was = *dbcn;
    REQUIRE(vcpu::kvm::set_sbi_extension(*m->cpu, rv::kvm_sbi_ext::dbcn, !was));
    auto now = vcpu::kvm::sbi_extension_enabled(*m->cpu, rv::kvm_sbi_ext::dbcn);
    REQUIRE(now);
    CHECK(*now == !was);
    REQUIRE(vcpu::kvm::set_sbi_extension(*m->cpu, rv::kvm_sbi_ext::dbcn, was));
    // The state carries the switch: a saved vCPU lists it.
    auto st = vcpu::kvm::save_state(*m->cpu);
    REQUIRE(st);
    CHECK(st->value(rv::sbi_ext_reg(rv::kvm_sbi_ext::dbcn)).size() == 8);
    (void)run_guest(*m);
    // Measured on 6.12: unlike the ISA extensions, the SBI switches are still accepted after the
    // first run (KVM consults them at each SBI call).
    auto late = vcpu::kvm::set_sbi_extension(*m->cpu, rv::kvm_sbi_ext::dbcn, !was);
    if (late) {
        auto after = vcpu::kvm::sbi_extension_enabled(*m->cpu, rv::kvm_sbi_ext::dbcn);
        REQUIRE(after);
        CHECK(*after == !was);
    } else {
        CHECK(late.err().code == EBUSY);
    }
}
