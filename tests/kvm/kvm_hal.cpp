// The Linux KVM HAL (include/kvm/) against the real /dev/kvm: handles, memory slots, sync
// registers, tiny real-mode guests, ioeventfd, coalesced MMIO/PIO, kicks, and error paths
// through counting and fault-injecting Sys policies. Guests are a few hand-assembled
// instructions at GPA 0x1000 (nested PVM hosts emulate CPL0 code one instruction at a time).
#include <doctest/doctest.h>

#include <kvm/kvm.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include <linux/kvm.h>
#include <pthread.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;
namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;

/// Counts ioctls by request code (KVM ioctl numbers are one byte: _IOC_NR).
struct counting_sys : kvm::linux_sys {
    static inline std::array<int, 256> counts{};
    static void reset() noexcept { counts.fill(0); }
    static int count(unsigned long req) noexcept { return counts[_IOC_NR(req) & 0xff]; }
    static int total() noexcept {
        int n = 0;
        for (int c : counts) n += c;
        return n;
    }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        ++counts[_IOC_NR(req) & 0xff];
        return kvm::linux_sys::ioctl(fd, req, arg);
    }
};
static_assert(kvm::SysPolicy<counting_sys>);

/// Real system calls, except the one fault a test arms.
struct faulty_sys : kvm::linux_sys {
    static inline unsigned long fail_ioctl = 0; ///< request to fail (0: none)
    static inline int fail_errno = 0;
    static inline int fail_vcpu_mmap = 0;       ///< errno for MAP_SHARED fd mappings (kvm_run)
    static inline long zero_cap = -1;           ///< KVM_CHECK_EXTENSION(cap) answers 0
    static inline int fail_times = -1;          ///< failures left before `fail_ioctl` works (-1: always fails)
    static inline unsigned calls = 0;           ///< times `fail_ioctl` was issued
    static void reset() noexcept {
        fail_ioctl = 0;
        fail_errno = 0;
        fail_vcpu_mmap = 0;
        zero_cap = -1;
        fail_times = -1;
        calls = 0;
    }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_ioctl) {
            ++calls;
            if (fail_times != 0) {
                if (fail_times > 0) --fail_times;
                errno = fail_errno;
                return -1;
            }
        }
        if (req == KVM_CHECK_EXTENSION && reinterpret_cast<std::uintptr_t>(arg) ==
                                              static_cast<std::uintptr_t>(zero_cap))
            return 0;
        return kvm::linux_sys::ioctl(fd, req, arg);
    }
    static void* mmap(void* a, std::size_t n, int prot, int flags, int fd, off_t off) noexcept {
        if (fail_vcpu_mmap != 0 && fd >= 0 && (flags & MAP_SHARED) != 0) {
            errno = fail_vcpu_mmap;
            return MAP_FAILED;
        }
        return kvm::linux_sys::mmap(a, n, prot, flags, fd, off);
    }
};
static_assert(kvm::SysPolicy<faulty_sys>);

static_assert(vcpu::HalFor<kvm::hal, arch>, "the KVM HAL must model HalFor<hal, x86_64>");
static_assert(vcpu::HalFor<kvm::basic_hal<counting_sys>, arch>);
static_assert(!std::is_copy_constructible_v<kvm::system> && std::is_nothrow_move_constructible_v<kvm::system>);
static_assert(!std::is_copy_constructible_v<kvm::vm> && std::is_nothrow_move_constructible_v<kvm::vm>);
static_assert(!std::is_copy_constructible_v<kvm::hal::vcpu<arch>>);
static_assert(std::is_nothrow_move_constructible_v<kvm::hal::vcpu<arch>>);
static_assert(std::is_empty_v<kvm::hal> && std::is_empty_v<kvm::linux_sys>);

constexpr std::uint64_t code_gpa = 0x1000;
constexpr std::uint16_t done_port = 0x10;

/// A tiny VM: 64 KiB of RAM at GPA 0 (slot 0), no irqchip (so HLT exits to us), and one
/// vCPU in real mode at 0000:1000.
template <class Sys>
struct tiny {
    kvm::basic_system<Sys> sys;
    kvm::basic_vm<Sys> vm;
    kvm::basic_guest_ram<Sys> ram;
    vcpu::basic_vcpu<arch, kvm::basic_hal<Sys>> cpu;
};

template <class Sys = kvm::linux_sys>
tiny<Sys> make_tiny(std::initializer_list<std::uint8_t> code, kvm::vcpu_options opt = {}) {
    auto sys = kvm::basic_system<Sys>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    REQUIRE(vm->set_tss_addr(0xffffd000));
    REQUIRE(vm->set_identity_map_addr(0xffffc000));
    auto ram = kvm::basic_guest_ram<Sys>::allocate(0x10000);
    REQUIRE(ram);
    REQUIRE(vm->set_memory(kvm::memory_slot{0, 0, ram->bytes()}));
    std::size_t i = code_gpa;
    for (auto b : code) ram->bytes()[i++] = std::byte{b};
    auto cpu = vm->template create_vcpu<arch>(0, opt);
    REQUIRE(cpu);
    REQUIRE(cpu->init(x86::real_mode{0, static_cast<std::uint16_t>(code_gpa), 0x8000}));
    return tiny<Sys>{std::move(*sys), std::move(*vm), std::move(*ram), std::move(*cpu)};
}

