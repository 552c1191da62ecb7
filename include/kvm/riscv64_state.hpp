#pragma once
/// \file
/// `riscv64_vcpu_state`: the whole state of one RISC-V 64 KVM vCPU — every register
/// `KVM_GET_REG_LIST` reports (config, core, CSRs, timer, F/D, ISA and SBI extensions, vector,
/// SBI state) and the MP state — saved, loaded and serialized by the generic
/// `basic_reg_list_state` (kvm/reg_list_state.hpp) with the riscv64 restore rules below.
/// docs/state.md, "AArch64 and RISC-V".
///
/// ```
/// auto st = vcpu::kvm::save_state(cpu);                  // complete_pending_io, then every register
/// auto blob = st->serialize();                           // "vcpurv6s", version 1, hashed
/// auto back = vcpu::kvm::riscv64_vcpu_state::deserialize(blob);
/// auto ok = vcpu::kvm::load_state(fresh_cpu, *back);     // a vCPU that has not run yet
/// ```
///
/// Compiles on every host (ids from include/arch/riscv64/abi.hpp, checked against the kernel's
/// header in kvm/riscv64.hpp on RISC-V). State-transfer path: allocates.

#include <arch/riscv64/abi.hpp>
#include <arch/riscv64/arch.hpp>
#include <kvm/reg_list_state.hpp>
#include <kvm/riscv64.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstdint>

namespace vcpu::kvm {

/// The riscv64 restore rules of `basic_reg_list_state` (KVM API 4.68 "KVM_SET_ONE_REG", RISC-V
/// register classes; the kernel's arch/riscv/kvm/vcpu_onereg.c and vcpu_timer.c; measured on
/// Linux 6.12 in the emulated machine, tests/guest/xarch_state.cpp):
///
/// | phase | registers | how | why |
/// | --- | --- | --- | --- |
/// | 0 | config `isa` | write if differs | the ISA bitmap decides which other registers exist (F/D, vector); KVM refuses a change after the first `KVM_RUN` (EBUSY) |
/// | 1 | the other config registers (`zicbom/zicboz_block_size`, `mvendorid`, `marchid`, `mimpid`, `satp_mode`), `KVM_REG_RISCV_ISA_EXT`, `KVM_REG_RISCV_SBI_EXT` | write if differs | the configuration is fixed at the first `KVM_RUN` (KVM documents EBUSY after; Linux 6.12 in the emulated machine still accepted `isa` and extension changes, measured) or only accepted at the host's value (block sizes, `satp_mode`: EINVAL otherwise; an extension KVM cannot hide, e.g. Sstc: EINVAL); the SBI switches were still accepted after the first run on 6.12 (measured), but they decide which other registers exist (SBI state), so they go early too |
/// | 2 | core (pc, x1-x31, mode), CSRs (general, AIA, Smstateen), F and D, vector, SBI state | write | |
/// | 3 | timer `frequency` | read only | KVM refuses every write (EOPNOTSUPP before Linux 6.6, EINVAL for another value since): the saved value is compared, a different one (another host's timebase) is an error |
/// | 4, 5 | timer `time`, then `compare` | write | `time` sets the guest's time offset and `compare` is an absolute guest time measured against it (with Sstc it is the guest's `vstimecmp`, which KVM reloads from it when the vCPU runs) |
/// | 6 | timer `state` | write if differs | writing ON arms KVM's software timer for `compare` against that time (vcpu_timer.c), so it comes last: a timer pending at save is pending after load and one armed ahead fires after the same remaining ticks. Writing OFF to a timer that is off is refused (EINVAL, measured on 6.12: `kvm_riscv_vcpu_timer_cancel` of an unarmed timer); with Sstc the state reads OFF while `vstimecmp` is armed |
struct riscv64_state_rules {
    /// "vcpurv6s".
    static constexpr std::array<char, 8> magic{'v', 'c', 'p', 'u', 'r', 'v', '6', 's'};
    /// `KVM_REG_RISCV`.
    static constexpr std::uint64_t arch_bits = ::vcpu::riscv64::abi::reg_riscv;
    /// Op of the errors `load` makes itself.
    static constexpr const char* load_op = "riscv64_vcpu_state::load";
    /// Op of the errors `deserialize` makes.
    static constexpr const char* deserialize_op = "riscv64_vcpu_state::deserialize";

    /// The phase and write rule of register `id` (table above).
    [[nodiscard]] static reg_rule rule(std::uint64_t id) noexcept {
        namespace a = ::vcpu::riscv64::abi;
        using t = a::reg_type;
        const std::uint64_t type = (id >> a::type_shift) & 0xff;
        const std::uint64_t index = id & 0xffff; // subtype (bits 16-23) and index
        if (type == static_cast<std::uint64_t>(t::config))
            return {static_cast<std::uint8_t>(index == a::config_index::isa ? 0 : 1), reg_restore::write_if_differs};
        if (type == static_cast<std::uint64_t>(t::isa_ext) || type == static_cast<std::uint64_t>(t::sbi_ext))
            return {1, reg_restore::write_if_differs};
        if (type == static_cast<std::uint64_t>(t::timer)) {
            switch (index) {
            case a::timer_index::frequency: return {3, reg_restore::read_only};
            case a::timer_index::time: return {4, reg_restore::write};
            case a::timer_index::compare: return {5, reg_restore::write};
            default: return {6, reg_restore::write_if_differs}; // state
            }
        }
        return {2, reg_restore::write};
    }
};
static_assert(RegListRules<riscv64_state_rules>);

/// Everything KVM holds for one riscv64 vCPU: every `KVM_GET_REG_LIST` register and the MP state.
/// Same shape as `x86_64_vcpu_state`: `save`, `load`, `serialize`, `deserialize`.
using riscv64_vcpu_state = basic_reg_list_state<riscv64_state_rules>;

/// `riscv64_vcpu_state::save` for a riscv64 `basic_vcpu`.
template <class Hal>
[[nodiscard]] result<riscv64_vcpu_state> save_state(::vcpu::basic_vcpu<::vcpu::arch::riscv64, Hal>& cpu) {
    return riscv64_vcpu_state::save(cpu.hal());
}
/// `riscv64_vcpu_state::load` for a riscv64 `basic_vcpu`.
template <class Hal>
[[nodiscard]] result<void> load_state(::vcpu::basic_vcpu<::vcpu::arch::riscv64, Hal>& cpu,
                                      const riscv64_vcpu_state& s) {
    return s.load(cpu.hal());
}

} // namespace vcpu::kvm
