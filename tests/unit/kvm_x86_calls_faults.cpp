// The x86 vCPU and system calls of kvm/x86_64_calls.hpp, kvm/caps.hpp and kvm/system.hpp against a
// fake kernel (no /dev/kvm needed): what each passes to the kernel (the DR7 a guest-debug setup
// encodes, the buffers grown on E2BIG, the nested-state size retry, the capability arguments),
// and, with every call made to fail with several errnos, that the error names the ioctl, carries
// the injected errno and the values that explain it. The same calls run on real KVM in
// tests/guest/x86_64_calls.cpp.
#include <doctest/doctest.h>

#include <kvm/caps.hpp>
#include <kvm/kvm.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <linux/kvm.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;
namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;

/// A fake /dev/kvm answering the calls under test; `fail_code` fails with `fail_errno`.
struct fake {
    static constexpr int sys_fd = 2000, vm_fd = 2001, vcpu_fd = 2002;
    static inline unsigned long fail_code = 0;
    static inline int fail_errno = 0;
    static inline std::uint32_t cpuid_entries = 100;  ///< entries KVM_GET_CPUID2 / EMULATED_CPUID hold
    static inline std::uint32_t nested_needed = 4224; ///< bytes KVM_GET_NESTED_STATE writes
    static inline int nested_cap = 128;               ///< KVM_CAP_NESTED_STATE's (too small) answer
    static inline int cpuid_calls = 0;
    static inline ::kvm_guest_debug debug{};
    static inline ::kvm_enable_cap cap{};
    static inline std::uint32_t interrupt = 0;
    static inline int nmis = 0, smis = 0;
    static inline x86::events_layout events{};

