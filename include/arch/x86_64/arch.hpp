#pragma once
/// \file
/// `vcpu::arch::x86_64`: the x86-64 architecture policy — register file,
/// exit decoder and boot states — for `basic_vcpu<arch::x86_64, Hal>`.

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/exits.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/meta.hpp>

#include <string_view>
#include <utility>

namespace vcpu::arch {

/// The x86-64 architecture (Intel 64 / AMD64) as a stateless policy.
/// Models `RegisterFile` and `ExitDecoder<x86_64, kvm::run_view>` (with kvm/exits.hpp).
struct x86_64 {
    /// The architecture's name (for messages and traces).
    static constexpr std::string_view name = "x86_64";

    /// Register blocks a HAL must move (KVM: sync regs or GET/SET ioctls).
    using register_blocks = type_list<::vcpu::x86_64::regs_block, ::vcpu::x86_64::sregs_block,
                                      ::vcpu::x86_64::events_block,
                                      ::vcpu::x86_64::debugregs_block>;
    /// Indexed banks: MSRs.
    using keyed_banks = type_list<::vcpu::x86_64::msr_bank>;
    /// x86 KVM needs no ONE_REG access.
    static constexpr bool uses_one_reg = false;

    /// Every named register descriptor (a tuple), for dumps.
    static constexpr const auto& registers = ::vcpu::x86_64::all_registers;
    /// General-purpose registers reachable through `gpr(i)`.
    static constexpr unsigned gpr_count = 16;
    /// GPR by instruction encoding (0 = RAX ... 15 = R15). Precondition: i < 16.
    [[nodiscard]] static constexpr auto gpr(unsigned i) noexcept {
        return ::vcpu::x86_64::gprs_by_encoding[i & 15u];
    }
    /// The program counter: RIP.
    static constexpr auto pc = ::vcpu::x86_64::rip;

    /// Every exit type the x86-64 decoders produce (`vcpu::x86_64::exit_types`; docs/exits.md).
    using exit_types = ::vcpu::x86_64::exit_types;
};

} // namespace vcpu::arch
