#pragma once
/// \file
/// x86-64 VM-level device state: the in-kernel interrupt controllers (two 8259 PICs and the
/// IOAPIC), the in-kernel PIT (i8254) and the kvmclock, as typed calls on a `basic_vm<Sys>` and as
/// one value, `x86_64_vm_state`, that saves, loads and serializes them. The VM-level companion of
/// `x86_64_vcpu_state` (kvm/x86_64_state.hpp); both go into a snapshot (kvm/snapshot.hpp,
/// docs/snapshot.md).
///
/// | call                            | KVM API                           |
/// | ------------------------------- | --------------------------------- |
/// | `get_irqchip` / `set_irqchip`   | 4.26/4.27 KVM_GET/SET_IRQCHIP     |
/// | `get_pit2` / `set_pit2`         | 4.72/4.73 KVM_GET/SET_PIT2        |
/// | `get_clock` / `set_clock`       | 4.29/4.30 KVM_GET/SET_CLOCK       |
/// | `clock_flags`                   | 4.4 KVM_CAP_ADJUST_CLOCK          |
///
/// Every call goes through the ioctl table (kvm/ioctls.hpp) and the VM's `Sys` seam and returns
/// `result<T>` whose error names the ioctl, the errno and the chip or flags involved. The kernel
/// structs (`kvm_irqchip`, `kvm_pit_state2`, `kvm_clock_data`) are used as they are; their
/// layouts are asserted below because `x86_64_vm_state::serialize` copies them byte for byte.
///
/// Setup and state-transfer path: `serialize` allocates. Compiled only on x86-64 hosts; elsewhere
/// this header is empty.

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vm.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#if defined(__x86_64__)

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

