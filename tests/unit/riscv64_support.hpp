// Shared helpers of the riscv64 unit tests: decode one record into a variant
// of every riscv64 exit type, and RISC-V instruction encoders.
#pragma once
#include <arch/riscv64/arch.hpp>

#include <cstdint>
#include <optional>
#include <variant>

namespace rvtest {

template <class List> struct variant_of;
template <class... Ts> struct variant_of<vcpu::type_list<Ts...>> {
    using type = std::variant<Ts...>;
};
using any_exit = variant_of<vcpu::riscv64::exit_types>::type;

/// Decodes `raw` with arch::riscv64 and checks the visitor ran exactly once.
template <class Raw>
inline any_exit decode(const Raw& raw, int* calls = nullptr) {
    std::optional<any_exit> out;
    int n = 0;
    vcpu::decode_exit<vcpu::arch::riscv64>(raw, [&]<class E>(E& e) {
        ++n;
        out.emplace(std::in_place_type<E>, e);
    });
    if (calls != nullptr) *calls = n;
    return *out;
}

// Encoders (unprivileged spec, "RV32/64G Instruction Set Listings").
constexpr std::uint32_t load(unsigned f3, unsigned rd, unsigned rs1 = 0, unsigned imm = 0) {
    return (imm << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x03u;
}
constexpr std::uint32_t store(unsigned f3, unsigned rs2, unsigned rs1 = 0) {
    return (rs2 << 20) | (rs1 << 15) | (f3 << 12) | 0x23u;
}
constexpr std::uint32_t csr(unsigned f3, unsigned number, unsigned rd, unsigned rs1) {
    return (number << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x73u;
}

} // namespace rvtest
