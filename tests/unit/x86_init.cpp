// x86-64 boot-state policies applied through the mock HAL: the register state each one leaves,
// the identity-map page tables long_mode writes into guest memory, CPUID setup, the fast-strings
// MSR, the order linux_boot_state does things in, and init_sequence stopping at an error.
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <vcpu/init.hpp>
#include <vcpu/memory.hpp>
#include <kvm/mock.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace {

namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;
using kind = vcpu::kvm::mock::event::kind;

vcpu::kvm::mock::mock_vcpu<arch> make() { return vcpu::kvm::mock::make_vcpu<arch>(vcpu::kvm::mock::script{}); }

std::uint64_t u64_at(const std::vector<std::byte>& b, std::size_t off) {
    std::uint64_t v = 0;
    std::memcpy(&v, b.data() + off, 8);
    return v;
}

/// Presets every GPR and control register with garbage so a policy's resets are visible.
void dirty(vcpu::kvm::mock::mock_vcpu<arch>& cpu) {
    auto& g = cpu.hal().block<x86::regs_block>();
    std::memset(&g, 0x5a, sizeof g);
    auto& s = cpu.hal().block<x86::sregs_block>();
    s.cr0 = 0x80000011; // PG | ET | PE
    s.cr3 = 0x123000;
    s.efer = 0xd01;     // LMA | LME | NXE | SCE
}

void check_flat(const x86::segment& s, std::uint16_t sel, std::uint8_t type) {
    CHECK(s.base == 0);
    CHECK(s.limit == 0xffffffff);
    CHECK(s.g == 1);
    CHECK(s.db == 1);
    CHECK(s.l == 0);
    CHECK(s.selector == sel);
    CHECK(s.type == type);
    CHECK(s.present == 1);
    CHECK(s.s == 1);
    CHECK(s.dpl == 0);
}

std::size_t count_function(vcpu::kvm::mock::mock_vcpu<arch>& cpu, std::uint32_t fn) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < cpu.hal().cpuid_count(); ++i)
        n += cpu.hal().cpuid_at<x86::cpuid_entry>(i).function == fn;
    return n;
}
x86::cpuid_entry find_function(vcpu::kvm::mock::mock_vcpu<arch>& cpu, std::uint32_t fn) {
    for (std::size_t i = 0; i < cpu.hal().cpuid_count(); ++i)
        if (auto e = cpu.hal().cpuid_at<x86::cpuid_entry>(i); e.function == fn) return e;
    FAIL("CPUID leaf not set: " << fn);
    return {};
}

/// A policy that always fails, counting its calls.
struct failing_policy {
    int* calls;
    template <class Cpu>
    [[nodiscard]] vcpu::result<void> apply(Cpu&) const noexcept {
        ++*calls;
        return vcpu::error{"custom step", EIO, "injected"};
    }
};

} // namespace

TEST_CASE("x86 init: real_mode") {
    auto cpu = make();
    dirty(cpu);
    REQUIRE(cpu.init(x86::real_mode{0xf000, 0xfff0, 0x7c00}));
    const auto& s = cpu.hal().block<x86::sregs_block>();
    const auto& g = cpu.hal().block<x86::regs_block>();
    CHECK(s.cs.selector == 0xf000);
    CHECK(s.cs.base == 0xf0000); // selector * 16
    CHECK(s.cs.limit == 0xffff);
    CHECK(s.cs.type == x86::segment_type::code_xr_accessed);
    CHECK(s.cs.present == 1);
    CHECK(s.cs.db == 0);
    CHECK(s.cs.g == 0);
    for (const auto* d : {&s.ds, &s.es, &s.fs, &s.gs, &s.ss}) {
        CHECK(d->base == 0);
        CHECK(d->selector == 0);
        CHECK(d->limit == 0xffff);
        CHECK(d->type == x86::segment_type::data_rw_accessed);
        CHECK(d->db == 0);
    }
    CHECK_FALSE(x86::cr0_bits::pe.test(s.cr0));
    CHECK_FALSE(x86::cr0_bits::pg.test(s.cr0));
    CHECK(s.efer == 0);
    CHECK(g.rip == 0xfff0);
    CHECK(g.rsp == 0x7c00);
    CHECK(g.rflags == 0x2);
    CHECK(g.rax == 0);
    CHECK(g.r15 == 0);

    const auto ev = cpu.hal().events();
    REQUIRE(ev.size() == 2);
    CHECK(ev[0].name == "kvm_sregs");
    CHECK(ev[1].name == "kvm_regs");
}

