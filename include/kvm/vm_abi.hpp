#pragma once
/// \file
/// The KVM UAPI of private/guest_memfd memory (Linux 6.8+), mirrored for hosts whose
/// `<linux/kvm.h>` predates it (Debian 12 ships 6.1 headers while the running kernel may be
/// newer). Numbers and layouts are those of the KVM API document (Documentation/virt/kvm/api.rst,
/// sections "KVM_SET_USER_MEMORY_REGION2", "KVM_CREATE_GUEST_MEMFD", "KVM_SET_MEMORY_ATTRIBUTES"
/// and the capability list). Every layout is asserted here; where the host header does define
/// them, they are also asserted equal to the kernel's, so a mismatch fails the build instead of
/// reaching the kernel.

#include <vcpu/config.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>

namespace vcpu::kvm::abi {

/// `KVM_CAP_USER_MEMORY2` (KVM API 8 capability list): KVM_SET_USER_MEMORY_REGION2 exists.
inline constexpr long cap_user_memory2 = 231;
/// `KVM_CAP_MEMORY_ATTRIBUTES`: KVM_SET_MEMORY_ATTRIBUTES exists; the value is the mask of
/// attributes this VM supports (0 on VM types without private memory).
inline constexpr long cap_memory_attributes = 233;
/// `KVM_CAP_GUEST_MEMFD`: KVM_CREATE_GUEST_MEMFD is allowed on this VM.
inline constexpr long cap_guest_memfd = 234;

/// `KVM_MEM_GUEST_MEMFD`: the slot's private memory comes from a guest_memfd.
inline constexpr std::uint32_t mem_guest_memfd = 1u << 2;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`: the range is backed by the slot's guest_memfd.
inline constexpr std::uint64_t memory_attribute_private = std::uint64_t{1} << 3;

/// `struct kvm_userspace_memory_region2` (KVM API section "KVM_SET_USER_MEMORY_REGION2"): a memory slot that may also name a
/// guest_memfd and an offset into it.
struct userspace_memory_region2 {
    std::uint32_t slot = 0;               ///< bits 0-15 slot id, 16-31 address space
    std::uint32_t flags = 0;              ///< `KVM_MEM_*` (`mem_guest_memfd` for a guest_memfd)
    std::uint64_t guest_phys_addr = 0;    ///< page aligned
    std::uint64_t memory_size = 0;        ///< bytes, page aligned; 0 deletes the slot
    std::uint64_t userspace_addr = 0;     ///< shared (host-visible) backing
    std::uint64_t guest_memfd_offset = 0; ///< byte offset into `guest_memfd`, page aligned
    std::uint32_t guest_memfd = 0;        ///< fd from KVM_CREATE_GUEST_MEMFD
    std::uint32_t pad1 = 0;               ///< must be zero
    std::uint64_t pad2[14] = {};          ///< must be zero
};
static_assert(sizeof(userspace_memory_region2) == 160 && offsetof(userspace_memory_region2, guest_memfd) == 40 &&
              offsetof(userspace_memory_region2, guest_memfd_offset) == 32);

/// `struct kvm_create_guest_memfd` (KVM API section "KVM_CREATE_GUEST_MEMFD").
struct create_guest_memfd {
    std::uint64_t size = 0;        ///< bytes, page aligned, non-zero
    std::uint64_t flags = 0;       ///< must be a subset of what the host supports (0 always is)
    std::uint64_t reserved[6] = {}; ///< must be zero
};
static_assert(sizeof(create_guest_memfd) == 64);

/// `struct kvm_memory_attributes` (KVM API section "KVM_SET_MEMORY_ATTRIBUTES").
struct memory_attributes {
    std::uint64_t address = 0;    ///< guest physical, page aligned
    std::uint64_t size = 0;       ///< bytes, page aligned, non-zero
    std::uint64_t attributes = 0; ///< `KVM_MEMORY_ATTRIBUTE_*`
    std::uint64_t flags = 0;      ///< must be zero
};
static_assert(sizeof(memory_attributes) == 32);

/// `KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)`.
inline constexpr unsigned long set_user_memory_region2 = _IOW(KVMIO, 0x49, userspace_memory_region2);
/// `KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xd2, struct kvm_memory_attributes)`.
inline constexpr unsigned long set_memory_attributes = _IOW(KVMIO, 0xd2, memory_attributes);
/// `KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)`.
inline constexpr unsigned long create_guest_memfd_code = _IOWR(KVMIO, 0xd4, create_guest_memfd);

#if defined(KVM_CAP_USER_MEMORY2)
static_assert(KVM_CAP_USER_MEMORY2 == cap_user_memory2);
static_assert(KVM_SET_USER_MEMORY_REGION2 == set_user_memory_region2);
static_assert(sizeof(::kvm_userspace_memory_region2) == sizeof(userspace_memory_region2));
#endif
#if defined(KVM_CAP_MEMORY_ATTRIBUTES)
static_assert(KVM_CAP_MEMORY_ATTRIBUTES == cap_memory_attributes);
static_assert(KVM_SET_MEMORY_ATTRIBUTES == set_memory_attributes);
static_assert(KVM_MEMORY_ATTRIBUTE_PRIVATE == memory_attribute_private);
#endif
#if defined(KVM_CAP_GUEST_MEMFD)
static_assert(KVM_CAP_GUEST_MEMFD == cap_guest_memfd);
static_assert(KVM_CREATE_GUEST_MEMFD == create_guest_memfd_code);
static_assert(KVM_MEM_GUEST_MEMFD == mem_guest_memfd);
#endif

/// The kernel's C size of `struct kvm_irq_routing`'s header (`__u32 nr, flags`), where the
/// entries start (the UAPI flexible array makes the C++ sizeof larger, see
/// `detail::with_c_flex_size`).
inline constexpr std::size_t irq_routing_header_size = 2 * sizeof(std::uint32_t);
static_assert(sizeof(::kvm_irq_routing_entry) == 48 && offsetof(::kvm_irq_routing_entry, u) == 16);
static_assert(sizeof(::kvm_msi) == 32 && offsetof(::kvm_msi, devid) == 16);
static_assert(sizeof(::kvm_enable_cap) == 104 && offsetof(::kvm_enable_cap, args) == 8);
static_assert(sizeof(::kvm_dirty_log) == 16 && sizeof(::kvm_clear_dirty_log) == 24 &&
              offsetof(::kvm_clear_dirty_log, first_page) == 8);
static_assert(sizeof(::kvm_dirty_gfn) == 16 && offsetof(::kvm_dirty_gfn, offset) == 8);
static_assert(sizeof(::kvm_irqfd) == 32 && offsetof(::kvm_irqfd, resamplefd) == 12);
static_assert(sizeof(::kvm_ioeventfd) == 64);

} // namespace vcpu::kvm::abi
