#pragma once
/// \file
/// The host side of guest code on RISC-V 64: puts the running executable into guest memory and
/// starts one of its functions in S-mode (VS-mode under KVM) with Sv48 paging.
///
/// `space::load(memory, &fn)` copies the executable holding `fn` into guest RAM at
/// `layout::image` and builds Sv48 tables (privileged spec §12.5) that map it at its own virtual
/// addresses, plus `[0, 4 GiB)` identity-mapped with 2 MiB megapages (RAM executable, the rest
/// read/write only; memory types come from the platform's PMAs), every leaf with A and D set so
/// that no hart needs to update them (`vcpu/guest/image_space.hpp`).
///
/// **Why paging.** With satp = Bare the image would have to sit at guest physical = its link
/// address (0x10000 for a static executable: below any usual RAM base); with Sv48 the same code
/// runs wherever the executable was linked or loaded, as on x86-64 and AArch64.
///
/// `space::enter(cpu, call(&fn, args...))` sets satp (Sv48, the root table), stvec = the trap
/// entry of `vcpu/guest/riscv64.hpp`, sstatus (FS at least Initial: compiled code may use FP
/// registers; SIE off; the rest as KVM reset it), sp = the stack top, gp = the executable's global pointer (the linker
/// relaxes accesses to small data against it), ra = a function that reports `done`, a0-a5 = the
/// arguments (LP64 calling convention), pc = `fn`, and the privilege mode S. No entry stub is
/// needed: the registers are the boot state.
///
/// The space also models `UcallSpace` for `guest::run`: the carrier exit is `riscv64::sbi_call`.

#include <vcpu/config.hpp>
#include <vcpu/guest/image_space.hpp>
#include <vcpu/guest/riscv64.hpp>
#include <vcpu/guest/ucall.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <arch/riscv64/exits.hpp>
#include <arch/riscv64/registers.hpp>

#include <cstdint>
#include <optional>

namespace vcpu::guest::riscv64 {

/// Default placement: RAM from 2 GiB (as on QEMU's `virt` machine), 32 MiB of it at least plus
/// the executable's size.
struct layout : image_layout {
    constexpr layout() noexcept : image_layout{0x8020'0000, 0x8100'0000, 4, 0x40000} {}
};

/// Sv48 page-table entries (privileged spec §12.4.1 "Addressing and Memory Protection"): V R W X
/// U G A D in bits 0-7, the PPN from bit 10; a valid entry with R = W = X = 0 points to the next
/// level.
struct page_format {
    static constexpr std::uint64_t v = 1, r = 2, w = 4, x = 8, g = 32, a = 64, d = 128;
    static std::uint64_t ppn(std::uint64_t pa) noexcept { return (pa >> 12) << 10; }
    static std::uint64_t table(std::uint64_t pa) noexcept { return ppn(pa) | v; }
    static std::uint64_t page(std::uint64_t pa, bool writable) noexcept {
        return ppn(pa) | v | r | x | g | a | d | (writable ? w : 0);
    }
    static std::uint64_t block(std::uint64_t pa, bool ram) noexcept {
        return ppn(pa) | v | r | w | g | a | d | (ram ? x : 0);
    }
    static bool is_table(std::uint64_t e) noexcept { return (e & v) != 0 && (e & (r | w | x)) == 0; }
    static bool is_valid(std::uint64_t e) noexcept { return (e & v) != 0; }
    static std::uint64_t address(std::uint64_t e) noexcept { return ((e >> 10) & ((std::uint64_t{1} << 44) - 1)) << 12; }
};
static_assert(PageFormat<page_format>);

/// CSR values `enter` sets.
namespace s_mode {
/// satp.MODE = 9 (Sv48), ASID 0.
inline constexpr std::uint64_t satp_sv48 = std::uint64_t{9} << 60;
/// sstatus.FS (bits 14:13; 01 = Initial) and sstatus.SIE (bit 1).
inline constexpr std::uint64_t fs_mask = std::uint64_t{3} << 13, fs_initial = std::uint64_t{1} << 13,
                               sie = std::uint64_t{1} << 1;
/// KVM's `mode` core register: 1 = S-mode.
inline constexpr std::uint64_t mode_s = 1;
} // namespace s_mode

/// The guest-side values `enter` needs besides the function: the trap entry, the return
/// target and the global pointer. They are this executable's own when it is compiled for
/// RISC-V 64; a test of the loader on another host (the mock HAL) gets zeros.
struct runtime_symbols {
    std::uint64_t trap = 0;
    std::uint64_t returned = 0;
    std::uint64_t gp = 0;
    [[nodiscard]] static runtime_symbols native() noexcept {
#if defined(__riscv) && __riscv_xlen == 64
        std::uint64_t gp = 0;
        asm("mv %0, gp" : "=r"(gp));
        return {static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&vcpu_guest_riscv64_trap[0])),
                static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&detail::returned)), gp};
