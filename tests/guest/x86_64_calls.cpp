// The x86 vCPU and system calls of kvm/x86_64_calls.hpp, kvm/caps.hpp and kvm/system.hpp on real
// KVM, each observed from a C++ guest where the call has a guest-visible effect: an NMI and an
// injected interrupt run the guest's handlers, KVM_TRANSLATE agrees with the loader's page
// tables, and guest debugging (single step, int3, hardware breakpoint, write watchpoint) stops
// the guest at the addresses of labels placed in its code. A call the host lacks (SMM and
// nested state on PVM) is reported as SKIPPED with the reason.
#include "support.hpp"

#include <arch/x86_64/registers.hpp>
#include <kvm/caps.hpp>
#include <kvm/host.hpp>
#include <kvm/x86_64_calls.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace gx = vcpu::guest::x86_64;
namespace kvm = vcpu::kvm;

/// Machine with or without the in-kernel irqchip (no PIT).
vcpu::result<kvm::x86_64_machine> machine(bool irqchip) {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = irqchip;
    o.pit = false;
    return kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
}

gx::space load(kvm::x86_64_machine& m, void (*fn)()) {
    auto space = gx::space::load(m.memory, reinterpret_cast<const void*>(fn));
    REQUIRE_MESSAGE(space, space.err().message());
    REQUIRE(space->enter(m.vcpus[0], gx::call(fn)));
    return std::move(*space);
}

/// Runs until the next sync and returns its values (fails the case on anything else).
std::vector<u64> next_sync(kvm::x86_64_machine& m, const gx::space& space) {
    auto r = vcpu::guest::run(m.vcpus[0], space, [](vcpu::guest::sync&) { return vcpu::action::stop; },
                              guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r, r.err().message());
    const auto* s = std::get_if<vcpu::guest::sync>(&*r);
    REQUIRE_MESSAGE(s != nullptr, "expected a sync, got variant index " << r->index());
    std::vector<u64> v;
    for (std::size_t i = 0; i < s->size(); ++i) v.push_back((*s)[i]);
    return v;
}

/// Runs until the next exit that is not a ucall and returns it.
template <class Machine>
auto next_exit(Machine& m, const gx::space& space) {
    auto r = vcpu::guest::run(m.vcpus[0], space, guest_test::fail_on_guest_assert());
    REQUIRE_MESSAGE(r, r.err().message());
    return *r;
}

/// A part this host cannot run: said, with the reason, in the test's output (never a silent pass).
void skipped(const char* why) { MESSAGE("SKIPPED: " << std::string(why)); }

// ---- guest code -----------------------------------------------------------------------------

inline constinit volatile u64 nmi_seen = 0;
inline constinit volatile u64 irq_seen = 0;
constexpr std::uint8_t irq_vector = 0x40;

VCPU_GUEST_CODE void on_nmi(gx::exception_frame&) { nmi_seen = nmi_seen + 1; }
VCPU_GUEST_CODE void on_irq(gx::exception_frame& f) { irq_seen = f.vector; }

/// Reports, waits for the NMI the host queued at the report, reports again.
VCPU_GUEST_CODE void nmi_guest() {
    gx::set_handler(2, &on_nmi);
    ucall::sync(nmi_seen);
    for (u64 i = 0; i < 50'000'000 && nmi_seen == 0; ++i) gx::pause();
    ucall::sync(nmi_seen);
}

/// With interrupts on, reports, waits for the vector the host injects, reports it.
VCPU_GUEST_CODE void irq_guest() {
    gx::set_handler(irq_vector, &on_irq);
    gx::sti();
    ucall::sync(irq_seen);
    for (u64 i = 0; i < 50'000'000 && irq_seen == 0; ++i) gx::pause();
    gx::cli();
    ucall::sync(irq_seen);
}

inline constinit volatile u64 gp_seen = 0;
VCPU_GUEST_CODE void skip_wrmsr(gx::exception_frame& f) {
    gp_seen = gp_seen + 1;
    f.rip += 2; // past WRMSR (0f 30)
}
/// Writes MSR_KVM_SYSTEM_TIME_NEW (disabled) and reports how many #GPs that raised.
VCPU_GUEST_CODE void pv_msr_guest() {
    gx::set_handler(13, &skip_wrmsr);
    gx::wrmsr(0x4b564d01u, 0);
    ucall::sync(gp_seen);
}