namespace vcpu::kvm {

namespace x86_64_layout {
// The kernel structs a serialized VM state copies: sizes pinned so a header change shows here.
static_assert(sizeof(::kvm_irqchip) == 520 && offsetof(::kvm_irqchip, chip) == 8);
static_assert(sizeof(::kvm_pic_state) == 16 && sizeof(::kvm_ioapic_state) == 24 + 8 * KVM_IOAPIC_NUM_PINS);
static_assert(sizeof(::kvm_pit_state2) == 112 && offsetof(::kvm_pit_state2, flags) == 72);
static_assert(sizeof(::kvm_clock_data) == 48 && offsetof(::kvm_clock_data, flags) == 8 &&
              offsetof(::kvm_clock_data, realtime) == 16 && offsetof(::kvm_clock_data, host_tsc) == 24);
} // namespace x86_64_layout

/// Which in-kernel interrupt controller `get_irqchip` / `set_irqchip` address (KVM API 4.26,
/// `kvm_irqchip.chip_id`).
enum class irqchip_id : std::uint32_t {
    pic_master = KVM_IRQCHIP_PIC_MASTER, ///< the 8259 at ports 0x20-0x21 (IRQ 0-7)
    pic_slave = KVM_IRQCHIP_PIC_SLAVE,   ///< the 8259 at ports 0xa0-0xa1 (IRQ 8-15)
    ioapic = KVM_IRQCHIP_IOAPIC,         ///< the IOAPIC (24 pins)
};

/// The chips in the order `x86_64_vm_state` saves and loads them.
inline constexpr std::array<irqchip_id, KVM_NR_IRQCHIPS> all_irqchips{irqchip_id::pic_master, irqchip_id::pic_slave,
                                                                      irqchip_id::ioapic};

/// The state of in-kernel chip `id` (KVM API 4.26 KVM_GET_IRQCHIP; needs `create_irqchip`, else
/// ENXIO). `chip.pic` for the PICs, `chip.ioapic` for the IOAPIC.
/// Errors: "KVM_GET_IRQCHIP" with errno and the chip id.
template <class Sys>
[[nodiscard]] result<::kvm_irqchip> get_irqchip(const basic_vm<Sys>& vm, irqchip_id id) noexcept {
    ::kvm_irqchip c{};
    c.chip_id = static_cast<std::uint32_t>(id);
    if (auto r = vm.ioctl(ioctls::vm::get_irqchip, &c); !r) return error(r.err()).with("chip_id", c.chip_id);
    return c;
}
/// Writes the in-kernel chip named by `c.chip_id` (KVM API 4.27 KVM_SET_IRQCHIP). A chip id
/// other than the three of `irqchip_id` is refused before the kernel sees it (EINVAL).
/// Errors: "KVM_SET_IRQCHIP" with errno and the chip id.
template <class Sys>
[[nodiscard]] result<void> set_irqchip(const basic_vm<Sys>& vm, const ::kvm_irqchip& c) noexcept {
    constexpr auto io = ioctls::vm::set_irqchip;
    if (c.chip_id >= KVM_NR_IRQCHIPS) return error{io.name, EINVAL, "unknown irqchip id"}.with("chip_id", c.chip_id);
    auto copy = c; // the kernel only reads it
    if (auto r = vm.ioctl(io, &copy); !r) return error(r.err()).with("chip_id", c.chip_id);
    return ok();
}

/// The in-kernel PIT's three channels and flags (KVM API 4.72 KVM_GET_PIT2; needs
/// `create_pit2`, else ENXIO). Errors: "KVM_GET_PIT2" with errno.
template <class Sys>
[[nodiscard]] result<::kvm_pit_state2> get_pit2(const basic_vm<Sys>& vm) noexcept {
    ::kvm_pit_state2 s{};
    if (auto r = vm.ioctl(ioctls::vm::get_pit2, &s); !r) return r.err();
    return s;
}
/// KVM API 4.73 KVM_SET_PIT2. Errors: "KVM_SET_PIT2" with errno and the flags.
template <class Sys>
[[nodiscard]] result<void> set_pit2(const basic_vm<Sys>& vm, const ::kvm_pit_state2& s) noexcept {
    auto copy = s;
    if (auto r = vm.ioctl(ioctls::vm::set_pit2, &copy); !r) return error(r.err()).with_hex("flags", s.flags);
    return ok();
}

/// The flags this host's KVM_GET_CLOCK can report and KVM_SET_CLOCK honours (KVM API 4.4,
/// `KVM_CAP_ADJUST_CLOCK`: a mask of `KVM_CLOCK_TSC_STABLE`, `KVM_CLOCK_REALTIME`,
/// `KVM_CLOCK_HOST_TSC`; 0 when the capability is absent). Errors: "KVM_CHECK_EXTENSION".
template <class Sys>
[[nodiscard]] result<std::uint32_t> clock_flags(const basic_vm<Sys>& vm) noexcept {
    auto r = vm.check_extension(KVM_CAP_ADJUST_CLOCK);
    if (!r) return r.err();
    return static_cast<std::uint32_t>(*r > 0 ? *r : 0);
}

/// The VM's kvmclock in ns (KVM API 4.29 KVM_GET_CLOCK), with `flags` saying which of
/// `realtime` (`KVM_CLOCK_REALTIME`: CLOCK_REALTIME when sampled), `host_tsc`
/// (`KVM_CLOCK_HOST_TSC`) are valid and whether every vCPU sees this exact value
/// (`KVM_CLOCK_TSC_STABLE`). Errors: "KVM_GET_CLOCK" with errno.
template <class Sys>
[[nodiscard]] result<::kvm_clock_data> get_clock(const basic_vm<Sys>& vm) noexcept {
    ::kvm_clock_data d{};
    if (auto r = vm.ioctl(ioctls::vm::get_clock, &d); !r) return r.err();
    return d;
}
/// Sets the kvmclock to `d.clock` (KVM API 4.30 KVM_SET_CLOCK). With `KVM_CLOCK_REALTIME` in
/// `d.flags`, KVM adds the CLOCK_REALTIME time elapsed since `d.realtime` (the guest's clock
/// moves on by the time the VM was stopped, as a migrated guest's should); the other flags
/// KVM_GET_CLOCK reports are accepted and ignored. Pass `d` without `KVM_CLOCK_REALTIME` to
/// resume the clock exactly where it was saved. Errors: "KVM_SET_CLOCK" with errno and flags.
template <class Sys>
[[nodiscard]] result<void> set_clock(const basic_vm<Sys>& vm, const ::kvm_clock_data& d) noexcept {
    auto copy = d;
    if (auto r = vm.ioctl(ioctls::vm::set_clock, &copy); !r)
        return error(r.err()).with("clock_ns", d.clock).with_hex("flags", d.flags);
    return ok();
}

/// Header of a serialized `x86_64_vm_state` (host byte order; the sections follow in the order
/// of `x86_64_vm_state`'s members, each the kernel struct's bytes).
struct x86_64_vm_state_header {
    std::array<char, 8> magic{};   ///< `magic_v`
    std::uint32_t version = 0;     ///< `current_version`
    std::uint32_t header_size = 0; ///< `sizeof(x86_64_vm_state_header)`
    std::uint32_t flags = 0;       ///< `flag_*`: which sections follow
    std::uint32_t body_size = 0;   ///< bytes after the header
    std::uint64_t hash = 0;        ///< FNV-1a 64 of the header (this field 0) and the body

