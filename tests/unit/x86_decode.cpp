// The x86-64 kvm_run decoder against synthetic kvm_run contents: every exit kind it handles,
// and hostile sizes, counts, offsets and lengths that must become malformed_exit (never a view
// outside the mapping).
#include <arch/x86_64/arch.hpp>
#include <kvm/exits.hpp>
#include <vcpu/exits.hpp>
#include <kvm/run.hpp>

#include <doctest/doctest.h>
#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <new>
#include <span>
#include <variant>

namespace {

namespace x86 = vcpu::x86_64;
using arch = vcpu::arch::x86_64;
using why = vcpu::malformed_exit::why;

template <class List> struct variant_of;
template <class... Ts> struct variant_of<vcpu::type_list<Ts...>> {
    using type = std::variant<std::monostate, Ts...>;
};
/// Any exit the decoder can produce (monostate = the visitor was never called).
using any_exit = variant_of<x86::exit_types>::type;

/// A page-aligned, zeroed 3-page kvm_run area, as KVM maps it on x86.
class run_area {
public:
    static constexpr std::size_t bytes = 3 * 4096;

    run_area() : p_(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{4096}))) {
        std::memset(p_, 0, bytes);
        run_ = ::new (static_cast<void*>(p_))::kvm_run{};
    }
    ~run_area() { ::operator delete(p_, std::align_val_t{4096}); }
    run_area(const run_area&) = delete;
    run_area& operator=(const run_area&) = delete;

    [[nodiscard]] ::kvm_run& run() noexcept { return *run_; }
    [[nodiscard]] std::byte* base() noexcept { return p_; }
    [[nodiscard]] vcpu::kvm::run_view view(std::size_t mapped = bytes) noexcept {
        return {run_, mapped};
    }
    /// True when `s` (of any element type) lies inside the mapped area.
    template <class T>
    [[nodiscard]] bool inside(std::span<T> s, std::size_t mapped = bytes) const noexcept {
        const auto* b = reinterpret_cast<const std::byte*>(s.data());
        return b >= p_ && b + s.size_bytes() <= p_ + mapped;
    }
    void fill(std::uint64_t seed) noexcept {
        // xorshift: deterministic garbage for the "hostile bytes" sweep.
        for (std::size_t i = 0; i < bytes; i += 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::memcpy(p_ + i, &seed, 8);
        }
    }

private:
    std::byte* p_;
    ::kvm_run* run_;
};

struct decoded {
    any_exit exit;
    int calls = 0;

    template <class E>
    [[nodiscard]] bool is() const noexcept {
        return std::holds_alternative<E>(exit);
    }
    template <class E>
    [[nodiscard]] const E& as() const noexcept {
        return *std::get_if<E>(&exit);
    }
};

/// Decodes through the arch policy, recording the exit's type and value.
decoded decode(const vcpu::kvm::run_view& v) {
    decoded d;
    vcpu::decode_exit<arch>(v, [&]<class E>(E& e) noexcept {
        static_assert(vcpu::list_contains_v<E, x86::exit_types>);
        d.exit.template emplace<E>(e);
        ++d.calls;
    });
    return d;
}

void set_io(::kvm_run& r, std::uint8_t dir, std::uint8_t size, std::uint16_t port,
            std::uint32_t count, std::uint64_t offset) {
    r.exit_reason = KVM_EXIT_IO;
    r.io.direction = dir;
    r.io.size = size;
    r.io.port = port;
    r.io.count = count;
    r.io.data_offset = offset;
}

/// Expects a malformed_exit with this reason and offending value.
void check_malformed(const decoded& d, why w, std::uint64_t raw_reason, std::uint64_t value) {
    CHECK(d.calls == 1);
    REQUIRE(d.is<vcpu::malformed_exit>());
    const auto& m = d.as<vcpu::malformed_exit>();
    CHECK(m.reason == w);
    CHECK(m.raw_reason == raw_reason);
    CHECK(m.value == value);
    CHECK(!m.describe().empty());
}

} // namespace

