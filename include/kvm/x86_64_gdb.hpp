#pragma once
/// \file
/// `x86_64_gdb_target`: x86-64 KVM vCPUs as a `vcpu::gdb::GdbTarget`, so `vcpu::gdb::session`
/// can debug a guest. Registers come from the vCPU's register blocks (regs, sregs: the same cache
/// the run loop uses) and `KVM_GET/SET_FPU`; memory is read by the guest's virtual addresses
/// through its own page tables (`arch/x86_64/paging.hpp`) from the RAM the VMM maps; software
/// breakpoints are INT3 bytes in guest memory with `KVM_GUESTDBG_USE_SW_BP`; hardware breakpoints
/// and watchpoints are DR0-DR3 through `KVM_SET_GUEST_DEBUG` (kvm/x86_64_calls.hpp), shared by
/// all vCPUs. Debug path: allocates at construction only.
///
/// Compiled only on x86-64 hosts; elsewhere this header is empty.

#include <kvm/vcpu.hpp>
#include <kvm/x86_64_calls.hpp>
#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/gdb/breakpoints.hpp>
#include <vcpu/gdb/target.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/gdb.hpp>
#include <arch/x86_64/paging.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

namespace vcpu::kvm {

namespace detail {
/// The x87 tag word as FSTENV stores it (two bits per physical register: 00 valid, 01 zero,
/// 10 special, 11 empty) from FXSAVE's abridged one (one bit: not empty) and the register
/// contents (SDM Vol. 1, 8.1.7 "x87 FPU Tag Word"; Vol. 2A FXSAVE, "abridged" tag).
[[nodiscard]] inline std::uint16_t full_x87_tag(const ::kvm_fpu& f) noexcept {
    const unsigned top = (f.fsw >> 11) & 7u;
    std::uint16_t tag = 0;
    for (unsigned phys = 0; phys < 8; ++phys) {
        unsigned t = 3; // empty
        if ((f.ftwx >> phys) & 1u) {
            const unsigned st = (phys - top) & 7u; // FXSAVE stores ST(i), not physical registers
            std::uint64_t mantissa = 0;
            std::uint16_t sign_exp = 0;
            std::memcpy(&mantissa, f.fpr[st], 8);
            std::memcpy(&sign_exp, f.fpr[st] + 8, 2);
            const unsigned exponent = sign_exp & 0x7fffu;
            if (exponent == 0x7fff) t = 2;
            else if (exponent == 0) t = mantissa == 0 ? 1 : 2;
            else t = (mantissa >> 63) != 0 ? 0 : 2; // integer bit clear: unsupported format
        }
        tag = static_cast<std::uint16_t>(tag | (t << (2 * phys)));
    }
    return tag;
}
} // namespace detail

/// x86-64 KVM vCPUs as a GDB target (see the file comment). `Memory` maps guest-physical
/// ranges to host memory: `memory(gpa, bytes) -> std::span<std::byte>`, empty when the range
/// is not (wholly) RAM. The vCPUs must not run while the stub uses the target (all-stop).
template <class Sys, class Arch, class Memory>
class x86_64_gdb_target {
public:
    /// The HAL vCPU type debugged.
    using vcpu_type = hal_vcpu<Sys, Arch>;

    /// A target over `cpus` (gdb thread i + 1 is `cpus[i]`) and `memory`. With
    /// `software_in_hardware`, `Z0` takes a debug-register slot instead of writing INT3: for
    /// hosts whose KVM cannot intercept INT3 (PVM emulates guest CPL0 code, and its emulator
    /// fails on INT3), at the price of four breakpoints at most.
    x86_64_gdb_target(std::span<vcpu_type* const> cpus, Memory memory, bool software_in_hardware = false)
        : cpus_(cpus.begin(), cpus.end()), memory_(static_cast<Memory&&>(memory)), fpu_(cpus.size()),
          software_in_hardware_(software_in_hardware) {}

    /// x86-64 as gdb numbers its registers.
    [[nodiscard]] const gdb::arch_desc& arch() const noexcept { return ::vcpu::x86_64::gdb_arch; }
    /// vCPUs (gdb threads).
    [[nodiscard]] unsigned cpu_count() const noexcept { return static_cast<unsigned>(cpus_.size()); }

