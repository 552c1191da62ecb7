// Suites 4 and 5 on /dev/kvm: exit avoidance and creation cost.
//
// avoid/<mechanism>/<pio|mmio>/<cpl>: the guest writes a doorbell N = 128 times (unrolled
// `out dx, al` or `mov [rbx], al`), then does one `out 0x10, al` that exits. Per-write cost =
// thread CPU time / N, for: full (every doorbell write exits to the basic_vcpu handler),
// ioeventfd (KVM_IOEVENTFD: the kernel signals an eventfd instead; checked: the eventfd counts N),
// coalesced (KVM_REGISTER_COALESCED_MMIO / _PIO: the kernel appends to the ring; basic_vcpu
// drains it before the next exit; checked: N entries of value 1). Counter ratio_to_full =
// per-write cost / the full-exit case of the same access kind and mode, measured just before.
//
// create/<raw|vcpu>: open /dev/kvm, KVM_CREATE_VM, guest RAM + slot, KVM_CREATE_VCPU + kvm_run
// mapping, real-mode state at 0000:1000, KVM_RUN to the first exit (`out 0x10, al`, checked), raw
// ioctls vs the library; both timed alternately in each iteration (teardown not timed). Counters
// raw_ns, vcpu_ns, ratio.

#include "support/guest.hpp"
#include "support/main.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/exits.hpp>

#include <benchmark/benchmark.h>
#include <linux/kvm.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <initializer_list>
#include <vector>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

using namespace bench;
using u8 = std::uint8_t;
using u64 = std::uint64_t;

constexpr unsigned writes = 128; // < KVM_COALESCED_MMIO_MAX (170 with 4 KiB pages)
constexpr std::uint16_t bell_port = 0x30;

enum class mech { full, ioeventfd, coalesced };

std::vector<u8> doorbell_code(bool pio) {
    // Bytes appended one at a time: g++ 12 -O3 warns (-Warray-bounds, falsely) on
    // vector::insert of a short initializer list here.
    std::vector<u8> c;
    c.reserve(16 + 2 * writes);
    auto emit = [&c](std::initializer_list<u8> bytes) {
        for (const u8 b : bytes) c.push_back(b);
    };
    if (pio) emit({0x66, 0xba, 0x30, 0x00}); // mov dx, 0x30
    else emit({0xbb, 0x00, 0x00, 0x00, 0x10}); // mov ebx, 0x10000000
    emit({0xb0, 0x01});                        // mov al, 1
    const std::size_t loop = c.size();
    for (unsigned i = 0; i < writes; ++i) {
        if (pio) emit({0xee}); // out dx, al
        else emit({0x88, 0x03}); // mov [rbx], al
    }
    emit({0xe6, 0x10}); // out 0x10, al: the exit that ends a round
    const auto rel = static_cast<std::int32_t>(loop) - static_cast<std::int32_t>(c.size() + 5);
    c.push_back(0xe9); // jmp rel32 back to the first doorbell write
    for (int i = 0; i < 4; ++i) c.push_back(static_cast<u8>((static_cast<std::uint32_t>(rel) >> (8 * i)) & 0xff));
    return c;
}

std::map<std::string, double> full_ns; // per "<pio|mmio>/<cpl>", set by the full case