TEST_CASE("x86 decode: port I/O OUT of each size reads the data page") {
    run_area a;
    for (std::uint8_t size : {std::uint8_t{1}, std::uint8_t{2}, std::uint8_t{4}}) {
        CAPTURE(size);
        set_io(a.run(), KVM_EXIT_IO_OUT, size, 0x3f8, 1, 4096);
        const std::uint32_t v = 0xa1b2c3d4u;
        std::memcpy(a.base() + 4096, &v, 4);
        auto d = decode(a.view());
        CHECK(d.calls == 1);
        REQUIRE(d.is<vcpu::port_io>());
        const auto& io = d.as<vcpu::port_io>();
        CHECK(io.port == 0x3f8);
        CHECK(io.size == size);
        CHECK(io.count == 1);
        CHECK(io.is_out());
        CHECK_FALSE(io.is_in());
        CHECK(io.data.data() == a.base() + 4096);
        CHECK(io.data.size() == size);
        CHECK(a.inside(io.data));
        const std::uint32_t mask = size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
        CHECK(io.value() == (v & mask));
    }
}

TEST_CASE("x86 decode: port I/O IN answer lands at data_offset") {
    run_area a;
    // An offset other than the usual 4096 proves the decoder follows data_offset.
    constexpr std::uint64_t off = 0x1234;
    set_io(a.run(), KVM_EXIT_IO_IN, 2, 0x71, 1, off);
    auto d = decode(a.view());
    REQUIRE(d.is<vcpu::port_io>());
    const auto& io = d.as<vcpu::port_io>();
    CHECK(io.is_in());
    CHECK(io.port == 0x71);
    CHECK(io.data.data() == a.base() + off);
    io.set(0xbeef);
    CHECK(std::to_integer<int>(a.base()[off]) == 0xef);
    CHECK(std::to_integer<int>(a.base()[off + 1]) == 0xbe);
    CHECK(std::to_integer<int>(a.base()[off + 2]) == 0); // no write past the item
    CHECK(io.value() == 0xbeef);
    io.set(0x1111, 1); // item 1 does not exist: ignored
    CHECK(std::to_integer<int>(a.base()[off + 2]) == 0);
}

TEST_CASE("x86 decode: rep outs / rep ins items via value(i), set(v, i), fill") {
    run_area a;
    set_io(a.run(), KVM_EXIT_IO_OUT, 2, 0x1f0, 4, 4096);
    for (std::uint16_t i = 0; i < 4; ++i) {
        const std::uint16_t w = static_cast<std::uint16_t>(0x1000 + i);
        std::memcpy(a.base() + 4096 + 2 * i, &w, 2);
    }
    auto d = decode(a.view());
    REQUIRE(d.is<vcpu::port_io>());
    const auto& outs = d.as<vcpu::port_io>();
    CHECK(outs.count == 4);
    CHECK(outs.data.size() == 8);
    for (std::uint32_t i = 0; i < 4; ++i) CHECK(outs.value(i) == 0x1000 + i);
    CHECK(outs.value(4) == 0); // past the last item

    run_area b;
    set_io(b.run(), KVM_EXIT_IO_IN, 4, 0x60, 3, 4096);
    auto e = decode(b.view());
    REQUIRE(e.is<vcpu::port_io>());
    const auto& ins = e.as<vcpu::port_io>();
    ins.fill(0x55aa55aa);
    ins.set(0x01020304, 2);
    std::array<std::uint32_t, 4> got{};
    std::memcpy(got.data(), b.base() + 4096, sizeof got);
    CHECK(got[0] == 0x55aa55aa);
    CHECK(got[1] == 0x55aa55aa);
    CHECK(got[2] == 0x01020304);
    CHECK(got[3] == 0); // fill stops at count
}

TEST_CASE("x86 decode: port I/O sizes other than 1, 2, 4 are malformed") {
    run_area a;
    for (std::uint8_t size : {std::uint8_t{0}, std::uint8_t{3}, std::uint8_t{8}, std::uint8_t{255}}) {
        CAPTURE(size);
        set_io(a.run(), KVM_EXIT_IO_OUT, size, 0x80, 1, 4096);
        check_malformed(decode(a.view()), why::io_size, KVM_EXIT_IO, size);
    }
}

