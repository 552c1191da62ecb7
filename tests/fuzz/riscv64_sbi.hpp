#pragma once
// The SBI part shared by the riscv64 harnesses (kvm_run KVM_EXIT_RISCV_SBI and HS-mode ecalls
// from VS-mode): which exit an (EID, FID, a0-a5) call must decode to, written from the SBI spec
// v2.0 chapters (legacy, base, HSM, SRST, DBCN), and the checks that every answer slot is the
// record's a0/a1 slot the decoder was given.
#include "kvm_run_common.hpp"

#include <arch/riscv64/exits.hpp>
#include <arch/riscv64/sbi.hpp>

#include <array>
#include <cstdint>

namespace vcpu_fuzz::rv {

namespace rv = vcpu::riscv64;
using list = rv::exit_types;

/// The exit an SBI call must decode to (index into riscv64::exit_types).
inline std::size_t expect_sbi(std::uint64_t ext, std::uint64_t fid, const std::array<std::uint64_t, 6>& a) {
    switch (ext) {
    case 0x01: return index_of_v<rv::console_write, list>;  // legacy console_putchar
    case 0x02: return index_of_v<rv::console_read, list>;   // legacy console_getchar
    case 0x08: return index_of_v<vcpu::system_event, list>; // legacy shutdown
    case 0x10:                                              // base
        if (fid == 3) return index_of_v<rv::sbi_probe, list>; // probe_extension
        break;
    case 0x48534D: // "HSM"
        if (fid == 0) return index_of_v<vcpu::cpu_up, list>;
        if (fid == 1) return index_of_v<vcpu::cpu_down, list>;
        if (fid == 2) return index_of_v<rv::hart_status_query, list>;
        break;
    case 0x53525354: // "SRST": system_reset(type <= warm reboot, reason)
        if (fid == 0 && a[0] <= 2) return index_of_v<vcpu::system_event, list>;
        break;
    case 0x4442434E: // "DBCN": write/read(num_bytes, base_lo, base_hi = 0), write_byte
        if ((fid == 0 || fid == 1) && a[2] == 0)
            return fid == 0 ? index_of_v<rv::console_write, list> : index_of_v<rv::console_read, list>;
        if (fid == 2) return index_of_v<rv::console_write, list>;
        break;
    default: break;
    }
    return index_of_v<rv::sbi_call, list>;
}

/// Checks an SBI exit against the call, with `r0`/`r1` the a0/a1 slots of the record (`r1`
/// null where the record keeps a1, i.e. for HS-mode legacy calls). False when `e` is not an
/// SBI exit kind.
template <class E>
bool check_sbi(const E& e, std::uint64_t ext, std::uint64_t fid, const std::array<std::uint64_t, 6>& a,
               vcpu::answer_slot r0, vcpu::answer_slot r1, digest& d) {
    using vcpu::answer_slot;
    if constexpr (std::is_same_v<E, rv::console_write>) {
        if (ext == 0x01) {
            VCPU_FUZZ_CHECK(e.legacy && !e.in_memory && e.byte == (a[0] & 0xff) && e.length == 1);
            VCPU_FUZZ_CHECK(e.error == r0 && !e.value);
        } else if (fid == 0) {
            VCPU_FUZZ_CHECK(!e.legacy && e.in_memory && e.length == a[0] && e.address == a[1]);
            VCPU_FUZZ_CHECK(e.error == r0 && e.value == r1);
        } else {
            VCPU_FUZZ_CHECK(!e.legacy && !e.in_memory && e.byte == (a[0] & 0xff) && e.length == 1);
            VCPU_FUZZ_CHECK(e.error == r0 && e.value == r1);
        }
        d.add_all(e.legacy, e.in_memory, e.byte, e.address, e.length);
        return true;
    } else if constexpr (std::is_same_v<E, rv::console_read>) {
        if (ext == 0x02) {
            VCPU_FUZZ_CHECK(e.legacy && e.length == 1 && e.error == r0 && !e.value);
        } else {
            VCPU_FUZZ_CHECK(!e.legacy && e.length == a[0] && e.address == a[1]);
            VCPU_FUZZ_CHECK(e.error == r0 && e.value == r1);
        }
        d.add_all(e.legacy, e.address, e.length);
        return true;
    } else if constexpr (std::is_same_v<E, rv::sbi_probe>) {
        VCPU_FUZZ_CHECK(e.extension == a[0] && e.error == r0 && e.value == r1);
        d.add(e.extension);
        return true;
    } else if constexpr (std::is_same_v<E, vcpu::cpu_up>) {
        VCPU_FUZZ_CHECK(e.target == a[0] && e.entry == a[1] && e.context == a[2] && e.ret == r0);
        d.add_all(e.target, e.entry, e.context);
        return true;
    } else if constexpr (std::is_same_v<E, vcpu::cpu_down>) {
        return true;
    } else if constexpr (std::is_same_v<E, rv::hart_status_query>) {
        VCPU_FUZZ_CHECK(e.hart == a[0] && e.error == r0 && e.value == r1);
        d.add(e.hart);
        return true;
    } else if constexpr (std::is_same_v<E, vcpu::system_event>) {
        using k = vcpu::system_event::kind;
        if (ext == 0x08) {
            VCPU_FUZZ_CHECK(e.what == k::power_off && e.raw_type == KVM_SYSTEM_EVENT_SHUTDOWN && e.ndata == 0);
        } else {
            // As KVM reports SRST: data[0] = reason, data[1] = type.
            VCPU_FUZZ_CHECK(e.what == (a[0] == 0 ? k::power_off : k::reset));
            VCPU_FUZZ_CHECK(e.raw_type == (a[0] == 0 ? KVM_SYSTEM_EVENT_SHUTDOWN : KVM_SYSTEM_EVENT_RESET));
            VCPU_FUZZ_CHECK(e.ndata == 2 && e.data[0] == a[1] && e.data[1] == a[0]);
        }
        d.add_all(static_cast<unsigned>(e.what), e.raw_type, e.ndata);
        return true;
    } else if constexpr (std::is_same_v<E, rv::sbi_call>) {
        VCPU_FUZZ_CHECK(e.nr == ext && e.extension() == ext && e.function == fid && e.args == a);
        VCPU_FUZZ_CHECK(e.ret == r0 && e.ret2 == r1);
        d.add_all(e.nr, e.function);
        for (auto x : e.args) d.add(x);
        return true;
    } else {
        (void)ext, (void)fid, (void)a, (void)r0, (void)r1, (void)d;
        return false;
    }
}

/// Answers an SBI exit through its slots (which the check pass matched to the record's a0/a1).
template <class E>
bool answer_sbi(E& e) {
    if constexpr (std::is_same_v<E, rv::console_write>) {
        e.done(e.length);
        e.fail(-3);
        return true;
    } else if constexpr (std::is_same_v<E, rv::console_read>) {
        if (e.legacy) e.legacy_char(-1);
        else e.done(0);
        return true;
    } else if constexpr (std::is_same_v<E, rv::sbi_probe> || std::is_same_v<E, rv::hart_status_query>) {
        e.answer(1);
        return true;
    } else if constexpr (std::is_same_v<E, vcpu::cpu_up>) {
        e.answer(0);
        return true;
    } else if constexpr (std::is_same_v<E, rv::sbi_call>) {
        e.answer(~0ull - 1, 7);
        return true;
    } else {
        return false;
    }
}

} // namespace vcpu_fuzz::rv