/// `mov al, 0x42; out 0x10, al; hlt`
constexpr std::initializer_list<std::uint8_t> out42_hlt = {0xb0, 0x42, 0xe6, done_port, 0xf4};

template <class Cpu>
::kvm_run* enter(Cpu& cpu) {
    auto r = cpu.hal().enter();
    if (!r) FAIL(r.err().message());
    return cpu.hal().run();
}

} // namespace

TEST_CASE("system: open, API version, capabilities, mmap size") {
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, (sys ? "" : sys.err().message()));
    auto v = sys->api_version();
    REQUIRE(v);
    CHECK(*v == 12);
    auto user_mem = sys->check_extension(KVM_CAP_USER_MEMORY);
    REQUIRE(user_mem);
    CHECK(*user_mem > 0);
    CHECK(sys->has_extension(KVM_CAP_USER_MEMORY));
    auto bogus = sys->check_extension(0x7fff'0000);
    REQUIRE(bogus);
    CHECK(*bogus == 0);
    CHECK_FALSE(sys->has_extension(0x7fff'0000));
    auto sz = sys->vcpu_mmap_size();
    REQUIRE(sz);
    CHECK(*sz >= sizeof(::kvm_run));
    CHECK(*sz % static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) == 0);
}

TEST_CASE("system: a missing device is an 'open /dev/kvm' error with ENOENT and the path tried") {
    auto sys = kvm::system::open("/dev/does-not-exist-kvm");
    REQUIRE_FALSE(sys);
    CHECK(std::string(sys.err().op) == "open /dev/kvm");
    CHECK(sys.err().code == ENOENT);
    CHECK(sys.err().text() == "/dev/does-not-exist-kvm");
    CHECK(sys.err().message().find("path=\"/dev/does-not-exist-kvm\"") != std::string::npos);
}

TEST_CASE("vm: vCPU ids the host refuses are named with its limits") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto limits = vm->limits();
    REQUIRE(limits);
    CHECK(limits->max_vcpus >= 1);
    CHECK(limits->max_vcpu_id >= limits->max_vcpus);
    const auto over = static_cast<unsigned>(limits->max_vcpu_id);
    auto cpu = vm->create_vcpu<arch>(over);
    REQUIRE_FALSE(cpu);
    CHECK(std::string(cpu.err().op) == "KVM_CREATE_VCPU");
    CHECK(cpu.err().code == EINVAL);
    CHECK(cpu.err().value("vcpu_id") == over);
    CHECK(cpu.err().value("max_vcpu_id") == limits->max_vcpu_id);
    // The kernel's own refusal (the id exists already) names the id too.
    auto first = vm->create_vcpu<arch>(1);
    REQUIRE(first);
    auto twice = vm->create_vcpu<arch>(1);
    REQUIRE_FALSE(twice);
    CHECK(twice.err().code == EEXIST);
    CHECK(twice.err().value("vcpu_id") == 1);
    MESSAGE(cpu.err().message());
}

TEST_CASE("vm: create, capability query on the VM fd, vCPU and its kvm_run mapping") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    CHECK(vm->fd() >= 0);
    CHECK(vm->system_fd() == sys->fd());
    auto slots = vm->check_extension(KVM_CAP_NR_MEMSLOTS);
    REQUIRE(slots);
    CHECK(*slots > 1);
    auto cpu = vm->create_hal_vcpu<arch>(0);
    REQUIRE_MESSAGE(cpu, (cpu ? "" : cpu.err().message()));
    CHECK(cpu->fd() >= 0);
    REQUIRE(cpu->run() != nullptr);
    CHECK(cpu->mmap_size() == vm->vcpu_mmap_size());
    auto rec = cpu->exit_record();
    CHECK(rec.run == cpu->run());
    CHECK(rec.mapped == vm->vcpu_mmap_size());
    // A vCPU id may be created only once.
    auto dup = vm->create_hal_vcpu<arch>(0);
    REQUIRE_FALSE(dup);
    CHECK(std::string(dup.err().op) == "KVM_CREATE_VCPU");
    CHECK(dup.err().code == EEXIST);
}