TEST_CASE("x86 decode: port I/O count 0 is malformed") {
    run_area a;
    set_io(a.run(), KVM_EXIT_IO_IN, 1, 0x80, 0, 4096);
    check_malformed(decode(a.view()), why::io_count, KVM_EXIT_IO, 0);
}

TEST_CASE("x86 decode: port I/O data outside the mapping is malformed") {
    run_area a;
    constexpr auto max = std::numeric_limits<std::uint64_t>::max();
    SUBCASE("count x size runs past the end") {
        set_io(a.run(), KVM_EXIT_IO_OUT, 4, 0x80, 2049, 4096); // 4096 + 8196 > 12288
        check_malformed(decode(a.view()), why::io_out_of_bounds, KVM_EXIT_IO, 4096);
    }
    SUBCASE("huge count cannot overflow the length") {
        set_io(a.run(), KVM_EXIT_IO_OUT, 4, 0x80, 0xffffffffu, 0);
        check_malformed(decode(a.view()), why::io_out_of_bounds, KVM_EXIT_IO, 0);
    }
    SUBCASE("data_offset past the mapping") {
        set_io(a.run(), KVM_EXIT_IO_IN, 1, 0x80, 1, run_area::bytes);
        check_malformed(decode(a.view()), why::io_out_of_bounds, KVM_EXIT_IO, run_area::bytes);
    }
    SUBCASE("data_offset near UINT64_MAX cannot wrap") {
        for (std::uint64_t off : {max, max - 1, max - 3, max - run_area::bytes + 1}) {
            CAPTURE(off);
            set_io(a.run(), KVM_EXIT_IO_IN, 4, 0x80, 1, off);
            check_malformed(decode(a.view()), why::io_out_of_bounds, KVM_EXIT_IO, off);
        }
    }
    SUBCASE("the last item ends exactly at the mapping's end: accepted") {
        set_io(a.run(), KVM_EXIT_IO_IN, 4, 0x80, 2, run_area::bytes - 8);
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::port_io>());
        CHECK(d.as<vcpu::port_io>().data.data() == a.base() + run_area::bytes - 8);
        CHECK(a.inside(d.as<vcpu::port_io>().data));
        // One byte further is out.
        a.run().io.data_offset = run_area::bytes - 7;
        check_malformed(decode(a.view()), why::io_out_of_bounds, KVM_EXIT_IO, run_area::bytes - 7);
    }
    SUBCASE("the bound is the mapped size, not the buffer") {
        set_io(a.run(), KVM_EXIT_IO_IN, 1, 0x80, 1, 4096);
        check_malformed(decode(a.view(4096)), why::io_out_of_bounds, KVM_EXIT_IO, 4096);
        auto d = decode(a.view(4097));
        REQUIRE(d.is<vcpu::port_io>());
        CHECK(a.inside(d.as<vcpu::port_io>().data, 4097));
    }
}

TEST_CASE("x86 decode: MMIO write and read of every length 1..8") {
    run_area a;
    for (std::uint32_t len = 1; len <= 8; ++len) {
        CAPTURE(len);
        auto& r = a.run();
        r.exit_reason = KVM_EXIT_MMIO;
        r.mmio.phys_addr = 0xfee00000 + len;
        r.mmio.len = len;
        r.mmio.is_write = 1;
        const std::uint64_t v = 0x8877665544332211ull;
        std::memcpy(r.mmio.data, &v, 8);
        auto d = decode(a.view());
        CHECK(d.calls == 1);
        REQUIRE(d.is<vcpu::mmio>());
        const auto& w = d.as<vcpu::mmio>();
        CHECK(w.address == 0xfee00000 + len);
        CHECK(w.size == len);
        CHECK(w.is_write());
        CHECK(w.data.data() == reinterpret_cast<std::byte*>(r.mmio.data));
        CHECK(w.data.size() == len);
        CHECK(a.inside(w.data));
        const std::uint64_t mask = len == 8 ? ~0ull : (1ull << (8 * len)) - 1;
        CHECK(w.value() == (v & mask));

        std::memset(r.mmio.data, 0, 8);
        r.mmio.is_write = 0;
        auto e = decode(a.view());
        REQUIRE(e.is<vcpu::mmio>());
        const auto& rd = e.as<vcpu::mmio>();
        CHECK(rd.is_read());
        rd.set(~0ull);
        std::uint64_t got = 0;
        std::memcpy(&got, r.mmio.data, 8);
        CHECK(got == mask); // exactly len bytes answered
    }
}

