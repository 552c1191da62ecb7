#pragma once
/// \file
/// `x86_64_vcpu_state`: the whole state of one x86-64 KVM vCPU as one value, saved from a vCPU,
/// loaded into another (same process or, through `serialize` / `deserialize`, another one), in
/// KVM's documented order (KVM API 4.10 on completing I/O before reading state; the selftests'
/// `vcpu_save_state` / `vcpu_load_state` and QEMU's `kvm_arch_get/put_registers`). docs/state.md.
///
/// Compiled only on x86-64 hosts; elsewhere this header is empty.

#include <kvm/x86_64_calls.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <arch/x86_64/abi.hpp>
#include <arch/x86_64/arch.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace vcpu::kvm {

/// Header of a serialized `x86_64_vcpu_state` (little-endian, host ABI; the sections follow in
/// the order of `x86_64_vcpu_state`'s members, each the kernel struct's bytes).
struct x86_64_state_header {
    std::array<char, 8> magic{};   ///< `x86_64_state_header::magic_v`
    std::uint32_t version = 0;     ///< `x86_64_state_header::current_version`
    std::uint32_t header_size = 0; ///< `sizeof(x86_64_state_header)`
    std::uint32_t flags = 0;       ///< `flag_*`
    std::uint32_t xsave_size = 0;  ///< bytes of the XSAVE section (0: an FPU section instead)
    std::uint32_t msr_count = 0;   ///< 16-byte MSR entries in the last section
    std::uint32_t tsc_khz = 0;     ///< guest TSC frequency (0: not saved)
    std::uint64_t body_size = 0;   ///< bytes after the header
    std::uint64_t body_hash = 0;   ///< FNV-1a 64 of the header (this field 0) and the body

    /// The first 8 bytes of every blob: "vcpux86s".
    static constexpr std::array<char, 8> magic_v{'v', 'c', 'p', 'u', 'x', '8', '6', 's'};
    /// The format version this library writes and reads (others are refused).
    static constexpr std::uint32_t current_version = 1;
    static constexpr std::uint32_t flag_xcrs = 1u << 0;  ///< an XCRS section is present
    static constexpr std::uint32_t flag_lapic = 1u << 1; ///< a LAPIC section is present
    /// Every flag this version defines; a blob with others is refused.
    static constexpr std::uint32_t known_flags = flag_xcrs | flag_lapic;
};
static_assert(std::is_standard_layout_v<x86_64_state_header> && std::is_trivially_copyable_v<x86_64_state_header>);
static_assert(sizeof(x86_64_state_header) == 48 && offsetof(x86_64_state_header, version) == 8 &&
              offsetof(x86_64_state_header, header_size) == 12 && offsetof(x86_64_state_header, flags) == 16 &&
              offsetof(x86_64_state_header, xsave_size) == 20 && offsetof(x86_64_state_header, msr_count) == 24 &&
              offsetof(x86_64_state_header, tsc_khz) == 28 && offsetof(x86_64_state_header, body_size) == 32 &&
              offsetof(x86_64_state_header, body_hash) == 40,
              "kvm: x86_64_state_header is a file format: its layout must not change within a version");

/// Everything KVM holds for one x86-64 vCPU (without nested state, which remains to do).
struct x86_64_vcpu_state {
    ::vcpu::x86_64::regs_layout regs{};   ///< general-purpose registers, RIP, RFLAGS (KVM_GET_REGS)
    ::vcpu::x86_64::sregs_layout sregs{}; ///< segments, control registers, EFER, APIC base (KVM_GET_SREGS)
    xsave_area xsave;     ///< empty when the host has no `KVM_CAP_XSAVE` (then `fpu`)
    ::kvm_fpu fpu{};      ///< only when `xsave` is empty
    bool has_xcrs = false; ///< `xcrs` was saved (the host has KVM_CAP_XCRS)
    ::kvm_xcrs xcrs{};     ///< extended control registers, XCR0 (KVM_GET_XCRS)
    bool has_lapic = false; ///< false without the in-kernel irqchip (KVM_GET_LAPIC: ENXIO)
    ::kvm_lapic_state lapic{}; ///< the in-kernel local APIC's register page (KVM_GET_LAPIC)
    std::uint32_t mp_state = 0; ///< `KVM_MP_STATE_*` (running, halted, waiting for SIPI...)
    ::vcpu::x86_64::events_layout events{}; ///< pending exception, interrupt, NMI, SMI (KVM_GET_VCPU_EVENTS)
    ::vcpu::x86_64::debugregs_layout debugregs{}; ///< DR0-DR3, DR6, DR7 (KVM_GET_DEBUGREGS)
    std::vector<::vcpu::x86_64::msr_entry> msrs; ///< every MSR of the index list KVM could read
    std::uint32_t tsc_khz = 0;                   ///< 0 when KVM_GET_TSC_KHZ is not available

