// Fault injection through the Sys seam (include/kvm/sys.hpp) for every system call the KVM HAL
// makes in a typical x86-64 lifecycle, against a fake kernel, so it runs without /dev/kvm.
//
// The lifecycle (`lifecycle()` below): vm_init_x86_64 (open /dev/kvm, KVM_GET_API_VERSION,
// KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VM, vCPU limit queries, KVM_SET_TSS_ADDR,
// KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, mmap guest RAM,
// KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU, KVM_CHECK_EXTENSION, mmap kvm_run, the Linux boot
// state: GET/SET sregs and regs, KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2, KVM_SET_MSRS), then a
// read-only slot, an ioeventfd and an irqfd (eventfd + ioctl), a coalesced MMIO zone,
// KVM_SET_SIGNAL_MASK, register reads and writes (GPRs, debug registers, vCPU events, an MSR,
// ONE_REG), KVM_RUN through OUT, IN (with a register write
// held back and the exit completed by an immediate_exit round trip), MMIO and HLT exits, KVM_IRQ_LINE,
// the removals, and the teardown (munmap kvm_run, close vCPU fd, munmap RAM, close VM and /dev/kvm).
// It runs twice: with sync registers and without (so the GET/SET ioctl paths are taken).
//
// The test first runs the lifecycle counting the calls, then for every call number N, every errno
// of EINTR, EAGAIN, EBADF, ENOMEM, EFAULT, EINVAL, and both modes (only call N fails; every call
// from N on fails) runs it again and checks:
//   - the outcome is what the policy table below says for the first injected call that is not
//     absorbed by design: an error whose op names that call and whose code is the injected errno,
//     or success when every injected failure is absorbed;
//   - it ends: the fake stops injecting after a call budget and the test fails if it was reached
//     (persistent EAGAIN from KVM_RUN must end);
//   - no fd and no mapping leaks (every fd the fake handed out is closed, every mapping unmapped,
//     except a mapping whose munmap was itself made to fail), no double close, no munmap of
//     something not mapped, no call on a closed fd;
//   - no crash or undefined behaviour (the ASan/UBSan build runs the unit label).
//
// Policy per call (what the HAL does when the call fails):
//
// | call                                              | on failure                                  |
// | ------------------------------------------------- | ------------------------------------------- |
// | open /dev/kvm                                     | error "open /dev/kvm", errno, path           |
// | KVM_GET_API_VERSION, KVM_GET_VCPU_MMAP_SIZE,      | error named after the ioctl, errno           |
// | KVM_CREATE_VM, KVM_SET_TSS_ADDR,                  |                                             |
// | KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,    |                                             |
// | KVM_CREATE_PIT2, KVM_SET_USER_MEMORY_REGION,      |                                             |
// | KVM_CREATE_VCPU, KVM_GET/SET_(S)REGS,             |                                             |
// | KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2,          |                                             |
// | KVM_SET_MSRS, KVM_IOEVENTFD, KVM_IRQFD,           |                                             |
// | KVM_(UN)REGISTER_COALESCED_MMIO, KVM_IRQ_LINE,    |                                             |
// | KVM_SET_SIGNAL_MASK, KVM_GET/SET_DEBUGREGS,       |                                             |
// | KVM_GET/SET_VCPU_EVENTS, KVM_GET_MSRS,            |                                             |
// | KVM_GET/SET_ONE_REG                               |                                             |
// | KVM_CHECK_EXTENSION (SYNC_REGS, COALESCED_MMIO,   | error "KVM_CHECK_EXTENSION", errno, cap      |
// | READONLY_MEM)                                     |                                             |
// | KVM_CHECK_EXTENSION (MAX_VCPU_ID, MAX_VCPUS,      | absorbed: the up-front vCPU limit check is   |
// | NR_VCPUS)                                         | skipped, KVM_CREATE_VCPU checks for itself   |
// | mmap guest RAM / mmap kvm_run                     | error "mmap guest RAM" / "mmap kvm_run"      |
// | eventfd                                           | error "eventfd", errno                      |
// | KVM_RUN, EINTR                                    | absorbed: an `interrupted` exit              |
// | KVM_RUN, EAGAIN                                   | absorbed: re-issued, at most 1024 times in a |
// |                                                   | row, then an `interrupted` exit              |
// | KVM_RUN, other errno                              | error "KVM_RUN", errno                      |
// | KVM_RUN completing an exit (immediate_exit), EINTR| absorbed: that is how it returns            |
// | KVM_RUN completing an exit, EAGAIN                | absorbed: re-issued, at most 1024 times in a |
// |                                                   | row, then error "KVM_RUN", EAGAIN (found: it |
// |                                                   | was re-issued for ever, a hang)              |
// | close, munmap                                     | absorbed: close(2) releases the fd anyway;   |
// |                                                   | nothing to do about a failed munmap          |
#include <doctest/doctest.h>

