// Fuzzes the x86-64 kvm_run decoder (arch/x86_64/exits.hpp over kvm/exits_common.hpp).
//
// Input: u16 mapping size selector, then the bytes of the kvm_run mapping (see raw_record).
// Invariants: the visitor runs once with a type of exit_types; decoding is deterministic and
// does not touch the record; the exit type (and malformed reason) is the one the KVM API text
// gives for the record (an oracle written independently of the decoder); every view and answer
// slot lies inside the mapping, at the field the API names; sizes are in their legal sets;
// answering through the exit writes only inside its views and slots, and reads back.
#include "kvm_run_common.hpp"

#include <arch/x86_64/arch.hpp>
#include <kvm/exits.hpp>

namespace {

namespace x86 = vcpu::x86_64;
using list = x86::exit_types;
using vcpu_fuzz::index_of_v;
using why = vcpu::malformed_exit::why;

vcpu_fuzz::expectation expect(const ::kvm_run& r, std::size_t mapped) {
    const auto is = [](auto t) { return vcpu_fuzz::expectation{index_of_v<decltype(t), list>, {}}; };
    const auto malformed = [](why w) { return vcpu_fuzz::expectation{index_of_v<vcpu::malformed_exit, list>, w}; };
    switch (r.exit_reason) {
    case KVM_EXIT_IO: {
        const unsigned size = r.io.size;
        if (size != 1 && size != 2 && size != 4) return malformed(why::io_size);
        if (r.io.count == 0) return malformed(why::io_count);
        const unsigned __int128 end = static_cast<unsigned __int128>(r.io.data_offset) +
                                      static_cast<unsigned __int128>(size) * r.io.count;
        if (end > mapped) return malformed(why::io_out_of_bounds);
        return is(vcpu::port_io{});
    }
    case KVM_EXIT_HLT: return is(vcpu::halt{});
    case KVM_EXIT_SHUTDOWN: return is(vcpu::shutdown{});
    case KVM_EXIT_HYPERCALL: return is(vcpu::hypercall{});
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR: return is(vcpu::sysreg{});
    case KVM_EXIT_DEBUG: return is(vcpu::debug{});
    case KVM_EXIT_EXCEPTION: return is(x86::exception{});
    case KVM_EXIT_IRQ_WINDOW_OPEN: return is(x86::irq_window_open{});
    case KVM_EXIT_SET_TPR: return is(x86::set_tpr{});
    case KVM_EXIT_TPR_ACCESS: return is(x86::tpr_access{});
    case KVM_EXIT_NMI: return is(x86::nmi{});
    case KVM_EXIT_IOAPIC_EOI: return is(x86::ioapic_eoi{});
    case KVM_EXIT_X86_BUS_LOCK: return is(x86::bus_lock{});
    case KVM_EXIT_NOTIFY: return is(x86::notify{});
    case KVM_EXIT_AP_RESET_HOLD: return is(x86::ap_reset_hold{});
    case KVM_EXIT_HYPERV: return is(x86::hyperv_exit{});
    case KVM_EXIT_XEN: return is(x86::xen_exit{});
    case KVM_EXIT_INTERNAL_ERROR:
        // api.rst: with KVM_INTERNAL_ERROR_EMULATION and the instruction-bytes flag, data[1]'s
        // low byte is insn_size (at most 15) and the bytes follow.
        if (r.internal.ndata <= 16 && r.internal.suberror == KVM_INTERNAL_ERROR_EMULATION &&
            r.internal.ndata >= 3 &&
            (r.internal.data[0] & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 &&
            (r.internal.data[1] & 0xff) <= 15)
            return is(x86::emulation_failure{});
        return vcpu_fuzz::expect_common<list>(r);
    default: return vcpu_fuzz::expect_common<list>(r);
    }
}

struct checker {
    const vcpu_fuzz::raw_record& rec;
    template <class E>
    void operator()(const E& e, vcpu_fuzz::digest& d) const {
        const ::kvm_run& r = rec.orig();
        ::kvm_run& live = *rec.view().run;
        if (vcpu_fuzz::check_common(e, rec, r, d)) return;
        if constexpr (std::is_same_v<E, vcpu::port_io>) {
            VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_IO);
            VCPU_FUZZ_CHECK(e.size == 1 || e.size == 2 || e.size == 4);
            VCPU_FUZZ_CHECK(e.count >= 1 && e.count == r.io.count && e.size == r.io.size);
            VCPU_FUZZ_CHECK(e.data.size() == std::size_t{e.size} * e.count);
            VCPU_FUZZ_CHECK(rec.holds(e.data.data(), e.data.size()));
            VCPU_FUZZ_CHECK(rec.offset_of(e.data.data()) == r.io.data_offset);
            VCPU_FUZZ_CHECK(e.port == r.io.port);
            VCPU_FUZZ_CHECK(e.is_in() == (r.io.direction == KVM_EXIT_IO_IN));
            d.add_all(e.port, e.size, e.count, e.is_in(), rec.offset_of(e.data.data()));
        } else if constexpr (std::is_same_v<E, vcpu::hypercall>) {
            VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_HYPERCALL && e.nr == r.hypercall.nr);
            for (std::size_t i = 0; i < 6; ++i) VCPU_FUZZ_CHECK(e.args[i] == r.hypercall.args[i]);
            VCPU_FUZZ_CHECK(e.ret == vcpu::answer_slot(&live.hypercall.ret) && !e.ret2);
            d.add(e.nr);
            for (auto a : e.args) d.add(a);
        } else if constexpr (std::is_same_v<E, vcpu::sysreg>) {
            const bool rd = r.exit_reason == KVM_EXIT_X86_RDMSR;
            VCPU_FUZZ_CHECK(rd || r.exit_reason == KVM_EXIT_X86_WRMSR);
            VCPU_FUZZ_CHECK(e.id == r.msr.index && e.reason == r.msr.reason && e.gpr == 0xff);
            VCPU_FUZZ_CHECK(e.is_read() == rd);
            VCPU_FUZZ_CHECK(e.value == (rd ? 0 : r.msr.data));
            VCPU_FUZZ_CHECK(e.result == (rd ? vcpu::answer_slot(&live.msr.data) : vcpu::answer_slot{}));
            VCPU_FUZZ_CHECK(e.fault == &live.msr.error);
            d.add_all(e.id, e.is_read(), e.value, e.reason);
        } else if constexpr (std::is_same_v<E, x86::emulation_failure>) {
            VCPU_FUZZ_CHECK(e.flags == r.internal.data[0]);
            VCPU_FUZZ_CHECK(e.insn.size() <= 15 && e.insn.size() == (r.internal.data[1] & 0xff));
            // The bytes follow insn_size inside data[1..2].
            VCPU_FUZZ_CHECK(static_cast<const void*>(e.insn.data()) ==
                            reinterpret_cast<const std::uint8_t*>(&live.internal.data[1]) + 1);
            VCPU_FUZZ_CHECK(vcpu_fuzz::inside(e.insn.data(), e.insn.size(), &live.internal.data[1], 16));
            d.add_all(e.flags, e.insn.size());
        } else if constexpr (std::is_same_v<E, vcpu::debug>) {
            x86::debug_exit_layout l{};
            std::memcpy(&l, &r.debug, sizeof l);
            VCPU_FUZZ_CHECK(e.pc == l.pc && e.exception == l.exception && e.status == l.dr6 &&
                            e.control == l.dr7 && e.address == 0);
            d.add_all(e.pc, e.exception, e.status, e.control);
        } else if constexpr (std::is_same_v<E, x86::exception>) {
            VCPU_FUZZ_CHECK(e.vector == r.ex.exception && e.error_code == r.ex.error_code);
            d.add_all(e.vector, e.error_code);
        } else if constexpr (std::is_same_v<E, x86::irq_window_open>) {
            VCPU_FUZZ_CHECK(e.if_flag == (r.if_flag != 0));
        } else if constexpr (std::is_same_v<E, x86::set_tpr>) {
            VCPU_FUZZ_CHECK(e.cr8 == r.cr8);
        } else if constexpr (std::is_same_v<E, x86::tpr_access>) {
            VCPU_FUZZ_CHECK(e.rip == r.tpr_access.rip && e.write == (r.tpr_access.is_write != 0));
        } else if constexpr (std::is_same_v<E, x86::ioapic_eoi>) {
            VCPU_FUZZ_CHECK(e.vector == r.eoi.vector);
        } else if constexpr (std::is_same_v<E, x86::notify>) {
            VCPU_FUZZ_CHECK(e.flags == r.notify.flags);
        } else if constexpr (std::is_same_v<E, x86::hyperv_exit> || std::is_same_v<E, x86::xen_exit>) {
            VCPU_FUZZ_CHECK(e.type == (std::is_same_v<E, x86::hyperv_exit> ? r.hyperv.type : r.xen.type));
            VCPU_FUZZ_CHECK(e.payload.size() == 256 && rec.holds(e.payload.data(), e.payload.size()));
            VCPU_FUZZ_CHECK(rec.offset_of(e.payload.data()) == offsetof(::kvm_run, io));
            d.add_all(e.type, e.payload.size());
        } else if constexpr (std::is_same_v<E, vcpu::halt> || std::is_same_v<E, vcpu::shutdown> ||
                             std::is_same_v<E, x86::nmi> || std::is_same_v<E, x86::bus_lock> ||
                             std::is_same_v<E, x86::ap_reset_hold>) {
            // no payload
        } else {
            VCPU_FUZZ_CHECK(!"the x86 kvm_run decoder produced an exit kind it never should");
        }
    }
};

