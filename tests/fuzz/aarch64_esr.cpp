// Fuzzes the AArch64 EL2 syndrome decoder (arch/aarch64/exits.hpp: decode(const el2_syndrome&)
// and complete_mmio_read).
//
// Input: u64 ESR_EL2, u64 FAR_EL2, u64 HPFAR_EL2, u8 vector (any value, also undefined ones),
// u32 INTID, u8 "has a GPR frame" flag, then X0..X31 (u64 each; X31 is the XZR discard slot).
// The frame is a heap object of its exact size, so ASan reports any access past it.
// Invariants: one visit with a type of exit_types; the exit kind and its fields are the ones
// ARM DDI 0487 D17.2.37 gives for the syndrome (an oracle written from the manual, with raw
// shifts rather than the library's bit fields); decoding is deterministic; the only frame
// writes are X31 := 0 and, for an emulated MMIO read, Xt := 0; every answer slot and data view
// is the frame word the syndrome names (SRT/Rt/X0/X1); answers change only that word; an MMIO
// read answered through `mmio_access::set` or through the portable `mmio::set` +
// `complete_mmio_read` leaves Xt as the load would (size, SSE, SF); complete_mmio_read is
// idempotent and leaves every other syndrome's frame alone.
#include "fuzz.hpp"
#include "kvm_run_common.hpp" // index_of_v

#include <arch/aarch64/arch.hpp>

#include <memory>

namespace {

namespace a64 = vcpu::aarch64;
using list = a64::exit_types;
using vcpu_fuzz::index_of_v;
using why = vcpu::malformed_exit::why;

std::uint64_t bits(std::uint64_t v, unsigned lo, unsigned n) { return (v >> lo) & ((std::uint64_t{1} << n) - 1); }

/// ARM DDI 0487 D17.2.37, "EC, bits [31:26]": the defined exception classes.
bool ec_defined(unsigned ec) {
    static constexpr unsigned defined[] = {0x00, 0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0c,
                                           0x0d, 0x0e, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
                                           0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x24, 0x25, 0x26,
                                           0x27, 0x28, 0x2c, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x38,
                                           0x3a, 0x3c};
    for (unsigned d : defined)
        if (d == ec) return true;
    return false;
}

/// The data-abort ISS fields (D17.2.37, "ISS encoding for an exception from a Data Abort").
struct dabt {
    bool isv, sse, sf, ar, fnv, ea, cm, s1ptw, wnr;
    unsigned sas, srt;
    explicit dabt(std::uint64_t e)
        : isv(bits(e, 24, 1)), sse(bits(e, 21, 1)), sf(bits(e, 15, 1)), ar(bits(e, 14, 1)), fnv(bits(e, 10, 1)),
          ea(bits(e, 9, 1)), cm(bits(e, 8, 1)), s1ptw(bits(e, 7, 1)), wnr(bits(e, 6, 1)),
          sas(static_cast<unsigned>(bits(e, 22, 2))), srt(static_cast<unsigned>(bits(e, 16, 5))) {}
    [[nodiscard]] bool not_an_access() const { return s1ptw || cm || ea; }
    [[nodiscard]] bool no_syndrome() const { return !isv || fnv; }
    [[nodiscard]] bool forged() const { return sas == 3 && (!sf || sse); }
    [[nodiscard]] bool emulated() const { return !not_an_access() && !no_syndrome() && !forged(); }
};

/// What a load of `size` bytes leaves in Xt for memory value `v` (SSE, then Wt/Xt).
std::uint64_t loaded(std::uint64_t v, unsigned size, bool sse, bool sf) {
    if (size < 8) {
        const unsigned b = size * 8;
        v &= (std::uint64_t{1} << b) - 1;
        if (sse && ((v >> (b - 1)) & 1)) v |= ~std::uint64_t{0} << b;
    }
    return sf ? v : (v & 0xffffffffu);
}

struct record {
    a64::el2_syndrome s{};
    std::unique_ptr<a64::gpr_frame> frame;
    a64::gpr_frame before{};
    bool has_frame = false;