#include <kvm/kvm.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <arch/x86_64/registers.hpp>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <linux/kvm.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;
namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;

enum class call_kind { open, close, ioctl, mmap, munmap, eventfd };

/// One system call the HAL made.
struct call {
    call_kind kind = call_kind::ioctl;
    unsigned long request = 0; ///< ioctl request
    std::uintptr_t arg = 0;    ///< ioctl integer argument (KVM_CHECK_EXTENSION's cap)
    bool completing = false;   ///< KVM_RUN with immediate_exit set (completing an exit)
};

enum class fd_type { system, vm, vcpu, event };

/// A fake KVM that hands out unique fds and real anonymous mappings, runs a scripted guest, and
/// fails calls on request.
struct fault_sys {
    // --- injection ---
    static inline long inject_at = 0; ///< 1-based call number to fail (0: none)
    static inline int inject_errno = 0;
    static inline bool persistent = false;
    static inline long calls = 0;
    static inline long budget = 200000; ///< calls after which the fake stops failing (a hang)
    static inline bool runaway = false;
    static inline std::vector<call> log;      ///< every call (when `logging`)
    static inline bool logging = false;
    static inline std::vector<call> injected; ///< the calls made to fail, in order
    // --- resources ---
    static inline int next_fd = 100;
    static inline std::map<int, fd_type> fds;
    static inline std::set<int> closed;
    static inline std::map<void*, std::size_t> maps;
    static inline std::vector<std::pair<void*, std::size_t>> failed_unmaps;
    static inline std::vector<std::string> defects;
    // --- kernel state ---
    struct vcpu_state {
        ::kvm_run* run = nullptr;
        x86::regs_layout regs{};
        x86::sregs_layout sregs{};
        x86::debugregs_layout debugregs{};
        x86::events_layout events{};
        int step = 0;
        bool pending_in = false; ///< an IN exit KVM completes at the next KVM_RUN
        std::uint64_t one_reg = 0;
    };
    static inline std::map<int, vcpu_state> vcpus;
    static inline std::map<std::uint32_t, std::pair<std::uint64_t, std::uint64_t>> slots;
    static inline int max_vcpu_id = 8; ///< KVM_CAP_MAX_VCPU_ID (0: absent); KVM_CREATE_VCPU takes ids below 8

