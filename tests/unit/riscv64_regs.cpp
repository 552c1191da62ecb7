// RISC-V register ids (as arch/riscv/include/uapi/asm/kvm.h builds them; the
// cross build checks them against the real header in kvm/riscv64.hpp), GPR
// numbering, the CSR table, and the boot state through the mock HAL.
#include <doctest/doctest.h>

#include <arch/riscv64/arch.hpp>
#include <kvm/riscv64.hpp>
#include <kvm/mock.hpp>

#include <cstdint>
#include <set>
#include <string_view>
#include <tuple>
#include <vector>

namespace rv = vcpu::riscv64;
using A = vcpu::arch::riscv64;

TEST_CASE("riscv64 registers: ONE_REG ids") {
    // KVM_REG_RISCV | KVM_REG_SIZE_U64 | type << 24 | index.
    CHECK(rv::pc.id == 0x8030000002000000ull);
    CHECK(rv::ra.id == 0x8030000002000001ull);
    CHECK(rv::a0.id == 0x803000000200000aull);
    CHECK(rv::a7.id == 0x8030000002000011ull);
    CHECK(rv::t6.id == 0x803000000200001full);
    CHECK(rv::mode.id == 0x8030000002000020ull);
    CHECK(rv::sstatus.id == 0x8030000003000000ull);
    CHECK(rv::satp.id == 0x8030000003000008ull);
    CHECK(rv::scounteren.id == 0x8030000003000009ull);
    CHECK(rv::isa.id == 0x8030000001000000ull);
    CHECK(rv::mimpid.id == 0x8030000001000004ull);
    CHECK(rv::timer_frequency.id == 0x8030000004000000ull);
    CHECK(rv::timer_state.id == 0x8030000004000003ull);
    CHECK(rv::sbi_extension_enable(rv::abi::kvm_sbi_ext::dbcn).id == 0x8030000008000009ull);
#if defined(__riscv)
    CHECK(rv::a0.id == (KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE |
                        KVM_REG_RISCV_CORE_REG(regs.a0)));
#endif
}

TEST_CASE("riscv64 registers: GPRs by number, x0, unique names and ids") {
    for (unsigned i = 1; i < 32; ++i) {
        CAPTURE(i);
        CHECK(A::gpr(i).id == (0x8030000002000000ull | i));
    }
    CHECK(A::gpr(0).name == "zero");
    CHECK(A::gpr(0).id == 0);
    CHECK(A::gpr(8).name == "s0");
    CHECK(A::gpr(32 + 10).id == rv::a0.id); // masked, never out of bounds
    std::set<std::string_view> names;
    std::set<std::uint64_t> ids;
    std::size_t n = 0;
    std::apply([&](const auto&... r) { ((names.insert(r.name), ids.insert(r.id), ++n), ...); },
               A::registers);
    CHECK(names.size() == n);
    CHECK(ids.size() == n);
}

TEST_CASE("riscv64 CSR table: sorted, unique, searchable") {
    static_assert(vcpu::riscv64::detail::csr_table_ok(rv::csr_table));
    constexpr std::array<rv::csr_desc, 2> dup{{{"a", 0x100}, {"b", 0x100}}};
    static_assert(!vcpu::riscv64::detail::csr_table_ok(dup));
    constexpr std::array<rv::csr_desc, 1> wide{{{"a", 0x1000}}};
    static_assert(!vcpu::riscv64::detail::csr_table_ok(wide));
    CHECK(rv::csrs::name(rv::csr::hstatus) == "hstatus");
    CHECK(rv::csrs::name(rv::csr::seed) == "seed");
    CHECK(rv::csrs::name(rv::csr::hgeip) == "hgeip");
    CHECK(rv::csrs::name(0x7c0).empty());
    for (const auto& c : rv::csr_table) {
        CAPTURE(c.name);
        CHECK(rv::csrs::find(c.number) == &c);
    }
    static_assert(rv::csrs::find(0x7c0) == nullptr);
    static_assert(rv::csrs::find(rv::csr::time)->read_only());
    CHECK_FALSE(rv::csrs::find(rv::csr::sstatus)->read_only());
    CHECK(rv::csrs::find(rv::csr::hgatp)->privilege() == 2);
}

TEST_CASE("riscv64 boot: S-mode, satp/sstatus cleared, a0 = hart id, a1 = DTB, pc last") {
    auto cpu = vcpu::kvm::mock::make_vcpu<A>(vcpu::kvm::mock::script{});
    REQUIRE(cpu.init(rv::boot{0x80200000, 3, 0x82200000}));
    std::vector<std::pair<std::uint64_t, std::uint64_t>> writes;
    for (const auto& e : cpu.hal().events())
        if (e.what == vcpu::kvm::mock::event::kind::one_reg_write) writes.emplace_back(e.key, e.value);
    REQUIRE(writes.size() == 6);
    CHECK(writes[0] == std::pair{rv::mode.id, rv::abi::mode_s});
    CHECK(writes[1] == std::pair{rv::satp.id, std::uint64_t{0}});
    CHECK(writes[2].first == rv::sstatus.id);
    CHECK(writes[3] == std::pair{rv::a0.id, std::uint64_t{3}});
    CHECK(writes[4] == std::pair{rv::a1.id, std::uint64_t{0x82200000}});
    CHECK(writes[5] == std::pair{rv::pc.id, std::uint64_t{0x80200000}});
    CHECK(*cpu.get(rv::pc) == 0x80200000);
    CHECK(*cpu.get(A::gpr(11)) == 0x82200000);
}

TEST_CASE("riscv64 kvm: enable_sbi_extension writes the SBI_EXT register") {
    auto cpu = vcpu::kvm::mock::make_vcpu<A>(vcpu::kvm::mock::script{});
    REQUIRE(vcpu::kvm::enable_sbi_extension(cpu, rv::abi::kvm_sbi_ext::dbcn));
    CHECK(*cpu.get(rv::sbi_extension_enable(rv::abi::kvm_sbi_ext::dbcn)) == 1);
}
