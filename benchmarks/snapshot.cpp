// Whole-VM snapshots (kvm/snapshot.hpp, kvm/x86_64_snapshot.hpp): save time, restore time until
// the guest runs again, and file size, for 64 / 256 / 1024 MiB x86-64 guests, with the ratio
// restore(1024) / restore(64) computed from the same run.
//
// The guest (C++ guest code) fills the same 8 MiB pattern whatever the RAM size, then counts in a
// loop with one ucall::sync per count. The host runs it to its first count and then:
//   snapshot/save/<MiB>     save_x86_64_snapshot to a file (the page cache; no fsync): vCPU and
//                           VM state, every RAM page scanned, zero pages left as holes.
//   snapshot/restore/<MiB>  restore_x86_64_snapshot (open and check the file, create the VM and
//                           its devices, map RAM copy-on-write from the file, create the vCPU,
//                           load VM and vCPU state) and KVM_RUN until the guest's next sync,
//                           which must be the count after the saved one: "runs again".
//   snapshot/ratio          restore(1024) / restore(64): 30 pairs, the two sizes restored
//                           alternately so that load on this shared machine hits both alike; the
//                           ratio of the medians (goal: <= 1.2), wall and thread CPU time.
// Times are wall-clock per iteration (manual time), with thread CPU time as a counter; the file is
// in the page cache (a cold cache adds one read per page the guest touches, the same for every
// size). Counters: file_MiB (logical size), disk_MiB (allocated blocks), written_pages.

#include "support/main.hpp"

#include <arch/x86_64/init.hpp>
#include <kvm/x86_64_snapshot.hpp>
#include <vcpu/guest/run.hpp>
#include <vcpu/guest/x86_64.hpp>
#include <vcpu/guest/x86_64_loader.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace {

using u64 = std::uint64_t;
namespace gx = vcpu::guest::x86_64;
namespace kvm = vcpu::kvm;

constexpr u64 pattern_pages = 2048; // 8 MiB

VCPU_GUEST_CODE void fill_and_count(u64 base, u64 pages) {
    for (u64 p = 0; p < pages; ++p)
        for (u64 k = 0; k < 4096; k += 512) *reinterpret_cast<volatile u64*>(base + p * 4096 + k) = p * 0x9e3779b97f4a7c15ull + k;
    for (u64 i = 1;; ++i) vcpu::guest::ucall::sync(i);
}

/// Guest addresses of a restored machine: the loader's translation with the saving machine's
/// image range; syncs in registers (as gx::space decodes them).
struct restored_space {
    using ucall_exit = vcpu::port_io;
    const vcpu::guest_memory* mem = nullptr;
    gx::layout layout{};
    u64 lo = 0, hi = 0;
    [[nodiscard]] std::span<const std::byte> contiguous(u64 gva) const noexcept {
        return vcpu::guest::image_space_bytes(mem, layout.image, layout.identity_gib, lo, hi, gva);
    }
    [[nodiscard]] std::span<const std::byte> bytes(u64 gva, u64 len) const noexcept {
        const auto c = contiguous(gva);
        return c.size() < len ? std::span<const std::byte>{} : c.first(static_cast<std::size_t>(len));
    }
    [[nodiscard]] std::optional<u64> ucall_address(const vcpu::port_io& io) const noexcept {
        if (io.port != vcpu::guest::ucall_port || !io.is_out() || io.size != 4 || io.count != 1) return std::nullopt;
        return io.value();
    }
    template <class Cpu, class Visitor>
    [[nodiscard]] std::optional<bool> register_ucall(const vcpu::port_io& io, Cpu& cpu, Visitor&& visit) const noexcept {
        if (io.port != vcpu::guest::ucall_sync_port || !io.is_out() || io.size != 4 || io.count != 1) return std::nullopt;
        auto g = cpu.hal().template load<vcpu::x86_64::regs_block>();
        if (io.value() != 1 || !g) {
            vcpu::guest::bad_ucall b{vcpu::guest::bad_ucall::why::registers, 0, io.value()};
            return visit(b);
        }
        vcpu::guest::sync s;
        s.count = 1;
        s.values[0] = (**g).rdi;
        return visit(s);
    }
};

