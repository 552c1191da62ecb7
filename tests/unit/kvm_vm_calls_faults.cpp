// The VM calls of kvm/vm_calls.hpp, kvm/dirty.hpp and the eventfd/slot members of kvm/vm.hpp
// against a fake kernel Sys policy, so they run without /dev/kvm:
//   - fault injection: every call is run once cleanly to count its system calls, then again
//     with each of those calls failing (EINTR, EBADF, ENOMEM, EFAULT, EINVAL); the result must be
//     an error whose op names the failed call (the ioctl's table name, "KVM_CHECK_EXTENSION",
//     "eventfd", "mmap dirty ring") and whose code is the injected errno, and no fd or mapping
//     may leak;
//   - typed arguments checked before the ioctl: each refusal is the documented errno, says why
//     with the values, and reaches no kernel call (ioeventfd lengths and datamatch, dirty ring
//     sizes, capability masks, GSI routes, clear-log alignment, guest_memfd sizes);
//   - what reaches the kernel is what the types say (flags, args, C layouts of flexible arrays).
// tests/guest/x86_64_vm.cpp runs the same calls on real KVM.
#include <doctest/doctest.h>

#include <kvm/dirty.hpp>
#include <kvm/kvm.hpp>
#include <kvm/vm_calls.hpp>

#if defined(__x86_64__)
#include <arch/x86_64/arch.hpp>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <linux/kvm.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;
using arch = vcpu::arch::x86_64;

/// A fake kernel: capabilities from a table, fds handed out and tracked, real anonymous
/// mappings, the last argument of each ioctl kept for inspection, and call N failing on request.
struct fake {
    static constexpr int sys_fd = 500, vm_fd = 501;
    static inline std::map<long, int> caps;
    static inline long calls = 0;
    static inline long fail_at = 0; ///< 1-based call number to fail (0: none)
    static inline int fail_errno = 0;
    static inline std::string failed_op; ///< what the failing call was, in the library's words
    static inline std::set<int> open_fds;
    static inline std::map<void*, std::size_t> maps;
    static inline int next_fd = 600;
    static inline std::vector<unsigned long> requests; ///< ioctl requests, in order
    static inline std::vector<std::byte> last_arg;      ///< bytes of the last pointer argument
    static inline std::uintptr_t last_int_arg = 0;
    static inline std::uint64_t dirty_pattern = 0; ///< KVM_GET_DIRTY_LOG writes it to every word
    static inline std::vector<std::uint64_t> cleared; ///< the bitmap of the last KVM_CLEAR_DIRTY_LOG
    static inline off_t last_mmap_offset = -1;

    static void reset() {
        caps = {{KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 3}, {KVM_CAP_DIRTY_LOG_RING, 65536},
                {KVM_CAP_DIRTY_LOG_RING_ACQ_REL, 65536}, {KVM_CAP_SPLIT_IRQCHIP, 1}, {KVM_CAP_X2APIC_API, 3},
                {KVM_CAP_X86_DISABLE_EXITS, 14}, {KVM_CAP_X86_USER_SPACE_MSR, 1},
                {kvm::abi::cap_user_memory2, 1}, {kvm::abi::cap_guest_memfd, 1},
                {kvm::abi::cap_memory_attributes, 8}, {KVM_CAP_IRQ_ROUTING, 1024}, {KVM_CAP_MSI_DEVID, 1},
                {KVM_CAP_SIGNAL_MSI, 1}, {KVM_CAP_IRQFD_RESAMPLE, 1}, {KVM_CAP_COALESCED_MMIO, 1},
                {KVM_CAP_SYNC_REGS, 0}, {KVM_CAP_READONLY_MEM, 1}};
        calls = fail_at = 0;
        fail_errno = 0;
        failed_op.clear();
        requests.clear();
        last_arg.clear();
        cleared.clear();
        dirty_pattern = 0;
        last_mmap_offset = -1;
    }
    static bool inject(std::string op) {
        if (++calls != fail_at) return false;
        failed_op = std::move(op);
        errno = fail_errno;
        return true;
    }
    static int new_fd() {
        const int fd = next_fd++;
        open_fds.insert(fd);
        return fd;
    }