    static void reset() {
        fail_code = 0;
        fail_errno = 0;
        cpuid_entries = 100;
        nested_needed = 4224;
        nested_cap = 128;
        cpuid_calls = 0;
        debug = {};
        cap = {};
        interrupt = 0;
        nmis = smis = 0;
        events = {};
    }
    static int open(const char*, int) noexcept { return sys_fd; }
    static int close(int) noexcept { return 0; }
    static int eventfd(unsigned, int) noexcept { return -1; }
    static void* mmap(void* a, std::size_t n, int prot, int, int, off_t) noexcept {
        return ::mmap(a, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    static int munmap(void* a, std::size_t n) noexcept { return ::munmap(a, n); }

    static int fill_cpuid(void* arg) noexcept {
        ++cpuid_calls;
        std::uint32_t nent = 0;
        std::memcpy(&nent, arg, 4);
        if (nent < cpuid_entries) {
            errno = E2BIG; // as KVM: the count is not written back
            return -1;
        }
        std::memcpy(arg, &cpuid_entries, 4);
        auto* e = static_cast<std::byte*>(arg) + 8;
        for (std::uint32_t i = 0; i < cpuid_entries; ++i) {
            x86::cpuid_entry c{};
            c.function = i;
            c.eax = i * 3;
            std::memcpy(e + i * sizeof c, &c, sizeof c);
        }
        return 0;
    }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_code) {
            errno = fail_errno;
            return -1;
        }
        const auto n = reinterpret_cast<std::uintptr_t>(arg);
        if (fd == sys_fd) {
            switch (req) {
            case KVM_GET_API_VERSION: return KVM_API_VERSION;
            case KVM_GET_VCPU_MMAP_SIZE: return static_cast<int>(2 * ::sysconf(_SC_PAGESIZE));
            case KVM_CREATE_VM: return vm_fd;
            case KVM_CHECK_EXTENSION:
                switch (n) {
                case KVM_CAP_NESTED_STATE: return nested_cap;
                case KVM_CAP_MAX_VCPUS: return 0; // absent: falls back to NR_VCPUS
                case KVM_CAP_NR_VCPUS: return 8;
                case KVM_CAP_MAX_VCPU_ID: return 0;
                case KVM_CAP_NR_MEMSLOTS: return 509;
                case KVM_CAP_IRQCHIP: return 1;
                default: return 0;
                }
            default: break;
            }
            if (req == kvm::ioctls::system::get_emulated_cpuid.code) return fill_cpuid(arg);
            if (req == kvm::ioctls::system::get_msr_feature_index_list.code) {
                std::uint32_t room = 0;
                std::memcpy(&room, arg, 4);
                const std::uint32_t want = 3;
                std::memcpy(arg, &want, 4);
                if (room < want) {
                    errno = E2BIG;
                    return -1;
                }
                const std::uint32_t idx[] = {0x10a, 0x345, 0xc0011029};
                std::memcpy(static_cast<std::byte*>(arg) + 4, idx, sizeof idx);
                return 0;
            }
            if (req == kvm::ioctls::system::get_feature_msrs.code) {
                std::uint32_t count = 0;
                std::memcpy(&count, arg, 4);
                auto* e = static_cast<std::byte*>(arg) + 8;
                for (std::uint32_t i = 0; i < count; ++i) {
                    const std::uint64_t v = 0xfeed0000u + i;
                    std::memcpy(e + i * 16 + 8, &v, 8);
                }
                return static_cast<int>(count);
            }
            errno = ENOTTY;
            return -1;
        }
        if (fd == vm_fd) {
            if (req == KVM_CHECK_EXTENSION) return 0;
            if (req == KVM_CREATE_VCPU) return vcpu_fd;
            errno = ENOTTY;
            return -1;
        }
        if (fd != vcpu_fd) {
            errno = EBADF;
            return -1;
        }
        switch (req) {
        case KVM_GET_REGS: std::memset(arg, 0, sizeof(x86::regs_layout)); return 0;
        case KVM_GET_SREGS: std::memset(arg, 0, sizeof(x86::sregs_layout)); return 0;
        case KVM_SET_REGS:
        case KVM_SET_SREGS: return 0;
        case KVM_GET_VCPU_EVENTS: std::memcpy(arg, &events, sizeof events); return 0;
        case KVM_SET_VCPU_EVENTS: std::memcpy(&events, arg, sizeof events); return 0;
        case KVM_KVMCLOCK_CTRL: return 0;
        case KVM_NMI:
            ++nmis;
            events.nmi.pending = 1;
            return 0;
        case KVM_SMI:
            ++smis;
            events.smi.pending = 1;
            return 0;
        case KVM_INTERRUPT: std::memcpy(&interrupt, arg, 4); return 0;
        case KVM_SET_GUEST_DEBUG: std::memcpy(&debug, arg, sizeof debug); return 0;
        case KVM_ENABLE_CAP: std::memcpy(&cap, arg, sizeof cap); return 0;
        case KVM_TRANSLATE: {
            ::kvm_translation t{};
            std::memcpy(&t, arg, sizeof t);
            t.physical_address = t.linear_address & 0xffffffffu;
            t.valid = t.linear_address < (std::uint64_t{1} << 40);
            t.writeable = 1;
            std::memcpy(arg, &t, sizeof t);
            return 0;
        }
        case KVM_GET_NESTED_STATE: {
            ::kvm_nested_state h{};
            std::memcpy(&h, arg, sizeof h);
            if (h.size < nested_needed) {
                h.size = nested_needed; // as KVM: the size it needs, and E2BIG
                std::memcpy(arg, &h, sizeof h);
                errno = E2BIG;
                return -1;
            }
            h.format = KVM_STATE_NESTED_FORMAT_SVM;
            h.flags = KVM_STATE_NESTED_GUEST_MODE;
            h.size = nested_needed;
            std::memcpy(arg, &h, sizeof h);
            std::memset(static_cast<std::byte*>(arg) + sizeof h, 0x5a, nested_needed - sizeof h);
            return 0;
        }
        case KVM_SET_NESTED_STATE: return 0;
        default: break;
        }
        if (req == kvm::ioctls::vcpu::get_cpuid2.code) return fill_cpuid(arg);
        errno = ENOTTY;
        return -1;
    }
};
static_assert(kvm::SysPolicy<fake>);

struct fixture {
    struct resetter {
        resetter() { fake::reset(); } // before the members below talk to the fake
    } reset_first;
    kvm::basic_system<fake> sys = *kvm::basic_system<fake>::open();
    kvm::basic_vm<fake> vm = *sys.create_vm();
    vcpu::basic_vcpu<arch, kvm::basic_hal<fake>> whole = std::move(*vm.create_vcpu<arch>(0, {}));
    kvm::hal_vcpu<fake, arch>& cpu = whole.hal();
    fixture() = default;
    fixture(const fixture&) = delete;
    fixture& operator=(const fixture&) = delete;
};

} // namespace

