#pragma once
/// \file
/// `vcpu::guest::call`: a guest entry function and its arguments, for every architecture's loader.

#include <vcpu/guest/calls.hpp>

#include <array>
#include <cstdint>
#include <type_traits>

namespace vcpu::guest {

/// A guest function and its (at most six) integer arguments: `call(&fn, args...)`, what a loader's
/// `space::enter` starts. The count is checked against `fn`'s parameters at compile time; each
/// argument is converted to its parameter type (an integer may stand for a pointer parameter: a
/// guest address) and passed in one register (SysV x86-64 RDI, RSI, RDX, RCX, R8, R9; AAPCS64
/// X0-X5; RISC-V LP64 a0-a5).
struct call {
    template <class P, class A>
    static std::uint64_t arg_value(A a) noexcept {
        if constexpr (std::is_pointer_v<P> && std::is_integral_v<A>)
            return static_cast<std::uint64_t>(a);
        else
            return detail::to_value(static_cast<P>(a));
    }

    std::uint64_t entry = 0;
    std::array<std::uint64_t, 6> args{};
    std::uint8_t count = 0;

    template <class R, class... P, class... A>
    call(R (*fn)(P...), A... a) noexcept
        : entry(static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(fn))),
          args{arg_value<P>(a)...},
          count(static_cast<std::uint8_t>(sizeof...(A))) {
        static_assert(sizeof...(P) == sizeof...(A), "vcpu::guest::call: wrong number of arguments");
        static_assert(sizeof...(P) <= 6, "vcpu::guest::call: at most six arguments");
        static_assert((detail::ucall_value<P> && ...),
                      "vcpu::guest::call: arguments must be integers, enums or pointers");
    }
};

} // namespace vcpu::guest
