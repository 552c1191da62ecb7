// The arm64 and riscv64 vCPU feature calls (kvm/aarch64.hpp, kvm/riscv64.hpp) and the vGICv3/ITS
// helpers (kvm/aarch64_gic.hpp) against a fake kernel, on any host: which capabilities
// `required_init` asks and the error naming a missing one; the SVE vector-length register and the
// init -> VLS -> finalize order; the ISA/SBI extension registers and the reasons given for EBUSY,
// ENOENT and EINVAL; the vGIC groups, attributes and values, read back; and fault injection —
// every ioctl these calls issue, failing, is reported with its name and errno. The real-KVM tests
// are tests/guest/aarch64_features.cpp, riscv64_features.cpp, aarch64_irqchip.cpp.
#include <kvm/aarch64.hpp>
#include <kvm/aarch64_gic.hpp>
#include <kvm/kvm.hpp>
#include <kvm/riscv64.hpp>

#include <arch/aarch64/arch.hpp>
#include <arch/riscv64/arch.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <linux/kvm.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {
namespace kvm = vcpu::kvm;
namespace rv = vcpu::riscv64::abi;

struct fake {
    static constexpr int sys_fd = 3000, vm_fd = 3001, vcpu_fd = 3002, dev_fd = 3003;
    static inline std::set<long> caps;
    static inline std::map<std::uint64_t, std::vector<std::byte>> regs;
    static inline std::map<std::pair<std::uint32_t, std::uint64_t>, std::uint64_t> attrs;
    static inline std::vector<std::string> log; // ioctls in order
    static inline std::uint32_t init_features = 0;
    static inline bool finalized = false;
    static inline int set_reg_errno = 0;
    static inline unsigned long fail_req = 0;
    static inline int fail_errno = 0;
    static void reset() {
        caps = {KVM_CAP_ARM_PSCI_0_2, KVM_CAP_ARM_PMU_V3, KVM_CAP_ARM_SVE, KVM_CAP_ARM_PTRAUTH_ADDRESS,
                KVM_CAP_ARM_PTRAUTH_GENERIC};
        regs.clear();
        attrs.clear();
        log.clear();
        init_features = 0;
        finalized = false;
        set_reg_errno = 0;
        fail_req = 0;
        fail_errno = 0;
    }
    static int open(const char*, int) noexcept { return sys_fd; }
    static int close(int) noexcept { return 0; }
    static int eventfd(unsigned, int) noexcept { return -1; }
    static void* mmap(void* a, std::size_t n, int prot, int, int, off_t) noexcept {
        return ::mmap(a, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    static int munmap(void* a, std::size_t n) noexcept { return ::munmap(a, n); }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_req) {
            errno = fail_errno;
            return -1;
        }
        if (fd == sys_fd && req == KVM_GET_API_VERSION) return KVM_API_VERSION;
        if (fd == sys_fd && req == KVM_GET_VCPU_MMAP_SIZE) return static_cast<int>(2 * ::sysconf(_SC_PAGESIZE));
        if (fd == sys_fd && req == KVM_CREATE_VM) return vm_fd;
        if (fd == vm_fd && req == KVM_CHECK_EXTENSION)
            return caps.count(static_cast<long>(reinterpret_cast<std::uintptr_t>(arg))) != 0 ? 1 : 0;
        if (fd == vm_fd && req == KVM_CREATE_VCPU) return vcpu_fd;
        if (fd == vm_fd && req == kvm::ioctls::vm::arm_preferred_target.code) {
            std::memset(arg, 0, sizeof(vcpu::aarch64::vcpu_init));
            static_cast<vcpu::aarch64::vcpu_init*>(arg)->target = 5;
            return 0;
        }
        if (fd == vm_fd && req == KVM_CREATE_DEVICE) {
            static_cast<::kvm_create_device*>(arg)->fd = dev_fd;
            log.push_back("KVM_CREATE_DEVICE");
            return 0;
        }
        if (fd == dev_fd) {
            auto* a = static_cast<::kvm_device_attr*>(arg);
            const auto key = std::make_pair(a->group, a->attr);
            // NR_IRQS and the distributor/redistributor registers are 32-bit, the rest 64-bit
            // (devices/arm-vgic-v3.rst), as the kernel copies them.
            const std::size_t size = (a->group == 1 || a->group == 3 || a->group == 5) ? 4 : 8;
            auto* p = reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(a->addr));
            if (req == KVM_SET_DEVICE_ATTR) {
                std::uint64_t v = 1;
                if (p != nullptr) {
                    v = 0;
                    std::memcpy(&v, p, size);
                }
                attrs[key] = v;
                return 0;
            }
            if (req == KVM_GET_DEVICE_ATTR) {
                auto it = attrs.find(key);
                if (it == attrs.end()) {
                    errno = ENXIO;
                    return -1;
                }
                std::memcpy(p, &it->second, size);
                return 0;
            }
            errno = ENXIO;
            return -1;
        }
        if (fd != vcpu_fd) {
            errno = EBADF;
            return -1;
        }
        if (req == kvm::ioctls::vcpu::arm_vcpu_init.code) {
            init_features = static_cast<vcpu::aarch64::vcpu_init*>(arg)->features[0];
            log.push_back("KVM_ARM_VCPU_INIT");
            return 0;
        }
        if (req == KVM_ARM_VCPU_FINALIZE) {
            finalized = true;
            log.push_back("KVM_ARM_VCPU_FINALIZE");
            return 0;
        }
        if (req == KVM_GET_ONE_REG || req == KVM_SET_ONE_REG) {
            auto* r = static_cast<::kvm_one_reg*>(arg);
            auto it = regs.find(r->id);
            if (it == regs.end()) {
                errno = ENOENT;
                return -1;
            }
            auto* p = reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(r->addr));
            if (req == KVM_GET_ONE_REG) {
                std::memcpy(p, it->second.data(), it->second.size());
                return 0;
            }
            if (set_reg_errno != 0) {
                errno = set_reg_errno;
                return -1;
            }
            std::memcpy(it->second.data(), p, it->second.size());
            log.push_back("KVM_SET_ONE_REG");
            return 0;
        }
        errno = ENOTTY;
        return -1;
    }
};

