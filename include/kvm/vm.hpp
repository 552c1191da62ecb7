#pragma once
/// \file
/// `basic_vm<Sys>`: a KVM VM fd (KVM API 4.2 "KVM_CREATE_VM") — memory slots,
/// in-kernel devices, eventfd plumbing, coalesced MMIO/PIO zones, vCPU
/// creation — and `basic_guest_ram<Sys>`, an anonymous RAM mapping to back
/// slots. Setup-path API: may take several syscalls, never used inside the
/// run loop.

#include <kvm/fd.hpp>
#include <kvm/hal.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/mapping.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm_abi.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>

#include <unistd.h>

namespace vcpu::kvm {

/// Anonymous, private guest RAM: `mmap(MAP_PRIVATE | MAP_ANONYMOUS |
/// MAP_NORESERVE)`, so a 1 GiB guest costs only the pages it touches.
/// Move-only (a `basic_mapping`); unmapped on destruction (after the VM stops using it: destroy
/// or remove the slot first, or keep the RAM alive as long as the VM).
template <class Sys>
class basic_guest_ram {
public:
    /// Maps `bytes` (rounded up by the kernel to whole pages) of zeroed RAM.
    /// Errors: "mmap guest RAM" with errno; EINVAL for 0 bytes.
    [[nodiscard]] static result<basic_guest_ram> allocate(std::size_t bytes) noexcept {
        if (bytes == 0) return error{"mmap guest RAM", EINVAL, "size is zero"}.with("size", bytes);
        auto m = basic_mapping<Sys>::map("mmap guest RAM", bytes, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
        if (!m) return m.err();
        return basic_guest_ram(std::move(*m));
    }

    /// Takes ownership of an existing mapping as guest RAM, e.g. a snapshot's memory mapped
    /// `MAP_PRIVATE` from its file (kvm/snapshot.hpp): copy-on-write, unmapped on destruction.
    [[nodiscard]] static basic_guest_ram adopt(basic_mapping<Sys> m) noexcept { return basic_guest_ram(std::move(m)); }

    /// The host view of the RAM.
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return map_.bytes(); }
    /// Size in bytes.
    [[nodiscard]] std::size_t size() const noexcept { return map_.size(); }
    /// This RAM as a `vcpu::guest_region` at guest physical address `gpa`.
    [[nodiscard]] guest_region region(std::uint64_t gpa, bool read_only = false) const noexcept {
        return guest_region{gpa, bytes(), read_only};
    }

private:
    explicit basic_guest_ram(basic_mapping<Sys> m) noexcept : map_(std::move(m)) {}
    basic_mapping<Sys> map_;
};

/// Production guest RAM.
using guest_ram = basic_guest_ram<linux_sys>;

namespace detail {
/// The host page size (`sysconf(_SC_PAGESIZE)`, 4096 if it cannot say).
[[nodiscard]] inline std::size_t host_page_size() noexcept {
    const long page = ::sysconf(_SC_PAGESIZE);
    return page > 0 ? static_cast<std::size_t>(page) : 4096;
}
/// A memory slot a `basic_vm` installed: enough to name the slot an overlap is with.
struct known_slot {
    std::uint32_t slot = 0;
    std::uint64_t gpa = 0;
    std::uint64_t size = 0;
};
} // namespace detail

/// One user memory slot (KVM API 4.35 KVM_SET_USER_MEMORY_REGION).
struct memory_slot {
    std::uint32_t slot = 0;           ///< slot number (address space 0)
    std::uint64_t guest_phys_addr = 0; ///< page aligned
    std::span<std::byte> host;        ///< page-aligned host memory; empty removes the slot
    bool read_only = false;           ///< `KVM_MEM_READONLY`: guest writes exit as MMIO
    bool log_dirty = false;           ///< `KVM_MEM_LOG_DIRTY_PAGES`
};

/// A memory slot that may take its private memory from a guest_memfd (KVM API section
/// "KVM_SET_USER_MEMORY_REGION2", `KVM_CAP_USER_MEMORY2`).
struct memory_slot2 {
    memory_slot base;                     ///< slot, address, shared host memory and flags, as for `set_memory`
    int guest_memfd = -1;                 ///< fd from `create_guest_memfd` (kvm/vm_calls.hpp); -1: none
    std::uint64_t guest_memfd_offset = 0; ///< page-aligned byte offset into `guest_memfd`
};

/// Where a slot this VM installed lies (`basic_vm::find_slot`).
struct slot_extent {
    std::uint32_t slot = 0; ///< bits 0-15 slot id, 16-31 address space
    std::uint64_t gpa = 0;  ///< first guest physical address
    std::uint64_t size = 0; ///< bytes
    /// Pages of `page` bytes the slot spans.
    [[nodiscard]] constexpr std::uint64_t pages(std::uint64_t page) const noexcept { return size / page; }
};

/// An ioeventfd registration (KVM API 4.59 KVM_IOEVENTFD).
struct ioeventfd_spec {
    std::uint64_t addr = 0;                 ///< port number when `pio`, else guest physical address
    std::uint32_t len = 0;                  ///< 1, 2, 4 or 8 bytes; 0: a write of any length
                                            ///< (`KVM_CAP_IOEVENTFD_ANY_LENGTH`, no datamatch)
    bool pio = false;                       ///< `KVM_IOEVENTFD_FLAG_PIO`
    std::optional<std::uint64_t> datamatch; ///< only writes of this value signal (fits in `len` bytes)
};

/// An irqfd with a resample eventfd (KVM API 4.75 KVM_IRQFD, `KVM_IRQFD_FLAG_RESAMPLE`): a
/// level-triggered GSI stays asserted after `irq` is signalled until the guest acknowledges it,
/// then KVM lowers it and signals `resample`, where the device model checks whether it must
/// signal `irq` again.
template <class Sys>
struct basic_resample_irqfd {
    basic_fd<Sys> irq;      ///< signal to raise the GSI
    basic_fd<Sys> resample; ///< signalled by KVM when the guest acknowledged the interrupt
};

/// A KVM VM fd. Move-only. Precondition for everything that makes vCPUs or
/// asks for CPUID: the `basic_system` it came from outlives it (the VM keeps
/// the system fd number, not a second descriptor).
template <class Sys>
class basic_vm {
    static_assert(SysPolicy<Sys>, "kvm: Sys does not model SysPolicy (see kvm/sys.hpp)");

public:
    /// Adopts VM fd `fd`. `system_fd` is the `/dev/kvm` fd it came from (not
    /// owned), `vcpu_mmap_size` the value of `KVM_GET_VCPU_MMAP_SIZE`.
    /// Normally called by `basic_system::create_vm`; tests adopt bad fds.
    basic_vm(basic_fd<Sys> fd, int system_fd, std::size_t vcpu_mmap_size) noexcept
        : fd_(std::move(fd)), system_fd_(system_fd), mmap_size_(vcpu_mmap_size) {}

