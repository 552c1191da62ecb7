// Fuzzes the RISC-V HS-mode trap decoder and the instruction decoders behind it
// (arch/riscv64/exits.hpp: decode(const hs_trap&); arch/riscv64/insn.hpp: standard and
// compressed loads/stores, htinst transformed instructions and pseudoinstructions, Zicsr, WFI).
//
// Input: u64 scause, stval, htval, htinst, sepc; u32 fetched instruction; u8 "has a frame" flag;
// the frame's x0..x31 (u64) and its 8 MMIO bytes. The frame is a heap object of exact size.
// Invariants: one visit with a type of exit_types; deterministic; the exit kind and fields are
// what the privileged spec (scause table, H extension htval/htinst) and the SBI spec give — an
// oracle with its own small load/store/CSR decoder written from the unprivileged spec's opcode
// tables; decode writes nothing but the frame's MMIO bytes (zeroed for a load, rs2's low bytes
// for a store) and never x0; answers land only in rd / a0 / a1; a load completed with
// write_back leaves rd as LB/LH/LW/LD/LBU/LHU/LWU would. The instruction decoders agree with
// the reference decoder on the input's words, and re-encoding any decoded access as a
// transformed instruction (bit 1 telling the length) decodes back to the same access.
#include "riscv64_sbi.hpp"

#include <arch/riscv64/arch.hpp>
#include <arch/riscv64/insn.hpp>

#include <memory>

namespace {

namespace rv = vcpu::riscv64;
namespace insn = vcpu::riscv64::insn;
using list = rv::exit_types;
using vcpu_fuzz::index_of_v;
using why = vcpu::malformed_exit::why;

// ---- reference decoders (unprivileged spec, RV64I LOAD/STORE, RVC quadrants 0 and 2, Zcb) ----

std::optional<insn::mem_access> ref_standard(std::uint32_t i, std::uint8_t len = 4) {
    if ((i & 3) != 3) return std::nullopt;
    const unsigned op = i & 0x7f, f3 = (i >> 12) & 7;
    const auto rd = static_cast<std::uint8_t>((i >> 7) & 31), rs2 = static_cast<std::uint8_t>((i >> 20) & 31);
    // LB LH LW LD LBU LHU LWU; SB SH SW SD.
    static constexpr std::uint8_t load_w[8] = {1, 2, 4, 8, 1, 2, 4, 0};
    if (op == 0x03 && load_w[f3] != 0) return insn::mem_access{insn::mem_op::load, load_w[f3], f3 < 3, rd, len};
    if (op == 0x23 && f3 < 4) return insn::mem_access{insn::mem_op::store, static_cast<std::uint8_t>(1u << f3), false, rs2, len};
    return std::nullopt;
}

std::optional<insn::mem_access> ref_compressed(std::uint32_t i) {
    const unsigned c = i & 0xffff, q = c & 3, f3 = c >> 13;
    const auto rdp = static_cast<std::uint8_t>(8 + ((c >> 2) & 7));
    const auto rd = static_cast<std::uint8_t>((c >> 7) & 31), rs2 = static_cast<std::uint8_t>((c >> 2) & 31);
    using m = insn::mem_access;
    constexpr auto L = insn::mem_op::load, S = insn::mem_op::store;
    if (q == 0) {
        if (f3 == 2) return m{L, 4, true, rdp, 2};  // C.LW
        if (f3 == 3) return m{L, 8, false, rdp, 2}; // C.LD
        if (f3 == 6) return m{S, 4, false, rdp, 2}; // C.SW
        if (f3 == 7) return m{S, 8, false, rdp, 2}; // C.SD
        if (f3 == 4) {                               // Zcb: funct6 100000..100011
            const unsigned f6 = (c >> 10) & 0x3f, b6 = (c >> 6) & 1;
            if (f6 == 0x20) return m{L, 1, false, rdp, 2};        // C.LBU
            if (f6 == 0x21) return m{L, 2, b6 != 0, rdp, 2};      // C.LHU (0) / C.LH (1)
            if (f6 == 0x22) return m{S, 1, false, rdp, 2};        // C.SB
            if (f6 == 0x23 && b6 == 0) return m{S, 2, false, rdp, 2}; // C.SH
        }
        return std::nullopt;
    }
    if (q == 2) {
        if (f3 == 2 && rd != 0) return m{L, 4, true, rd, 2};  // C.LWSP
        if (f3 == 3 && rd != 0) return m{L, 8, false, rd, 2}; // C.LDSP
        if (f3 == 6) return m{S, 4, false, rs2, 2};           // C.SWSP
        if (f3 == 7) return m{S, 8, false, rs2, 2};           // C.SDSP
    }
    return std::nullopt;
}

std::optional<insn::mem_access> ref_original(std::uint32_t i) {
    return (i & 3) == 3 ? ref_standard(i) : ref_compressed(i);
}

/// The 32-bit transformed instruction (H extension) for a decoded access: opcode, funct3 and
/// rd/rs2 kept, offsets and rs1 zero, bit 1 clear for a compressed original.
std::uint32_t transformed(const insn::mem_access& a) {
    unsigned f3 = a.width == 1 ? 0 : a.width == 2 ? 1 : a.width == 4 ? 2 : 3;
    std::uint32_t t;
    if (a.op == insn::mem_op::load) {
        if (!a.sign_extend && a.width < 8) f3 |= 4;
        t = 0x03 | std::uint32_t{a.reg} << 7 | f3 << 12;
    } else {
        t = 0x23 | f3 << 12 | std::uint32_t{a.reg} << 20;
    }
    return a.length == 2 ? t & ~2u : t;
}

std::uint64_t ref_extend(std::uint64_t v, unsigned w, bool s) {
    switch (w) {
    case 1: return s ? static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int8_t>(v))) : (v & 0xff);
    case 2: return s ? static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int16_t>(v))) : (v & 0xffff);
    case 4: return s ? static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(v))) : (v & 0xffffffff);
    default: return v;
    }
}

