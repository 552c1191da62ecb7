#pragma once
/// \file
/// The host side of guest code on AArch64: puts the running executable into guest memory and
/// starts one of its functions at EL1 with the MMU on.
///
/// `space::load(memory, &fn)` copies the executable holding `fn` into guest RAM at
/// `layout::image` and builds VMSAv8-64 stage-1 tables (4 KiB granule, 48-bit VA, TTBR0_EL1)
/// that map it at its own virtual addresses, plus `[0, 4 GiB)` identity-mapped in 2 MiB blocks:
/// Normal write-back memory where guest RAM backs the block, Device-nGnRnE (never executable)
/// elsewhere, so MMIO and the ucall page trap (`vcpu/guest/image_space.hpp`).
///
/// **Why the MMU on.** With SCTLR_EL1.M = 0 every data access is Device-nGnRnE (ARM ARM D8.2.10):
/// an unaligned access or an exclusive (an atomic) faults, and compiled C++ makes both; the
/// image would also have to sit at guest physical = its link address. With the MMU on, compiled
/// code runs as it does in the host process, caches are on in the guest as in the host (no
/// coherency maintenance between the two views of RAM), and the executable can live anywhere.
///
/// `space::enter(cpu, call(&fn, args...))` sets MAIR_EL1 (attr 0 Device-nGnRnE, attr 1 Normal
/// WB), TCR_EL1, TTBR0_EL1, SCTLR_EL1 (M, C, I, SA), CPACR_EL1.FPEN (compiled code may use
/// SIMD registers), VBAR_EL1 = the vector table of `vcpu/guest/aarch64.hpp`, SP_EL1 = the stack
/// top, PC = `fn`, X0-X5 = the arguments (AAPCS64), X30 = a function that reports `done`, and
/// PSTATE = EL1h with DAIF masked. The vCPU must have been through `KVM_ARM_VCPU_INIT` (e.g.
/// `vcpu::aarch64::kvm_boot`). No entry stub is needed: the registers are the boot state.
///
/// The space also models `UcallSpace` for `guest::run`: the carrier exit is `vcpu::mmio`.

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/guest/aarch64.hpp>
#include <vcpu/guest/image_space.hpp>
#include <vcpu/guest/ucall.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <arch/aarch64/registers.hpp>

#include <cstdint>
#include <optional>

namespace vcpu::guest::aarch64 {

/// Default placement: RAM from 1 GiB (as on QEMU's `virt` machine), 32 MiB of it at least plus
/// the executable's size.
struct layout : image_layout {
    constexpr layout() noexcept : image_layout{0x4020'0000, 0x4100'0000, 4, 0x40000} {}
};

/// Stage-1 descriptors, VMSAv8-64 4 KiB granule (ARM ARM D8.3): table `0b11`, level-3 page
/// `0b11`, level-2 block `0b01`; AttrIndx[4:2], AP[2] (bit 7) read-only, SH[9:8], AF (bit 10),
/// PXN (53) and UXN (54).
struct page_format {
    static constexpr std::uint64_t attr_device = 0, attr_normal = 1;
    static constexpr std::uint64_t af = std::uint64_t{1} << 10, inner_shareable = std::uint64_t{3} << 8,
                                   read_only = std::uint64_t{1} << 7,
                                   never_exec = (std::uint64_t{1} << 53) | (std::uint64_t{1} << 54);
    static std::uint64_t table(std::uint64_t pa) noexcept { return pa | 3; }
    static std::uint64_t page(std::uint64_t pa, bool writable) noexcept {
        return pa | 3 | (attr_normal << 2) | inner_shareable | af | (writable ? 0 : read_only);
    }
    static std::uint64_t block(std::uint64_t pa, bool ram) noexcept {
        return ram ? pa | 1 | (attr_normal << 2) | inner_shareable | af : pa | 1 | (attr_device << 2) | af | never_exec;
    }
    static bool is_table(std::uint64_t e) noexcept { return (e & 3) == 3; }
    static bool is_valid(std::uint64_t e) noexcept { return (e & 1) != 0; }
    static std::uint64_t address(std::uint64_t e) noexcept { return e & 0x0000'ffff'ffff'f000ULL; }
};
static_assert(PageFormat<page_format>);

/// The EL1 translation and control values `enter` sets (ARM ARM D17.2).
namespace el1 {
/// MAIR_EL1: Attr0 = 0x00 Device-nGnRnE, Attr1 = 0xff Normal, inner/outer write-back RW-allocate.
inline constexpr std::uint64_t mair = 0xff00;
/// TCR_EL1: T0SZ = 16 (48-bit), IRGN0/ORGN0 = WB WA, SH0 = inner shareable, TG0 = 4 KiB,
/// T1SZ = 16, EPD1 = 1 (no TTBR1 walks), TG1 = 4 KiB, IPS = 40 bits (KVM's default IPA size).
inline constexpr std::uint64_t tcr = 16 | (1u << 8) | (1u << 10) | (3u << 12) | (0u << 14) | (16u << 16) |
                                     (1u << 23) | (2ull << 30) | (2ull << 32);
/// SCTLR_EL1: the ARMv8.0 RES1 bits (11, 20, 22, 23, 28, 29) with M, C, SA, SA0 and I.
inline constexpr std::uint64_t sctlr = 0x30d0'0800 | 1 | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 12);
/// CPACR_EL1.FPEN = 0b11: SIMD and FP instructions do not trap at EL1.
inline constexpr std::uint64_t cpacr = 3u << 20;
inline constexpr auto cpacr_el1 = ::vcpu::aarch64::sys_reg("CPACR_EL1", {3, 0, 1, 0, 2});
/// PSTATE: EL1h with D, A, I, F masked.
inline constexpr std::uint64_t pstate = 0x3c5;
} // namespace el1

/// The guest-side addresses `enter` needs besides the function: the vector table and the return
/// target. They are this executable's own when it is compiled for AArch64; a test of the loader
/// on another host (the mock HAL) gets zeros unless it passes its own.
struct runtime_symbols {
    std::uint64_t vectors = 0;
    std::uint64_t returned = 0;
    [[nodiscard]] static runtime_symbols native() noexcept {
#if defined(__aarch64__)
        return {static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&vcpu_guest_aarch64_vectors[0])),
                static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&detail::returned))};