template <class E, class Allow>
void answer(E& e, Allow& allow, const vcpu_fuzz::raw_record& rec) {
    ::kvm_run& live = *rec.view().run;
    if (vcpu_fuzz::answer_common(e, allow)) return;
    if constexpr (std::is_same_v<E, vcpu::port_io>) {
        allow(e.data.data(), e.data.size());
        const std::uint32_t mask = e.size == 4 ? ~0u : (1u << (8 * e.size)) - 1;
        for (std::uint32_t i = 0; i < e.count; ++i) {
            if (e.is_in()) {
                e.set(0xa5a50000u + i, i);
                VCPU_FUZZ_CHECK(e.value(i) == ((0xa5a50000u + i) & mask));
            } else {
                (void)e.value(i);
            }
        }
        e.set(1, e.count); // out of range: ignored
        VCPU_FUZZ_CHECK(e.value(e.count) == 0);
    } else if constexpr (std::is_same_v<E, vcpu::hypercall>) {
        vcpu_fuzz::answer_slot_at(e.ret, &live.hypercall.ret, 0x1122334455667788ull, allow);
    } else if constexpr (std::is_same_v<E, vcpu::sysreg>) {
        vcpu_fuzz::answer_slot_at(e.result, &live.msr.data, 0x0123456789abcdefull, allow);
        allow(&live.msr.error, 1);
        e.fail();
        VCPU_FUZZ_CHECK(live.msr.error == 1);
    } else if constexpr (std::is_same_v<E, x86::emulation_failure>) {
        unsigned sum = 0;
        for (auto b : e.insn) sum += b; // ASan checks every byte read
        (void)sum;
    } else if constexpr (std::is_same_v<E, x86::hyperv_exit> || std::is_same_v<E, x86::xen_exit>) {
        allow(e.payload.data(), e.payload.size());
        for (auto& b : e.payload) b = std::byte{0x5a};
    }
}

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    // Each seed: the mapping size selector (three pages), then a kvm_run from offset 0.
    auto seed = [&](const char* name, auto fill, std::span<const std::uint8_t> pio = {}) {
        ::kvm_run r{};
        fill(r);
        bytes_out b;
        b.put(std::uint16_t{vcpu_fuzz::max_mapped});
        b.raw(&r, sizeof r);
        if (!pio.empty()) {
            b.zeros(4096 - sizeof r);
            b.raw(pio);
        }
        out.add(name, b);
    };
    const std::uint8_t hello[] = {'h', 'i', '!', '\n', 0, 0, 0, 0};
    auto io = [&](const char* name, std::uint8_t dir, std::uint8_t sz, std::uint32_t count,
                  std::uint64_t off = 4096) {
        seed(name, [&](::kvm_run& r) {
            r.exit_reason = KVM_EXIT_IO;
            r.io.direction = dir;
            r.io.size = sz;
            r.io.port = 0x3f8;
            r.io.count = count;
            r.io.data_offset = off;
        }, hello);
    };
    io("io_out_1", KVM_EXIT_IO_OUT, 1, 1);
    io("io_in_2", KVM_EXIT_IO_IN, 2, 1);
    io("io_in_4", KVM_EXIT_IO_IN, 4, 1);
    io("io_rep_outs", KVM_EXIT_IO_OUT, 1, 8);
    io("io_rep_ins_4", KVM_EXIT_IO_IN, 4, 1024);       // exactly the port-data page
    io("io_bad_size_3", KVM_EXIT_IO_OUT, 3, 1);
    io("io_bad_count_0", KVM_EXIT_IO_IN, 1, 0);
    io("io_past_mapping", KVM_EXIT_IO_IN, 4, 2049, 4096 * 2); // ends 4 bytes past 3 pages
    io("io_offset_huge", KVM_EXIT_IO_OUT, 2, 1, ~0ull - 1);
    auto mmio = [&](const char* name, std::uint32_t len, bool wr) {
        seed(name, [&](::kvm_run& r) {
            r.exit_reason = KVM_EXIT_MMIO;
            r.mmio.phys_addr = 0xfee00000;
            r.mmio.len = len;
            r.mmio.is_write = wr;
            std::memcpy(r.mmio.data, "ABCDEFGH", 8);
        });
    };
    mmio("mmio_read_4", 4, false);
    mmio("mmio_write_8", 8, true);
    mmio("mmio_write_1", 1, true);
    mmio("mmio_len_0", 0, false);
    mmio("mmio_len_9", 9, true);
    auto simple = [&](const char* name, std::uint32_t reason) {
        seed(name, [&](::kvm_run& r) { r.exit_reason = reason; });
    };
    simple("hlt", KVM_EXIT_HLT);
    simple("shutdown", KVM_EXIT_SHUTDOWN);
    simple("intr", KVM_EXIT_INTR);
    simple("nmi", KVM_EXIT_NMI);
    simple("bus_lock", KVM_EXIT_X86_BUS_LOCK);
    simple("ap_reset_hold", KVM_EXIT_AP_RESET_HOLD);
    simple("dirty_ring_full", KVM_EXIT_DIRTY_RING_FULL);
    simple("reason_unknown_99", 99);
    seed("unknown_hw", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_UNKNOWN;
        r.hw.hardware_exit_reason = 0x7b;
    });
    seed("hypercall", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_HYPERCALL;
        r.hypercall.nr = 12;
        for (int i = 0; i < 6; ++i) r.hypercall.args[i] = 100 + i;
    });
    seed("rdmsr", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_X86_RDMSR;
        r.msr.index = 0x1a0;
        r.msr.reason = KVM_MSR_EXIT_REASON_UNKNOWN;
    });
    seed("wrmsr", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_X86_WRMSR;
        r.msr.index = 0xc0000080;
        r.msr.data = 0xd01;
        r.msr.reason = KVM_MSR_EXIT_REASON_FILTER;
    });
    seed("internal_error", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.suberror = KVM_INTERNAL_ERROR_DELIVERY_EV;
        r.internal.ndata = 4;
        for (int i = 0; i < 4; ++i) r.internal.data[i] = 0x10 + i;
    });
    seed("internal_ndata_17", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.ndata = 17;
    });
    seed("emulation_failure", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
        r.internal.ndata = 3;
        r.internal.data[0] = KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
        const std::uint8_t insn[16] = {3, 0x0f, 0xc7, 0x0e}; // insn_size 3: cmpxchg16b
        std::memcpy(&r.internal.data[1], insn, 16);
    });
    seed("emulation_insn_size_16", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
        r.internal.ndata = 3;
        r.internal.data[0] = KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
        r.internal.data[1] = 16;
    });
    seed("debug", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_DEBUG;
        x86::debug_exit_layout l{1, 0, 0x100010, 0xffff0ff1, 0x400};
        std::memcpy(&r.debug, &l, sizeof l);
    });
    seed("exception", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_EXCEPTION;
        r.ex.exception = 13;
        r.ex.error_code = 0x18;
    });
    seed("irq_window_open", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_IRQ_WINDOW_OPEN;
        r.if_flag = 1;
    });
    seed("set_tpr", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SET_TPR;
        r.cr8 = 0xf;
    });
    seed("tpr_access", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_TPR_ACCESS;
        r.tpr_access.rip = 0xfff0;
        r.tpr_access.is_write = 1;
    });
    seed("ioapic_eoi", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_IOAPIC_EOI;
        r.eoi.vector = 0x30;
    });
    seed("notify", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_NOTIFY;
        r.notify.flags = KVM_NOTIFY_CONTEXT_INVALID;
    });
    seed("hyperv", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_HYPERV;
        r.hyperv.type = KVM_EXIT_HYPERV_HCALL;
    });
    seed("xen", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_XEN;
        r.xen.type = KVM_EXIT_XEN_HCALL;
    });
    seed("system_event_reset", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_RESET;
        r.system_event.ndata = 1;
        r.system_event.data[0] = 7;
    });
    seed("system_event_ndata_17", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_CRASH;
        r.system_event.ndata = 17;
    });
    seed("fail_entry", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_FAIL_ENTRY;
        r.fail_entry.hardware_entry_failure_reason = 0x80000021;
        r.fail_entry.cpu = 1;
    });
    // Mappings smaller than struct kvm_run.
    bytes_out tiny;
    tiny.put(std::uint16_t{16}).put(std::uint32_t{KVM_EXIT_HLT});
    out.add("mapping_16_bytes", tiny);
    bytes_out one_short;
    one_short.put(static_cast<std::uint16_t>(sizeof(::kvm_run) - 1)).put(std::uint32_t{KVM_EXIT_HLT});
    out.add("mapping_one_short", one_short);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    vcpu_fuzz::run_kvm_run_harness<list>(
        in, "x86_64",
        [](const vcpu::kvm::run_view& v, auto&& visit) { vcpu::decode_exit<vcpu::arch::x86_64>(v, visit); },
        [](const auto& e, vcpu_fuzz::digest& d, const vcpu_fuzz::raw_record& rec) { checker{rec}(e, d); },
        expect,
        [](auto& e, auto& allow, const vcpu_fuzz::raw_record& rec) { answer(e, allow, rec); });
    return 0;
}