void check_insn_decoders(std::uint32_t w, std::uint64_t v) {
    VCPU_FUZZ_CHECK(insn::decode_standard(w) == ref_standard(w));
    VCPU_FUZZ_CHECK(insn::decode_compressed(w) == ref_compressed(w));
    VCPU_FUZZ_CHECK(insn::decode_original(w) == ref_original(w));
    VCPU_FUZZ_CHECK(insn::length_of(w) == ((w & 3) == 3 ? 4 : 2));
    for (const auto& a : {ref_standard(w), ref_compressed(w)}) {
        if (!a) continue;
        VCPU_FUZZ_CHECK(a->reg < 32 && (a->width == 1 || a->width == 2 || a->width == 4 || a->width == 8));
        const std::uint32_t t = transformed(*a);
        VCPU_FUZZ_CHECK(insn::classify_htinst(t) == insn::htinst_kind::transformed);
        VCPU_FUZZ_CHECK(insn::decode_transformed(t) == a);
    }
    // Zicsr (privileged spec "CSR Instructions"): SYSTEM opcode, funct3 1-3 and 5-7.
    const auto c = insn::decode_csr(w);
    const unsigned f3 = (w >> 12) & 7;
    VCPU_FUZZ_CHECK(c.has_value() == ((w & 0x7f) == 0x73 && f3 != 0 && f3 != 4));
    if (c) {
        VCPU_FUZZ_CHECK(c->csr == (w >> 20) && c->rd == ((w >> 7) & 31) && c->rs1 == ((w >> 15) & 31) &&
                        c->immediate == (f3 >= 5) && c->funct3 == f3);
        const std::uint64_t old = ~v;
        const std::uint64_t now = (old & ~c->write_mask(v)) | (c->new_value(v) & c->write_mask(v));
        // CSRRW(I) writes src, CSRRS(I) sets src's bits, CSRRC(I) clears them.
        VCPU_FUZZ_CHECK(now == ((f3 & 3) == 1 ? v : (f3 & 3) == 2 ? (old | v) : (old & ~v)));
    }
    for (unsigned width : {0u, 1u, 2u, 4u, 8u})
        for (bool s : {false, true})
            VCPU_FUZZ_CHECK(insn::extend(v, static_cast<std::uint8_t>(width), s) == (width == 0 ? 0 : ref_extend(v, width, s)));
}

