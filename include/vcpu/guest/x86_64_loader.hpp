#pragma once
/// \file
/// The host side of guest code on x86-64: puts the running executable into guest memory and
/// starts one of its functions in 64-bit long mode.
///
/// `space::load(memory, &some_guest_function)` finds the executable (or shared object) that
/// holds the function (`dl_iterate_phdr`), copies every page of its loadable segments — code,
/// read-only data, and a snapshot of its data and BSS as they are at that moment — into guest RAM
/// at `layout::image`, and builds 4-level page tables that map those pages at **the same virtual
/// addresses as in the host process** (read-only segments read-only), so every absolute and
/// RIP-relative reference in the compiled code (functions, string literals, vtables, the GOT)
/// works unchanged in the guest. Around it: `[0, identity_gib GiB)` identity-mapped with 2 MiB
/// pages (guest RAM and MMIO; GVA = GPA there), a GDT, a TSS whose IST1 is the exception stack,
/// an IDT of the 256 stubs of `vcpu/guest/x86_64.hpp`, and the guest stack, all in
/// `layout::runtime`.
///
/// `space::enter(cpu, call(&fn, args...))` then sets long mode (CR0.PG/PE/WP/NE, CR4.PAE +
/// OSFXSR + OSXMMEXCPT so compiled SSE code runs, EFER.LME/LMA), RIP = `fn`, up to six integer
/// arguments in RDI, RSI, RDX, RCX, R8, R9 (SysV ABI), and RSP at the stack top with the return
/// address of `detail::returned` (so returning from `fn` is `ucall::done()`). The vCPU needs
/// CPUID set (e.g. `vcpu::x86_64::cpuid_setup<>`): without CPUID.FXSR the exception stubs' FXSAVE
/// faults.
///
/// Setup code: may fail with a `vcpu::error`; no allocation. Compiled only on x86-64 Linux.

#include <vcpu/config.hpp>
#include <vcpu/guest/call.hpp>
#include <vcpu/guest/loaded_image.hpp>
#include <vcpu/guest/ucall.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__) && defined(__linux__)

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/registers.hpp>
#include <vcpu/exits.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>


namespace vcpu::guest::x86_64 {

/// Where the loader puts things in guest physical memory (all must be guest RAM).
struct layout {
    std::uint64_t runtime = 0x200000;   ///< GDT, IDT, TSS, page tables, stacks: `runtime_bytes`
    std::uint64_t image = 0x1000000;    ///< the executable's pages (as many as it spans)
    unsigned identity_gib = 4;          ///< GVA = GPA over [0, identity_gib GiB), 2 MiB pages
    std::uint64_t stack_bytes = 0x40000; ///< the guest stack (below 4 GiB: ucalls send its addresses)
};

/// Byte offsets inside `layout::runtime`.
namespace runtime_offset {
inline constexpr std::uint64_t gdt = 0x0;
inline constexpr std::uint64_t idt = 0x1000;
inline constexpr std::uint64_t tss = 0x2000;
inline constexpr std::uint64_t tables = 0x3000;       ///< page-table pool
inline constexpr std::uint64_t max_tables = 128;      ///< 512 KiB of tables
inline constexpr std::uint64_t exception_stack = tables + max_tables * 0x1000; ///< IST1, 16 KiB
inline constexpr std::uint64_t exception_stack_bytes = 0x4000;
inline constexpr std::uint64_t stack = exception_stack + exception_stack_bytes;
} // namespace runtime_offset

/// GDT selectors (SDM Vol. 3A §3.4.2): 64-bit code, data, the 16-byte TSS descriptor.
namespace selector {
inline constexpr std::uint16_t code = 0x08;
inline constexpr std::uint16_t data = 0x10;
inline constexpr std::uint16_t tss = 0x18;
} // namespace selector

/// A guest function and its (at most six) integer arguments, for `space::enter` (SysV: RDI, RSI,
/// RDX, RCX, R8, R9).
using call = ::vcpu::guest::call;

/// The guest address space of one loaded executable; models `UcallSpace` for `guest::run`.
class space {
public:
    using ucall_exit = ::vcpu::port_io;