TEST_CASE("x86 init: real_mode defaults") {
    auto cpu = make();
    REQUIRE(cpu.init(x86::real_mode{}));
    CHECK(cpu.get(x86::rip).value() == 0x1000);
    CHECK(cpu.get(x86::cs).value().base == 0);
}

TEST_CASE("x86 init: flat_protected_mode (Linux 32-bit boot protocol)") {
    auto cpu = make();
    dirty(cpu);
    REQUIRE(cpu.init(x86::flat_protected_mode{}));
    const auto& s = cpu.hal().block<x86::sregs_block>();
    const auto& g = cpu.hal().block<x86::regs_block>();
    check_flat(s.cs, 0x10, x86::segment_type::code_xr_accessed);
    CHECK((s.cs.type & 0x8) != 0); // a code segment (SDM Table 3-1)
    for (const auto* d : {&s.ds, &s.es, &s.fs, &s.gs, &s.ss}) {
        check_flat(*d, 0x18, x86::segment_type::data_rw_accessed);
        CHECK((d->type & 0x8) == 0); // data
    }
    CHECK(x86::cr0_bits::pe.test(s.cr0));
    CHECK_FALSE(x86::cr0_bits::pg.test(s.cr0)); // cleared even though it was set
    CHECK(s.efer == 0);
    CHECK(g.rip == 0x100000);
    CHECK(g.rsi == 0x10000);
    CHECK(g.rflags == 0x2);
    CHECK_FALSE(x86::rflags_bits::if_.test(g.rflags)); // interrupts off
    CHECK(g.rbp == 0);
    CHECK(g.rdi == 0);
    CHECK(g.rbx == 0);

    SUBCASE("custom entry and boot_params; applying twice gives the same state") {
        REQUIRE(cpu.init(x86::flat_protected_mode{0x200000, 0x7000}));
        const auto first = s;
        REQUIRE(cpu.init(x86::flat_protected_mode{0x200000, 0x7000}));
        CHECK(std::memcmp(&first, &s, sizeof s) == 0);
        CHECK(g.rip == 0x200000);
        CHECK(g.rsi == 0x7000);
    }
}

