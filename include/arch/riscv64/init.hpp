#pragma once
/// \file
/// RISC-V 64 boot state (`CpuInitFor` model): the state the Linux RISC-V boot
/// protocol (Documentation/arch/riscv/boot.rst: "a0 = hartid of the current
/// core, a1 = address of the devicetree in memory", S-mode, MMU off) and the
/// SBI HSM `hart_start` contract (SBI spec chapter 9: "a0 = hartid, a1 =
/// opaque, satp = 0, sstatus.SIE = 0") require, written through the vCPU's
/// register file with `cpu.set(...)`, so it works on every HAL that moves
/// ONE_REG registers (KVM, the mock).

#include <arch/riscv64/abi.hpp>
#include <arch/riscv64/registers.hpp>
#include <vcpu/config.hpp>
#include <vcpu/init.hpp>
#include <vcpu/result.hpp>

#include <cstdint>

namespace vcpu::riscv64 {

/// Boot a hart at `entry` in supervisor mode with `a0 = hart_id` and
/// `a1 = dtb` (device-tree blob address; for a secondary hart started through
/// HSM: the `opaque` argument), translation off (`satp = 0`) and S-mode
/// interrupts disabled (`sstatus.SIE = 0`).
///
/// Order: mode, satp, sstatus (read, SIE cleared, other bits kept), a0, a1,
/// then pc last, so a failure leaves the vCPU at its old entry point. KVM
/// resets a new vCPU to S-mode with SIE and satp zero, so on a fresh vCPU the
/// CSR writes change nothing; they matter when a hart is restarted.
struct boot {
    std::uint64_t entry = 0;   ///< guest physical address of the first instruction
    std::uint64_t hart_id = 0; ///< value of a0
    std::uint64_t dtb = 0;     ///< value of a1

    /// Sets mode, satp, sstatus, a0, a1 and then pc on `cpu`; stops at the first error.
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        if (auto r = cpu.set(mode, abi::mode_s); !r) return r;
        if (auto r = cpu.set(satp, 0); !r) return r;
        // Read-modify-write: keep what KVM reset sstatus to (FS, UXL), clear SIE.
        auto ss = cpu.get(sstatus);
        if (!ss) return ss.err();
        if (auto r = cpu.set(sstatus, sstatus_bits::sie.set(*ss, 0)); !r) return r;
        if (auto r = cpu.set(a0, hart_id); !r) return r;
        if (auto r = cpu.set(a1, dtb); !r) return r;
        return cpu.set(pc, entry);
    }
};

} // namespace vcpu::riscv64