/// Reports the address of a stack variable and of a function (for KVM_TRANSLATE).
VCPU_GUEST_CODE void translate_guest() {
    volatile u64 local = 7;
    ucall::sync(reinterpret_cast<u64>(&local), reinterpret_cast<u64>(&nmi_guest));
    local = local + 1;
}

} // namespace

// Labels in the debug guest's code (defined by its asm, global and hidden so the host can take
// their addresses).
extern "C" {
extern const char vcpu_dbg_ss_start[], vcpu_dbg_ss_2[], vcpu_dbg_ss_3[], vcpu_dbg_ss_end[];
extern const char vcpu_dbg_sw_bp[], vcpu_dbg_hw_bp[], vcpu_dbg_after_write[];
}

namespace {

inline constinit u64 watched = 0; // aligned, in the guest's copy of the data

/// Five stages, a sync before each, for the host to change the debug setup between them.
[[gnu::noinline]] VCPU_GUEST_CODE void debug_guest() {
    ucall::sync(u64{1}); // single-step over the four instructions
    asm volatile(".globl vcpu_dbg_ss_start\n.hidden vcpu_dbg_ss_start\nvcpu_dbg_ss_start:\n"
                 "nop\n"
                 ".globl vcpu_dbg_ss_2\n.hidden vcpu_dbg_ss_2\nvcpu_dbg_ss_2:\n"
                 "movl $0x1234, %%eax\n"
                 ".globl vcpu_dbg_ss_3\n.hidden vcpu_dbg_ss_3\nvcpu_dbg_ss_3:\n"
                 "addl %%eax, %%eax\n"
                 ".globl vcpu_dbg_ss_end\n.hidden vcpu_dbg_ss_end\nvcpu_dbg_ss_end:\n"
                 "nop\n" ::
                     : "eax");
    ucall::sync(u64{2}); // int3 as a software breakpoint
    asm volatile(".globl vcpu_dbg_sw_bp\n.hidden vcpu_dbg_sw_bp\nvcpu_dbg_sw_bp:\nint3\n" ::: "memory");
    ucall::sync(u64{3}); // hardware instruction breakpoint
    asm volatile(".globl vcpu_dbg_hw_bp\n.hidden vcpu_dbg_hw_bp\nvcpu_dbg_hw_bp:\nnop\n" ::: "memory");
    ucall::sync(u64{4}); // write watchpoint on `watched`
    asm volatile("movq $0x5678, %0\n"
                 ".globl vcpu_dbg_after_write\n.hidden vcpu_dbg_after_write\nvcpu_dbg_after_write:\n"
                 : "=m"(watched)::"memory");
    ucall::sync(u64{5}, watched);
}

u64 addr(const void* p) { return reinterpret_cast<u64>(p); }

} // namespace

// ---- system ---------------------------------------------------------------------------------

TEST_CASE("x86 calls: typed capability queries agree with each other and with the raw answers") {
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    auto max = sys->max_vcpus();
    auto id = sys->max_vcpu_id();
    auto nr = sys->nr_vcpus();
    auto slots = sys->nr_memslots();
    REQUIRE(max);
    REQUIRE(id);
    REQUIRE(nr);
    REQUIRE(slots);
    CHECK(*nr >= 1);
    CHECK(*max >= *nr); // KVM API: NR_VCPUS is the recommended, MAX_VCPUS the hard limit
    CHECK(*id >= *max);
    CHECK(*slots >= 32); // x86 KVM has had at least 32 slots since the capability exists
    CHECK(static_cast<int>(*max) == *sys->check_extension(KVM_CAP_MAX_VCPUS));
    // arm64-only capabilities answer 0 on an x86 host, typed as "absent".
    CHECK(*sys->arm_vm_ipa_size() == 0);
    CHECK(*sys->guest_debug_hw_bps() == 0);
    CHECK(*sys->guest_debug_hw_wps() == 0);
    auto types = sys->vm_types();
    REQUIRE(types);
    CHECK(types->contains(kvm::x86_vm_type::default_vm));
    // Every type listed is creatable; the default one is, whatever the capability says.
    auto vm = sys->create_vm(static_cast<unsigned long>(kvm::x86_vm_type::default_vm));
    CHECK_MESSAGE(vm, vm.err().message());
}

