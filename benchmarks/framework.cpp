// Suite 3, "framework alone": decode + dispatch cost per exit, no system calls.
//
// One realistic round of exits (serial OUT/IN, a `rep outsb`, MMIO writes and reads, coalesced
// doorbell writes, a POST-code OUT, HLT, then SHUTDOWN to end the round) is replayed through five
// exit-loop designs. Every design enters through the same HAL object, decodes the same kvm_run
// records with the same validation, drives the same device model (`devices`) and writes the same
// answers (IN data, MMIO read data) back into the records:
//
//   switch    a hand-written switch over kvm_run (the limit)
//   vcpu      vcpu::basic_vcpu<arch::x86_64, Hal>::run(handlers...)
//   virtual   a virtual vCPU interface returning an exit struct, and a virtual VMM-ops interface
//             per access kind (the Cloud Hypervisor shape)
//   function  a std::function device bus with linear lookup (the minimal C VMM's shape)
//   variant   the exit decoded into a std::variant and handled with std::visit
//
// Two HALs: `mock` (vcpu::kvm::mock::hal, which copies each scripted exit into its kvm_run area on
// enter(), as a recording replay does) and `ring` (bench::ring_hal: the kvm_run areas are
// formatted once, so enter() costs nearly nothing and the numbers are decode + dispatch alone).
//
// Counters: ns_per_exit (thread CPU time / exits), and ratio_to_switch (this design / the switch design over the same HAL,
// measured earlier in the same run). Each case first checks, on the mock HAL with its event log,
// that the answers written are the expected ones, and after timing that the device model saw
// exactly the expected accesses; a mismatch is state.SkipWithError (see support/main.hpp).
//
// No virtual code in include/: the virtual design lives only here.

#include "support/main.hpp"
#include "support/ring_hal.hpp"

#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/exits.hpp>
#include <kvm/mock.hpp>

#include <benchmark/benchmark.h>
#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace {

using vcpu::arch::x86_64;
using u64 = std::uint64_t;
using u32 = std::uint32_t;
using u16 = std::uint16_t;

constexpr u16 serial_thr = 0x3f8, serial_lsr = 0x3fd, post_port = 0x80;
constexpr u64 dev_base = 0xd0000000, dev_size = 0x40, bell_base = 0xd0001000;
constexpr u32 read_key = 0xa5a5a5a5;

// ---- the device model every design drives ---------------------------------------------------

struct devices {
    u64 tx = 0, tx_sum = 0, lsr_reads = 0, post = 0, mmio_w = 0, mmio_r = 0, halts = 0, bells = 0,
        bell_sum = 0, unknown = 0;
    std::array<u32, dev_size / 4> regs{};

    void serial_out(u16 port, u32 v) noexcept {
        if (port == serial_thr) {
            ++tx;
            tx_sum += v;
        } else {
            ++unknown;
        }
    }
    u32 serial_in(u16 port) noexcept {
        if (port == serial_lsr) {
            ++lsr_reads;
            return 0x60; // THR empty, transmitter idle
        }
        ++unknown;
        return 0xff;
    }
    void post_out(u32 v) noexcept { post = v; }
    void dev_write(u64 addr, u64 v) noexcept {
        regs[((addr - dev_base) >> 2) % regs.size()] = static_cast<u32>(v);
        ++mmio_w;
    }
    u64 dev_read(u64 addr) noexcept {
        ++mmio_r;
        return regs[((addr - dev_base) >> 2) % regs.size()] ^ read_key;
    }
    void doorbell(u64 v) noexcept {
        ++bells;
        bell_sum += v;
    }
    void halt() noexcept { ++halts; }

    // Routing by switch, shared by every design but `function` (which routes by bus lookup).
    void port_out(u16 port, u32 v) noexcept {
        if (port >= serial_thr && port < serial_thr + 8) serial_out(port, v);
        else if (port == post_port) post_out(v);
        else ++unknown;
    }
    u32 port_in(u16 port) noexcept {
        if (port >= serial_thr && port < serial_thr + 8) return serial_in(port);
        ++unknown;
        return 0xff;
    }
    void mmio_write(u64 addr, u64 v) noexcept {
        if (addr - dev_base < dev_size) dev_write(addr, v);
        else ++unknown;
    }
    u64 mmio_read(u64 addr) noexcept {
        if (addr - dev_base < dev_size) return dev_read(addr);
        ++unknown;
        return ~u64{0};
    }
    void coalesced(const vcpu::coalesced_write& w) noexcept {
        if (!w.pio && w.address == bell_base) doorbell(w.value());
        else ++unknown;
    }
    friend bool operator==(const devices&, const devices&) = default;
};