    static int open(const char*, int) noexcept { return sys_fd; }
    static int close(int fd) noexcept {
        open_fds.erase(fd);
        return 0;
    }
    static int eventfd(unsigned, int) noexcept {
        if (inject("eventfd")) return -1;
        return new_fd();
    }
    static void* mmap(void* a, std::size_t n, int prot, int, int, off_t off) noexcept {
        if (off != 0 && inject("mmap dirty ring")) return MAP_FAILED;
        last_mmap_offset = off;
        void* p = ::mmap(a, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) maps[p] = n;
        return p;
    }
    static int munmap(void* a, std::size_t n) noexcept {
        maps.erase(a);
        return ::munmap(a, n);
    }
    static std::size_t arg_size(unsigned long req) noexcept { return _IOC_SIZE(req); }
    static const char* name_of(unsigned long req) noexcept {
        for (const auto& e : kvm::ioctls::vm_table)
            if (e.code == req) return e.name;
        for (const auto& e : kvm::ioctls::vcpu_table)
            if (e.code == req) return e.name;
        for (const auto& e : kvm::ioctls::system_table)
            if (e.code == req) return e.name;
        return "?";
    }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        requests.push_back(req);
        last_int_arg = reinterpret_cast<std::uintptr_t>(arg);
        if (arg != nullptr && req != KVM_CHECK_EXTENSION && req != KVM_CREATE_VCPU && req != KVM_CREATE_VM) {
            const auto* b = static_cast<const std::byte*>(arg);
            last_arg.assign(b, b + arg_size(req));
        }
        if (inject(name_of(req))) return -1;
        if (fd == sys_fd) {
            if (req == KVM_GET_API_VERSION) return KVM_API_VERSION;
            if (req == KVM_GET_VCPU_MMAP_SIZE) return 3 * 4096;
            if (req == KVM_CREATE_VM) return vm_fd;
            if (req == KVM_CHECK_EXTENSION) return caps[static_cast<long>(last_int_arg)];
        }
        if (req == KVM_CHECK_EXTENSION) return caps[static_cast<long>(last_int_arg)];
        if (req == KVM_CREATE_VCPU) return new_fd();
        if (req == kvm::ioctls::vm::create_guest_memfd.code) return new_fd();
        if (req == KVM_GET_DIRTY_LOG) {
            auto* d = static_cast<::kvm_dirty_log*>(arg);
            auto* words = static_cast<std::uint64_t*>(d->dirty_bitmap);
            // The slot of these tests is 256 pages: 4 words.
            for (int i = 0; i < 4; ++i) words[i] = dirty_pattern;
            return 0;
        }
        if (req == KVM_CLEAR_DIRTY_LOG) {
            auto* c = static_cast<::kvm_clear_dirty_log*>(arg);
            const auto* words = static_cast<const std::uint64_t*>(c->dirty_bitmap);
            cleared.assign(words, words + (c->num_pages + 63) / 64);
            return 0;
        }
        if (req == KVM_RESET_DIRTY_RINGS) return 7;
        if (req == KVM_SIGNAL_MSI) return 1;
        return 0;
    }
};
static_assert(kvm::SysPolicy<fake>);

/// The error message of a failed result, empty for a good one (doctest stringifies `*_MESSAGE`
/// arguments of passing checks too, with `-s`, and `err()` of a good result traps).
template <class R>
std::string why(const R& r) {
    return r ? std::string() : r.err().message();
}

using vm_t = kvm::basic_vm<fake>;
using cpu_t = kvm::hal_vcpu<fake, arch>;

/// A VM, one vCPU and slot 1 (256 pages, dirty logging) on the fake kernel.
struct rig {
    kvm::basic_system<fake> sys;
    vm_t vm;
    cpu_t cpu;
    kvm::basic_guest_ram<fake> ram;

