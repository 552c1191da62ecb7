#pragma once
/// \file
/// Compile-time device buses: port I/O and MMIO maps whose address ranges and
/// device types are template arguments, so a guest access reaches its device
/// through a constant-folded binary search (a tree of immediate compares the
/// compiler unrolls) and a direct, inlinable member call — no runtime search
/// through a list (the minimal C VMM) or an interval tree (kvmtool).
///
/// ```cpp
/// vcpu::port_bus<vcpu::unmapped::all_ones,
///                vcpu::range<0x3f8, 8, uart>, vcpu::range<0x60, 1, kbd>> pio;
/// cpu.run(pio, mmio_bus, other_handlers...);   // a bus is an exit handler
/// ```
///
/// Devices are plain types held by value in the bus (no `virtual`). A device
/// models `BusDevice`: `read(offset, size) -> integer` and
/// `write(offset, size, value)` where `offset` is relative to the range's base
/// and `size` is the access width in bytes. `write` (and `read` through an
/// out-parameter overload, see below) may return `vcpu::action` to stop the
/// run loop (e.g. an i8042 reset request); otherwise they return `void` /
/// the value.
///
/// Overlapping or empty ranges, and ranges that wrap the address space, are
/// compile errors.

#include <vcpu/config.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

namespace vcpu {

/// One entry of a bus map: `Size` addresses from `Base` handled by a `Device`.
template <std::uint64_t Base, std::uint64_t Size, class Device>
struct range {
    static constexpr std::uint64_t base = Base;  ///< first address of the range
    static constexpr std::uint64_t size = Size;  ///< number of addresses (bytes or ports) in the range
    /// The device type; the bus holds one instance and passes it offsets from `base`.
    using device = Device;
};

/// **BusDevice** — *intent*: a device behind a bus range.
/// *Minimal complete definition*: `d.read(offset, size)` returning an
/// integer, and `d.write(offset, size, value)` returning `void` or
/// `vcpu::action`. *Laws*: `offset < range size`; `size` is 1, 2, 4 (port I/O)
/// or 1..8 (MMIO); the bus masks a read's value to `size` bytes.
template <class D>
concept BusDevice = requires(D& d, std::uint64_t offset, std::uint8_t size, std::uint64_t value) {
    { d.read(offset, size) } -> std::convertible_to<std::uint64_t>;
    d.write(offset, size, value);
};

/// What a bus does with an access no range covers (a policy type).
namespace unmapped {
/// Writes are dropped, reads return 0.
struct ignore {
    /// Unmapped writes do not stop the run loop.
    static constexpr bool stops = false;
    /// What an unmapped read returns.
    static constexpr std::uint64_t read_value = 0;
};
/// Writes are dropped, reads return all ones (what an empty ISA/PCI bus
/// floats to; Linux's probes treat 0xff.. as "no device").
struct all_ones {
    /// Unmapped writes do not stop the run loop.
    static constexpr bool stops = false;
    /// What an unmapped read returns: all ones, truncated to the access size.
    static constexpr std::uint64_t read_value = ~std::uint64_t{0};
};
/// The access is reported as an exit: the bus returns `action::stop`, so
/// `basic_vcpu::run` returns the `port_io` / `mmio` exit to its caller.
struct report {
    /// Unmapped accesses make the bus return `action::stop`.
    static constexpr bool stops = true;
    /// An unmapped read's data before the caller answers it: 0.
    static constexpr std::uint64_t read_value = 0;
};
} // namespace unmapped

namespace detail {

struct bus_entry {
    std::uint64_t base = 0;
    std::uint64_t size = 0;
    std::size_t index = 0; ///< position in the bus's device tuple
};

template <class... Rs>
constexpr std::array<bus_entry, sizeof...(Rs)> sorted_entries() noexcept {
    std::array<bus_entry, sizeof...(Rs)> e{};
    std::size_t i = 0;
    ((e[i] = bus_entry{Rs::base, Rs::size, i}, ++i), ...);
    // Insertion sort: tiny N, constexpr.
    for (std::size_t a = 1; a < e.size(); ++a)
        for (std::size_t b = a; b > 0 && e[b].base < e[b - 1].base; --b) {
            auto t = e[b];
            e[b] = e[b - 1];
            e[b - 1] = t;
        }
    return e;
}

template <std::size_t N>
constexpr bool no_overlap(const std::array<bus_entry, N>& e) noexcept {
    for (std::size_t i = 1; i < N; ++i)
        if (e[i].base < e[i - 1].base + e[i - 1].size) return false;
    return true;
}

template <class... Rs>
constexpr bool all_nonempty() noexcept {
    return ((Rs::size != 0) && ...);
}
template <class... Rs>
constexpr bool none_wraps() noexcept {
    return ((Rs::base + (Rs::size - 1) >= Rs::base) && ...);
}

template <class D>
using write_result_t =
    decltype(std::declval<D&>().write(std::uint64_t{}, std::uint8_t{}, std::uint64_t{}));

constexpr std::uint64_t size_mask(std::uint8_t size) noexcept {
    return size >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * size)) - 1;
}

} // namespace detail

