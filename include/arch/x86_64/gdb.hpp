#pragma once
/// \file
/// x86-64 as gdb sees it (`vcpu::x86_64::gdb_arch`): the registers of gdb's
/// `org.gnu.gdb.i386.core` and `org.gnu.gdb.i386.sse` features in gdb's order (GDB manual,
/// "i386 Features"; the same order as gdb's built-in amd64 layout, so the `g` packet also works
/// with a gdb that does not read `target.xml`), and INT3 as the software breakpoint (SDM Vol. 2A,
/// INT n/INTO/INT3/INT1: opcode CC).

#include <vcpu/gdb/target.hpp>

#include <array>
#include <cstddef>

namespace vcpu::x86_64 {

namespace detail::gdb {
inline constexpr const char* core = "org.gnu.gdb.i386.core";
inline constexpr const char* sse = "org.gnu.gdb.i386.sse";
inline constexpr std::array<::vcpu::gdb::register_desc, 57> registers{{
    {"rax", 64, "int64", core}, {"rbx", 64, "int64", core}, {"rcx", 64, "int64", core},
    {"rdx", 64, "int64", core}, {"rsi", 64, "int64", core}, {"rdi", 64, "int64", core},
    {"rbp", 64, "data_ptr", core}, {"rsp", 64, "data_ptr", core},
    {"r8", 64, "int64", core}, {"r9", 64, "int64", core}, {"r10", 64, "int64", core},
    {"r11", 64, "int64", core}, {"r12", 64, "int64", core}, {"r13", 64, "int64", core},
    {"r14", 64, "int64", core}, {"r15", 64, "int64", core},
    {"rip", 64, "code_ptr", core}, {"eflags", 32, "int32", core},
    {"cs", 32, "int32", core}, {"ss", 32, "int32", core}, {"ds", 32, "int32", core},
    {"es", 32, "int32", core}, {"fs", 32, "int32", core}, {"gs", 32, "int32", core},
    {"st0", 80, "i387_ext", core, "float"}, {"st1", 80, "i387_ext", core, "float"},
    {"st2", 80, "i387_ext", core, "float"}, {"st3", 80, "i387_ext", core, "float"},
    {"st4", 80, "i387_ext", core, "float"}, {"st5", 80, "i387_ext", core, "float"},
    {"st6", 80, "i387_ext", core, "float"}, {"st7", 80, "i387_ext", core, "float"},
    {"fctrl", 32, "int", core, "float"}, {"fstat", 32, "int", core, "float"},
    {"ftag", 32, "int", core, "float"}, {"fiseg", 32, "int", core, "float"},
    {"fioff", 32, "int", core, "float"}, {"foseg", 32, "int", core, "float"},
    {"fooff", 32, "int", core, "float"}, {"fop", 32, "int", core, "float"},
    {"xmm0", 128, "uint128", sse, "vector"}, {"xmm1", 128, "uint128", sse, "vector"},
    {"xmm2", 128, "uint128", sse, "vector"}, {"xmm3", 128, "uint128", sse, "vector"},
    {"xmm4", 128, "uint128", sse, "vector"}, {"xmm5", 128, "uint128", sse, "vector"},
    {"xmm6", 128, "uint128", sse, "vector"}, {"xmm7", 128, "uint128", sse, "vector"},
    {"xmm8", 128, "uint128", sse, "vector"}, {"xmm9", 128, "uint128", sse, "vector"},
    {"xmm10", 128, "uint128", sse, "vector"}, {"xmm11", 128, "uint128", sse, "vector"},
    {"xmm12", 128, "uint128", sse, "vector"}, {"xmm13", 128, "uint128", sse, "vector"},
    {"xmm14", 128, "uint128", sse, "vector"}, {"xmm15", 128, "uint128", sse, "vector"},
    {"mxcsr", 32, "int", sse, "vector"},
}};
inline constexpr std::array<std::byte, 1> int3{std::byte{0xcc}};
} // namespace detail::gdb

/// gdb's register numbers for x86-64 (indices into `gdb_arch.registers`).
enum class gdb_reg : std::size_t {
    rax = 0, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, ///< GPRs
    rip = 16,    ///< instruction pointer
    eflags = 17, ///< flags (32 bits)
    cs = 18, ss, ds, es, fs, gs, ///< segment selectors (32 bits each)
    st0 = 24,    ///< first x87 register (80 bits); st1..st7 follow
    fctrl = 32, fstat, ftag, fiseg, fioff, foseg, fooff, fop, ///< x87 control (32 bits each)
    xmm0 = 40,   ///< first SSE register; xmm1..xmm15 follow
    mxcsr = 56,  ///< SSE control and status
};

/// x86-64 for the GDB stub.
inline constexpr ::vcpu::gdb::arch_desc gdb_arch{"i386:x86-64", detail::gdb::registers, detail::gdb::int3};
static_assert(gdb_arch.register_bytes() == 536, "gdb's amd64 g packet is 536 bytes");

} // namespace vcpu::x86_64
