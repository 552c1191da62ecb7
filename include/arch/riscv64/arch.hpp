#pragma once
/// \file
/// `vcpu::arch::riscv64`: the RISC-V 64 (RV64GC + H extension) architecture
/// policy — register file over ONE_REG, exit decoders for `kvm_run` and for
/// HS-mode traps, boot state — for `basic_vcpu<arch::riscv64, Hal>`.

#include <arch/riscv64/abi.hpp>
#include <arch/riscv64/csrs.hpp>
#include <arch/riscv64/exits.hpp>
#include <arch/riscv64/init.hpp>
#include <arch/riscv64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/meta.hpp>

#include <string_view>
#include <utility>

namespace vcpu::arch {

/// The RISC-V 64 architecture as a stateless policy. Models `RegisterFile`,
/// `ExitDecoder<riscv64, kvm::run_view>` (with kvm/exits.hpp) and `ExitDecoder<riscv64,
/// riscv64::hs_trap>`.
struct riscv64 {
    /// The architecture's name (for messages and traces).
    static constexpr std::string_view name = "riscv64";

    /// KVM/riscv has no register blocks (`KVM_GET_REGS` is empty on RISC-V)
    /// and no keyed banks: every register is reached by ONE_REG id.
    using register_blocks = type_list<>;
    /// No keyed banks.
    using keyed_banks = type_list<>;
    /// Every register is reached by its ONE_REG id.
    static constexpr bool uses_one_reg = true;

    /// Every named register descriptor (a tuple), for dumps.
    static constexpr const auto& registers = ::vcpu::riscv64::all_registers;
    /// x0-x31, reachable through `gpr(i)` (x0 only as the reserved `zero` descriptor).
    static constexpr unsigned gpr_count = 32;
    /// GPR by register number (`rd`/`rs1`/`rs2`): 1 = ra ... 31 = t6. `gpr(0)`
    /// is `riscv64::zero`, a descriptor with the reserved id 0 that no HAL
    /// accepts (x0 is hardwired to zero and has no KVM register); decoders
    /// read x0 as 0 and drop writes to it instead of moving it. Precondition:
    /// i < 32 (masked).
    [[nodiscard]] static constexpr auto gpr(unsigned i) noexcept {
        return ::vcpu::riscv64::gprs_by_number[i & 31u];
    }
    /// The program counter: pc.
    static constexpr auto pc = ::vcpu::riscv64::pc;

    /// Every exit type the RISC-V decoders produce (`vcpu::riscv64::exit_types`; docs/exits.md).
    using exit_types = ::vcpu::riscv64::exit_types;
};

} // namespace vcpu::arch

/// An HS-mode trap (scause/stval/htval/htinst + GPRs) decodes through `riscv64::decode`.
template <>
struct vcpu::exit_decoder<vcpu::arch::riscv64, vcpu::riscv64::hs_trap> {
    /// Decodes `r` with `riscv64::decode`, handing one typed exit to `visit`.
    template <class Visitor>
    [[gnu::always_inline]] static constexpr void decode(const riscv64::hs_trap& r, Visitor&& visit) noexcept {
        riscv64::decode(r, std::forward<Visitor>(visit));
    }
};