    /// The first 8 bytes of every blob: "vcpux86m".
    static constexpr std::array<char, 8> magic_v{'v', 'c', 'p', 'u', 'x', '8', '6', 'm'};
    /// The format version this library writes and reads (others are refused with EPROTO).
    static constexpr std::uint32_t current_version = 1;
    static constexpr std::uint32_t flag_irqchip = 1u << 0; ///< three `kvm_irqchip` sections follow
    static constexpr std::uint32_t flag_pit = 1u << 1;     ///< a `kvm_pit_state2` section follows
    static constexpr std::uint32_t flag_clock = 1u << 2;   ///< a `kvm_clock_data` section follows
    /// Every flag this version defines; a blob with others is refused.
    static constexpr std::uint32_t known_flags = flag_irqchip | flag_pit | flag_clock;
};
static_assert(std::is_standard_layout_v<x86_64_vm_state_header> &&
              std::is_trivially_copyable_v<x86_64_vm_state_header>);
static_assert(sizeof(x86_64_vm_state_header) == 32 && offsetof(x86_64_vm_state_header, version) == 8 &&
                  offsetof(x86_64_vm_state_header, header_size) == 12 &&
                  offsetof(x86_64_vm_state_header, flags) == 16 &&
                  offsetof(x86_64_vm_state_header, body_size) == 20 && offsetof(x86_64_vm_state_header, hash) == 24,
              "kvm: x86_64_vm_state_header is a file format: its layout must not change within a version");

/// How `x86_64_vm_state::load` sets the kvmclock.
enum class clock_restore : std::uint8_t {
    exact,       ///< the saved value: the guest's clock resumes where it stopped (no time passed)
    add_elapsed, ///< the saved value plus the wall-clock time since the save, when the save has
                 ///< `KVM_CLOCK_REALTIME` (KVM API 4.30); else as `exact`
    skip,        ///< leave the VM's clock alone
};

/// Everything KVM holds for an x86-64 VM outside its vCPUs and memory: the two PICs and the
/// IOAPIC (when the VM has the in-kernel irqchip), the PIT (when it has one) and the kvmclock.
struct x86_64_vm_state {
    bool has_irqchip = false;                               ///< the VM has the in-kernel irqchip
    std::array<::kvm_irqchip, KVM_NR_IRQCHIPS> irqchip{};   ///< by `all_irqchips` order
    bool has_pit = false;                                   ///< the VM has the in-kernel PIT
    ::kvm_pit_state2 pit{};                                 ///< the PIT's channels and flags
    bool has_clock = false;                                 ///< KVM_GET_CLOCK answered
    ::kvm_clock_data clock{};                               ///< the kvmclock and its flags