// ---- the trap decoder ------------------------------------------------------------------------

struct record {
    rv::hs_trap t{};
    std::unique_ptr<rv::hs_guest_frame> frame;
    rv::hs_guest_frame before{};
    bool has_frame = false;
    [[nodiscard]] record copy() const {
        record c;
        c.t = t;
        c.before = before;
        c.has_frame = has_frame;
        if (has_frame) {
            c.frame = std::make_unique<rv::hs_guest_frame>(before);
            c.t.frame = c.frame.get();
        }
        return c;
    }
};

bool same(const rv::hs_guest_frame& a, const rv::hs_guest_frame& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::uint64_t gpa_of(const rv::hs_trap& t) { return (t.htval << 2) | (t.stval & 3); }

/// The load/store a guest page fault's instruction is, from htinst or the fetched word; how
/// htinst was classified.
struct fault_insn {
    insn::htinst_kind kind;
    std::optional<insn::mem_access> acc;
};
fault_insn fault_access(const rv::hs_trap& t) {
    if (t.htinst == 0) return {insn::htinst_kind::none, t.fetched_insn == 0 ? std::nullopt : ref_original(t.fetched_insn)};
    if (t.htinst > 0xffffffffu) return {insn::htinst_kind::reserved, {}};
    const auto h = static_cast<std::uint32_t>(t.htinst);
    if (h & 1) return {insn::htinst_kind::transformed, ref_standard(h | 2, (h & 2) ? 4 : 2)};
    if (h == 0x2000 || h == 0x3000 || h == 0x2020 || h == 0x3020) return {insn::htinst_kind::pseudo, {}};
    return {insn::htinst_kind::reserved, {}};
}

std::uint32_t virt_insn_bits(const rv::hs_trap& t) {
    return t.stval != 0 && t.stval <= 0xffffffffu ? static_cast<std::uint32_t>(t.stval) : t.fetched_insn;
}

std::array<std::uint64_t, 6> sbi_args(const rv::hs_guest_frame& f) { return {f.x[10], f.x[11], f.x[12], f.x[13], f.x[14], f.x[15]}; }

/// Expected exit type and the frame the decode must leave.
std::size_t expect(const record& r, rv::hs_guest_frame& after, std::optional<why>& w) {
    const auto& t = r.t;
    after = r.before;
    const std::uint64_t code = t.scause & ~(1ull << 63);
    const auto malformed = [&] {
        w = why::encoding;
        return index_of_v<vcpu::malformed_exit, list>;
    };
    if (t.scause >> 63) {
        for (std::uint64_t c : {1, 2, 5, 6, 9, 10, 12, 13})
            if (code == c) return index_of_v<vcpu::external_interrupt, list>;
        return index_of_v<vcpu::unknown, list>;
    }
    switch (code) {
    case 10:
        if (!r.has_frame) return malformed();
        return vcpu_fuzz::rv::expect_sbi(r.before.x[17], r.before.x[16], sbi_args(r.before));
    case 20: return index_of_v<vcpu::nested_page_fault, list>;
    case 21:
    case 23: {
        const auto fi = fault_access(t);
        if (fi.kind == insn::htinst_kind::reserved) return malformed();
        if (fi.kind == insn::htinst_kind::pseudo || !fi.acc) return index_of_v<vcpu::nested_page_fault, list>;
        if ((fi.acc->op == insn::mem_op::load) != (code == 21) || !r.has_frame) return malformed();
        if (fi.acc->op == insn::mem_op::load) {
            after.mmio = {};
        } else {
            const std::uint64_t v = fi.acc->reg == 0 ? 0 : r.before.x[fi.acc->reg];
            for (unsigned i = 0; i < fi.acc->width; ++i) after.mmio[i] = static_cast<std::byte>(v >> (8 * i));
        }
        return index_of_v<rv::mmio_trap, list>;
    }
    case 22: {
        const std::uint32_t b = virt_insn_bits(t);
        if (b == 0x10500073) return index_of_v<vcpu::halt, list>; // WFI
        const unsigned f3 = (b >> 12) & 7;
        if ((b & 0x7f) == 0x73 && f3 != 0 && f3 != 4 && r.has_frame) return index_of_v<rv::csr_access, list>;
        return index_of_v<rv::virtual_instruction, list>;
    }
    case 0: case 1: case 2: case 3: case 4: case 5: case 6: case 7: case 8: case 9: case 11:
    case 12: case 13: case 15: case 18: case 19:
        return index_of_v<rv::guest_exception, list>;
    default: return index_of_v<vcpu::unknown, list>;
    }
}

struct checker {
    const record& r;
    template <class E>
    void operator()(const E& e, vcpu_fuzz::digest& d) const {
        const auto& t = r.t;
        const auto& x = r.before.x;
        const std::uint64_t code = t.scause & ~(1ull << 63);
        const auto slot = [&](unsigned i) { return vcpu::answer_slot(&r.frame->x[i]); };
        if (code == 10 && !(t.scause >> 63) && r.has_frame &&
            vcpu_fuzz::rv::check_sbi(e, x[17], x[16], sbi_args(r.before), slot(10),
                                     x[17] <= 0x0f ? vcpu::answer_slot{} : slot(11), d))
            return;
        if constexpr (std::is_same_v<E, vcpu::external_interrupt>) {
            VCPU_FUZZ_CHECK(e.vector == code);
            d.add(e.vector);
        } else if constexpr (std::is_same_v<E, vcpu::unknown>) {
            VCPU_FUZZ_CHECK(e.raw == t.scause && e.detail == t.stval);
            d.add_all(e.raw, e.detail);
        } else if constexpr (std::is_same_v<E, vcpu::malformed_exit>) {
            d.add_all(static_cast<unsigned>(e.reason), e.raw_reason, e.value);
        } else if constexpr (std::is_same_v<E, vcpu::nested_page_fault>) {
            VCPU_FUZZ_CHECK(e.address == gpa_of(t) && e.syndrome == t.scause);
            VCPU_FUZZ_CHECK(e.read == (code == 21) && e.write == (code == 23) && e.exec == (code == 20));
            const auto fi = fault_access(t);
            const std::uint64_t size = fi.kind == insn::htinst_kind::pseudo && code != 20 ? ((t.htinst & 0x1000) ? 8 : 4) : 0;
            VCPU_FUZZ_CHECK(e.size == size);
            d.add_all(e.address, e.size, e.read, e.write, e.exec);
        } else if constexpr (std::is_same_v<E, rv::mmio_trap>) {
            const auto fi = fault_access(t);
            VCPU_FUZZ_CHECK(fi.acc.has_value());
            const auto& a = *fi.acc;
            VCPU_FUZZ_CHECK(e.address == gpa_of(t) && e.gva == t.stval && e.size == a.width && e.reg == a.reg &&
                            e.sign_extend == a.sign_extend && e.insn_length == a.length);
            VCPU_FUZZ_CHECK(e.is_read() == (a.op == insn::mem_op::load));
            VCPU_FUZZ_CHECK(e.data.size() == e.size && static_cast<void*>(e.data.data()) == r.frame->mmio.data());
            VCPU_FUZZ_CHECK(vcpu_fuzz::inside(e.data.data(), e.data.size(), r.frame->mmio.data(), 8));
            if (!e.is_read()) {
                const std::uint64_t mask = e.size == 8 ? ~0ull : (1ull << (8 * e.size)) - 1;
                VCPU_FUZZ_CHECK(e.value() == ((a.reg == 0 ? 0 : x[a.reg]) & mask));
            }
            d.add_all(e.address, e.size, e.reg, e.sign_extend, e.insn_length, e.is_read());
        } else if constexpr (std::is_same_v<E, vcpu::halt>) {
            VCPU_FUZZ_CHECK(virt_insn_bits(t) == 0x10500073 && !e.wait_for_event);
        } else if constexpr (std::is_same_v<E, rv::csr_access>) {
            const std::uint32_t b = virt_insn_bits(t);
            const unsigned f3 = (b >> 12) & 7, rd = (b >> 7) & 31, rs1 = (b >> 15) & 31;
            const std::uint64_t src = f3 >= 5 ? rs1 : (rs1 == 0 ? 0 : x[rs1]);
            VCPU_FUZZ_CHECK(e.id == (b >> 20) && e.gpr == rd);
            VCPU_FUZZ_CHECK(e.result == (rd == 0 ? vcpu::answer_slot{} : slot(rd)));
            const std::uint64_t old = 0x0ff00ff00ff00ff0ull;
            VCPU_FUZZ_CHECK(e.updated(old) == ((f3 & 3) == 1 ? src : (f3 & 3) == 2 ? (old | src) : (old & ~src)));
            VCPU_FUZZ_CHECK(e.is_read() == (e.write_mask == 0));
            d.add_all(e.id, e.gpr, e.write_mask, e.new_value);
        } else if constexpr (std::is_same_v<E, rv::virtual_instruction>) {
            const std::uint32_t b = virt_insn_bits(t);
            VCPU_FUZZ_CHECK(e.insn == b && e.length == ((b & 3) == 3 ? 4 : 2) && e.pc == t.sepc);
            d.add_all(e.insn, e.length, e.pc);
        } else if constexpr (std::is_same_v<E, rv::guest_exception>) {
            VCPU_FUZZ_CHECK(e.code == code && e.tval == t.stval && e.pc == t.sepc);
            d.add_all(e.code, e.tval, e.pc);
        } else {
            VCPU_FUZZ_CHECK(!"the HS-trap decoder produced an exit kind it never should");
        }
    }
};

vcpu_fuzz::digest decode_checked(const record& r, std::size_t& type) {
    vcpu_fuzz::digest d;
    rv::decode(r.t, [&](auto& e) {
        using E = std::remove_cvref_t<decltype(e)>;
        static_assert(vcpu::list_contains_v<E, list>);
        ++d.calls;
        type = index_of_v<E, list>;
        d.add(type);
        checker{r}(e, d);
    });
    VCPU_FUZZ_CHECK(d.calls == 1);
    return d;
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    auto seed = [&](std::string name, std::uint64_t scause, std::uint64_t stval, std::uint64_t htval,
                    std::uint64_t htinst, std::uint32_t fetched, std::array<std::uint64_t, 18> x = {},
                    bool frame = true) {
        bytes_out b;
        b.put(scause).put(stval).put(htval).put(htinst).put(std::uint64_t{0x80200000}).put(fetched).put(std::uint8_t{frame});
        for (unsigned i = 0; i < 32; ++i) b.put(i < x.size() ? x[i] : 0x0101010101010101ull * i);
        b.put(std::uint64_t{0xeeeeeeeeeeeeeeee});
        out.add(std::move(name), b);
    };
    const std::uint64_t irq = 1ull << 63;
    seed("irq_vs_timer", irq | 6, 0, 0, 0, 0);
    seed("irq_s_external", irq | 9, 0, 0, 0, 0);
    seed("irq_reserved_3", irq | 3, 0, 0, 0, 0);
    // ecall from VS-mode: SBI calls (a7 = EID at x[17], a6 = FID at x[16], args a0-a5).
    auto sbi = [&](std::string name, std::uint64_t ext, std::uint64_t fid, std::uint64_t a0 = 0, std::uint64_t a1 = 0,
                   std::uint64_t a2 = 0) {
        std::array<std::uint64_t, 18> x{};
        x[10] = a0, x[11] = a1, x[12] = a2, x[16] = fid, x[17] = ext;
        seed(std::move(name), 10, 0, 0, 0, 0, x);
    };
    sbi("sbi_legacy_putchar", 0x01, 0, 'A');
    sbi("sbi_legacy_getchar", 0x02, 0);
    sbi("sbi_legacy_set_timer", 0x00, 0, 99);
    sbi("sbi_legacy_shutdown", 0x08, 0);
    sbi("sbi_probe", 0x10, 3, 0x48534D);
    sbi("sbi_hart_start", 0x48534D, 0, 1, 0x80200000, 0x1000);
    sbi("sbi_hart_stop", 0x48534D, 1);
    sbi("sbi_hart_status", 0x48534D, 2, 3);
    sbi("sbi_srst_cold", 0x53525354, 0, 1, 0);
    sbi("sbi_dbcn_write", 0x4442434E, 0, 12, 0x80300000, 0);
    sbi("sbi_dbcn_read", 0x4442434E, 1, 4, 0x80300000, 0);
    sbi("sbi_dbcn_write_byte", 0x4442434E, 2, 'z');
    sbi("sbi_time", 0x54494D45, 0, 5000);
    seed("ecall_no_frame", 10, 0, 0, 0, 0, {}, false);
    // Guest page faults: htval = GPA >> 2.
    const std::uint64_t gpa = 0x10000000 >> 2;
    seed("gpf_insn", 20, 0x80001000, gpa, 0, 0);
    seed("gpf_load_lw_htinst", 21, 0x10000004, gpa, 0x0002a503 & ~(31u << 15), 0);          // lw a0 (transformed)
    seed("gpf_load_lbu_compressed", 21, 0x10000000, gpa, (0x00054583 & ~(31u << 15)) & ~2u, 0); // lbu a1, from a 16-bit insn
    seed("gpf_store_sd_htinst", 23, 0x10000008, gpa, 0x00a5b023 & ~(31u << 15), 0, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1122334455667788});
    seed("gpf_store_sb_x0", 23, 0x10000001, gpa, 0x00000023, 0);
    seed("gpf_load_fetched_lh", 21, 0x10000002, gpa, 0, 0x00251503);       // lh a0, 2(a0)
    seed("gpf_load_fetched_c_lw", 21, 0x10000004, gpa, 0, 0x4148);         // c.lw a0, 4(a0)
    seed("gpf_store_fetched_c_sdsp", 23, 0x10000008, gpa, 0, 0xe42a);      // c.sdsp a0, 8(sp)
    seed("gpf_load_fetched_c_lh", 21, 0x10000002, gpa, 0, 0x8440 | 0x40);   // Zcb c.lh
    seed("gpf_no_insn", 21, 0x10000000, gpa, 0, 0);
    seed("gpf_pseudo_read64", 21, 0x10000000, gpa, 0x3000, 0);
    seed("gpf_pseudo_write32", 23, 0x10000000, gpa, 0x2020, 0);
    seed("gpf_htinst_reserved", 21, 0x10000000, gpa, 0x1234, 0);
    seed("gpf_htinst_64bit", 21, 0x10000000, gpa, 0x100000003ull, 0);
    seed("gpf_direction_mismatch", 21, 0x10000000, gpa, 0x00a5b023 & ~(31u << 15), 0);
    seed("gpf_amo_is_npf", 23, 0x10000000, gpa, 0x0aa5302f, 0);
    seed("gpf_load_no_frame", 21, 0x10000000, gpa, 0x0002a503 & ~(31u << 15), 0, {}, false);
    // Virtual instructions.
    seed("virt_wfi", 22, 0x10500073, 0, 0, 0);
    seed("virt_csrr_a0_time", 22, 0xc0102573, 0, 0, 0);   // csrr a0, time
    seed("virt_csrw_x0", 22, 0, 0, 0, 0x14051073);        // csrw sscratch, a0 (fetched)
    seed("virt_csrrsi", 22, 0x1401e5f3, 0, 0, 0);         // csrrsi a1, sscratch, 3
    seed("virt_csrrc", 22, 0x1405b673, 0, 0, 0);          // csrrc a2, sscratch, a1
    seed("virt_sret", 22, 0x10200073, 0, 0, 0);
    seed("virt_compressed", 22, 0x9002, 0, 0, 0);         // c.ebreak
    seed("illegal_insn", 2, 0xffffffff, 0, 0, 0);
    seed("ecall_u", 8, 0, 0, 0, 0);
    seed("store_page_fault", 15, 0xdead0000, 0, 0, 0);
    seed("reserved_code_14", 14, 0, 0, 0, 0);
    seed("reserved_code_24", 24, 0, 0, 0, 0);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    record r;
    r.t.scause = in.get<std::uint64_t>();
    r.t.stval = in.get<std::uint64_t>();
    r.t.htval = in.get<std::uint64_t>();
    r.t.htinst = in.get<std::uint64_t>();
    r.t.sepc = in.get<std::uint64_t>();
    r.t.fetched_insn = in.get<std::uint32_t>();
    r.has_frame = in.flag();
    for (auto& w : r.before.x) w = in.get<std::uint64_t>();
    for (auto& b : r.before.mmio) b = std::byte{in.get<std::uint8_t>()};

    check_insn_decoders(r.t.fetched_insn, r.before.x[1]);
    check_insn_decoders(static_cast<std::uint32_t>(r.t.htinst), r.t.stval);
    check_insn_decoders(static_cast<std::uint32_t>(r.t.stval), r.t.htval);

    record a = r.copy(), b = r.copy();
    std::size_t ta = list::size, tb = list::size;
    const auto da = decode_checked(a, ta);
    const auto db = decode_checked(b, tb);
    VCPU_FUZZ_CHECK(da == db && ta == tb);
    rv::hs_guest_frame want{};
    std::optional<why> w;
    VCPU_FUZZ_CHECK(ta == expect(r, want, w));
    if (w) VCPU_FUZZ_CHECK(da.v[1] == static_cast<unsigned>(*w));
    if (r.has_frame) VCPU_FUZZ_CHECK(same(*a.frame, want) && same(*b.frame, want));
    vcpu_fuzz::note("trap: scause 0x%llx htinst 0x%llx -> exit type #%zu%s", static_cast<unsigned long long>(r.t.scause),
                    static_cast<unsigned long long>(r.t.htinst), ta, w ? " (malformed)" : "");
    if (!r.has_frame) return 0;

    // Answer through every slot and complete loads: only rd / a0 / a1 change, never x0.
    record c = r.copy();
    const std::uint64_t v = 0xfedcba9876543210ull;
    rv::decode(c.t, [&](auto& e) {
        using E = std::remove_cvref_t<decltype(e)>;
        if constexpr (std::is_same_v<E, rv::mmio_trap>) {
            if (e.is_read()) {
                e.set(v);
                e.write_back(*c.frame);
                if (e.reg != 0) want.x[e.reg] = ref_extend(v, e.size, e.sign_extend);
                for (unsigned i = 0; i < e.size; ++i) want.mmio[i] = static_cast<std::byte>(v >> (8 * i));
            }
        } else if constexpr (std::is_same_v<E, rv::csr_access>) {
            e.answer(v);
            if (e.gpr != 0) want.x[e.gpr] = v;
        } else if (vcpu_fuzz::rv::answer_sbi(e)) {
            want.x[10] = c.frame->x[10];
            want.x[11] = c.frame->x[11];
            // Legacy calls return only a0 (SBI spec chapter 5).
            if (r.before.x[17] <= 0x0f) VCPU_FUZZ_CHECK(c.frame->x[11] == r.before.x[11]);
        }
    });
    VCPU_FUZZ_CHECK(same(*c.frame, want));
    VCPU_FUZZ_CHECK(c.frame->x[0] == r.before.x[0]);
    return 0;
}
