// The KVM HAL's bookkeeping (sync-register dirty tracking, the GET/SET fallback, the
// coalesced ring, EINTR, API version check) against a fake kernel Sys policy, so it is
// tested on hosts without /dev/kvm. tests/kvm/kvm_hal.cpp covers the same paths for real.
#include <doctest/doctest.h>

#include <kvm/kvm.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/registers.hpp>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include <linux/kvm.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;
namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;

/// A fake /dev/kvm: one VM, vCPUs whose "guest" adds 1 to RAX and halts on each run.
struct fake_kernel {
    static constexpr int sys_fd = 1000, vm_fd = 1001, vcpu_fd = 1002;
    static inline int api_version = KVM_API_VERSION;
    static inline std::uint64_t sync_caps = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    static inline int run_errno = 0;
    static inline x86::regs_layout regs{};
    static inline x86::sregs_layout sregs{};
    static inline std::array<int, 256> calls{};
    static inline ::kvm_run* run = nullptr;

    static std::size_t page() noexcept { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }
    static void reset() noexcept {
        api_version = KVM_API_VERSION;
        sync_caps = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
        run_errno = 0;
        regs = {};
        sregs = {};
        calls.fill(0);
        run = nullptr;
    }
    static int count(unsigned long req) noexcept { return calls[_IOC_NR(req) & 0xff]; }

    static int open(const char*, int) noexcept { return sys_fd; }
    static int close(int) noexcept { return 0; }
    static int eventfd(unsigned, int) noexcept { return -1; }
    static void* mmap(void* a, std::size_t n, int prot, int, int, off_t) noexcept {
        void* p = ::mmap(a, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) run = static_cast<::kvm_run*>(p);
        return p;
    }
    static int munmap(void* a, std::size_t n) noexcept { return ::munmap(a, n); }

    static void* sync(std::size_t off) noexcept {
        return reinterpret_cast<std::byte*>(&run->s) + off; // inside the fake mapping
    }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        ++calls[_IOC_NR(req) & 0xff];
        const auto cap = reinterpret_cast<std::uintptr_t>(arg);
        if (fd == sys_fd && req == KVM_GET_API_VERSION) return api_version;
        if (fd == sys_fd && req == KVM_GET_VCPU_MMAP_SIZE) return static_cast<int>(2 * page());
        if (fd == sys_fd && req == KVM_CREATE_VM) return vm_fd;
        if (fd == vm_fd && req == KVM_CHECK_EXTENSION)
            return cap == KVM_CAP_SYNC_REGS ? static_cast<int>(sync_caps)
                 : cap == KVM_CAP_COALESCED_MMIO ? 1 : 0;
        if (fd == vm_fd && req == KVM_CREATE_VCPU) return vcpu_fd;
        if (fd != vcpu_fd) { errno = EBADF; return -1; }
        if (req == KVM_RUN) return do_run();
        if (arg == nullptr) { errno = EFAULT; return -1; } // as the kernel would
        switch (req) {
        case KVM_GET_REGS: std::memcpy(arg, &regs, sizeof regs); return 0;
        case KVM_SET_REGS: std::memcpy(&regs, arg, sizeof regs); return 0;
        case KVM_GET_SREGS: std::memcpy(arg, &sregs, sizeof sregs); return 0;
        case KVM_SET_SREGS: std::memcpy(&sregs, arg, sizeof sregs); return 0;
        case KVM_GET_VCPU_EVENTS: std::memset(arg, 0, sizeof(x86::events_layout)); return 0;
        case KVM_GET_DEBUGREGS: std::memset(arg, 0, sizeof(x86::debugregs_layout)); return 0;
        case KVM_RUN: return do_run();
        default: errno = ENOTTY; return -1;
        }
    }
    static int do_run() noexcept {
        if (run->kvm_dirty_regs & KVM_SYNC_X86_REGS) std::memcpy(&regs, sync(0), sizeof regs);
        run->kvm_dirty_regs &= ~std::uint64_t{KVM_SYNC_X86_REGS};
        if (run->kvm_dirty_regs & KVM_SYNC_X86_SREGS) {
            x86::sregs_layout s{};
            std::memcpy(&s, sync(offsetof(x86::sync_regs_layout, sregs)), sizeof s);
            if (x86::invalid_state_reason(s) != nullptr) {
                // As KVM's sync_regs(): REGS applied, SREGS refused and left dirty, then
                // store_regs() writes the vCPU's own state over kvm_run::s.regs.
                std::memcpy(sync(0), &regs, sizeof regs);
                std::memcpy(sync(offsetof(x86::sync_regs_layout, sregs)), &sregs, sizeof sregs);
                errno = EINVAL;
                return -1;
            }
            sregs = s;
        }
        run->kvm_dirty_regs = 0;
        if (run_errno == 0) {
            regs.rax += 1;
            run->exit_reason = KVM_EXIT_HLT;
        }
        if (run->kvm_valid_regs & KVM_SYNC_X86_REGS) std::memcpy(sync(0), &regs, sizeof regs);
        if (run->kvm_valid_regs & KVM_SYNC_X86_SREGS)
            std::memcpy(sync(offsetof(x86::sync_regs_layout, sregs)), &sregs, sizeof sregs);
        if (run_errno != 0) {
            errno = run_errno;
            return -1;
        }
        return 0;
    }
};
static_assert(kvm::SysPolicy<fake_kernel>);
static_assert(vcpu::HalFor<kvm::basic_hal<fake_kernel>, arch>);