    static rig make() {
        auto s = kvm::basic_system<fake>::open();
        REQUIRE(s);
        auto v = s->create_vm();
        REQUIRE(v);
        auto c = v->create_hal_vcpu<arch>(0);
        REQUIRE_MESSAGE(c, why(c));
        auto r = kvm::basic_guest_ram<fake>::allocate(256 * 4096);
        REQUIRE(r);
        REQUIRE(v->set_memory(kvm::memory_slot{1, 0x100000, r->bytes(), false, true}));
        return rig{std::move(*s), std::move(*v), std::move(*c), std::move(*r)};
    }
};

/// One call under test: returns its error, or none.
using op_fn = std::function<std::optional<vcpu::error>(rig&)>;
template <class R>
std::optional<vcpu::error> err_of(const R& r) {
    if (r) return std::nullopt;
    return r.err();
}

struct named_op {
    const char* name;
    op_fn run;
};

std::vector<named_op> ops() {
    return {
        {"enable_cap", [](rig& t) { return err_of(kvm::enable_cap(t.vm, KVM_CAP_X2APIC_API, {1, 0, 0, 0})); }},
        {"enable_manual_dirty_log_protect",
         [](rig& t) { return err_of(kvm::enable_manual_dirty_log_protect(t.vm, {true})); }},
        {"enable_dirty_ring", [](rig& t) { return err_of(kvm::enable_dirty_ring(t.vm, 16384)); }},
        {"enable_split_irqchip", [](rig& t) { return err_of(kvm::enable_split_irqchip(t.vm)); }},
        {"enable_x2apic_api", [](rig& t) { return err_of(kvm::enable_x2apic_api(t.vm, {true, true})); }},
        {"disable_exits", [](rig& t) { return err_of(kvm::disable_exits(t.vm, {false, true, true, false})); }},
        {"enable_user_space_msr", [](rig& t) { return err_of(kvm::enable_user_space_msr(t.vm, {true, true, false})); }},
        {"create_guest_memfd", [](rig& t) { return err_of(kvm::create_guest_memfd(t.vm, 1 << 20)); }},
        {"set_memory2", [](rig& t) {
             kvm::memory_slot2 m{kvm::memory_slot{2, 0x4000000, t.ram.bytes(), false, true}, 77, 0x2000};
             return err_of(t.vm.set_memory2(m));
         }},
        {"set_memory_attributes", [](rig& t) {
             return err_of(kvm::set_memory_attributes(t.vm, 0x100000, 0x2000, kvm::abi::memory_attribute_private));
         }},
        {"set_gsi_routing", [](rig& t) {
             const kvm::gsi_route routes[] = {kvm::irqchip_route{4, KVM_IRQCHIP_IOAPIC, 4},
                                              kvm::msi_route{30, {0xfee00000, 0x41, 0x10}}};
             return err_of(kvm::set_gsi_routing(t.vm, std::span<const kvm::gsi_route>(routes)));
         }},
        {"signal_msi", [](rig& t) { return err_of(kvm::signal_msi(t.vm, {0xfee00000, 0x30, 5})); }},
        {"set_signal_mask", [](rig& t) {
             sigset_t s;
             sigemptyset(&s);
             sigaddset(&s, SIGUSR2);
             return err_of(kvm::set_signal_mask(t.cpu, s));
         }},
        {"clear_signal_mask", [](rig& t) { return err_of(kvm::clear_signal_mask(t.cpu)); }},
        {"irqfd_resample", [](rig& t) { return err_of(t.vm.irqfd_resample(5)); }},
        {"ioeventfd", [](rig& t) { return err_of(t.vm.ioeventfd({0xd0000000, 8, false, 0x1122334455667788ull})); }},
        {"dirty_log harvest", [](rig& t) {
             auto log = kvm::basic_dirty_log<fake>::create(t.vm, 1, true);
             if (!log) return err_of(log);
             fake::dirty_pattern = 0x5;
             return err_of(log->harvest([](kvm::dirty_page) {}));
         }},
        {"dirty_log clear", [](rig& t) {
             auto log = kvm::basic_dirty_log<fake>::create(t.vm, 1, true);
             if (!log) return err_of(log);
             return err_of(log->clear(64, 192));
         }},
        {"dirty_ring map", [](rig& t) {
             auto r = kvm::basic_dirty_ring<fake>::map(t.cpu, kvm::dirty_ring_config{65536, 4096, true});
             return err_of(r);
         }},
        {"reset_dirty_rings", [](rig& t) { return err_of(kvm::reset_dirty_rings(t.vm)); }},
    };
}

} // namespace

