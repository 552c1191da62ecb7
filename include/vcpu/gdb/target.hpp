#pragma once
/// \file
/// What the GDB stub (`vcpu/gdb/session.hpp`) needs from the machine it debugs: the `GdbTarget`
/// concept, the breakpoint and stop types, and the register description each arch provides in
/// `arch/<a>/gdb.hpp` (the target description of the GDB manual, appendix "Target
/// Descriptions", from which the stub builds `target.xml` and the `g` packet layout).
/// Neutral: no KVM; `kvm/gdb.hpp` is the KVM target.

#include <vcpu/result.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::gdb {

/// One register as gdb numbers and sees it.
struct register_desc {
    const char* name;         ///< gdb's name (`rip`, `x0`, `pc`)
    std::uint16_t bits;       ///< size in bits (a multiple of 8)
    const char* type;         ///< a predefined target-description type (`int64`, `code_ptr`, `i387_ext`)
    const char* feature;      ///< the feature it belongs to (`org.gnu.gdb.i386.core`)
    const char* group = "";   ///< register group (`float`, `vector`), or "" for the default
};

/// An architecture as gdb knows it: its BFD name, its registers in gdb's order (the `g`
/// packet is their bytes in this order, each in target byte order), and its software
/// breakpoint instruction.
struct arch_desc {
    const char* architecture;                ///< `<architecture>` (`i386:x86-64`, `aarch64`, `riscv:rv64`)
    std::span<const register_desc> registers; ///< gdb's register numbers are indices here
    std::span<const std::byte> sw_breakpoint; ///< the trap instruction a software breakpoint writes

    /// Bytes of all registers (the `g` packet's payload is twice this in hex digits).
    [[nodiscard]] constexpr std::size_t register_bytes() const noexcept {
        std::size_t n = 0;
        for (const auto& r : registers) n += r.bits / 8u;
        return n;
    }
};

/// The breakpoint kinds of the `Z`/`z` packets, numbered as the packets number them.
enum class break_kind : std::uint8_t {
    software = 0, ///< `Z0`: a trap instruction in guest memory
    hardware = 1, ///< `Z1`: an instruction breakpoint in a debug register
    write = 2,    ///< `Z2`: a write watchpoint
    read = 3,     ///< `Z3`: a read watchpoint
    access = 4,   ///< `Z4`: a read or write watchpoint
};

/// One `Z` request: kind, guest virtual address, and the length (`kind` field of the packet:
/// bytes watched, or the breakpoint instruction's size).
struct breakpoint {
    break_kind kind = break_kind::software; ///< which packet asked for it
    std::uint64_t address = 0;             ///< guest virtual address
    std::uint64_t length = 1;              ///< bytes (watchpoints) or instruction size
    /// Same kind, address and length.
    friend constexpr bool operator==(const breakpoint&, const breakpoint&) = default;
};

/// Why the guest stopped, as the stop reply reports it.
enum class stop_kind : std::uint8_t {
    trap,       ///< stopped with no more specific reason (attach, initial stop)
    step,       ///< a single step completed
    software,   ///< a software breakpoint hit (reported with `swbreak`: the PC is the trap's address)
    hardware,   ///< a hardware breakpoint hit (`hwbreak`)
    watch,      ///< a watchpoint fired (`watch`/`rwatch`/`awatch` with the data address)
    interrupt,  ///< gdb's Ctrl-C stopped the guest (SIGINT)
    exited,     ///< the guest ended: `W` with `exit_code`; the session then ends
};

/// A stop to report to gdb.
struct stop_reason {
    stop_kind kind = stop_kind::trap;  ///< why
    unsigned cpu = 0;                  ///< the vCPU that stopped (gdb thread `cpu + 1`)
    std::uint64_t data_address = 0;    ///< `watch`: the address accessed
    break_kind watch = break_kind::write; ///< `watch`: which kind fired (write, read, access)
    int exit_code = 0;                 ///< `exited`: the status gdb shows
};

/// A machine gdb can debug: registers of each vCPU by gdb number, guest memory by the vCPU's
/// virtual addresses, and breakpoints. Running it is the caller's loop (`session::serve`
/// returns what gdb asked for), so the run loop stays the VMM's.
///
/// - `arch()` describes the registers (`arch/<a>/gdb.hpp`).
/// - `read_register(cpu, n, out)` fills `out` (the register's size) in target byte order; an error
///   makes the stub report the register unavailable.
/// - `read_memory(cpu, address, out)` returns the bytes read from the start (fewer at an unmapped
///   page); `write_memory` writes all or fails.
/// - `insert_breakpoint` / `remove_breakpoint` for every `break_kind` the target supports; an
///   error with `code` ENOTSUP makes the stub answer "not supported" (gdb then falls back, e.g.
///   to writing breakpoint instructions itself).
template <class T>
concept GdbTarget = requires(T& t, const T& ct, unsigned cpu, std::size_t n, std::span<std::byte> out,
                             std::span<const std::byte> in, std::uint64_t address, const breakpoint& bp) {
    { ct.arch() } -> std::same_as<const arch_desc&>;
    { ct.cpu_count() } -> std::convertible_to<unsigned>;
    { t.read_register(cpu, n, out) } -> std::same_as<result<void>>;
    { t.write_register(cpu, n, in) } -> std::same_as<result<void>>;
    { t.read_memory(cpu, address, out) } -> std::same_as<result<std::size_t>>;
    { t.write_memory(cpu, address, in) } -> std::same_as<result<void>>;
    { t.insert_breakpoint(bp) } -> std::same_as<result<void>>;
    { t.remove_breakpoint(bp) } -> std::same_as<result<void>>;
};

} // namespace vcpu::gdb