auto make_cpu(kvm::vcpu_options opt = {}) {
    auto sys = kvm::basic_system<fake_kernel>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto cpu = vm->create_vcpu<arch>(0, opt);
    REQUIRE(cpu);
    return std::move(*cpu);
}

} // namespace

TEST_CASE("kvm fake: an API version other than 12 is refused with EPROTO") {
    fake_kernel::reset();
    fake_kernel::api_version = 11;
    auto sys = kvm::basic_system<fake_kernel>::open();
    REQUIRE_FALSE(sys);
    CHECK(std::string(sys.err().op) == "KVM_GET_API_VERSION");
    CHECK(sys.err().code == EPROTO);
    fake_kernel::reset();
}

TEST_CASE("kvm fake: synced regs travel through kvm_run, with no GET/SET ioctls after a run") {
    fake_kernel::reset();
    fake_kernel::regs.rax = 100;
    auto cpu = make_cpu();
    CHECK(cpu.hal().sync_mask() == (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS));
    CHECK(fake_kernel::run->kvm_valid_regs == cpu.hal().sync_mask());
    // Before the first run: fetched with KVM_GET_REGS into kvm_run::s.regs, not dirty.
    auto a = cpu.get(x86::rax);
    REQUIRE(a);
    CHECK(*a == 100);
    CHECK(fake_kernel::count(KVM_GET_REGS) == 1);
    CHECK(fake_kernel::run->kvm_dirty_regs == 0);
    REQUIRE(cpu.set(x86::rax, 5));
    CHECK(fake_kernel::run->kvm_dirty_regs == KVM_SYNC_X86_REGS);
    CHECK(fake_kernel::count(KVM_GET_REGS) == 1); // cached
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::regs.rax == 6); // the kernel applied the dirty block, the guest ran
    fake_kernel::calls.fill(0);
    auto b = cpu.get(x86::rax);
    REQUIRE(b);
    CHECK(*b == 6);
    REQUIRE(cpu.set(x86::rbx, 7));
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::regs.rbx == 7);
    CHECK(fake_kernel::count(KVM_GET_REGS) == 0);
    CHECK(fake_kernel::count(KVM_SET_REGS) == 0);
    CHECK(fake_kernel::count(KVM_RUN) == 1);
}