TEST_CASE("vm calls faults: every system call of every VM call fails cleanly, naming the call and errno") {
    fake::reset();
    for (const auto& op : ops()) {
        CAPTURE(op.name);
        long base = 0, n = 0;
        {
            fake::reset();
            auto t = rig::make();
            base = fake::calls;
            auto e = op.run(t);
            REQUIRE_MESSAGE(!e, op.name << ": " << (e ? e->message() : ""));
            n = fake::calls - base;
        }
        REQUIRE(fake::open_fds.empty());
        REQUIRE(fake::maps.empty());
        CHECK(n >= 1);
        for (long k = 1; k <= n; ++k) {
            for (int err : {EINTR, EBADF, ENOMEM, EFAULT, EINVAL}) {
                CAPTURE(k);
                CAPTURE(err);
                fake::reset();
                {
                    auto t = rig::make();
                    fake::fail_at = fake::calls + k;
                    fake::fail_errno = err;
                    auto e = op.run(t);
                    REQUIRE_MESSAGE(e.has_value(), op.name << " succeeded although call " << k << " failed");
                    CHECK(e->code == err);
                    CHECK(std::string_view(e->op) == fake::failed_op);
                    CHECK(e->message().find(fake::failed_op) != std::string::npos);
                }
                CHECK(fake::open_fds.empty()); // no eventfd, guest_memfd or vCPU fd leaked
                CHECK(fake::maps.empty());
            }
        }
    }
}

TEST_CASE("vm calls faults: ioeventfd arguments are checked before any system call") {
    fake::reset();
    auto t = rig::make();
    struct bad {
        kvm::ioeventfd_spec spec;
        const char* says;
    };
    const bad cases[] = {
        {{0xd0000000, 3, false, std::nullopt}, "length must be 0 (any), 1, 2, 4 or 8"},
        {{0xd0000000, 16, false, std::nullopt}, "length must be 0"},
        {{0xd0000000, 0, false, 1}, "zero-length (any length) ioeventfd cannot match data"},
        {{0x60, 1, true, 0x1ff}, "datamatch does not fit in len bytes"},
        {{0xd0000000, 4, false, 0x1'0000'0000ull}, "datamatch does not fit"},
        {{0xfffe, 4, true, std::nullopt}, "port range ends past 0xffff"},
        {{~std::uint64_t{0} - 1, 4, false, std::nullopt}, "address range wraps"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.says);
        const long before = fake::calls;
        auto r = t.vm.ioeventfd(c.spec);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        CHECK(std::string_view(r.err().op) == "KVM_IOEVENTFD");
        CHECK(r.err().message().find(c.says) != std::string::npos);
        CHECK(fake::calls == before); // no eventfd made, no ioctl
        auto rm = t.vm.remove_ioeventfd(c.spec, 3);
        CHECK_FALSE(rm);
        CHECK(fake::calls == before);
    }
    // The 3-byte one names the length.
    auto r = t.vm.ioeventfd({0xd0000000, 3, false, std::nullopt});
    CHECK(r.err().message().find("len=3") != std::string::npos);
    // Every valid length, PIO and MMIO, with and without datamatch, reaches the kernel as typed.
    for (std::uint32_t len : {0u, 1u, 2u, 4u, 8u}) {
        for (bool pio : {false, true}) {
            for (bool match : {false, true}) {
                if (len == 0 && match) continue;
                CAPTURE(len);
                CAPTURE(pio);
                CAPTURE(match);
                const std::uint64_t value = len == 0 ? 0 : (std::uint64_t{1} << (8 * len - 1)) | 1;
                kvm::ioeventfd_spec s{pio ? 0x70u : 0xd0001000u, len, pio,
                                      match ? std::optional<std::uint64_t>(value) : std::nullopt};
                auto efd = t.vm.ioeventfd(s);
                REQUIRE_MESSAGE(efd, why(efd));
                ::kvm_ioeventfd e{};
                REQUIRE(fake::last_arg.size() == sizeof e);
                std::memcpy(&e, fake::last_arg.data(), sizeof e);
                CHECK(e.len == len);
                CHECK(e.addr == s.addr);
                CHECK(e.fd == efd->get());
                CHECK(((e.flags & KVM_IOEVENTFD_FLAG_PIO) != 0) == pio);
                CHECK(((e.flags & KVM_IOEVENTFD_FLAG_DATAMATCH) != 0) == match);
                if (match) CHECK(e.datamatch == value);
            }
        }
    }
}

