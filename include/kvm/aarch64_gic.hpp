#pragma once
/// \file
/// Typed helpers for the arm64 in-kernel GICv3 and its ITS (KVM API 4.80 KVM_CREATE_DEVICE,
/// 4.81 KVM_SET/GET/HAS_DEVICE_ATTR; Documentation/virt/kvm/devices/arm-vgic-v3.rst and
/// arm-vgic-its.rst), on top of `basic_device` (kvm/device.hpp):
///
/// ```
/// auto gic = kvm::aarch64::vgic_v3<Sys>::create(vm, {.dist = 0x0800'0000, .redist = 0x080a'0000});
/// // ... create and KVM_ARM_VCPU_INIT every vCPU ...
/// gic->set_nr_irqs(128);                 // before init; a multiple of 32, 64..1024
/// gic->init();                           // KVM_DEV_ARM_VGIC_CTRL_INIT, after every vCPU exists
/// auto typer = gic->dist_reg(kvm::aarch64::gicd::typer);
/// ```
///
/// Every call returns `result<T>`; a failure names the ioctl ("KVM_SET_DEVICE_ATTR"...), the
/// errno, and the group and attribute. The constants are restated from arm64 `<asm/kvm.h>` (so
/// this header compiles on every host) and checked against it on arm64. Setup path.

#include <kvm/device.hpp>
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

namespace vcpu::kvm::aarch64 {

/// Device attribute groups and values of the vGICv3 and its ITS (arm64 `<asm/kvm.h>`).
namespace vgic_attr {
/// @{
/// Groups: `KVM_DEV_ARM_VGIC_GRP_ADDR` (base addresses), `_DIST_REGS` (distributor registers, attr
/// = offset), `_NR_IRQS`, `_CTRL`, `_REDIST_REGS` (attr = MPIDR affinity << 32 | offset),
/// `_ITS_REGS` (ITS registers, attr = offset).
inline constexpr std::uint32_t grp_addr = 0, grp_dist_regs = 1, grp_nr_irqs = 3, grp_ctrl = 4, grp_redist_regs = 5,
                               grp_its_regs = 8;
/// @}
/// @{
/// Addresses in `grp_addr`: `KVM_VGIC_V3_ADDR_TYPE_DIST`, `_REDIST`, `KVM_VGIC_ITS_ADDR_TYPE`.
inline constexpr std::uint64_t addr_dist = 2, addr_redist = 3, addr_its = 4;
/// @}
/// `KVM_DEV_ARM_VGIC_CTRL_INIT`.
inline constexpr std::uint64_t ctrl_init = 0;
/// @{
/// Sizes: the distributor frame, one vCPU's redistributor (RD + SGI frames), the ITS frame
/// (`KVM_VGIC_V3_DIST_SIZE`, `KVM_VGIC_V3_REDIST_SIZE`, `KVM_VGIC_V3_ITS_SIZE`).
inline constexpr std::uint64_t dist_size = 0x10000, redist_size = 0x20000, its_size = 0x20000;
/// @}
} // namespace vgic_attr

/// GICv3 distributor register offsets (GICv3 architecture spec, §12.9 "The GIC Distributor
/// register map").
namespace gicd {
/// @{
/// GICD_CTLR, GICD_TYPER (ITLinesNumber in bits 4:0: the SPIs supported are 32 * (N + 1) INTIDs),
/// GICD_IIDR, GICD_PIDR2 (ArchRev in bits 7:4: 3 for GICv3).
inline constexpr std::uint32_t ctlr = 0x0000, typer = 0x0004, iidr = 0x0008, pidr2 = 0xffe8;
/// @}
} // namespace gicd

/// Where a GICv3 lives in the guest physical address space.
struct vgic_v3_config {
    std::uint64_t dist = 0;   ///< distributor base (64 KiB aligned)
    std::uint64_t redist = 0; ///< redistributor region base: one 128 KiB frame per vCPU, contiguous
};

/// An in-kernel GICv3 (`KVM_DEV_TYPE_ARM_VGIC_V3`). Move-only; owns the device fd.
template <class Sys>
class vgic_v3 {
public:
    /// `KVM_CREATE_DEVICE`, then the distributor and redistributor addresses. Errors:
    /// "KVM_CREATE_DEVICE" (ENODEV: no GICv3 on this host), "KVM_SET_DEVICE_ATTR" (EINVAL: not 64
    /// KiB aligned; EEXIST: set twice; E2BIG: beyond the IPA size) with group and attribute.
    [[nodiscard]] static result<vgic_v3> create(const basic_vm<Sys>& vm, const vgic_v3_config& c) noexcept {
        auto d = basic_device<Sys>::create(vm, KVM_DEV_TYPE_ARM_VGIC_V3);
        if (!d) return d.err();
        vgic_v3 g(std::move(*d));
        VCPU_TRY_VOID(g.set_u64(vgic_attr::grp_addr, vgic_attr::addr_dist, c.dist));
        VCPU_TRY_VOID(g.set_u64(vgic_attr::grp_addr, vgic_attr::addr_redist, c.redist));
        return g;
    }

