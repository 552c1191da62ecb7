// Fuzzes the AArch64 kvm_run decoder (arch/aarch64/exits.hpp over kvm/exits_common.hpp).
//
// Input: u16 mapping size selector, then the bytes of the kvm_run mapping (see raw_record).
// Invariants as for x86_64_kvm_run: one visit with a type of exit_types, deterministic and free
// of side effects, the exit type the KVM API gives (KVM_EXIT_ARM_NISV, SMCCC forwarding through
// KVM_EXIT_HYPERCALL with the SMC flag, KVM_EXIT_DEBUG with ESR_EL2 high bits only when
// KVM_DEBUG_ARCH_HSR_HIGH_VALID is set; x86-only reasons such as KVM_EXIT_IO are `unknown`),
// views inside the mapping, answers only inside the views.
#include "kvm_run_common.hpp"

#include <arch/aarch64/arch.hpp>
#include <kvm/exits.hpp>

namespace {

namespace a64 = vcpu::aarch64;
using list = a64::exit_types;
using vcpu_fuzz::index_of_v;
/// KVM_DEBUG_ARCH_HSR_HIGH_VALID (arm64 <asm/kvm.h>, not on other hosts), restated from the API text.
constexpr unsigned hsr_high_valid = 1u << 0;

vcpu_fuzz::expectation expect(const ::kvm_run& r, std::size_t) {
    switch (r.exit_reason) {
    case KVM_EXIT_ARM_NISV: return {index_of_v<a64::nisv_abort, list>, {}};
    case KVM_EXIT_HYPERCALL: return {index_of_v<a64::smccc_call, list>, {}};
    case KVM_EXIT_DEBUG: return {index_of_v<vcpu::debug, list>, {}};
    default: return vcpu_fuzz::expect_common<list>(r);
    }
}

struct checker {
    const vcpu_fuzz::raw_record& rec;
    template <class E>
    void operator()(const E& e, vcpu_fuzz::digest& d) const {
        const ::kvm_run& r = rec.orig();
        if (vcpu_fuzz::check_common(e, rec, r, d)) return;
        if constexpr (std::is_same_v<E, a64::nisv_abort>) {
            VCPU_FUZZ_CHECK(e.esr_iss == r.arm_nisv.esr_iss && e.ipa == r.arm_nisv.fault_ipa);
            d.add_all(e.esr_iss, e.ipa);
        } else if constexpr (std::is_same_v<E, a64::smccc_call>) {
            // Only the function id and the conduit are in kvm_run (api.rst, Linux 6.7+).
            VCPU_FUZZ_CHECK(e.nr == r.hypercall.nr);
            VCPU_FUZZ_CHECK(e.smc == ((r.hypercall.longmode & 1) != 0));
            VCPU_FUZZ_CHECK(!e.ret && !e.ret2 && e.imm16 == 0);
            for (auto a : e.args) VCPU_FUZZ_CHECK(a == 0);
            d.add_all(e.nr, e.smc);
        } else if constexpr (std::is_same_v<E, vcpu::debug>) {
            a64::debug_exit_layout l{};
            std::memcpy(&l, &r.debug, sizeof l);
            const std::uint64_t esr =
                l.hsr | ((r.flags & hsr_high_valid) != 0 ? std::uint64_t{l.hsr_high} << 32 : 0);
            VCPU_FUZZ_CHECK(e.status == esr && e.address == l.far && e.pc == 0 && e.control == 0);
            VCPU_FUZZ_CHECK(e.exception == ((esr >> 26) & 0x3f));
            d.add_all(e.status, e.address, e.exception);
        } else {
            VCPU_FUZZ_CHECK(!"the aarch64 kvm_run decoder produced an exit kind it never should");
        }
    }
};

} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    auto seed = [&](const char* name, auto fill) {
        ::kvm_run r{};
        fill(r);
        bytes_out b;
        b.put(std::uint16_t{vcpu_fuzz::max_mapped});
        b.raw(&r, sizeof r);
        out.add(name, b);
    };
    auto mmio = [&](const char* name, std::uint32_t len, bool wr) {
        seed(name, [&](::kvm_run& r) {
            r.exit_reason = KVM_EXIT_MMIO;
            r.mmio.phys_addr = 0x09000000; // PL011 on QEMU virt
            r.mmio.len = len;
            r.mmio.is_write = wr;
            std::memcpy(r.mmio.data, "01234567", 8);
        });
    };
    mmio("mmio_read_4", 4, false);
    mmio("mmio_write_1", 1, true);
    mmio("mmio_read_8", 8, false);
    mmio("mmio_len_0", 0, true);
    mmio("mmio_len_16", 16, false);
    seed("nisv", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_ARM_NISV;
        r.arm_nisv.esr_iss = 0x40; // WnR
        r.arm_nisv.fault_ipa = 0x0a000000;
    });
    seed("smccc_hvc", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_HYPERCALL;
        r.hypercall.nr = 0xc6000001;
    });
    seed("smccc_smc", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_HYPERCALL;
        r.hypercall.nr = 0x86000000;
        r.hypercall.longmode = 1; // KVM_HYPERCALL_EXIT_SMC
    });
    seed("debug_brk", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_DEBUG;
        a64::debug_exit_layout l{0xf2000000, 0x5, 0x4000};
        std::memcpy(&r.debug, &l, sizeof l);
    });
    seed("debug_hsr_high", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_DEBUG;
        r.flags = hsr_high_valid;
        a64::debug_exit_layout l{0xd2000000, 0x5, 0x4000};
        std::memcpy(&r.debug, &l, sizeof l);
    });
    seed("system_off", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_SHUTDOWN;
    });
    seed("system_reset2", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_RESET;
        r.system_event.ndata = 1;
        r.system_event.data[0] = 0x80000000;
    });
    seed("system_suspend", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_SUSPEND;
    });
    seed("system_event_ndata_255", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.ndata = 255;
    });
    seed("intr", [](::kvm_run& r) { r.exit_reason = KVM_EXIT_INTR; });
    seed("fail_entry", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_FAIL_ENTRY;
        r.fail_entry.hardware_entry_failure_reason = 1; // arm64 KVM_EXIT_FAIL_ENTRY_CPU_UNSUPPORTED
    });
    seed("internal_error", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.ndata = 2;
    });
    seed("internal_ndata_64", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.ndata = 64;
    });
    seed("dirty_ring_full", [](::kvm_run& r) { r.exit_reason = KVM_EXIT_DIRTY_RING_FULL; });
    seed("x86_io_is_unknown", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_IO;
        r.io.size = 1;
        r.io.count = 1;
    });
    seed("unknown_hw", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_UNKNOWN;
        r.hw.hardware_exit_reason = 3;
    });
    bytes_out tiny;
    tiny.put(std::uint16_t{64}).put(std::uint32_t{KVM_EXIT_MMIO});
    out.add("mapping_64_bytes", tiny);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    vcpu_fuzz::run_kvm_run_harness<list>(
        in, "aarch64",
        [](const vcpu::kvm::run_view& v, auto&& visit) { vcpu::decode_exit<vcpu::arch::aarch64>(v, visit); },
        [](const auto& e, vcpu_fuzz::digest& d, const vcpu_fuzz::raw_record& rec) { checker{rec}(e, d); },
        expect,
        [](auto& e, auto& allow, const vcpu_fuzz::raw_record&) { (void)vcpu_fuzz::answer_common(e, allow); });
    return 0;
}