template <class Arch>
auto make_cpu() {
    auto sys = kvm::basic_system<fake>::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    auto cpu = vm->template create_vcpu<Arch>(0);
    REQUIRE_MESSAGE(cpu, cpu.err().message());
    return std::make_pair(std::move(*vm), std::move(*cpu));
}
} // namespace

TEST_CASE("arm64 required_init: features by capability, an error naming a missing one") {
    fake::reset();
    auto [vm, cpu] = make_cpu<vcpu::arch::aarch64>();
    auto all = kvm::aarch64::required_init(vm, {.pmu_v3 = true, .sve = true, .ptrauth = true});
    REQUIRE_MESSAGE(all, all.err().message());
    namespace f = vcpu::aarch64::feature;
    CHECK(all->has(f::pmu_v3));
    CHECK(all->has(f::sve));
    CHECK(all->has(f::ptrauth_address));
    CHECK(all->has(f::ptrauth_generic));
    CHECK(all->has(f::psci_0_2));
    CHECK(all->target == 5);
    auto none = kvm::aarch64::required_init(vm, {});
    REQUIRE(none);
    CHECK(!none->has(f::pmu_v3));
    for (long cap : {KVM_CAP_ARM_PMU_V3, KVM_CAP_ARM_SVE, KVM_CAP_ARM_PTRAUTH_ADDRESS, KVM_CAP_ARM_PTRAUTH_GENERIC}) {
        fake::reset();
        fake::caps.erase(cap);
        auto r = kvm::aarch64::required_init(vm, {.pmu_v3 = true, .sve = true, .ptrauth = true});
        REQUIRE(!r);
        CHECK(r.err().code == ENOTSUP);
        CHECK(r.err().value("cap") == static_cast<std::uint64_t>(cap));
        CHECK(std::string(r.err().detail).find("the host lacks KVM_CAP_ARM_") != std::string::npos);
        // Not asked for: not needed.
        auto other = kvm::aarch64::required_init(
            vm, {.pmu_v3 = cap != KVM_CAP_ARM_PMU_V3, .sve = cap != KVM_CAP_ARM_SVE,
                 .ptrauth = cap != KVM_CAP_ARM_PTRAUTH_ADDRESS && cap != KVM_CAP_ARM_PTRAUTH_GENERIC});
        CHECK(other);
    }
    fake::reset();
    fake::fail_req = KVM_CHECK_EXTENSION;
    fake::fail_errno = EIO;
    auto failed = kvm::aarch64::required_init(vm, {.sve = true});
    REQUIRE(!failed);
    CHECK(std::string(failed.err().op) == "KVM_CHECK_EXTENSION");
    CHECK(failed.err().code == EIO);
}