#else
        return {};
#endif
    }
};

/// The guest address space of one loaded executable; models `UcallSpace` for `guest::run`.
class space : public image_space<page_format> {
public:
    using ucall_exit = ::vcpu::riscv64::sbi_call;

    /// See the file comment; the errors are `image_space::load`'s.
    [[nodiscard]] static result<space> load(guest_memory& mem, const void* code, const struct layout& l = {},
                                            runtime_symbols sym = runtime_symbols::native()) noexcept {
        auto s = image_space<page_format>::load(mem, code, l, "vcpu::guest::riscv64::space::load");
        if (!s) return s.err();
        space out;
        static_cast<image_space<page_format>&>(out) = *s;
        out.sym_ = sym;
        return out;
    }

    /// Sets the vCPU to start `c` in S-mode with Sv48 paging (see the file comment). KVM or mock.
    template <class Cpu>
    [[nodiscard]] result<void> enter(Cpu& cpu, const call& c) const noexcept {
        namespace rv = ::vcpu::riscv64;
        if (auto r = cpu.set(rv::satp, s_mode::satp_sv48 | (page_table_root() >> 12)); !r) return r;
        if (auto r = cpu.set(rv::stvec, sym_.trap); !r) return r;
        // Read-modify-write: keep what KVM reset sstatus to (UXL, ...), FS at least Initial, SIE off.
        auto ss = cpu.get(rv::sstatus);
        if (!ss) return ss.err();
        std::uint64_t status = *ss & ~s_mode::sie;
        if ((status & s_mode::fs_mask) == 0) status |= s_mode::fs_initial;
        if (auto r = cpu.set(rv::sstatus, status); !r) return r;
        if (auto r = cpu.set(rv::sp, stack_top()); !r) return r;
        if (auto r = cpu.set(rv::gp, sym_.gp); !r) return r;
        if (auto r = cpu.set(rv::ra, sym_.returned); !r) return r;
        const decltype(rv::a0) regs[6] = {rv::a0, rv::a1, rv::a2, rv::a3, rv::a4, rv::a5};
        for (std::size_t i = 0; i < 6; ++i)
            if (auto r = cpu.set(regs[i], i < c.count ? c.args[i] : 0); !r) return r;
        if (auto r = cpu.set(rv::pc, c.entry); !r) return r;
        return cpu.set(rv::mode, s_mode::mode_s);
    }

    /// The record address of a ucall (SBI `ucall_extension`, FID `fid_record`: a0), else nullopt.
    [[nodiscard]] std::optional<std::uint64_t> ucall_address(const ::vcpu::riscv64::sbi_call& e) const noexcept {
        if (e.extension() != ucall_extension || e.function != fid_record) [[unlikely]]
            return std::nullopt;
        e.answer(0, 0);
        return e.args[0];
    }

    /// A `sync` of up to six values in a0-a5 (FID `fid_sync + n`), read from the exit itself:
    /// calls `visit` with the `guest::sync` (a `bad_ucall` for n > 6) and returns its result;
    /// nullopt for any other exit.
    template <class Cpu, class Visitor>
    [[nodiscard]] std::optional<bool> register_ucall(const ::vcpu::riscv64::sbi_call& e, Cpu&,
                                                     Visitor&& visit) const noexcept {
        if (e.extension() != ucall_extension || e.function < fid_sync || e.function >= fid_sync + 0x10)
            return std::nullopt;
        e.answer(0, 0); // SBI_SUCCESS; the guest ignores a0/a1
        const std::uint64_t n = e.function - fid_sync;
        if (n > max_register_values) {
            bad_ucall b{bad_ucall::why::registers, 0, n};
            return visit(b);
        }
        sync s;
        s.count = static_cast<std::uint8_t>(n);
        for (std::uint64_t i = 0; i < n; ++i) s.values[i] = e.args[i];
        return visit(s);
    }

    [[nodiscard]] const runtime_symbols& symbols() const noexcept { return sym_; }

private:
    runtime_symbols sym_{};
};

} // namespace vcpu::guest::riscv64
