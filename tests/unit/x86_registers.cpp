// The x86-64 register file: every descriptor round-trips through the mock HAL into the right
// field of the right KVM block (or the right MSR), GPR encoding order, unique names, and the
// architectural bit fields checked against the Intel SDM.
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/registers.hpp>
#include <kvm/mock.hpp>
#include <vcpu/registers.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace {

namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;
using vcpu::access;

// --- compile-time checks over the descriptor tuple -------------------------------------------

constexpr std::size_t register_count = std::tuple_size_v<std::remove_cvref_t<decltype(x86::all_registers)>>;

/// True when no two descriptors in the tuple share a name.
template <class Tuple>
constexpr bool names_unique(const Tuple& t) {
    return std::apply(
        [](const auto&... r) {
            const std::array<std::string_view, sizeof...(r)> n{r.name...};
            for (std::size_t i = 0; i < n.size(); ++i)
                for (std::size_t j = i + 1; j < n.size(); ++j)
                    if (n[i] == n[j]) return false;
            return true;
        },
        t);
}
static_assert(names_unique(x86::all_registers), "x86-64 register names must be unique");
static_assert(!names_unique(std::make_tuple(x86::rax, x86::rbx, x86::gp<>{"rax", 8})),
              "the uniqueness check must be able to fail");

template <class R>
constexpr bool in_layout(const R& r) {
    if constexpr (vcpu::detail::is_block_reg<R>::value)
        return r.offset + sizeof(typename R::value_type) <= sizeof(typename R::block::layout);
    else
        return true;
}
static_assert(std::apply([](const auto&... r) { return (in_layout(r) && ...); }, x86::all_registers),
              "every block register lies inside its block's layout");

template <class R, class B>
constexpr bool same_block_overlap(const R& a, const B& b) {
    if constexpr (vcpu::detail::is_block_reg<R>::value && vcpu::detail::is_block_reg<B>::value) {
        if constexpr (std::is_same_v<typename R::block, typename B::block>) {
            const auto a_end = a.offset + sizeof(typename R::value_type);
            const auto b_end = b.offset + sizeof(typename B::value_type);
            return a.offset < b_end && b.offset < a_end;
        }
    }
    if constexpr (vcpu::detail::is_keyed_reg<R>::value && vcpu::detail::is_keyed_reg<B>::value)
        return a.key == b.key;
    return false;
}
template <class R>
constexpr std::size_t overlaps_with(const R& a) {
    return std::apply(
        [&](const auto&... b) { return (std::size_t{same_block_overlap(a, b)} + ...); },
        x86::all_registers);
}
/// Counts overlapping pairs (each register overlaps itself once).
constexpr std::size_t overlaps() {
    return std::apply([](const auto&... a) { return (overlaps_with(a) + ...); }, x86::all_registers);
}
static_assert(overlaps() == register_count, "no two registers share storage or an MSR index");

static_assert(register_count == 53);
static_assert(arch::gpr_count == 16);
static_assert(arch::pc.name == "rip" && arch::pc.offset == offsetof(x86::regs_layout, rip));
static_assert(decltype(x86::rax)::rights == access::rw);
static_assert(x86::rax.width_bits() == 64 && x86::ia32_efer.width_bits() == 64);
static_assert(std::is_same_v<decltype(x86::cs)::value_type, x86::segment>);
static_assert(std::is_same_v<decltype(x86::gdt)::value_type, x86::dtable>);
static_assert(std::is_same_v<decltype(x86::cr0)::block, x86::sregs_block>);
static_assert(std::is_same_v<decltype(x86::dr7)::block, x86::debugregs_block>);
static_assert(std::is_same_v<decltype(x86::ia32_efer)::bank, x86::msr_bank>);
static_assert(vcpu::RegisterDescriptor<decltype(x86::rax)>);
static_assert(vcpu::RegisterDescriptor<decltype(x86::ia32_lstar)>);
static_assert(!vcpu::RegisterDescriptor<int>);
static_assert(!vcpu::RegisterDescriptor<std::remove_cvref_t<decltype(x86::cr0_bits::pe)>>,
              "a bit field is not a register");

// --- values for round trips --------------------------------------------------------------------

