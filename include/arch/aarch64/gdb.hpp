#pragma once
/// \file
/// AArch64 as gdb sees it (`vcpu::aarch64::gdb_arch`): the registers of gdb's
/// `org.gnu.gdb.aarch64.core` and `org.gnu.gdb.aarch64.fpu` features in gdb's order (GDB
/// manual, "AArch64 Features"), and `BRK #0` as the software breakpoint (ARM ARM C6.2.38:
/// 0xd4200000, stored little-endian).

#include <vcpu/gdb/target.hpp>

#include <array>
#include <cstddef>

namespace vcpu::aarch64 {

namespace detail::gdb {
inline constexpr const char* core = "org.gnu.gdb.aarch64.core";
inline constexpr const char* fpu = "org.gnu.gdb.aarch64.fpu";
inline constexpr std::array<::vcpu::gdb::register_desc, 68> registers{{
    {"x0", 64, "int64", core}, {"x1", 64, "int64", core}, {"x2", 64, "int64", core},
    {"x3", 64, "int64", core}, {"x4", 64, "int64", core}, {"x5", 64, "int64", core},
    {"x6", 64, "int64", core}, {"x7", 64, "int64", core}, {"x8", 64, "int64", core},
    {"x9", 64, "int64", core}, {"x10", 64, "int64", core}, {"x11", 64, "int64", core},
    {"x12", 64, "int64", core}, {"x13", 64, "int64", core}, {"x14", 64, "int64", core},
    {"x15", 64, "int64", core}, {"x16", 64, "int64", core}, {"x17", 64, "int64", core},
    {"x18", 64, "int64", core}, {"x19", 64, "int64", core}, {"x20", 64, "int64", core},
    {"x21", 64, "int64", core}, {"x22", 64, "int64", core}, {"x23", 64, "int64", core},
    {"x24", 64, "int64", core}, {"x25", 64, "int64", core}, {"x26", 64, "int64", core},
    {"x27", 64, "int64", core}, {"x28", 64, "int64", core}, {"x29", 64, "int64", core},
    {"x30", 64, "int64", core}, {"sp", 64, "data_ptr", core}, {"pc", 64, "code_ptr", core},
    {"cpsr", 32, "int32", core},
    {"v0", 128, "uint128", fpu, "vector"}, {"v1", 128, "uint128", fpu, "vector"},
    {"v2", 128, "uint128", fpu, "vector"}, {"v3", 128, "uint128", fpu, "vector"},
    {"v4", 128, "uint128", fpu, "vector"}, {"v5", 128, "uint128", fpu, "vector"},
    {"v6", 128, "uint128", fpu, "vector"}, {"v7", 128, "uint128", fpu, "vector"},
    {"v8", 128, "uint128", fpu, "vector"}, {"v9", 128, "uint128", fpu, "vector"},
    {"v10", 128, "uint128", fpu, "vector"}, {"v11", 128, "uint128", fpu, "vector"},
    {"v12", 128, "uint128", fpu, "vector"}, {"v13", 128, "uint128", fpu, "vector"},
    {"v14", 128, "uint128", fpu, "vector"}, {"v15", 128, "uint128", fpu, "vector"},
    {"v16", 128, "uint128", fpu, "vector"}, {"v17", 128, "uint128", fpu, "vector"},
    {"v18", 128, "uint128", fpu, "vector"}, {"v19", 128, "uint128", fpu, "vector"},
    {"v20", 128, "uint128", fpu, "vector"}, {"v21", 128, "uint128", fpu, "vector"},
    {"v22", 128, "uint128", fpu, "vector"}, {"v23", 128, "uint128", fpu, "vector"},
    {"v24", 128, "uint128", fpu, "vector"}, {"v25", 128, "uint128", fpu, "vector"},
    {"v26", 128, "uint128", fpu, "vector"}, {"v27", 128, "uint128", fpu, "vector"},
    {"v28", 128, "uint128", fpu, "vector"}, {"v29", 128, "uint128", fpu, "vector"},
    {"v30", 128, "uint128", fpu, "vector"}, {"v31", 128, "uint128", fpu, "vector"},
    {"fpsr", 32, "int", fpu, "float"}, {"fpcr", 32, "int", fpu, "float"},
}};
inline constexpr std::array<std::byte, 4> brk0{std::byte{0x00}, std::byte{0x00}, std::byte{0x20}, std::byte{0xd4}};
} // namespace detail::gdb

/// gdb's register numbers for AArch64 (indices into `gdb_arch.registers`).
enum class gdb_reg : std::size_t {
    x0 = 0,     ///< first GPR; x1..x30 follow
    sp = 31,    ///< stack pointer
    pc = 32,    ///< program counter
    cpsr = 33,  ///< PSTATE as SPSR-formatted (32 bits)
    v0 = 34,    ///< first SIMD&FP register; v1..v31 follow
    fpsr = 66,  ///< floating-point status
    fpcr = 67,  ///< floating-point control
};

/// AArch64 for the GDB stub.
inline constexpr ::vcpu::gdb::arch_desc gdb_arch{"aarch64", detail::gdb::registers, detail::gdb::brk0};

} // namespace vcpu::aarch64