TEST_CASE("vm: several memory slots; guest reads both, read-only slot traps writes") {
    // Slot 0: code at 0x1000. Slot 1: 64 KiB at 0x20000, read-only when supported.
    // mov ax,0x2000; mov ds,ax; mov al,[0x0004]; out 0x10,al; mov byte [0x0000],0x99; hlt
    auto t = make_tiny({0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xa0, 0x04, 0x00, 0xe6, done_port,
                        0xc6, 0x06, 0x00, 0x00, 0x99, 0xf4});
    auto ram2 = kvm::guest_ram::allocate(0x10000);
    REQUIRE(ram2);
    ram2->bytes()[4] = std::byte{0x5a};
    auto ro_cap = t.vm.check_extension(KVM_CAP_READONLY_MEM);
    REQUIRE(ro_cap);
    const bool ro = *ro_cap > 0;
    auto set = t.vm.set_memory(kvm::memory_slot{1, 0x20000, ram2->bytes(), ro, false});
    REQUIRE_MESSAGE(set, (set ? "" : set.err().message()));
    // Overlapping slots are refused by KVM and named in the error.
    auto overlap = t.vm.set_memory(kvm::memory_slot{2, 0x20000, ram2->bytes(), false, false});
    REQUIRE_FALSE(overlap);
    CHECK(std::string(overlap.err().op) == "KVM_SET_USER_MEMORY_REGION");
    CHECK(overlap.err().code == EEXIST);
    CHECK(overlap.err().value("slot") == 2);
    CHECK(overlap.err().value("other_slot") == 1);
    CHECK(overlap.err().value("other_gpa") == 0x20000);
    MESSAGE(overlap.err().message());

    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == done_port);
    CHECK(std::to_integer<int>(t.cpu.hal().exit_record().at(run->io.data_offset, 1)[0]) == 0x5a);
    run = enter(t.cpu);
    if (ro) {
        REQUIRE(run->exit_reason == KVM_EXIT_MMIO);
        CHECK(run->mmio.phys_addr == 0x20000);
        CHECK(run->mmio.is_write == 1);
        CHECK(run->mmio.data[0] == 0x99);
        CHECK(ram2->bytes()[0] == std::byte{0});
        run = enter(t.cpu);
    } else {
        MESSAGE("KVM_CAP_READONLY_MEM absent: read-only slot not exercised");
        CHECK(ram2->bytes()[0] == std::byte{0x99});
    }
    CHECK(run->exit_reason == KVM_EXIT_HLT);
    CHECK(t.vm.remove_memory(1));
}

TEST_CASE("vm: a read-only slot without KVM_CAP_READONLY_MEM is EOPNOTSUPP") {
    faulty_sys::reset();
    faulty_sys::zero_cap = KVM_CAP_READONLY_MEM;
    auto sys = kvm::basic_system<faulty_sys>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto ram = kvm::basic_guest_ram<faulty_sys>::allocate(0x10000);
    REQUIRE(ram);
    auto r = vm->set_memory(kvm::memory_slot{0, 0, ram->bytes(), true, false});
    faulty_sys::reset();
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().op) == "KVM_SET_USER_MEMORY_REGION");
    CHECK(r.err().code == EOPNOTSUPP);
    CHECK(r.err().message().find("KVM_CAP_READONLY_MEM") != std::string::npos);
    // Writable slots with dirty logging still work.
    CHECK(vm->set_memory(kvm::memory_slot{0, 0, ram->bytes(), false, true}));
}

TEST_CASE("vcpu: out 0x10 then hlt, seen through kvm_run") {
    auto t = make_tiny(out42_hlt);
    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.direction == KVM_EXIT_IO_OUT);
    CHECK(run->io.port == done_port);
    CHECK(run->io.size == 1);
    CHECK(run->io.count == 1);
    auto data = t.cpu.hal().exit_record().at(run->io.data_offset, 1);
    REQUIRE(data.size() == 1);
    CHECK(std::to_integer<int>(data[0]) == 0x42);
    run = enter(t.cpu);
    CHECK(run->exit_reason == KVM_EXIT_HLT);
}

TEST_CASE("vcpu: the same guest through basic_vcpu::run and the x86 decoder") {
    auto t = make_tiny(out42_hlt);
    std::uint32_t seen = 0;
    auto r = t.cpu.run([&](vcpu::port_io& io) { seen = io.value(); },
                       [](vcpu::halt&) { return vcpu::action::stop; });
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::halt>(*r));
    CHECK(seen == 0x42);
}

TEST_CASE("sync regs: values set before the run reach the guest; guest values come back "
          "without KVM_GET_REGS") {
    // out dx,al; mov ax,0xbeef; mov bx,0x1234; hlt
    auto t = make_tiny<counting_sys>({0xee, 0xb8, 0xef, 0xbe, 0xbb, 0x34, 0x12, 0xf4});
    constexpr std::uint64_t want = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    auto cap = t.vm.check_extension(KVM_CAP_SYNC_REGS);
    REQUIRE(cap);
    if ((static_cast<std::uint64_t>(*cap) & want) != want)
        MESSAGE("KVM_CAP_SYNC_REGS = " << *cap << ": falling back to GET/SET ioctls");
    const bool synced = (static_cast<std::uint64_t>(*cap) & KVM_SYNC_X86_REGS) != 0;
    CHECK(t.cpu.hal().sync_mask() == (static_cast<std::uint64_t>(*cap) & want));
    CHECK(t.cpu.hal().run()->kvm_valid_regs == t.cpu.hal().sync_mask());

    REQUIRE(t.cpu.set(x86::rdx, 0x3f8));
    REQUIRE(t.cpu.set(x86::rax, 0x77));
    if (synced) CHECK((t.cpu.hal().run()->kvm_dirty_regs & KVM_SYNC_X86_REGS) != 0);
    counting_sys::reset();

    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == 0x3f8);
    CHECK(std::to_integer<int>(t.cpu.hal().exit_record().at(run->io.data_offset, 1)[0]) == 0x77);
    if (synced) {
        CHECK(counting_sys::count(KVM_SET_REGS) == 0);       // carried by kvm_dirty_regs
        CHECK(run->kvm_dirty_regs == 0);                     // ...which KVM consumed
    } else {
        CHECK(counting_sys::count(KVM_SET_REGS) == 1);
    }
    run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_HLT);
    counting_sys::reset();
    auto ax = t.cpu.get(x86::rax);
    auto bx = t.cpu.get(x86::rbx);
    auto rip = t.cpu.get(x86::rip);
    auto cr0 = t.cpu.get(x86::cr0);
    REQUIRE((ax && bx && rip && cr0));
    CHECK((*ax & 0xffff) == 0xbeef);
    CHECK(*bx == 0x1234);
    CHECK(*rip == code_gpa + 8); // after the hlt
    CHECK((*cr0 & x86::cr0_bits::pe.mask) == 0);
    if (synced) {
        CHECK(counting_sys::count(KVM_GET_REGS) == 0);
        CHECK(counting_sys::count(KVM_GET_SREGS) == 0);
    } else {
        CHECK(counting_sys::count(KVM_GET_REGS) == 1); // one fetch serves ax, bx and rip
    }
    // Exactly one ioctl per run with sync regs.
    counting_sys::reset();
    REQUIRE(t.cpu.set(x86::rip, code_gpa + 7)); // back to the hlt
    run = enter(t.cpu);
    CHECK(run->exit_reason == KVM_EXIT_HLT);
    if (synced) CHECK(counting_sys::total() == 1);
}