template <class T>
T value_for(std::size_t k) {
    if constexpr (std::is_same_v<T, x86::segment>) {
        x86::segment s{};
        s.base = 0x1000'0000ull * (k + 1) + k;
        s.limit = static_cast<std::uint32_t>(0xf000 + k);
        s.selector = static_cast<std::uint16_t>(8 * k);
        s.type = static_cast<std::uint8_t>(k & 0xf);
        s.present = 1;
        s.dpl = static_cast<std::uint8_t>(k & 3);
        s.db = static_cast<std::uint8_t>(k & 1);
        s.s = 1;
        s.l = static_cast<std::uint8_t>((k >> 1) & 1);
        s.g = 1;
        s.avl = static_cast<std::uint8_t>((k >> 2) & 1);
        return s;
    } else if constexpr (std::is_same_v<T, x86::dtable>) {
        x86::dtable d{};
        d.base = 0xffff'8000'0000'0000ull + 0x1000 * k;
        d.limit = static_cast<std::uint16_t>(0x100 + k);
        return d;
    } else {
        static_assert(std::is_same_v<T, std::uint64_t>);
        return 0x0123'4567'89ab'cdefull ^ (0x1111'1111'1111'1111ull * (k + 1));
    }
}

template <class F, std::size_t... I>
void for_each_register(F&& f, std::index_sequence<I...>) {
    (f(std::get<I>(x86::all_registers), I), ...);
}
template <class F>
void for_each_register(F&& f) {
    for_each_register(f, std::make_index_sequence<register_count>{});
}

vcpu::kvm::mock::mock_vcpu<arch> make() { return vcpu::kvm::mock::make_vcpu<arch>(vcpu::kvm::mock::script{}); }

} // namespace

TEST_CASE("x86 registers: every descriptor round-trips through the mock without aliasing") {
    auto cpu = make();
    // Write every register first, then read all back: a wrong offset or duplicate MSR index
    // would clobber another register's value.
    for_each_register([&](const auto& r, std::size_t k) {
        using T = typename std::remove_cvref_t<decltype(r)>::value_type;
        CAPTURE(r.name);
        CHECK(cpu.set(r, value_for<T>(k)));
    });
    for_each_register([&](const auto& r, std::size_t k) {
        using T = typename std::remove_cvref_t<decltype(r)>::value_type;
        CAPTURE(r.name);
        auto v = cpu.get(r);
        REQUIRE(v);
        CHECK(*v == value_for<T>(k));
    });
}

