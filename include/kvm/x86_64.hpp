#pragma once
/// \file
/// x86-64 host glue, part 2: the minimal C VMM's `vm_init` as one call.
/// `vm_init_x86_64(options, init)` opens `/dev/kvm`, creates the VM, sets the
/// TSS and identity-map addresses, creates the in-kernel irqchip and PIT,
/// maps guest RAM at GPA 0 as slot 0, creates the vCPUs and applies the arch
/// boot-state policy `init` to each. (Layout checks, register-block traits and
/// CPUID are in kvm/x86_64_abi.hpp.)
///
/// Compiled only on x86-64 hosts; elsewhere this header is empty.

#include <kvm/hal.hpp>
#include <kvm/sys.hpp>
#include <kvm/system.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm.hpp>
#include <kvm/x86_64_abi.hpp>
#include <vcpu/config.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/arch.hpp>
#include <kvm/exits_x86_64.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace vcpu::kvm {

/// What `vm_init_x86_64` builds. Defaults are the minimal C VMM's.
struct x86_64_options {
    std::size_t ram_bytes = std::size_t{1} << 30; ///< guest RAM at GPA 0 (slot 0); 1 GiB
    unsigned vcpus = 1;                            ///< vCPU ids 0 .. vcpus-1
    bool irqchip = true;                           ///< KVM_CREATE_IRQCHIP
    bool pit = true;                               ///< KVM_CREATE_PIT2 (needs `irqchip`)
    bool tss_and_identity_map = true;              ///< KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR
    std::uint64_t tss_addr = 0xffffd000;           ///< three pages (KVM API 4.36)
    std::uint64_t identity_map_addr = 0xffffc000;  ///< one page
    vcpu_options vcpu{};                           ///< sync-regs choice for every vCPU
    const char* device = "/dev/kvm";
};

/// A VM ready to run: system and VM fds, guest RAM (also as a
/// `vcpu::guest_memory` for loaders) and its vCPUs. Move-only. Members are
/// declared in destruction-safe order (vCPUs and VM go before the system).
template <class Sys>
struct basic_x86_64_machine {
    using cpu_type = ::vcpu::basic_vcpu<::vcpu::arch::x86_64, basic_hal<Sys>>;

    basic_system<Sys> system;
    basic_guest_ram<Sys> ram;
    basic_vm<Sys> vm;
    ::vcpu::guest_memory memory;
    std::vector<cpu_type> vcpus;
};

/// Production machine.
using x86_64_machine = basic_x86_64_machine<linux_sys>;

/// An init policy that leaves the vCPUs in KVM's reset state.
struct reset_state {
    /// Does nothing.
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu&) const noexcept {
        return ok();
    }
};

/// The minimal C VMM's `vm_init` on x86-64, with the arch CPU hook as the
/// `CpuInitFor` policy `init` (e.g. `vcpu::x86_64::flat_protected_mode{}`).
/// Order (KVM API 4.36, 4.40, 4.24, 4.71, 4.35, 4.7): KVM_CREATE_VM,
/// KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,
/// KVM_CREATE_PIT2, RAM slot 0, KVM_CREATE_VCPU × n, `cpu.init(init)`.
/// The first failing step's error is returned. Options KVM would refuse are
/// refused first, naming the values (op "vm_init_x86_64", EINVAL): `ram_bytes`
/// zero or not a multiple of the host page size, no vCPUs, a PIT without the
/// irqchip, more vCPUs than the host's `KVM_CAP_MAX_VCPUS`. Allocates (the vCPU
/// vector) — setup path only; allocation failure terminates, as everywhere in vcpu.
template <class Sys = linux_sys, class Init = reset_state>
[[nodiscard]] result<basic_x86_64_machine<Sys>> vm_init_x86_64(const x86_64_options& o = {},
                                                               const Init& init = {}) {
    constexpr const char* op = "vm_init_x86_64";
    const std::size_t page = detail::host_page_size();
    if (o.ram_bytes == 0 || o.ram_bytes % page != 0)
        return error{op, EINVAL, "ram_bytes is not a non-zero multiple of the host page size"}
            .with("ram_bytes", o.ram_bytes)
            .with("page_size", page);
    if (o.vcpus == 0) return error{op, EINVAL, "no vCPUs"}.with("vcpus", o.vcpus);
    if (o.pit && !o.irqchip)
        return error{op, EINVAL, "the PIT needs the in-kernel irqchip (KVM API 4.71)"};
    auto sys = basic_system<Sys>::open(o.device);
    if (!sys) return sys.err();
    auto vm = sys->create_vm();
    if (!vm) return vm.err();
    // An explanation aid: when the query fails, KVM_CREATE_VCPU refuses the extra vCPUs itself.
    if (auto limits = vm->limits(); limits && o.vcpus > limits->max_vcpus)
        return error{op, EINVAL, "more vCPUs than the host's KVM_CAP_MAX_VCPUS"}
            .with("vcpus", o.vcpus)
            .with("max_vcpus", limits->max_vcpus);
    if (o.tss_and_identity_map) {
        VCPU_TRY_VOID(vm->set_tss_addr(o.tss_addr));
        VCPU_TRY_VOID(vm->set_identity_map_addr(o.identity_map_addr));
    }
    if (o.irqchip) VCPU_TRY_VOID(vm->create_irqchip());
    if (o.pit) VCPU_TRY_VOID(vm->create_pit2());
    auto ram = basic_guest_ram<Sys>::allocate(o.ram_bytes);
    if (!ram) return ram.err();
    VCPU_TRY_VOID(vm->set_memory(memory_slot{0, 0, ram->bytes(), false, false}));
    ::vcpu::guest_memory mem;
    VCPU_TRY_VOID(mem.add(ram->region(0)));

    std::vector<typename basic_x86_64_machine<Sys>::cpu_type> cpus;
    cpus.reserve(o.vcpus);
    for (unsigned id = 0; id < o.vcpus; ++id) {
        auto cpu = vm->template create_vcpu<::vcpu::arch::x86_64>(id, o.vcpu);
        if (!cpu) return cpu.err();
        VCPU_TRY_VOID(cpu->init(init));
        cpus.push_back(std::move(*cpu));
    }
    return basic_x86_64_machine<Sys>{std::move(*sys), std::move(*ram), std::move(*vm), mem,
                                     std::move(cpus)};
}

} // namespace vcpu::kvm

#endif // __x86_64__