kvm::x86_64_options options(u64 mib) {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{mib} << 20;
    o.irqchip = o.pit = true;
    return o;
}

/// Runs to the next sync; its value, or nullopt (with `why`).
template <class Cpu, class Space>
std::optional<u64> next_sync(Cpu& cpu, const Space& space, std::string& why) {
    auto r = vcpu::guest::run(cpu, space, [](vcpu::guest::sync&) { return vcpu::action::stop; });
    if (!r) {
        why = r.err().message();
        return std::nullopt;
    }
    if (const auto* s = std::get_if<vcpu::guest::sync>(&*r); s != nullptr && s->size() == 1) return (*s)[0];
    why = "the guest stopped without a sync (exit index " + std::to_string(r->index()) + ")";
    return std::nullopt;
}

/// One guest per size, run to its first count, and its snapshot file.
struct prepared {
    std::optional<kvm::x86_64_machine> m;
    std::optional<gx::space> space;
    std::string path, error;
    restored_space saved;
    u64 count = 0; ///< the count the snapshot was taken at
};

std::string temp_path(u64 mib) {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir != nullptr ? dir : "/tmp") + "/vcpu-bench-snapshot-" + std::to_string(::getpid()) + "-" +
           std::to_string(mib) + ".snap";
}

prepared& prepare(u64 mib) {
    static std::map<u64, std::unique_ptr<prepared>> all;
    auto& slot = all[mib];
    if (slot) return *slot;
    slot = std::make_unique<prepared>();
    auto& p = *slot;
    p.path = temp_path(mib);
    auto m = kvm::vm_init_x86_64(options(mib), vcpu::x86_64::cpuid_setup<>{});
    if (!m) return p.error = m.err().message(), p;
    p.m.emplace(std::move(*m));
    auto s = gx::space::load(p.m->memory, reinterpret_cast<const void*>(&fill_and_count));
    if (!s) return p.error = s.err().message(), p;
    p.space = *s;
    if (auto e = p.space->enter(p.m->vcpus[0], gx::call(&fill_and_count, p.space->free_begin(), pattern_pages)); !e)
        return p.error = e.err().message(), p;
    auto c = next_sync(p.m->vcpus[0], *p.space, p.error);
    if (!c) return p;
    if (*c != 1) return p.error = "first count is not 1", p;
    p.count = *c;
    p.saved.lo = p.space->image_va();
    p.saved.hi = p.space->image_va() + p.space->image_bytes();
    return p;
}

struct cleanup {
    ~cleanup() {
        for (u64 mib : {64, 256, 1024}) (void)::unlink(temp_path(mib).c_str());
    }
} remove_files;

double thread_ms() { return bench::thread_cpu_ns() / 1e6; }

void BM_save(benchmark::State& state) {
    const u64 mib = static_cast<u64>(state.range(0));
    auto& p = prepare(mib);
    if (!p.error.empty()) return state.SkipWithError(p.error.c_str());
    kvm::snapshot_write_stats stats;
    double cpu = 0;
    for (auto _ : state) {
        const double c0 = thread_ms();
        const auto t0 = std::chrono::steady_clock::now();
        auto w = kvm::save_x86_64_snapshot(p.path.c_str(), *p.m);
        const auto t1 = std::chrono::steady_clock::now();
        cpu += thread_ms() - c0;
        if (!w) return state.SkipWithError(w.err().message().c_str());
        stats = *w;
        state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    }
    struct stat st{};
    ::stat(p.path.c_str(), &st);
    state.counters["cpu_ms"] = cpu / static_cast<double>(state.iterations());
    state.counters["file_MiB"] = static_cast<double>(stats.file_size) / (1 << 20);
    state.counters["disk_MiB"] = static_cast<double>(st.st_blocks) * 512 / (1 << 20);
    state.counters["written_pages"] = static_cast<double>(stats.written_pages);
}