TEST_CASE("x86 calls: require names every capability the host lacks in one error") {
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    const kvm::capability_need have[] = {VCPU_KVM_CAP(KVM_CAP_IRQCHIP), VCPU_KVM_CAP(KVM_CAP_USER_MEMORY),
                                         VCPU_KVM_CAP(KVM_CAP_NR_MEMSLOTS, 32)};
    auto ok = sys->require(have);
    CHECK_MESSAGE(ok, ok.err().message());
    // Two impossible needs between two real ones: both named, in order, with the host's answers.
    const kvm::capability_need mixed[] = {VCPU_KVM_CAP(KVM_CAP_IRQCHIP), VCPU_KVM_CAP(KVM_CAP_NR_MEMSLOTS, 1 << 30),
                                          VCPU_KVM_CAP(KVM_CAP_USER_MEMORY), VCPU_KVM_CAP(KVM_CAP_ARM_VM_IPA_SIZE)};
    std::array<kvm::capability_need, 4> lacking{};
    std::size_t count = 0;
    auto r = sys->require(mixed, lacking, &count);
    REQUIRE(!r);
    CHECK(r.err().code == EOPNOTSUPP);
    CHECK(count == 2);
    CHECK(std::string(lacking[0].name) == "KVM_CAP_NR_MEMSLOTS");
    CHECK(std::string(lacking[1].name) == "KVM_CAP_ARM_VM_IPA_SIZE");
    const std::string msg = r.err().message();
    CHECK_MESSAGE(msg.find("KVM_CAP_NR_MEMSLOTS=") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("KVM_CAP_ARM_VM_IPA_SIZE=0") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("lacking=2") != std::string::npos, msg);
    CHECK(msg.find("KVM_CAP_IRQCHIP") == std::string::npos);
}

TEST_CASE("x86 calls: feature MSRs are listed and readable on the system fd; emulated CPUID") {
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    if (!sys->has_extension(KVM_CAP_GET_MSR_FEATURES)) {
        skipped("the host has no KVM_CAP_GET_MSR_FEATURES");
    } else {
        auto list = sys->msr_feature_index_list();
        REQUIRE_MESSAGE(list, list.err().message());
        REQUIRE(!list->empty());
        std::vector<vcpu::x86_64::msr_entry> e;
        for (auto i : *list) e.push_back({i, 0, 0});
        auto n = sys->get_feature_msrs(e);
        REQUIRE_MESSAGE(n, n.err().message());
        CHECK(*n == e.size()); // every listed feature MSR reads
    }
    auto em = sys->emulated_cpuid();
    REQUIRE_MESSAGE(em, em.err().message());
    REQUIRE(!em->empty());
    // KVM emulates MOVBE (CPUID.01H:ECX[22]) on every x86 host (arch/x86/kvm/cpuid.c).
    auto leaf1 = std::find_if(em->begin(), em->end(), [](const auto& x) { return x.function == 1; });
    REQUIRE(leaf1 != em->end());
    CHECK((leaf1->ecx >> 22 & 1) == 1);
}

// ---- vCPU -----------------------------------------------------------------------------------