TEST_CASE("sync regs disabled: blocks move with GET/SET ioctls and caches drop at each exit") {
    // out dx,al; mov ax,0xbeef; hlt
    auto t = make_tiny<counting_sys>({0xee, 0xb8, 0xef, 0xbe, 0xf4}, kvm::vcpu_options{0});
    CHECK(t.cpu.hal().sync_mask() == 0);
    CHECK(t.cpu.hal().run()->kvm_valid_regs == 0);
    REQUIRE(t.cpu.set(x86::rdx, 0x99));
    REQUIRE(t.cpu.set(x86::rax, 0x11));
    counting_sys::reset();
    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == 0x99);
    CHECK(counting_sys::count(KVM_SET_REGS) == 1);
    CHECK(counting_sys::count(KVM_SET_SREGS) == 1); // real_mode modified sregs
    counting_sys::reset();
    run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_HLT);
    CHECK(counting_sys::count(KVM_SET_REGS) == 0); // nothing dirty any more
    auto ax = t.cpu.get(x86::rax);
    auto rip = t.cpu.get(x86::rip);
    REQUIRE((ax && rip));
    CHECK((*ax & 0xffff) == 0xbeef);
    CHECK(counting_sys::count(KVM_GET_REGS) == 1);
}

TEST_CASE("registers: events (synced) and debugregs (never synced) blocks, MSRs") {
    auto t = make_tiny<counting_sys>(out42_hlt);
    counting_sys::reset();
    auto ev = t.cpu.hal().load<x86::events_block>();
    REQUIRE(ev);
    auto dr = t.cpu.hal().load<x86::debugregs_block>();
    REQUIRE(dr);
    CHECK(counting_sys::count(KVM_GET_DEBUGREGS) == 1);
    CHECK(((*dr)->dr7 & 0x400) != 0); // DR7 bit 10 reads as 1 (SDM Vol. 3B §18.2.4)
    CHECK_FALSE(t.cpu.hal().synced<x86::debugregs_block>());
    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    counting_sys::reset();
    REQUIRE(t.cpu.hal().load<x86::debugregs_block>());
    CHECK(counting_sys::count(KVM_GET_DEBUGREGS) == 1); // the cache dropped at the exit

    // MSRs through the keyed bank.
    REQUIRE(t.cpu.set(x86::ia32_sysenter_cs, 0x10));
    auto cs = t.cpu.get(x86::ia32_sysenter_cs);
    REQUIRE(cs);
    CHECK(*cs == 0x10);
    auto bad = t.cpu.get(x86::msr(0xdeadbeef));
    REQUIRE_FALSE(bad);
    CHECK(std::string(bad.err().op) == "KVM_GET_MSRS");
    CHECK(std::string(bad.err().detail) == "MSR not supported");
}

TEST_CASE("cpuid: supported list from the system and the vCPU, set_cpuid, E2BIG on a small buffer") {
    auto t = make_tiny(out42_hlt);
    std::vector<x86::cpuid_entry> buf(256);
    auto n = t.sys.supported_cpuid(buf);
    REQUIRE_MESSAGE(n, (n ? "" : n.err().message()));
    CHECK(*n > 1);
    CHECK(buf[0].function == 0);
    CHECK(buf[0].eax >= 1); // max basic leaf
    auto n2 = t.cpu.hal().supported_cpuid(buf);
    REQUIRE(n2);
    CHECK(*n2 == *n);
    CHECK(t.cpu.hal().set_cpuid(std::span<const x86::cpuid_entry>(buf.data(), *n)));
    std::array<x86::cpuid_entry, 1> tiny_buf{};
    auto small = t.sys.supported_cpuid(tiny_buf);
    REQUIRE_FALSE(small);
    CHECK(std::string(small.err().op) == "KVM_GET_SUPPORTED_CPUID");
    CHECK(small.err().code == E2BIG);
}

