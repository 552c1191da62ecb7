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
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

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
/// Move-only; unmapped on destruction (after the VM stops using it: destroy
/// or remove the slot first, or keep the RAM alive as long as the VM).
template <class Sys>
class basic_guest_ram {
public:
    /// Maps `bytes` (rounded up by the kernel to whole pages) of zeroed RAM.
    /// Errors: "mmap guest RAM" with errno; EINVAL for 0 bytes.
    [[nodiscard]] static result<basic_guest_ram> allocate(std::size_t bytes) noexcept {
        if (bytes == 0) return error{"mmap guest RAM", EINVAL, "size is zero"};
        void* p = Sys::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return last_error("mmap guest RAM");
        // A fresh anonymous mapping of `bytes` readable, writable bytes.
        return basic_guest_ram(static_cast<std::byte*>(p), bytes);
    }

    basic_guest_ram(basic_guest_ram&& o) noexcept
        : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    basic_guest_ram& operator=(basic_guest_ram&& o) noexcept {
        if (this != &o) {
            release();
            p_ = std::exchange(o.p_, nullptr);
            n_ = std::exchange(o.n_, 0);
        }
        return *this;
    }
    basic_guest_ram(const basic_guest_ram&) = delete;
    basic_guest_ram& operator=(const basic_guest_ram&) = delete;
    ~basic_guest_ram() { release(); }

    /// The host view of the RAM.
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {p_, n_}; }
    /// Size in bytes.
    [[nodiscard]] std::size_t size() const noexcept { return n_; }
    /// This RAM as a `vcpu::guest_region` at guest physical address `gpa`.
    [[nodiscard]] guest_region region(std::uint64_t gpa, bool read_only = false) const noexcept {
        return guest_region{gpa, bytes(), read_only};
    }

private:
    basic_guest_ram(std::byte* p, std::size_t n) noexcept : p_(p), n_(n) {}
    void release() noexcept {
        if (p_ != nullptr) (void)Sys::munmap(p_, n_);
        p_ = nullptr;
        n_ = 0;
    }
    std::byte* p_ = nullptr;
    std::size_t n_ = 0;
};

/// Production guest RAM.
using guest_ram = basic_guest_ram<linux_sys>;

/// One user memory slot (KVM API 4.35 KVM_SET_USER_MEMORY_REGION).
struct memory_slot {
    std::uint32_t slot = 0;           ///< slot number (address space 0)
    std::uint64_t guest_phys_addr = 0; ///< page aligned
    std::span<std::byte> host;        ///< page-aligned host memory; empty removes the slot
    bool read_only = false;           ///< `KVM_MEM_READONLY`: guest writes exit as MMIO
    bool log_dirty = false;           ///< `KVM_MEM_LOG_DIRTY_PAGES`
};

/// An ioeventfd registration (KVM API 4.59 KVM_IOEVENTFD).
struct ioeventfd_spec {
    std::uint64_t addr = 0;                 ///< port number when `pio`, else guest physical address
    std::uint32_t len = 0;                  ///< 1, 2, 4 or 8 bytes (0: any length, MMIO only)
    bool pio = false;                       ///< `KVM_IOEVENTFD_FLAG_PIO`
    std::optional<std::uint64_t> datamatch; ///< only writes of this value signal
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
        return call(ioctls::vm::check_extension, detail::int_arg(static_cast<std::uint64_t>(cap)));
    }

    /// Installs, moves or (empty `host`) removes a memory slot (KVM API 4.35).
    /// A read-only slot without `KVM_CAP_READONLY_MEM` fails with EOPNOTSUPP
    /// before reaching the kernel.
    [[nodiscard]] result<void> set_memory(const memory_slot& m) const noexcept {
        constexpr auto io = ioctls::vm::set_user_memory_region;
        ::kvm_userspace_memory_region r{};
        r.slot = m.slot;
        r.guest_phys_addr = m.guest_phys_addr;
        r.memory_size = m.host.size();
        r.userspace_addr = reinterpret_cast<std::uintptr_t>(m.host.data()); // the kernel pins/maps it
        if (m.log_dirty) r.flags |= KVM_MEM_LOG_DIRTY_PAGES;
        if (m.read_only) {
            auto cap = check_extension(KVM_CAP_READONLY_MEM);
            if (!cap) return cap.err();
            if (*cap <= 0) return error{io.name, EOPNOTSUPP, "read-only slots need KVM_CAP_READONLY_MEM"};
            r.flags |= KVM_MEM_READONLY;
        }
        return call_void(io, &r);
    }
    /// Removes slot `slot` (a zero-sized KVM_SET_USER_MEMORY_REGION).
    [[nodiscard]] result<void> remove_memory(std::uint32_t slot) const noexcept {
        return set_memory(memory_slot{slot, 0, {}, false, false});
    }

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
        return call_void(ioctls::vm::irq_line, &l);
    }