TEST_CASE("x86 registers: descriptors reach the named field of the KVM block") {
    auto cpu = make();
    auto& g = cpu.hal().block<x86::regs_block>();
    auto& s = cpu.hal().block<x86::sregs_block>();
    auto& d = cpu.hal().block<x86::debugregs_block>();

    const std::pair<vcpu::block_reg<x86::regs_block, std::uint64_t>, std::uint64_t x86::regs_layout::*>
        gprs[] = {
            {x86::rax, &x86::regs_layout::rax}, {x86::rbx, &x86::regs_layout::rbx},
            {x86::rcx, &x86::regs_layout::rcx}, {x86::rdx, &x86::regs_layout::rdx},
            {x86::rsi, &x86::regs_layout::rsi}, {x86::rdi, &x86::regs_layout::rdi},
            {x86::rsp, &x86::regs_layout::rsp}, {x86::rbp, &x86::regs_layout::rbp},
            {x86::r8, &x86::regs_layout::r8},   {x86::r9, &x86::regs_layout::r9},
            {x86::r10, &x86::regs_layout::r10}, {x86::r11, &x86::regs_layout::r11},
            {x86::r12, &x86::regs_layout::r12}, {x86::r13, &x86::regs_layout::r13},
            {x86::r14, &x86::regs_layout::r14}, {x86::r15, &x86::regs_layout::r15},
            {x86::rip, &x86::regs_layout::rip}, {x86::rflags, &x86::regs_layout::rflags},
        };
    std::uint64_t n = 1;
    for (const auto& entry : gprs) {
        const auto& [reg, field] = entry;
        CAPTURE(entry.first.name);
        const std::uint64_t v = 0xabc000 + n++;
        REQUIRE(cpu.set(reg, v));
        CHECK(g.*field == v);
        g.*field = v + 1; // and reads come from that field
        CHECK(cpu.get(reg).value() == v + 1);
    }

    const std::pair<vcpu::block_reg<x86::sregs_block, x86::segment>, x86::segment x86::sregs_layout::*>
        segs[] = {{x86::cs, &x86::sregs_layout::cs}, {x86::ds, &x86::sregs_layout::ds},
                  {x86::es, &x86::sregs_layout::es}, {x86::fs, &x86::sregs_layout::fs},
                  {x86::gs, &x86::sregs_layout::gs}, {x86::ss, &x86::sregs_layout::ss},
                  {x86::tr, &x86::sregs_layout::tr}, {x86::ldt, &x86::sregs_layout::ldt}};
    for (const auto& entry : segs) {
        const auto& [reg, field] = entry;
        CAPTURE(entry.first.name);
        const auto v = value_for<x86::segment>(n++);
        REQUIRE(cpu.set(reg, v));
        CHECK(s.*field == v);
    }
    REQUIRE(cpu.set(x86::gdt, value_for<x86::dtable>(1)));
    REQUIRE(cpu.set(x86::idt, value_for<x86::dtable>(2)));
    CHECK(s.gdt == value_for<x86::dtable>(1));
    CHECK(s.idt == value_for<x86::dtable>(2));

    const std::pair<vcpu::block_reg<x86::sregs_block, std::uint64_t>, std::uint64_t x86::sregs_layout::*>
        ctl[] = {{x86::cr0, &x86::sregs_layout::cr0},   {x86::cr2, &x86::sregs_layout::cr2},
                 {x86::cr3, &x86::sregs_layout::cr3},   {x86::cr4, &x86::sregs_layout::cr4},
                 {x86::cr8, &x86::sregs_layout::cr8},   {x86::efer, &x86::sregs_layout::efer},
                 {x86::apic_base, &x86::sregs_layout::apic_base}};
    for (const auto& entry : ctl) {
        const auto& [reg, field] = entry;
        CAPTURE(entry.first.name);
        const std::uint64_t v = 0x5000 + n++;
        REQUIRE(cpu.set(reg, v));
        CHECK(s.*field == v);
    }

    REQUIRE(cpu.set(x86::dr6, 0xffff0ff0));
    REQUIRE(cpu.set(x86::dr7, 0x400));
    CHECK(d.dr6 == 0xffff0ff0);
    CHECK(d.dr7 == 0x400);
}

TEST_CASE("x86 registers: writes are recorded per block / MSR by the mock") {
    auto cpu = make();
    REQUIRE(cpu.set(x86::rax, 1));
    REQUIRE(cpu.set(x86::cr0, 1));
    REQUIRE(cpu.set(x86::dr7, 1));
    REQUIRE(cpu.set(x86::ia32_lstar, 0xffffffff81000000ull));
    REQUIRE(cpu.set(x86::msr(0x8b), 7)); // any MSR by index
    const auto ev = cpu.hal().events();
    REQUIRE(ev.size() == 5);
    using k = vcpu::kvm::mock::event::kind;
    CHECK((ev[0].what == k::block_write && ev[0].name == "kvm_regs"));
    CHECK((ev[1].what == k::block_write && ev[1].name == "kvm_sregs"));
    CHECK((ev[2].what == k::block_write && ev[2].name == "kvm_debugregs"));
    CHECK((ev[3].what == k::keyed_write && ev[3].name == "msr"));
    CHECK(ev[3].key == 0xc0000082);
    CHECK(ev[3].value == 0xffffffff81000000ull);
    CHECK(ev[4].key == 0x8b);
    CHECK(cpu.get(x86::msr(0x8b)).value() == 7);
    CHECK(cpu.get(x86::msr(0x8c)).value() == 0); // never written
    // Reads record nothing.
    (void)cpu.get(x86::rax);
    (void)cpu.get(x86::ia32_lstar);
    CHECK(cpu.hal().events().size() == 5);
}