TEST_CASE("ioeventfd: a guest write to the port signals the eventfd without an exit") {
    // out 0x20,al (AL=0x42 set below); out 0x10,al; hlt
    auto t = make_tiny({0xe6, 0x20, 0xe6, done_port, 0xf4});
    REQUIRE(t.cpu.set(x86::rax, 0x42));
    auto efd = t.vm.ioeventfd(kvm::ioeventfd_spec{0x20, 1, true, std::nullopt});
    REQUIRE_MESSAGE(efd, (efd ? "" : efd.err().message()));
    // A second registration with a datamatch on another port.
    auto efd2 = t.vm.ioeventfd(kvm::ioeventfd_spec{0x21, 1, true, 0x55});
    REQUIRE(efd2);
    std::uint64_t v = 0;
    CHECK(::read(efd->get(), &v, sizeof v) < 0); // nothing yet (EFD_NONBLOCK)
    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == done_port); // the write to 0x20 did not exit
    REQUIRE(::read(efd->get(), &v, sizeof v) == sizeof v);
    CHECK(v == 1);
    CHECK(t.vm.remove_ioeventfd(kvm::ioeventfd_spec{0x20, 1, true, std::nullopt}, efd->get()));
    auto again = t.vm.remove_ioeventfd(kvm::ioeventfd_spec{0x20, 1, true, std::nullopt}, efd->get());
    REQUIRE_FALSE(again);
    CHECK(std::string(again.err().op) == "KVM_IOEVENTFD");
}

TEST_CASE("coalesced MMIO: buffered writes drain, in order, before the next exit") {
    // mov ax,0xe000; mov ds,ax; mov byte [0],0x11; mov byte [1],0x22; mov byte [2],0x33;
    // mov al,0x42; out 0x10,al; hlt      (0xe0000 is not backed by a memory slot)
    auto t = make_tiny({0xb8, 0x00, 0xe0, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x11, 0xc6, 0x06,
                        0x01, 0x00, 0x22, 0xc6, 0x06, 0x02, 0x00, 0x33, 0xb0, 0x42, 0xe6,
                        done_port, 0xf4});
    auto cap = t.vm.check_extension(KVM_CAP_COALESCED_MMIO);
    REQUIRE(cap);
    REQUIRE_MESSAGE(*cap > 0, "KVM_CAP_COALESCED_MMIO absent");
    CHECK(t.cpu.hal().coalesced_ring_capacity() ==
          (static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) - 8) / sizeof(::kvm_coalesced_mmio));
    REQUIRE(t.vm.register_coalesced_mmio(0xe0000, 0x1000));
    auto* run = enter(t.cpu);
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == done_port);
    std::vector<vcpu::coalesced_write> got;
    CHECK(t.cpu.hal().drain_coalesced([&](vcpu::coalesced_write& w) {
        got.push_back(w);
        return true;
    }));
    REQUIRE(got.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(got[i].address == 0xe0000 + i);
        CHECK(got[i].size == 1);
        CHECK_FALSE(got[i].pio);
        CHECK(got[i].value() == 0x11 * (i + 1));
    }
    // Drained entries are consumed.
    CHECK(t.cpu.hal().drain_coalesced([](vcpu::coalesced_write&) { return false; }));
}

TEST_CASE("coalesced PIO through basic_vcpu::run: writes reach the handler before the OUT exit") {
    // mov al,0xa1; out 0x80,al; mov al,0xa2; out 0x80,al; mov al,0x42; out 0x10,al; hlt
    auto t = make_tiny({0xb0, 0xa1, 0xe6, 0x80, 0xb0, 0xa2, 0xe6, 0x80, 0xb0, 0x42, 0xe6,
                        done_port, 0xf4});
    if (auto cap = t.vm.check_extension(KVM_CAP_COALESCED_PIO); !cap || *cap <= 0) {
        auto r = t.vm.register_coalesced_pio(0x80, 1);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EOPNOTSUPP);
        return;
    }
    REQUIRE(t.vm.register_coalesced_pio(0x80, 1));
    std::vector<std::pair<std::uint64_t, std::uint64_t>> log; // (port, value), 0x10 last
    auto r = t.cpu.run(
        [&](vcpu::coalesced_write& w) {
            CHECK(w.pio);
            log.emplace_back(w.address, w.value());
        },
        [&](vcpu::port_io& io) {
            log.emplace_back(io.port, io.value());
            return vcpu::action::stop;
        });
    REQUIRE(r);
    REQUIRE(std::holds_alternative<vcpu::port_io>(*r));
    REQUIRE(log.size() == 3);
    CHECK(log[0] == std::pair<std::uint64_t, std::uint64_t>{0x80, 0xa1});
    CHECK(log[1] == std::pair<std::uint64_t, std::uint64_t>{0x80, 0xa2});
    CHECK(log[2] == std::pair<std::uint64_t, std::uint64_t>{done_port, 0x42});
}