#if defined(__x86_64__)
    /// KVM API 4.71 KVM_CREATE_PIT2 (after `create_irqchip`).
    [[nodiscard]] result<void> create_pit2(std::uint32_t flags = 0) const noexcept {
        ::kvm_pit_config c{};
        c.flags = flags;
        return call_void(ioctls::vm::create_pit2, &c);
    }
    /// KVM API 4.36 KVM_SET_TSS_ADDR: three pages KVM uses for real-mode
    /// emulation on Intel (the C VMM uses 0xffffd000).
    [[nodiscard]] result<void> set_tss_addr(std::uint64_t addr) const noexcept {
        return call_void(ioctls::vm::set_tss_addr, detail::int_arg(addr));
    }
    /// KVM API 4.40 KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map
    /// (the C VMM uses 0xffffc000). Before creating vCPUs.
    [[nodiscard]] result<void> set_identity_map_addr(std::uint64_t addr) const noexcept {
        std::uint64_t a = addr;
        return call_void(ioctls::vm::set_identity_map_addr, &a);
    }
#endif

    /// KVM API 4.59 KVM_IOEVENTFD: a guest write matching `s` signals a new
    /// eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`) instead of exiting. Returns the
    /// eventfd; closing it does not unregister (use `remove_ioeventfd`, or
    /// destroy the VM).
    [[nodiscard]] result<basic_fd<Sys>> ioeventfd(const ioeventfd_spec& s) const noexcept {
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
    /// want `create_vcpu`. Errors: "KVM_CREATE_VCPU", "mmap kvm_run", or
    /// "KVM_CHECK_EXTENSION", with errno.
    template <class Arch>
    [[nodiscard]] result<hal_vcpu<Sys, Arch>> create_hal_vcpu(unsigned id, vcpu_options opt = {}) const noexcept {
        auto fd = call(ioctls::vm::create_vcpu, detail::int_arg(id));
        if (!fd) return fd.err();
        basic_fd<Sys> owned(*fd);
        vcpu_setup s;
        s.system_fd = system_fd_;
        s.mmap_size = mmap_size_;
        const long page = ::sysconf(_SC_PAGESIZE);
        s.page_size = page > 0 ? static_cast<std::size_t>(page) : 4096;
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
    [[nodiscard]] result<void> ioeventfd_call(const ioeventfd_spec& s, int efd, std::uint32_t extra) const noexcept {
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
        return call_void(ioctls::vm::ioeventfd, &e);
    }
    [[nodiscard]] result<void> irqfd_call(int efd, std::uint32_t gsi, std::uint32_t flags) const noexcept {
        ::kvm_irqfd f{};
        f.fd = static_cast<std::uint32_t>(efd);
        f.gsi = gsi;
        f.flags = flags;
        return call_void(ioctls::vm::irqfd, &f);
    }
    [[nodiscard]] result<void> zone(ioctl_def<fd_kind::vm> io, std::uint64_t addr, std::uint32_t size,
                                    bool pio) const noexcept {
        if (pio) {
            auto cap = check_extension(KVM_CAP_COALESCED_PIO);
            if (!cap) return cap.err();
            if (*cap <= 0) return error{io.name, EOPNOTSUPP, "coalesced PIO needs KVM_CAP_COALESCED_PIO"};
        }
        ::kvm_coalesced_mmio_zone z{};
        z.addr = addr;
        z.size = size;
        z.pio = pio ? 1 : 0;
        return call_void(io, &z);
    }

    basic_fd<Sys> fd_;
    int system_fd_ = -1;
    std::size_t mmap_size_ = 0;
};

/// Production VM handle.
using vm = basic_vm<linux_sys>;

} // namespace vcpu::kvm
