// A CSR table out of number order must not compile: trap handlers are indexed
// by CSR number with a binary search, which needs sorted, unique numbers.
// expect-error: CSR table must be sorted by CSR number with no duplicates
#include <arch/riscv64/csrs.hpp>

#include <array>

namespace rv = vcpu::riscv64;

inline constexpr std::array<rv::csr_desc, 3> unsorted{{
    {"sstatus", 0x100},
    {"sepc", 0x141},
    {"sie", 0x104},
}};

int main() { return rv::csr_index<unsorted>::find(0x100) != nullptr ? 0 : 1; }