TEST_CASE("kvm x86 calls (fake kernel): typed capability queries and their fallbacks") {
    fixture f;
    CHECK(*f.sys.max_vcpus() == 8); // MAX_VCPUS absent: NR_VCPUS
    CHECK(*f.sys.max_vcpu_id() == 8);
    CHECK(*f.sys.nr_vcpus() == 8);
    CHECK(*f.sys.nr_memslots() == 509);
    CHECK(*f.sys.arm_vm_ipa_size() == 0);
    CHECK(f.sys.vm_types()->contains(kvm::x86_vm_type::default_vm)); // absent: the default only
    CHECK(!f.sys.vm_types()->contains(kvm::x86_vm_type::sev));
    const kvm::capability_need needs[] = {VCPU_KVM_CAP(KVM_CAP_IRQCHIP), VCPU_KVM_CAP(KVM_CAP_X86_SMM),
                                          VCPU_KVM_CAP(KVM_CAP_NR_MEMSLOTS, 1024), VCPU_KVM_CAP(KVM_CAP_XSAVE)};
    auto r = f.sys.require(needs);
    REQUIRE(!r);
    const std::string msg = r.err().message();
    CHECK_MESSAGE(msg.find("lacking=3, KVM_CAP_X86_SMM=0, KVM_CAP_NR_MEMSLOTS=509, KVM_CAP_XSAVE=0") != std::string::npos,
                  msg);
    // A failing query counts as lacking, with -1.
    fake::fail_code = KVM_CHECK_EXTENSION;
    fake::fail_errno = EIO;
    auto q = f.sys.require(std::span(needs).first(1));
    REQUIRE(!q);
    CHECK(q.err().message().find("KVM_CAP_IRQCHIP=-1") != std::string::npos);
    auto m = f.sys.max_vcpus();
    REQUIRE(!m);
    CHECK(m.err().code == EIO);
    CHECK(m.err().message().find("cap=") != std::string::npos);
}

TEST_CASE("kvm x86 calls (fake kernel): CPUID lists grow on E2BIG; MSR feature list asks for its size") {
    fixture f;
    auto c = kvm::get_cpuid2(f.cpu);
    REQUIRE_MESSAGE(c, c.err().message());
    CHECK(c->size() == 100);
    CHECK((*c)[99].eax == 297);
    CHECK(fake::cpuid_calls == 2); // 64 (E2BIG), then 128
    fake::cpuid_entries = 5000;     // more than the library accepts
    auto big = f.sys.emulated_cpuid();
    REQUIRE(!big);
    CHECK(big.err().code == E2BIG);
    CHECK(std::string(big.err().op) == "KVM_GET_EMULATED_CPUID");
    auto all = f.sys.msr_index_list(); // same kvm_msr_list protocol, on the fake's feature list
    CHECK(!all); // the fake has no KVM_GET_MSR_INDEX_LIST: ENOTTY, named
    if (!all) CHECK(std::string(all.err().op) == "KVM_GET_MSR_INDEX_LIST");
    auto list = f.sys.msr_feature_index_list();
    REQUIRE_MESSAGE(list, list.err().message());
    CHECK(*list == std::vector<std::uint32_t>{0x10a, 0x345, 0xc0011029});
    std::vector<x86::msr_entry> e{{0x10a, 0, 0}, {0x345, 0, 0}};
    auto n = f.sys.get_feature_msrs(e);
    REQUIRE(n);
    CHECK(*n == 2);
    CHECK(e[1].data == 0xfeed0001u);
}

TEST_CASE("kvm x86 calls (fake kernel): guest debug encodes DR7 and the control word") {
    fixture f;
    kvm::guest_debug g;
    g.single_step = true;
    g.hw[1] = {true, 0x1000, kvm::breakpoint_type::write, kvm::breakpoint_length::eight};
    g.hw[3] = {true, 0x2002, kvm::breakpoint_type::read_write, kvm::breakpoint_length::two};
    REQUIRE(kvm::set_guest_debug(f.cpu, g));
    CHECK(fake::debug.control == (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_HW_BP));
    CHECK(fake::debug.arch.debugreg[1] == 0x1000);
    CHECK(fake::debug.arch.debugreg[3] == 0x2002);
    // L1 (bit 2), L3 (bit 6), bit 10; R/W1 = 01 at 20, LEN1 = 10 at 22; R/W3 = 11 at 28, LEN3 = 01 at 30.
    CHECK(fake::debug.arch.debugreg[7] ==
          ((1u << 2) | (1u << 6) | (1u << 10) | (1u << 20) | (2u << 22) | (3u << 28) | (1ull << 30)));
    kvm::guest_debug sw;
    sw.software_breakpoints = true;
    REQUIRE(kvm::set_guest_debug(f.cpu, sw));
    CHECK(fake::debug.control == (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP));
    CHECK(fake::debug.arch.debugreg[7] == 0);
    REQUIRE(kvm::set_guest_debug(f.cpu, kvm::guest_debug{.enable = false}));
    CHECK(fake::debug.control == 0);
}