template <mech M, bool Pio, bool User>
void BM_avoid(benchmark::State& state) {
    const auto code = doorbell_code(Pio);
    auto m = make_guest(code, User);
    if (!m) {
        state.SkipWithError(m.err().message().c_str());
        return;
    }
    std::optional<vcpu::kvm::basic_fd<vcpu::kvm::linux_sys>> efd;
    vcpu::result<void> reg;
    if constexpr (M == mech::ioeventfd) {
        auto e = m->vm.ioeventfd({Pio ? bell_port : mmio_gpa, 1, Pio, std::nullopt});
        if (!e) reg = e.err();
        else efd.emplace(std::move(*e));
    } else if constexpr (M == mech::coalesced) {
        reg = Pio ? m->vm.register_coalesced_pio(bell_port, 1) : m->vm.register_coalesced_mmio(mmio_gpa, 0x1000);
    }
    if (!reg) {
        state.SkipWithError(reg.err().message().c_str());
        return;
    }
    auto& cpu = m->vcpus[0];
    unsigned seen = 0;
    std::string why;
    auto bell = [&](u64 addr, u64 v) noexcept {
        if (addr != (Pio ? bell_port : mmio_gpa) || v != 1) why = "doorbell write with a wrong address or value";
        ++seen;
    };
    // One round: N doorbell writes and the exit on port 0x10; checks the N writes arrived.
    auto round = [&]() {
        seen = 0;
        auto r = cpu.run(
            [&](vcpu::port_io& io) noexcept {
                if (io.port == 0x10) return vcpu::action::stop;
                bell(io.port, io.value());
                return vcpu::action::resume;
            },
            [&](vcpu::mmio& mm) noexcept { bell(mm.address, mm.value()); },
            [&](vcpu::coalesced_write& w) noexcept { bell(w.address, w.value()); });
        if (!r) return why = r.err().message(), false;
        if (!std::holds_alternative<vcpu::port_io>(*r)) return why = "unexpected exit", false;
        if constexpr (M == mech::ioeventfd) {
            u64 count = 0;
            if (::read(efd->get(), &count, sizeof count) != sizeof count) return why = "eventfd read failed", false;
            seen = static_cast<unsigned>(count);
        }
        if (seen != writes + (corrupt() ? 1u : 0u)) return why = "the doorbell writes did not all arrive", false;
        return why.empty();
    };
    if (!round()) { // warm-up
        state.SkipWithError(why.c_str());
        return;
    }
    double ns = 0;
    u64 rounds = 0;
    for (auto _ : state) {
        const double t0 = thread_cpu_ns();
        const bool ok = round();
        ns += thread_cpu_ns() - t0;
        if (!ok) {
            state.SkipWithError(why.c_str());
            return;
        }
        ++rounds;
    }
    const double per_write = ns / static_cast<double>(rounds * writes);
    state.counters["ns_per_write"] = per_write;
    const std::string key = std::string(Pio ? "pio/" : "mmio/") + (User ? "cpl3" : "cpl0");
    if constexpr (M == mech::full) full_ns[key] = per_write;
    if (full_ns[key] > 0) state.counters["ratio_to_full"] = per_write / full_ns[key];
    state.SetItemsProcessed(static_cast<std::int64_t>(rounds * writes));
}

template <bool Pio, bool User>
void reg_avoid() {
    const std::string tail = std::string(Pio ? "/pio/" : "/mmio/") + (User ? "cpl3" : "cpl0");
    benchmark::RegisterBenchmark(("avoid/full" + tail).c_str(), BM_avoid<mech::full, Pio, User>)->UseRealTime();
    benchmark::RegisterBenchmark(("avoid/ioeventfd" + tail).c_str(), BM_avoid<mech::ioeventfd, Pio, User>)->UseRealTime();
    benchmark::RegisterBenchmark(("avoid/coalesced" + tail).c_str(), BM_avoid<mech::coalesced, Pio, User>)->UseRealTime();
}

// ---- creation -------------------------------------------------------------------------------------

constexpr std::size_t ram_bytes = 2 << 20;
constexpr std::uint16_t real_ip = 0x1000;
constexpr u8 first_exit_code[] = {0xb0, 0x5a, 0xe6, 0x10, 0xf4}; // mov al,0x5a; out 0x10,al; hlt

/// The plain C way; create_raw returns "" or what failed.
struct raw_vm {
    int kvm = -1, vm = -1, cpu = -1;
    void* ram = MAP_FAILED;
    void* run = MAP_FAILED;
    std::size_t run_size = 0;
    ~raw_vm() {
        if (run != MAP_FAILED) ::munmap(run, run_size);
        if (cpu >= 0) ::close(cpu);
        if (vm >= 0) ::close(vm);
        if (ram != MAP_FAILED) ::munmap(ram, ram_bytes);
        if (kvm >= 0) ::close(kvm);
    }
};