    /// The number of interrupt ids (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`): a multiple of 32 from 64 to
    /// 1024, before `init`. Errors: EINVAL (bad number), EBUSY (after init).
    [[nodiscard]] result<void> set_nr_irqs(std::uint32_t n) const noexcept {
        return attr_call(dev_.set_attr(vgic_attr::grp_nr_irqs, 0, &n), vgic_attr::grp_nr_irqs, 0);
    }
    /// The number of interrupt ids (KVM's default until set).
    [[nodiscard]] result<std::uint32_t> nr_irqs() const noexcept {
        std::uint32_t n = 0;
        VCPU_TRY_VOID(attr_call(dev_.get_attr(vgic_attr::grp_nr_irqs, 0, &n), vgic_attr::grp_nr_irqs, 0));
        return n;
    }
    /// `KVM_DEV_ARM_VGIC_CTRL_INIT`: after every vCPU is created and initialised (KVM sizes the
    /// redistributors by them). Errors: ENXIO (a redistributor or distributor address unset),
    /// EBUSY (a vCPU is running).
    [[nodiscard]] result<void> init() const noexcept {
        return attr_call(dev_.set_attr(vgic_attr::grp_ctrl, vgic_attr::ctrl_init, nullptr), vgic_attr::grp_ctrl,
                         vgic_attr::ctrl_init);
    }
    /// The distributor base, read back from KVM.
    [[nodiscard]] result<std::uint64_t> dist_base() const noexcept { return get_u64(vgic_attr::grp_addr, vgic_attr::addr_dist); }
    /// The redistributor region base, read back from KVM.
    [[nodiscard]] result<std::uint64_t> redist_base() const noexcept {
        return get_u64(vgic_attr::grp_addr, vgic_attr::addr_redist);
    }
    /// A 32-bit distributor register at `offset` (`gicd::*`; after `init`). Errors: ENXIO (no
    /// such register), EBUSY (a vCPU is running).
    [[nodiscard]] result<std::uint32_t> dist_reg(std::uint32_t offset) const noexcept {
        std::uint32_t v = 0;
        VCPU_TRY_VOID(attr_call(dev_.get_attr(vgic_attr::grp_dist_regs, offset, &v), vgic_attr::grp_dist_regs, offset));
        return v;
    }
    /// A 32-bit redistributor register at `offset` of the vCPU with MPIDR affinity `mpidr_aff`
    /// (Aff3.Aff2.Aff1.Aff0 as in MPIDR_EL1, arm-vgic-v3.rst "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS").
    [[nodiscard]] result<std::uint32_t> redist_reg(std::uint64_t mpidr_aff, std::uint32_t offset) const noexcept {
        std::uint32_t v = 0;
        const std::uint64_t attr = (mpidr_aff << 32) | offset;
        VCPU_TRY_VOID(attr_call(dev_.get_attr(vgic_attr::grp_redist_regs, attr, &v), vgic_attr::grp_redist_regs, attr));
        return v;
    }
    /// The device (for attributes this class does not name).
    [[nodiscard]] const basic_device<Sys>& device() const noexcept { return dev_; }

private:
    explicit vgic_v3(basic_device<Sys> d) noexcept : dev_(std::move(d)) {}
    [[nodiscard]] result<void> set_u64(std::uint32_t group, std::uint64_t attr, std::uint64_t v) const noexcept {
        return attr_call(dev_.set_attr(group, attr, &v), group, attr);
    }
    [[nodiscard]] result<std::uint64_t> get_u64(std::uint32_t group, std::uint64_t attr) const noexcept {
        std::uint64_t v = 0;
        VCPU_TRY_VOID(attr_call(dev_.get_attr(group, attr, &v), group, attr));
        return v;
    }
    [[nodiscard]] static result<void> attr_call(result<void> r, std::uint32_t group, std::uint64_t attr) noexcept {
        if (!r) return error(r.err()).with("group", group).with_hex("attr", attr);
        return ok();
    }
    basic_device<Sys> dev_;
};

/// An in-kernel GICv3 ITS (`KVM_DEV_TYPE_ARM_VGIC_ITS`, arm-vgic-its.rst), for MSIs. Needs a
/// GICv3 on the same VM. Move-only.
template <class Sys>
class vgic_its {
public:
    /// `KVM_CREATE_DEVICE`, then the ITS frame address `base` (64 KiB aligned) and
    /// `KVM_DEV_ARM_VGIC_CTRL_INIT`. Errors: "KVM_CREATE_DEVICE" (ENODEV: no ITS emulation),
    /// "KVM_SET_DEVICE_ATTR" with group and attribute.
    [[nodiscard]] static result<vgic_its> create(const basic_vm<Sys>& vm, std::uint64_t base) noexcept {
        auto d = basic_device<Sys>::create(vm, KVM_DEV_TYPE_ARM_VGIC_ITS);
        if (!d) return d.err();
        vgic_its its(std::move(*d));
        if (auto r = its.dev_.set_attr(vgic_attr::grp_addr, vgic_attr::addr_its, &base); !r)
            return error(r.err()).with("group", vgic_attr::grp_addr).with_hex("attr", vgic_attr::addr_its);
        if (auto r = its.dev_.set_attr(vgic_attr::grp_ctrl, vgic_attr::ctrl_init, nullptr); !r)
            return error(r.err()).with("group", vgic_attr::grp_ctrl).with_hex("attr", vgic_attr::ctrl_init);
        return its;
    }
    /// The ITS frame base, read back from KVM.
    [[nodiscard]] result<std::uint64_t> base() const noexcept {
        std::uint64_t v = 0;
        if (auto r = dev_.get_attr(vgic_attr::grp_addr, vgic_attr::addr_its, &v); !r)
            return error(r.err()).with("group", vgic_attr::grp_addr).with_hex("attr", vgic_attr::addr_its);
        return v;
    }
    /// A 64-bit ITS register at `offset` (GICv3 spec §12.19: GITS_CTLR 0x0, GITS_IIDR 0x4, GITS_TYPER 0x8).
    [[nodiscard]] result<std::uint64_t> reg(std::uint32_t offset) const noexcept {
        std::uint64_t v = 0;
        if (auto r = dev_.get_attr(vgic_attr::grp_its_regs, offset, &v); !r)
            return error(r.err()).with("group", vgic_attr::grp_its_regs).with_hex("attr", offset);
        return v;
    }
    /// The device.
    [[nodiscard]] const basic_device<Sys>& device() const noexcept { return dev_; }

private:
    explicit vgic_its(basic_device<Sys> d) noexcept : dev_(std::move(d)) {}
    basic_device<Sys> dev_;
};

} // namespace vcpu::kvm::aarch64