/// How a bus finds the range for an address (a policy type; both are
/// generated at compile time from the sorted map, see benchmarks/bus.cpp).
namespace lookup {
/// A balanced tree of compares against constant bases (ceil(log2 N) + 1
/// compares). The default.
struct binary {};
/// One constant compare per range, in address order (a fold expression);
/// the compiler may turn it into a jump table. Good for very few ranges.
struct linear {};
} // namespace lookup

/// A device bus over one address space. `Space` is `port_io` or `mmio` (the
/// exit type it handles), `Policy` one of `unmapped::*`, `Lookup` one of
/// `lookup::*`, `Rs...` the `range<>` entries in any order.
template <class Space, class Policy, class Lookup, class... Rs>
class basic_bus {
    static_assert(std::is_same_v<Space, port_io> || std::is_same_v<Space, mmio>,
                  "vcpu::bus: Space must be vcpu::port_io or vcpu::mmio");
    static_assert(detail::all_nonempty<Rs...>(), "vcpu::bus: a device range has size 0");
    static_assert(detail::none_wraps<Rs...>(), "vcpu::bus: a device range wraps the address space");
    static_assert((BusDevice<typename Rs::device> && ...),
                  "vcpu::bus: a device lacks read(offset, size) -> integer or "
                  "write(offset, size, value)");

    static constexpr auto sorted = detail::sorted_entries<Rs...>();
    static_assert(detail::no_overlap(sorted), "vcpu::bus: two device ranges overlap");

    using range_list = std::tuple<Rs...>;
    static constexpr bool device_stops =
        (std::is_same_v<detail::write_result_t<typename Rs::device>, action> || ...);

public:
    /// True when dispatch can ask the run loop to stop (report policy, or a
    /// device whose `write` returns `action`). Then the bus returns `action`.
    static constexpr bool may_stop = Policy::stops || device_stops;
    /// What `dispatch` returns: `vcpu::action` when `may_stop`, else `void`.
    using result_type = std::conditional_t<may_stop, action, void>;
    /// Number of ranges (and devices) on the bus.
    static constexpr std::size_t device_count = sizeof...(Rs);

    basic_bus() = default;
    /// Devices constructed from `ds...`, in the order of `Rs...`.
    template <class... Ds>
        requires(sizeof...(Ds) == sizeof...(Rs) && sizeof...(Ds) > 0)
    explicit basic_bus(Ds&&... ds) : devices_(std::forward<Ds>(ds)...) {}

    /// The device of the `I`-th range as declared.
    template <std::size_t I>
    [[nodiscard]] auto& device() noexcept { return std::get<I>(devices_); }
    /// The (first) device of type `D`.
    template <class D>
    [[nodiscard]] D& get() noexcept { return std::get<D>(devices_); }

    /// Index in `Rs...` of the range containing `addr`, or -1 (for tests and
    /// benchmarks; dispatch never materialises the index).
    [[nodiscard]] static constexpr std::ptrdiff_t find(std::uint64_t addr) noexcept {
        std::ptrdiff_t out = -1;
        (void)visit_range(addr, [&]<std::size_t I>(std::integral_constant<std::size_t, I>, std::uint64_t) {
            out = static_cast<std::ptrdiff_t>(I);
            return true;
        });
        return out;
    }