#else
        return {};
#endif
    }
};

/// The guest address space of one loaded executable; models `UcallSpace` for `guest::run`.
class space : public image_space<page_format> {
public:
    using ucall_exit = ::vcpu::mmio;

    /// See the file comment; the errors are `image_space::load`'s.
    [[nodiscard]] static result<space> load(guest_memory& mem, const void* code, const struct layout& l = {},
                                            runtime_symbols sym = runtime_symbols::native()) noexcept {
        auto s = image_space<page_format>::load(mem, code, l, "vcpu::guest::aarch64::space::load");
        if (!s) return s.err();
        space out;
        static_cast<image_space<page_format>&>(out) = *s;
        out.sym_ = sym;
        return out;
    }

    /// Sets the vCPU to start `c` at EL1h with the MMU on (see the file comment). KVM or mock.
    template <class Cpu>
    [[nodiscard]] result<void> enter(Cpu& cpu, const call& c) const noexcept {
        namespace a = ::vcpu::aarch64;
        if (auto r = cpu.set(a::mair_el1, el1::mair); !r) return r;
        if (auto r = cpu.set(a::tcr_el1, el1::tcr); !r) return r;
        if (auto r = cpu.set(a::ttbr0_el1, page_table_root()); !r) return r;
        if (auto r = cpu.set(el1::cpacr_el1, el1::cpacr); !r) return r;
        if (auto r = cpu.set(a::vbar_el1, sym_.vectors); !r) return r;
        if (auto r = cpu.set(a::sctlr_el1, el1::sctlr); !r) return r;
        if (auto r = cpu.set(a::sp_el1, stack_top()); !r) return r;
        for (std::size_t i = 0; i < 6; ++i)
            if (auto r = cpu.set(a::xregs[i], i < c.count ? c.args[i] : 0); !r) return r;
        if (auto r = cpu.set(a::lr, sym_.returned); !r) return r;
        if (auto r = cpu.set(a::pc, c.entry); !r) return r;
        return cpu.set(a::pstate, el1::pstate);
    }

    /// The record address of a ucall (an 8-byte store to `ucall_mmio`), else nullopt.
    [[nodiscard]] std::optional<std::uint64_t> ucall_address(const ::vcpu::mmio& m) const noexcept {
        if (m.address != ucall_mmio || !m.is_write() || m.size != 8) [[unlikely]]
            return std::nullopt;
        return m.value();
    }

    /// A `sync` of none or one value, carried by the store itself (to `ucall_sync0_mmio` /
    /// `ucall_sync_mmio`): calls `visit` with the `guest::sync` and returns its result; nullopt
    /// for any other exit. Reads no register and no guest memory.
    template <class Cpu, class Visitor>
    [[nodiscard]] std::optional<bool> register_ucall(const ::vcpu::mmio& m, Cpu&, Visitor&& visit) const noexcept {
        if ((m.address != ucall_sync_mmio && m.address != ucall_sync0_mmio) || !m.is_write() || m.size != 8)
            return std::nullopt;
        sync s;
        s.count = m.address == ucall_sync_mmio ? 1 : 0;
        s.values[0] = s.count != 0 ? m.value() : 0;
        return visit(s);
    }

    [[nodiscard]] const runtime_symbols& symbols() const noexcept { return sym_; }

private:
    runtime_symbols sym_{};
};

} // namespace vcpu::guest::aarch64
