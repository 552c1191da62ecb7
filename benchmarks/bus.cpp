// Bus lookup: the compile-time map of vcpu/bus.hpp (binary-search and linear shapes) against a
// linked list of ranges with function pointers (the minimal C VMM) and a std::map ordered by base
// (an interval search like kvmtool's rb-tree), each with 4 and 32 devices. Every case routes the
// same pseudo-random stream of mapped port reads to a trivial device and checks the sum it read.
// Counters: ns per lookup, and the ratio to the compile-time binary bus measured in the same run.
#include <vcpu/bus.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace {

template <std::size_t I>
struct dev {
    std::uint64_t hits = 0;
    std::uint32_t read(std::uint64_t off, std::uint8_t) noexcept {
        ++hits;
        return static_cast<std::uint32_t>(I * 16 + off);
    }
    void write(std::uint64_t, std::uint8_t, std::uint64_t) noexcept { ++hits; }
};

constexpr std::uint64_t base_of(std::size_t i) noexcept { return 0x100 + i * 0x20; }
constexpr std::uint64_t span_of = 8;

template <class Lookup, class Seq> struct bus_for;
template <class Lookup, std::size_t... I>
struct bus_for<Lookup, std::index_sequence<I...>> {
    using type = vcpu::basic_bus<vcpu::port_io, vcpu::unmapped::all_ones, Lookup,
                                 vcpu::range<base_of(I), span_of, dev<I>>...>;
};
template <std::size_t N, class Lookup>
using bus_t = typename bus_for<Lookup, std::make_index_sequence<N>>::type;

/// The minimal C VMM's shape: a singly linked list of ranges with callbacks.
struct list_node {
    std::uint64_t base, size;
    std::uint32_t (*read)(void*, std::uint64_t, std::uint8_t);
    void* device;
    list_node* next;
};
struct any_dev {
    std::uint64_t hits = 0;
    std::uint32_t tag = 0;
};
std::uint32_t any_read(void* d, std::uint64_t off, std::uint8_t) {
    auto* p = static_cast<any_dev*>(d);
    ++p->hits;
    return static_cast<std::uint32_t>(p->tag * 16 + off);
}

struct map_entry {
    std::uint64_t size;
    std::uint32_t (*read)(void*, std::uint64_t, std::uint8_t);
    void* device;
};

std::vector<std::uint64_t> address_stream(std::size_t n) {
    std::vector<std::uint64_t> a(4096);
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& v : a) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v = base_of(x % n) + (x >> 32) % span_of;
    }
    return a;
}

std::uint64_t expected_sum(const std::vector<std::uint64_t>& a) {
    std::uint64_t s = 0;
    for (auto p : a) s += ((p - 0x100) / 0x20) * 16 + (p - 0x100) % 0x20;
    return s;
}

/// ns per lookup of `lookup` over `a`, timed by hand (for the ratio counters).
template <class Lookup>
double manual_ns(const std::vector<std::uint64_t>& a, Lookup&& lookup) {
    constexpr int rounds = 200;
    std::uint64_t s = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < rounds; ++r)
        for (auto p : a) s += lookup(p);
    benchmark::DoNotOptimize(s);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / (rounds * static_cast<double>(a.size()));
}

template <std::size_t N>
double bus_ns_per_lookup() {
    bus_t<N, vcpu::lookup::binary> bus;
    return manual_ns(address_stream(N), [&](std::uint64_t p) { return bus.read(p, 4); });
}

template <class Body>
void run(benchmark::State& state, const std::vector<std::uint64_t>& a, Body&& lookup, double bus_ns) {
    std::uint64_t sum = 0, n = 0;
    for (auto _ : state) {
        std::uint64_t s = 0;
        for (auto p : a) s += lookup(p);
        benchmark::DoNotOptimize(s);
        sum = s;
        n += a.size();
    }
    if (sum != expected_sum(a)) state.SkipWithError("a lookup reached the wrong device");
    // Shown as seconds per lookup (e.g. "2.1n" = 2.1 ns).
    state.counters["per_lookup"] = benchmark::Counter(static_cast<double>(n),
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    if (bus_ns > 0) state.counters["x_compile_time_bus"] = manual_ns(a, lookup) / bus_ns;
}

template <std::size_t N, class Lookup>
void BM_compile_time_bus(benchmark::State& state) {
    bus_t<N, Lookup> bus;
    const auto a = address_stream(N);
    run(state, a, [&](std::uint64_t p) { return bus.read(p, 4); }, 0);
}

template <std::size_t N>
void BM_linked_list(benchmark::State& state) {
    std::vector<any_dev> devs(N);
    std::vector<list_node> nodes(N);
    // Inserted in registration order (ascending), as a VMM adds devices; found by a walk.
    for (std::size_t i = 0; i < N; ++i) {
        devs[i].tag = static_cast<std::uint32_t>(i);
        nodes[i] = {base_of(i), span_of, any_read, &devs[i], i + 1 < N ? &nodes[i + 1] : nullptr};
    }
    list_node* head = &nodes[0];
    benchmark::DoNotOptimize(head);
    const auto a = address_stream(N);
    run(state, a, [&](std::uint64_t p) -> std::uint64_t {
        for (list_node* n = head; n != nullptr; n = n->next)
            if (p - n->base < n->size) return n->read(n->device, p - n->base, 1);
        return 0xff;
    }, bus_ns_per_lookup<N>());
}

template <std::size_t N>
void BM_ordered_map(benchmark::State& state) {
    std::vector<any_dev> devs(N);
    std::map<std::uint64_t, map_entry> m;
    for (std::size_t i = 0; i < N; ++i) {
        devs[i].tag = static_cast<std::uint32_t>(i);
        m.emplace(base_of(i), map_entry{span_of, any_read, &devs[i]});
    }
    const auto a = address_stream(N);
    run(state, a, [&](std::uint64_t p) -> std::uint64_t {
        auto it = m.upper_bound(p);
        if (it == m.begin()) return 0xff;
        --it;
        if (p - it->first < it->second.size) return it->second.read(it->second.device, p - it->first, 1);
        return 0xff;
    }, bus_ns_per_lookup<N>());
}

BENCHMARK(BM_compile_time_bus<4, vcpu::lookup::binary>)->Name("bus/compile_time_binary/4");
BENCHMARK(BM_compile_time_bus<4, vcpu::lookup::linear>)->Name("bus/compile_time_linear/4");
BENCHMARK(BM_linked_list<4>)->Name("bus/linked_list/4");
BENCHMARK(BM_ordered_map<4>)->Name("bus/ordered_map/4");
BENCHMARK(BM_compile_time_bus<32, vcpu::lookup::binary>)->Name("bus/compile_time_binary/32");
BENCHMARK(BM_compile_time_bus<32, vcpu::lookup::linear>)->Name("bus/compile_time_linear/32");
BENCHMARK(BM_linked_list<32>)->Name("bus/linked_list/32");
BENCHMARK(BM_ordered_map<32>)->Name("bus/ordered_map/32");

} // namespace

BENCHMARK_MAIN();