    [[nodiscard]] record copy() const {
        record c;
        c.s = s;
        c.before = before;
        c.has_frame = has_frame;
        if (has_frame) {
            c.frame = std::make_unique<a64::gpr_frame>(before);
            c.s.gprs = c.frame.get();
        }
        return c;
    }
    [[nodiscard]] vcpu::record_u64* x(unsigned i) const { return &frame->x[i]; }
};

std::uint64_t ipa_of(const a64::el2_syndrome& s) { return (bits(s.hpfar, 4, 44) << 12) | (s.far & 0xfff); }

/// The exit the manual gives, and the frame the decode must leave.
std::size_t expect(const record& r, a64::gpr_frame& after, std::optional<why>& w) {
    const auto& s = r.s;
    after = r.before;
    switch (static_cast<unsigned>(s.vector)) {
    case 1: case 2: return index_of_v<vcpu::external_interrupt, list>;
    case 3: return index_of_v<vcpu::unknown, list>;
    case 0: break;
    default: w = why::encoding; return index_of_v<vcpu::malformed_exit, list>;
    }
    const auto ec = static_cast<unsigned>(bits(s.esr, 26, 6));
    if (!ec_defined(ec) || !r.has_frame) {
        w = why::encoding;
        return index_of_v<vcpu::malformed_exit, list>;
    }
    switch (ec) {
    case 0x01: return index_of_v<vcpu::halt, list>;
    case 0x16:
    case 0x17: {
        const auto fid = static_cast<std::uint32_t>(r.before.x[0]);
        const auto p = a64::psci::decode(fid);
        if (bits(s.esr, 0, 16) != 0 || !p) return index_of_v<a64::smccc_call, list>;
        using f = a64::psci::function;
        switch (p->fn) {
        case f::cpu_on: return index_of_v<vcpu::cpu_up, list>;
        case f::cpu_off: return index_of_v<vcpu::cpu_down, list>;
        case f::system_off: case f::system_reset: case f::system_reset2:
            return index_of_v<vcpu::system_event, list>;
        default: return index_of_v<a64::psci_call, list>;
        }
    }
    case 0x18: after.x[31] = 0; return index_of_v<vcpu::sysreg, list>;
    case 0x20: return index_of_v<vcpu::nested_page_fault, list>;
    case 0x24: {
        const dabt d(s.esr);
        if (d.not_an_access()) return index_of_v<vcpu::nested_page_fault, list>;
        if (d.no_syndrome()) return index_of_v<a64::nisv_abort, list>;
        if (d.forged()) {
            w = why::encoding;
            return index_of_v<vcpu::malformed_exit, list>;
        }
        after.x[31] = 0;
        if (!d.wnr) after.x[d.srt] = 0;
        return index_of_v<a64::mmio_access, list>;
    }
    case 0x30: case 0x32: case 0x34: case 0x3c: return index_of_v<vcpu::debug, list>;
    default: return index_of_v<vcpu::unknown, list>;
    }
}

/// Field checks (the frame is the live one, already modified by the decode) and a digest.
struct checker {
    const record& r;
    template <class E>
    void operator()(const E& e, vcpu_fuzz::digest& d) const {
        const auto& s = r.s;
        const auto& x0 = r.before.x;
        const auto slot = [&](unsigned i) { return vcpu::answer_slot(r.x(i)); };
        const auto ec = static_cast<unsigned>(bits(s.esr, 26, 6));
        if constexpr (std::is_same_v<E, vcpu::external_interrupt>) {
            VCPU_FUZZ_CHECK(e.vector == s.intid);
            d.add(e.vector);
        } else if constexpr (std::is_same_v<E, vcpu::unknown>) {
            if (s.vector == a64::el2_vector::serror) VCPU_FUZZ_CHECK(e.raw == 0x2f && e.detail == s.esr);
            else VCPU_FUZZ_CHECK(e.raw == ec && e.detail == s.esr);
            d.add_all(e.raw, e.detail);
        } else if constexpr (std::is_same_v<E, vcpu::malformed_exit>) {
            d.add_all(static_cast<unsigned>(e.reason), e.raw_reason, e.value);
        } else if constexpr (std::is_same_v<E, vcpu::halt>) {
            VCPU_FUZZ_CHECK(e.wait_for_event == (bits(s.esr, 0, 1) != 0));
            d.add(e.wait_for_event);
        } else if constexpr (std::is_same_v<E, a64::smccc_call>) {
            VCPU_FUZZ_CHECK(e.nr == x0[0] && e.smc == (ec == 0x17) && e.imm16 == bits(s.esr, 0, 16));
            for (unsigned i = 0; i < 6; ++i) VCPU_FUZZ_CHECK(e.args[i] == x0[i + 1]);
            VCPU_FUZZ_CHECK(e.ret == slot(0) && e.ret2 == slot(1));
            d.add_all(e.nr, e.smc, e.imm16);
        } else if constexpr (std::is_same_v<E, vcpu::cpu_up> || std::is_same_v<E, a64::psci_call> ||
                             std::is_same_v<E, vcpu::system_event> || std::is_same_v<E, vcpu::cpu_down>) {
            const auto fid = static_cast<std::uint32_t>(x0[0]);
            const auto p = a64::psci::decode(fid);
            VCPU_FUZZ_CHECK(p.has_value());
            // SMC32 calls pass W registers: the upper halves are ignored (DEN 0022 §5.1).
            const std::uint64_t m = (fid & (1u << 30)) != 0 ? ~0ull : 0xffffffffull;
            if constexpr (std::is_same_v<E, vcpu::cpu_up>) {
                VCPU_FUZZ_CHECK(e.target == (x0[1] & m) && e.entry == (x0[2] & m) && e.context == (x0[3] & m));
                VCPU_FUZZ_CHECK(e.ret == slot(0));
                d.add_all(e.target, e.entry, e.context);
            } else if constexpr (std::is_same_v<E, a64::psci_call>) {
                VCPU_FUZZ_CHECK(e.function_id == fid && e.id == *p && e.ret == slot(0));
                for (unsigned i = 0; i < 3; ++i) VCPU_FUZZ_CHECK(e.args[i] == (x0[i + 1] & m));
                d.add_all(e.function_id);
            } else if constexpr (std::is_same_v<E, vcpu::system_event>) {
                using k = vcpu::system_event::kind;
                const bool off = (fid & 0xff) == 0x08;
                VCPU_FUZZ_CHECK(e.what == (off ? k::power_off : k::reset) && e.raw_type == fid);
                if ((fid & 0xff) == 0x12) VCPU_FUZZ_CHECK(e.ndata == 2 && e.data[0] == (x0[1] & m) && e.data[1] == (x0[2] & m));
                else VCPU_FUZZ_CHECK(e.ndata == 0);
                d.add_all(static_cast<unsigned>(e.what), e.raw_type, e.ndata);
            }
        } else if constexpr (std::is_same_v<E, vcpu::sysreg>) {
            const std::uint64_t iss = bits(s.esr, 0, 25);
            const auto rt = static_cast<unsigned>(bits(iss, 5, 5));
            const bool rd = bits(iss, 0, 1) != 0;
            const std::uint64_t id = bits(iss, 20, 2) << 14 | bits(iss, 14, 3) << 11 | bits(iss, 10, 4) << 7 |
                                     bits(iss, 1, 4) << 3 | bits(iss, 17, 3);
            VCPU_FUZZ_CHECK(e.id == id && e.gpr == rt && e.is_read() == rd && e.fault == nullptr);
            VCPU_FUZZ_CHECK(e.value == (rd || rt == 31 ? 0 : x0[rt]));
            VCPU_FUZZ_CHECK(e.result == (rd ? slot(rt) : vcpu::answer_slot{}));
            d.add_all(e.id, e.gpr, e.is_read(), e.value);
        } else if constexpr (std::is_same_v<E, vcpu::nested_page_fault>) {
            VCPU_FUZZ_CHECK(e.address == ipa_of(s) && e.syndrome == s.esr && e.size == 0);
            if (ec == 0x20) {
                VCPU_FUZZ_CHECK(e.exec && !e.read && !e.write);
            } else {
                const dabt da(s.esr);
                VCPU_FUZZ_CHECK(!e.exec && e.write == da.wnr && e.read == !da.wnr);
            }
            d.add_all(e.address, e.read, e.write, e.exec);
        } else if constexpr (std::is_same_v<E, a64::nisv_abort>) {
            VCPU_FUZZ_CHECK(e.esr_iss == bits(s.esr, 0, 25) && e.ipa == ipa_of(s));
            d.add_all(e.esr_iss, e.ipa);
        } else if constexpr (std::is_same_v<E, a64::mmio_access>) {
            const dabt da(s.esr);
            VCPU_FUZZ_CHECK(e.address == ipa_of(s) && e.size == (1u << da.sas));
            VCPU_FUZZ_CHECK(e.is_write() == da.wnr && e.srt == da.srt && e.sign_extend == da.sse && e.sf == da.sf &&
                            e.acquire_release == da.ar);
            VCPU_FUZZ_CHECK(e.reg == r.x(da.srt));
            VCPU_FUZZ_CHECK(e.data.size() == e.size && static_cast<void*>(e.data.data()) == r.x(da.srt));
            VCPU_FUZZ_CHECK(vcpu_fuzz::inside(e.data.data(), e.data.size(), r.frame.get(), sizeof(a64::gpr_frame)));
            // Writes carry the low bytes of Xt (XZR: zero); reads start from zero.
            const std::uint64_t xt = da.srt == 31 ? 0 : x0[da.srt];
            const std::uint64_t mask = e.size == 8 ? ~0ull : (1ull << (8 * e.size)) - 1;
            VCPU_FUZZ_CHECK(e.value() == (da.wnr ? (xt & mask) : 0));
            d.add_all(e.address, e.size, e.is_write(), e.srt, e.sign_extend, e.sf, e.acquire_release);
        } else if constexpr (std::is_same_v<E, vcpu::debug>) {
            VCPU_FUZZ_CHECK(e.exception == ec && e.status == s.esr && e.address == s.far && e.pc == 0 && e.control == 0);
            d.add_all(e.exception, e.status, e.address);
        } else {
            VCPU_FUZZ_CHECK(!"the EL2 decoder produced an exit kind it never should");
        }
    }
};

vcpu_fuzz::digest decode_checked(const record& r, std::size_t& type) {
    vcpu_fuzz::digest d;
    a64::decode(r.s, [&](auto& e) {
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

bool same(const a64::gpr_frame& a, const a64::gpr_frame& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    auto seed = [&](std::string name, std::uint64_t esr, std::array<std::uint64_t, 4> x = {},
                    std::uint8_t vector = 0, bool frame = true, std::uint64_t far = 0x1234,
                    std::uint64_t hpfar = 0x0900000ull >> 8) {
        bytes_out b;
        b.put(esr).put(far).put(hpfar).put(vector).put(std::uint32_t{27}).put(std::uint8_t{frame});
        for (unsigned i = 0; i < 32; ++i) b.put(i < 4 ? x[i] : 0x1111111111111111ull * (i % 15 + 1));
        out.add(std::move(name), b);
    };
    using ec = a64::exception_class;
    namespace e = a64::esr;
    seed("irq", 0, {}, 1);
    seed("fiq", 0, {}, 2);
    seed("serror", 0xbe000000, {}, 3);
    seed("vector_9", 0, {}, 9);
    seed("wfi", e::make(ec::wfx, 0));
    seed("wfe", e::make(ec::wfx, 1));
    seed("reserved_ec_0x02", e::make(static_cast<ec>(0x02), 0));
    seed("no_frame", e::make(ec::hvc64, 0), {}, 0, false);
    // HVC/SMC: PSCI and generic SMCCC.
    const auto psci = [](a64::psci::function f, bool is64) {
        return std::uint64_t{is64 ? a64::psci::id64(f) : a64::psci::id32(f)};
    };
    using pf = a64::psci::function;
    seed("psci_cpu_on64", e::make(ec::hvc64, 0), {psci(pf::cpu_on, true), 1, 0x40080000, 0xdead});
    seed("psci_cpu_on32", e::make(ec::smc64, 0), {psci(pf::cpu_on, false), 0xffffffff00000001, 0x40080000, 7});
    seed("psci_cpu_off", e::make(ec::hvc64, 0), {psci(pf::cpu_off, false)});
    seed("psci_system_off", e::make(ec::hvc64, 0), {psci(pf::system_off, false)});
    seed("psci_system_reset", e::make(ec::smc64, 0), {psci(pf::system_reset, false)});
    seed("psci_system_reset2", e::make(ec::hvc64, 0), {psci(pf::system_reset2, true), 0x80000001, 42});
    seed("psci_version", e::make(ec::hvc64, 0), {psci(pf::version, false)});
    seed("psci_features", e::make(ec::hvc64, 0), {psci(pf::features, false), psci(pf::cpu_on, true)});
    seed("psci_system_off_smc64", e::make(ec::hvc64, 0), {psci(pf::system_off, true)});
    seed("smccc_hvc_imm", e::make(ec::hvc64, 0x1234), {psci(pf::version, false)});
    seed("smccc_vendor", e::make(ec::smc64, 0), {0xc6000001, 1, 2, 3});
    // MSR/MRS: read CNTVCT_EL0 (3,3,14,0,2) into X5; write X31 (XZR) to a register.
    const auto sys = [](unsigned op0, unsigned op1, unsigned crn, unsigned crm, unsigned op2, unsigned rt, bool rd) {
        return e::make(ec::sys64, op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | rt << 5 | crm << 1 | (rd ? 1 : 0));
    };
    seed("mrs_cntvct_x5", sys(3, 3, 14, 0, 2, 5, true));
    seed("msr_x30", sys(3, 0, 1, 0, 0, 30, false));
    seed("msr_xzr", sys(3, 0, 1, 0, 0, 31, false));
    seed("mrs_xzr", sys(3, 0, 0, 0, 5, 31, true));
    // Aborts.
    seed("iabt", e::make(ec::iabt_low, 0x07));
    const auto da = [](unsigned sas, bool sse, unsigned srt, bool sf, bool wnr, unsigned extra = 0) {
        return e::make(ec::dabt_low, 1u << 24 | sas << 22 | (sse ? 1u << 21 : 0) | srt << 16 | (sf ? 1u << 15 : 0) |
                                         (wnr ? 1u << 6 : 0) | extra | 0x07);
    };
    seed("dabt_read_w1", da(2, false, 1, false, false), {0, 0xffffffffffffffff});
    seed("dabt_read_b_sse_x2", da(0, true, 2, true, false));
    seed("dabt_read_h_sse_w3", da(1, true, 3, false, false));
    seed("dabt_write_x4", da(3, false, 4, true, true));
    seed("dabt_write_xzr", da(2, false, 31, false, true));
    seed("dabt_read_xzr", da(0, false, 31, true, false));
    seed("dabt_ldar", da(3, false, 0, true, false, 1u << 14));
    seed("dabt_forged_64_sse", da(3, true, 5, true, false));
    seed("dabt_forged_64_w", da(3, false, 5, false, false));
    seed("dabt_nisv", e::make(ec::dabt_low, 0x47));
    seed("dabt_fnv", da(2, false, 1, true, false, 1u << 10));
    seed("dabt_s1ptw", da(2, false, 1, true, false, 1u << 7));
    seed("dabt_cm", da(2, false, 1, true, false, 1u << 8));
    seed("dabt_ea_read", da(2, false, 1, false, false, 1u << 9), {0, 0x123456789});
    seed("brk", e::make(ec::brk64, 0x800));
    seed("watchpoint", e::make(ec::watchpoint_low, 0x22));
    seed("software_step", e::make(ec::software_step_low, 0));
    seed("breakpoint", e::make(ec::breakpoint_low, 0));
    seed("sve_unknown", e::make(ec::sve, 0));
    seed("ec_unknown_0", 0);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    record r;
    r.s.esr = in.get<std::uint64_t>();
    r.s.far = in.get<std::uint64_t>();
    r.s.hpfar = in.get<std::uint64_t>();
    r.s.vector = static_cast<a64::el2_vector>(in.get<std::uint8_t>());
    r.s.intid = in.get<std::uint32_t>();
    r.has_frame = in.flag();
    for (auto& w : r.before.x) w = in.get<std::uint64_t>();

    // Two decodes of identical records: same exit, same frame afterwards.
    record a = r.copy(), b = r.copy();
    std::size_t ta = list::size, tb = list::size;
    const auto da = decode_checked(a, ta);
    const auto db = decode_checked(b, tb);
    VCPU_FUZZ_CHECK(da == db && ta == tb);
    if (r.has_frame) VCPU_FUZZ_CHECK(same(*a.frame, *b.frame));

    a64::gpr_frame want{};
    std::optional<why> w;
    const std::size_t want_type = expect(r, want, w);
    VCPU_FUZZ_CHECK(ta == want_type);
    if (w) VCPU_FUZZ_CHECK(da.v[1] == static_cast<unsigned>(*w));
    if (r.has_frame) VCPU_FUZZ_CHECK(same(*a.frame, want)); // the only side effects
    vcpu_fuzz::note("esr: vector %u EC 0x%02x -> exit type #%zu%s", static_cast<unsigned>(r.s.vector),
                    static_cast<unsigned>(bits(r.s.esr, 26, 6)), ta, w ? " (malformed)" : "");

    // complete_mmio_read on a frame the decode left alone is a no-op unless this is an MMIO read
    // the decoder emulated; it is idempotent.
    if (r.has_frame) {
        const dabt d(r.s.esr);
        const bool mmio_read = ta == index_of_v<a64::mmio_access, list> && !d.wnr;
        a64::complete_mmio_read(a.s);
        if (!mmio_read) VCPU_FUZZ_CHECK(same(*a.frame, want));
        const a64::gpr_frame once = *a.frame;
        a64::complete_mmio_read(a.s);
        VCPU_FUZZ_CHECK(same(*a.frame, once));
    }

    // Answer through every slot / view; only the named word may change, and reads complete as
    // the load instruction would.
    if (!r.has_frame) return 0;
    for (int portable = 0; portable < 2; ++portable) {
        record c = r.copy();
        std::size_t t = list::size;
        int changed_word = -1;
        const std::uint64_t v = 0x8899aabbccddeeffull;
        a64::decode(c.s, [&](auto& e) {
            using E = std::remove_cvref_t<decltype(e)>;
            t = index_of_v<E, list>;
            if constexpr (std::is_same_v<E, a64::mmio_access>) {
                if (e.is_read()) {
                    changed_word = e.srt;
                    if (portable) static_cast<const vcpu::mmio&>(e).set(v); // data view only
                    else e.set(v);
                }
            } else if constexpr (std::is_same_v<E, vcpu::sysreg>) {
                if (e.is_read()) changed_word = e.gpr;
                e.answer(v);
            } else if constexpr (std::is_same_v<E, a64::smccc_call>) {
                e.answer(v, v + 1);
                changed_word = 0; // and 1
            } else if constexpr (std::is_same_v<E, vcpu::cpu_up> || std::is_same_v<E, a64::psci_call>) {
                e.answer(v);
                changed_word = 0;
            }
        });
        a64::gpr_frame expect_after = want;
        const dabt d(r.s.esr);
        if (t == index_of_v<a64::mmio_access, list>) {
            a64::complete_mmio_read(c.s);
            if (!d.wnr) {
                // The register gets the load's value; XZR stays zero.
                expect_after.x[d.srt] = d.srt == 31 ? 0 : loaded(v, 1u << d.sas, d.sse, d.sf);
            }
        } else if (t == index_of_v<vcpu::sysreg, list> && changed_word >= 0) {
            expect_after.x[changed_word] = v;
        } else if (t == index_of_v<a64::smccc_call, list>) {
            expect_after.x[0] = v;
            expect_after.x[1] = v + 1;
        } else if (changed_word == 0) {
            expect_after.x[0] = v;
        }
        VCPU_FUZZ_CHECK(same(*c.frame, expect_after));
    }
    return 0;
}