TEST_CASE("x86 decode: MMIO length 0 or > 8 is malformed") {
    run_area a;
    for (std::uint32_t len : {0u, 9u, 16u, 0xffffffffu}) {
        CAPTURE(len);
        a.run().exit_reason = KVM_EXIT_MMIO;
        a.run().mmio.len = len;
        check_malformed(decode(a.view()), why::mmio_size, KVM_EXIT_MMIO, len);
    }
}

TEST_CASE("x86 decode: exits without payload") {
    run_area a;
    auto kind = [&](std::uint32_t reason) {
        a.run().exit_reason = reason;
        return decode(a.view());
    };
    CHECK(kind(KVM_EXIT_HLT).is<vcpu::halt>());
    CHECK_FALSE(kind(KVM_EXIT_HLT).as<vcpu::halt>().wait_for_event);
    CHECK(kind(KVM_EXIT_SHUTDOWN).is<vcpu::shutdown>());
    CHECK(kind(KVM_EXIT_INTR).is<vcpu::interrupted>());
    CHECK(kind(KVM_EXIT_NMI).is<x86::nmi>());
    CHECK(kind(KVM_EXIT_X86_BUS_LOCK).is<x86::bus_lock>());
    CHECK(kind(KVM_EXIT_AP_RESET_HOLD).is<x86::ap_reset_hold>());
    CHECK(kind(KVM_EXIT_DIRTY_RING_FULL).is<vcpu::dirty_ring_full>());
    CHECK(kind(KVM_EXIT_HLT).calls == 1);
}

TEST_CASE("x86 decode: hypercall arguments and answer") {
    run_area a;
    auto& r = a.run();
    r.exit_reason = KVM_EXIT_HYPERCALL;
    r.hypercall.nr = 12;
    for (unsigned i = 0; i < 6; ++i) r.hypercall.args[i] = 100 + i;
    auto d = decode(a.view());
    REQUIRE(d.is<vcpu::hypercall>());
    const auto& h = d.as<vcpu::hypercall>();
    CHECK(h.nr == 12);
    for (unsigned i = 0; i < 6; ++i) CHECK(h.args[i] == 100 + i);
    CHECK(h.ret == &r.hypercall.ret);
    CHECK(h.ret2 == nullptr);
    h.answer(0xdead, 0xbeef); // second value has nowhere to go on x86: ignored
    CHECK(r.hypercall.ret == 0xdead);
}

TEST_CASE("x86 decode: RDMSR / WRMSR exits") {
    run_area a;
    auto& r = a.run();
    SUBCASE("read: answer and fault go to kvm_run") {
        r.exit_reason = KVM_EXIT_X86_RDMSR;
        r.msr.index = 0xc0000080;
        r.msr.reason = KVM_MSR_EXIT_REASON_FILTER;
        r.msr.data = 0x1234; // stale: not the value of a read
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::sysreg>());
        const auto& s = d.as<vcpu::sysreg>();
        CHECK(s.id == 0xc0000080);
        CHECK(s.is_read());
        CHECK(s.value == 0);
        CHECK(s.reason == KVM_MSR_EXIT_REASON_FILTER);
        CHECK(s.gpr == 0xff);
        s.answer(0xd01);
        CHECK(r.msr.data == 0xd01);
        CHECK(r.msr.error == 0);
        s.fail();
        CHECK(r.msr.error == 1);
    }
    SUBCASE("write: value, no answer slot") {
        r.exit_reason = KVM_EXIT_X86_WRMSR;
        r.msr.index = 0x1a0;
        r.msr.data = 0x801;
        r.msr.reason = KVM_MSR_EXIT_REASON_UNKNOWN;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::sysreg>());
        const auto& s = d.as<vcpu::sysreg>();
        CHECK(s.id == 0x1a0);
        CHECK_FALSE(s.is_read());
        CHECK(s.value == 0x801);
        CHECK(s.result == nullptr);
        CHECK(s.reason == KVM_MSR_EXIT_REASON_UNKNOWN);
        s.answer(7); // no-op
        CHECK(r.msr.data == 0x801);
        s.fail();
        CHECK(r.msr.error == 1);
    }
}

