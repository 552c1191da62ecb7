#pragma once
/// \file
/// Whole-machine snapshots of an x86-64 `basic_x86_64_machine` (kvm/x86_64.hpp): one call to
/// write one (`save_x86_64_snapshot`) and one to build a new machine from it
/// (`restore_x86_64_snapshot`), with guest RAM mapped copy-on-write from the file, the VM's
/// device state (`x86_64_vm_state`) and every vCPU's state (`x86_64_vcpu_state`). The file
/// format and its checks are kvm/snapshot.hpp; docs/snapshot.md.
///
/// Setup and state-transfer path: allocates. Compiled only on x86-64 hosts; elsewhere this
/// header is empty.

#include <kvm/snapshot.hpp>
#include <kvm/x86_64.hpp>
#include <kvm/x86_64_state.hpp>
#include <kvm/x86_64_vm_state.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/arch.hpp>

#include <cerrno>
#include <cstddef>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace vcpu::kvm {

/// Writes machine `m` to `path`: its RAM as slot 0 at GPA 0, its VM device state, every vCPU's
/// state, and `device_state`, the VMM's own device models (opaque; read back with
/// `basic_snapshot_file::device_state`). Precondition: no vCPU of `m` is in KVM_RUN (each vCPU's
/// pending I/O is completed by the save). Errors: as `save_snapshot`.
template <class Sys>
[[nodiscard]] result<snapshot_write_stats> save_x86_64_snapshot(const char* path, basic_x86_64_machine<Sys>& m,
                                                                std::span<const std::byte> device_state = {},
                                                                const snapshot_write_options& o = {}) {
    const snapshot_region ram[1]{snapshot_region{0, 0, m.ram.bytes(), false}};
    return save_snapshot<x86_64_vcpu_state, x86_64_vm_state>(path, m.vm, std::span(m.vcpus), std::span(ram),
                                                             device_state, o);
}

/// Builds a new machine from the snapshot at `path`, as `vm_init_x86_64(o, init)` would build
/// one, except that its RAM is the snapshot's memory mapped copy-on-write from the file (nothing
/// is read or copied: restore time does not depend on RAM size), and then loads the VM device
/// state (`how` for the clock) and every vCPU's state. `o` must describe the machine the
/// snapshot was taken of: `o.ram_bytes` and `o.vcpus` are checked against the file (EINVAL
/// "memory layout mismatch" / "vCPU layout mismatch", naming both values), and `init` must set
/// the same CPUID (the vCPU state does not carry it; `init`'s registers are then overwritten by
/// the state). The file is checked completely before any VM is created. The file stays open
/// only as long as this call; the mapping keeps its pages. Errors: the file's checks, then the
/// first failing step.
template <class Sys = linux_sys, class Init = reset_state>
[[nodiscard]] result<basic_x86_64_machine<Sys>> restore_x86_64_snapshot(const char* path, const x86_64_options& o = {},
                                                                        const Init& init = {},
                                                                        clock_restore how = clock_restore::exact);

/// As `restore_x86_64_snapshot(path, ...)` from a snapshot file already opened (and so checked)
/// with `basic_snapshot_file<Sys>::open(path, "x86_64")`, e.g. to read its `device_state` too.
template <class Sys, class Init = reset_state>
[[nodiscard]] result<basic_x86_64_machine<Sys>> restore_x86_64_snapshot(const basic_snapshot_file<Sys>& file,
                                                                        const x86_64_options& o = {},
                                                                        const Init& init = {},
                                                                        clock_restore how = clock_restore::exact) {
    constexpr const char* op = "restore_x86_64_snapshot";
    const auto* f = &file;
    if (std::string_view(f->header().arch.data()) != ::vcpu::arch::x86_64::name)
        return error{op, EINVAL, "wrong arch: the snapshot is of another architecture"}.with_text(
            "snapshot_arch", std::string_view(f->header().arch.data()));
    const auto slots = f->slots();
    if (slots.size() != 1 || slots[0].gpa != 0 || slots[0].size != o.ram_bytes || slots[0].slot != 0)
        return error{op, EINVAL, "memory layout mismatch: the machine's RAM is not the snapshot's"}
            .with("snapshot_slots", slots.size())
            .with("snapshot_ram_bytes", slots.empty() ? 0 : slots[0].size)
            .with_hex("snapshot_gpa", slots.empty() ? 0 : slots[0].gpa)
            .with("ram_bytes", o.ram_bytes);
    if (f->vcpus().size() != o.vcpus)
        return error{op, EINVAL, "vCPU layout mismatch: different vCPU counts"}
            .with("snapshot_vcpus", f->vcpus().size())
            .with("vcpus", o.vcpus);
    if (o.pit && !o.irqchip) return error{op, EINVAL, "the PIT needs the in-kernel irqchip (KVM API 4.71)"};

    // vm_init_x86_64's order, with RAM from the file.
    auto sys = basic_system<Sys>::open(o.device);
    if (!sys) return sys.err();
    auto vm = sys->create_vm();
    if (!vm) return vm.err();
    if (o.tss_and_identity_map) {
        VCPU_TRY_VOID(vm->set_tss_addr(o.tss_addr));
        VCPU_TRY_VOID(vm->set_identity_map_addr(o.identity_map_addr));
    }
    if (o.irqchip) VCPU_TRY_VOID(vm->create_irqchip());
    if (o.pit) VCPU_TRY_VOID(vm->create_pit2());
    auto rams = f->map_memory(*vm);
    if (!rams) return rams.err();
    ::vcpu::guest_memory mem;
    VCPU_TRY_VOID(mem.add((*rams)[0].region(0)));
    std::vector<typename basic_x86_64_machine<Sys>::cpu_type> cpus;
    cpus.reserve(o.vcpus);
    for (unsigned id = 0; id < o.vcpus; ++id) {
        auto cpu = vm->template create_vcpu<::vcpu::arch::x86_64>(id, o.vcpu);
        if (!cpu) return cpu.err();
        VCPU_TRY_VOID(cpu->init(init));
        cpus.push_back(std::move(*cpu));
    }
    VCPU_TRY_VOID((load_snapshot_state<x86_64_vcpu_state, x86_64_vm_state>(*f, *vm, std::span(cpus), how)));
    return basic_x86_64_machine<Sys>{std::move(*sys), std::move((*rams)[0]), std::move(*vm), mem, std::move(cpus)};
}

template <class Sys, class Init>
[[nodiscard]] result<basic_x86_64_machine<Sys>> restore_x86_64_snapshot(const char* path, const x86_64_options& o,
                                                                        const Init& init, clock_restore how) {
    auto f = basic_snapshot_file<Sys>::open(path, ::vcpu::arch::x86_64::name);
    if (!f) return f.err();
    return restore_x86_64_snapshot<Sys, Init>(*f, o, init, how);
}

} // namespace vcpu::kvm

#endif // __x86_64__