    /// Reads the VM's device state: PIC master, PIC slave, IOAPIC, PIT, then the clock (last, so
    /// it is sampled as close to the vCPUs' stop as the other reads allow). A VM without the
    /// in-kernel irqchip or PIT answers ENXIO, which is absorbed (`has_irqchip`/`has_pit` stay
    /// false). Precondition: no vCPU of the VM is in KVM_RUN (the PIT and IOAPIC would move on
    /// between reads). Errors: the first failing ioctl's name and errno.
    template <class Sys>
    [[nodiscard]] static result<x86_64_vm_state> save(const basic_vm<Sys>& vm) noexcept {
        x86_64_vm_state s;
        for (std::size_t i = 0; i < all_irqchips.size(); ++i) {
            auto c = get_irqchip(vm, all_irqchips[i]);
            if (!c) {
                if (i == 0 && c.err().code == ENXIO) break; // no in-kernel irqchip
                return c.err();
            }
            s.irqchip[i] = *c;
            s.has_irqchip = true;
        }
        if (auto p = get_pit2(vm)) {
            s.pit = *p;
            s.has_pit = true;
        } else if (p.err().code != ENXIO) {
            return p.err();
        }
        auto c = get_clock(vm);
        if (!c) return c.err();
        s.clock = *c;
        s.has_clock = true;
        return s;
    }

    /// Writes this state into `vm` (a VM created with the same in-kernel devices): PICs and
    /// IOAPIC first (the PIT's output is IRQ 0 of those chips), then the PIT, then the clock as
    /// `how` says. Load it before the vCPUs' state (`x86_64_vcpu_state::load`): nothing here
    /// depends on a vCPU, and a LAPIC loaded after the IOAPIC sees its final routing. Errors:
    /// EINVAL "saved with an in-kernel irqchip/PIT the VM lacks" (op "x86_64_vm_state::load") when
    /// the VM has no device to take the state, else the first failing SET ioctl's name and errno.
    template <class Sys>
    [[nodiscard]] result<void> load(const basic_vm<Sys>& vm, clock_restore how = clock_restore::exact) const noexcept {
        constexpr const char* op = "x86_64_vm_state::load";
        if (has_irqchip) {
            for (std::size_t i = 0; i < irqchip.size(); ++i) {
                auto r = set_irqchip(vm, irqchip[i]);
                if (!r && i == 0 && r.err().code == ENXIO)
                    return error{op, ENXIO, "saved with an in-kernel irqchip the VM lacks (create_irqchip)"};
                if (!r) return r;
            }
        }
        if (has_pit) {
            auto r = set_pit2(vm, pit);
            if (!r && r.err().code == ENXIO) return error{op, ENXIO, "saved with an in-kernel PIT the VM lacks (create_pit2)"};
            if (!r) return r;
        }
        if (has_clock && how != clock_restore::skip) {
            ::kvm_clock_data d = clock;
            // Only REALTIME changes what KVM_SET_CLOCK does; keep it when asked to and saved.
            d.flags = how == clock_restore::add_elapsed ? (clock.flags & KVM_CLOCK_REALTIME) : 0u;
            VCPU_TRY_VOID(set_clock(vm, d));
        }
        return ok();
    }

    /// The flat, versioned form: `x86_64_vm_state_header`, then the three `kvm_irqchip`s (if
    /// flagged), the `kvm_pit_state2` (if flagged), the `kvm_clock_data` (if flagged).
    [[nodiscard]] std::vector<std::byte> serialize() const {
        x86_64_vm_state_header h;
        h.magic = x86_64_vm_state_header::magic_v;
        h.version = x86_64_vm_state_header::current_version;
        h.header_size = sizeof h;
        h.flags = (has_irqchip ? x86_64_vm_state_header::flag_irqchip : 0u) |
                  (has_pit ? x86_64_vm_state_header::flag_pit : 0u) |
                  (has_clock ? x86_64_vm_state_header::flag_clock : 0u);
        h.body_size = body_size(h.flags);
        std::vector<std::byte> out(sizeof h + h.body_size);
        std::byte* p = out.data() + sizeof h;
        auto put = [&p](const void* src, std::size_t n) {
            std::memcpy(p, src, n);
            p += n;
        };
        if (has_irqchip) put(irqchip.data(), sizeof irqchip);
        if (has_pit) put(&pit, sizeof pit);
        if (has_clock) put(&clock, sizeof clock);
        std::memcpy(out.data(), &h, sizeof h); // hash still 0: hashed as such
        h.hash = fnv1a(out);
        std::memcpy(out.data(), &h, sizeof h);
        return out;
    }

