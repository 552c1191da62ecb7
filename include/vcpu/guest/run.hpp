#pragma once
/// \file
/// `vcpu::guest::run(cpu, space, handlers...)`: `basic_vcpu::run` with the ucall exits of
/// guest code (`vcpu/guest/ucall.hpp`) added to the architecture's exit types.
///
/// The exit that carries a ucall (x86-64: port I/O to `ucall_port`) is decoded from guest
/// memory into `sync`, `done`, `assert_fail`, `print`, `unhandled_exception` or `bad_ucall` and
/// handed to the handler that takes that type, chosen at compile time by the same `dispatch`
/// the vCPU uses; every other exit goes to the handlers as usual. What comes back is the
/// `std::variant` of exactly the arch and ucall exits no handler took for good.
///
/// A `Space` (the guest address space, e.g. `vcpu::guest::x86_64::space`) models
/// `GuestAddressSpace` and has `using ucall_exit = <arch exit type>` and
/// `ucall_address(const ucall_exit&) -> std::optional<std::uint64_t>`: the record's guest
/// address when that exit is a ucall. It may also have
/// `register_ucall(const ucall_exit&, Cpu&, visitor) -> std::optional<bool>`: a ucall whose values
/// are in the vCPU's registers (nullopt when the exit is not one; else what `visitor` returned).
/// No allocation, no exceptions, no virtual calls.

#include <vcpu/config.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/guest/ucall.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/result.hpp>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

namespace vcpu::guest {

/// The exits `guest::run` can see for architecture `Arch`: its own and the ucall ones.
template <class Arch>
using exit_types = list_concat_t<typename Arch::exit_types, ucall_exit_types>;

/// The variant `guest::run(cpu, space, hs...)` returns for a vCPU of architecture `Arch`.
template <class Arch, class... Hs>
using run_exit_t = unhandled_exit_t<exit_types<Arch>, Hs...>;

/// A guest address space `guest::run` can decode ucalls with.
template <class S>
concept UcallSpace = GuestAddressSpace<S> && requires(const S& s, const typename S::ucall_exit& e) {
    { s.ucall_address(e) } -> std::same_as<std::optional<std::uint64_t>>;
};

namespace detail {
/// Forwards to a user handler by reference (so a stateful handler is one object for both arch
/// and ucall exits); invocable exactly where the handler is.
template <class H>
struct handler_ref {
    H* h;
    template <class E>
        requires std::is_invocable_v<H&, E&>
    constexpr decltype(auto) operator()(E& e) const noexcept(std::is_nothrow_invocable_v<H&, E&>) {
        return (*h)(e);
    }
};
} // namespace detail

/// Runs the guest until an exit comes back (no handler for it, or its handler returned
/// `action::stop`) or the HAL fails. Ucall exits are decoded with `space` (see the file
/// comment); handlers that no arch or ucall exit selects fail to compile, as for `run()`.
template <class Cpu, UcallSpace Space, class... Hs>
[[nodiscard]] result<run_exit_t<typename Cpu::arch_type, Hs...>> run(Cpu& cpu, const Space& space,
                                                                      Hs&&... hs) noexcept {
    using arch = typename Cpu::arch_type;
    using out_t = run_exit_t<arch, Hs...>;
    using carrier = typename Space::ucall_exit;
    static_assert(every_handler_called<exit_types<arch>, Hs...>);
    static_assert(list_contains_v<carrier, typename arch::exit_types>,
                  "vcpu::guest::run: the space's ucall_exit is not an exit type of this architecture");
    std::optional<out_t> out;
    auto on_carrier = [&](carrier& e) noexcept {
        if constexpr (requires { space.register_ucall(e, cpu, [](auto&) { return true; }); }) {
            // A ucall carried in registers (x86-64: a sync of up to six values).
            if (const auto handled = space.register_ucall(
                    e, cpu, [&]<class U>(U& u) noexcept { return dispatch<out_t>(u, out, hs...); }))
                return *handled ? action::resume : action::stop;
        }
        if (const auto gva = space.ucall_address(e)) {
            const bool resume = decode_ucall(space, *gva, [&]<class U>(U& u) noexcept {
                return dispatch<out_t>(u, out, hs...);
            });
            return resume ? action::resume : action::stop;
        }
        return dispatch<out_t>(e, out, hs...) ? action::resume : action::stop;
    };
    auto r = cpu.run(on_carrier, allow_unused(detail::handler_ref<std::remove_reference_t<Hs>>{&hs})...);
    if (!r) return r.err();
    if (out) return std::move(*out);
    // An arch exit some handler stopped on (or none took): the same type is in out_t, because
    // both variants are computed from the same handlers.
    return std::visit(
        [](auto& e) -> result<out_t> {
            using E = std::remove_cvref_t<decltype(e)>;
            if constexpr (requires { out_t(std::in_place_type<E>, e); }) {
                return out_t(std::in_place_type<E>, e);
            } else {
                return error{"vcpu::guest::run", EPROTO, "an exit came back that no handler set allows"};
            }
        },
        *r);
}

} // namespace vcpu::guest