TEST_CASE("x86 decode: system events") {
    run_area a;
    auto& r = a.run();
    r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
    using k = vcpu::system_event::kind;
    const std::pair<std::uint32_t, k> table[] = {
        {KVM_SYSTEM_EVENT_SHUTDOWN, k::power_off}, {KVM_SYSTEM_EVENT_RESET, k::reset},
        {KVM_SYSTEM_EVENT_CRASH, k::crash},        {KVM_SYSTEM_EVENT_WAKEUP, k::wakeup},
        {KVM_SYSTEM_EVENT_SUSPEND, k::suspend},    {KVM_SYSTEM_EVENT_SEV_TERM, k::other},
        {0, k::other},                             {0xffffffffu, k::other},
    };
    for (const auto& entry : table) {
        const std::uint32_t type = entry.first;
        const k kind = entry.second;
        CAPTURE(type);
        r.system_event.type = type;
        r.system_event.ndata = 2;
        r.system_event.data[0] = 0xaa;
        r.system_event.data[1] = 0xbb;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::system_event>());
        const auto& e = d.as<vcpu::system_event>();
        CHECK(e.what == kind);
        CHECK(e.raw_type == type);
        CHECK(e.ndata == 2);
        CHECK(e.data[0] == 0xaa);
        CHECK(e.data[1] == 0xbb);
        CHECK(e.data[2] == 0);
    }
    SUBCASE("ndata past the kernel's 16 words is malformed") {
        for (std::uint32_t nd : {17u, 1000u, 0xffffffffu}) {
            r.system_event.ndata = nd;
            check_malformed(decode(a.view()), why::event_ndata, KVM_EXIT_SYSTEM_EVENT, nd);
        }
    }
    SUBCASE("ndata 16 is valid and every word is kept") {
        r.system_event.ndata = 16;
        for (unsigned i = 0; i < 16; ++i) r.system_event.data[i] = i + 1;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::system_event>());
        const auto& e = d.as<vcpu::system_event>();
        CHECK(e.data.size() == 16);
        CHECK(e.ndata == 16);
        for (std::size_t i = 0; i < e.data.size(); ++i) CHECK(e.data[i] == i + 1);
    }
}

