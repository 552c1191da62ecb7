#pragma once
// Tiny x86-64 KVM guests for the exit benchmarks, and the paired raw-vs-framework timing loop.
//
// A guest is a few hand-assembled long-mode instructions at 0x100000 (identity-mapped page
// tables from vcpu::x86_64::long_mode, CPL0 or CPL3 with IOPL=3), in a VM without in-kernel
// irqchip (so HLT exits to userspace) and 4 MiB of RAM; MMIO goes to 0x10000000, which no slot
// backs.

#include "main.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/result.hpp>

#include <benchmark/benchmark.h>
#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <sys/ioctl.h>

namespace bench {

inline constexpr std::uint64_t code_gpa = 0x100000;
inline constexpr std::uint64_t data_gpa = 0x200000; ///< string I/O buffer
inline constexpr std::uint64_t mmio_gpa = 0x10000000;
inline constexpr std::uint16_t bench_port = 0x10;

using machine = vcpu::kvm::x86_64_machine;
using cpu_t = machine::cpu_type;

/// A VM running `code` at 0x100000 in 64-bit mode, CPL3 when `user`.
inline vcpu::result<machine> make_guest(std::span<const std::uint8_t> code, bool user,
                                        vcpu::kvm::vcpu_options opt = {}) {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = std::size_t{4} << 20;
    o.irqchip = false; // HLT must exit to userspace
    o.pit = false;
    o.vcpu = opt;
    auto m = vcpu::kvm::vm_init_x86_64(o);
    if (!m) return m.err();
    VCPU_TRY_VOID(m->memory.write(code_gpa, std::as_bytes(code)));
    std::vector<std::byte> pattern(16);
    for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = std::byte(0x41 + i);
    VCPU_TRY_VOID(m->memory.write(data_gpa, pattern));
    VCPU_TRY_VOID(m->vcpus[0].init(
        vcpu::x86_64::long_mode<>{&m->memory, code_gpa, 0x80000, 0x9000, 1, user}));
    return m;
}

/// KVM_GET_REGS straight on the vCPU fd (for checks outside the timed region).
inline bool get_regs(int fd, ::kvm_regs& r) noexcept { return ::ioctl(fd, KVM_GET_REGS, &r) == 0; }

/// Times `raw()` and `fw()` (each runs `batch` exits and returns false on a wrong guest value or a
/// failed ioctl, with `why` set) alternately in every iteration, so drift and noise hit both the
/// same. Reports raw_ns, vcpu_ns (thread CPU ns per exit) and ratio = vcpu / raw.
template <class Raw, class Fw>
void paired(benchmark::State& state, unsigned batch, Raw&& raw, Fw&& fw, const std::string& why) {
    double raw_ns = 0, fw_ns = 0;
    std::uint64_t exits = 0;
    bool flip = false, ok = true;
    for (auto _ : state) {
        for (int half = 0; half < 2 && ok; ++half) {
            const bool do_fw = (half == 0) == flip;
            const double t0 = thread_cpu_ns();
            ok = do_fw ? fw() : raw();
            (do_fw ? fw_ns : raw_ns) += thread_cpu_ns() - t0;
        }
        if (!ok) break;
        flip = !flip;
        exits += batch;
    }
    if (!ok) {
        state.SkipWithError(why.c_str());
        return;
    }
    const double n = exits ? static_cast<double>(exits) : 1.0;
    state.counters["raw_ns"] = raw_ns / n;
    state.counters["vcpu_ns"] = fw_ns / n;
    state.counters["ratio"] = raw_ns > 0 ? fw_ns / raw_ns : 0;
    state.SetItemsProcessed(static_cast<std::int64_t>(2 * exits));
}

} // namespace bench