    /// Saves `cpu`'s state. First completes an exit KVM has not finished (`complete_pending_io(true)`,
    /// KVM API 4.10: "the userspace must call KVM_RUN ... before reading state"; `true`: an OUT or
    /// MMIO write too, whose instruction KVM skips only then — saved before, RIP would still point
    /// at it and the restored vCPU would repeat it), then reads:
    /// events and mp_state first (KVM_GET_MP_STATE accepts pending INIT/SIPI and
    /// KVM_GET_VCPU_EVENTS folds pending NMIs/SMIs, either of which may change the other
    /// state), then regs, sregs, XSAVE (or FPU), XCRs, LAPIC, the MSRs of
    /// KVM_GET_MSR_INDEX_LIST, debug registers, TSC frequency — the selftests' order. Register
    /// blocks come through the vCPU's cache, so writes a handler made and KVM has not applied
    /// yet are part of the state. An MSR of the list KVM refuses to read for this vCPU (its
    /// CPUID lacks the feature) is left out, as QEMU does. Errors: the first failing ioctl's
    /// name and errno (LAPIC: only ENXIO, "no in-kernel irqchip", is absorbed).
    template <class Sys, class Arch>
    [[nodiscard]] static result<x86_64_vcpu_state> save(hal_vcpu<Sys, Arch>& cpu) {
        x86_64_vcpu_state s;
        VCPU_TRY_VOID(cpu.complete_pending_io(true));
        auto ev = get_vcpu_events(cpu);
        if (!ev) return ev.err();
        s.events = *ev;
        auto mp = get_mp_state(cpu);
        if (!mp) return mp.err();
        s.mp_state = *mp;
        auto regs = cpu.template load<::vcpu::x86_64::regs_block>();
        if (!regs) return regs.err();
        s.regs = **regs;
        auto sregs = cpu.template load<::vcpu::x86_64::sregs_block>();
        if (!sregs) return sregs.err();
        s.sregs = **sregs;
        auto xs = xsave_size(cpu);
        if (!xs) return xs.err();
        if (*xs != 0) {
            auto a = get_xsave(cpu, *xs);
            if (!a) return a.err();
            s.xsave = std::move(*a);
        } else {
            auto f = get_fpu(cpu);
            if (!f) return f.err();
            s.fpu = *f;
        }
        const int xcrs_cap = Sys::ioctl(cpu.system_fd(), ioctls::system::check_extension.code, detail::int_arg(KVM_CAP_XCRS));
        if (xcrs_cap < 0) return last_error(ioctls::system::check_extension.name).with("cap", KVM_CAP_XCRS);
        if (xcrs_cap > 0) {
            auto x = get_xcrs(cpu);
            if (!x) return x.err();
            s.xcrs = *x;
            s.has_xcrs = true;
        }
        auto l = get_lapic(cpu);
        if (l) {
            s.lapic = *l;
            s.has_lapic = true;
        } else if (l.err().code != ENXIO) {
            return l.err();
        }
        auto list = msr_index_list(cpu);
        if (!list) return list.err();
        s.msrs.reserve(list->size());
        for (auto i : *list) s.msrs.push_back(::vcpu::x86_64::msr_entry{i, 0, 0});
        // KVM_GET_MSRS stops at the first MSR it cannot read: drop it and go on from the next.
        for (std::size_t at = 0; at < s.msrs.size();) {
            auto n = get_msrs(cpu, std::span(s.msrs).subspan(at));
            if (!n) return n.err();
            at += *n;
            if (at < s.msrs.size()) s.msrs.erase(s.msrs.begin() + static_cast<std::ptrdiff_t>(at));
        }
        auto dr = get_debugregs(cpu);
        if (!dr) return dr.err();
        s.debugregs = *dr;
        if (auto t = get_tsc_khz(cpu)) s.tsc_khz = *t;
        else if (t.err().code != ENOTTY && t.err().code != EIO)
            return t.err();
        return s;
    }

