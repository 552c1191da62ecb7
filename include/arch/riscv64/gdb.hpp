#pragma once
/// \file
/// RISC-V 64 as gdb sees it (`vcpu::riscv64::gdb_arch`): the registers of gdb's
/// `org.gnu.gdb.riscv.cpu` and `org.gnu.gdb.riscv.fpu` features (GDB manual, "RISC-V
/// Features"; ABI names, D extension: 64-bit F registers), and `EBREAK` as the software
/// breakpoint (unprivileged spec, "Environment Call and Breakpoints": 0x00100073; a guest
/// with the C extension could use C.EBREAK, gdb asks for the size it wants).

#include <vcpu/gdb/target.hpp>

#include <array>
#include <cstddef>

namespace vcpu::riscv64 {

namespace detail::gdb {
inline constexpr const char* cpu = "org.gnu.gdb.riscv.cpu";
inline constexpr const char* fpu = "org.gnu.gdb.riscv.fpu";
inline constexpr std::array<::vcpu::gdb::register_desc, 68> registers{{
    {"zero", 64, "int64", cpu}, {"ra", 64, "code_ptr", cpu}, {"sp", 64, "data_ptr", cpu},
    {"gp", 64, "data_ptr", cpu}, {"tp", 64, "data_ptr", cpu}, {"t0", 64, "int64", cpu},
    {"t1", 64, "int64", cpu}, {"t2", 64, "int64", cpu}, {"fp", 64, "data_ptr", cpu},
    {"s1", 64, "int64", cpu}, {"a0", 64, "int64", cpu}, {"a1", 64, "int64", cpu},
    {"a2", 64, "int64", cpu}, {"a3", 64, "int64", cpu}, {"a4", 64, "int64", cpu},
    {"a5", 64, "int64", cpu}, {"a6", 64, "int64", cpu}, {"a7", 64, "int64", cpu},
    {"s2", 64, "int64", cpu}, {"s3", 64, "int64", cpu}, {"s4", 64, "int64", cpu},
    {"s5", 64, "int64", cpu}, {"s6", 64, "int64", cpu}, {"s7", 64, "int64", cpu},
    {"s8", 64, "int64", cpu}, {"s9", 64, "int64", cpu}, {"s10", 64, "int64", cpu},
    {"s11", 64, "int64", cpu}, {"t3", 64, "int64", cpu}, {"t4", 64, "int64", cpu},
    {"t5", 64, "int64", cpu}, {"t6", 64, "int64", cpu}, {"pc", 64, "code_ptr", cpu},
    {"f0", 64, "ieee_double", fpu, "float"}, {"f1", 64, "ieee_double", fpu, "float"}, {"f2", 64, "ieee_double", fpu, "float"},
    {"f3", 64, "ieee_double", fpu, "float"}, {"f4", 64, "ieee_double", fpu, "float"}, {"f5", 64, "ieee_double", fpu, "float"},
    {"f6", 64, "ieee_double", fpu, "float"}, {"f7", 64, "ieee_double", fpu, "float"}, {"f8", 64, "ieee_double", fpu, "float"},
    {"f9", 64, "ieee_double", fpu, "float"}, {"f10", 64, "ieee_double", fpu, "float"}, {"f11", 64, "ieee_double", fpu, "float"},
    {"f12", 64, "ieee_double", fpu, "float"}, {"f13", 64, "ieee_double", fpu, "float"}, {"f14", 64, "ieee_double", fpu, "float"},
    {"f15", 64, "ieee_double", fpu, "float"}, {"f16", 64, "ieee_double", fpu, "float"}, {"f17", 64, "ieee_double", fpu, "float"},
    {"f18", 64, "ieee_double", fpu, "float"}, {"f19", 64, "ieee_double", fpu, "float"}, {"f20", 64, "ieee_double", fpu, "float"},
    {"f21", 64, "ieee_double", fpu, "float"}, {"f22", 64, "ieee_double", fpu, "float"}, {"f23", 64, "ieee_double", fpu, "float"},
    {"f24", 64, "ieee_double", fpu, "float"}, {"f25", 64, "ieee_double", fpu, "float"}, {"f26", 64, "ieee_double", fpu, "float"},
    {"f27", 64, "ieee_double", fpu, "float"}, {"f28", 64, "ieee_double", fpu, "float"}, {"f29", 64, "ieee_double", fpu, "float"},
    {"f30", 64, "ieee_double", fpu, "float"}, {"f31", 64, "ieee_double", fpu, "float"}, {"fflags", 32, "int", fpu, "float"},
    {"frm", 32, "int", fpu, "float"}, {"fcsr", 32, "int", fpu, "float"},
}};
inline constexpr std::array<std::byte, 4> ebreak{std::byte{0x73}, std::byte{0x00}, std::byte{0x10}, std::byte{0x00}};
} // namespace detail::gdb

/// gdb's register numbers for RISC-V 64 (indices into `gdb_arch.registers`).
enum class gdb_reg : std::size_t {
    zero = 0,    ///< x0; x1..x31 follow in order (ra, sp, gp, tp, t0...)
    pc = 32,     ///< program counter
    f0 = 33,     ///< first F register; f1..f31 follow
    fflags = 65, ///< floating-point accrued exceptions
    frm = 66,    ///< floating-point rounding mode
    fcsr = 67,   ///< floating-point control and status
};

/// RISC-V 64 for the GDB stub.
inline constexpr ::vcpu::gdb::arch_desc gdb_arch{"riscv:rv64", detail::gdb::registers, detail::gdb::ebreak};

} // namespace vcpu::riscv64
