#pragma once
/// \file
/// In-kernel KVM devices (KVM API 4.80 KVM_CREATE_DEVICE, 4.81
/// KVM_SET_DEVICE_ATTR / KVM_GET_DEVICE_ATTR / KVM_HAS_DEVICE_ATTR;
/// Documentation/virt/kvm/devices/) as a typed, move-only `basic_device<Sys>`,
/// and the arm64 pieces a Linux VMM needs on top:
///
/// - `create_vgic_v3(vm, dist, redist)`: an in-kernel GICv3
///   (devices/arm-vgic-v3.rst): `KVM_DEV_TYPE_ARM_VGIC_V3`, the distributor and
///   redistributor base addresses (`KVM_DEV_ARM_VGIC_GRP_ADDR`), and
///   `vgic_init(dev)` (`KVM_DEV_ARM_VGIC_GRP_CTRL` / `KVM_DEV_ARM_VGIC_CTRL_INIT`),
///   which must follow the creation of every vCPU.
/// - `arm_irq(type, vcpu, number)`: the `KVM_IRQ_LINE` irq field on arm64
///   (KVM API 4.25: vcpu2_index bits 28-31, irq_type 24-27, vcpu_index 16-23,
///   irq_id 0-15; SPIs are irq_id 32..1019 with type `KVM_ARM_IRQ_TYPE_SPI`).
///
/// The arm64 constants live in arm64's `<asm/kvm.h>`, so they are restated
/// here (compiling everywhere) and checked against that header on arm64.
/// Setup path, except `irq_line` (one ioctl, used from device handlers).

#include <kvm/fd.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vm.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstdint>
#include <utility>

#if defined(__aarch64__)
#include <asm/kvm.h>
#endif

namespace vcpu::kvm {

/// An in-kernel device fd from `KVM_CREATE_DEVICE`. Move-only; closing it
/// does not destroy the device (the VM holds it).
template <class Sys>
class basic_device {
public:
    /// Takes ownership of a device fd.
    explicit basic_device(basic_fd<Sys> fd) noexcept : fd_(std::move(fd)) {}

    /// `KVM_CREATE_DEVICE` of `type` (`KVM_DEV_TYPE_*`) on `vm`.
    [[nodiscard]] static result<basic_device> create(const basic_vm<Sys>& vm, std::uint32_t type) noexcept {
        ::kvm_create_device c{};
        c.type = type;
        if (auto r = vm.ioctl(ioctls::vm::create_device, &c); !r) return r.err();
        return basic_device(basic_fd<Sys>(static_cast<int>(c.fd)));
    }

    /// The device fd (still owned by this object).
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }

    /// `KVM_SET_DEVICE_ATTR`: `group`/`attr` with `addr` pointing at the value
    /// (the kernel reads it; its type is the attribute's, see devices/*.rst).
    [[nodiscard]] result<void> set_attr(std::uint32_t group, std::uint64_t attr, const void* value) const noexcept {
        return call(ioctls::device::set_attr, group, attr, value);
    }
    /// `KVM_GET_DEVICE_ATTR` into `*value`.
    [[nodiscard]] result<void> get_attr(std::uint32_t group, std::uint64_t attr, void* value) const noexcept {
        return call(ioctls::device::get_attr, group, attr, value);
    }
    /// `KVM_HAS_DEVICE_ATTR`: false when the kernel answers ENXIO.
    [[nodiscard]] result<bool> has_attr(std::uint32_t group, std::uint64_t attr) const noexcept {
        auto r = call(ioctls::device::has_attr, group, attr, nullptr);
        if (r) return true;
        if (r.err().code == ENXIO) return false;
        return r.err();
    }

private:
    [[nodiscard]] result<void> call(ioctl_def<fd_kind::device> io, std::uint32_t group, std::uint64_t attr,
                                    const void* value) const noexcept {
        ::kvm_device_attr a{};
        a.group = group;
        a.attr = attr;
        a.addr = reinterpret_cast<std::uintptr_t>(value); // the kernel copies from/to it
        if (Sys::ioctl(fd_.get(), io.code, &a) < 0) return last_error(io.name);
        return ok();
    }
    basic_fd<Sys> fd_;
};

/// Production device handle.
using device = basic_device<linux_sys>;