TEST_CASE("coalesced zones removed: the same writes exit again") {
    // mov ax,0xe000; mov ds,ax; mov byte [0],0x11; out 0x10,al; mov byte [1],0x22;
    // out 0x80,al; out 0x10,al; out 0x80,al; hlt      (0xe0000 is not backed by a memory slot)
    auto t = make_tiny({0xb8, 0x00, 0xe0, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x11, 0xe6,
                        done_port, 0xc6, 0x06, 0x01, 0x00, 0x22, 0xe6, 0x80, 0xe6, done_port,
                        0xe6, 0x80, 0xf4});
    auto cap = t.vm.check_extension(KVM_CAP_COALESCED_MMIO);
    REQUIRE(cap);
    REQUIRE_MESSAGE(*cap > 0, "KVM_CAP_COALESCED_MMIO absent");
    auto pio_cap = t.vm.check_extension(KVM_CAP_COALESCED_PIO);
    REQUIRE(pio_cap);
    const bool coalesced_pio = *pio_cap > 0;
    REQUIRE(t.vm.register_coalesced_mmio(0xe0000, 0x1000));
    if (coalesced_pio) REQUIRE(t.vm.register_coalesced_pio(0x80, 1));
    auto drained = [&] {
        std::size_t n = 0;
        CHECK(t.cpu.hal().drain_coalesced([&](vcpu::coalesced_write&) { return ++n, true; }));
        return n;
    };

    auto* run = enter(t.cpu); // the MMIO write was buffered
    REQUIRE(run->exit_reason == KVM_EXIT_IO);
    CHECK(run->io.port == done_port);
    CHECK(drained() == 1);

    REQUIRE(t.vm.unregister_coalesced_mmio(0xe0000, 0x1000));
    run = enter(t.cpu); // now the MMIO write exits
    REQUIRE(run->exit_reason == KVM_EXIT_MMIO);
    CHECK(run->mmio.phys_addr == 0xe0001);
    CHECK(run->mmio.is_write);

    if (coalesced_pio) {
        run = enter(t.cpu); // out 0x80 buffered, out 0x10 exits
        REQUIRE(run->exit_reason == KVM_EXIT_IO);
        CHECK(run->io.port == done_port);
        CHECK(drained() == 1);
        REQUIRE(t.vm.unregister_coalesced_pio(0x80, 1));
        run = enter(t.cpu); // the second out 0x80 exits
        REQUIRE(run->exit_reason == KVM_EXIT_IO);
        CHECK(run->io.port == 0x80);
    } else {
        MESSAGE("KVM_CAP_COALESCED_PIO absent: the coalesced PIO half is not exercised");
    }
}

TEST_CASE("irqfd: remove_irqfd detaches the eventfd, so it can be attached again") {
    auto sys = kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    REQUIRE(vm->create_irqchip());
    auto efd = vm->irqfd(4);
    REQUIRE_MESSAGE(efd, (efd ? "" : efd.err().message()));
    auto attach = [&](std::uint32_t gsi) {
        ::kvm_irqfd f{};
        f.fd = static_cast<std::uint32_t>(efd->get());
        f.gsi = gsi;
        return vm->ioctl(kvm::ioctls::vm::irqfd, &f);
    };
    auto busy = attach(5); // one eventfd drives one GSI
    REQUIRE_FALSE(busy);
    CHECK(busy.err().code == EBUSY);
    REQUIRE(vm->remove_irqfd(efd->get(), 4));
    CHECK(attach(5)); // detached: free again
    REQUIRE(vm->remove_irqfd(efd->get(), 5));
    auto bad = vm->remove_irqfd(-1, 5);
    REQUIRE_FALSE(bad);
    CHECK(bad.err().code == EBADF);
    CHECK(std::string(bad.err().op) == "KVM_IRQFD");
}

TEST_CASE("reg_list: KVM_GET_REG_LIST through the vCPU, its storage checks and the kernel's answer") {
    auto t = make_tiny(out42_hlt);
    auto& h = t.cpu.hal();
    std::array<std::uint64_t, 1024> storage{};
    auto none = h.reg_list({});
    REQUIRE_FALSE(none);
    CHECK(none.err().code == EINVAL);
    CHECK(std::string(none.err().op) == "KVM_GET_REG_LIST");
    auto r = h.reg_list(storage);
    if (r) {
        // An arch with a register list (arm64, riscv64; x86 from the kernel that adds one):
        // every id is a ONE_REG id, readable with get_one_reg, and a short buffer says how
        // much it needs.
        REQUIRE_FALSE(r->empty());
        std::array<std::byte, 16> buf{};
        CHECK(h.get_one_reg(r->front(), buf));
        std::array<std::uint64_t, 2> small{};
        auto s = h.reg_list(small);
        REQUIRE_FALSE(s);
        CHECK(s.err().code == E2BIG);
        CHECK(s.err().value("needed") == r->size() + 1);
    } else {
        // x86 KVM has no register list: the kernel's EINVAL, named and with the vCPU id.
        MESSAGE("KVM_GET_REG_LIST: " << r.err().message());
        CHECK(r.err().code == EINVAL);
        CHECK(std::string(r.err().op) == "KVM_GET_REG_LIST");
        CHECK(r.err().value("vcpu_id") == 0);
    }
    auto moved = std::move(t.cpu);
    auto bad = t.cpu.hal().reg_list(storage);
    REQUIRE_FALSE(bad);
    CHECK(bad.err().code == EBADF);
}