    static void reset(long at, int err, bool persist) {
        inject_at = at;
        inject_errno = err;
        persistent = persist;
        calls = 0;
        runaway = false;
        log.clear();
        injected.clear();
        fds.clear();
        closed.clear();
        maps.clear();
        failed_unmaps.clear();
        defects.clear();
        vcpus.clear();
        slots.clear();
        max_vcpu_id = 8;
    }
    static long count(unsigned long req) {
        long n = 0;
        for (const auto& c : log) n += c.kind == call_kind::ioctl && c.request == req ? 1 : 0;
        return n;
    }
    static std::size_t page() noexcept { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

    /// Counts the call; true when it is to fail (errno set).
    static bool fail(call c) noexcept {
        ++calls;
        if (logging) log.push_back(c);
        if (calls > budget) {
            runaway = true; // let whatever loops forever end
            return false;
        }
        if (inject_at == 0 || calls < inject_at || (!persistent && calls != inject_at)) return false;
        injected.push_back(c);
        errno = inject_errno;
        return true;
    }
    static bool is_open(int fd, fd_type t) { return fds.count(fd) != 0 && fds[fd] == t; }
    static bool use(int fd, const char* what) {
        if (fds.count(fd) != 0) return true;
        if (closed.count(fd) != 0) defects.push_back(std::string(what) + " on closed fd " + std::to_string(fd));
        return false;
    }
    static int new_fd(fd_type t) {
        const int fd = next_fd++;
        fds[fd] = t;
        return fd;
    }

    static int open(const char* path, int) noexcept {
        if (fail({call_kind::open})) return -1;
        if (std::string_view(path) != "/dev/kvm") {
            errno = ENOENT;
            return -1;
        }
        return new_fd(fd_type::system);
    }
    static int close(int fd) noexcept {
        const bool f = fail({call_kind::close});
        if (fds.erase(fd) == 0) {
            defects.push_back("close of fd " + std::to_string(fd) + " that is not open");
            errno = EBADF;
            return -1;
        }
        closed.insert(fd);
        vcpus.erase(fd);
        return f ? -1 : 0; // close(2): the fd is released even when close reports an error
    }
    static int eventfd(unsigned, int) noexcept {
        if (fail({call_kind::eventfd})) return -1;
        return new_fd(fd_type::event);
    }
    static void* mmap(void* a, std::size_t n, int prot, int flags, int fd, off_t off) noexcept {
        if (fail({call_kind::mmap})) return MAP_FAILED;
        if (fd >= 0 && !is_open(fd, fd_type::vcpu)) {
            (void)use(fd, "mmap");
            errno = EBADF;
            return MAP_FAILED;
        }
        if (fd >= 0 && (off != 0 || n < sizeof(::kvm_run) || (flags & MAP_SHARED) == 0)) {
            errno = EINVAL;
            return MAP_FAILED;
        }
        void* p = ::mmap(a, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return p;
        maps[p] = n;
        if (fd >= 0) vcpus[fd].run = static_cast<::kvm_run*>(p);
        return p;
    }
    static int munmap(void* a, std::size_t n) noexcept {
        const bool f = fail({call_kind::munmap});
        auto it = maps.find(a);
        if (it == maps.end() || it->second != n) {
            defects.push_back("munmap of a range that is not mapped");
            errno = EINVAL;
            return -1;
        }
        if (f) {
            failed_unmaps.emplace_back(a, n); // still mapped: the caller cannot do anything
            maps.erase(it);
            return -1;
        }
        maps.erase(it);
        for (auto& [fd, v] : vcpus)
            if (v.run == a) v.run = nullptr;
        return ::munmap(a, n);
    }

    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        call c{call_kind::ioctl, req, reinterpret_cast<std::uintptr_t>(arg), false};
        if (req == KVM_RUN && vcpus.count(fd) != 0 && vcpus[fd].run != nullptr)
            c.completing = vcpus[fd].run->immediate_exit != 0;
        if (fail(c)) return -1;
        if (!use(fd, "ioctl")) {
            errno = EBADF;
            return -1;
        }
        const auto cap = reinterpret_cast<std::uintptr_t>(arg);
        switch (fds[fd]) {
        case fd_type::system:
            switch (req) {
            case KVM_GET_API_VERSION: return KVM_API_VERSION;
            case KVM_CHECK_EXTENSION: return extension(cap);
            case KVM_GET_VCPU_MMAP_SIZE: return static_cast<int>(3 * page()); // kvm_run, PIO data, ring
            case KVM_CREATE_VM: return new_fd(fd_type::vm);
            }
            if (req == kvm::ioctls::system::get_supported_cpuid.code) return supported_cpuid(arg);
            break;
        case fd_type::vm:
            switch (req) {
            case KVM_CHECK_EXTENSION: return extension(cap);
            case KVM_SET_TSS_ADDR:
            case KVM_SET_IDENTITY_MAP_ADDR:
            case KVM_CREATE_IRQCHIP:
            case KVM_CREATE_PIT2:
            case KVM_IRQ_LINE:
            case KVM_REGISTER_COALESCED_MMIO:
            case KVM_UNREGISTER_COALESCED_MMIO: return 0;
            case KVM_SET_USER_MEMORY_REGION: return set_memory(*static_cast<::kvm_userspace_memory_region*>(arg));
            case KVM_CREATE_VCPU: {
                if (cap >= 8) break;
                const int v = new_fd(fd_type::vcpu);
                vcpus[v] = {};
                return v;
            }
            case KVM_IOEVENTFD: return eventfd_user(static_cast<const ::kvm_ioeventfd*>(arg)->fd);
            case KVM_IRQFD: return eventfd_user(static_cast<int>(static_cast<const ::kvm_irqfd*>(arg)->fd));
            }
            break;
        case fd_type::vcpu: return vcpu_ioctl(vcpus[fd], req, arg);
        case fd_type::event: break;
        }
        errno = EINVAL;
        return -1;
    }

    static int extension(std::uintptr_t cap) noexcept {
        switch (cap) {
        case KVM_CAP_SYNC_REGS: return KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
        case KVM_CAP_COALESCED_MMIO: return 2; // KVM_COALESCED_MMIO_PAGE_OFFSET on x86
        case KVM_CAP_READONLY_MEM: return 1;
        case KVM_CAP_NR_VCPUS: return 4;
        case KVM_CAP_MAX_VCPUS: return 8;
        case KVM_CAP_MAX_VCPU_ID: return max_vcpu_id;
        default: return 0;
        }
    }
    static int eventfd_user(int efd) noexcept {
        if (!is_open(efd, fd_type::event)) {
            (void)use(efd, "KVM_IOEVENTFD/KVM_IRQFD with an eventfd");
            errno = EBADF;
            return -1;
        }
        return 0;
    }
    static int set_memory(const ::kvm_userspace_memory_region& r) noexcept {
        if (r.memory_size % page() != 0 || r.guest_phys_addr % page() != 0) {
            errno = EINVAL;
            return -1;
        }
        if (r.memory_size == 0) {
            slots.erase(r.slot);
            return 0;
        }
        for (auto& [s, range] : slots)
            if (s != r.slot && r.guest_phys_addr < range.first + range.second &&
                range.first < r.guest_phys_addr + r.memory_size) {
                errno = EEXIST;
                return -1;
            }
        slots[r.slot] = {r.guest_phys_addr, r.memory_size};
        return 0;
    }
    static int supported_cpuid(void* arg) noexcept {
        // struct kvm_cpuid2 in its C layout: nent, padding, entries (see x86_64_abi.hpp).
        auto* b = static_cast<std::byte*>(arg);
        std::uint32_t nent = 0;
        std::memcpy(&nent, b, sizeof nent);
        if (nent < 2) {
            errno = E2BIG;
            return -1;
        }
        ::kvm_cpuid_entry2 e[2]{};
        e[0].function = 0;
        e[0].eax = 1;
        e[1].function = 1;
        std::memcpy(b + 8, e, sizeof e);
        nent = 2;
        std::memcpy(b, &nent, sizeof nent);
        return 0;
    }

    static void* sync(::kvm_run* r, std::size_t off) noexcept {
        return reinterpret_cast<std::byte*>(&r->s) + off; // inside the fake kvm_run mapping
    }
    static int vcpu_ioctl(vcpu_state& v, unsigned long req, void* arg) noexcept {
        if (req == KVM_RUN) return run(v);
        if (arg == nullptr) {
            errno = EFAULT;
            return -1;
        }
        switch (req) {
        case KVM_GET_REGS: std::memcpy(arg, &v.regs, sizeof v.regs); return 0;
        case KVM_SET_REGS: std::memcpy(&v.regs, arg, sizeof v.regs); return 0;
        case KVM_GET_SREGS: std::memcpy(arg, &v.sregs, sizeof v.sregs); return 0;
        case KVM_SET_SREGS: std::memcpy(&v.sregs, arg, sizeof v.sregs); return 0;
        case KVM_GET_VCPU_EVENTS: std::memcpy(arg, &v.events, sizeof v.events); return 0;
        case KVM_SET_VCPU_EVENTS: std::memcpy(&v.events, arg, sizeof v.events); return 0;
        case KVM_GET_DEBUGREGS: std::memcpy(arg, &v.debugregs, sizeof v.debugregs); return 0;
        case KVM_SET_DEBUGREGS: std::memcpy(&v.debugregs, arg, sizeof v.debugregs); return 0;
        case KVM_GET_ONE_REG:
        case KVM_SET_ONE_REG: {
            // One 64-bit register, whatever its id.
            const auto* r = static_cast<const ::kvm_one_reg*>(arg);
            auto* p = reinterpret_cast<std::uint64_t*>(static_cast<std::uintptr_t>(r->addr)); // the caller's buffer
            if (req == KVM_GET_ONE_REG) *p = v.one_reg;
            else v.one_reg = *p;
            return 0;
        }
        }
        if (req == kvm::ioctls::vcpu::set_cpuid2.code || req == kvm::ioctls::vcpu::set_signal_mask.code) return 0;
        if (req == kvm::ioctls::vcpu::set_msrs.code || req == kvm::ioctls::vcpu::get_msrs.code) {
            std::uint32_t n = 0;
            std::memcpy(&n, arg, sizeof n);
            return static_cast<int>(n);
        }
        errno = EINVAL;
        return -1;
    }
    /// The guest: OUT 0x10 'A', IN 0x11 (the value goes into AL), an MMIO write, then HLT for ever.
    static int run(vcpu_state& v) noexcept {
        ::kvm_run* r = v.run;
        if (r == nullptr) {
            errno = EFAULT;
            return -1;
        }
        if ((r->kvm_dirty_regs & KVM_SYNC_X86_REGS) != 0) std::memcpy(&v.regs, sync(r, 0), sizeof v.regs);
        if ((r->kvm_dirty_regs & KVM_SYNC_X86_SREGS) != 0)
            std::memcpy(&v.sregs, sync(r, offsetof(x86::sync_regs_layout, sregs)), sizeof v.sregs);
        r->kvm_dirty_regs = 0;
        // Complete the previous exit (an IN's data into AL) before anything else, as KVM does
        // (kernel-side state: kvm_run's exit_reason may have been overwritten meanwhile).
        const std::uint64_t data_offset = page(); // KVM_PIO_PAGE_OFFSET
        if (v.pending_in) {
            std::uint8_t al = 0;
            std::memcpy(&al, reinterpret_cast<std::byte*>(r) + data_offset, 1);
            v.regs.rax = (v.regs.rax & ~std::uint64_t{0xff}) | al;
            v.pending_in = false;
        }
        const bool stop = r->immediate_exit != 0;
        if (!stop) {
            switch (v.step) {
            case 0:
            case 1:
                r->exit_reason = KVM_EXIT_IO;
                r->io.direction = v.step == 0 ? KVM_EXIT_IO_OUT : KVM_EXIT_IO_IN;
                r->io.size = 1;
                r->io.port = v.step == 0 ? 0x10 : 0x11;
                r->io.count = 1;
                r->io.data_offset = data_offset;
                *(reinterpret_cast<std::byte*>(r) + data_offset) = std::byte{'A'};
                break;
            case 2:
                r->exit_reason = KVM_EXIT_MMIO;
                r->mmio.phys_addr = 0xd0000000;
                r->mmio.len = 4;
                r->mmio.is_write = 1;
                break;
            default: r->exit_reason = KVM_EXIT_HLT; break;
            }
            v.pending_in = v.step == 1;
            ++v.step;
            v.regs.rip += 1;
        }
        if ((r->kvm_valid_regs & KVM_SYNC_X86_REGS) != 0) std::memcpy(sync(r, 0), &v.regs, sizeof v.regs);
        if ((r->kvm_valid_regs & KVM_SYNC_X86_SREGS) != 0)
            std::memcpy(sync(r, offsetof(x86::sync_regs_layout, sregs)), &v.sregs, sizeof v.sregs);
        if (stop) {
            r->exit_reason = KVM_EXIT_INTR;
            errno = EINTR;
            return -1;
        }
        return 0;
    }
};
static_assert(kvm::SysPolicy<fault_sys>);

/// What the lifecycle saw.
struct outcome {
    bool halted = false;   ///< the guest reached HLT
    unsigned interrupted = 0;
    std::uint8_t in_al = 0; ///< AL after the IN (0x42 when completed)
    std::uint64_t rbx = 0;  ///< RBX written during the IN exit (7)
};

/// The typical lifecycle, through `fault_sys`. Every step's error is returned.
vcpu::result<outcome> lifecycle(bool sync) {
    outcome out;
    kvm::x86_64_options o;
    o.ram_bytes = 16 * fault_sys::page();
    o.vcpu.sync_regs = sync ? ~std::uint64_t{0} : 0;
    auto m = kvm::vm_init_x86_64<fault_sys>(o, x86::linux_boot_state());
    if (!m) return m.err();
    auto& vm = m->vm;

    auto rom = kvm::basic_guest_ram<fault_sys>::allocate(2 * fault_sys::page());
    if (!rom) return rom.err();
    VCPU_TRY_VOID(vm.set_memory(kvm::memory_slot{1, 0x100000, rom->bytes(), true, false}));
    const kvm::ioeventfd_spec doorbell{0x80, 1, true, {}};
    auto efd = vm.ioeventfd(doorbell);
    if (!efd) return efd.err();
    auto ifd = vm.irqfd(4);
    if (!ifd) return ifd.err();
    VCPU_TRY_VOID(vm.register_coalesced_mmio(0xd0001000, 0x1000));

    auto& cpu = m->vcpus.front();
    VCPU_TRY_VOID(cpu.hal().bind_kick_thread(SIGUSR2));
    auto rip = cpu.get(x86::rip);
    if (!rip) return rip.err();
    VCPU_TRY_VOID(cpu.set(x86::rax, 0x1200));
    VCPU_TRY_VOID(cpu.set(x86::dr7, 0x400)); // an unsynced block: GET, then SET before KVM_RUN
    auto misc = cpu.get(x86::ia32_misc_enable);
    if (!misc) return misc.err();
    auto events = cpu.hal().template modify<x86::events_block>(); // synced, or GET + SET
    if (!events) return events.err();
    std::array<std::byte, 8> reg{};
    constexpr std::uint64_t reg_id = KVM_REG_X86 | KVM_REG_SIZE_U64; // any 64-bit ONE_REG id
    VCPU_TRY_VOID(cpu.hal().set_one_reg(reg_id, reg));
    VCPU_TRY_VOID(cpu.hal().get_one_reg(reg_id, reg));

    vcpu::result<void> handler_error;
    for (int round = 0; round < 8 && !out.halted; ++round) {
        auto r = cpu.run(
            [&](vcpu::port_io& io) {
                if (!io.is_in()) return;
                io.set(0x42);
                if (auto s = cpu.set(x86::rbx, 7); !s) handler_error = s;
            },
            [](vcpu::mmio&) {}, [](vcpu::halt) { return vcpu::action::stop; });
        if (!handler_error) return handler_error.err(); // it came first
        if (!r) return r.err();
        if (std::holds_alternative<vcpu::halt>(*r)) out.halted = true;
        else if (std::holds_alternative<vcpu::interrupted>(*r)) ++out.interrupted;
    }
    if (out.halted) {
        auto dr7 = cpu.get(x86::dr7);
        if (!dr7) return dr7.err();
        if (*dr7 != 0x400) return vcpu::error{"dr7 after the runs", EIO};
        auto rax = cpu.get(x86::rax);
        if (!rax) return rax.err();
        out.in_al = static_cast<std::uint8_t>(*rax & 0xff);
        auto rbx = cpu.get(x86::rbx);
        if (!rbx) return rbx.err();
        out.rbx = *rbx;
    }
    VCPU_TRY_VOID(vm.irq_line(4, true));
    VCPU_TRY_VOID(vm.unregister_coalesced_mmio(0xd0001000, 0x1000));
    VCPU_TRY_VOID(vm.remove_irqfd(ifd->get(), 4));
    VCPU_TRY_VOID(vm.remove_ioeventfd(doorbell, efd->get()));
    VCPU_TRY_VOID(vm.remove_memory(1));
    return out;
}

/// The op a failure of `c` must be reported under.
std::string expected_op(const call& c) {
    switch (c.kind) {
    case call_kind::open: return "open /dev/kvm";
    case call_kind::mmap: return "mmap"; // "mmap guest RAM" or "mmap kvm_run"
    case call_kind::eventfd: return "eventfd";
    case call_kind::close: return "close";
    case call_kind::munmap: return "munmap";
    case call_kind::ioctl: break;
    }
    for (const auto& e : kvm::ioctls::system_table)
        if (e.code == c.request) return e.name;
    for (const auto& e : kvm::ioctls::vm_table)
        if (e.code == c.request) return e.name;
    for (const auto& e : kvm::ioctls::vcpu_table)
        if (e.code == c.request) return e.name;
    return "ioctl " + std::to_string(c.request);
}

/// True when the HAL absorbs a failure of `c` with `err` by design (the table at the top);
/// `persistent`: every call from the first injected one on fails.
bool absorbed(const call& c, int err, bool persistent) {
    switch (c.kind) {
    case call_kind::close:
    case call_kind::munmap: return true;
    case call_kind::ioctl: break;
    default: return false;
    }
    // Completing an exit, EAGAIN is retried a bounded number of times and then reported.
    if (c.request == KVM_RUN && c.completing && err == EAGAIN) return !persistent;
    if (c.request == KVM_RUN) return err == EINTR || err == EAGAIN;
    if (c.request == KVM_CHECK_EXTENSION)
        return c.arg == KVM_CAP_MAX_VCPU_ID || c.arg == KVM_CAP_MAX_VCPUS || c.arg == KVM_CAP_NR_VCPUS;
    return false;
}

std::string describe(long n, int err, bool persistent, const call& c) {
    return std::string(persistent ? "persistent " : "once ") + vcpu::error::errno_name(err) + " at call " +
           std::to_string(n) + " (" + expected_op(c) + (c.completing ? ", completing" : "") + ")";
}

/// Releases what a failed munmap left mapped (the fake's real memory).
void release_leftovers() {
    for (auto [p, n] : fault_sys::failed_unmaps) ::munmap(p, n);
    fault_sys::failed_unmaps.clear();
}

} // namespace

