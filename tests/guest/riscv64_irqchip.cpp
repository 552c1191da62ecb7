// The RISC-V in-kernel interrupt controller (AIA, Documentation/virt/kvm/devices/riscv-aia.rst):
// the emulated machine cannot provide it (QEMU 7.2 gives the host no IMSIC: with
// aia=aplic-imsic the 6.12 kernel does not boot, ../shared/xarch/README.md), so KVM refuses to
// create the device and the test says so; where a host has it, the device is created and answers
// for its configuration group.
#include "xarch_support.hpp"

#include <kvm/device.hpp>

#include <cerrno>
#include <cstdint>

TEST_CASE("riscv64 irqchip: the in-kernel AIA") {
    auto sys = vcpu::kvm::system::open();
    REQUIRE(sys);
    auto vm = sys->create_vm();
    REQUIRE(vm);
    // KVM_DEV_TYPE_RISCV_AIA (enum kvm_device_type, Linux >= 6.5; the cross toolchain's 6.1 UAPI
    // header predates it): the 11th device type.
    constexpr std::uint32_t dev_type_riscv_aia = 11;
    auto aia = vcpu::kvm::device::create(*vm, dev_type_riscv_aia);
    if (!aia) {
        // QEMU 7.2's virt machine gives the host no IMSIC (with aia=aplic-imsic the 6.12 kernel
        // does not boot: ../shared/xarch/README.md), so KVM has no AIA device to create.
        CHECK(aia.err().code == ENODEV);
        MESSAGE("SKIPPED: RISC-V AIA in-kernel irqchip: ", aia.err().message(),
                " (the emulated machine has no IMSIC for KVM)");
        return;
    }
    // Where the host has it: the device answers for its configuration group (devices/riscv-aia.rst:
    // KVM_DEV_RISCV_AIA_GRP_CONFIG = 0, KVM_DEV_RISCV_AIA_CONFIG_MODE = 0).
    auto has = aia->has_attr(0, 0);
    REQUIRE(has);
    CHECK(*has);
}