    /// Loads this state into `cpu` (a vCPU of a VM with the same memory, CPUID and irqchip
    /// configuration). Order, and why where it matters:
    /// 1. TSC frequency, when it differs (before the TSC MSR, whose offset is computed with it);
    /// 2. sregs (CR0/CR4/EFER and the APIC base the later SETs are checked against);
    /// 3. XCRs, then XSAVE (KVM checks the XSAVE components against XCR0) or FPU;
    /// 4. regs;
    /// 5. LAPIC (after sregs: KVM_SET_LAPIC uses the APIC base set there);
    /// 6. MSRs (after the LAPIC, so a TSC-deadline MSR lands on a timer in deadline mode, as in
    ///    QEMU);
    /// 7. events (after regs: KVM_SET_REGS drops a pending exception), then mp_state (after
    ///    events and LAPIC: KVM refuses INIT_RECEIVED in SMM and needs the LAPIC for it);
    /// 8. debug registers.
    /// The selftests' `vcpu_load_state` sets regs last; this order keeps a pending exception.
    /// First completes a pending exit of `cpu`. Register blocks are written at once
    /// (`hal_vcpu::store`) and replace any pending `modify`. Errors: the first failing SET
    /// ioctl's name and errno; "KVM_SET_MSRS" EINVAL "MSR refused" naming the MSR.
    template <class Sys, class Arch>
    [[nodiscard]] result<void> load(hal_vcpu<Sys, Arch>& cpu) const {
        VCPU_TRY_VOID(cpu.complete_pending_io(true));
        if (tsc_khz != 0) {
            auto now = get_tsc_khz(cpu);
            if (!now || *now != tsc_khz) VCPU_TRY_VOID(set_tsc_khz(cpu, tsc_khz));
        }
        VCPU_TRY_VOID(cpu.template store<::vcpu::x86_64::sregs_block>(sregs));
        if (has_xcrs) VCPU_TRY_VOID(set_xcrs(cpu, xcrs));
        if (xsave.size() != 0) VCPU_TRY_VOID(set_xsave(cpu, xsave));
        else VCPU_TRY_VOID(set_fpu(cpu, fpu));
        VCPU_TRY_VOID(cpu.template store<::vcpu::x86_64::regs_block>(regs));
        if (has_lapic) VCPU_TRY_VOID(set_lapic(cpu, lapic));
        for (std::size_t at = 0; at < msrs.size();) {
            auto n = set_msrs(cpu, std::span(msrs).subspan(at));
            if (!n) return n.err();
            at += *n;
            if (at < msrs.size())
                return error{ioctls::vcpu::set_msrs.name, EINVAL, "MSR refused"}
                    .with_hex("msr", msrs[at].index)
                    .with_hex("value", msrs[at].data)
                    .with("vcpu_id", cpu.id());
        }
        VCPU_TRY_VOID(set_vcpu_events(cpu, events));
        VCPU_TRY_VOID(set_mp_state(cpu, mp_state));
        VCPU_TRY_VOID(set_debugregs(cpu, debugregs));
        return ok();
    }