TEST_CASE("x86 decode: fail_entry, exception, debug, TPR, EOI, notify, IRQ window") {
    run_area a;
    auto& r = a.run();
    SUBCASE("fail_entry") {
        r.exit_reason = KVM_EXIT_FAIL_ENTRY;
        r.fail_entry.hardware_entry_failure_reason = 0x80000021;
        r.fail_entry.cpu = 3;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::fail_entry>());
        CHECK(d.as<vcpu::fail_entry>().hardware_reason == 0x80000021);
        CHECK(d.as<vcpu::fail_entry>().cpu == 3);
    }
    SUBCASE("exception") {
        r.exit_reason = KVM_EXIT_EXCEPTION;
        r.ex.exception = x86::vector::gp;
        r.ex.error_code = 0x18;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::exception>());
        CHECK(d.as<x86::exception>().vector == 13);
        CHECK(d.as<x86::exception>().error_code == 0x18);
    }
    SUBCASE("debug") {
        r.exit_reason = KVM_EXIT_DEBUG;
        x86::debug_exit_layout dl{x86::vector::bp, 0, 0xffffffff81000000ull, 0xffff0ff1, 0x400};
        std::memcpy(&r.debug, &dl, sizeof dl);
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::debug>());
        const auto& g = d.as<vcpu::debug>();
        CHECK(g.exception == 3);
        CHECK(g.pc == 0xffffffff81000000ull);
        CHECK(g.status == 0xffff0ff1);
        CHECK(g.control == 0x400);
        CHECK(g.address == 0);
    }
    SUBCASE("irq window open reads if_flag") {
        r.exit_reason = KVM_EXIT_IRQ_WINDOW_OPEN;
        r.if_flag = 1;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::irq_window_open>());
        CHECK(d.as<x86::irq_window_open>().if_flag);
        r.if_flag = 0;
        CHECK_FALSE(decode(a.view()).as<x86::irq_window_open>().if_flag);
    }
    SUBCASE("set_tpr reads cr8") {
        r.exit_reason = KVM_EXIT_SET_TPR;
        r.cr8 = 0xf;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::set_tpr>());
        CHECK(d.as<x86::set_tpr>().cr8 == 0xf);
    }
    SUBCASE("tpr_access") {
        r.exit_reason = KVM_EXIT_TPR_ACCESS;
        r.tpr_access.rip = 0x7c00;
        r.tpr_access.is_write = 1;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::tpr_access>());
        CHECK(d.as<x86::tpr_access>().rip == 0x7c00);
        CHECK(d.as<x86::tpr_access>().write);
        r.tpr_access.is_write = 0;
        CHECK_FALSE(decode(a.view()).as<x86::tpr_access>().write);
    }
    SUBCASE("ioapic_eoi") {
        r.exit_reason = KVM_EXIT_IOAPIC_EOI;
        r.eoi.vector = 0x31;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::ioapic_eoi>());
        CHECK(d.as<x86::ioapic_eoi>().vector == 0x31);
    }
    SUBCASE("notify") {
        r.exit_reason = KVM_EXIT_NOTIFY;
        r.notify.flags = KVM_NOTIFY_CONTEXT_INVALID;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::notify>());
        CHECK(d.as<x86::notify>().flags == KVM_NOTIFY_CONTEXT_INVALID);
    }
}

TEST_CASE("x86 decode: Hyper-V and Xen exits expose the exit union") {
    run_area a;
    auto& r = a.run();
    for (std::uint32_t reason : {std::uint32_t{KVM_EXIT_HYPERV}, std::uint32_t{KVM_EXIT_XEN}}) {
        CAPTURE(reason);
        r.exit_reason = reason;
        const std::uint32_t type = reason == KVM_EXIT_HYPERV ? KVM_EXIT_HYPERV_HCALL : KVM_EXIT_XEN_HCALL;
        std::memcpy(a.base() + offsetof(::kvm_run, io), &type, 4);
        auto d = decode(a.view());
        std::span<std::byte> payload;
        std::uint32_t got = 0;
        if (reason == KVM_EXIT_HYPERV) {
            REQUIRE(d.is<x86::hyperv_exit>());
            payload = d.as<x86::hyperv_exit>().payload;
            got = d.as<x86::hyperv_exit>().type;
        } else {
            REQUIRE(d.is<x86::xen_exit>());
            payload = d.as<x86::xen_exit>().payload;
            got = d.as<x86::xen_exit>().type;
        }
        CHECK(got == type);
        CHECK(payload.data() == a.base() + offsetof(::kvm_run, io));
        CHECK(payload.size() == 256);
        CHECK(a.inside(payload, sizeof(::kvm_run)));
    }
}