// ---- the exit mix -------------------------------------------------------------------------------

constexpr std::string_view string_io = "stringio";
constexpr u64 exits_per_round = 16; // including the SHUTDOWN that ends a round

vcpu::kvm::mock::script make_round() {
    vcpu::kvm::mock::script s;
    std::array<std::byte, string_io.size()> str{};
    for (std::size_t i = 0; i < str.size(); ++i) str[i] = static_cast<std::byte>(string_io[i]);
    s.io_out(serial_thr, 1, 'H')
        .io_in(serial_lsr, 1)
        .io_out(serial_thr, 1, 'i')
        .io_in(serial_lsr, 1)
        .io_out(serial_thr, 1, '!')
        .coalesced(bell_base, 4, 1)
        .coalesced(bell_base, 4, 2)
        .mmio_write(dev_base + 0, 4, 0x11111111)
        .mmio_write(dev_base + 4, 4, 0x22222222)
        .mmio_write(dev_base + 8, 4, 0x33333333)
        .mmio_read(dev_base + 0, 4)
        .mmio_read(dev_base + 4, 4)
        .mmio_read(dev_base + 8, 4)
        .io_string_out(serial_thr, 1, str)
        .io_out(post_port, 1, 0x42)
        .hlt()
        .shutdown();
    return s;
}

/// What the device model must hold after `rounds` rounds.
devices expected(u64 rounds) {
    devices d;
    u64 sum = 'H' + 'i' + '!';
    for (char c : string_io) sum += static_cast<unsigned char>(c);
    d.tx = 11 * rounds;
    d.tx_sum = sum * rounds;
    d.lsr_reads = 2 * rounds;
    d.post = rounds ? 0x42 : 0;
    d.mmio_w = 3 * rounds;
    d.mmio_r = 3 * rounds;
    d.halts = rounds;
    d.bells = 2 * rounds;
    d.bell_sum = 3 * rounds;
    if (rounds) d.regs[0] = 0x11111111, d.regs[1] = 0x22222222, d.regs[2] = 0x33333333;
    if (bench::corrupt()) ++d.tx;
    return d;
}

/// The answers the mock must have seen, in order: two LSR reads, three MMIO reads.
constexpr std::array<u64, 5> expected_answers{0x60, 0x60, 0x11111111u ^ read_key,
                                              0x22222222u ^ read_key, 0x33333333u ^ read_key};

// ---- shared raw-record helpers (the same checks the x86-64 decoder makes) -------------------------

/// Port I/O data of a KVM_EXIT_IO record, or empty when size/count/offset are invalid.
[[gnu::always_inline]] inline std::span<std::byte> io_data(const vcpu::kvm::run_view& v) noexcept {
    const auto& r = *v.run;
    if (r.io.size != 1 && r.io.size != 2 && r.io.size != 4) return {};
    if (r.io.count == 0) return {};
    const u64 len = u64{r.io.size} * r.io.count;
    auto d = v.at(r.io.data_offset, len);
    return d.size() == len ? d : std::span<std::byte>{};
}
[[gnu::always_inline]] inline bool mmio_len_ok(const ::kvm_run& r) noexcept {
    return r.mmio.len != 0 && r.mmio.len <= sizeof(r.mmio.data);
}
[[gnu::always_inline]] inline bool record_ok(const vcpu::kvm::run_view& v) noexcept {
    return v.run != nullptr && v.mapped >= sizeof(::kvm_run);
}

// ---- (a) the hand-written switch -----------------------------------------------------------------