    /// The flat, versioned form: `x86_64_state_header`, then regs, sregs, XSAVE (or FPU), XCRs
    /// (if flagged), LAPIC (if flagged), mp_state (4 bytes), events, debugregs, MSR entries.
    [[nodiscard]] std::vector<std::byte> serialize() const {
        x86_64_state_header h;
        h.magic = x86_64_state_header::magic_v;
        h.version = x86_64_state_header::current_version;
        h.header_size = sizeof h;
        h.flags = (has_xcrs ? x86_64_state_header::flag_xcrs : 0u) | (has_lapic ? x86_64_state_header::flag_lapic : 0u);
        h.xsave_size = static_cast<std::uint32_t>(xsave.size());
        h.msr_count = static_cast<std::uint32_t>(msrs.size());
        h.tsc_khz = tsc_khz;
        h.body_size = body_size(h);
        std::vector<std::byte> out(sizeof h + h.body_size);
        std::byte* p = out.data() + sizeof h;
        auto put = [&p](const void* src, std::size_t n) {
            if (n != 0) std::memcpy(p, src, n);
            p += n;
        };
        put(&regs, sizeof regs);
        put(&sregs, sizeof sregs);
        if (h.xsave_size != 0) put(xsave.words.data(), h.xsave_size);
        else put(&fpu, sizeof fpu);
        if (has_xcrs) put(&xcrs, sizeof xcrs);
        if (has_lapic) put(&lapic, sizeof lapic);
        put(&mp_state, sizeof mp_state);
        put(&events, sizeof events);
        put(&debugregs, sizeof debugregs);
        put(msrs.data(), msrs.size() * sizeof(::vcpu::x86_64::msr_entry));
        std::memcpy(out.data(), &h, sizeof h); // body_hash still 0: hashed as such
        h.body_hash = fnv1a(out);
        std::memcpy(out.data(), &h, sizeof h);
        return out;
    }