TEST_CASE("x86 decode: internal errors") {
    run_area a;
    auto& r = a.run();
    r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
    SUBCASE("suberror and bounded data") {
        r.internal.suberror = KVM_INTERNAL_ERROR_DELIVERY_EV;
        r.internal.ndata = 3;
        for (unsigned i = 0; i < 16; ++i) r.internal.data[i] = 0x100 + i;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::internal_error>());
        const auto& e = d.as<vcpu::internal_error>();
        CHECK(e.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV);
        REQUIRE(e.data.size() == 3);
        CHECK(e.data.data() == r.internal.data);
        CHECK(e.data[2] == 0x102);
        CHECK(a.inside(e.data));
    }
    SUBCASE("ndata 16 is the whole array") {
        r.internal.ndata = 16;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::internal_error>());
        CHECK(d.as<vcpu::internal_error>().data.size() == 16);
        CHECK(a.inside(d.as<vcpu::internal_error>().data, sizeof(::kvm_run)));
    }
    SUBCASE("ndata > 16 is malformed") {
        for (std::uint32_t nd : {17u, 256u, 0xffffffffu}) {
            CAPTURE(nd);
            r.internal.ndata = nd;
            check_malformed(decode(a.view()), why::ndata, KVM_EXIT_INTERNAL_ERROR, nd);
        }
    }
}

TEST_CASE("x86 decode: emulation failure with instruction bytes") {
    run_area a;
    auto& r = a.run();
    r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
    r.emulation_failure.suberror = KVM_INTERNAL_ERROR_EMULATION;
    r.emulation_failure.ndata = 3;
    r.emulation_failure.flags = KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
    const std::uint8_t insn[] = {0x48, 0x0f, 0xc7, 0x0e}; // cmpxchg16b [rsi]
    r.emulation_failure.insn_size = sizeof insn;
    std::memcpy(r.emulation_failure.insn_bytes, insn, sizeof insn);
    SUBCASE("decoded as emulation_failure") {
        auto d = decode(a.view());
        REQUIRE(d.is<x86::emulation_failure>());
        const auto& e = d.as<x86::emulation_failure>();
        CHECK(e.flags == KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
        REQUIRE(e.insn.size() == 4);
        CHECK(e.insn.data() == r.emulation_failure.insn_bytes);
        CHECK(e.insn[0] == 0x48);
        CHECK(e.insn[3] == 0x0e);
        CHECK(a.inside(e.insn));
    }
    SUBCASE("15 bytes is the x86 maximum") {
        r.emulation_failure.insn_size = 15;
        auto d = decode(a.view());
        REQUIRE(d.is<x86::emulation_failure>());
        CHECK(d.as<x86::emulation_failure>().insn.size() == 15);
        CHECK(a.inside(d.as<x86::emulation_failure>().insn));
    }
    SUBCASE("insn_size > 15 falls back to internal_error") {
        for (std::uint8_t n : {std::uint8_t{16}, std::uint8_t{255}}) {
            r.emulation_failure.insn_size = n;
            auto d = decode(a.view());
            REQUIRE(d.is<vcpu::internal_error>());
            CHECK(d.as<vcpu::internal_error>().suberror == KVM_INTERNAL_ERROR_EMULATION);
            CHECK(d.as<vcpu::internal_error>().data.size() == 3);
        }
    }
    SUBCASE("without the instruction-bytes flag: internal_error") {
        r.emulation_failure.flags = 0;
        CHECK(decode(a.view()).is<vcpu::internal_error>());
    }
    SUBCASE("ndata too small for the overlay: internal_error") {
        r.emulation_failure.ndata = 2;
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::internal_error>());
        CHECK(d.as<vcpu::internal_error>().data.size() == 2);
    }
    SUBCASE("another suberror is not an emulation failure") {
        r.emulation_failure.suberror = KVM_INTERNAL_ERROR_SIMUL_EX;
        CHECK(decode(a.view()).is<vcpu::internal_error>());
    }
}