#if defined(__aarch64__)
namespace vcpu::kvm::aarch64_gic_layout {
namespace v = ::vcpu::kvm::aarch64::vgic_attr;
static_assert(v::grp_addr == KVM_DEV_ARM_VGIC_GRP_ADDR && v::grp_dist_regs == KVM_DEV_ARM_VGIC_GRP_DIST_REGS &&
              v::grp_nr_irqs == KVM_DEV_ARM_VGIC_GRP_NR_IRQS && v::grp_ctrl == KVM_DEV_ARM_VGIC_GRP_CTRL &&
              v::grp_redist_regs == KVM_DEV_ARM_VGIC_GRP_REDIST_REGS && v::grp_its_regs == KVM_DEV_ARM_VGIC_GRP_ITS_REGS);
static_assert(v::addr_dist == KVM_VGIC_V3_ADDR_TYPE_DIST && v::addr_redist == KVM_VGIC_V3_ADDR_TYPE_REDIST &&
              v::addr_its == KVM_VGIC_ITS_ADDR_TYPE && v::ctrl_init == KVM_DEV_ARM_VGIC_CTRL_INIT);
// The sizes are not checked here: <asm/kvm.h> writes them with SZ_64K, which user space lacks.
} // namespace vcpu::kvm::aarch64_gic_layout
#endif