    /// The VM fd.
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    /// The `/dev/kvm` fd this VM came from (not owned).
    [[nodiscard]] int system_fd() const noexcept { return system_fd_; }
    /// Bytes each vCPU maps for `kvm_run` and its extra pages.
    [[nodiscard]] std::size_t vcpu_mmap_size() const noexcept { return mmap_size_; }

    /// KVM API 4.4 KVM_CHECK_EXTENSION on the VM fd: 0 when `cap` is absent,
    /// else a positive, capability-specific value.
    [[nodiscard]] result<int> check_extension(long cap) const noexcept {
        auto r = call(ioctls::vm::check_extension, detail::int_arg(static_cast<std::uint64_t>(cap)));
        if (!r) return error(r.err()).with("cap", cap);
        return r;
    }

    /// The host's vCPU limits for this VM (KVM API 8 "KVM_CAP_MAX_VCPUS",
    /// "KVM_CAP_MAX_VCPU_ID", "KVM_CAP_NR_VCPUS"): ids must be below
    /// `max_vcpu_id`, at most `max_vcpus` vCPUs exist. Absent capabilities fall
    /// back as the API says (MAX_VCPU_ID to MAX_VCPUS, MAX_VCPUS to NR_VCPUS, that to 4).
    struct vcpu_limits {
        unsigned long max_vcpu_id = 0;  ///< vCPU ids must be below this
        unsigned long max_vcpus = 0;  ///< most vCPUs the VM may have
    };
    /// Queries the limits with KVM_CHECK_EXTENSION (see `vcpu_limits`).
    [[nodiscard]] result<vcpu_limits> limits() const noexcept {
        vcpu_limits l;
        auto nr = check_extension(KVM_CAP_NR_VCPUS);
        if (!nr) return nr.err();
        auto max = check_extension(KVM_CAP_MAX_VCPUS);
        if (!max) return max.err();
        auto id = check_extension(KVM_CAP_MAX_VCPU_ID);
        if (!id) return id.err();
        const long n = *nr > 0 ? *nr : 4;
        l.max_vcpus = static_cast<unsigned long>(*max > 0 ? *max : n);
        l.max_vcpu_id = *id > 0 ? static_cast<unsigned long>(*id) : l.max_vcpus;
        return l;
    }