    /// Register `n` (gdb numbering) of `cpu`.
    [[nodiscard]] result<void> read_register(unsigned cpu, std::size_t n, std::span<std::byte> out) {
        using r = ::vcpu::x86_64::gdb_reg;
        auto& c = *cpus_.at(cpu);
        if (n <= static_cast<std::size_t>(r::rip)) {
            auto regs = c.template load<::vcpu::x86_64::regs_block>();
            if (!regs) return regs.err();
            return put(out, gpr(**regs, n));
        }
        if (n == static_cast<std::size_t>(r::eflags)) {
            auto regs = c.template load<::vcpu::x86_64::regs_block>();
            if (!regs) return regs.err();
            return put(out, static_cast<std::uint32_t>((*regs)->rflags));
        }
        if (n <= static_cast<std::size_t>(r::gs)) {
            auto s = c.template load<::vcpu::x86_64::sregs_block>();
            if (!s) return s.err();
            const auto& sr = **s;
            const ::vcpu::x86_64::segment* seg[] = {&sr.cs, &sr.ss, &sr.ds, &sr.es, &sr.fs, &sr.gs};
            return put(out, std::uint32_t{seg[n - static_cast<std::size_t>(r::cs)]->selector});
        }
        auto f = fpu(cpu);
        if (!f) return f.err();
        const ::kvm_fpu& x = **f;
        if (n < static_cast<std::size_t>(r::fctrl)) {
            std::memcpy(out.data(), x.fpr[n - static_cast<std::size_t>(r::st0)], 10);
            return ok();
        }
        switch (static_cast<r>(n)) {
        case r::fctrl: return put(out, std::uint32_t{x.fcw});
        case r::fstat: return put(out, std::uint32_t{x.fsw});
        case r::ftag: return put(out, std::uint32_t{detail::full_x87_tag(x)});
        case r::fiseg: return put(out, std::uint32_t{0}); // FXSAVE64 keeps no selectors
        case r::fioff: return put(out, static_cast<std::uint32_t>(x.last_ip));
        case r::foseg: return put(out, std::uint32_t{0});
        case r::fooff: return put(out, static_cast<std::uint32_t>(x.last_dp));
        case r::fop: return put(out, std::uint32_t{x.last_opcode});
        case r::mxcsr: return put(out, x.mxcsr);
        default: break;
        }
        if (n >= static_cast<std::size_t>(r::xmm0) && n < static_cast<std::size_t>(r::mxcsr)) {
            std::memcpy(out.data(), x.xmm[n - static_cast<std::size_t>(r::xmm0)], 16);
            return ok();
        }
        return error{"gdb read register", EINVAL, "no such x86-64 register"}.with("regnum", n);
    }