TEST_CASE("kvm errors: open names the path it tried, under the stable 'open /dev/kvm' op") {
    fault_sys::reset(0, 0, false);
    auto sys = kvm::basic_system<fault_sys>::open("/nonexistent/kvm");
    REQUIRE_FALSE(sys);
    CHECK(std::string(sys.err().op) == kvm::basic_system<fault_sys>::open_op);
    CHECK(sys.err().code == ENOENT);
    CHECK(sys.err().text() == "/nonexistent/kvm");
    CHECK(sys.err().message().find("path=\"/nonexistent/kvm\"") != std::string::npos);
}

TEST_CASE("kvm errors: vm_init_x86_64 refuses bad options up front, naming the values") {
    const auto page = fault_sys::page();
    auto init = [](kvm::x86_64_options o) {
        fault_sys::reset(0, 0, false);
        return kvm::vm_init_x86_64<fault_sys>(o);
    };
    kvm::x86_64_options o;
    o.ram_bytes = 5000;
    auto r = init(o);
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().op) == "vm_init_x86_64");
    CHECK(r.err().code == EINVAL);
    CHECK(r.err().value("ram_bytes") == 5000);
    CHECK(r.err().value("page_size") == page);
    CHECK(r.err().message().find("ram_bytes=5000") != std::string::npos);
    CHECK(fault_sys::calls == 0); // refused before any system call
    CHECK(fault_sys::fds.empty());

    o.ram_bytes = 16 * page;
    o.vcpus = 0;
    r = init(o);
    REQUIRE_FALSE(r);
    CHECK(r.err().value("vcpus") == 0);

    o.vcpus = 9; // the fake's KVM_CAP_MAX_VCPUS is 8
    r = init(o);
    REQUIRE_FALSE(r);
    CHECK(r.err().code == EINVAL);
    CHECK(r.err().value("vcpus") == 9);
    CHECK(r.err().value("max_vcpus") == 8);
    CHECK(fault_sys::fds.empty());
    CHECK(fault_sys::maps.empty());

    o.vcpus = 1;
    o.irqchip = false; // PIT still asked for
    r = init(o);
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().detail).find("irqchip") != std::string::npos);

    o.pit = false;
    r = init(o);
    REQUIRE_MESSAGE(r, (r ? "" : r.err().message()));
}