TEST_CASE("moves: the kvm_run mapping and the coalesced ring go to the new owner, the old one is detached") {
    auto t = make_tiny(out42_hlt);
    auto& old = t.cpu.hal();
    ::kvm_run* const mapped = old.run();
    const std::size_t size = old.mmap_size();
    const std::uint32_t ring = old.coalesced_ring_capacity();
    auto moved = std::move(t.cpu);
    CHECK(moved.hal().run() == mapped);
    CHECK(moved.hal().mmap_size() == size);
    CHECK(moved.hal().coalesced_ring_capacity() == ring);
    // The moved-from vCPU shows a zeroed, never-null kvm_run and an empty ring of capacity 0.
    CHECK(old.run() != nullptr);
    CHECK(old.run() != mapped);
    CHECK(old.run()->exit_reason == 0);
    CHECK(old.mmap_size() == sizeof(::kvm_run));
    CHECK(old.coalesced_ring_capacity() == 0);
    CHECK(old.drain_coalesced([](vcpu::coalesced_write&) { return false; }));
    auto* run = enter(moved);
    CHECK(run == mapped);
    CHECK(run->exit_reason == KVM_EXIT_IO);
    // Move-assigning over a live vCPU unmaps its mapping first (no leak, no double unmap).
    auto other = make_tiny(out42_hlt);
    other.cpu = std::move(moved);
    CHECK(other.cpu.hal().run() == mapped);
}

TEST_CASE("drain_coalesced survives corrupt ring indices") {
    auto t = make_tiny(out42_hlt);
    auto& h = t.cpu.hal();
    REQUIRE(h.coalesced_ring_capacity() > 0);
    // The ring is page KVM_CAP_COALESCED_MMIO of the mapping; corrupt `first`.
    auto cap = t.vm.check_extension(KVM_CAP_COALESCED_MMIO);
    REQUIRE(cap);
    auto* ring = reinterpret_cast<std::uint32_t*>(reinterpret_cast<std::byte*>(h.run()) +
                                                  static_cast<std::size_t>(*cap) * ::sysconf(_SC_PAGESIZE));
    ring[0] = 0xffff'fff0;
    int calls = 0;
    CHECK(h.drain_coalesced([&](vcpu::coalesced_write&) { ++calls; return true; }));
    CHECK(calls == 0);
    CHECK(h.coalesced_ring_errors() == 1);
    CHECK(ring[0] == ring[1]); // reset to `last`
}

TEST_CASE("immediate_exit and a kick from another thread end KVM_RUN as KVM_EXIT_INTR") {
    auto t = make_tiny({0xeb, 0xfe}); // jmp $
    t.cpu.hal().immediate_exit(true);
    auto* run = enter(t.cpu);
    CHECK(run->exit_reason == KVM_EXIT_INTR);
    t.cpu.hal().immediate_exit(false);

    REQUIRE(kvm::install_kick_handler(SIGUSR1));
    auto kicker = t.cpu.hal().make_kicker();
    const pthread_t self = ::pthread_self();
    std::thread other([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        CHECK(kicker.kick(self, SIGUSR1));
    });
    auto r = t.cpu.run([](vcpu::port_io&) {});
    other.join();
    REQUIRE(r);
    CHECK(std::holds_alternative<vcpu::interrupted>(*r));
    t.cpu.hal().immediate_exit(false);
}

TEST_CASE("errors: a bad fd fails with EBADF named in the message") {
    kvm::system bad_sys{kvm::unique_fd(-1)};
    auto cap = bad_sys.check_extension(KVM_CAP_USER_MEMORY);
    REQUIRE_FALSE(cap);
    CHECK(std::string(cap.err().op) == "KVM_CHECK_EXTENSION");
    CHECK(cap.err().code == EBADF);
    auto vm = bad_sys.create_vm();
    REQUIRE_FALSE(vm);
    CHECK(vm.err().message().find("EBADF") != std::string::npos);

    kvm::vm bad_vm{kvm::unique_fd(-1), -1, 4096};
    auto cpu = bad_vm.create_vcpu<arch>(0);
    REQUIRE_FALSE(cpu);
    CHECK(std::string(cpu.err().op) == "KVM_CREATE_VCPU");
    CHECK(cpu.err().code == EBADF);
    CHECK(cpu.err().message() == "KVM_CREATE_VCPU failed: Bad file descriptor (EBADF) (vcpu_id=0)");
    auto irq = bad_vm.create_irqchip();
    REQUIRE_FALSE(irq);
    CHECK(std::string(irq.err().op) == "KVM_CREATE_IRQCHIP");
}

TEST_CASE("faults: EINTR on KVM_RUN is an interrupted exit, not an error") {
    auto t = make_tiny<faulty_sys>(out42_hlt);
    faulty_sys::fail_ioctl = KVM_RUN;
    faulty_sys::fail_errno = EINTR;
    auto e = t.cpu.hal().enter();
    CHECK(e);
    CHECK(t.cpu.hal().run()->exit_reason == KVM_EXIT_INTR);
    auto r = t.cpu.run([](vcpu::port_io&) {});
    CHECK(r);
    if (r) CHECK(std::holds_alternative<vcpu::interrupted>(*r));
    faulty_sys::fail_errno = EFAULT;
    auto f = t.cpu.hal().enter();
    REQUIRE_FALSE(f);
    CHECK(std::string(f.err().op) == "KVM_RUN");
    CHECK(f.err().code == EFAULT);
    faulty_sys::reset();
    auto* run = enter(t.cpu); // the real run still works afterwards
    CHECK(run->exit_reason == KVM_EXIT_IO);
}