TEST_CASE("x86 registers: MSR indices are the SDM's (Vol. 4 Table 2-2)") {
    CHECK(x86::ia32_tsc.key == 0x10);
    CHECK(x86::ia32_apic_base.key == 0x1b);
    CHECK(x86::ia32_sysenter_cs.key == 0x174);
    CHECK(x86::ia32_sysenter_esp.key == 0x175);
    CHECK(x86::ia32_sysenter_eip.key == 0x176);
    CHECK(x86::ia32_misc_enable.key == 0x1a0);
    CHECK(x86::ia32_pat.key == 0x277);
    CHECK(x86::ia32_efer.key == 0xc0000080);
    CHECK(x86::ia32_star.key == 0xc0000081);
    CHECK(x86::ia32_lstar.key == 0xc0000082);
    CHECK(x86::ia32_cstar.key == 0xc0000083);
    CHECK(x86::ia32_fmask.key == 0xc0000084);
    CHECK(x86::ia32_fs_base.key == 0xc0000100);
    CHECK(x86::ia32_gs_base.key == 0xc0000101);
    CHECK(x86::ia32_kernel_gs_base.key == 0xc0000102);
    CHECK(x86::ia32_tsc_aux.key == 0xc0000103);
    CHECK(x86::msr(0x1a0).key == x86::ia32_misc_enable.key);
}

TEST_CASE("x86 registers: gpr(i) follows the instruction encoding (SDM Vol. 2A Table 2-2)") {
    constexpr std::array<std::string_view, 16> names{"rax", "rcx", "rdx", "rbx", "rsp", "rbp",
                                                     "rsi", "rdi", "r8",  "r9",  "r10", "r11",
                                                     "r12", "r13", "r14", "r15"};
    static_assert(arch::gpr(0).name == "rax" && arch::gpr(1).name == "rcx" &&
                  arch::gpr(3).name == "rbx" && arch::gpr(4).name == "rsp" &&
                  arch::gpr(15).name == "r15");
    auto cpu = make();
    for (unsigned i = 0; i < arch::gpr_count; ++i) {
        CAPTURE(i);
        CHECK(arch::gpr(i).name == names[i]);
        // The encoding reaches the register of that name.
        REQUIRE(cpu.set(arch::gpr(i), 0x100 + i));
    }
    const auto& g = cpu.hal().block<x86::regs_block>();
    CHECK(g.rax == 0x100);
    CHECK(g.rcx == 0x101);
    CHECK(g.rdx == 0x102);
    CHECK(g.rbx == 0x103);
    CHECK(g.rsp == 0x104);
    CHECK(g.rbp == 0x105);
    CHECK(g.rsi == 0x106);
    CHECK(g.rdi == 0x107);
    CHECK(g.r8 == 0x108);
    CHECK(g.r15 == 0x10f);
    CHECK(g.rip == 0); // never an encoding
}


TEST_CASE("x86 bit fields: positions from the SDM") {
    namespace c0 = x86::cr0_bits;
    namespace c4 = x86::cr4_bits;
    namespace ef = x86::efer_bits;
    namespace rf = x86::rflags_bits;
    // CR0 (Vol. 3A §2.5): PE 0, MP 1, EM 2, TS 3, ET 4, NE 5, WP 16, AM 18, NW 29, CD 30, PG 31.
    static_assert(c0::pe.mask == 0x1 && c0::mp.mask == 0x2 && c0::em.mask == 0x4 &&
                  c0::ts.mask == 0x8 && c0::et.mask == 0x10 && c0::ne.mask == 0x20);
    static_assert(c0::wp.mask == 0x10000 && c0::am.mask == 0x40000);
    static_assert(c0::nw.mask == 0x20000000 && c0::cd.mask == 0x40000000 && c0::pg.mask == 0x80000000);
    static_assert(c0::pg.lsb == 31 && c0::pg.width == 1);
    // CR4: PAE 5, PGE 7, OSFXSR 9, OSXMMEXCPT 10, LA57 12, VMXE 13, FSGSBASE 16, OSXSAVE 18,
    // SMEP 20, SMAP 21.
    static_assert(c4::vme.mask == 0x1 && c4::pse.mask == 0x10 && c4::pae.mask == 0x20 &&
                  c4::pge.mask == 0x80 && c4::osfxsr.mask == 0x200 && c4::osxmmexcpt.mask == 0x400);
    static_assert(c4::la57.mask == 0x1000 && c4::vmxe.mask == 0x2000 && c4::fsgsbase.mask == 0x10000 &&
                  c4::osxsave.mask == 0x40000 && c4::smep.mask == 0x100000 && c4::smap.mask == 0x200000);
    // EFER (Vol. 3A §2.2.1): SCE 0, LME 8, LMA 10 (read-only), NXE 11.
    static_assert(ef::sce.mask == 0x1 && ef::lme.mask == 0x100 && ef::lma.mask == 0x400 &&
                  ef::nxe.mask == 0x800);
    static_assert(ef::lma.rights == access::ro && ef::lme.rights == access::rw);
    // RFLAGS (Vol. 1 §3.4.3): CF 0, bit 1 reserved (1), IF 9, DF 10, IOPL 12-13, VM 17, ID 21.
    static_assert(rf::cf.mask == 0x1 && rf::reserved1.mask == 0x2 && rf::if_.mask == 0x200 &&
                  rf::df.mask == 0x400 && rf::of.mask == 0x800);
    static_assert(rf::iopl.lsb == 12 && rf::iopl.width == 2 && rf::iopl.mask == 0x3000);
    static_assert(rf::vm.mask == 0x20000 && rf::ac.mask == 0x40000 && rf::id.mask == 0x200000);
    static_assert(rf::reset_value == 0x2 && rf::reserved1.test(rf::reset_value));
    static_assert(x86::misc_enable_bits::fast_strings.mask == 0x1);
    CHECK(c0::pg.bits() == 0x80000000u);
}

