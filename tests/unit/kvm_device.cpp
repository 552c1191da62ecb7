// kvm/device.hpp and the RISC-V KVM_INTERRUPT helper against a fake kernel Sys policy: the
// ioctls, groups, attributes and values create_vgic_v3 / vgic_init / has_attr /
// riscv_external_interrupt issue, errors named by their ioctl, and the arm64 KVM_IRQ_LINE word.
#include <doctest/doctest.h>

#include <kvm/device.hpp>
#include <kvm/riscv64.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

namespace {
namespace kvm = vcpu::kvm;

struct attr_call {
    unsigned long req;
    std::uint32_t group;
    std::uint64_t attr;
    std::uint64_t value; ///< the u64 at `addr`, when there is one
    bool has_value;
};

/// A fake kernel: one VM fd, device fds from KVM_CREATE_DEVICE, attributes recorded.
struct fake {
    static constexpr int vm_fd = 2001, dev_fd = 2002, vcpu_fd = 2003;
    static inline std::vector<attr_call> calls;
    static inline std::uint32_t created_type = 0;
    static inline int fail_attr_errno = 0; ///< KVM_SET_DEVICE_ATTR fails with this when set
    static inline std::uint32_t last_interrupt = 0;
    static void reset() {
        calls.clear();
        created_type = 0;
        fail_attr_errno = 0;
        last_interrupt = 0;
    }
    static int open(const char*, int) noexcept { return -1; }
    static int close(int) noexcept { return 0; }
    static int eventfd(unsigned, int) noexcept { return -1; }
    static void* mmap(void*, std::size_t, int, int, int, off_t) noexcept { return MAP_FAILED; }
    static int munmap(void*, std::size_t) noexcept { return 0; }
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (fd == vm_fd && req == KVM_CREATE_DEVICE) {
            auto* c = static_cast<::kvm_create_device*>(arg);
            if (c->type != KVM_DEV_TYPE_ARM_VGIC_V3) {
                errno = ENODEV;
                return -1;
            }
            created_type = c->type;
            c->fd = dev_fd;
            return 0;
        }
        if (fd == dev_fd && (req == KVM_SET_DEVICE_ATTR || req == KVM_HAS_DEVICE_ATTR)) {
            const auto* a = static_cast<const ::kvm_device_attr*>(arg);
            attr_call c{req, a->group, a->attr, 0, a->addr != 0};
            // As the kernel: NR_IRQS reads a u32, the addresses a u64 (devices/arm-vgic-v3.rst).
            const std::size_t n = a->group == kvm::arm::vgic_grp_nr_irqs ? 4 : 8;
            if (a->addr != 0) std::memcpy(&c.value, reinterpret_cast<const void*>(a->addr), n);
            calls.push_back(c);
            if (req == KVM_HAS_DEVICE_ATTR && a->group == 99) {
                errno = ENXIO;
                return -1;
            }
            if (fail_attr_errno != 0) {
                errno = fail_attr_errno;
                return -1;
            }
            return 0;
        }
        if (fd == vcpu_fd && req == KVM_INTERRUPT) {
            last_interrupt = static_cast<const ::kvm_interrupt*>(arg)->irq;
            return 0;
        }
        errno = EBADF;
        return -1;
    }
};
static_assert(kvm::SysPolicy<fake>);
} // namespace

TEST_CASE("create_vgic_v3 sets the distributor and redistributor addresses; vgic_init") {
    fake::reset();
    kvm::basic_vm<fake> vm(kvm::basic_fd<fake>(fake::vm_fd), -1, 4096);
    auto gic = kvm::create_vgic_v3(vm, 0x0800'0000, 0x080a'0000);
    REQUIRE(gic);
    CHECK(gic->fd() == fake::dev_fd);
    CHECK(fake::created_type == KVM_DEV_TYPE_ARM_VGIC_V3);
    REQUIRE(fake::calls.size() == 2);
    CHECK(fake::calls[0].group == kvm::arm::vgic_grp_addr);
    CHECK(fake::calls[0].attr == kvm::arm::vgic_v3_addr_dist);
    CHECK(fake::calls[0].value == 0x0800'0000);
    CHECK(fake::calls[1].attr == kvm::arm::vgic_v3_addr_redist);
    CHECK(fake::calls[1].value == 0x080a'0000);
    REQUIRE(kvm::vgic_init(*gic));
    REQUIRE(fake::calls.size() == 3);
    CHECK(fake::calls[2].group == kvm::arm::vgic_grp_ctrl);
    CHECK(fake::calls[2].attr == kvm::arm::vgic_ctrl_init);
    CHECK(!fake::calls[2].has_value);
    REQUIRE(kvm::vgic_set_nr_irqs(*gic, 128));
    CHECK(fake::calls[3].group == kvm::arm::vgic_grp_nr_irqs);
    CHECK(static_cast<std::uint32_t>(fake::calls[3].value) == 128);

    auto has = gic->has_attr(kvm::arm::vgic_grp_ctrl, 0);
    REQUIRE(has);
    CHECK(*has);
    auto hasnt = gic->has_attr(99, 0);
    REQUIRE(hasnt);
    CHECK(!*hasnt);
}

TEST_CASE("device errors name their ioctl") {
    fake::reset();
    kvm::basic_vm<fake> vm(kvm::basic_fd<fake>(fake::vm_fd), -1, 4096);
    auto none = kvm::basic_device<fake>::create(vm, 12345);
    REQUIRE(!none);
    CHECK(none.err().code == ENODEV);
    CHECK(std::string_view(none.err().op) == "KVM_CREATE_DEVICE");
    fake::fail_attr_errno = EEXIST;
    auto gic = kvm::create_vgic_v3(vm, 0x0800'0000, 0x080a'0000);
    REQUIRE(!gic);
    CHECK(gic.err().code == EEXIST);
    CHECK(std::string_view(gic.err().op) == "KVM_SET_DEVICE_ATTR");
    kvm::basic_device<fake> bad(kvm::basic_fd<fake>(-1));
    auto r = kvm::vgic_init(bad);
    REQUIRE(!r);
    CHECK(r.err().code == EBADF);
}

TEST_CASE("arm64 KVM_IRQ_LINE word and RISC-V KVM_INTERRUPT") {
    namespace arm = kvm::arm;
    CHECK(arm::spi_irq(1) == ((1u << 24) | 33u));
    CHECK(arm::irq_line_word(arm::irq_type::ppi, 3, 27) == ((2u << 24) | (3u << 16) | 27u));
    CHECK(arm::irq_line_word(arm::irq_type::ppi, 0x123, 27) == ((1u << 28) | (2u << 24) | (0x23u << 16) | 27u));

    fake::reset();
    REQUIRE(kvm::riscv_external_interrupt<fake>(fake::vcpu_fd, true));
    CHECK(fake::last_interrupt == 0xffffffffu);
    REQUIRE(kvm::riscv_external_interrupt<fake>(fake::vcpu_fd, false));
    CHECK(fake::last_interrupt == 0xfffffffeu);
    auto r = kvm::riscv_external_interrupt<fake>(-1, true);
    REQUIRE(!r);
    CHECK(std::string_view(r.err().op) == "KVM_INTERRUPT");
}