TEST_CASE("arm64 SVE: init, vector lengths, finalize in that order; errors say when and what") {
    fake::reset();
    fake::regs[kvm::aarch64::sve_vls_reg] = std::vector<std::byte>(64);
    fake::regs[kvm::aarch64::sve_vls_reg][0] = std::byte{0x0f}; // vq 1-4
    auto [vm, cpu] = make_cpu<vcpu::arch::aarch64>();
    auto init = kvm::aarch64::required_init(vm, {.sve = true});
    REQUIRE(init);
    kvm::aarch64::sve_vector_lengths two;
    two.with(2);
    CHECK(two.has(2));
    CHECK(!two.has(1));
    CHECK(two.max_vq() == 2);
    REQUIRE(kvm::init_with_features(cpu.hal(), *init, &two));
    CHECK(fake::log == std::vector<std::string>{"KVM_ARM_VCPU_INIT", "KVM_SET_ONE_REG", "KVM_ARM_VCPU_FINALIZE"});
    auto now = kvm::get_sve_vector_lengths(cpu.hal());
    REQUIRE(now);
    CHECK(*now == two);
    fake::set_reg_errno = EPERM;
    auto late = kvm::set_sve_vector_lengths(cpu.hal(), two);
    REQUIRE(!late);
    CHECK(std::string(late.err().op) == "KVM_SET_ONE_REG");
    CHECK(late.err().code == EPERM);
    CHECK(std::string(late.err().detail).find("before KVM_ARM_VCPU_FINALIZE") != std::string::npos);
    CHECK(late.err().value("max_vq") == 2);
    // Without SVE in the init, no vector lengths and no finalize.
    fake::reset();
    auto plain = kvm::aarch64::required_init(vm, {.pmu_v3 = true});
    REQUIRE(plain);
    REQUIRE(kvm::init_with_features(cpu.hal(), *plain, &two));
    CHECK(fake::log == std::vector<std::string>{"KVM_ARM_VCPU_INIT"});
    for (unsigned long req : {static_cast<unsigned long>(kvm::ioctls::vcpu::arm_vcpu_init.code),
                              static_cast<unsigned long>(KVM_SET_ONE_REG), static_cast<unsigned long>(KVM_ARM_VCPU_FINALIZE)}) {
        fake::reset();
        fake::regs[kvm::aarch64::sve_vls_reg] = std::vector<std::byte>(64);
        fake::fail_req = req;
        fake::fail_errno = EINVAL;
        auto r = kvm::init_with_features(cpu.hal(), *init, &two);
        REQUIRE(!r);
        CHECK(r.err().code == EINVAL);
        CHECK(std::string(r.err().op).find("KVM_") == 0);
    }
}