TEST_CASE("x86 bit fields: get / set / test / bits / mask") {
    namespace rf = x86::rflags_bits;
    namespace c0 = x86::cr0_bits;
    namespace ef = x86::efer_bits;
    // A real-mode CR0 after reset: CD | NW | ET = 0x60000010 (SDM Vol. 3A Table 10-1).
    constexpr std::uint64_t cr0_reset = 0x60000010;
    CHECK(c0::cd.test(cr0_reset));
    CHECK(c0::nw.test(cr0_reset));
    CHECK(c0::et.test(cr0_reset));
    CHECK_FALSE(c0::pe.test(cr0_reset));
    CHECK_FALSE(c0::pg.test(cr0_reset));
    // Entering protected mode with paging: set PE and PG, clear CD/NW.
    std::uint64_t cr0 = c0::pg.set(c0::pe.set(cr0_reset, 1), 1);
    cr0 = c0::cd.set(c0::nw.set(cr0, 0), 0);
    CHECK(cr0 == 0x80000011);

    // A long-mode EFER as KVM reports it: LME | LMA | SCE | NXE = 0xd01.
    constexpr std::uint64_t efer = 0xd01;
    CHECK(ef::lme.test(efer));
    CHECK(ef::lma.test(efer));
    CHECK(ef::lma.get(efer) == 1); // reading a read-only field is fine
    CHECK(ef::nxe.test(efer));
    CHECK(ef::lme.set(efer, 0) == 0xc01);
    CHECK((ef::lme.bits() | ef::sce.bits()) == 0x101);

    // IOPL is a two-bit field.
    constexpr std::uint64_t fl = 0x3202; // IOPL 3, IF, reserved bit 1
    CHECK(rf::iopl.get(fl) == 3);
    CHECK(rf::if_.test(fl));
    CHECK(rf::iopl.set(fl, 1) == 0x1202);
    CHECK(rf::iopl.set(fl, 0) == 0x0202);
    CHECK(rf::iopl.set(0x2, 7) == 0x3002); // truncated to the field's two bits
    CHECK(rf::iopl.bits(2) == 0x2000);
    CHECK(rf::iopl.bits(5) == 0x1000); // 5 & 3
    CHECK(rf::iopl.bits() == 0x1000);
    CHECK_FALSE(rf::iopl.test(0x2));

    // Edge widths: a full 64-bit field and the top bit.
    using all = vcpu::bitfield<0, 64>;
    using top = vcpu::bitfield<63>;
    static_assert(all::mask == ~std::uint64_t{0});
    static_assert(all::get(0x1234) == 0x1234 && all::set(5, 9) == 9);
    static_assert(top::mask == 0x8000000000000000ull && top::get(~0ull) == 1);
    static_assert(top::set(0, 1) == 0x8000000000000000ull && top::set(~0ull, 0) == 0x7fffffffffffffffull);
    CHECK(vcpu::bitfield<4, 8>::mask == 0xff0);
    CHECK(vcpu::bitfield<4, 8>::get(0xabcd) == 0xbc);
    CHECK(vcpu::bitfield<4, 8>::set(0xabcd, 0x1ff) == 0xaffd);
}