template <class HV>
struct switch_design {
    HV& h;
    devices& d;
    bool round() noexcept {
        for (;;) {
            if (!h.enter()) return false;
            h.drain_coalesced([&](vcpu::coalesced_write& w) noexcept {
                d.coalesced(w);
                return true;
            });
            const auto v = h.exit_record();
            if (!record_ok(v)) return false;
            auto& r = *v.run;
            switch (r.exit_reason) {
            case KVM_EXIT_IO: {
                auto data = io_data(v);
                if (data.empty()) return false;
                const u32 size = r.io.size;
                if (r.io.direction == KVM_EXIT_IO_OUT) {
                    for (u32 i = 0; i < r.io.count; ++i)
                        d.port_out(r.io.port, static_cast<u32>(vcpu::detail::load_le(data.subspan(i * size, size))));
                } else {
                    for (u32 i = 0; i < r.io.count; ++i)
                        vcpu::detail::store_le(data.subspan(i * size, size), d.port_in(r.io.port));
                }
                break;
            }
            case KVM_EXIT_MMIO: {
                if (!mmio_len_ok(r)) return false;
                std::span<std::byte> data(reinterpret_cast<std::byte*>(r.mmio.data), r.mmio.len);
                if (r.mmio.is_write) d.mmio_write(r.mmio.phys_addr, vcpu::detail::load_le(data));
                else vcpu::detail::store_le(data, d.mmio_read(r.mmio.phys_addr));
                break;
            }
            case KVM_EXIT_HLT: d.halt(); break;
            case KVM_EXIT_SHUTDOWN: return true;
            default: return false;
            }
        }
    }
};

// ---- vcpu::basic_vcpu ----------------------------------------------------------------------------

template <class Hal>
struct vcpu_design {
    vcpu::basic_vcpu<x86_64, Hal>& cpu;
    devices& d;
    bool round() noexcept {
        auto r = cpu.run(
            [&](vcpu::port_io& io) noexcept {
                if (io.is_out())
                    for (u32 i = 0; i < io.count; ++i) d.port_out(io.port, io.value(i));
                else
                    for (u32 i = 0; i < io.count; ++i) io.set(d.port_in(io.port), i);
            },
            [&](vcpu::mmio& m) noexcept {
                if (m.is_write()) d.mmio_write(m.address, m.value());
                else m.set(d.mmio_read(m.address));
            },
            [&](vcpu::coalesced_write& w) noexcept { d.coalesced(w); },
            [&](vcpu::halt&) noexcept { d.halt(); });
        return r && std::holds_alternative<vcpu::shutdown>(*r);
    }
};

// ---- (b) virtual HAL + virtual handlers (Cloud Hypervisor shape) --------------------------------

struct vm_exit {
    enum class kind : std::uint8_t { io_out, io_in, mmio_write, mmio_read, halt, shutdown, other };
    kind k = kind::other;
    u64 addr = 0;
    u32 size = 0, count = 0;
    std::span<std::byte> data;
};

struct vmm_ops { // hypervisor::VmmOps / vm_device::Bus in Cloud Hypervisor
    virtual ~vmm_ops() = default;
    virtual void pio_write(u16 port, std::span<const std::byte> data) = 0;
    virtual void pio_read(u16 port, std::span<std::byte> data) = 0;
    virtual void mmio_write(u64 addr, std::span<const std::byte> data) = 0;
    virtual void mmio_read(u64 addr, std::span<std::byte> data) = 0;
    virtual void coalesced(const vcpu::coalesced_write& w) = 0;
    virtual void halt() = 0;
};

struct vcpu_iface { // hypervisor::Vcpu in Cloud Hypervisor
    virtual ~vcpu_iface() = default;
    virtual bool run(vm_exit& e) = 0;
    virtual void drain_coalesced(vmm_ops& ops) = 0;
};