    /// Copies the executable holding `code` into `mem` and builds the runtime structures (see the
    /// file comment). Fails with ENOENT (no object holds `code`), ENOSPC (the image or the page
    /// tables do not fit), EADDRINUSE (the executable's addresses collide with the runtime area
    /// or the image copy in the identity map) or EFAULT (layout outside guest RAM).
    [[nodiscard]] static result<space> load(guest_memory& mem, const void* code, const layout& l = {}) noexcept {
        space s;
        s.mem_ = &mem;
        s.layout_ = l;
        constexpr const char* op = "vcpu::guest::x86_64::space::load";
        if (l.identity_gib == 0 || l.identity_gib > 512)
            return error{op, EINVAL, "identity_gib must be 1..512"}.with("identity_gib", l.identity_gib);
        const std::uint64_t runtime_bytes = runtime_offset::stack + l.stack_bytes;
        if ((l.runtime & 0xfff) != 0 || (l.image & 0xfff) != 0 || (l.stack_bytes & 0xf) != 0 ||
            mem.at(l.runtime, runtime_bytes).empty() || l.runtime + runtime_bytes > (std::uint64_t{1} << 32))
            return error{op, EFAULT, "runtime area is not page-aligned guest RAM below 4 GiB"}
                .with_range("runtime", l.runtime, runtime_bytes);
        if (auto e = s.find_image(code); !e) return e.err();
        const std::uint64_t span = s.hi_ - s.lo_;
        if (mem.at(l.image, span).empty())
            return error{op, ENOSPC, "the executable does not fit in guest RAM at layout.image"}
                .with_range("image", l.image, span)
                .with_hex("executable_va", s.lo_);
        const std::uint64_t identity_end = std::uint64_t{l.identity_gib} << 30;
        const auto collides = [&](std::uint64_t a, std::uint64_t n) {
            return s.lo_ < identity_end && s.lo_ < a + n && a < s.hi_;
        };
        if (collides(l.runtime, runtime_bytes) || collides(l.image, span))
            return error{op, EADDRINUSE, "the executable's addresses overlap the runtime area or its copy"}
                .with_range("executable_va", s.lo_, span);

        // Zero the runtime area, then: image pages, page tables, GDT, TSS, IDT.
        auto rt = mem.at(l.runtime, runtime_bytes);
        std::memset(rt.data(), 0, rt.size());
        s.next_table_ = 0;
        const std::uint64_t pml4 = s.alloc_table();
        for (std::size_t i = 0; i < s.nsegments_; ++i) {
            const auto& g = s.segments_[i];
            for (std::uint64_t va = g.lo; va < g.hi; va += 0x1000) {
                const std::uint64_t gpa = l.image + (va - s.lo_);
                std::memcpy(mem.at(gpa, 0x1000).data(), reinterpret_cast<const void*>(va), 0x1000);
                if (auto e = s.map_page(pml4, va, gpa, g.writable); !e) return e.err();
            }
        }
        for (std::uint64_t va = 0; va < identity_end; va += 0x200000)
            if (auto e = s.map_large_identity(pml4, va); !e) return e.err();

        // GDT (SDM Vol. 3A §3.4.5): null, 64-bit code (L=1), data, 64-bit TSS (§8.2.3, type 9).
        const std::uint64_t tss = l.runtime + runtime_offset::tss;
        constexpr std::uint64_t tss_limit = 103;
        std::array<std::uint64_t, 5> gdt{
            0, 0x00af9b000000ffffULL, 0x00cf93000000ffffULL,
            (tss_limit & 0xffff) | ((tss & 0xffffff) << 16) | (std::uint64_t{0x89} << 40) |
                ((tss >> 24 & 0xff) << 56),
            tss >> 32};
        std::memcpy(mem.at(l.runtime + runtime_offset::gdt, sizeof gdt).data(), gdt.data(), sizeof gdt);
        // TSS: RSP0 and IST1 = top of the exception stack (offsets 4 and 36, Figure 8-11); no
        // I/O bitmap (its base past the limit).
        const std::uint64_t ist = l.runtime + runtime_offset::exception_stack + runtime_offset::exception_stack_bytes;
        auto t = mem.at(tss, tss_limit + 1);
        std::memcpy(t.data() + 4, &ist, 8);
        std::memcpy(t.data() + 36, &ist, 8);
        const std::uint16_t iomap = tss_limit + 1;
        std::memcpy(t.data() + 102, &iomap, 2);
        // IDT: 64-bit interrupt gates (type 0xE, P=1, DPL 0, IST 1) to the stubs (§6.14.1).
        const std::uint64_t stubs = s.stub_table();
        if (stubs == 0)
            return error{op, ENOEXEC, "the exception stubs of vcpu/guest/x86_64.hpp were not found"};
        for (std::uint64_t v = 0; v < 256; ++v) {
            const std::uint64_t a = stubs + v * detail::stub_bytes;
            const std::array<std::uint64_t, 2> gate{
                (a & 0xffff) | (std::uint64_t{selector::code} << 16) | (std::uint64_t{1} << 32) |
                    (std::uint64_t{0x8e} << 40) | ((a >> 16 & 0xffff) << 48),
                a >> 32};
            std::memcpy(mem.at(l.runtime + runtime_offset::idt + v * 16, 16).data(), gate.data(), 16);
        }
        s.cr3_ = pml4;
        return s;
    }