TEST_CASE("kvm errors: memory slots are checked up front; overlaps name both slots and ranges") {
    const auto page = fault_sys::page();
    fault_sys::reset(0, 0, false);
    fault_sys::logging = true;
    auto sys = kvm::basic_system<fault_sys>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto ram = kvm::basic_guest_ram<fault_sys>::allocate(16 * page);
    REQUIRE(ram);
    REQUIRE(vm->set_memory({0, 0, ram->bytes()}));
    const long kernel_calls = fault_sys::count(KVM_SET_USER_MEMORY_REGION);

    auto overlap = vm->set_memory({1, 8 * page, ram->bytes().first(4 * page)});
    REQUIRE_FALSE(overlap);
    const auto& e = overlap.err();
    CHECK(std::string(e.op) == "KVM_SET_USER_MEMORY_REGION");
    CHECK(e.code == EEXIST);
    CHECK(e.value("slot") == 1);
    CHECK(e.value("gpa") == 8 * page);
    CHECK(e.value("other_slot") == 0);
    CHECK(e.value("other_gpa") == 0);
    CHECK(e.message().find("other_gpa=[0x0, 0x" + [&] {
        char b[32];
        std::snprintf(b, sizeof b, "%zx", 16 * page);
        return std::string(b);
    }() + ")") != std::string::npos);

    auto unaligned = vm->set_memory({1, 0x100000 + 8, ram->bytes().first(page)});
    REQUIRE_FALSE(unaligned);
    CHECK(unaligned.err().code == EINVAL);
    CHECK(unaligned.err().value("gpa") == 0x100000 + 8);
    auto odd_size = vm->set_memory({1, 0x100000, ram->bytes().first(5000)});
    REQUIRE_FALSE(odd_size);
    CHECK(odd_size.err().value("size") == 5000);
    auto odd_host = vm->set_memory({1, 0x100000, ram->bytes().subspan(8, page)});
    REQUIRE_FALSE(odd_host);
    CHECK(odd_host.err().value("host").has_value());
    auto wraps = vm->set_memory({1, ~std::uint64_t{0} - page + 1, ram->bytes().first(2 * page)});
    REQUIRE_FALSE(wraps);
    CHECK(wraps.err().code == EINVAL);
    CHECK(fault_sys::count(KVM_SET_USER_MEMORY_REGION) == kernel_calls); // none reached the kernel

    // Another address space (slot id bit 16 and up) may overlap; moving slot 0 over itself is
    // no overlap; once slot 0 is gone, slot 1 may take its range.
    REQUIRE(vm->set_memory({0, 0x200000, ram->bytes()}));
    REQUIRE(vm->remove_memory(0));
    REQUIRE(vm->set_memory({1, 0, ram->bytes().first(4 * page)}));
    auto again = vm->set_memory({2, 0, ram->bytes().first(page)});
    REQUIRE_FALSE(again);
    CHECK(again.err().value("other_slot") == 1);

    // A kernel refusal carries the slot and range as well.
    fault_sys::inject_at = fault_sys::calls + 1;
    fault_sys::inject_errno = ENOMEM;
    auto refused = vm->set_memory({3, 0x400000, ram->bytes().first(page)});
    REQUIRE_FALSE(refused);
    CHECK(refused.err().code == ENOMEM);
    CHECK(refused.err().value("slot") == 3);
    CHECK(refused.err().value("gpa") == 0x400000);
    fault_sys::inject_at = 0;
    fault_sys::logging = false;
}