TEST_CASE("kvm x86 calls (fake kernel): nested state is re-read at the size KVM asks for") {
    fixture f;
    auto size = kvm::nested_state_size(f.cpu);
    REQUIRE(size);
    CHECK(*size == 128);
    auto st = kvm::get_nested_state(f.cpu, *size); // E2BIG with 4224 written: read again
    REQUIRE_MESSAGE(st, st.err().message());
    CHECK(st->size() == 4224);
    CHECK(st->format() == KVM_STATE_NESTED_FORMAT_SVM);
    CHECK(st->flags() == KVM_STATE_NESTED_GUEST_MODE);
    CHECK(st->bytes().size() == 4224);
    CHECK(static_cast<unsigned>(st->bytes()[4000]) == 0x5a);
    REQUIRE(kvm::set_nested_state(f.cpu, *st));
    kvm::nested_state bad;
    bad.words.assign(4, 0);
    auto r = kvm::set_nested_state(f.cpu, bad);
    REQUIRE(!r);
    CHECK(r.err().code == EINVAL);
}

TEST_CASE("kvm x86 calls (fake kernel): NMI/SMI refresh the events block; interrupt, translate, enable_cap") {
    fixture f;
    REQUIRE(kvm::get_vcpu_events(f.cpu)); // cached now
    REQUIRE(kvm::inject_nmi(f.cpu));
    CHECK(kvm::get_vcpu_events(f.cpu)->nmi.pending == 1); // not the stale cached copy
    REQUIRE(kvm::inject_smi(f.cpu));
    CHECK(kvm::get_vcpu_events(f.cpu)->smi.pending == 1);
    REQUIRE(kvm::inject_interrupt(f.cpu, 0x31));
    CHECK(fake::interrupt == 0x31);
    auto t = kvm::translate(f.cpu, 0x12'3456'7000);
    REQUIRE(t);
    CHECK(t->valid);
    CHECK(t->gpa == 0x3456'7000);
    CHECK(t->gva == 0x12'3456'7000);
    REQUIRE(kvm::enable_cap(f.cpu, KVM_CAP_HYPERV_SYNIC2, {1, 2}));
    CHECK(fake::cap.cap == KVM_CAP_HYPERV_SYNIC2);
    CHECK(fake::cap.args[0] == 1);
    CHECK(fake::cap.args[1] == 2);
    REQUIRE(kvm::kvmclock_ctrl(f.cpu));
}

TEST_CASE("kvm x86 calls (fake kernel): every call, failing, names its ioctl with the errno and its values") {
    namespace io = kvm::ioctls;
    struct call_case {
        unsigned long code;
        const char* name;
        const char* value; ///< a value name the error must carry ("" for none)
        std::function<vcpu::result<void>(fixture&)> call;
    };
    auto v = [](auto r) -> vcpu::result<void> {
        if (!r) return r.err();
        return vcpu::ok();
    };
    const std::vector<call_case> cases{
        {io::vcpu::get_cpuid2.code, "KVM_GET_CPUID2", "vcpu_id", [&](fixture& f) { return v(kvm::get_cpuid2(f.cpu)); }},
        {io::vcpu::kvmclock_ctrl.code, "KVM_KVMCLOCK_CTRL", "vcpu_id", [](fixture& f) { return kvm::kvmclock_ctrl(f.cpu); }},
        {io::vcpu::nmi.code, "KVM_NMI", "vcpu_id", [](fixture& f) { return kvm::inject_nmi(f.cpu); }},
        {io::vcpu::smi.code, "KVM_SMI", "vcpu_id", [](fixture& f) { return kvm::inject_smi(f.cpu); }},
        {io::vcpu::interrupt.code, "KVM_INTERRUPT", "vector", [](fixture& f) { return kvm::inject_interrupt(f.cpu, 0x20); }},
        {io::vcpu::translate.code, "KVM_TRANSLATE", "gva", [&](fixture& f) { return v(kvm::translate(f.cpu, 0x1000)); }},
        {io::vcpu::set_guest_debug.code, "KVM_SET_GUEST_DEBUG", "control",
         [](fixture& f) { return kvm::set_guest_debug(f.cpu, kvm::guest_debug{}); }},
        {io::vcpu::enable_cap.code, "KVM_ENABLE_CAP", "cap",
         [](fixture& f) { return kvm::enable_cap(f.cpu, KVM_CAP_HYPERV_SYNIC, {}); }},
        {io::vcpu::get_nested_state.code, "KVM_GET_NESTED_STATE", "size",
         [&](fixture& f) { return v(kvm::get_nested_state(f.cpu, 4224)); }},
        {io::vcpu::set_nested_state.code, "KVM_SET_NESTED_STATE", "size",
         [&](fixture& f) {
             auto s = kvm::get_nested_state(f.cpu, 4224);
             if (!s) return vcpu::result<void>(s.err());
             return kvm::set_nested_state(f.cpu, *s);
         }},
        {io::system::get_emulated_cpuid.code, "KVM_GET_EMULATED_CPUID", "entries",
         [&](fixture& f) { return v(f.sys.emulated_cpuid()); }},
        {io::system::get_msr_feature_index_list.code, "KVM_GET_MSR_FEATURE_INDEX_LIST", "",
         [&](fixture& f) { return v(f.sys.msr_feature_index_list()); }},
        {io::system::get_feature_msrs.code, "KVM_GET_MSRS", "msrs",
         [&](fixture& f) {
             std::vector<x86::msr_entry> e{{0x10a, 0, 0}};
             return v(f.sys.get_feature_msrs(e));
         }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(kvm::nested_state_size(f.cpu)); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.max_vcpus()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.max_vcpu_id()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.nr_vcpus()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.nr_memslots()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.arm_vm_ipa_size()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.vm_types()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.guest_debug_hw_bps()); }},
        {KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap", [&](fixture& f) { return v(f.sys.guest_debug_hw_wps()); }},
        {io::system::get_msr_index_list.code, "KVM_GET_MSR_INDEX_LIST", "", [&](fixture& f) { return v(f.sys.msr_index_list()); }},
        // The events block read around KVM_NMI: its failure is reported, by name.
        {KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", "vcpu_id", [](fixture& f) { return kvm::inject_nmi(f.cpu); }},
        {KVM_GET_REGS, "KVM_GET_REGS", "vcpu_id",
         [](fixture& f) { return kvm::set_guest_debug(f.cpu, kvm::guest_debug{}); }},
    };
    for (const auto& c : cases) {
        for (int e : {EINTR, EBADF, ENOMEM, EFAULT, EINVAL, ENXIO}) {
            CAPTURE(c.name);
            CAPTURE(e);
            fixture f;
            fake::fail_code = c.code;
            fake::fail_errno = e;
            auto r = c.call(f);
            fake::fail_code = 0;
            REQUIRE(!r);
            CHECK(std::string(r.err().op) == c.name);
            CHECK(r.err().code == e);
            if (c.value[0] != '\0') CHECK_MESSAGE(r.err().value(c.value).has_value(), r.err().message());
        }
    }
}

TEST_CASE("kvm x86 calls (fake kernel): bad arguments are refused before any ioctl") {
    fixture f;
    fake::fail_code = ~0ul; // nothing fails: a refusal below comes from the library
    kvm::guest_debug g;
    g.hw[0] = {true, 0x1001, kvm::breakpoint_type::write, kvm::breakpoint_length::two};
    auto r = kvm::set_guest_debug(f.cpu, g);
    REQUIRE(!r);
    CHECK(r.err().code == EINVAL);
    CHECK(r.err().value("slot") == 0u);
    CHECK(r.err().value("address") == 0x1001u);
    CHECK(fake::debug.control == 0); // never reached the kernel
    auto tiny = kvm::get_nested_state(f.cpu, 64);
    REQUIRE(!tiny);
    CHECK(tiny.err().code == EINVAL);
    const std::uint64_t five[] = {1, 2, 3, 4, 5};
    auto many = kvm::enable_cap(f.cpu, 1, five);
    REQUIRE(!many);
    CHECK(many.err().value("args") == 5u);
    CHECK(fake::cap.cap == 0);
}
#endif