    /// Installs, moves or (empty `host`) removes a memory slot (KVM API 4.35).
    /// Checked before reaching the kernel, with the values in the error: the guest
    /// address, size and host address must be page aligned (EINVAL), the range must
    /// not wrap (EINVAL) nor overlap another slot this VM installed in the same
    /// address space (EEXIST, naming both slots and ranges; the first
    /// `max_tracked_slots` slots are remembered), and a read-only slot needs
    /// `KVM_CAP_READONLY_MEM` (EOPNOTSUPP). Kernel errors carry the slot and range.
    /// Not thread-safe on one VM (the slot bookkeeping).
    [[nodiscard]] result<void> set_memory(const memory_slot& m) noexcept {
        constexpr auto io = ioctls::vm::set_user_memory_region;
        if (auto v = check_slot(m, io); !v) return v;
        ::kvm_userspace_memory_region r{};
        r.slot = m.slot;
        r.guest_phys_addr = m.guest_phys_addr;
        r.memory_size = m.host.size();
        r.userspace_addr = reinterpret_cast<std::uintptr_t>(m.host.data()); // the kernel pins/maps it
        auto flags = slot_flags(m, io);
        if (!flags) return flags.err();
        r.flags = *flags;
        if (Sys::ioctl(fd_.get(), io.code, &r) < 0)
            return last_error(io.name)
                .with("slot", m.slot)
                .with_range("gpa", m.guest_phys_addr, r.memory_size)
                .with_hex("flags", r.flags);
        remember_slot(m.slot, m.guest_phys_addr, r.memory_size);
        return ok();
    }
    /// As `set_memory`, through KVM_SET_USER_MEMORY_REGION2 (KVM API section of that name), which
    /// can also take the slot's private memory from a guest_memfd (`m.guest_memfd` >= 0,
    /// `KVM_MEM_GUEST_MEMFD`). Checked first, besides `set_memory`'s checks: the host has
    /// `KVM_CAP_USER_MEMORY2` (EOPNOTSUPP "host kernel lacks KVM_CAP_USER_MEMORY2"), the
    /// guest_memfd offset is page aligned (EINVAL). Kernel errors carry the slot, range, flags and
    /// guest_memfd. The overlap bookkeeping is `set_memory`'s.
    [[nodiscard]] result<void> set_memory2(const memory_slot2& m) noexcept {
        constexpr auto io = ioctls::vm::set_user_memory_region2;
        auto cap = check_extension(abi::cap_user_memory2);
        if (!cap) return cap.err();
        if (*cap <= 0)
            return error{io.name, EOPNOTSUPP, "host kernel lacks KVM_CAP_USER_MEMORY2"}.with("slot", m.base.slot);
        if (auto v = check_slot(m.base, io); !v) return v;
        const std::size_t page = detail::host_page_size();
        if (m.guest_memfd >= 0 && m.guest_memfd_offset % page != 0)
            return error{io.name, EINVAL, "guest_memfd offset is not page aligned"}
                .with("slot", m.base.slot)
                .with_hex("guest_memfd_offset", m.guest_memfd_offset);
        abi::userspace_memory_region2 r{};
        r.slot = m.base.slot;
        r.guest_phys_addr = m.base.guest_phys_addr;
        r.memory_size = m.base.host.size();
        r.userspace_addr = reinterpret_cast<std::uintptr_t>(m.base.host.data()); // the kernel pins/maps it
        auto flags = slot_flags(m.base, io);
        if (!flags) return flags.err();
        r.flags = *flags;
        if (m.guest_memfd >= 0) {
            r.flags |= abi::mem_guest_memfd;
            r.guest_memfd = static_cast<std::uint32_t>(m.guest_memfd);
            r.guest_memfd_offset = m.guest_memfd_offset;
        }
        if (Sys::ioctl(fd_.get(), io.code, &r) < 0)
            return last_error(io.name)
                .with("slot", m.base.slot)
                .with_range("gpa", m.base.guest_phys_addr, r.memory_size)
                .with_hex("flags", r.flags)
                .with("guest_memfd", m.guest_memfd);
        remember_slot(m.base.slot, m.base.guest_phys_addr, r.memory_size);
        return ok();
    }
    /// The range of slot `slot` as this VM installed it (`set_memory`/`set_memory2`), if it
    /// is among the `max_tracked_slots` remembered. Dirty tracking (kvm/dirty.hpp) sizes its
    /// bitmaps from it.
    [[nodiscard]] std::optional<slot_extent> find_slot(std::uint32_t slot) const noexcept {
        for (std::size_t i = 0; i < nslots_; ++i)
            if (slots_[i].slot == slot) return slot_extent{slot, slots_[i].gpa, slots_[i].size};
        return std::nullopt;
    }
    /// Removes slot `slot` (a zero-sized KVM_SET_USER_MEMORY_REGION).
    [[nodiscard]] result<void> remove_memory(std::uint32_t slot) noexcept {
        return set_memory(memory_slot{slot, 0, {}, false, false});
    }
    /// Slots whose ranges `set_memory` remembers to name overlaps.
    static constexpr std::size_t max_tracked_slots = 32;