    /// Sets the vCPU to start `c` in long mode on this space (see the file comment). The vCPU
    /// may be a KVM or a mock one; call before each `guest::run` that starts a function.
    template <class Cpu>
    [[nodiscard]] result<void> enter(Cpu& cpu, const call& c) const noexcept {
        namespace x = ::vcpu::x86_64;
        // As if called: the return address (`detail::returned`) at RSP, and RSP + 8 16-byte
        // aligned at entry (SysV ABI §3.2.2).
        const std::uint64_t top = stack_top();
        const auto ret = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&detail::returned));
        if (auto e = mem_->write_le(top - 24, ret); !e) return e;
        if (auto e = mem_->write_le(top - 16, std::uint64_t{0}); !e) return e;

        auto sr = cpu.hal().template modify<x::sregs_block>();
        if (!sr) return sr.err();
        auto& s = **sr;
        auto seg = [](std::uint16_t sel, std::uint8_t type, bool l) {
            x::segment g{};
            g.limit = 0xffffffff;
            g.selector = sel;
            g.type = type;
            g.present = 1;
            g.s = 1;
            g.l = l ? 1 : 0;
            g.db = l ? 0 : 1;
            g.g = 1;
            return g;
        };
        s.cs = seg(selector::code, x::segment_type::code_xr_accessed, true);
        s.ds = s.es = s.fs = s.gs = s.ss = seg(selector::data, x::segment_type::data_rw_accessed, false);
        s.tr = x::segment{};
        s.tr.base = layout_.runtime + runtime_offset::tss;
        s.tr.limit = 103;
        s.tr.selector = selector::tss;
        s.tr.type = 0xb; // busy 64-bit TSS (SDM Table 3-2)
        s.tr.present = 1;
        s.gdt.base = layout_.runtime + runtime_offset::gdt;
        s.gdt.limit = 5 * 8 - 1;
        s.idt.base = layout_.runtime + runtime_offset::idt;
        s.idt.limit = 256 * 16 - 1;
        s.cr3 = cr3_;
        s.cr4 = x::cr4_bits::pae.bits() | x::cr4_bits::osfxsr.bits() | x::cr4_bits::osxmmexcpt.bits();
        s.cr0 = x::cr0_bits::pe.bits() | x::cr0_bits::mp.bits() | x::cr0_bits::et.bits() |
                x::cr0_bits::ne.bits() | x::cr0_bits::wp.bits() | x::cr0_bits::pg.bits();
        s.efer = x::efer_bits::lme.bits() | (std::uint64_t{1} << x::efer_bits::lma.lsb);