TEST_CASE("x86 init: long_mode writes identity-map page tables and enables IA-32e") {
    std::vector<std::byte> ram(0x40000, std::byte{0xee}); // garbage: tables must be zeroed
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram}));
    auto cpu = make();
    dirty(cpu);
    constexpr std::uint64_t P = 1, RW = 2, US = 4, PS = 0x80;

    SUBCASE("supervisor, 1 GiB") {
        REQUIRE(cpu.init(x86::long_mode<>{&mem, 0x100000, 0x8000, 0x9000, 1, false}));
        CHECK(u64_at(ram, 0x9000) == (0xa000 | P | RW)); // PML4[0] -> PDPT
        CHECK(u64_at(ram, 0x9008) == 0);                // PML4[1] empty
        CHECK(u64_at(ram, 0xa000) == (0xb000 | P | RW)); // PDPT[0] -> PD
        CHECK(u64_at(ram, 0xa008) == 0);
        for (std::uint64_t i = 0; i < 512; ++i) {
            CAPTURE(i);
            CHECK(u64_at(ram, 0xb000 + 8 * i) == ((i << 21) | P | RW | PS));
        }
        CHECK(ram[0xc000] == std::byte{0xee}); // nothing written past the tables
        CHECK(ram[0x8fff] == std::byte{0xee});

        const auto& s = cpu.hal().block<x86::sregs_block>();
        const auto& g = cpu.hal().block<x86::regs_block>();
        CHECK(s.cr3 == 0x9000);
        CHECK(x86::cr4_bits::pae.test(s.cr4));
        CHECK(x86::cr0_bits::pg.test(s.cr0));
        CHECK(x86::cr0_bits::pe.test(s.cr0));
        CHECK(x86::efer_bits::lme.test(s.efer));
        CHECK(x86::efer_bits::lma.test(s.efer));
        CHECK(s.cs.l == 1);
        CHECK(s.cs.db == 0); // L=1 requires D=0 (SDM §3.4.5)
        CHECK(s.cs.dpl == 0);
        CHECK(s.cs.selector == 0x08);
        CHECK(s.ss.selector == 0x10);
        CHECK(s.ss.dpl == 0);
        CHECK(g.rip == 0x100000);
        CHECK(g.rsp == 0x8000);
        CHECK(g.rflags == 0x2);
    }
    SUBCASE("user, 2 GiB") {
        REQUIRE(cpu.init(x86::long_mode<>{&mem, 0x400000, 0x7ff000, 0x10000, 2, true}));
        CHECK(u64_at(ram, 0x10000) == (0x11000 | P | RW | US));
        CHECK(u64_at(ram, 0x11000) == (0x12000 | P | RW | US));
        CHECK(u64_at(ram, 0x11008) == (0x13000 | P | RW | US));
        CHECK(u64_at(ram, 0x12000) == (P | RW | US | PS));
        CHECK(u64_at(ram, 0x12000 + 8 * 511) == ((511ull << 21) | P | RW | US | PS));
        CHECK(u64_at(ram, 0x13000) == ((1ull << 30) | P | RW | US | PS));
        CHECK(u64_at(ram, 0x13000 + 8 * 511) == (((1ull << 30) + (511ull << 21)) | P | RW | US | PS));
        const auto& s = cpu.hal().block<x86::sregs_block>();
        const auto& g = cpu.hal().block<x86::regs_block>();
        CHECK(s.cs.dpl == 3);
        CHECK((s.cs.selector & 3) == 3);
        CHECK(s.ss.dpl == 3);
        CHECK((s.ss.selector & 3) == 3);
        CHECK(x86::rflags_bits::iopl.get(g.rflags) == 3);
        CHECK(s.cr3 == 0x10000);
    }
}

TEST_CASE("x86 init: long_mode errors write nothing") {
    std::vector<std::byte> ram(0x20000, std::byte{0xee});
    const auto pristine = ram;
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0, ram}));
    auto cpu = make();

    auto expect_error = [&](const x86::long_mode<>& p, int code) {
        auto r = cpu.init(p);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == code);
        CHECK(ram == pristine);
        CHECK(cpu.hal().events().empty()); // no register block touched
    };
    SUBCASE("misaligned tables") { expect_error({&mem, 0x100000, 0, 0x9008, 1, false}, EINVAL); }
    SUBCASE("tables past the end of memory") {
        expect_error({&mem, 0x100000, 0, 0x1e000, 1, false}, EFAULT); // needs 0x1e000..0x21000
    }
    SUBCASE("tables outside any region") { expect_error({&mem, 0x100000, 0, 0x100000, 1, false}, EFAULT); }
    SUBCASE("too many GiB for the memory") { expect_error({&mem, 0x100000, 0, 0x0, 31, false}, EFAULT); }
    SUBCASE("0 or more than 512 GiB") {
        expect_error({&mem, 0x100000, 0, 0x9000, 0, false}, EINVAL);
        expect_error({&mem, 0x100000, 0, 0x9000, 513, false}, EINVAL);
    }
    SUBCASE("no memory") { expect_error({nullptr, 0x100000, 0, 0x9000, 1, false}, EINVAL); }
    SUBCASE("read-only memory") {
        std::vector<std::byte> rom(0x10000, std::byte{0xee});
        const auto rom0 = rom;
        REQUIRE(mem.add({0x100000, rom, true}));
        auto r = cpu.init(x86::long_mode<>{&mem, 0x100000, 0, 0x100000, 1, false});
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EACCES);
        CHECK(rom == rom0);
        CHECK(cpu.hal().events().empty());
    }
    SUBCASE("tables straddling two regions") {
        std::vector<std::byte> more(0x10000);
        REQUIRE(mem.add({0x20000, more}));
        expect_error({&mem, 0x100000, 0, 0x1f000, 1, false}, EFAULT);
        CHECK(std::all_of(more.begin(), more.end(), [](std::byte b) { return b == std::byte{0}; }));
    }
}

