#pragma once
/// \file
/// Compile-time dispatch of typed exits to a handler set.
///
/// A handler set is a pack of callables. For an exit of type `E`, the handler
/// is the *first* one invocable with `E&`; the choice is made by Hana at
/// compile time, so the call inlines into the decoder's `switch`. A handler
/// returns `void` (resume the guest) or `vcpu::action` (resume or stop).
/// `unhandled_exit_t` is the `std::variant` of exactly the exit types the
/// caller can get back: those no handler accepts, plus those whose handler
/// may return `action::stop`.

#include <vcpu/config.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>

#include <boost/hana/filter.hpp>
#include <boost/hana/integral_constant.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <boost/hana/unpack.hpp>

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

template <class Types, class... Hs> struct unhandled;
template <class... Es, class... Hs>
struct unhandled<type_list<Es...>, Hs...> {
    template <class E>
    struct returns : std::bool_constant<may_return<E, Hs...>()> {};
    template <class... Ts>
    struct make_variant {
        using type = std::variant<Ts...>;
    };
    template <class... Ts>
    static constexpr auto to_variant(boost::hana::basic_type<Ts>...) noexcept {
        if constexpr (sizeof...(Ts) == 0)
            return boost::hana::type_c<std::variant<std::monostate>>;
        else
            return boost::hana::type_c<std::variant<Ts...>>;
    }
    /// Hana does the set computation: filter the arch's exit types by
    /// "may come back", then unpack into a variant.
    static constexpr auto kept =
        boost::hana::filter(boost::hana::tuple_t<Es...>, boost::hana::trait<returns>);
    using type = typename decltype(boost::hana::unpack(
        kept, [](auto... t) { return to_variant(t...); }))::type;
};

} // namespace detail

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
