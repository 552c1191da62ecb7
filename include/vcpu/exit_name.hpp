#pragma once
/// \file
/// `exit_name<E>()`: the qualified name of an exit type ("vcpu::port_io",
/// "vcpu::x86_64::exception") as a compile-time string, for messages about an
/// exit (an unhandled one, a trace) without RTTI or a demangler.

#include <vcpu/config.hpp>

#include <array>
#include <cstddef>
#include <string_view>
#include <type_traits>

namespace vcpu {

namespace detail {
/// The compiler's signature of this function, which spells `T` out: g++
/// "constexpr const char* ...() [with T = vcpu::port_io]", clang++
/// "const char *...() [T = vcpu::port_io]". Returns `const char*` so no
/// alias (such as `std::string_view = ...`) is appended to the brackets.
template <class T>
constexpr const char* pretty_signature() noexcept {
    return __PRETTY_FUNCTION__;
}

/// The `T` of a `pretty_signature<T>()` string: from after the first "= " that
/// follows the '[' to before the last ']'.
constexpr std::string_view type_of_signature(std::string_view s) noexcept {
    const auto open = s.find('[');
    const auto eq = s.find("= ", open == std::string_view::npos ? 0 : open);
    const auto close = s.rfind(']');
    if (open == std::string_view::npos || eq == std::string_view::npos ||
        close == std::string_view::npos || close < eq + 2)
        return s; // an unknown compiler's format: the whole signature still names the type
    return s.substr(eq + 2, close - (eq + 2));
}

template <class T>
inline constexpr std::string_view raw_type_name = type_of_signature(pretty_signature<T>());

/// The name, copied into an array of its own (NUL-terminated, for `%s`), so the
/// function signature it was cut from is not kept in the program.
template <class T>
inline constexpr auto type_name_storage = [] {
    constexpr std::string_view n = raw_type_name<T>;
    std::array<char, n.size() + 1> a{};
    for (std::size_t i = 0; i < n.size(); ++i) a[i] = n[i];
    return a;
}();
} // namespace detail

/// The qualified name of exit type `E` as the compiler spells it, without
/// cv-qualifiers or reference: `exit_name<vcpu::port_io>()` is
/// "vcpu::port_io", `exit_name<vcpu::x86_64::exception>()` is
/// "vcpu::x86_64::exception". Computed at compile time from
/// `__PRETTY_FUNCTION__` (g++ and clang++), no RTTI. The view is
/// NUL-terminated (`.data()` can go to `printf("%s")`) and valid for the whole
/// program. Works for any type; spellings of template arguments follow the
/// compiler ("long int" with g++, "long" with clang++).
template <class E>
[[nodiscard]] constexpr std::string_view exit_name() noexcept {
    using T = std::remove_cvref_t<E>;
    return {detail::type_name_storage<T>.data(), detail::type_name_storage<T>.size() - 1};
}

} // namespace vcpu