std::string create_raw(raw_vm& v) {
    if ((v.kvm = ::open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) return "open /dev/kvm";
    if (::ioctl(v.kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return "KVM_GET_API_VERSION";
    if ((v.vm = ::ioctl(v.kvm, KVM_CREATE_VM, 0)) < 0) return "KVM_CREATE_VM";
    v.ram = ::mmap(nullptr, ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v.ram == MAP_FAILED) return "mmap RAM";
    std::memcpy(static_cast<u8*>(v.ram) + real_ip, first_exit_code, sizeof first_exit_code);
    ::kvm_userspace_memory_region slot{0, 0, 0, ram_bytes, reinterpret_cast<std::uintptr_t>(v.ram)};
    if (::ioctl(v.vm, KVM_SET_USER_MEMORY_REGION, &slot) < 0) return "KVM_SET_USER_MEMORY_REGION";
    if ((v.cpu = ::ioctl(v.vm, KVM_CREATE_VCPU, 0)) < 0) return "KVM_CREATE_VCPU";
    const int size = ::ioctl(v.kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < static_cast<int>(sizeof(::kvm_run))) return "KVM_GET_VCPU_MMAP_SIZE";
    v.run_size = static_cast<std::size_t>(size);
    v.run = ::mmap(nullptr, v.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v.cpu, 0);
    if (v.run == MAP_FAILED) return "mmap kvm_run";
    ::kvm_sregs s{};
    if (::ioctl(v.cpu, KVM_GET_SREGS, &s) < 0) return "KVM_GET_SREGS";
    s.cs.base = 0;
    s.cs.selector = 0;
    if (::ioctl(v.cpu, KVM_SET_SREGS, &s) < 0) return "KVM_SET_SREGS";
    ::kvm_regs r{};
    r.rip = real_ip;
    r.rflags = 2;
    if (::ioctl(v.cpu, KVM_SET_REGS, &r) < 0) return "KVM_SET_REGS";
    if (::ioctl(v.cpu, KVM_RUN, 0) < 0) return "KVM_RUN";
    auto* run = static_cast<::kvm_run*>(v.run);
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10 ||
        static_cast<u8*>(v.run)[run->io.data_offset] != (corrupt() ? 0x5b : 0x5a))
        return "first exit is not OUT 0x10 with 0x5a";
    return {};
}

struct fw_vm {
    std::optional<vcpu::kvm::system> sys;
    std::optional<vcpu::kvm::vm> vm;
    std::optional<vcpu::kvm::basic_guest_ram<vcpu::kvm::linux_sys>> ram;
    std::optional<cpu_t> cpu;
    // Destruction order: vCPU, VM, RAM, system.
    ~fw_vm() {
        cpu.reset();
        vm.reset();
        ram.reset();
        sys.reset();
    }
};

std::string create_fw(fw_vm& v) {
    auto s = vcpu::kvm::system::open();
    if (!s) return s.err().message();
    v.sys.emplace(std::move(*s));
    auto vm = v.sys->create_vm();
    if (!vm) return vm.err().message();
    v.vm.emplace(std::move(*vm));
    auto ram = vcpu::kvm::basic_guest_ram<vcpu::kvm::linux_sys>::allocate(ram_bytes);
    if (!ram) return ram.err().message();
    v.ram.emplace(std::move(*ram));
    std::memcpy(v.ram->bytes().data() + real_ip, first_exit_code, sizeof first_exit_code);
    if (auto e = v.vm->set_memory({0, 0, v.ram->bytes(), false, false}); !e) return e.err().message();
    auto cpu = v.vm->create_vcpu<vcpu::arch::x86_64>(0);
    if (!cpu) return cpu.err().message();
    v.cpu.emplace(std::move(*cpu));
    if (auto e = v.cpu->init(vcpu::x86_64::real_mode{0, real_ip, 0}); !e) return e.err().message();
    u8 got = 0;
    auto r = v.cpu->run([&](vcpu::port_io& io) noexcept {
        got = static_cast<u8>(io.value());
        return io.port == 0x10 ? vcpu::action::stop : vcpu::action::resume;
    });
    if (!r) return r.err().message();
    if (!std::holds_alternative<vcpu::port_io>(*r) || got != (corrupt() ? 0x5b : 0x5a))
        return "first exit is not OUT 0x10 with 0x5a";
    return {};
}

void BM_create(benchmark::State& state) {
    double raw_ns = 0, fw_ns = 0;
    std::uint64_t n = 0;
    bool flip = false;
    std::string why;
    for (auto _ : state) {
        for (int half = 0; half < 2 && why.empty(); ++half) {
            const bool fw = (half == 0) == flip;
            std::optional<raw_vm> rv;
            std::optional<fw_vm> fv;
            const double t0 = thread_cpu_ns();
            if (fw) why = create_fw(fv.emplace());
            else why = create_raw(rv.emplace());
            (fw ? fw_ns : raw_ns) += thread_cpu_ns() - t0;
            state.PauseTiming(); // teardown is not part of creation
            rv.reset();
            fv.reset();
            state.ResumeTiming();
        }
        if (!why.empty()) {
            state.SkipWithError(why.c_str());
            return;
        }
        flip = !flip;
        ++n;
    }
    state.counters["raw_ns"] = raw_ns / static_cast<double>(n);
    state.counters["vcpu_ns"] = fw_ns / static_cast<double>(n);
    state.counters["ratio"] = raw_ns > 0 ? fw_ns / raw_ns : 0;
}

[[maybe_unused]] const bool registered = [] {
    reg_avoid<true, false>();
    reg_avoid<false, false>();
    reg_avoid<true, true>();
    reg_avoid<false, true>();
    benchmark::RegisterBenchmark("create/first_exit", BM_create)->UseRealTime();
    return true;
}();

} // namespace

VCPU_BENCH_MAIN(true)
