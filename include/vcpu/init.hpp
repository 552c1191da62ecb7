#pragma once
/// \file
/// Composition of boot-state policies: `init_sequence(a, b, c)` is a policy
/// that applies `a`, then `b`, then `c`, stopping at the first error.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <tuple>
#include <utility>

namespace vcpu {

/// Applies its policies in order; models `CpuInitFor` when each part does.
template <class... Ps>
struct init_sequence {
    std::tuple<Ps...> parts;  ///< the policies, applied first to last

    /// Holds `ps...` to apply in this order.
    constexpr explicit init_sequence(Ps... ps) : parts(std::move(ps)...) {}

    /// Applies each policy to `cpu` in order and stops at the first error, which it returns.
    template <class Cpu>
    [[nodiscard]] result<void> apply(Cpu& cpu) const noexcept {
        result<void> r;
        std::apply([&](const auto&... p) { (void)((r = p.apply(cpu), r.has_value()) && ...); },
                   parts);
        return r;
    }
};

} // namespace vcpu