    /// KVM API 4.24 KVM_CREATE_IRQCHIP (x86: PIC, IOAPIC and a local APIC per vCPU).
    /// Call before creating vCPUs.
    [[nodiscard]] result<void> create_irqchip() const noexcept {
        return call_void(ioctls::vm::create_irqchip, nullptr);
    }
    /// KVM API 4.25 KVM_IRQ_LINE: drives GSI `irq` of the in-kernel irqchip.
    [[nodiscard]] result<void> irq_line(std::uint32_t irq, bool level) const noexcept {
        ::kvm_irq_level l{};
        l.irq = irq;
        l.level = level ? 1 : 0;
        if (Sys::ioctl(fd_.get(), ioctls::vm::irq_line.code, &l) < 0)
            return last_error(ioctls::vm::irq_line.name).with("irq", irq).with("level", l.level);
        return ok();
    }

#if defined(__x86_64__)
    /// KVM API 4.71 KVM_CREATE_PIT2 (after `create_irqchip`).
    [[nodiscard]] result<void> create_pit2(std::uint32_t flags = 0) const noexcept {
        ::kvm_pit_config c{};
        c.flags = flags;
        if (Sys::ioctl(fd_.get(), ioctls::vm::create_pit2.code, &c) < 0)
            return last_error(ioctls::vm::create_pit2.name).with_hex("flags", flags);
        return ok();
    }
    /// KVM API 4.36 KVM_SET_TSS_ADDR: three pages KVM uses for real-mode
    /// emulation on Intel (the C VMM uses 0xffffd000).
    [[nodiscard]] result<void> set_tss_addr(std::uint64_t addr) const noexcept {
        if (Sys::ioctl(fd_.get(), ioctls::vm::set_tss_addr.code, detail::int_arg(addr)) < 0)
            return last_error(ioctls::vm::set_tss_addr.name).with_hex("addr", addr);
        return ok();
    }
    /// KVM API 4.40 KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map
    /// (the C VMM uses 0xffffc000). Before creating vCPUs.
    [[nodiscard]] result<void> set_identity_map_addr(std::uint64_t addr) const noexcept {
        std::uint64_t a = addr;
        if (Sys::ioctl(fd_.get(), ioctls::vm::set_identity_map_addr.code, &a) < 0)
            return last_error(ioctls::vm::set_identity_map_addr.name).with_hex("addr", addr);
        return ok();
    }
#endif