TEST_CASE("kvm errors: a vCPU id over the host limit is refused with the id and the limits") {
    fault_sys::reset(0, 0, false);
    fault_sys::logging = true;
    auto sys = kvm::basic_system<fault_sys>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto cpu = vm->create_vcpu<arch>(8);
    REQUIRE_FALSE(cpu);
    CHECK(std::string(cpu.err().op) == "KVM_CREATE_VCPU");
    CHECK(cpu.err().code == EINVAL);
    CHECK(cpu.err().value("vcpu_id") == 8);
    CHECK(cpu.err().value("max_vcpu_id") == 8);
    CHECK(fault_sys::count(KVM_CREATE_VCPU) == 0); // refused before the kernel saw it

    // Without KVM_CAP_MAX_VCPU_ID the kernel refuses, and the error still says the limits.
    fault_sys::max_vcpu_id = 0;
    auto late = vm->create_vcpu<arch>(8);
    REQUIRE_FALSE(late);
    CHECK(fault_sys::count(KVM_CREATE_VCPU) == 1);
    CHECK(late.err().code == EINVAL);
    CHECK(late.err().value("vcpu_id") == 8);
    CHECK(late.err().value("max_vcpus") == 8);
    CHECK(late.err().value("max_vcpu_id") == 8); // MAX_VCPU_ID absent: MAX_VCPUS, as the API says
    CHECK(late.err().message().find("vcpu_id=8, max_vcpu_id=8, max_vcpus=8") != std::string::npos);

    // A vCPU's failures name it.
    auto ok_cpu = vm->create_vcpu<arch>(3);
    REQUIRE(ok_cpu);
    fault_sys::inject_at = fault_sys::calls + 1;
    fault_sys::inject_errno = EFAULT;
    auto run = ok_cpu->hal().enter();
    REQUIRE_FALSE(run);
    CHECK(run.err().value("vcpu_id") == 3);
    fault_sys::inject_at = 0;
    fault_sys::logging = false;
}