    /// Writes register `n` of `cpu`: GPRs, RIP and RFLAGS through the register cache (applied
    /// at the next run), x87/SSE with `KVM_SET_FPU`. Segment selectors are refused (ENOTSUP:
    /// a selector without its descriptor would make an inconsistent state).
    [[nodiscard]] result<void> write_register(unsigned cpu, std::size_t n, std::span<const std::byte> in) {
        using r = ::vcpu::x86_64::gdb_reg;
        auto& c = *cpus_.at(cpu);
        if (n <= static_cast<std::size_t>(r::eflags)) {
            auto regs = c.template modify<::vcpu::x86_64::regs_block>();
            if (!regs) return regs.err();
            if (n == static_cast<std::size_t>(r::eflags)) {
                std::uint32_t v = 0;
                std::memcpy(&v, in.data(), 4);
                (*regs)->rflags = ((*regs)->rflags & ~std::uint64_t{0xffff'ffff}) | v | 2u; // bit 1 is always 1
            } else {
                std::memcpy(&gpr(**regs, n), in.data(), 8);
            }
            return ok();
        }
        if (n <= static_cast<std::size_t>(r::gs))
            return error{"gdb write register", ENOTSUP, "segment selectors are read-only through gdb"}.with("regnum", n);
        auto f = fpu(cpu);
        if (!f) return f.err();
        ::kvm_fpu x = **f;
        if (n < static_cast<std::size_t>(r::fctrl)) {
            std::memcpy(x.fpr[n - static_cast<std::size_t>(r::st0)], in.data(), 10);
        } else if (n >= static_cast<std::size_t>(r::xmm0) && n < static_cast<std::size_t>(r::mxcsr)) {
            std::memcpy(x.xmm[n - static_cast<std::size_t>(r::xmm0)], in.data(), 16);
        } else {
            std::uint32_t v = 0;
            std::memcpy(&v, in.data(), 4);
            switch (static_cast<r>(n)) {
            case r::fctrl: x.fcw = static_cast<std::uint16_t>(v); break;
            case r::fstat: x.fsw = static_cast<std::uint16_t>(v); break;
            case r::fop: x.last_opcode = static_cast<std::uint16_t>(v); break;
            case r::fioff: x.last_ip = v; break;
            case r::fooff: x.last_dp = v; break;
            case r::mxcsr: x.mxcsr = v; break;
            default: return error{"gdb write register", ENOTSUP, "not writable through gdb"}.with("regnum", n);
            }
        }
        if (auto s = set_fpu(c, x); !s) return s.err();
        fpu_[cpu] = x;
        return ok();
    }

    /// Guest memory at virtual address `gva` as `cpu` sees it: page by page through its page
    /// tables; stops at the first page that is not mapped or not RAM (returns the bytes read).
    /// Software breakpoints show as the bytes they replaced.
    [[nodiscard]] result<std::size_t> read_memory(unsigned cpu, std::uint64_t gva, std::span<std::byte> out) {
        auto n = access(cpu, gva, out.size(), [&](std::span<std::byte> host, std::size_t at) {
            std::memcpy(out.data() + at, host.data(), host.size());
        });
        if (!n) return n.err();
        sw_.hide(gva, out.first(*n));
        return *n;
    }

    /// Writes guest memory at virtual address `gva`; EFAULT (with the address) unless all of it is
    /// mapped RAM.
    [[nodiscard]] result<void> write_memory(unsigned cpu, std::uint64_t gva, std::span<const std::byte> in) {
        auto n = access(cpu, gva, in.size(), [&](std::span<std::byte> host, std::size_t at) {
            std::memcpy(host.data(), in.data() + at, host.size());
        });
        if (!n) return n.err();
        if (*n != in.size())
            return error{"gdb write memory", EFAULT, "guest address not mapped to RAM"}.with_hex("gva", gva + *n);
        return ok();
    }

    /// `Z0`: INT3 at `address` (vCPU 0's view; a debug-register slot with `software_in_hardware`); `Z1`: an instruction breakpoint in a free DR slot;
    /// `Z2`/`Z4`: a write / read-write watchpoint of 1, 2, 4 or 8 aligned bytes. `Z3` (reads only)
    /// does not exist on x86: ENOTSUP. ENOSPC when the four DR slots are taken.
    [[nodiscard]] result<void> insert_breakpoint(const gdb::breakpoint& bp) {
        if (bp.kind == gdb::break_kind::software && !software_in_hardware_) {
            return sw_.insert(
                bp.address, arch().sw_breakpoint,
                [&](std::uint64_t a, std::span<std::byte> o) { return raw_read(a, o); },
                [&](std::uint64_t a, std::span<const std::byte> i) { return write_memory(0, a, i); });
        }
        if (bp.kind == gdb::break_kind::read)
            return error{"gdb insert breakpoint", ENOTSUP, "x86 has no read-only watchpoints"};
        for (const auto& h : hw_)
            if (h && *h == bp) return ok();
        ::vcpu::kvm::hw_breakpoint slot{};
        slot.enabled = true;
        slot.address = bp.address;
        if (bp.kind == gdb::break_kind::hardware || bp.kind == gdb::break_kind::software) {
            slot.type = breakpoint_type::execute;
        } else {
            slot.type = bp.kind == gdb::break_kind::write ? breakpoint_type::write : breakpoint_type::read_write;
            switch (bp.length) {
            case 1: slot.length = breakpoint_length::one; break;
            case 2: slot.length = breakpoint_length::two; break;
            case 4: slot.length = breakpoint_length::four; break;
            case 8: slot.length = breakpoint_length::eight; break;
            default:
                return error{"gdb insert watchpoint", EINVAL, "x86 watches 1, 2, 4 or 8 bytes"}.with("length", bp.length);
            }
            if (bp.address % bp.length != 0)
                return error{"gdb insert watchpoint", EINVAL, "address not aligned to the length"}
                    .with_hex("address", bp.address)
                    .with("length", bp.length);
        }
        for (std::size_t i = 0; i < hw_.size(); ++i) {
            if (hw_[i]) continue;
            hw_[i] = bp;
            debug_.hw[i] = slot;
            return ok();
        }
        return error{"gdb insert breakpoint", ENOSPC, "all four debug address registers are in use"};
    }

    /// Removes what `insert_breakpoint` inserted for `bp` (nothing when there is none).
    [[nodiscard]] result<void> remove_breakpoint(const gdb::breakpoint& bp) {
        if (bp.kind == gdb::break_kind::software && !software_in_hardware_)
            return sw_.remove(bp.address, [&](std::uint64_t a, std::span<const std::byte> i) { return write_memory(0, a, i); });
        for (std::size_t i = 0; i < hw_.size(); ++i)
            if (hw_[i] && *hw_[i] == bp) {
                hw_[i].reset();
                debug_.hw[i] = {};
            }
        return ok();
    }

    /// Before running: gives every vCPU the breakpoints, and single-stepping to `step_cpu` (with
    /// interrupts blocked during the step, so the step does not land in a handler).
    [[nodiscard]] result<void> arm(std::optional<unsigned> step_cpu = std::nullopt) {
        for (auto& f : fpu_) f.reset();
        for (unsigned i = 0; i < cpus_.size(); ++i) {
            guest_debug g = debug_;
            g.enable = true;
            g.software_breakpoints = sw_.size() != 0;
            g.single_step = step_cpu == i;
            g.block_irq = g.single_step;
            if (auto s = set_guest_debug(*cpus_[i], g); !s) return s.err();
        }
        return ok();
    }

    /// gdb detached: breakpoints removed from memory and guest debugging off on every vCPU.
    [[nodiscard]] result<void> disarm() {
        for (std::size_t i = 0; i < hw_.size(); ++i) {
            hw_[i].reset();
            debug_.hw[i] = {};
        }
        VCPU_TRY_VOID(sw_.remove_all([&](std::uint64_t a, std::span<const std::byte> i) { return write_memory(0, a, i); }));
        for (auto* c : cpus_) {
            guest_debug off{};
            off.enable = false;
            if (auto s = set_guest_debug(*c, off); !s) return s.err();
        }
        return ok();
    }

    /// What a `debug` exit of `cpu` means to gdb: \#BP = a software breakpoint (RIP is at the
    /// INT3), \#DB with DR6.BS = a completed step, DR6.B0-B3 = the slot that fired.
    [[nodiscard]] gdb::stop_reason stop_for(unsigned cpu, const ::vcpu::debug& d) const noexcept {
        gdb::stop_reason why{};
        why.cpu = cpu;
        if (d.exception == 3) {
            why.kind = gdb::stop_kind::software;
            return why;
        }
        for (std::size_t i = 0; i < hw_.size(); ++i) {
            if (((d.status >> i) & 1u) == 0 || !hw_[i]) continue;
            if (hw_[i]->kind == gdb::break_kind::software) {
                why.kind = gdb::stop_kind::software; // a Z0 kept in a debug register
            } else if (hw_[i]->kind == gdb::break_kind::hardware) {
                why.kind = gdb::stop_kind::hardware;
            } else {
                why.kind = gdb::stop_kind::watch;
                why.watch = hw_[i]->kind;
                why.data_address = hw_[i]->address;
            }
            return why;
        }
        why.kind = (d.status & (1u << 14)) != 0 ? gdb::stop_kind::step : gdb::stop_kind::trap;
        return why;
    }

    /// True when a software breakpoint is inserted at `address`.
    [[nodiscard]] bool has_software_breakpoint(std::uint64_t address) const noexcept { return sw_.contains(address); }

private:
    template <class T>
    static result<void> put(std::span<std::byte> out, T v) noexcept {
        if (out.size() != sizeof v) return error{"gdb register", EINVAL, "size mismatch"}.with("bytes", out.size());
        std::memcpy(out.data(), &v, sizeof v);
        return ok();
    }
    /// gdb's GPR `n` (0-16: rax rbx rcx rdx rsi rdi rbp rsp r8-r15 rip) in `kvm_regs`.
    static std::uint64_t& gpr(::vcpu::x86_64::regs_layout& r, std::size_t n) noexcept {
        std::uint64_t* by_gdb[] = {&r.rax, &r.rbx, &r.rcx, &r.rdx, &r.rsi, &r.rdi, &r.rbp, &r.rsp, &r.r8,
                                   &r.r9,  &r.r10, &r.r11, &r.r12, &r.r13, &r.r14, &r.r15, &r.rip};
        return *by_gdb[n];
    }
    static std::uint64_t gpr(const ::vcpu::x86_64::regs_layout& r, std::size_t n) noexcept {
        return gpr(const_cast<::vcpu::x86_64::regs_layout&>(r), n);
    }

    result<const ::kvm_fpu*> fpu(unsigned cpu) {
        if (!fpu_[cpu]) {
            auto f = get_fpu(*cpus_.at(cpu));
            if (!f) return f.err();
            fpu_[cpu] = *f;
        }
        return &*fpu_[cpu];
    }

    /// Calls `f(host span, offset)` for each page-sized piece of [gva, gva+bytes) that `cpu`
    /// maps to RAM, in order, stopping at the first that is not; returns the bytes covered.
    template <class F>
    result<std::size_t> access(unsigned cpu, std::uint64_t gva, std::size_t bytes, F&& f) {
        auto s = cpus_.at(cpu)->template load<::vcpu::x86_64::sregs_block>();
        if (!s) return s.err();
        const ::vcpu::x86_64::paging_mode mode{(*s)->cr0, (*s)->cr3, (*s)->cr4, (*s)->efer};
        auto read_entry = [&](std::uint64_t gpa) -> std::optional<std::uint64_t> {
            auto host = memory_(gpa, 8);
            if (host.size() != 8) {
                host = memory_(gpa, 4); // a 32-bit entry at the very end of RAM
                if (host.size() != 4) return std::nullopt;
                std::uint32_t v = 0;
                std::memcpy(&v, host.data(), 4);
                return v;
            }
            std::uint64_t v = 0;
            std::memcpy(&v, host.data(), 8);
            return v;
        };
        std::size_t done = 0;
        while (done < bytes) {
            auto t = ::vcpu::x86_64::translate(mode, gva + done, read_entry);
            if (!t) break;
            const std::uint64_t left = bytes - done;
            const std::size_t piece = static_cast<std::size_t>(t->bytes_to_page_end() < left ? t->bytes_to_page_end() : left);
            auto host = memory_(t->gpa, piece);
            if (host.size() != piece) break;
            f(host, done);
            done += piece;
        }
        return done;
    }

    result<std::size_t> raw_read(std::uint64_t gva, std::span<std::byte> out) {
        return access(0, gva, out.size(), [&](std::span<std::byte> host, std::size_t at) {
            std::memcpy(out.data() + at, host.data(), host.size());
        });
    }

    std::vector<vcpu_type*> cpus_;
    Memory memory_;
    std::vector<std::optional<::kvm_fpu>> fpu_; ///< per vCPU, valid while stopped (reset by `arm`)
    gdb::software_breakpoints<64> sw_;
    std::array<std::optional<gdb::breakpoint>, hw_breakpoint_slots> hw_{};
    guest_debug debug_{};
    bool software_in_hardware_ = false;
};

/// Deduces the target's types from a span of HAL vCPUs and the memory callable.
template <class Sys, class Arch, std::size_t N, class Memory>
x86_64_gdb_target(std::span<hal_vcpu<Sys, Arch>*, N>, Memory, bool = false) -> x86_64_gdb_target<Sys, Arch, Memory>;

} // namespace vcpu::kvm

#endif // __x86_64__