    /// KVM API 4.59 KVM_IOEVENTFD: a guest write matching `s` signals a new
    /// eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`) instead of exiting. Returns the
    /// eventfd; closing it does not unregister (use `remove_ioeventfd`, or
    /// destroy the VM).
    /// Checked before any syscall (EINVAL, with the values): `len` is 0, 1, 2, 4 or 8; a
    /// zero length has no datamatch; `datamatch` fits in `len` bytes; the range does not wrap
    /// and, for PIO, ends at or below port 0x10000.
    [[nodiscard]] result<basic_fd<Sys>> ioeventfd(const ioeventfd_spec& s) const noexcept {
        if (auto v = check_ioeventfd(s); !v) return v.err();
        basic_fd<Sys> efd(Sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!efd) return last_error("eventfd");
        if (auto r = ioeventfd_call(s, efd.get(), 0); !r) return r.err();
        return efd;
    }
    /// Unregisters an ioeventfd (`KVM_IOEVENTFD_FLAG_DEASSIGN`); `s` as registered.
    [[nodiscard]] result<void> remove_ioeventfd(const ioeventfd_spec& s, int efd) const noexcept {
        return ioeventfd_call(s, efd, KVM_IOEVENTFD_FLAG_DEASSIGN);
    }

    /// KVM API 4.75 KVM_IRQFD: returns a new eventfd whose signal injects GSI
    /// `gsi` (needs the in-kernel irqchip).
    [[nodiscard]] result<basic_fd<Sys>> irqfd(std::uint32_t gsi) const noexcept {
        basic_fd<Sys> efd(Sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!efd) return last_error("eventfd");
        if (auto r = irqfd_call(efd.get(), gsi, 0); !r) return r.err();
        return efd;
    }
    /// KVM API 4.75 KVM_IRQFD with `KVM_IRQFD_FLAG_RESAMPLE`: two new eventfds, one that
    /// raises level-triggered GSI `gsi` and one KVM signals when the guest acknowledged it (see
    /// `basic_resample_irqfd`). Needs `KVM_CAP_IRQFD_RESAMPLE` (EOPNOTSUPP, checked first) and
    /// the full in-kernel irqchip (the kernel refuses it with a split irqchip: EINVAL).
    /// Detach with `remove_irqfd(irq.get(), gsi)`.
    [[nodiscard]] result<basic_resample_irqfd<Sys>> irqfd_resample(std::uint32_t gsi) const noexcept {
        constexpr auto io = ioctls::vm::irqfd;
        auto cap = check_extension(KVM_CAP_IRQFD_RESAMPLE);
        if (!cap) return cap.err();
        if (*cap <= 0)
            return error{io.name, EOPNOTSUPP, "resampling irqfds need KVM_CAP_IRQFD_RESAMPLE"}.with("gsi", gsi);
        basic_resample_irqfd<Sys> r{basic_fd<Sys>(Sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), basic_fd<Sys>()};
        if (!r.irq) return last_error("eventfd");
        r.resample = basic_fd<Sys>(Sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!r.resample) return last_error("eventfd");
        ::kvm_irqfd f{};
        f.fd = static_cast<std::uint32_t>(r.irq.get());
        f.gsi = gsi;
        f.flags = KVM_IRQFD_FLAG_RESAMPLE;
        f.resamplefd = static_cast<std::uint32_t>(r.resample.get());
        if (Sys::ioctl(fd_.get(), io.code, &f) < 0)
            return last_error(io.name)
                .with("gsi", gsi)
                .with("eventfd", r.irq.get())
                .with("resamplefd", r.resample.get())
                .with_hex("flags", f.flags);
        return r;
    }
    /// Detaches an irqfd (`KVM_IRQFD_FLAG_DEASSIGN`).
    [[nodiscard]] result<void> remove_irqfd(int efd, std::uint32_t gsi) const noexcept {
        return irqfd_call(efd, gsi, KVM_IRQFD_FLAG_DEASSIGN);
    }