template <class HV>
struct kvm_vcpu_impl final : vcpu_iface {
    explicit kvm_vcpu_impl(HV& h) : h(h) {}
    HV& h;
    bool run(vm_exit& e) override {
        if (!h.enter()) return false;
        const auto v = h.exit_record();
        if (!record_ok(v)) return false;
        auto& r = *v.run;
        switch (r.exit_reason) {
        case KVM_EXIT_IO: {
            auto data = io_data(v);
            if (data.empty()) return false;
            e = {r.io.direction == KVM_EXIT_IO_OUT ? vm_exit::kind::io_out : vm_exit::kind::io_in,
                 r.io.port, r.io.size, r.io.count, data};
            return true;
        }
        case KVM_EXIT_MMIO:
            if (!mmio_len_ok(r)) return false;
            e = {r.mmio.is_write ? vm_exit::kind::mmio_write : vm_exit::kind::mmio_read,
                 r.mmio.phys_addr, r.mmio.len, 1,
                 std::span<std::byte>(reinterpret_cast<std::byte*>(r.mmio.data), r.mmio.len)};
            return true;
        case KVM_EXIT_HLT: e = {vm_exit::kind::halt, 0, 0, 0, {}}; return true;
        case KVM_EXIT_SHUTDOWN: e = {vm_exit::kind::shutdown, 0, 0, 0, {}}; return true;
        default: e = {vm_exit::kind::other, r.exit_reason, 0, 0, {}}; return true;
        }
    }
    void drain_coalesced(vmm_ops& ops) override {
        h.drain_coalesced([&](vcpu::coalesced_write& w) {
            ops.coalesced(w);
            return true;
        });
    }
};

struct vmm_impl final : vmm_ops {
    explicit vmm_impl(devices& d) : d(d) {}
    devices& d;
    void pio_write(u16 port, std::span<const std::byte> data) override {
        d.port_out(port, static_cast<u32>(vcpu::detail::load_le(data)));
    }
    void pio_read(u16 port, std::span<std::byte> data) override {
        vcpu::detail::store_le(data, d.port_in(port));
    }
    void mmio_write(u64 addr, std::span<const std::byte> data) override {
        d.mmio_write(addr, vcpu::detail::load_le(data));
    }
    void mmio_read(u64 addr, std::span<std::byte> data) override {
        vcpu::detail::store_le(data, d.mmio_read(addr));
    }
    void coalesced(const vcpu::coalesced_write& w) override { d.coalesced(w); }
    void halt() override { d.halt(); }
};

/// Hides the dynamic type from the optimiser, as a separate translation unit (or crate) would.
template <class T>
T* opaque(T* p) {
    benchmark::DoNotOptimize(p);
    return p;
}

struct virtual_design {
    vcpu_iface* cpu;
    vmm_ops* ops;
    bool round() {
        vm_exit e;
        for (;;) {
            if (!cpu->run(e)) return false;
            cpu->drain_coalesced(*ops);
            switch (e.k) {
            case vm_exit::kind::io_out:
                for (u32 i = 0; i < e.count; ++i)
                    ops->pio_write(static_cast<u16>(e.addr), e.data.subspan(i * e.size, e.size));
                break;
            case vm_exit::kind::io_in:
                for (u32 i = 0; i < e.count; ++i)
                    ops->pio_read(static_cast<u16>(e.addr), e.data.subspan(i * e.size, e.size));
                break;
            case vm_exit::kind::mmio_write: ops->mmio_write(e.addr, e.data); break;
            case vm_exit::kind::mmio_read: ops->mmio_read(e.addr, e.data); break;
            case vm_exit::kind::halt: ops->halt(); break;
            case vm_exit::kind::shutdown: return true;
            case vm_exit::kind::other: return false;
            }
        }
    }
};

// ---- (c) std::function bus with linear lookup (the minimal C VMM's shape) -----------------------

struct fn_bus {
    using handler = std::function<void(u64 addr, std::span<std::byte> data, bool write)>;
    struct entry {
        u64 base, len;
        handler fn;
    };
    std::vector<entry> entries;
    bool access(u64 addr, std::span<std::byte> data, bool write) {
        for (auto& e : entries)
            if (addr - e.base < e.len) {
                e.fn(addr, data, write);
                return true;
            }
        return false;
    }
};