TEST_CASE("vm calls faults: capability arguments are checked against what the host reports") {
    fake::reset();
    auto t = rig::make();
    auto expect = [](const vcpu::result<void>& r, int code, const char* says) {
        REQUIRE_FALSE(r);
        CHECK(r.err().code == code);
        CHECK(r.err().message().find(says) != std::string::npos);
    };
    // Dirty ring sizes: power of two, at least a page, at most the host's maximum (65536 here).
    for (std::size_t bad : {std::size_t{0}, std::size_t{3000}, std::size_t{12288}, std::size_t{2048}}) {
        CAPTURE(bad);
        auto r = kvm::enable_dirty_ring(t.vm, bad);
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EINVAL);
        CHECK(r.err().message().find("power of two") != std::string::npos);
    }
    auto big = kvm::enable_dirty_ring(t.vm, 131072);
    REQUIRE_FALSE(big);
    CHECK(big.err().code == E2BIG);
    CHECK(big.err().message().find("max_bytes=65536") != std::string::npos);
    // What reached the kernel for a good size: ACQ_REL preferred, args[0] = bytes.
    auto good = kvm::enable_dirty_ring(t.vm, 8192);
    REQUIRE(good);
    CHECK(good->acq_rel);
    CHECK(good->entries == 8192 / 16);
    ::kvm_enable_cap c{};
    std::memcpy(&c, fake::last_arg.data(), sizeof c);
    CHECK(c.cap == KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
    CHECK(c.args[0] == 8192);
    // Without ACQ_REL, "preferred" falls back to the plain ring; "acq_rel" says what is missing.
    fake::caps[KVM_CAP_DIRTY_LOG_RING_ACQ_REL] = 0;
    auto plain = kvm::enable_dirty_ring(t.vm, 8192);
    REQUIRE(plain);
    CHECK_FALSE(plain->acq_rel);
    auto need = kvm::enable_dirty_ring(t.vm, 8192, kvm::dirty_ring_ordering::acq_rel);
    REQUIRE_FALSE(need);
    CHECK(need.err().code == EOPNOTSUPP);
    CHECK(need.err().message().find("host kernel lacks KVM_CAP_DIRTY_LOG_RING_ACQ_REL") != std::string::npos);

    // Masks: the host's value says which bits it supports.
    fake::caps[KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2] = 1;
    expect(kvm::enable_manual_dirty_log_protect(t.vm, {true}), EINVAL, "supported=0x1");
    fake::caps[KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2] = 0;
    expect(kvm::enable_manual_dirty_log_protect(t.vm), EOPNOTSUPP,
           "host kernel lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
    expect(kvm::disable_exits(t.vm, {true, false, false, false}), EINVAL, "exit the host cannot disable");
    fake::caps[KVM_CAP_X2APIC_API] = 1;
    expect(kvm::enable_x2apic_api(t.vm, {false, true}), EINVAL, "requested=0x2");
    fake::caps[KVM_CAP_SPLIT_IRQCHIP] = 0;
    expect(kvm::enable_split_irqchip(t.vm), EOPNOTSUPP, "host kernel lacks KVM_CAP_SPLIT_IRQCHIP");
    fake::caps[KVM_CAP_X86_USER_SPACE_MSR] = 0;
    expect(kvm::enable_user_space_msr(t.vm, {true, false, false}), EOPNOTSUPP,
           "host kernel lacks KVM_CAP_X86_USER_SPACE_MSR");
    // The typed flags become the documented bits.
    fake::caps[KVM_CAP_X86_DISABLE_EXITS] = 15;
    REQUIRE(kvm::disable_exits(t.vm, {true, true, false, true}));
    std::memcpy(&c, fake::last_arg.data(), sizeof c);
    CHECK(c.cap == KVM_CAP_X86_DISABLE_EXITS);
    CHECK(c.args[0] == (KVM_X86_DISABLE_EXITS_MWAIT | KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_CSTATE));

    // guest_memfd, memory2 and attributes.
    auto odd = kvm::create_guest_memfd(t.vm, 1000);
    REQUIRE_FALSE(odd);
    CHECK(odd.err().code == EINVAL);
    CHECK(odd.err().message().find("size is not a non-zero multiple") != std::string::npos);
    expect(t.vm.set_memory2({kvm::memory_slot{3, 0x8000000, t.ram.bytes(), false, false}, 9, 100}), EINVAL,
           "guest_memfd offset is not page aligned");
    expect(kvm::set_memory_attributes(t.vm, 0x1000, 0x1000, 1), EINVAL, "memory attribute the VM does not support");
    expect(kvm::set_memory_attributes(t.vm, 0x1800, 0x1000, kvm::abi::memory_attribute_private), EINVAL,
           "page aligned");
    fake::caps[kvm::abi::cap_user_memory2] = 0;
    expect(t.vm.set_memory2({kvm::memory_slot{3, 0x8000000, t.ram.bytes(), false, false}, -1, 0}), EOPNOTSUPP,
           "host kernel lacks KVM_CAP_USER_MEMORY2");
    fake::caps[kvm::abi::cap_guest_memfd] = 0;
    auto g = kvm::create_guest_memfd(t.vm, 4096);
    REQUIRE_FALSE(g);
    CHECK(g.err().message().find("host kernel lacks KVM_CAP_GUEST_MEMFD") != std::string::npos);
    fake::caps[kvm::abi::cap_memory_attributes] = 0;
    expect(kvm::set_memory_attributes(t.vm, 0x1000, 0x1000, kvm::abi::memory_attribute_private), EOPNOTSUPP,
           "host kernel lacks KVM_CAP_MEMORY_ATTRIBUTES");
}

TEST_CASE("vm calls faults: set_memory2 reaches the kernel in the documented layout and keeps the overlap check") {
    fake::reset();
    auto t = rig::make();
    REQUIRE(t.vm.set_memory2({kvm::memory_slot{2, 0x4000000, t.ram.bytes(), false, true}, 42, 0x3000}));
    REQUIRE(fake::requests.back() == kvm::ioctls::vm::set_user_memory_region2.code);
    kvm::abi::userspace_memory_region2 r{};
    REQUIRE(fake::last_arg.size() == sizeof r);
    std::memcpy(&r, fake::last_arg.data(), sizeof r);
    CHECK(r.slot == 2);
    CHECK(r.guest_phys_addr == 0x4000000);
    CHECK(r.memory_size == t.ram.size());
    CHECK(r.flags == (KVM_MEM_LOG_DIRTY_PAGES | kvm::abi::mem_guest_memfd));
    CHECK(r.guest_memfd == 42);
    CHECK(r.guest_memfd_offset == 0x3000);
    auto found = t.vm.find_slot(2);
    REQUIRE(found);
    CHECK(found->size == t.ram.size());
    // Overlapping slot 1 (at 0x100000) is refused by the same bookkeeping as set_memory.
    auto over = t.vm.set_memory2({kvm::memory_slot{5, 0x100000, t.ram.bytes(), false, false}, -1, 0});
    REQUIRE_FALSE(over);
    CHECK(over.err().code == EEXIST);
    CHECK(std::string_view(over.err().op) == "KVM_SET_USER_MEMORY_REGION2");
}

TEST_CASE("vm calls faults: GSI routes are checked, and laid out as struct kvm_irq_routing in C") {
    fake::reset();
    auto t = rig::make();
    auto route = [&](std::initializer_list<kvm::gsi_route> rs) {
        std::vector<kvm::gsi_route> v(rs);
        return kvm::set_gsi_routing(t.vm, std::span<const kvm::gsi_route>(v));
    };
    auto bad_pin = route({kvm::irqchip_route{1, KVM_IRQCHIP_IOAPIC, KVM_IOAPIC_NUM_PINS}});
    REQUIRE_FALSE(bad_pin);
    CHECK(bad_pin.err().code == EINVAL);
    CHECK(bad_pin.err().message().find("pin=24") != std::string::npos);
    auto bad_pic = route({kvm::irqchip_route{1, KVM_IRQCHIP_PIC_SLAVE, 8}});
    REQUIRE_FALSE(bad_pic);
    auto bad_chip = route({kvm::irqchip_route{1, 3, 0}});
    REQUIRE_FALSE(bad_chip);
    auto bad_gsi = route({kvm::msi_route{1024, {0xfee00000, 0, std::nullopt}}});
    REQUIRE_FALSE(bad_gsi);
    CHECK(bad_gsi.err().message().find("max=1024") != std::string::npos);
    std::vector<kvm::gsi_route> many(1025, kvm::gsi_route{kvm::msi_route{1, {}}});
    auto too_many = kvm::set_gsi_routing(t.vm, std::span<const kvm::gsi_route>(many));
    REQUIRE_FALSE(too_many);
    CHECK(too_many.err().message().find("routes=1025") != std::string::npos);
    fake::caps[KVM_CAP_MSI_DEVID] = 0;
    auto devid = route({kvm::msi_route{2, {0xfee00000, 0, 7}}});
    REQUIRE_FALSE(devid);
    CHECK(devid.err().code == EOPNOTSUPP);
    auto msi_devid = kvm::signal_msi(t.vm, {0xfee00000, 0, 7});
    REQUIRE_FALSE(msi_devid);
    CHECK(msi_devid.err().code == EOPNOTSUPP);
    fake::caps[KVM_CAP_MSI_DEVID] = 1;
    // The C layout: nr and flags, then 48-byte entries at byte 8 (the request code's size is 8).
    const long before = fake::calls;
    REQUIRE(route({kvm::irqchip_route{4, KVM_IRQCHIP_IOAPIC, 4}, kvm::msi_route{30, {0x1'fee0'0000ull, 0x41, 9}}}));
    CHECK(fake::calls > before);
    CHECK(_IOC_SIZE(fake::requests.back()) == 8);
}

TEST_CASE("vm calls faults: the dirty log harvests set bits, re-protects exactly them, and checks clear ranges") {
    fake::reset();
    auto t = rig::make();
    auto unknown = kvm::basic_dirty_log<fake>::create(t.vm, 9, false);
    REQUIRE_FALSE(unknown);
    CHECK(unknown.err().code == ENOENT);
    auto log = kvm::basic_dirty_log<fake>::create(t.vm, 1, true);
    REQUIRE(log);
    CHECK(log->pages() == 256);
    fake::dirty_pattern = (std::uint64_t{1} << 0) | (std::uint64_t{1} << 63);
    std::vector<std::uint64_t> seen;
    auto n = log->harvest([&](kvm::dirty_page p) {
        CHECK(p.slot == 1);
        CHECK(fake::cleared.size() == 4); // re-protected before the callback sees the page
        seen.push_back(p.page);
    });
    REQUIRE(n);
    CHECK(*n == 8);
    CHECK(seen == std::vector<std::uint64_t>{0, 63, 64, 127, 128, 191, 192, 255});
    // Manual protection: the harvest cleared exactly what it reported.
    REQUIRE(fake::cleared.size() == 4);
    for (auto w : fake::cleared) CHECK(w == fake::dirty_pattern);
    // Clear ranges: 64-page aligned start, 64-page multiple or up to the end.
    struct range {
        std::uint64_t first, count;
        bool good;
    };
    for (const range r : {range{0, 64, true}, range{64, 192, true}, range{192, 64, true}, range{128, 100, false},
                          range{1, 64, false}, range{0, 63, false}, range{0, 257, false}, range{320, 0, false},
                          range{192, 60, false}}) {
        CAPTURE(r.first);
        CAPTURE(r.count);
        const long before = fake::calls;
        auto c = log->clear(r.first, r.count);
        CHECK(static_cast<bool>(c) == r.good);
        if (!r.good) {
            CHECK(c.err().code == EINVAL);
            CHECK(fake::calls == before);
        }
    }
    // Without manual protection: no CLEAR after a harvest, and clear() is refused.
    auto plain = kvm::basic_dirty_log<fake>::create(t.vm, 1, false);
    REQUIRE(plain);
    fake::cleared.clear();
    REQUIRE(plain->harvest([](kvm::dirty_page) {}));
    CHECK(fake::cleared.empty());
    auto refused = plain->clear(0, 64);
    REQUIRE_FALSE(refused);
    CHECK(refused.err().message().find("manual dirty-log protection") != std::string::npos);
}

TEST_CASE("vm calls faults: the dirty ring maps at KVM_DIRTY_LOG_PAGE_OFFSET and harvests by the flag protocol") {
    fake::reset();
    auto t = rig::make();
    auto bad = kvm::basic_dirty_ring<fake>::map(t.cpu, kvm::dirty_ring_config{4096, 100, true});
    REQUIRE_FALSE(bad);
    CHECK(bad.err().code == EINVAL);
    auto ring = kvm::basic_dirty_ring<fake>::map(t.cpu, kvm::dirty_ring_config{4096, 256, true});
    REQUIRE(ring);
    CHECK(fake::last_mmap_offset == static_cast<off_t>(KVM_DIRTY_LOG_PAGE_OFFSET * ::sysconf(_SC_PAGESIZE)));
    // Play the kernel: publish three entries, the third at the wrap point later.
    REQUIRE(fake::maps.size() >= 1);
    ::kvm_dirty_gfn* gfns = nullptr;
    for (auto& [p, len] : fake::maps)
        if (len == 4096) gfns = static_cast<::kvm_dirty_gfn*>(p);
    REQUIRE(gfns != nullptr);
    constexpr auto dirty = static_cast<std::uint32_t>(KVM_DIRTY_GFN_F_DIRTY);
    gfns[0] = {dirty, 1, 10};
    gfns[1] = {dirty, (1u << 16) | 2, 20};
    gfns[2] = {0, 1, 30}; // not yet published
    std::vector<kvm::dirty_page> got;
    CHECK(ring->harvest([&](kvm::dirty_page p) { got.push_back(p); }) == 2);
    CHECK(got == std::vector<kvm::dirty_page>{{1, 10}, {(1u << 16) | 2, 20}});
    CHECK(gfns[0].flags == KVM_DIRTY_GFN_F_RESET); // handed back
    CHECK(gfns[1].flags == KVM_DIRTY_GFN_F_RESET);
    CHECK(ring->fetch_index() == 2);
    CHECK(ring->harvest([](kvm::dirty_page) {}) == 0);
    gfns[2].flags = dirty;
    got.clear();
    CHECK(ring->harvest([&](kvm::dirty_page p) { got.push_back(p); }) == 1);
    CHECK(got == std::vector<kvm::dirty_page>{{1, 30}});
    // The run-loop handler: harvests, resets, resumes; a failed reset stops with the error.
    gfns[3] = {dirty, 1, 40};
    std::vector<kvm::dirty_page> sunk;
    auto sink = [&](kvm::dirty_page p) { sunk.push_back(p); };
    kvm::dirty_ring_full_handler<fake, decltype(sink)> h{&t.vm, &*ring, sink, std::nullopt};
    vcpu::dirty_ring_full full{};
    CHECK(h(full) == vcpu::action::resume);
    CHECK(sunk == std::vector<kvm::dirty_page>{{1, 40}});
    CHECK(fake::requests.back() == KVM_RESET_DIRTY_RINGS);
    fake::fail_at = fake::calls + 1;
    fake::fail_errno = EFAULT;
    CHECK(h(full) == vcpu::action::stop);
    REQUIRE(h.failure);
    CHECK(h.failure->code == EFAULT);
    CHECK(std::string_view(h.failure->op) == "KVM_RESET_DIRTY_RINGS");
}

#endif // __x86_64__