TEST_CASE("riscv64 ISA and SBI extension switches: registers, and the reason of a refusal") {
    fake::reset();
    const auto d = rv::isa_ext_reg(rv::kvm_isa_ext::d);
    const auto dbcn = rv::sbi_ext_reg(rv::kvm_sbi_ext::dbcn);
    fake::regs[d] = std::vector<std::byte>(8);
    fake::regs[d][0] = std::byte{1};
    fake::regs[dbcn] = std::vector<std::byte>(8);
    auto [vm, cpu] = make_cpu<vcpu::arch::riscv64>();
    auto on = kvm::isa_extension_enabled(cpu, rv::kvm_isa_ext::d);
    REQUIRE(on);
    CHECK(*on);
    REQUIRE(kvm::set_isa_extension(cpu, rv::kvm_isa_ext::d, false));
    CHECK(fake::regs[d][0] == std::byte{0});
    REQUIRE(kvm::set_sbi_extension(cpu, rv::kvm_sbi_ext::dbcn, true));
    auto s = kvm::sbi_extension_enabled(cpu, rv::kvm_sbi_ext::dbcn);
    REQUIRE(s);
    CHECK(*s);
    const std::pair<int, const char*> reasons[] = {{EBUSY, "before the vCPU's first KVM_RUN"},
                                                   {EINVAL, "cannot give (or take away)"}};
    for (auto [code, why] : reasons) {
        fake::set_reg_errno = code;
        auto r = kvm::set_isa_extension(cpu, rv::kvm_isa_ext::d, true);
        REQUIRE(!r);
        CHECK(r.err().code == code);
        CHECK(std::string(r.err().detail).find(why) != std::string::npos);
        CHECK(r.err().value("reg") == d);
        auto r2 = kvm::set_sbi_extension(cpu, rv::kvm_sbi_ext::dbcn, false);
        REQUIRE(!r2);
        CHECK(r2.err().code == code);
    }
    fake::set_reg_errno = 0;
    auto unknown = kvm::set_isa_extension(cpu, rv::kvm_isa_ext::zicond, true);
    REQUIRE(!unknown);
    CHECK(unknown.err().code == ENOENT);
    CHECK(std::string(unknown.err().detail).find("does not know") != std::string::npos);
    fake::fail_req = KVM_GET_ONE_REG;
    fake::fail_errno = EIO;
    auto failed = kvm::isa_extension_enabled(cpu, rv::kvm_isa_ext::d);
    REQUIRE(!failed);
    CHECK(failed.err().code == EIO);
}

TEST_CASE("vGICv3 and ITS helpers: groups, attributes and values; read back; errors name the attribute") {
    fake::reset();
    auto [vm, cpu] = make_cpu<vcpu::arch::aarch64>();
    namespace a = kvm::aarch64::vgic_attr;
    auto g = kvm::aarch64::vgic_v3<fake>::create(vm, {.dist = 0x0800'0000, .redist = 0x080a'0000});
    REQUIRE_MESSAGE(g, g.err().message());
    CHECK(fake::attrs[{a::grp_addr, a::addr_dist}] == 0x0800'0000);
    CHECK(fake::attrs[{a::grp_addr, a::addr_redist}] == 0x080a'0000);
    REQUIRE(g->set_nr_irqs(96));
    REQUIRE(g->init());
    CHECK(fake::attrs.count({a::grp_ctrl, a::ctrl_init}) == 1);
    auto n = g->nr_irqs();
    REQUIRE(n);
    CHECK(*n == 96);
    auto db = g->dist_base();
    REQUIRE(db);
    CHECK(*db == 0x0800'0000);
    fake::attrs[{a::grp_dist_regs, kvm::aarch64::gicd::typer}] = 2;
    auto t = g->dist_reg(kvm::aarch64::gicd::typer);
    REQUIRE(t);
    CHECK(*t == 2);
    fake::attrs[{a::grp_redist_regs, (std::uint64_t{0x0100} << 32) | 8}] = 0x100;
    auto rt = g->redist_reg(0x0100, 8);
    REQUIRE(rt);
    CHECK(*rt == 0x100);
    auto missing = g->dist_reg(0x1234);
    REQUIRE(!missing);
    CHECK(std::string(missing.err().op) == "KVM_GET_DEVICE_ATTR");
    CHECK(missing.err().code == ENXIO);
    CHECK(missing.err().value("group") == a::grp_dist_regs);
    CHECK(missing.err().value("attr") == 0x1234);

    auto its = kvm::aarch64::vgic_its<fake>::create(vm, 0x0808'0000);
    REQUIRE(its);
    auto b = its->base();
    REQUIRE(b);
    CHECK(*b == 0x0808'0000);

    for (unsigned long req : {static_cast<unsigned long>(KVM_CREATE_DEVICE), static_cast<unsigned long>(KVM_SET_DEVICE_ATTR)}) {
        fake::reset();
        fake::fail_req = req;
        fake::fail_errno = ENODEV;
        auto r = kvm::aarch64::vgic_v3<fake>::create(vm, {.dist = 0, .redist = 0x20000});
        REQUIRE(!r);
        CHECK(r.err().code == ENODEV);
        auto i = kvm::aarch64::vgic_its<fake>::create(vm, 0);
        REQUIRE(!i);
        CHECK(i.err().code == ENODEV);
    }
}