    /// KVM API 4.116 KVM_REGISTER_COALESCED_MMIO: guest writes to
    /// `[addr, addr+size)` are buffered in the vCPU's coalesced ring (drained by
    /// `hal_vcpu::drain_coalesced`) instead of exiting. Needs `KVM_CAP_COALESCED_MMIO`.
    [[nodiscard]] result<void> register_coalesced_mmio(std::uint64_t addr, std::uint32_t size) const noexcept {
        return zone(ioctls::vm::register_coalesced_mmio, addr, size, false);
    }
    /// Removes a coalesced MMIO zone (KVM_UNREGISTER_COALESCED_MMIO).
    [[nodiscard]] result<void> unregister_coalesced_mmio(std::uint64_t addr, std::uint32_t size) const noexcept {
        return zone(ioctls::vm::unregister_coalesced_mmio, addr, size, false);
    }
    /// As `register_coalesced_mmio` for ports `[port, port+size)` (zone.pio = 1);
    /// EOPNOTSUPP without `KVM_CAP_COALESCED_PIO`.
    [[nodiscard]] result<void> register_coalesced_pio(std::uint16_t port, std::uint32_t size) const noexcept {
        return zone(ioctls::vm::register_coalesced_mmio, port, size, true);
    }
    /// Removes a coalesced PIO zone.
    [[nodiscard]] result<void> unregister_coalesced_pio(std::uint16_t port, std::uint32_t size) const noexcept {
        return zone(ioctls::vm::unregister_coalesced_mmio, port, size, true);
    }

    /// KVM API 4.7 KVM_CREATE_VCPU, then maps its `kvm_run` and enables sync
    /// registers (see `vcpu_options`). Returns the bare HAL state; most users
    /// want `create_vcpu`. An id not below the host's `KVM_CAP_MAX_VCPU_ID` is
    /// refused before the kernel sees it (EINVAL, naming id and limit). Errors:
    /// "KVM_CREATE_VCPU" (with the id, and on EINVAL the host's limits), "mmap
    /// kvm_run", or "KVM_CHECK_EXTENSION", with errno.
    template <class Arch>
    [[nodiscard]] result<hal_vcpu<Sys, Arch>> create_hal_vcpu(unsigned id, vcpu_options opt = {}) const noexcept {
        constexpr auto io = ioctls::vm::create_vcpu;
        // Only an explanation aid: when the query fails, KVM_CREATE_VCPU checks the id itself.
        auto max_id = check_extension(KVM_CAP_MAX_VCPU_ID);
        if (max_id && *max_id > 0 && id >= static_cast<unsigned long>(*max_id))
            return error{io.name, EINVAL, "vCPU id is not below the host's KVM_CAP_MAX_VCPU_ID"}
                .with("vcpu_id", id)
                .with("max_vcpu_id", *max_id);
        auto fd = call(io, detail::int_arg(id));
        if (!fd) {
            error e = error(fd.err()).with("vcpu_id", id);
            if (e.code == EINVAL) { // too many vCPUs, or an id the host refuses: say its limits
                if (auto l = limits(); l) e.with("max_vcpu_id", l->max_vcpu_id).with("max_vcpus", l->max_vcpus);
            }
            return e;
        }
        basic_fd<Sys> owned(*fd);
        vcpu_setup s;
        s.system_fd = system_fd_;
        s.mmap_size = mmap_size_;
        s.page_size = detail::host_page_size();
        s.id = id;
        s.options = opt;
        if (hal_vcpu<Sys, Arch>::arch_sync_bits != 0 && opt.sync_regs != 0) {
            auto sync = check_extension(KVM_CAP_SYNC_REGS);
            if (!sync) return sync.err();
            s.kernel_sync_regs = static_cast<std::uint64_t>(*sync);
        }
        auto ring = check_extension(KVM_CAP_COALESCED_MMIO);
        if (!ring) return ring.err();
        s.coalesced_page_offset = *ring;
        return hal_vcpu<Sys, Arch>::create(std::move(owned), s);
    }

    /// `create_hal_vcpu` wrapped in a `vcpu::basic_vcpu<Arch, basic_hal<Sys>>`.
    template <class Arch>
    [[nodiscard]] result<::vcpu::basic_vcpu<Arch, basic_hal<Sys>>> create_vcpu(unsigned id, vcpu_options opt = {}) const noexcept {
        auto h = create_hal_vcpu<Arch>(id, opt);
        if (!h) return h.err();
        return ::vcpu::basic_vcpu<Arch, basic_hal<Sys>>(std::move(*h));
    }