/// arm64 vGIC and IRQ-line constants (arm64 <asm/kvm.h>; devices/arm-vgic-v3.rst).
namespace arm {
inline constexpr std::uint32_t vgic_grp_addr = 0;      ///< KVM_DEV_ARM_VGIC_GRP_ADDR
inline constexpr std::uint32_t vgic_grp_nr_irqs = 3;   ///< KVM_DEV_ARM_VGIC_GRP_NR_IRQS
inline constexpr std::uint32_t vgic_grp_ctrl = 4;      ///< KVM_DEV_ARM_VGIC_GRP_CTRL
inline constexpr std::uint64_t vgic_ctrl_init = 0;     ///< KVM_DEV_ARM_VGIC_CTRL_INIT
inline constexpr std::uint64_t vgic_v3_addr_dist = 2;  ///< KVM_VGIC_V3_ADDR_TYPE_DIST
inline constexpr std::uint64_t vgic_v3_addr_redist = 3; ///< KVM_VGIC_V3_ADDR_TYPE_REDIST
inline constexpr std::uint64_t vgic_v3_dist_size = 0x10000;   ///< KVM_VGIC_V3_DIST_SIZE (64 KiB)
inline constexpr std::uint64_t vgic_v3_redist_size = 0x20000; ///< KVM_VGIC_V3_REDIST_SIZE per vCPU (2 x 64 KiB)
/// @{
/// Bit positions of the vCPU index (high part), interrupt type and vCPU index fields of a `KVM_IRQ_LINE` irq number (KVM API "KVM_IRQ_LINE").
inline constexpr unsigned irq_vcpu2_shift = 28, irq_type_shift = 24, irq_vcpu_shift = 16;
/// @}
/// KVM_ARM_IRQ_TYPE_*.
enum class irq_type : std::uint32_t { cpu = 0, spi = 1, ppi = 2 };
/// GIC interrupt id ranges (GICv3 architecture spec §2.2 "INTIDs"): SGIs 0-15, PPIs 16-31, SPIs 32-1019.
/// @{
/// First SPI, last SPI, first PPI.
inline constexpr std::uint32_t spi_base = 32, spi_last = 1019, ppi_base = 16;
/// @}

/// The `kvm_irq_level.irq` word for `KVM_IRQ_LINE` on arm64 (KVM API 4.25).
[[nodiscard]] constexpr std::uint32_t irq_line_word(irq_type t, std::uint32_t vcpu, std::uint32_t intid) noexcept {
    return (static_cast<std::uint32_t>(t) << irq_type_shift) | ((vcpu & 0xff) << irq_vcpu_shift) |
           (((vcpu >> 8) & 0xf) << irq_vcpu2_shift) | (intid & 0xffff);
}
/// The word for SPI number `spi` (0-based, as a device tree's `<GIC_SPI spi flags>` names it).
[[nodiscard]] constexpr std::uint32_t spi_irq(std::uint32_t spi) noexcept {
    return irq_line_word(irq_type::spi, 0, spi_base + spi);
}
static_assert(spi_irq(1) == 0x0100'0021);
} // namespace arm

/// Creates an in-kernel GICv3 on `vm` with its distributor at `dist` and the
/// redistributor region (one 128 KiB frame per vCPU, contiguous) at
/// `redist`. Errors: "KVM_CREATE_DEVICE" (ENODEV: no GICv3 support),
/// "KVM_SET_DEVICE_ATTR" (EEXIST: address set twice, E2BIG: out of IPA range).
template <class Sys>
[[nodiscard]] result<basic_device<Sys>> create_vgic_v3(const basic_vm<Sys>& vm, std::uint64_t dist,
                                                       std::uint64_t redist) noexcept {
    auto d = basic_device<Sys>::create(vm, KVM_DEV_TYPE_ARM_VGIC_V3);
    if (!d) return d.err();
    if (auto r = d->set_attr(arm::vgic_grp_addr, arm::vgic_v3_addr_dist, &dist); !r) return r.err();
    if (auto r = d->set_attr(arm::vgic_grp_addr, arm::vgic_v3_addr_redist, &redist); !r) return r.err();
    return d;
}

/// Sets the number of interrupts the vGIC implements (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`,
/// a multiple of 32 from 64 to 1024), before `vgic_init`.
template <class Sys>
[[nodiscard]] result<void> vgic_set_nr_irqs(const basic_device<Sys>& gic, std::uint32_t n) noexcept {
    return gic.set_attr(arm::vgic_grp_nr_irqs, 0, &n);
}

/// `KVM_DEV_ARM_VGIC_CTRL_INIT`: after every vCPU is created (and initialised).
template <class Sys>
[[nodiscard]] result<void> vgic_init(const basic_device<Sys>& gic) noexcept {
    return gic.set_attr(arm::vgic_grp_ctrl, arm::vgic_ctrl_init, nullptr);
}

} // namespace vcpu::kvm

#if defined(__aarch64__)
namespace vcpu::kvm::device_layout {
static_assert(arm::vgic_grp_addr == KVM_DEV_ARM_VGIC_GRP_ADDR &&
              arm::vgic_grp_nr_irqs == KVM_DEV_ARM_VGIC_GRP_NR_IRQS &&
              arm::vgic_grp_ctrl == KVM_DEV_ARM_VGIC_GRP_CTRL && arm::vgic_ctrl_init == KVM_DEV_ARM_VGIC_CTRL_INIT);
static_assert(arm::vgic_v3_addr_dist == KVM_VGIC_V3_ADDR_TYPE_DIST &&
              arm::vgic_v3_addr_redist == KVM_VGIC_V3_ADDR_TYPE_REDIST);
static_assert(arm::irq_vcpu2_shift == KVM_ARM_IRQ_VCPU2_SHIFT && arm::irq_type_shift == KVM_ARM_IRQ_TYPE_SHIFT &&
              arm::irq_vcpu_shift == KVM_ARM_IRQ_VCPU_SHIFT);
static_assert(static_cast<std::uint32_t>(arm::irq_type::spi) == KVM_ARM_IRQ_TYPE_SPI &&
              static_cast<std::uint32_t>(arm::irq_type::ppi) == KVM_ARM_IRQ_TYPE_PPI &&
              static_cast<std::uint32_t>(arm::irq_type::cpu) == KVM_ARM_IRQ_TYPE_CPU);
} // namespace vcpu::kvm::device_layout
#endif