TEST_CASE("x86 decode: unknown exit reasons keep the raw code") {
    run_area a;
    auto& r = a.run();
    SUBCASE("KVM_EXIT_UNKNOWN carries the hardware exit reason") {
        r.exit_reason = KVM_EXIT_UNKNOWN;
        r.hw.hardware_exit_reason = 0x30; // VMX: EPT violation
        auto d = decode(a.view());
        REQUIRE(d.is<vcpu::unknown>());
        CHECK(d.as<vcpu::unknown>().raw == 0);
        CHECK(d.as<vcpu::unknown>().detail == 0x30);
    }
    SUBCASE("reasons no x86 decoder knows") {
        for (std::uint32_t reason : {1000u, 0xffffffffu, std::uint32_t{KVM_EXIT_S390_SIEIC},
                                     std::uint32_t{KVM_EXIT_RISCV_SBI}, std::uint32_t{KVM_EXIT_ARM_NISV}}) {
            CAPTURE(reason);
            r.exit_reason = reason;
            r.hw.hardware_exit_reason = 0x30;
            auto d = decode(a.view());
            CHECK(d.calls == 1);
            REQUIRE(d.is<vcpu::unknown>());
            CHECK(d.as<vcpu::unknown>().raw == reason);
            CHECK(d.as<vcpu::unknown>().detail == 0);
        }
    }
}

TEST_CASE("x86 decode: a mapping smaller than kvm_run is malformed, never read") {
    run_area a;
    a.run().exit_reason = KVM_EXIT_HLT;
    for (std::size_t mapped : {std::size_t{0}, std::size_t{64}, sizeof(::kvm_run) - 1}) {
        CAPTURE(mapped);
        check_malformed(decode(a.view(mapped)), why::io_out_of_bounds, 0, mapped);
    }
    check_malformed(decode(vcpu::kvm::run_view{nullptr, run_area::bytes}), why::io_out_of_bounds, 0,
                    run_area::bytes);
    CHECK(decode(a.view(sizeof(::kvm_run))).is<vcpu::halt>());
}

TEST_CASE("x86 decode: garbage kvm_run contents always give one exit with in-bounds views") {
    run_area a;
    // Every reason up to past the last one defined, over pseudo-random bytes, and two mappings.
    for (std::size_t mapped : {run_area::bytes, sizeof(::kvm_run) + 16}) {
        for (std::uint32_t reason = 0; reason < 48; ++reason) {
            for (std::uint64_t seed = 1; seed <= 16; ++seed) {
                a.fill(seed * 0x9e3779b97f4a7c15ull + reason);
                a.run().exit_reason = reason;
                if (seed % 2 == 0) { // half the time, a plausible port I/O header
                    a.run().io.size = static_cast<std::uint8_t>(1u << (seed % 3));
                    a.run().io.count = static_cast<std::uint32_t>(seed);
                    a.run().io.data_offset = 4096 + seed * 100;
                }
                auto d = decode(a.view(mapped));
                CAPTURE(reason);
                CAPTURE(seed);
                REQUIRE(d.calls == 1);
                CHECK_FALSE(d.is<std::monostate>());
                std::visit(
                    [&]<class E>(const E& e) {
                        if constexpr (std::is_same_v<E, vcpu::port_io>) {
                            CHECK(a.inside(e.data, mapped));
                            CHECK(e.data.size() == std::size_t{e.size} * e.count);
                        } else if constexpr (std::is_same_v<E, vcpu::mmio>) {
                            CHECK(a.inside(e.data, sizeof(::kvm_run)));
                            CHECK((e.size >= 1 && e.size <= 8));
                        } else if constexpr (std::is_same_v<E, vcpu::internal_error>) {
                            CHECK(a.inside(e.data, sizeof(::kvm_run)));
                        } else if constexpr (std::is_same_v<E, x86::emulation_failure>) {
                            CHECK(a.inside(e.insn, sizeof(::kvm_run)));
                            CHECK(e.insn.size() <= 15);
                        } else if constexpr (std::is_same_v<E, x86::hyperv_exit> ||
                                             std::is_same_v<E, x86::xen_exit>) {
                            CHECK(a.inside(e.payload, sizeof(::kvm_run)));
                        } else if constexpr (std::is_same_v<E, vcpu::system_event>) {
                            CHECK(e.ndata <= e.data.size());
                        }
                    },
                    d.exit);
            }
        }
    }
}