TEST_CASE("kvm fault injection: the lifecycle runs clean on the fake kernel") {
    for (bool sync : {true, false}) {
        CAPTURE(sync);
        fault_sys::reset(0, 0, false);
        auto r = lifecycle(sync);
        REQUIRE_MESSAGE(r, (r ? "" : r.err().message()));
        CHECK(r->halted);
        CHECK(r->interrupted == 0);
        CHECK(r->in_al == 0x42); // the IN was completed before the held RBX write...
        CHECK(r->rbx == 7);      // ...and the write survived the completion
        CHECK(fault_sys::fds.empty());
        CHECK(fault_sys::maps.empty());
        CHECK(fault_sys::defects.empty());
    }
}

TEST_CASE("kvm fault injection: every call, six errnos, once and persistently") {
    constexpr int errnos[] = {EINTR, EAGAIN, EBADF, ENOMEM, EFAULT, EINVAL};
    std::size_t runs = 0, errors = 0, successes = 0;
    std::set<std::string> sites;
    for (bool sync : {true, false}) {
        // Enumerate: the lifecycle's calls, in order.
        fault_sys::reset(0, 0, false);
        fault_sys::logging = true;
        auto clean = lifecycle(sync);
        fault_sys::logging = false;
        REQUIRE(clean);
        const std::vector<call> calls = fault_sys::log;
        REQUIRE(calls.size() > 40);
        for (const auto& c : calls) sites.insert(expected_op(c) + (c.completing ? " (completing)" : ""));
        for (long n = 1; n <= static_cast<long>(calls.size()); ++n) {
            for (int err : errnos) {
                for (bool persistent : {false, true}) {
                    fault_sys::reset(n, err, persistent);
                    auto r = lifecycle(sync);
                    ++runs;
                    const std::string what = describe(n, err, persistent, calls[static_cast<std::size_t>(n - 1)]) +
                                             (sync ? ", sync regs" : ", no sync regs");
                    CAPTURE(what);
                    REQUIRE_FALSE(fault_sys::injected.empty());
                    CHECK_MESSAGE(!fault_sys::runaway, "did not end: the call budget ran out");
                    CHECK_MESSAGE(fault_sys::defects.empty(),
                                  (fault_sys::defects.empty() ? "" : fault_sys::defects.front()));
                    CHECK_MESSAGE(fault_sys::fds.empty(), "fd leak: ", fault_sys::fds.size(), " left open");
                    CHECK_MESSAGE(fault_sys::maps.empty(), "mmap leak: ", fault_sys::maps.size(), " left mapped");
                    // The first injected failure the HAL does not absorb decides the outcome.
                    const call* decisive = nullptr;
                    for (const auto& c : fault_sys::injected)
                        if (!absorbed(c, err, persistent)) {
                            decisive = &c;
                            break;
                        }
                    if (decisive == nullptr) {
                        CHECK_MESSAGE(r, (r ? "" : r.err().message()));
                        ++successes;
                    } else {
                        REQUIRE_MESSAGE(!r, "succeeded although ", expected_op(*decisive), " failed");
                        const std::string op = r.err().op;
                        CHECK_MESSAGE(op.rfind(expected_op(*decisive), 0) == 0, r.err().message());
                        CHECK_MESSAGE(r.err().code == err, r.err().message());
                        ++errors;
                    }
                    if (r && !persistent) {
                        // A failure absorbed once changes nothing the guest sees.
                        CHECK(r->halted);
                        if (r->halted) {
                            CHECK(r->in_al == 0x42);
                            CHECK(r->rbx == 7);
                        }
                    }
                    release_leftovers();
                }
            }
        }
        MESSAGE("sync regs ", sync, ": ", calls.size(), " calls x 6 errnos x 2 modes");
    }
    std::string list;
    for (const auto& s : sites) list += "\n  " + s;
    MESSAGE(runs, " injected lifecycles (", errors, " errors, ", successes, " absorbed); distinct calls:", list);
    CHECK(sites.count("KVM_RUN (completing)") == 1);
    CHECK(sites.count("eventfd") == 1);
    CHECK(sites.count("close") == 1);
}

#endif // __x86_64__