/// The C VMM's port and MMIO buses: legacy devices first, the serial port and our device last.
void build_buses(fn_bus& pio, fn_bus& mmio, devices& d) {
    auto ignore = [](u64, std::span<std::byte> data, bool write) {
        if (!write) vcpu::detail::store_le(data, ~u64{0});
    };
    pio.entries.push_back({0x20, 2, ignore});  // PIC master
    pio.entries.push_back({0x40, 4, ignore});  // PIT
    pio.entries.push_back({0x60, 5, ignore});  // i8042
    pio.entries.push_back({0x70, 2, ignore});  // RTC
    pio.entries.push_back({post_port, 1, [&d](u64, std::span<std::byte> data, bool write) {
                               if (write) d.post_out(static_cast<u32>(vcpu::detail::load_le(data)));
                           }});
    pio.entries.push_back({0xa0, 2, ignore});  // PIC slave
    pio.entries.push_back({0xcf8, 8, ignore}); // PCI config
    pio.entries.push_back({serial_thr, 8, [&d](u64 port, std::span<std::byte> data, bool write) {
                               if (write) d.serial_out(static_cast<u16>(port), static_cast<u32>(vcpu::detail::load_le(data)));
                               else vcpu::detail::store_le(data, d.serial_in(static_cast<u16>(port)));
                           }});
    mmio.entries.push_back({0xfec00000, 0x1000, ignore}); // IOAPIC
    mmio.entries.push_back({0xfee00000, 0x1000, ignore}); // local APIC
    mmio.entries.push_back({bell_base, 0x1000, [&d](u64, std::span<std::byte> data, bool) {
                                d.doorbell(vcpu::detail::load_le(data));
                            }});
    mmio.entries.push_back({dev_base, dev_size, [&d](u64 addr, std::span<std::byte> data, bool write) {
                                if (write) d.dev_write(addr, vcpu::detail::load_le(data));
                                else vcpu::detail::store_le(data, d.dev_read(addr));
                            }});
}

template <class HV>
struct function_design {
    HV& h;
    devices& d;
    fn_bus& pio;
    fn_bus& mmio;
    bool round() {
        for (;;) {
            if (!h.enter()) return false;
            h.drain_coalesced([&](vcpu::coalesced_write& w) {
                auto bytes = w.bytes;
                if (!mmio.access(w.address, std::span<std::byte>(bytes).first(w.size), true)) ++d.unknown;
                return true;
            });
            const auto v = h.exit_record();
            if (!record_ok(v)) return false;
            auto& r = *v.run;
            switch (r.exit_reason) {
            case KVM_EXIT_IO: {
                auto data = io_data(v);
                if (data.empty()) return false;
                const bool write = r.io.direction == KVM_EXIT_IO_OUT;
                for (u32 i = 0; i < r.io.count; ++i)
                    if (!pio.access(r.io.port, data.subspan(i * r.io.size, r.io.size), write)) ++d.unknown;
                break;
            }
            case KVM_EXIT_MMIO: {
                if (!mmio_len_ok(r)) return false;
                std::span<std::byte> data(reinterpret_cast<std::byte*>(r.mmio.data), r.mmio.len);
                if (!mmio.access(r.mmio.phys_addr, data, r.mmio.is_write != 0)) ++d.unknown;
                break;
            }
            case KVM_EXIT_HLT: d.halt(); break;
            case KVM_EXIT_SHUTDOWN: return true;
            default: return false;
            }
        }
    }
};

// ---- (d) std::variant + std::visit ----------------------------------------------------------------

struct io_exit {
    u16 port;
    u32 size, count;
    bool out;
    std::span<std::byte> data;
};
struct mmio_exit {
    u64 addr;
    bool write;
    std::span<std::byte> data;
};
struct halt_exit {};
struct shutdown_exit {};
struct other_exit {
    u32 reason;
};
using variant_exit = std::variant<io_exit, mmio_exit, halt_exit, shutdown_exit, other_exit>;

