// A system-register table out of encoding order must not compile (Linux checks
// this at boot in kvm_sys_reg_table_init; vcpu checks it at compile time).
// expect-error: system-register table is not sorted by encoding
#include <arch/aarch64/sysregs.hpp>

#include <array>

namespace a64 = vcpu::aarch64;

inline constexpr std::array<a64::sysreg_desc, 2> unsorted{{
    {{3, 0, 1, 0, 0}, "SCTLR_EL1", 0x30c50830, a64::trap_action::emulate},
    {{3, 0, 0, 0, 0}, "MIDR_EL1", 0, a64::trap_action::read_only},
}};

int main() { return a64::sysreg_table<unsorted>::find(0) == nullptr ? 0 : 1; }