TEST_CASE("x86 calls: KVM_GET_CPUID2 returns what KVM_SET_CPUID2 set, sized by E2BIG") {
    auto m = machine(true);
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    std::vector<vcpu::x86_64::cpuid_entry> supported(256);
    auto n = cpu.supported_cpuid(supported);
    REQUIRE_MESSAGE(n, n.err().message());
    auto got = kvm::get_cpuid2(cpu);
    REQUIRE_MESSAGE(got, got.err().message());
    CHECK(got->size() > 64); // more than the first buffer: the E2BIG growth ran
    // cpuid_setup set the supported leaves plus the KVM signature leaf "KVMKVMKVM".
    auto sig = std::find_if(got->begin(), got->end(), [](const auto& e) { return e.function == 0x40000000u; });
    REQUIRE(sig != got->end());
    char name[13] = {};
    std::memcpy(name, &sig->ebx, 4);
    std::memcpy(name + 4, &sig->ecx, 4);
    std::memcpy(name + 8, &sig->edx, 4);
    CHECK(std::string(name) == "KVMKVMKVM");
    for (std::size_t i = 0; i < *n; ++i) {
        const auto& s = supported[i];
        CAPTURE(s.function);
        CAPTURE(s.index);
        CHECK(std::any_of(got->begin(), got->end(),
                          [&](const auto& e) { return e.function == s.function && e.index == s.index; }));
    }
    // Set a smaller CPUID and read it back exactly.
    std::vector<vcpu::x86_64::cpuid_entry> small(supported.begin(), supported.begin() + 3);
    auto m2 = kvm::vm_init_x86_64(kvm::x86_64_options{.ram_bytes = std::size_t{16} << 20, .irqchip = false, .pit = false});
    REQUIRE_MESSAGE(m2, m2.err().message());
    REQUIRE(m2->vcpus[0].hal().set_cpuid(small));
    auto back = kvm::get_cpuid2(m2->vcpus[0].hal());
    REQUIRE_MESSAGE(back, back.err().message());
    // Every entry set comes back (KVM may add the XSAVE sub-leaves it derives itself).
    CHECK(back->size() >= 3);
    for (const auto& s : small)
        CHECK(std::any_of(back->begin(), back->end(), [&](const auto& e) {
            return e.function == s.function && e.index == s.index && e.eax == s.eax;
        }));
}

TEST_CASE("x86 calls: KVMCLOCK_CTRL needs the guest's kvmclock; then it succeeds") {
    auto m = machine(true);
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    auto before = kvm::kvmclock_ctrl(cpu);
    REQUIRE(!before);
    CHECK(before.err().code == EINVAL);
    CHECK(std::string(before.err().op) == "KVM_KVMCLOCK_CTRL");
    CHECK(before.err().message().find("not enabled kvmclock") != std::string::npos);
    // Enable kvmclock as a guest would: MSR_KVM_SYSTEM_TIME_NEW = page | enable.
    const vcpu::x86_64::msr_entry clock{0x4b564d01u, 0, 0x100000u | 1u};
    auto w = kvm::set_msrs(cpu, std::span(&clock, 1));
    REQUIRE_MESSAGE(w, w.err().message());
    REQUIRE(*w == 1);
    auto after = kvm::kvmclock_ctrl(cpu);
    CHECK_MESSAGE(after, after.err().message());
}

TEST_CASE("x86 calls: an NMI queued with KVM_NMI runs the guest's NMI handler") {
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = load(*m, &nmi_guest);
    CHECK(next_sync(*m, space) == std::vector<u64>{0});
    auto r = kvm::inject_nmi(m->vcpus[0].hal());
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(next_sync(*m, space) == std::vector<u64>{1});
}

TEST_CASE("x86 calls: KVM_INTERRUPT delivers a vector without the in-kernel irqchip, and is refused with it") {
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = load(*m, &irq_guest);
    CHECK(next_sync(*m, space) == std::vector<u64>{0});
    auto r = kvm::inject_interrupt(m->vcpus[0].hal(), irq_vector);
    REQUIRE_MESSAGE(r, r.err().message());
    CHECK(next_sync(*m, space) == std::vector<u64>{irq_vector});

    auto with_chip = machine(true);
    REQUIRE_MESSAGE(with_chip, with_chip.err().message());
    auto refused = kvm::inject_interrupt(with_chip->vcpus[0].hal(), irq_vector);
    REQUIRE(!refused);
    CHECK(refused.err().code == ENXIO);
    const std::string msg = refused.err().message();
    CHECK_MESSAGE(msg.find("KVM_INTERRUPT") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("vector=64") != std::string::npos, msg);
}