TEST_CASE("x86 init: cpuid_setup") {
    auto cpu = make();
    const std::array<x86::cpuid_entry, 3> host{{
        {0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69, {}}, // "GenuineIntel"
        {1, 0, 0, 0x000906ea, 0x00100800, 0x7ffafbff, 0xbfebfbff, {}},
        {7, 0, x86::cpuid_flag_significant_index, 0, 0x029c6fbf, 0, 0, {}},
    }};
    cpu.hal().set_supported_cpuid(std::span<const x86::cpuid_entry>(host));

    SUBCASE("adds the KVM leaves and the APIC id") {
        REQUIRE(cpu.init(x86::cpuid_setup<>{5, {}}));
        REQUIRE(cpu.hal().cpuid_count() == 5);
        const auto leaf1 = find_function(cpu, 1);
        CHECK((leaf1.ebx >> 24) == 5);
        CHECK((leaf1.ebx & 0x00ffffff) == 0x00100800); // the rest untouched
        CHECK(leaf1.ecx == (0x7ffafbffu | (1u << 31))); // hypervisor present, the rest untouched
        const auto sig = find_function(cpu, 0x40000000);
        char name[13] = {};
        std::memcpy(name, &sig.ebx, 4);
        std::memcpy(name + 4, &sig.ecx, 4);
        std::memcpy(name + 8, &sig.edx, 4);
        CHECK(std::string(name) == "KVMKVMKVM");
        CHECK(sig.eax == 0x40000001); // highest hypervisor leaf
        CHECK(count_function(cpu, 0x40000001) == 1);
        CHECK(find_function(cpu, 7).flags == x86::cpuid_flag_significant_index);
        // set_cpuid was called once, with the final count.
        const auto ev = cpu.hal().events();
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].what == kind::set_cpuid);
        CHECK(ev[0].value == 5);
    }
    SUBCASE("keeps a signature leaf the host already offers") {
        std::array<x86::cpuid_entry, 4> with_sig{};
        std::copy(host.begin(), host.end(), with_sig.begin());
        with_sig[3] = {0x40000000, 0, 0, 0x40000010, 0x7263694d, 0x666f736f, 0x76482074, {}};
        cpu.hal().set_supported_cpuid(std::span<const x86::cpuid_entry>(with_sig));
        REQUIRE(cpu.init(x86::cpuid_setup<>{}));
        CHECK(count_function(cpu, 0x40000000) == 1);
        const auto sig = find_function(cpu, 0x40000000);
        CHECK(sig.eax == 0x40000010);
        CHECK(sig.ebx == 0x7263694d);
        CHECK(count_function(cpu, 0x40000001) == 1); // the features leaf is still added
        CHECK(cpu.hal().cpuid_count() == 5);
        CHECK((find_function(cpu, 1).ebx >> 24) == 0);
    }
    SUBCASE("hypervisor = false leaves CPUID.01H:ECX[31] as the host offers it") {
        REQUIRE(cpu.init(x86::cpuid_setup<>{0, {}, false}));
        CHECK(find_function(cpu, 1).ecx == 0x7ffafbff);
    }
    SUBCASE("hide_leaf removes a leaf") {
        REQUIRE(cpu.init(x86::cpuid_setup<x86::hide_leaf>{0, x86::hide_leaf{7}}));
        CHECK(count_function(cpu, 7) == 0);
        CHECK(count_function(cpu, 1) == 1);
        CHECK(cpu.hal().cpuid_count() == 4);
    }
    SUBCASE("hide_leaf can remove the added signature too") {
        REQUIRE(cpu.init(x86::cpuid_setup<x86::hide_leaf>{0, x86::hide_leaf{0x40000000}}));
        CHECK(count_function(cpu, 0x40000000) == 0);
        CHECK(cpu.hal().cpuid_count() == 4);
    }
    SUBCASE("a custom hook edits leaves before KVM_SET_CPUID2") {
        struct clear_hypervisor_bit {
            void operator()(std::span<x86::cpuid_entry> e, std::size_t& n) const noexcept {
                for (std::size_t i = 0; i < n; ++i)
                    if (e[i].function == 1) e[i].ecx &= ~(1u << 31);
            }
        };
        REQUIRE(cpu.init(x86::cpuid_setup<clear_hypervisor_bit>{}));
        CHECK(find_function(cpu, 1).ecx == 0x7ffafbff);
        CHECK(cpu.hal().cpuid_count() == 5);
    }
}