    /// Parses `serialize`'s output. Every size is checked before a byte is copied: a blob that
    /// is truncated, has trailing bytes, another magic (not an x86-64 vCPU state), another
    /// version, unknown flags, an XSAVE size that is not a multiple of 4 in [4096, 1 MiB], or
    /// a hash over header and body that does not match is an error (op
    /// "x86_64_vcpu_state::deserialize"; EINVAL, EPROTO for a version mismatch, EBADMSG for a
    /// hash mismatch) naming what is wrong.
    [[nodiscard]] static result<x86_64_vcpu_state> deserialize(std::span<const std::byte> blob) {
        constexpr const char* op = "x86_64_vcpu_state::deserialize";
        x86_64_state_header h;
        if (blob.size() < sizeof h)
            return error{op, EINVAL, "truncated: shorter than the header"}.with("size", blob.size()).with("needed", sizeof h);
        std::memcpy(&h, blob.data(), sizeof h);
        if (h.magic != x86_64_state_header::magic_v) return error{op, EINVAL, "not an x86-64 vCPU state (bad magic)"};
        if (h.version != x86_64_state_header::current_version)
            return error{op, EPROTO, "unsupported format version"}
                .with("version", h.version)
                .with("supported", x86_64_state_header::current_version);
        if (h.header_size != sizeof h) return error{op, EINVAL, "bad header size"}.with("header_size", h.header_size);
        if ((h.flags & ~x86_64_state_header::known_flags) != 0) return error{op, EINVAL, "unknown flags"}.with_hex("flags", h.flags);
        if (h.xsave_size != 0 && (h.xsave_size % 4 != 0 || h.xsave_size < detail::xsave_header_size || h.xsave_size > (1u << 20)))
            return error{op, EINVAL, "bad XSAVE size"}.with("xsave_size", h.xsave_size);
        if (h.msr_count > 65536) return error{op, EINVAL, "implausible MSR count"}.with("msr_count", h.msr_count);
        const std::uint64_t want = body_size(h);
        if (h.body_size != want) return error{op, EINVAL, "body size disagrees with the header"}.with("body_size", h.body_size).with("expected", want);
        if (blob.size() - sizeof h < want)
            return error{op, EINVAL, "truncated: body shorter than the header says"}.with("size", blob.size()).with("needed", sizeof h + want);
        if (blob.size() - sizeof h > want)
            return error{op, EINVAL, "trailing bytes after the state"}.with("size", blob.size()).with("expected", sizeof h + want);
        const auto body = blob.subspan(sizeof h);
        {
            x86_64_state_header zeroed = h;
            zeroed.body_hash = 0;
            std::array<std::byte, sizeof zeroed> head{};
            std::memcpy(head.data(), &zeroed, sizeof zeroed);
            if (fnv1a(body, fnv1a(head)) != h.body_hash) return error{op, EBADMSG, "corrupt: hash mismatch"};
        }

        x86_64_vcpu_state s;
        const std::byte* p = body.data();
        auto get = [&p](void* dst, std::size_t n) {
            if (n != 0) std::memcpy(dst, p, n);
            p += n;
        };
        get(&s.regs, sizeof s.regs);
        get(&s.sregs, sizeof s.sregs);
        if (h.xsave_size != 0) {
            s.xsave.words.resize(h.xsave_size / 4);
            get(s.xsave.words.data(), h.xsave_size);
        } else {
            get(&s.fpu, sizeof s.fpu);
        }
        s.has_xcrs = (h.flags & x86_64_state_header::flag_xcrs) != 0;
        if (s.has_xcrs) get(&s.xcrs, sizeof s.xcrs);
        s.has_lapic = (h.flags & x86_64_state_header::flag_lapic) != 0;
        if (s.has_lapic) get(&s.lapic, sizeof s.lapic);
        get(&s.mp_state, sizeof s.mp_state);
        get(&s.events, sizeof s.events);
        get(&s.debugregs, sizeof s.debugregs);
        s.msrs.resize(h.msr_count);
        get(s.msrs.data(), s.msrs.size() * sizeof(::vcpu::x86_64::msr_entry));
        if (s.has_xcrs && s.xcrs.nr_xcrs > KVM_MAX_XCRS) return error{op, EINVAL, "too many XCRs"}.with("nr_xcrs", s.xcrs.nr_xcrs);
        s.tsc_khz = h.tsc_khz;
        return s;
    }

private:
    /// Body bytes the header's fields call for.
    [[nodiscard]] static std::uint64_t body_size(const x86_64_state_header& h) noexcept {
        std::uint64_t n = sizeof(::vcpu::x86_64::regs_layout) + sizeof(::vcpu::x86_64::sregs_layout);
        n += h.xsave_size != 0 ? std::uint64_t{h.xsave_size} : sizeof(::kvm_fpu);
        if ((h.flags & x86_64_state_header::flag_xcrs) != 0) n += sizeof(::kvm_xcrs);
        if ((h.flags & x86_64_state_header::flag_lapic) != 0) n += sizeof(::kvm_lapic_state);
        n += sizeof(std::uint32_t) + sizeof(::vcpu::x86_64::events_layout) + sizeof(::vcpu::x86_64::debugregs_layout);
        n += std::uint64_t{h.msr_count} * sizeof(::vcpu::x86_64::msr_entry);
        return n;
    }
    /// FNV-1a 64 of `b`, continuing from `x` (the offset basis by default).
    [[nodiscard]] static std::uint64_t fnv1a(std::span<const std::byte> b,
                                             std::uint64_t x = 0xcbf29ce484222325ull) noexcept {
        for (auto c : b) x = (x ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
        return x;
    }
};

/// `x86_64_vcpu_state::save` for a `basic_vcpu` (or anything with `.hal()`).
template <class Cpu>
    requires requires(Cpu& c) { c.hal(); }
[[nodiscard]] result<x86_64_vcpu_state> save_state(Cpu& cpu) {
    return x86_64_vcpu_state::save(cpu.hal());
}
/// `x86_64_vcpu_state::load` for a `basic_vcpu`.
template <class Cpu>
    requires requires(Cpu& c) { c.hal(); }
[[nodiscard]] result<void> load_state(Cpu& cpu, const x86_64_vcpu_state& s) {
    return s.load(cpu.hal());
}

} // namespace vcpu::kvm

#endif // __x86_64__