TEST_CASE("x86 calls: KVM_SMI marks an SMI pending (KVM_CAP_X86_SMM)") {
    auto m = machine(true);
    REQUIRE_MESSAGE(m, m.err().message());
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto& cpu = m->vcpus[0].hal();
    if (!sys->has_extension(KVM_CAP_X86_SMM)) {
        auto r = kvm::inject_smi(cpu);
        CHECK(!r); // without the capability KVM refuses it, by name
        if (!r) CHECK(std::string(r.err().op) == "KVM_SMI");
        skipped("the host has no KVM_CAP_X86_SMM (PVM): only the refusal is checked");
        return;
    }
    auto ev = kvm::get_vcpu_events(cpu);
    REQUIRE(ev);
    CHECK(ev->smi.pending == 0);
    REQUIRE(kvm::inject_smi(cpu));
    ev = kvm::get_vcpu_events(cpu);
    REQUIRE(ev);
    CHECK(ev->smi.pending == 1);
}

TEST_CASE("x86 calls: KVM_TRANSLATE walks the guest's page tables") {
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = load(*m, &translate_guest);
    const auto s = next_sync(*m, space);
    REQUIRE(s.size() == 2);
    auto& cpu = m->vcpus[0].hal();
    auto stack = kvm::translate(cpu, s[0]);
    REQUIRE_MESSAGE(stack, stack.err().message());
    CHECK(stack->valid);
    CHECK(stack->gpa == s[0]); // the stack is identity-mapped below 4 GiB
    auto code = kvm::translate(cpu, s[1]);
    REQUIRE_MESSAGE(code, code.err().message());
    CHECK(code->valid);
    CHECK(code->gpa >= gx::layout{}.image);
    CHECK(code->gpa < m->ram.bytes().size());
    CHECK((code->gpa & 0xfff) == (s[1] & 0xfff));
    auto none = kvm::translate(cpu, u64{1} << 45);
    REQUIRE_MESSAGE(none, none.err().message());
    CHECK(!none->valid);
}

TEST_CASE("x86 calls: vCPU KVM_ENABLE_CAP, typed: enforcing PV CPUID makes the guest's kvmclock MSR fault") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    // The guest's CPUID hides the KVM paravirtual feature leaf: with enforcement on, the
    // kvmclock MSR it writes is refused (#GP); without, it is accepted.
    auto run = [](bool enforce) -> u64 {
        kvm::x86_64_options o;
        o.ram_bytes = std::size_t{64} << 20;
        o.irqchip = o.pit = false;
        auto m = kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<vcpu::x86_64::hide_leaf>{0, {0x40000001u}});
        REQUIRE_MESSAGE(m, m.err().message());
        if (enforce) {
            auto e = kvm::enable_cap(m->vcpus[0].hal(), KVM_CAP_ENFORCE_PV_FEATURE_CPUID, {1});
            REQUIRE_MESSAGE(e, e.err().message());
        }
        auto space = load(*m, &pv_msr_guest);
        const auto s = next_sync(*m, space);
        REQUIRE(s.size() == 1);
        return s[0];
    };
    if (!sys->has_extension(KVM_CAP_ENFORCE_PV_FEATURE_CPUID)) {
        skipped("the host has no KVM_CAP_ENFORCE_PV_FEATURE_CPUID");
    } else {
        CHECK(run(false) == 0);
        CHECK(run(true) == 1);
    }
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    auto bad = kvm::enable_cap(cpu, KVM_CAP_NR_VCPUS, {});
    REQUIRE(!bad);
    CHECK(bad.err().code == EINVAL);
    CHECK(std::string(bad.err().op) == "KVM_ENABLE_CAP");
    CHECK(bad.err().message().find("cap=9") != std::string::npos);
    const std::uint64_t five[] = {1, 2, 3, 4, 5};
    auto many = kvm::enable_cap(cpu, KVM_CAP_ENFORCE_PV_FEATURE_CPUID, five);
    REQUIRE(!many);
    CHECK(many.err().code == EINVAL);
}