TEST_CASE("x86 init: misc_enable_fast_strings sets IA32_MISC_ENABLE bit 0") {
    auto cpu = make();
    REQUIRE(cpu.init(x86::misc_enable_fast_strings{}));
    CHECK(cpu.get(x86::msr(0x1a0)).value() == 1);
    const auto ev = cpu.hal().events();
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].what == kind::keyed_write);
    CHECK(ev[0].key == 0x1a0);
    CHECK(ev[0].value == 0x1);
}

TEST_CASE("x86 init: linux_boot_state does protected mode, CPUID, then the MSR") {
    auto cpu = make();
    const std::array<x86::cpuid_entry, 1> host{{{1, 0, 0, 0, 0x800, 0, 0, {}}}};
    cpu.hal().set_supported_cpuid(std::span<const x86::cpuid_entry>(host));
    REQUIRE(cpu.init(x86::linux_boot_state(3)));
    const auto ev = cpu.hal().events();
    REQUIRE(ev.size() == 4);
    CHECK(ev[0].what == kind::block_write);
    CHECK(ev[0].name == "kvm_sregs");
    CHECK(ev[1].what == kind::block_write);
    CHECK(ev[1].name == "kvm_regs");
    CHECK(ev[2].what == kind::set_cpuid);
    CHECK(ev[2].value == 3);
    CHECK(ev[3].what == kind::keyed_write);
    CHECK(ev[3].key == 0x1a0);
    CHECK(cpu.get(x86::rip).value() == 0x100000);
    CHECK(cpu.get(x86::rsi).value() == 0x10000);
    CHECK(cpu.get(x86::cs).value().selector == 0x10);
    CHECK((find_function(cpu, 1).ebx >> 24) == 3);

    auto other = make();
    REQUIRE(other.init(x86::linux_boot_state(0, 0x200000, 0x9000)));
    CHECK(other.get(x86::rip).value() == 0x200000);
    CHECK(other.get(x86::rsi).value() == 0x9000);
}

TEST_CASE("x86 init: init_sequence stops at the first error") {
    auto cpu = make();
    int fails = 0;
    SUBCASE("a library step fails") {
        auto seq = vcpu::init_sequence(x86::flat_protected_mode{}, x86::long_mode<>{},
                                       x86::misc_enable_fast_strings{});
        auto r = cpu.init(seq);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        CHECK(std::string(r.err().op) == "long mode init");
        const auto ev = cpu.hal().events();
        REQUIRE(ev.size() == 2); // protected mode's two blocks, no MSR
        CHECK(ev[1].name == "kvm_regs");
        CHECK(cpu.get(x86::ia32_misc_enable).value() == 0);
    }
    SUBCASE("a custom step fails") {
        auto seq = vcpu::init_sequence(x86::misc_enable_fast_strings{}, failing_policy{&fails},
                                       x86::real_mode{}, failing_policy{&fails});
        auto r = cpu.init(seq);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EIO);
        CHECK(std::string(r.err().op) == "custom step");
        CHECK(r.err().message().find("custom step failed") != std::string::npos);
        CHECK(fails == 1);
        CHECK(cpu.hal().events().size() == 1); // only the MSR write happened
        CHECK(cpu.get(x86::ia32_misc_enable).value() == 1);
    }
    SUBCASE("every step succeeds") {
        auto seq = vcpu::init_sequence(x86::real_mode{}, x86::misc_enable_fast_strings{});
        CHECK(cpu.init(seq));
        CHECK(cpu.hal().events().size() == 3);
    }
    SUBCASE("an empty sequence succeeds and does nothing") {
        CHECK(cpu.init(vcpu::init_sequence<>{}));
        CHECK(cpu.hal().events().empty());
    }
}