        auto gr = cpu.hal().template modify<x::regs_block>();
        if (!gr) return gr.err();
        auto& g = **gr;
        g = x::regs_layout{};
        g.rip = c.entry;
        g.rsp = top - 24;
        g.rflags = x::rflags_bits::reset_value;
        std::uint64_t* const arg_regs[6] = {&g.rdi, &g.rsi, &g.rdx, &g.rcx, &g.r8, &g.r9};
        for (std::size_t i = 0; i < c.count && i < 6; ++i) *arg_regs[i] = c.args[i];
        return ok();
    }

    // ---- GuestAddressSpace / UcallSpace ------------------------------------------------------

    /// Host bytes of `[gva, gva + len)` when the range lies in one mapping, else empty.
    [[nodiscard]] std::span<const std::byte> bytes(std::uint64_t gva, std::uint64_t len) const noexcept {
        const auto c = contiguous(gva);
        if (c.size() < len) return {};
        return c.first(static_cast<std::size_t>(len));
    }
    /// Host bytes from `gva` to the end of its mapping (the image copy, or identity-mapped RAM).
    [[nodiscard]] std::span<const std::byte> contiguous(std::uint64_t gva) const noexcept {
        return image_space_bytes(mem_, layout_.image, layout_.identity_gib, lo_, hi_, gva);
    }
    /// The record address of a ucall (an OUT of 4 bytes to `ucall_port`), else nullopt.
    [[nodiscard]] std::optional<std::uint64_t> ucall_address(const ::vcpu::port_io& io) const noexcept {
        if (io.port != ucall_port || !io.is_out() || io.size != 4 || io.count != 1) [[unlikely]]
            return std::nullopt;
        return io.value();
    }

    /// A `sync` of up to six values in registers (an OUT of 4 bytes to `ucall_sync_port`, EAX =
    /// count): calls `visit` with the `guest::sync` (or a `bad_ucall` for a count over six or
    /// registers that cannot be read) and returns its result; nullopt for any other exit. The
    /// registers come through the HAL's register block (KVM: `kvm_run->s.regs`, no ioctl once
    /// sync registers are on).
    template <class Cpu, class Visitor>
    [[nodiscard]] std::optional<bool> register_ucall(const ::vcpu::port_io& io, Cpu& cpu, Visitor&& visit) const noexcept {
        if (io.port != ucall_sync_port || !io.is_out() || io.size != 4 || io.count != 1)
            return std::nullopt;
        const std::uint32_t n = io.value();
        auto g = cpu.hal().template load<::vcpu::x86_64::regs_block>();
        if (n > max_register_values || !g) {
            bad_ucall b{bad_ucall::why::registers, 0, n};
            return visit(b);
        }
        const auto& r = **g;
        const std::uint64_t v[max_register_values] = {r.rdi, r.rsi, r.r8, r.r9, r.r10, r.rbx};
        sync s;
        s.count = static_cast<std::uint8_t>(n);
        for (std::uint32_t i = 0; i < n; ++i) s.values[i] = v[i];
        return visit(s);
    }

    // ---- layout ----------------------------------------------------------------------------

    /// The first guest physical address after the image copy (2 MiB aligned): guest RAM from
    /// there on is free for a test's buffers (identity-mapped when below `identity_gib` GiB).
    [[nodiscard]] std::uint64_t free_begin() const noexcept {
        return (layout_.image + (hi_ - lo_) + 0x1fffff) & ~std::uint64_t{0x1fffff};
    }
    /// The executable's virtual range as mapped in the guest.
    [[nodiscard]] std::uint64_t image_va() const noexcept { return lo_; }
    [[nodiscard]] std::uint64_t image_bytes() const noexcept { return hi_ - lo_; }
    [[nodiscard]] std::uint64_t stack_top() const noexcept {
        return layout_.runtime + runtime_offset::stack + layout_.stack_bytes;
    }
    [[nodiscard]] std::uint64_t page_table_root() const noexcept { return cr3_; }
    [[nodiscard]] const struct layout& layout() const noexcept { return layout_; }
    [[nodiscard]] guest_memory& memory() const noexcept { return *mem_; }