TEST_CASE("x86 calls: nested state round-trips where KVM_CAP_NESTED_STATE exists") {
    auto m = machine(true);
    REQUIRE_MESSAGE(m, m.err().message());
    auto& cpu = m->vcpus[0].hal();
    auto size = kvm::nested_state_size(cpu);
    REQUIRE_MESSAGE(size, size.err().message());
    if (*size == 0) {
        skipped("the host has no KVM_CAP_NESTED_STATE (PVM has none; the nested x86 machine runs this for real)");
        return;
    }
    auto st = kvm::get_nested_state(cpu, *size);
    REQUIRE_MESSAGE(st, st.err().message());
    CHECK(st->size() >= 128);
    CHECK(st->size() <= *size);
    CHECK((st->format() == KVM_STATE_NESTED_FORMAT_VMX || st->format() == KVM_STATE_NESTED_FORMAT_SVM));
    MESSAGE("nested state: format " << st->format() << ", " << st->size() << " of " << *size << " bytes");
    auto set = kvm::set_nested_state(cpu, *st);
    CHECK_MESSAGE(set, set.err().message());
    auto again = kvm::get_nested_state(cpu, *size);
    REQUIRE(again);
    CHECK(again->words == st->words);
    // Too small a buffer: EINVAL up front, never a short kernel write.
    auto tiny = kvm::get_nested_state(cpu, 16);
    REQUIRE(!tiny);
    CHECK(tiny.err().code == EINVAL);
}

// ---- guest debug ----------------------------------------------------------------------------

TEST_CASE("x86 calls debug: guest-debug setups are checked before the ioctl") {
    kvm::guest_debug g;
    g.hw[2] = {true, 0x1000, kvm::breakpoint_type::execute, kvm::breakpoint_length::four};
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto r = kvm::set_guest_debug(m->vcpus[0].hal(), g);
    REQUIRE(!r);
    CHECK(r.err().code == EINVAL);
    CHECK(r.err().message().find("slot=2") != std::string::npos);
    g.hw[2] = {true, 0x1002, kvm::breakpoint_type::write, kvm::breakpoint_length::four};
    r = kvm::set_guest_debug(m->vcpus[0].hal(), g);
    REQUIRE(!r);
    CHECK(r.err().message().find("aligned") != std::string::npos);
}

