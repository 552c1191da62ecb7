#pragma once
/// \file
/// Type lists as architectures declare them (`exit_types`, `register_blocks`,
/// `keyed_banks`), and the compile-time operations on them (membership,
/// concatenation, filtering). Handler lookup over them is in dispatch.hpp.

#include <vcpu/config.hpp>

#include <cstddef>
#include <tuple>
#include <type_traits>

namespace vcpu {

/// A list of types, as declared by an architecture or HAL.
template <class... Ts>
struct type_list {
    /// Number of types in the list.
    static constexpr std::size_t size = sizeof...(Ts);
};

namespace detail {
template <class T, class List> struct list_contains;
template <class T, class... Ts>
struct list_contains<T, type_list<Ts...>> : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

template <class T, class List> struct list_index;
template <class T, class... Ts> struct list_index<T, type_list<Ts...>> {
    static constexpr std::size_t value = [] {
        constexpr bool match[] = {std::is_same_v<T, Ts>..., false};
        std::size_t i = 0;
        while (i < sizeof...(Ts) && !match[i]) ++i;
        return i;
    }();
};

template <class List> struct layout_tuple;
template <class... Ts> struct layout_tuple<type_list<Ts...>> {
    using type = std::tuple<typename Ts::layout...>;
};

template <class A, class B> struct list_concat;
template <class... A, class... B> struct list_concat<type_list<A...>, type_list<B...>> {
    using type = type_list<A..., B...>;
};
template <class Kept, class Rest, bool... Keep> struct list_filter;
template <class... K> struct list_filter<type_list<K...>, type_list<>> {
    using type = type_list<K...>;
};
template <class... K, class T, class... Ts, bool B, bool... Bs>
struct list_filter<type_list<K...>, type_list<T, Ts...>, B, Bs...>
    : list_filter<std::conditional_t<B, type_list<K..., T>, type_list<K...>>, type_list<Ts...>, Bs...> {};
} // namespace detail

/// The types of `List` whose flag in `Keep...` (one per type, in order) is true.
template <class List, bool... Keep>
using list_filter_t = typename detail::list_filter<type_list<>, List, Keep...>::type;

/// True when `T` is one of `List`'s types.
template <class T, class List>
inline constexpr bool list_contains_v = detail::list_contains<T, List>::value;

/// Position of `T` in `List` (the first one); `List::size` when absent. Indexes the storage
/// HALs keep per register block or keyed bank (a tuple, or a bit in a mask).
template <class T, class List>
inline constexpr std::size_t list_index_v = detail::list_index<T, List>::value;

/// A `std::tuple` of one `T::layout` per type of `List`: the in-process images of an arch's
/// `register_blocks`, for HALs that keep register state themselves (the mock, trace replay).
template <class List>
using layout_tuple_t = typename detail::layout_tuple<List>::type;

/// `type_list<A..., B...>`.
template <class A, class B>
using list_concat_t = typename detail::list_concat<A, B>::type;

static_assert(list_index_v<int, type_list<char, int, int>> == 1 && list_index_v<long, type_list<char>> == 1);

} // namespace vcpu
