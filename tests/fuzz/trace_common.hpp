#pragma once
// The "VMM" of the trace harnesses: one generic handler that logs every exit it sees (type and
// fields, port OUT data, coalesced writes) and answers reads deterministically from the exit
// itself, so a session and its replay can be compared exit by exit.
#include "kvm_run_common.hpp" // index_of_v

#include <arch/riscv64/arch.hpp>
#include <arch/riscv64/exits.hpp>
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>

#include <cstdint>
#include <vector>

namespace vcpu_fuzz {

using trace_arch = vcpu::arch::x86_64;
using trace_list = trace_arch::exit_types;

/// The exit log of a session of `List`'s exits (an arch's `exit_types`).
template <class List>
struct basic_session_log {
    std::vector<std::uint64_t> words;
    std::size_t exits = 0;

    template <class E>
    void operator()(E& e) {
        words.push_back(0xe0000000u + index_of_v<E, List>);
        if constexpr (!std::is_same_v<E, vcpu::coalesced_write>) ++exits;
        if constexpr (std::is_same_v<E, vcpu::port_io>) {
            words.insert(words.end(), {e.port, e.size, e.count, e.is_in()});
            for (std::uint32_t i = 0; i < e.count; ++i) {
                if (e.is_in()) e.set(e.port * 3u + i * 7u + static_cast<std::uint32_t>(exits), i);
                else words.push_back(e.value(i));
            }
        } else if constexpr (std::is_same_v<E, vcpu::mmio>) {
            words.insert(words.end(), {e.address, e.size, e.is_read()});
            if (e.is_read()) e.set(e.address * 5 + exits);
            else words.push_back(e.value());
        } else if constexpr (std::is_same_v<E, vcpu::coalesced_write>) {
            words.insert(words.end(), {e.address, e.size, e.pio, e.value()});
        } else if constexpr (std::is_same_v<E, vcpu::hypercall>) {
            words.push_back(e.nr);
            words.insert(words.end(), e.args.begin(), e.args.end());
            e.answer(e.nr + exits);
        } else if constexpr (std::is_same_v<E, vcpu::sysreg>) {
            words.insert(words.end(), {e.id, e.is_read(), e.value, e.reason});
            if (e.is_read()) e.answer(e.id ^ 0x5a5a5a5a5a5a5a5aull);
        } else if constexpr (std::is_same_v<E, vcpu::system_event>) {
            words.insert(words.end(), {static_cast<std::uint64_t>(e.what), e.raw_type, e.ndata});
            words.insert(words.end(), e.data.begin(), e.data.begin() + e.ndata);
        } else if constexpr (std::is_same_v<E, vcpu::internal_error>) {
            words.push_back(e.suberror);
            words.insert(words.end(), e.data.begin(), e.data.end());
        } else if constexpr (std::is_same_v<E, vcpu::debug>) {
            words.insert(words.end(), {e.pc, e.exception, e.status, e.control});
        } else if constexpr (std::is_same_v<E, vcpu::malformed_exit>) {
            words.insert(words.end(), {static_cast<std::uint64_t>(e.reason), e.raw_reason, e.value});
        } else if constexpr (std::is_same_v<E, vcpu::unknown>) {
            words.insert(words.end(), {e.raw, e.detail});
        } else if constexpr (std::is_same_v<E, vcpu::fail_entry>) {
            words.insert(words.end(), {e.hardware_reason, e.cpu});
        } else if constexpr (std::is_same_v<E, vcpu::x86_64::exception>) {
            words.insert(words.end(), {e.vector, e.error_code});
        } else if constexpr (std::is_same_v<E, vcpu::x86_64::emulation_failure>) {
            words.push_back(e.flags);
            words.insert(words.end(), e.insn.begin(), e.insn.end());
        } else if constexpr (std::is_same_v<E, vcpu::riscv64::csr_access>) {
            // RISC-V answers in kvm_run (kvm::answer_of): the CSR's old value.
            words.insert(words.end(), {e.id, e.is_read(), e.new_value, e.write_mask});
            e.answer(e.id * 13 + exits);
        } else if constexpr (std::is_same_v<E, vcpu::riscv64::console_write>) {
            words.insert(words.end(), {e.in_memory, e.legacy, e.byte, e.address, e.length});
            if ((exits & 1) != 0) e.done(e.length);
            else e.fail(-3);
        } else if constexpr (std::is_same_v<E, vcpu::riscv64::console_read>) {
            words.insert(words.end(), {e.legacy, e.address, e.length});
            if (e.legacy) e.legacy_char(static_cast<int>(exits & 0xff));
            else e.done(exits);
        } else if constexpr (std::is_same_v<E, vcpu::riscv64::sbi_call>) {
            words.insert(words.end(), {e.nr, e.function});
            words.insert(words.end(), e.args.begin(), e.args.end());
            e.answer(e.nr ^ e.function ^ exits);
        } else if constexpr (requires { e.answer(std::uint64_t{}); }) {
            // Other SBI calls answered in ret[0..1] (probe, HSM status, ...).
            e.answer(exits * 7);
        }
    }
};

/// The x86-64 session log (the arch the trace harnesses' hostile traces are read as).
using session_log = basic_session_log<trace_list>;

/// Runs `cpu` until its HAL fails (end of script / trace, or a replay mismatch), logging every
/// exit. Returns the error that ended it.
template <class Cpu, class List>
vcpu::error run_session(Cpu& cpu, basic_session_log<List>& log) {
    for (;;) {
        auto r = cpu.run([&](auto& e) { log(e); });
        if (!r) return r.err();
    }
}

} // namespace vcpu_fuzz