/// One restore of `p` until the guest's next count; wall and thread CPU ms, or an error.
struct restore_time {
    double wall_ms = 0, cpu_ms = 0;
    std::string error;
};
restore_time restore_once(prepared& p, u64 mib) {
    restore_time t;
    const double c0 = thread_ms();
    const auto t0 = std::chrono::steady_clock::now();
    {
        auto m = kvm::restore_x86_64_snapshot(p.path.c_str(), options(mib), vcpu::x86_64::cpuid_setup<>{});
        if (!m) return t.error = m.err().message(), t;
        restored_space space = p.saved;
        space.mem = &m->memory;
        const auto c = next_sync(m->vcpus[0], space, t.error);
        t.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        t.cpu_ms = thread_ms() - c0;
        if (!c) return t;
        if (*c != p.count + 1 + (bench::corrupt() ? 1 : 0)) return t.error = "the restored guest did not continue its count", t;
    } // the machine is torn down here, after the times were taken
    return t;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

bool ensure_file(prepared& p, std::string& why) {
    if (::access(p.path.c_str(), R_OK) == 0) return true;
    auto w = kvm::save_x86_64_snapshot(p.path.c_str(), *p.m);
    if (!w) why = w.err().message();
    return w.has_value();
}

void BM_restore(benchmark::State& state) {
    const u64 mib = static_cast<u64>(state.range(0));
    auto& p = prepare(mib);
    std::string why = p.error;
    if (!why.empty() || !ensure_file(p, why)) return state.SkipWithError(why.c_str());
    double cpu = 0;
    for (auto _ : state) {
        const auto t = restore_once(p, mib);
        if (!t.error.empty()) return state.SkipWithError(t.error.c_str());
        cpu += t.cpu_ms;
        state.SetIterationTime(t.wall_ms / 1e3);
    }
    state.counters["cpu_ms"] = cpu / static_cast<double>(state.iterations());
}

void BM_ratio(benchmark::State& state) {
    auto& small = prepare(64);
    auto& big = prepare(1024);
    std::string why = small.error + big.error;
    if (!why.empty() || !ensure_file(small, why) || !ensure_file(big, why)) return state.SkipWithError(why.c_str());
    std::vector<double> w64, w1024, c64, c1024;
    for (auto _ : state) {
        const auto a = restore_once(small, 64);
        const auto b = restore_once(big, 1024);
        if (!a.error.empty() || !b.error.empty()) return state.SkipWithError((a.error + b.error).c_str());
        w64.push_back(a.wall_ms);
        w1024.push_back(b.wall_ms);
        c64.push_back(a.cpu_ms);
        c1024.push_back(b.cpu_ms);
        state.SetIterationTime((a.wall_ms + b.wall_ms) / 1e3);
    }
    state.counters["restore_64_ms"] = median(w64);
    state.counters["restore_1024_ms"] = median(w1024);
    state.counters["restore_1024_over_64"] = median(w1024) / median(w64);
    state.counters["restore_cpu_64_ms"] = median(c64);
    state.counters["restore_cpu_1024_ms"] = median(c1024);
    state.counters["restore_cpu_1024_over_64"] = median(c1024) / median(c64);
}

BENCHMARK(BM_save)->Name("snapshot/save")->Arg(64)->Arg(256)->Arg(1024)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_restore)
    ->Name("snapshot/restore")
    ->Arg(64)
    ->Arg(256)
    ->Arg(1024)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ratio)->Name("snapshot/ratio")->Iterations(30)->UseManualTime()->Unit(benchmark::kMillisecond);

} // namespace

VCPU_BENCH_MAIN(true)
