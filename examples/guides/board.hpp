#pragma once
// The devices of the guides' x86-64 VMM (docs/guides/writing-a-vmm.md): a debug console on port
// 0xE9 and a two-register counter on MMIO at 0x3000'0000. The same handlers run on real KVM
// (x86_64_vmm.cpp) and under the mock HAL (mock_test.cpp), which is the point: the device logic
// is tested without /dev/kvm.

#include <vcpu/exits.hpp>

#include <cstdint>
#include <string>

namespace guide {

inline constexpr std::uint16_t console_port = 0xe9;
inline constexpr std::uint64_t counter_base = 0x3000'0000; // no memory slot here: MMIO
inline constexpr std::uint64_t counter_value = counter_base + 0; // read: the counter
inline constexpr std::uint64_t counter_store = counter_base + 4; // write: a result

/// What the guest can reach besides RAM. Each handler answers the accesses it owns and returns
/// `stop` for anything else, so an unexpected access ends the run instead of being ignored.
struct board {
    std::string console;         ///< bytes written to the debug port
    std::uint32_t counter = 41;  ///< what a read of `counter_value` returns
    std::uint32_t stored = 0;    ///< the last value written to `counter_store`

    vcpu::action on_port(vcpu::port_io& io) {
        if (io.port != console_port || io.is_in()) return vcpu::action::stop;
        for (std::uint32_t i = 0; i < io.count; ++i) console += static_cast<char>(io.value(i));
        return vcpu::action::resume;
    }

    vcpu::action on_mmio(vcpu::mmio& m) {
        if (m.address == counter_value && m.is_read() && m.size == 4) {
            m.set(counter); // the answer goes into the exit record; KVM completes the load
            return vcpu::action::resume;
        }
        if (m.address == counter_store && m.is_write() && m.size == 4) {
            stored = static_cast<std::uint32_t>(m.value());
            return vcpu::action::resume;
        }
        return vcpu::action::stop;
    }
};

} // namespace guide