private:
    struct segment_range {
        std::uint64_t lo = 0, hi = 0;
        bool writable = false;
    };
    static constexpr std::size_t max_segments = loaded_image::max_segments;

    result<void> find_image(const void* code) noexcept {
        loaded_image img;
        const bool found = loaded_image::containing(code, img);
        nsegments_ = img.count;
        for (std::size_t k = 0; k < img.count; ++k)
            segments_[k] = segment_range{img.segments[k].lo, img.segments[k].hi, img.segments[k].writable};
        lo_ = img.lo;
        hi_ = img.hi;
        if (!found)
            return error{"vcpu::guest::x86_64::space::load", ENOENT, "no loaded object holds the guest code"}
                .with_hex("code", reinterpret_cast<std::uintptr_t>(code));
        return ok();
    }

    /// Finds the 16-byte aligned start of the stub table inside `vector_stubs` (after any
    /// compiler-inserted prologue such as ENDBR64): stubs 0 and 1 are `push $0; push $v`.
    [[nodiscard]] std::uint64_t stub_table() const noexcept {
        const auto f = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&detail::vector_stubs));
        for (std::uint64_t a = (f + 15) & ~std::uint64_t{15}; a < f + 64; a += 16) {
            const auto b0 = bytes(a, 4), b1 = bytes(a + 16, 4);
            if (b0.size() == 4 && b1.size() == 4 && b0[0] == std::byte{0x6a} && b0[1] == std::byte{0} &&
                b0[2] == std::byte{0x6a} && b0[3] == std::byte{0} && b1[0] == std::byte{0x6a} &&
                b1[1] == std::byte{0} && b1[2] == std::byte{0x6a} && b1[3] == std::byte{1})
                return a;
        }
        return 0;
    }

    std::uint64_t alloc_table() noexcept {
        if (next_table_ == runtime_offset::max_tables) return 0;
        return layout_.runtime + runtime_offset::tables + 0x1000 * next_table_++;
    }
    [[nodiscard]] std::uint64_t read_entry(std::uint64_t table, unsigned i) const noexcept {
        std::uint64_t v = 0;
        std::memcpy(&v, mem_->at(table + 8 * i, 8).data(), 8);
        return v;
    }
    void write_entry(std::uint64_t table, unsigned i, std::uint64_t v) noexcept {
        std::memcpy(mem_->at(table + 8 * i, 8).data(), &v, 8);
    }
    /// The table entry `i` of `table` points to, allocated (present, writable) when absent.
    result<std::uint64_t> next_level(std::uint64_t table, unsigned i) noexcept {
        constexpr std::uint64_t present = 1, writable = 2;
        const std::uint64_t e = read_entry(table, i);
        if ((e & present) != 0) return e & 0x000ffffffffff000ULL;
        const std::uint64_t t = alloc_table();
        if (t == 0)
            return error{"vcpu::guest::x86_64::space::load", ENOSPC, "out of page tables"}.with(
                "max_tables", runtime_offset::max_tables);
        write_entry(table, i, t | present | writable);
        return t;
    }
    result<void> map_page(std::uint64_t pml4, std::uint64_t va, std::uint64_t gpa, bool writable) noexcept {
        auto pdpt = next_level(pml4, (va >> 39) & 511);
        if (!pdpt) return pdpt.err();
        auto pd = next_level(*pdpt, (va >> 30) & 511);
        if (!pd) return pd.err();
        auto pt = next_level(*pd, (va >> 21) & 511);
        if (!pt) return pt.err();
        const unsigned i = (va >> 12) & 511;
        // A page two segments share keeps the more permissive mapping.
        const std::uint64_t old = read_entry(*pt, i);
        write_entry(*pt, i, gpa | 1 | (writable ? 2 : 0) | (old & 2));
        return ok();
    }
    /// A 2 MiB identity page at `va`, unless the image already maps 4 KiB pages there.
    result<void> map_large_identity(std::uint64_t pml4, std::uint64_t va) noexcept {
        auto pdpt = next_level(pml4, (va >> 39) & 511);
        if (!pdpt) return pdpt.err();
        auto pd = next_level(*pdpt, (va >> 30) & 511);
        if (!pd) return pd.err();
        const unsigned i = (va >> 21) & 511;
        if ((read_entry(*pd, i) & 1) == 0) write_entry(*pd, i, va | 1 | 2 | 0x80);
        return ok();
    }

    guest_memory* mem_ = nullptr;
    struct layout layout_ {};
    std::array<segment_range, max_segments> segments_{};
    std::size_t nsegments_ = 0;
    std::uint64_t lo_ = 0, hi_ = 0;
    std::uint64_t next_table_ = 0;
    std::uint64_t cr3_ = 0;
};

} // namespace vcpu::guest::x86_64

#endif // __x86_64__ && __linux__