template <class... F>
struct overloaded : F... {
    using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;

template <class HV>
struct variant_design {
    HV& h;
    devices& d;
    static variant_exit decode(const vcpu::kvm::run_view& v) noexcept {
        auto& r = *v.run;
        switch (r.exit_reason) {
        case KVM_EXIT_IO: {
            auto data = io_data(v);
            if (data.empty()) return other_exit{r.exit_reason};
            return io_exit{r.io.port, r.io.size, r.io.count, r.io.direction == KVM_EXIT_IO_OUT, data};
        }
        case KVM_EXIT_MMIO:
            if (!mmio_len_ok(r)) return other_exit{r.exit_reason};
            return mmio_exit{r.mmio.phys_addr, r.mmio.is_write != 0,
                             std::span<std::byte>(reinterpret_cast<std::byte*>(r.mmio.data), r.mmio.len)};
        case KVM_EXIT_HLT: return halt_exit{};
        case KVM_EXIT_SHUTDOWN: return shutdown_exit{};
        default: return other_exit{r.exit_reason};
        }
    }
    bool round() {
        for (;;) {
            if (!h.enter()) return false;
            h.drain_coalesced([&](vcpu::coalesced_write& w) {
                d.coalesced(w);
                return true;
            });
            const auto v = h.exit_record();
            if (!record_ok(v)) return false;
            const variant_exit e = decode(v);
            // 0 = resume, 1 = round done, 2 = error
            const int next = std::visit(
                overloaded{
                    [&](const io_exit& io) {
                        for (u32 i = 0; i < io.count; ++i) {
                            auto item = io.data.subspan(i * io.size, io.size);
                            if (io.out) d.port_out(io.port, static_cast<u32>(vcpu::detail::load_le(item)));
                            else vcpu::detail::store_le(item, d.port_in(io.port));
                        }
                        return 0;
                    },
                    [&](const mmio_exit& m) {
                        if (m.write) d.mmio_write(m.addr, vcpu::detail::load_le(m.data));
                        else vcpu::detail::store_le(m.data, d.mmio_read(m.addr));
                        return 0;
                    },
                    [&](const halt_exit&) {
                        d.halt();
                        return 0;
                    },
                    [](const shutdown_exit&) { return 1; },
                    [](const other_exit&) { return 2; },
                },
                e);
            if (next != 0) return next == 1;
        }
    }
};

// ---- building a design over a HAL ---------------------------------------------------------------

enum class design { switch_, vcpu, virtual_, function, variant };
enum class hal_kind { mock, ring };

template <hal_kind K>
using hal_t = std::conditional_t<K == hal_kind::mock, vcpu::kvm::mock::hal, bench::ring_hal>;
template <hal_kind K>
using hal_vcpu_t = typename hal_t<K>::template vcpu<x86_64>;

template <hal_kind K>
hal_vcpu_t<K> make_hal(std::size_t max_events = 0) {
    if constexpr (K == hal_kind::mock)
        return hal_vcpu_t<K>(make_round(), vcpu::kvm::mock::options{max_events, true});
    else
        return hal_vcpu_t<K>(make_round());
}

/// Runs `rounds` rounds of design `D` over HAL `K`, calling `body(round_fn)` to drive them; the
/// round function is noinline so its loop is one symbol in `objdump -d` (see docs/benchmarks.md).
template <design D, hal_kind K, class Body>
bool with_design(devices& d, hal_vcpu_t<K>&& hv, Body&& body) {
    if constexpr (D == design::switch_) {
        switch_design<hal_vcpu_t<K>> s{hv, d};
        return body([&]() noexcept { return s.round(); });
    } else if constexpr (D == design::vcpu) {
        vcpu::basic_vcpu<x86_64, hal_t<K>> cpu(std::move(hv));
        vcpu_design<hal_t<K>> s{cpu, d};
        return body([&]() noexcept { return s.round(); });
    } else if constexpr (D == design::virtual_) {
        kvm_vcpu_impl<hal_vcpu_t<K>> impl(hv);
        vmm_impl ops(d);
        virtual_design s{opaque<vcpu_iface>(&impl), opaque<vmm_ops>(&ops)};
        return body([&]() { return s.round(); });
    } else if constexpr (D == design::function) {
        fn_bus pio, mmio;
        build_buses(pio, mmio, d);
        function_design<hal_vcpu_t<K>> s{hv, d, pio, mmio};
        return body([&]() { return s.round(); });
    } else {
        variant_design<hal_vcpu_t<K>> s{hv, d};
        return body([&]() { return s.round(); });
    }
}

/// One round of design D over HAL K, out of line: the symbol to disassemble.
template <design D, hal_kind K, class Round>
[[gnu::noinline]] bool hot_round(Round& round) {
    bool r = round();
    benchmark::DoNotOptimize(r); // no tail call: callgrind --toggle-collect=*hot_round* sees it all
    return r;
}

/// Answers recorded by a mock vCPU's event log.
template <class HV>
std::vector<u64> answers_of(const HV& h) {
    std::vector<u64> out;
    for (const auto& e : h.events())
        if (e.what == vcpu::kvm::mock::event::kind::answer) out.push_back(e.value);
    return out;
}

double switch_ns[2] = {0, 0}; // per HAL kind, set by the switch case (registered first)

template <design D, hal_kind K>
void BM_framework(benchmark::State& state) {
    // 1. Answers: run one round over the logging mock and compare what the handlers wrote.
    {
        devices d;
        vcpu::kvm::mock::hal::vcpu<x86_64> hv(make_round(), vcpu::kvm::mock::options{4096, false});
        std::vector<u64> got;
        bool ok = false;
        if constexpr (D == design::vcpu) {
            vcpu::basic_vcpu<x86_64, vcpu::kvm::mock::hal> cpu(std::move(hv));
            ok = vcpu_design<vcpu::kvm::mock::hal>{cpu, d}.round();
            got = answers_of(cpu.hal());
        } else {
            ok = with_design<D, hal_kind::mock>(d, std::move(hv), [](auto&& r) { return r(); });
            // with_design moved from hv only for design::vcpu; other designs used it in place.
            got = answers_of(hv);
        }
        auto want = std::vector<u64>(expected_answers.begin(), expected_answers.end());
        if (bench::corrupt()) want[0] ^= 1;
        if (!ok || got != want || !(d == expected(1))) {
            state.SkipWithError("framework: wrong answers or device accesses in the check round");
            return;
        }
    }
    // 2. Timing.
    devices d;
    u64 rounds = 0;
    double ns = 0;
    const bool ok = with_design<D, K>(d, make_hal<K>(), [&](auto&& round) {
        const double t0 = bench::thread_cpu_ns();
        for (auto _ : state) {
            const bool r = hot_round<D, K>(round);
            benchmark::DoNotOptimize(r);
            if (!r) return false;
            ++rounds;
        }
        ns = bench::thread_cpu_ns() - t0;
        return true;
    });
    benchmark::DoNotOptimize(d);
    if (!ok || !(d == expected(rounds))) {
        state.SkipWithError("framework: device model saw unexpected accesses");
        return;
    }
    const u64 exits = rounds * exits_per_round;
    const double per_exit = exits ? ns / static_cast<double>(exits) : 0;
    state.counters["ns_per_exit"] = per_exit;
    auto& base = switch_ns[static_cast<int>(K)];
    if constexpr (D == design::switch_) base = per_exit;
    if (base > 0) state.counters["ratio_to_switch"] = per_exit / base;
    state.SetItemsProcessed(static_cast<std::int64_t>(exits));
}

/// VCPU_BENCH_ITERATIONS=n runs every case exactly n iterations, once (scripts/bench uses it
/// under callgrind, where instructions per exit = collected instructions / (n * exits per round)).
template <hal_kind K>
void register_for_hal(const char* hal_name) {
    const std::string p = std::string("framework/") + hal_name + "/";
    const char* fixed = std::getenv("VCPU_BENCH_ITERATIONS");
    auto add = [&](const char* name, void (*fn)(benchmark::State&)) {
        auto* b = benchmark::RegisterBenchmark((p + name).c_str(), fn);
        if (fixed != nullptr) b->Iterations(std::atoll(fixed));
    };
    add("switch", BM_framework<design::switch_, K>);
    add("vcpu", BM_framework<design::vcpu, K>);
    add("virtual", BM_framework<design::virtual_, K>);
    add("function", BM_framework<design::function, K>);
    add("variant", BM_framework<design::variant, K>);
}

[[maybe_unused]] const bool registered = [] {
    register_for_hal<hal_kind::ring>("ring");
    register_for_hal<hal_kind::mock>("mock");
    return true;
}();

} // namespace

VCPU_BENCH_MAIN(false)