TEST_CASE("x86 calls debug: single step, int3, hardware breakpoint and write watchpoint stop at the right addresses") {
    auto m = machine(false);
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = load(*m, &debug_guest);
    auto& cpu = m->vcpus[0];
    auto& hal = cpu.hal();
    const bool pvm = kvm::describe_host().kind == kvm::host_kind::pvm;
    REQUIRE(next_sync(*m, space) == std::vector<u64>{1});

    // 1. Single step: every RIP from here to the end label, the four instructions among them.
    {
        kvm::guest_debug g;
        g.single_step = true;
        g.block_irq = true;
        auto r = kvm::set_guest_debug(hal, g);
        REQUIRE_MESSAGE(r, r.err().message());
        std::vector<u64> rips;
        bool reached = false;
        for (int i = 0; i < 200 && !reached; ++i) {
            auto e = next_exit(*m, space);
            const auto* d = std::get_if<vcpu::debug>(&e);
            if (d == nullptr) {
                FAIL_CHECK("single step: expected a debug exit, got variant index " << e.index());
                break;
            }
            CHECK(d->exception == 1);                // #DB
            CHECK((d->status >> 14 & 1) == 1);      // DR6.BS: single step
            rips.push_back(d->pc);
            reached = d->pc == addr(vcpu_dbg_ss_end);
        }
        REQUIRE(reached);
        auto at = std::find(rips.begin(), rips.end(), addr(vcpu_dbg_ss_start));
        REQUIRE(at != rips.end());
        const std::vector<u64> want{addr(vcpu_dbg_ss_start), addr(vcpu_dbg_ss_2), addr(vcpu_dbg_ss_3),
                                    addr(vcpu_dbg_ss_end)};
        CHECK(std::vector<u64>(at, rips.end()) == want);
        CHECK(addr(vcpu_dbg_ss_2) - addr(vcpu_dbg_ss_start) == 1); // nop
        CHECK(addr(vcpu_dbg_ss_3) - addr(vcpu_dbg_ss_2) == 5);     // mov $imm32, %eax
        MESSAGE("single-stepped " << rips.size() << " instructions from the sync to the end label");
        REQUIRE(kvm::set_guest_debug(hal, kvm::guest_debug{.enable = false}));
        REQUIRE(next_sync(*m, space) == std::vector<u64>{2});
    }
    // 2. int3: a #BP debug exit at the int3; move past it and go on.
    {
        kvm::guest_debug g;
        g.software_breakpoints = true;
        REQUIRE(kvm::set_guest_debug(hal, g));
        auto e = next_exit(*m, space);
        if (const auto* f = std::get_if<vcpu::x86_64::emulation_failure>(&e);
            pvm && f != nullptr && !f->insn.empty() && f->insn[0] == 0xcc) {
            // PVM runs guest CPL0 code through KVM's emulator, which cannot run int3; the nested
            // x86 machine runs this part for real.
            skipped("int3 at guest CPL0 is an emulation failure on this host (PVM), not a #BP debug exit");
        } else {
            const auto* d = std::get_if<vcpu::debug>(&e);
            if (d == nullptr) {
                FAIL("int3: expected a debug exit, got variant index " << e.index());
            }
            CHECK(d->exception == 3);
            CHECK(d->pc == addr(vcpu_dbg_sw_bp));
        }
        auto rip = cpu.get(vcpu::x86_64::rip);
        REQUIRE(rip);
        CHECK(*rip == addr(vcpu_dbg_sw_bp));
        REQUIRE(cpu.set(vcpu::x86_64::rip, *rip + 1));
        REQUIRE(kvm::set_guest_debug(hal, kvm::guest_debug{.enable = false}));
        REQUIRE(next_sync(*m, space) == std::vector<u64>{3});
    }
    // 3. Hardware instruction breakpoint in DR0.
    {
        kvm::guest_debug g;
        g.hw[0] = {true, addr(vcpu_dbg_hw_bp), kvm::breakpoint_type::execute, kvm::breakpoint_length::one};
        REQUIRE(kvm::set_guest_debug(hal, g));
        auto e = next_exit(*m, space);
        const auto* d = std::get_if<vcpu::debug>(&e);
        if (d == nullptr) {
            FAIL("hardware breakpoint: expected a debug exit, got variant index " << e.index());
        }
        CHECK(d->exception == 1);
        CHECK(d->pc == addr(vcpu_dbg_hw_bp));
        CHECK((d->status & 0xf) == 0x1); // DR6.B0
        CHECK((d->control & 0x3) != 0);  // DR7.L0/G0 armed
        REQUIRE(kvm::set_guest_debug(hal, kvm::guest_debug{.enable = false}));
        REQUIRE(next_sync(*m, space) == std::vector<u64>{4});
    }
    // 4. Write watchpoint in DR1 on `watched`: a trap after the store.
    {
        kvm::guest_debug g;
        g.hw[1] = {true, addr(&watched), kvm::breakpoint_type::write, kvm::breakpoint_length::eight};
        REQUIRE(kvm::set_guest_debug(hal, g));
        auto e = next_exit(*m, space);
        const auto* s = std::get_if<vcpu::guest::sync>(&e);
        if (pvm && s != nullptr && s->size() == 2 && (*s)[0] == 5) {
            // The store ran and the guest went on without a #DB: this host's KVM does not arm
            // data breakpoints for the guest; the nested x86 machine runs this part for real.
            CHECK((*s)[1] == 0x5678);
            skipped("a hardware write watchpoint does not fire on this host (PVM)");
            return;
        }
        const auto* d = std::get_if<vcpu::debug>(&e);
        if (d == nullptr) {
            FAIL("watchpoint: expected a debug exit, got variant index " << e.index());
        }
        CHECK(d->exception == 1);
        CHECK(d->pc == addr(vcpu_dbg_after_write));
        CHECK((d->status & 0xf) == 0x2); // DR6.B1
        REQUIRE(kvm::set_guest_debug(hal, kvm::guest_debug{.enable = false}));
        CHECK(next_sync(*m, space) == std::vector<u64>{5, 0x5678});
    }
}