    /// Reads `size` bytes at `addr` (no exit record needed).
    [[nodiscard]] std::uint64_t read(std::uint64_t addr, std::uint8_t size) noexcept {
        std::uint64_t v = Policy::read_value;
        (void)visit_range(addr, [&]<std::size_t I>(std::integral_constant<std::size_t, I>, std::uint64_t off) {
            v = static_cast<std::uint64_t>(std::get<I>(devices_).read(off, size));
            return true;
        });
        return v & detail::size_mask(size);
    }
    /// Writes `size` bytes at `addr`; `action::stop` when a device asked to
    /// stop or the access was unmapped under `unmapped::report`.
    action write(std::uint64_t addr, std::uint8_t size, std::uint64_t value) noexcept {
        action a = action::resume;
        const bool hit = visit_range(addr, [&]<std::size_t I>(std::integral_constant<std::size_t, I>, std::uint64_t off) {
            auto& d = std::get<I>(devices_);
            using D = std::remove_reference_t<decltype(d)>;
            if constexpr (std::is_same_v<detail::write_result_t<D>, action>)
                a = d.write(off, size, value & detail::size_mask(size));
            else
                d.write(off, size, value & detail::size_mask(size));
            return true;
        });
        if (!hit && Policy::stops) return action::stop;
        return a;
    }

    /// The exit handler: routes a port I/O exit (every item of a `rep
    /// ins/outs`, in order) to its device.
    result_type operator()(port_io& io) noexcept
        requires std::is_same_v<Space, port_io>
    {
        return finish(handle(io.port, io.size, io.count, io.dir == direction::in,
                             [&](std::uint32_t i) { return io.value(i); },
                             [&](std::uint32_t i, std::uint64_t v) { io.set(static_cast<std::uint32_t>(v), i); }));
    }
    /// The exit handler: routes an MMIO exit to its device.
    result_type operator()(mmio& m) noexcept
        requires std::is_same_v<Space, mmio>
    {
        return finish(handle(m.address, m.size, 1, m.is_read(), [&](std::uint32_t) { return m.value(); },
                             [&](std::uint32_t, std::uint64_t v) { m.set(v); }));
    }

private:
    static constexpr result_type finish([[maybe_unused]] action a) noexcept {
        if constexpr (may_stop) return a;
    }

    template <class Get, class Set>
    [[gnu::always_inline]] action handle(std::uint64_t addr, std::uint8_t size, std::uint32_t count,
                                         bool is_read, Get&& get, Set&& set) noexcept {
        if (is_read) {
            bool hit = true;
            for (std::uint32_t i = 0; i < count; ++i) {
                hit = visit_range(addr, [&]<std::size_t I>(std::integral_constant<std::size_t, I>, std::uint64_t off) {
                    set(i, static_cast<std::uint64_t>(std::get<I>(devices_).read(off, size)));
                    return true;
                });
                if (!hit) {
                    set(i, Policy::read_value);
                    if constexpr (Policy::stops) return action::stop;
                }
            }
            return action::resume;
        }
        action a = action::resume;
        for (std::uint32_t i = 0; i < count && a == action::resume; ++i)
            a = write(addr, size, get(i));
        return a;
    }

    /// Calls `f(integral_constant<I>, offset)` for the range containing
    /// `addr`; false when none does. `Lookup` decides the compare shape.
    template <class F>
    [[gnu::always_inline]] static constexpr bool visit_range(std::uint64_t addr, F&& f) noexcept {
        if constexpr (sizeof...(Rs) == 0) {
            (void)addr;
            (void)f;
            return false;
        } else if constexpr (std::is_same_v<Lookup, lookup::linear>) {
            return [&]<std::size_t... K>(std::index_sequence<K...>) {
                return ((addr - sorted[K].base < sorted[K].size &&
                         f(std::integral_constant<std::size_t, sorted[K].index>{}, addr - sorted[K].base)) ||
                        ...);
            }(std::make_index_sequence<sizeof...(Rs)>{});
        } else {
            return search<0, sizeof...(Rs)>(addr, f);
        }
    }

    template <std::size_t Lo, std::size_t Hi, class F>
    [[gnu::always_inline]] static constexpr bool search(std::uint64_t addr, F& f) noexcept {
        if constexpr (Hi - Lo == 1) {
            constexpr auto e = sorted[Lo];
            if (addr - e.base < e.size)
                return f(std::integral_constant<std::size_t, e.index>{}, addr - e.base);
            return false;
        } else {
            constexpr std::size_t mid = Lo + (Hi - Lo) / 2;
            if (addr < sorted[mid].base) return search<Lo, mid>(addr, f);
            return search<mid, Hi>(addr, f);
        }
    }

    std::tuple<typename Rs::device...> devices_{};
};

/// A port I/O bus (x86 `in`/`out`), binary-search lookup.
template <class Policy, class... Rs>
using port_bus = basic_bus<port_io, Policy, lookup::binary, Rs...>;
/// An MMIO bus, binary-search lookup.
template <class Policy, class... Rs>
using mmio_bus = basic_bus<mmio, Policy, lookup::binary, Rs...>;

} // namespace vcpu
