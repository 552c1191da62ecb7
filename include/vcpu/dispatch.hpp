#pragma once
/// \file
/// Compile-time dispatch of typed exits to a handler set.
///
/// A handler set is a pack of callables. For an exit of type `E`, the handler
/// is the *first* one invocable with `E&`; the choice is made at compile
/// time, so the call inlines into the decoder's `switch`. A handler
/// returns `void` (resume the guest) or `vcpu::action` (resume or stop).
/// `unhandled_exit_t` is the `std::variant` of exactly the exit types the
/// caller can get back: those no handler accepts, plus those whose handler
/// may return `action::stop` (a pack filter, `list_filter_t`: Boost.Hana did
/// this once, but its headers and `filter` cost more compile time than the
/// one set computation it did here).

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>

#include <array>
#include <cstddef>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace vcpu {

namespace detail {

/// Index of the first handler in `Hs...` invocable with `E&`, or -1.
template <class E, class... Hs>
constexpr std::ptrdiff_t handler_index() noexcept {
    constexpr bool accepts[] = {std::is_invocable_v<Hs&, E&>..., false};
    for (std::size_t i = 0; i < sizeof...(Hs); ++i)
        if (accepts[i]) return static_cast<std::ptrdiff_t>(i);
    return -1;
}

template <std::size_t I, class... Hs>
using handler_at = std::tuple_element_t<I, std::tuple<Hs...>>;

/// True when `E` can come back to the caller of `run()`.
template <class E, class... Hs>
constexpr bool may_return() noexcept {
    constexpr auto i = handler_index<E, Hs...>();
    if constexpr (i < 0) {
        return true;
    } else {
        using R = std::invoke_result_t<handler_at<static_cast<std::size_t>(i), Hs...>&, E&>;
        static_assert(std::is_void_v<R> || std::is_same_v<R, action>,
                      "vcpu: a handler must return void (resume) or vcpu::action");
        return std::is_same_v<R, action>;
    }
}

template <class List> struct variant_of;
template <class... Ts> struct variant_of<type_list<Ts...>> { using type = std::variant<Ts...>; };
template <> struct variant_of<type_list<>> { using type = std::variant<std::monostate>; };

template <class Types, class... Hs> struct unhandled;
template <class... Es, class... Hs>
struct unhandled<type_list<Es...>, Hs...> {
    /// The arch's exit types that may come back, in order, as a variant.
    using type = typename variant_of<list_filter_t<type_list<Es...>, may_return<Es, Hs...>()...>>::type;
};

} // namespace detail

/// A handler that may go uncalled: `run()` and `step()` reject, at compile time, any handler
/// that no exit type of the architecture selects (its parameter matches none of them, it takes
/// two parameters or a pointer, or an earlier handler takes every exit it accepts). Wrapping it
/// with `allow_unused` says that is intended, e.g. a handler set shared by VMMs for several
/// architectures. Calls forward to the wrapped handler.
template <class H>
struct allowed_unused {
    H fn;  ///< the wrapped handler
    /// Calls the wrapped handler with `e`.
    template <class E>
        requires std::is_invocable_v<H&, E&>
    constexpr decltype(auto) operator()(E& e) noexcept(std::is_nothrow_invocable_v<H&, E&>) {
        return fn(e);
    }
};

/// Wraps `h` so that it may be called for no exit of the architecture (see `allowed_unused`).
template <class H>
[[nodiscard]] constexpr allowed_unused<std::decay_t<H>> allow_unused(H&& h) {
    return {std::forward<H>(h)};
}

namespace detail {
template <class H> struct is_allowed_unused : std::false_type {};
template <class H> struct is_allowed_unused<allowed_unused<H>> : std::true_type {};
template <class> inline constexpr bool always_false = false;

/// Instantiated with `Used = false` only for a handler no exit type selects; the compiler's
/// note "required from ... handler_is_called<I, H, false>" names its position `I` (from 0)
/// and its type `H`.
template <std::size_t I, class H, bool Used>
struct handler_is_called : std::true_type {};
template <std::size_t I, class H>
struct handler_is_called<I, H, false> : std::true_type {
    static_assert(always_false<H>,
                  "vcpu: handler number I (from 0; see the note naming handler_is_called<I, H>) "
                  "is never called: no exit type of this architecture selects it (its parameter "
                  "matches none of them, or an earlier handler takes every exit it accepts). "
                  "Fix its parameter type, or wrap it in vcpu::allow_unused(...) if that is "
                  "intended");
};

template <class Types, class... Hs> struct handler_use;
template <class... Es, class... Hs>
struct handler_use<type_list<Es...>, Hs...> {
    /// used[i]: some exit type's first accepting handler is handler i.
    static constexpr std::array<bool, sizeof...(Hs) + 1> used = [] {
        std::array<bool, sizeof...(Hs) + 1> u{};
        ((handler_index<Es, Hs...>() >= 0 ? void(u[static_cast<std::size_t>(handler_index<Es, Hs...>())] = true)
                                          : void()),
         ...);
        return u;
    }();
    template <std::size_t... I>
    static constexpr bool check(std::index_sequence<I...>) {
        return (handler_is_called<I, std::remove_cvref_t<std::tuple_element_t<I, std::tuple<Hs...>>>,
                                  used[I] || is_allowed_unused<std::remove_cvref_t<
                                                 std::tuple_element_t<I, std::tuple<Hs...>>>>::value>::value &&
                ...);
    }
    static constexpr bool value = check(std::index_sequence_for<Hs...>{});
};
} // namespace detail

/// True when every handler in `Hs...` is selected by some exit type in `ExitTypes` (or is
/// wrapped in `allow_unused`); otherwise instantiating it fails to compile, naming the handler.
template <class ExitTypes, class... Hs>
inline constexpr bool every_handler_called = detail::handler_use<ExitTypes, Hs...>::value;

/// The `std::variant` of exit types that `run(handlers...)` may return for an
/// arch with `ExitTypes` (a `type_list`) and handler types `Hs...`;
/// `std::variant<std::monostate>` when every exit is handled for good.
template <class ExitTypes, class... Hs>
using unhandled_exit_t =
    typename detail::unhandled<ExitTypes, std::remove_reference_t<Hs>...>::type;

/// Hands exit `e` to its handler. Returns true when the guest should resume;
/// otherwise stores `e` in `out` (the exit goes back to the caller).
/// `constexpr`, so whole decode-and-dispatch scenarios can run in a `static_assert`.
template <class Out, class E, class... Hs>
[[gnu::always_inline]] constexpr bool dispatch(E& e, std::optional<Out>& out, Hs&... hs) noexcept {
    constexpr auto i = detail::handler_index<E, Hs...>();
    if constexpr (i < 0) {
        out.emplace(std::in_place_type<E>, e);
        return false;
    } else {
        auto& h = std::get<static_cast<std::size_t>(i)>(std::tie(hs...));
        using R = std::invoke_result_t<decltype(h), E&>;
        if constexpr (std::is_void_v<R>) {
            h(e);
            return true;
        } else {
            static_assert(std::is_same_v<R, action>,
                          "vcpu: a handler must return void (resume) or vcpu::action");
            if (h(e) == action::resume) return true;
            out.emplace(std::in_place_type<E>, e);
            return false;
        }
    }
}

} // namespace vcpu
