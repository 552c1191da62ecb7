#pragma once
// Shared by the guest-code tests: a small x86-64 KVM machine with the test executable loaded into
// it, and doctest glue that turns a failed guest assertion into a failure at the guest's file:line.
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

/// Handler: a failed guest assertion fails the running doctest case at the guest's file and line
/// (ADD_FAIL_CHECK_AT), with the expression and values, and stops the guest.
inline auto fail_on_guest_assert() {
    return [](vcpu::guest::assert_fail& a) {
        std::array<char, 512> buf{};
        const std::string text(a.describe(buf));
        ADD_FAIL_CHECK_AT(a.file.data(), static_cast<int>(a.line), text);
        return vcpu::action::stop;
    };
}

/// Handler: guest output goes to the doctest log.
inline auto log_guest_print() {
    return [](vcpu::guest::print& p) { MESSAGE(std::string(p.text())); };
}

} // namespace guest_test
