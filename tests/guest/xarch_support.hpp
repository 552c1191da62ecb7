#pragma once
// Shared by the AArch64 and RISC-V guest-code tests, which are cross-compiled and run on real KVM
// inside the emulated machines (tests/guest/xarch-run.sh): a small VM of this executable's own
// architecture (64 MiB of RAM at the `virt` machine's base, one vCPU through the arch's KVM
// init), the executable loaded into it, and the doctest glue of support_common.hpp.
#include "support_common.hpp"

#include <kvm/kvm.hpp>
#include <vcpu/guest/run.hpp>

#if defined(__aarch64__)
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/init.hpp>
#include <kvm/aarch64.hpp>
#include <vcpu/guest/aarch64.hpp>
#include <vcpu/guest/aarch64_loader.hpp>
#elif defined(__riscv) && __riscv_xlen == 64
#include <arch/riscv64/arch.hpp>
#include <arch/riscv64/init.hpp>
#include <kvm/riscv64.hpp>
#include <vcpu/guest/riscv64.hpp>
#include <vcpu/guest/riscv64_loader.hpp>
#else
#error "tests/guest/xarch_support.hpp: for AArch64 and RISC-V 64 builds (the cross builds)"
#endif

#include <doctest/doctest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include <sys/utsname.h>

namespace guest_test {

#if defined(__aarch64__)
namespace gx = vcpu::guest::aarch64;
using arch = vcpu::arch::aarch64;
inline constexpr const char* machine_name = "aarch64";
inline constexpr std::uint64_t ram_base = 0x4000'0000;
#define GUEST_ARCH "aarch64"
#else
namespace gx = vcpu::guest::riscv64;
using arch = vcpu::arch::riscv64;
inline constexpr const char* machine_name = "riscv64";
inline constexpr std::uint64_t ram_base = 0x8000'0000;
#define GUEST_ARCH "riscv64"
#endif
inline constexpr std::uint64_t ram_bytes = std::uint64_t{64} << 20;

using cpu_type = decltype(std::declval<vcpu::kvm::vm&>().create_vcpu<arch>(0))::value_type;

/// One VM with one vCPU, heap-allocated so that nothing moves once the vCPU exists.
struct machine {
    std::optional<vcpu::kvm::system> sys;
    std::optional<vcpu::kvm::vm> vm;
    std::optional<vcpu::kvm::guest_ram> ram;
    vcpu::guest_memory memory;
    std::optional<cpu_type> cpu;
    std::optional<gx::space> space;
};

/// A machine with `code`'s executable loaded; REQUIREs every step (the suite runs only where
/// /dev/kvm exists: tests/kvm/main.cpp skips it elsewhere).
inline std::unique_ptr<machine> make_machine(const void* code) {
    auto m = std::make_unique<machine>();
    auto sys = vcpu::kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    utsname u{};
    ::uname(&u);
    REQUIRE_MESSAGE(std::string_view(u.machine) == machine_name, "/dev/kvm here runs ", u.machine, " guests");
    m->sys.emplace(std::move(*sys));
    auto vm = m->sys->create_vm();
    REQUIRE_MESSAGE(vm, vm.err().message());
    m->vm.emplace(std::move(*vm));
    auto ram = vcpu::kvm::guest_ram::allocate(ram_bytes);
    REQUIRE_MESSAGE(ram, ram.err().message());
    m->ram.emplace(std::move(*ram));
    REQUIRE(m->memory.add(m->ram->region(ram_base)));
    auto slot = m->vm->set_memory({0, ram_base, m->ram->bytes()});
    REQUIRE_MESSAGE(slot, slot.err().message());
#if defined(__aarch64__)
    auto init = vcpu::kvm::aarch64::preferred_init(*m->vm);
    REQUIRE_MESSAGE(init, init.err().message());
    auto cpu = m->vm->create_vcpu<arch>(0);
    REQUIRE_MESSAGE(cpu, cpu.err().message());
    auto booted = cpu->init(vcpu::aarch64::kvm_boot{*init, 0, 0});
    REQUIRE_MESSAGE(booted, booted.err().message());
#else
    auto cpu = m->vm->create_vcpu<arch>(0);
    REQUIRE_MESSAGE(cpu, cpu.err().message());
    auto booted = cpu->init(vcpu::riscv64::boot{0, 0, 0});
    REQUIRE_MESSAGE(booted, booted.err().message());
    // KVM forwards the vendor SBI range to user space; say so explicitly (a kernel that leaves it
    // off would answer the guest's ucalls itself with SBI_ERR_NOT_SUPPORTED).
    (void)vcpu::kvm::enable_sbi_extension(*cpu, vcpu::riscv64::abi::kvm_sbi_ext::vendor);
#endif
    m->cpu.emplace(std::move(*cpu));
    auto space = gx::space::load(m->memory, code);
    REQUIRE_MESSAGE(space, space.err().message());
    m->space.emplace(*space);
    return m;
}

/// `make_machine(fn)` with the vCPU set to start `fn(args...)`.
template <class R, class... P, class... A>
std::unique_ptr<machine> start(R (*fn)(P...), A... args) {
    auto m = make_machine(reinterpret_cast<const void*>(fn));
    auto e = m->space->enter(*m->cpu, vcpu::guest::call(fn, args...));
    REQUIRE_MESSAGE(e, e.err().message());
    return m;
}

} // namespace guest_test
