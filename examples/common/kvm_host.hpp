#pragma once
// Shared by the xarch examples: open /dev/kvm only where it runs guests of
// the example's architecture; anywhere else say why and let the caller exit
// 77 (ctest: skipped).

#include <kvm/system.hpp>

#include <sys/utsname.h>

#include <cstdio>
#include <cstring>
#include <optional>

namespace example {

/// The KVM system handle when `/dev/kvm` opens and the host is `machine`
/// (as `uname -m` names it); otherwise prints `SKIPPED: <reason>` and
/// returns nothing.
inline std::optional<vcpu::kvm::system> open_kvm_for(const char* machine) {
    auto sys = vcpu::kvm::system::open();
    if (!sys) {
        std::printf("SKIPPED: %s\n", sys.err().message().c_str());
        return std::nullopt;
    }
    utsname u{};
    ::uname(&u);
    if (std::strcmp(u.machine, machine) != 0) {
        std::printf("SKIPPED: /dev/kvm here runs %s guests, not %s\n", u.machine, machine);
        return std::nullopt;
    }
    return std::move(*sys);
}

} // namespace example