TEST_CASE("kvm fake: without sync regs, dirty blocks are SET before KVM_RUN and caches drop") {
    fake_kernel::reset();
    auto cpu = make_cpu(kvm::vcpu_options{0});
    CHECK(cpu.hal().sync_mask() == 0);
    REQUIRE(cpu.set(x86::rax, 5));
    REQUIRE(cpu.set(x86::rcx, 9)); // same block: still one GET
    CHECK(fake_kernel::count(KVM_GET_REGS) == 1);
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::count(KVM_SET_REGS) == 1);
    CHECK(fake_kernel::regs.rcx == 9);
    REQUIRE(cpu.hal().enter()); // nothing dirty: no SET
    CHECK(fake_kernel::count(KVM_SET_REGS) == 1);
    auto a = cpu.get(x86::rax);
    REQUIRE(a);
    CHECK(*a == 7);
    CHECK(fake_kernel::count(KVM_GET_REGS) == 2); // refetched after the exits
}

TEST_CASE("kvm fake: the sync mask is what kernel, caller and arch all allow") {
    fake_kernel::reset();
    fake_kernel::sync_caps = KVM_SYNC_X86_REGS | (1u << 5); // an unknown extra bit is dropped
    auto cpu = make_cpu();
    CHECK(cpu.hal().sync_mask() == KVM_SYNC_X86_REGS);
    CHECK(cpu.hal().synced<x86::regs_block>());
    CHECK_FALSE(cpu.hal().synced<x86::sregs_block>());
    REQUIRE(cpu.set(x86::cr0, 0x11));
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::count(KVM_SET_SREGS) == 1);
    CHECK(fake_kernel::sregs.cr0 == 0x11);
    fake_kernel::reset();
    fake_kernel::sync_caps = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    auto cpu2 = make_cpu(kvm::vcpu_options{KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS});
    CHECK(cpu2.hal().sync_mask() == KVM_SYNC_X86_SREGS);
}

TEST_CASE("kvm fake: EINTR from KVM_RUN becomes KVM_EXIT_INTR; other errors name KVM_RUN") {
    fake_kernel::reset();
    auto cpu = make_cpu();
    fake_kernel::run_errno = EINTR;
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::run->exit_reason == KVM_EXIT_INTR);
    auto r = cpu.run([](vcpu::halt&) {});
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::interrupted>(*r));
    fake_kernel::run_errno = ENOMEM;
    auto e = cpu.hal().enter();
    REQUIRE_FALSE(e);
    CHECK(e.err().message() == "KVM_RUN failed: Cannot allocate memory (ENOMEM) (vcpu_id=0)");
}