TEST_CASE("faults: EAGAIN on KVM_RUN (an AP between INIT and SIPI) re-enters, it is no error") {
    auto t = make_tiny<faulty_sys>(out42_hlt);
    faulty_sys::fail_ioctl = KVM_RUN;
    faulty_sys::fail_errno = EAGAIN;
    faulty_sys::fail_times = 2;
    auto e = t.cpu.hal().enter();
    const unsigned calls = faulty_sys::calls;
    faulty_sys::reset();
    REQUIRE(e);
    CHECK(calls == 3); // two EAGAINs, then the real KVM_RUN
    CHECK(t.cpu.hal().run()->exit_reason == KVM_EXIT_IO);
}

TEST_CASE("faults: ENOMEM mapping kvm_run, EBADF creating the vCPU, failing SET ioctl") {
    faulty_sys::reset();
    auto sys = kvm::basic_system<faulty_sys>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);

    faulty_sys::fail_vcpu_mmap = ENOMEM;
    auto a = vm->create_vcpu<arch>(0);
    faulty_sys::reset();
    REQUIRE_FALSE(a);
    CHECK(std::string(a.err().op) == "mmap kvm_run");
    CHECK(a.err().code == ENOMEM);
    CHECK(a.err().message().find("mmap kvm_run") != std::string::npos);

    faulty_sys::fail_ioctl = KVM_CREATE_VCPU;
    faulty_sys::fail_errno = EBADF;
    auto b = vm->create_vcpu<arch>(1);
    faulty_sys::reset();
    REQUIRE_FALSE(b);
    CHECK(std::string(b.err().op) == "KVM_CREATE_VCPU");
    CHECK(b.err().message().find("EBADF") != std::string::npos);

    // Unsynced debug registers are written by enter(); a failing SET is named.
    auto c = vm->create_vcpu<arch>(2);
    REQUIRE(c);
    REQUIRE(c->set(x86::dr7, 0x400));
    faulty_sys::fail_ioctl = KVM_SET_DEBUGREGS;
    faulty_sys::fail_errno = EINVAL;
    auto e = c->hal().enter();
    faulty_sys::reset();
    REQUIRE_FALSE(e);
    CHECK(std::string(e.err().op) == "KVM_SET_DEBUGREGS");
}

TEST_CASE("vm_init_x86_64: the C VMM's vm_init in one call") {
    SUBCASE("defaults: 1 GiB, irqchip, PIT, TSS and identity map") {
        auto m = kvm::vm_init_x86_64({}, x86::flat_protected_mode{});
        REQUIRE_MESSAGE(m, (m ? "" : m.err().message()));
        CHECK(m->ram.size() == (std::size_t{1} << 30));
        REQUIRE(m->vcpus.size() == 1);
        auto rip = m->vcpus[0].get(x86::rip);
        REQUIRE(rip);
        CHECK(*rip == 0x100000);
        auto rsi = m->vcpus[0].get(x86::rsi);
        REQUIRE(rsi);
        CHECK(*rsi == 0x10000);
        CHECK(m->memory.at(0x100000, 16).size() == 16);
        // The irqchip exists: a second one is refused.
        CHECK_FALSE(m->vm.create_irqchip());
    }
    SUBCASE("tiny: two vCPUs, no irqchip, runs a real-mode guest") {
        kvm::x86_64_options o;
        o.ram_bytes = 1 << 20;
        o.vcpus = 2;
        o.irqchip = false;
        o.pit = false;
        auto m = kvm::vm_init_x86_64(o, x86::real_mode{0, 0x1000, 0});
        REQUIRE_MESSAGE(m, (m ? "" : m.err().message()));
        REQUIRE(m->vcpus.size() == 2);
        const std::array<std::byte, 5> code{std::byte{0xb0}, std::byte{0x42}, std::byte{0xe6},
                                            std::byte{done_port}, std::byte{0xf4}};
        REQUIRE(m->memory.write(0x1000, code));
        for (auto& cpu : m->vcpus) {
            auto r = cpu.run([](vcpu::port_io&) {}, [](vcpu::halt&) { return vcpu::action::stop; });
            REQUIRE(r);
            CHECK(std::holds_alternative<vcpu::halt>(*r));
        }
    }
    SUBCASE("a failing step is reported by name") {
        kvm::x86_64_options o;
        o.ram_bytes = 1 << 20;
        faulty_sys::reset();
        faulty_sys::fail_ioctl = KVM_CREATE_PIT2;
        faulty_sys::fail_errno = ENOENT;
        auto m = kvm::vm_init_x86_64<faulty_sys>(o);
        faulty_sys::reset();
        REQUIRE_FALSE(m);
        CHECK(std::string(m.err().op) == "KVM_CREATE_PIT2");
        CHECK(m.err().code == ENOENT);
    }
    SUBCASE("options KVM would refuse are refused first, naming the values") {
        kvm::x86_64_options o;
        o.irqchip = false; // PIT2 needs the irqchip (KVM: ENOENT)
        o.ram_bytes = 1 << 20;
        auto m = kvm::vm_init_x86_64(o);
        REQUIRE_FALSE(m);
        CHECK(std::string(m.err().op) == "vm_init_x86_64");
        CHECK(m.err().code == EINVAL);
        o.irqchip = true;
        o.ram_bytes = 5000;
        m = kvm::vm_init_x86_64(o);
        REQUIRE_FALSE(m);
        CHECK(m.err().value("ram_bytes") == 5000);
        MESSAGE(m.err().message());
    }
}

#endif // __x86_64__