    /// Any VM ioctl this class does not wrap; errors carry the entry's name.
    [[nodiscard]] result<int> ioctl(ioctl_def<fd_kind::vm> io, void* arg) const noexcept {
        return call(io, arg);
    }

private:
    [[nodiscard]] result<int> call(ioctl_def<fd_kind::vm> io, void* arg) const noexcept {
        const int rc = Sys::ioctl(fd_.get(), io.code, arg);
        if (rc < 0) return last_error(io.name);
        return rc;
    }
    [[nodiscard]] result<void> call_void(ioctl_def<fd_kind::vm> io, void* arg) const noexcept {
        if (Sys::ioctl(fd_.get(), io.code, arg) < 0) return last_error(io.name);
        return ok();
    }
    /// Checks `m` the way KVM will (kvm_set_memory_region), with the values in the error.
    [[nodiscard]] result<void> check_slot(const memory_slot& m, ioctl_def<fd_kind::vm> io) const noexcept {
        const std::size_t page = detail::host_page_size();
        const std::uint64_t size = m.host.size();
        const auto host = reinterpret_cast<std::uintptr_t>(m.host.data());
        if (m.guest_phys_addr % page != 0)
            return error{io.name, EINVAL, "guest physical address is not page aligned"}
                .with("slot", m.slot)
                .with_hex("gpa", m.guest_phys_addr)
                .with("page_size", page);
        if (size % page != 0)
            return error{io.name, EINVAL, "size is not a multiple of the host page size"}
                .with("slot", m.slot)
                .with("size", size)
                .with("page_size", page);
        if (size == 0) return ok(); // removal: KVM ignores the rest
        if (host % page != 0)
            return error{io.name, EINVAL, "host memory is not page aligned"}
                .with("slot", m.slot)
                .with_hex("host", host)
                .with("page_size", page);
        if (m.guest_phys_addr + (size - 1) < m.guest_phys_addr)
            return error{io.name, EINVAL, "guest range wraps the address space"}
                .with("slot", m.slot)
                .with_hex("gpa", m.guest_phys_addr)
                .with_hex("size", size);
        for (std::size_t i = 0; i < nslots_; ++i) {
            const auto& k = slots_[i];
            if (k.slot == m.slot || (k.slot >> 16) != (m.slot >> 16)) continue; // other address space
            // Neither range wraps (checked above, and when it was remembered).
            if (m.guest_phys_addr - k.gpa < k.size || k.gpa - m.guest_phys_addr < size)
                return error{io.name, EEXIST, "guest range overlaps another slot"}
                    .with("slot", m.slot)
                    .with_range("gpa", m.guest_phys_addr, size)
                    .with("other_slot", k.slot)
                    .with_range("other_gpa", k.gpa, k.size);
        }
        return ok();
    }
    /// `KVM_MEM_*` flags of `m`; a read-only slot needs `KVM_CAP_READONLY_MEM` (EOPNOTSUPP).
    [[nodiscard]] result<std::uint32_t> slot_flags(const memory_slot& m, ioctl_def<fd_kind::vm> io) const noexcept {
        std::uint32_t flags = 0;
        if (m.log_dirty) flags |= KVM_MEM_LOG_DIRTY_PAGES;
        if (m.read_only) {
            auto cap = check_extension(KVM_CAP_READONLY_MEM);
            if (!cap) return cap.err();
            if (*cap <= 0)
                return error{io.name, EOPNOTSUPP, "read-only slots need KVM_CAP_READONLY_MEM"}.with("slot", m.slot);
            flags |= KVM_MEM_READONLY;
        }
        return flags;
    }
    /// Records what KVM accepted: slot `slot` now covers `[gpa, gpa+size)` (size 0: removed).
    void remember_slot(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size) noexcept {
        for (std::size_t i = 0; i < nslots_; ++i) {
            if (slots_[i].slot != slot) continue;
            if (size == 0) slots_[i] = slots_[--nslots_];
            else slots_[i] = detail::known_slot{slot, gpa, size};
            return;
        }
        if (size != 0 && nslots_ < slots_.size()) slots_[nslots_++] = detail::known_slot{slot, gpa, size};
    }
    /// The checks KVM's kvm_ioeventfd() makes, and those whose failure would only show as an
    /// eventfd that never fires, with the values in the error (EINVAL).
    [[nodiscard]] static result<void> check_ioeventfd(const ioeventfd_spec& s) noexcept {
        constexpr auto io = ioctls::vm::ioeventfd;
        const char* what = s.pio ? "port" : "gpa";
        if (s.len != 0 && s.len != 1 && s.len != 2 && s.len != 4 && s.len != 8)
            return error{io.name, EINVAL, "length must be 0 (any), 1, 2, 4 or 8 bytes"}
                .with_hex(what, s.addr)
                .with("len", s.len);
        if (s.len == 0 && s.datamatch)
            return error{io.name, EINVAL, "a zero-length (any length) ioeventfd cannot match data"}
                .with_hex(what, s.addr)
                .with_hex("datamatch", *s.datamatch);
        if (s.datamatch && s.len < 8 && (*s.datamatch >> (8 * s.len)) != 0)
            return error{io.name, EINVAL, "datamatch does not fit in len bytes: no write could match"}
                .with_hex(what, s.addr)
                .with("len", s.len)
                .with_hex("datamatch", *s.datamatch);
        if (s.addr + s.len < s.addr)
            return error{io.name, EINVAL, "address range wraps"}.with_hex(what, s.addr).with("len", s.len);
        constexpr std::uint64_t port_space = 0x10000; // the 64 KiB x86 I/O address space (SDM vol. 1 ch. 19)
        if (s.pio && s.addr + (s.len == 0 ? 1 : s.len) > port_space)
            return error{io.name, EINVAL, "port range ends past 0xffff"}.with_hex("port", s.addr).with("len", s.len);
        return ok();
    }
    [[nodiscard]] result<void> ioeventfd_call(const ioeventfd_spec& s, int efd, std::uint32_t extra) const noexcept {
        if (auto v = check_ioeventfd(s); !v) return v;
        ::kvm_ioeventfd e{};
        e.addr = s.addr;
        e.len = s.len;
        e.fd = efd;
        e.flags = extra;
        if (s.pio) e.flags |= KVM_IOEVENTFD_FLAG_PIO;
        if (s.datamatch) {
            e.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
            e.datamatch = *s.datamatch;
        }
        if (Sys::ioctl(fd_.get(), ioctls::vm::ioeventfd.code, &e) < 0)
            return last_error(ioctls::vm::ioeventfd.name)
                .with_hex(s.pio ? "port" : "gpa", s.addr)
                .with("len", s.len)
                .with("eventfd", efd)
                .with_hex("flags", e.flags);
        return ok();
    }
    [[nodiscard]] result<void> irqfd_call(int efd, std::uint32_t gsi, std::uint32_t flags) const noexcept {
        ::kvm_irqfd f{};
        f.fd = static_cast<std::uint32_t>(efd);
        f.gsi = gsi;
        f.flags = flags;
        if (Sys::ioctl(fd_.get(), ioctls::vm::irqfd.code, &f) < 0)
            return last_error(ioctls::vm::irqfd.name).with("gsi", gsi).with("eventfd", efd).with_hex("flags", flags);
        return ok();
    }
    [[nodiscard]] result<void> zone(ioctl_def<fd_kind::vm> io, std::uint64_t addr, std::uint32_t size,
                                    bool pio) const noexcept {
        if (pio) {
            auto cap = check_extension(KVM_CAP_COALESCED_PIO);
            if (!cap) return cap.err();
            if (*cap <= 0)
                return error{io.name, EOPNOTSUPP, "coalesced PIO needs KVM_CAP_COALESCED_PIO"}
                    .with_range("port", addr, size);
        }
        ::kvm_coalesced_mmio_zone z{};
        z.addr = addr;
        z.size = size;
        z.pio = pio ? 1 : 0;
        if (Sys::ioctl(fd_.get(), io.code, &z) < 0)
            return last_error(io.name).with_range(pio ? "port" : "gpa", addr, size);
        return ok();
    }

    basic_fd<Sys> fd_;
    int system_fd_ = -1;
    std::size_t mmap_size_ = 0;
    std::array<detail::known_slot, max_tracked_slots> slots_{}; ///< slots set through this VM
    std::size_t nslots_ = 0;
};

/// Production VM handle.
using vm = basic_vm<linux_sys>;

} // namespace vcpu::kvm