TEST_CASE("kvm fake: coalesced ring drains in order, stops when the handler says so") {
    fake_kernel::reset();
    auto cpu = make_cpu();
    auto& h = cpu.hal();
    const auto cap = h.coalesced_ring_capacity();
    REQUIRE(cap == (fake_kernel::page() - 8) / 24);
    // Page 1 of the mapping: {first, last, entries[]}; start near the wrap-around.
    auto* ring = reinterpret_cast<std::byte*>(h.run()) + fake_kernel::page();
    auto put = [&](std::uint32_t i, std::uint64_t addr, std::uint32_t len, std::uint32_t pio,
                   std::uint64_t v) {
        ::kvm_coalesced_mmio e{};
        e.phys_addr = addr;
        e.len = len;
        e.pio = pio;
        std::memcpy(e.data, &v, sizeof v);
        std::memcpy(ring + 8 + i * sizeof e, &e, sizeof e);
    };
    const std::uint32_t first = cap - 2;
    put(cap - 2, 0x1000, 4, 0, 0xaabbccdd);
    put(cap - 1, 0x80, 1, 1, 0x12);
    put(0, 0x2000, 8, 0, 0x0102030405060708);
    const std::uint32_t idx[2] = {first, 1};
    std::memcpy(ring, idx, sizeof idx);

    std::vector<vcpu::coalesced_write> got;
    CHECK_FALSE(h.drain_coalesced([&](vcpu::coalesced_write& w) {
        got.push_back(w);
        return got.size() < 2; // stop after the second
    }));
    REQUIRE(got.size() == 2);
    CHECK(got[0].address == 0x1000);
    CHECK(got[0].value() == 0xaabbccdd);
    CHECK_FALSE(got[0].pio);
    CHECK(got[1].address == 0x80);
    CHECK(got[1].pio);
    CHECK(got[1].value() == 0x12);
    std::uint32_t now[2];
    std::memcpy(now, ring, sizeof now);
    CHECK(now[0] == 0); // wrapped
    CHECK(h.drain_coalesced([&](vcpu::coalesced_write& w) {
        got.push_back(w);
        return true;
    }));
    REQUIRE(got.size() == 3);
    CHECK(got[2].value() == 0x0102030405060708);
    // A length over 8 is clamped to the 8 data bytes KVM stores.
    put(1, 0x3000, 200, 0, 1);
    const std::uint32_t idx2[2] = {1, 2};
    std::memcpy(ring, idx2, sizeof idx2);
    CHECK(h.drain_coalesced([&](vcpu::coalesced_write& w) {
        CHECK(w.size == 8);
        return true;
    }));
    // An out-of-range `last` drops nothing it cannot read and reports it.
    const std::uint32_t bad[2] = {2, cap + 5};
    std::memcpy(ring, bad, sizeof bad);
    CHECK(h.drain_coalesced([](vcpu::coalesced_write&) {
        FAIL("no entry may be read");
        return true;
    }));
    CHECK(h.coalesced_ring_errors() == 1);
}

TEST_CASE("kvm fake: ioctl table names and fd kinds") {
    CHECK(std::string(kvm::ioctls::vcpu::run.name) == "KVM_RUN");
    CHECK(kvm::ioctls::vcpu::run.code == KVM_RUN);
    CHECK(std::string(kvm::ioctls::vm::create_vcpu.name) == "KVM_CREATE_VCPU");
    static_assert(decltype(kvm::ioctls::vm::create_vcpu)::kind == kvm::fd_kind::vm);
    static_assert(decltype(kvm::ioctls::system::create_vm)::kind == kvm::fd_kind::system);
    // Flexible-array requests carry the C header size (8), not C++'s.
    CHECK(_IOC_SIZE(kvm::ioctls::vcpu::get_msrs.code) == 8);
    CHECK(_IOC_NR(kvm::ioctls::vcpu::get_msrs.code) == _IOC_NR(KVM_GET_MSRS));
}

#endif // __x86_64__

#if defined(__x86_64__)
TEST_CASE("kvm fake: a failed first KVM_RUN keeps the pending boot state and says what is wrong") {
    fake_kernel::reset();
    auto cpu = make_cpu();
    REQUIRE(cpu.set(x86::rip, 0x1234));
    REQUIRE(cpu.set(x86::cr0, x86::cr0_bits::pg.bits())); // paging without protection: refused
    auto e = cpu.hal().enter();
    REQUIRE_FALSE(e);
    CHECK(std::string(e.err().op) == "KVM_RUN");
    CHECK(e.err().code == EINVAL);
    CHECK(std::string(e.err().detail) == "CR0.PG set without CR0.PE");
    CHECK(e.err().message().find("CR0.PG set without CR0.PE") != std::string::npos);
    // The pending writes were not replaced by the kernel's state.
    auto rip = cpu.get(x86::rip);
    REQUIRE(rip);
    CHECK(*rip == 0x1234);
    auto cr0 = cpu.get(x86::cr0);
    REQUIRE(cr0);
    CHECK(*cr0 == x86::cr0_bits::pg.bits());
    // Fixed, the retry applies the whole boot state.
    REQUIRE(cpu.set(x86::cr0, x86::cr0_bits::pe.bits()));
    REQUIRE(cpu.hal().enter());
    CHECK(fake_kernel::regs.rip == 0x1234);
    CHECK(fake_kernel::sregs.cr0 == x86::cr0_bits::pe.bits());
}
#endif
