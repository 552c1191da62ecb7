#pragma once
// Shared by the x86-64 guest-code tests: a small x86-64 KVM machine, and the doctest glue of
// support_common.hpp (a failed guest assertion fails the case at the guest's file:line).
#include "support_common.hpp"

#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/guest/x86_64_loader.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <string>

namespace guest_test {

/// 64 MiB of RAM, no in-kernel irqchip (so a HLT would come back to the host).
inline vcpu::result<vcpu::kvm::x86_64_machine> make_machine() {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = std::size_t{64} << 20;
    o.irqchip = o.pit = false;
    return vcpu::kvm::vm_init_x86_64(o, vcpu::x86_64::cpuid_setup<>{});
}

} // namespace guest_test
