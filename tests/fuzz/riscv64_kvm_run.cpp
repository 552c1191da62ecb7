// Fuzzes the RISC-V 64 kvm_run decoder (arch/riscv64/exits.hpp over kvm/exits_common.hpp).
//
// Input: u16 mapping size selector, then the bytes of the kvm_run mapping (see raw_record).
// Invariants as for x86_64_kvm_run, plus: KVM_EXIT_RISCV_SBI decodes per the SBI spec's
// extension/function table (riscv64_sbi.hpp) with every answer slot being riscv_sbi.ret[0] or
// ret[1]; KVM_EXIT_RISCV_CSR becomes a csr_access whose answer slot is riscv_csr.ret_value.
#include "riscv64_sbi.hpp"

#include <arch/riscv64/arch.hpp>
#include <kvm/exits.hpp>

namespace {

namespace rv = vcpu::riscv64;
using list = rv::exit_types;
using vcpu_fuzz::index_of_v;

std::array<std::uint64_t, 6> sbi_args(const ::kvm_run& r) {
    std::array<std::uint64_t, 6> a{};
    for (std::size_t i = 0; i < 6; ++i) a[i] = r.riscv_sbi.args[i];
    return a;
}

vcpu_fuzz::expectation expect(const ::kvm_run& r, std::size_t) {
    switch (r.exit_reason) {
    case KVM_EXIT_RISCV_SBI:
        return {vcpu_fuzz::rv::expect_sbi(r.riscv_sbi.extension_id, r.riscv_sbi.function_id, sbi_args(r)), {}};
    case KVM_EXIT_RISCV_CSR: return {index_of_v<rv::csr_access, list>, {}};
    default: return vcpu_fuzz::expect_common<list>(r);
    }
}

struct checker {
    const vcpu_fuzz::raw_record& rec;
    template <class E>
    void operator()(const E& e, vcpu_fuzz::digest& d) const {
        const ::kvm_run& r = rec.orig();
        ::kvm_run& live = *rec.view().run;
        if (r.exit_reason == KVM_EXIT_RISCV_SBI && rec.whole() &&
            vcpu_fuzz::rv::check_sbi(e, r.riscv_sbi.extension_id, r.riscv_sbi.function_id, sbi_args(r),
                                     vcpu::answer_slot(&live.riscv_sbi.ret[0]),
                                     vcpu::answer_slot(&live.riscv_sbi.ret[1]), d))
            return;
        if (vcpu_fuzz::check_common(e, rec, r, d)) return;
        if constexpr (std::is_same_v<E, rv::csr_access>) {
            VCPU_FUZZ_CHECK(r.exit_reason == KVM_EXIT_RISCV_CSR);
            VCPU_FUZZ_CHECK(e.id == r.riscv_csr.csr_num && e.new_value == r.riscv_csr.new_value &&
                            e.write_mask == r.riscv_csr.write_mask && e.value == r.riscv_csr.new_value);
            VCPU_FUZZ_CHECK(e.is_read() == (r.riscv_csr.write_mask == 0));
            VCPU_FUZZ_CHECK(e.result == vcpu::answer_slot(&live.riscv_csr.ret_value) && e.fault == nullptr);
            // updated(old) = (old & ~mask) | (new & mask), per KVM's csr_insn.
            const std::uint64_t old = 0xf0f0f0f0f0f0f0f0ull;
            VCPU_FUZZ_CHECK(e.updated(old) == ((old & ~e.write_mask) | (e.new_value & e.write_mask)));
            d.add_all(e.id, e.new_value, e.write_mask);
        } else {
            VCPU_FUZZ_CHECK(!"the riscv64 kvm_run decoder produced an exit kind it never should");
        }
    }
};

template <class E, class Allow>
void answer(E& e, Allow& allow, const vcpu_fuzz::raw_record& rec) {
    ::kvm_run& live = *rec.view().run;
    if (vcpu_fuzz::answer_common(e, allow)) return;
    if (rec.whole() && live.exit_reason == KVM_EXIT_RISCV_SBI) {
        allow(&live.riscv_sbi.ret, sizeof live.riscv_sbi.ret);
        (void)vcpu_fuzz::rv::answer_sbi(e);
    }
    if constexpr (std::is_same_v<E, rv::csr_access>)
        vcpu_fuzz::answer_slot_at(e.result, &live.riscv_csr.ret_value, 0x5555aaaa5555aaaaull, allow);
}

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
    namespace e = vcpu::riscv64::sbi::ext;
    namespace sbi = vcpu::riscv64::sbi;
    auto call = [&](const char* name, std::uint64_t ext, std::uint64_t fid, std::array<std::uint64_t, 6> a) {
        seed(name, [&](::kvm_run& r) {
            r.exit_reason = KVM_EXIT_RISCV_SBI;
            r.riscv_sbi.extension_id = ext;
            r.riscv_sbi.function_id = fid;
            for (std::size_t i = 0; i < 6; ++i) r.riscv_sbi.args[i] = a[i];
            r.riscv_sbi.ret[0] = static_cast<unsigned long>(-2); // KVM presets SBI_ERR_NOT_SUPPORTED
        });
    };
    call("sbi_legacy_putchar", e::legacy_console_putchar, 0, {'x'});
    call("sbi_legacy_getchar", e::legacy_console_getchar, 0, {});
    call("sbi_legacy_shutdown", e::legacy_shutdown, 0, {});
    call("sbi_legacy_set_timer", e::legacy_set_timer, 0, {1000});
    call("sbi_probe", e::base, sbi::base_fid::probe_extension, {e::hsm});
    call("sbi_base_spec_version", e::base, sbi::base_fid::get_spec_version, {});
    call("sbi_hart_start", e::hsm, sbi::hsm_fid::hart_start, {1, 0x80200000, 0x82200000});
    call("sbi_hart_stop", e::hsm, sbi::hsm_fid::hart_stop, {});
    call("sbi_hart_status", e::hsm, sbi::hsm_fid::hart_get_status, {1});
    call("sbi_hsm_suspend", e::hsm, 3, {});
    call("sbi_srst_shutdown", e::srst, 0, {0, 0});
    call("sbi_srst_warm", e::srst, 0, {2, 1});
    call("sbi_srst_bad_type", e::srst, 0, {3, 0});
    call("sbi_dbcn_write", e::dbcn, sbi::dbcn_fid::console_write, {5, 0x80001000, 0});
    call("sbi_dbcn_write_hi", e::dbcn, sbi::dbcn_fid::console_write, {5, 0x80001000, 1});
    call("sbi_dbcn_read", e::dbcn, sbi::dbcn_fid::console_read, {16, 0x80002000, 0});
    call("sbi_dbcn_write_byte", e::dbcn, sbi::dbcn_fid::console_write_byte, {'!'});
    call("sbi_time", e::time, 0, {12345});
    call("sbi_vendor", 0x09000001, 7, {1, 2, 3, 4, 5, 6});
    auto csr = [&](const char* name, std::uint64_t num, std::uint64_t nv, std::uint64_t mask) {
        seed(name, [&](::kvm_run& r) {
            r.exit_reason = KVM_EXIT_RISCV_CSR;
            r.riscv_csr.csr_num = num;
            r.riscv_csr.new_value = nv;
            r.riscv_csr.write_mask = mask;
        });
    };
    csr("csr_read_seed", 0x015, 0, 0);
    csr("csr_write", 0x015, 0x1234, ~0ull);
    csr("csr_set_bits", 0x140, ~0ull, 0x22);
    seed("mmio_read_4", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_MMIO;
        r.mmio.phys_addr = 0x10000000;
        r.mmio.len = 4;
    });
    seed("mmio_write_2", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_MMIO;
        r.mmio.phys_addr = 0x10000005;
        r.mmio.len = 2;
        r.mmio.is_write = 1;
    });
    seed("mmio_len_12", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_MMIO;
        r.mmio.len = 12;
    });
    seed("system_event_reset", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.type = KVM_SYSTEM_EVENT_RESET;
        r.system_event.ndata = 2;
    });
    seed("system_event_ndata_17", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
        r.system_event.ndata = 17;
    });
    seed("intr", [](::kvm_run& r) { r.exit_reason = KVM_EXIT_INTR; });
    seed("internal_error", [](::kvm_run& r) {
        r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
        r.internal.ndata = 16;
    });
    seed("x86_hlt_is_unknown", [](::kvm_run& r) { r.exit_reason = KVM_EXIT_HLT; });
    bytes_out tiny;
    tiny.put(std::uint16_t{8}).put(std::uint32_t{KVM_EXIT_RISCV_SBI});
    out.add("mapping_8_bytes", tiny);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    vcpu_fuzz::run_kvm_run_harness<list>(
        in, "riscv64",
        [](const vcpu::kvm::run_view& v, auto&& visit) { vcpu::decode_exit<vcpu::arch::riscv64>(v, visit); },
        [](const auto& e, vcpu_fuzz::digest& d, const vcpu_fuzz::raw_record& rec) { checker{rec}(e, d); },
        expect,
        [](auto& e, auto& allow, const vcpu_fuzz::raw_record& rec) { answer(e, allow, rec); });
    return 0;
}