    /// Parses `serialize`'s output, checking every size before a byte is copied: a blob that is
    /// truncated or has trailing bytes, another magic (not an x86-64 VM state), another version
    /// (EPROTO), unknown flags, a chip id out of place, or a hash mismatch (EBADMSG) is an error
    /// with op "x86_64_vm_state::deserialize" saying which.
    [[nodiscard]] static result<x86_64_vm_state> deserialize(std::span<const std::byte> blob) {
        constexpr const char* op = "x86_64_vm_state::deserialize";
        x86_64_vm_state_header h;
        if (blob.size() < sizeof h)
            return error{op, EINVAL, "truncated: shorter than the header"}.with("size", blob.size()).with("needed", sizeof h);
        std::memcpy(&h, blob.data(), sizeof h);
        if (h.magic != x86_64_vm_state_header::magic_v) return error{op, EINVAL, "not an x86-64 VM state (bad magic)"};
        if (h.version != x86_64_vm_state_header::current_version)
            return error{op, EPROTO, "unsupported format version"}
                .with("version", h.version)
                .with("supported", x86_64_vm_state_header::current_version);
        if (h.header_size != sizeof h) return error{op, EINVAL, "bad header size"}.with("header_size", h.header_size);
        if ((h.flags & ~x86_64_vm_state_header::known_flags) != 0)
            return error{op, EINVAL, "unknown flags"}.with_hex("flags", h.flags);
        const std::size_t want = body_size(h.flags);
        if (h.body_size != want) return error{op, EINVAL, "body size disagrees with the flags"}.with("body_size", h.body_size).with("expected", want);
        if (blob.size() - sizeof h < want)
            return error{op, EINVAL, "truncated: body shorter than the header says"}.with("size", blob.size()).with("needed", sizeof h + want);
        if (blob.size() - sizeof h > want)
            return error{op, EINVAL, "trailing bytes after the state"}.with("size", blob.size()).with("expected", sizeof h + want);
        {
            x86_64_vm_state_header zeroed = h;
            zeroed.hash = 0;
            std::array<std::byte, sizeof zeroed> head{};
            std::memcpy(head.data(), &zeroed, sizeof zeroed);
            if (fnv1a(blob.subspan(sizeof h), fnv1a(head)) != h.hash) return error{op, EBADMSG, "corrupt: hash mismatch"};
        }
        x86_64_vm_state s;
        const std::byte* p = blob.data() + sizeof h;
        auto get = [&p](void* dst, std::size_t n) {
            std::memcpy(dst, p, n);
            p += n;
        };
        s.has_irqchip = (h.flags & x86_64_vm_state_header::flag_irqchip) != 0;
        if (s.has_irqchip) {
            get(s.irqchip.data(), sizeof s.irqchip);
            for (std::size_t i = 0; i < s.irqchip.size(); ++i)
                if (s.irqchip[i].chip_id != static_cast<std::uint32_t>(all_irqchips[i]))
                    return error{op, EINVAL, "irqchip section out of order"}.with("index", i).with("chip_id", s.irqchip[i].chip_id);
        }
        s.has_pit = (h.flags & x86_64_vm_state_header::flag_pit) != 0;
        if (s.has_pit) get(&s.pit, sizeof s.pit);
        s.has_clock = (h.flags & x86_64_vm_state_header::flag_clock) != 0;
        if (s.has_clock) get(&s.clock, sizeof s.clock);
        return s;
    }

private:
    /// Body bytes the header's flags call for.
    [[nodiscard]] static std::size_t body_size(std::uint32_t flags) noexcept {
        std::size_t n = 0;
        if ((flags & x86_64_vm_state_header::flag_irqchip) != 0) n += sizeof(::kvm_irqchip) * KVM_NR_IRQCHIPS;
        if ((flags & x86_64_vm_state_header::flag_pit) != 0) n += sizeof(::kvm_pit_state2);
        if ((flags & x86_64_vm_state_header::flag_clock) != 0) n += sizeof(::kvm_clock_data);
        return n;
    }
    /// FNV-1a 64 of `b`, continuing from `x` (the offset basis by default).
    [[nodiscard]] static std::uint64_t fnv1a(std::span<const std::byte> b, std::uint64_t x = 0xcbf29ce484222325ull) noexcept {
        for (auto c : b) x = (x ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
        return x;
    }
};

} // namespace vcpu::kvm

#endif // __x86_64__
