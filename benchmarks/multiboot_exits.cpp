// Exit costs seen from inside a guest (issue 17 "Benchmarks"): the x86-64 Multiboot test guest
// (examples/vmm/guests) run with the argument "bench" measures TSC cycles per CPUID (an exit KVM
// handles itself), per read of the PM timer port 0xb008 (an exit to the VMM) and per MOV to CR8,
// and prints "BENCH <name> <cycles>". The same image runs, in the same process run, under
//   - examples/vmm (the library: bus, devices, basic_vcpu run loop), started as a child process;
//   - a raw C-style KVM loop right here: ioctls by hand, a switch on exit_reason, the PM timer
//     and the serial port decoded inline.
// The counters are the guest's cycles per operation for each, and the ratio vmm / raw.
// Needs /dev/kvm (exit 77 without it) and the paths CMake passes in (VCPU_BENCH_VMM,
// VCPU_BENCH_MULTIBOOT_GUEST).
#include "support/main.hpp"

#include <arch/x86_64/multiboot.hpp>
#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/memory.hpp>

#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

#if defined(VCPU_BENCH_VMM) && defined(VCPU_BENCH_MULTIBOOT_GUEST)
constexpr const char* vmm_path = VCPU_BENCH_VMM;
constexpr const char* guest_path = VCPU_BENCH_MULTIBOOT_GUEST;
#else
constexpr const char* vmm_path = "";
constexpr const char* guest_path = "";
#endif

constexpr const char* names[] = {"cpuid", "pmtimer_read", "mov_cr8"};
using results = std::map<std::string, double>;
results g_vmm, g_raw;

/// "BENCH name cycles" lines of a guest's output.
results parse(const std::string& out) {
    results r;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        std::istringstream l(line);
        std::string tag, name;
        double v = 0;
        if (l >> tag >> name >> v && tag == "BENCH") r[name] = v;
    }
    return r;
}

bool complete(const results& r) {
    for (const char* n : names)
        if (!r.count(n) || r.at(n) <= 0) return false;
    return true;
}

void set_counters(benchmark::State& state, const results& r) {
    for (const char* n : names)
        if (r.count(n)) state.counters[std::string(n) + "_cycles"] = r.at(n);
}

void BM_vmm(benchmark::State& state) {
    if (vmm_path[0] == '\0') return state.SkipWithError("built without examples/vmm or the Multiboot guests");
    for (auto _ : state) {
        const std::string cmd = std::string(vmm_path) + " --kernel " + guest_path +
                                " --cmdline bench --mem 128 --quiet-summary </dev/null 2>/dev/null";
        std::unique_ptr<FILE, int (*)(FILE*)> p(::popen(cmd.c_str(), "r"), ::pclose);
        if (!p) return state.SkipWithError("popen vmm failed");
        std::string out;
        std::array<char, 4096> buf{};
        for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p.get())) > 0;) out.append(buf.data(), n);
        g_vmm = parse(out);
    }
    if (!complete(g_vmm)) return state.SkipWithError("the guest under vmm printed no complete BENCH lines");
    set_counters(state, g_vmm);
}

/// The raw loop: what a C VMM of a page would do for this guest.
struct raw_vm {
    int kvm = -1, vm = -1, cpu = -1;
    void* ram = MAP_FAILED;
    std::size_t ram_size = std::size_t{128} << 20;
    kvm_run* run = nullptr;
    std::size_t run_size = 0;
    ~raw_vm() {
        if (run) ::munmap(run, run_size);
        if (ram != MAP_FAILED) ::munmap(ram, ram_size);
        for (int fd : {cpu, vm, kvm})
            if (fd >= 0) ::close(fd);
    }
};

std::string raw_run(const std::vector<std::byte>& image, std::string& error) {
    raw_vm v;
    auto fail = [&](const char* what) {
        error = std::string(what) + ": " + std::strerror(errno);
        return std::string();
    };
    if ((v.kvm = ::open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) return fail("open /dev/kvm");
    if ((v.vm = ::ioctl(v.kvm, KVM_CREATE_VM, 0)) < 0) return fail("KVM_CREATE_VM");
    if (::ioctl(v.vm, KVM_SET_TSS_ADDR, 0xffffd000ul) < 0) return fail("KVM_SET_TSS_ADDR");
    std::uint64_t idmap = 0xffffc000;
    if (::ioctl(v.vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) return fail("KVM_SET_IDENTITY_MAP_ADDR");
    if (::ioctl(v.vm, KVM_CREATE_IRQCHIP, 0) < 0) return fail("KVM_CREATE_IRQCHIP");
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    if (::ioctl(v.vm, KVM_CREATE_PIT2, &pit) < 0) return fail("KVM_CREATE_PIT2");
    v.ram = ::mmap(nullptr, v.ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v.ram == MAP_FAILED) return fail("mmap");
    kvm_userspace_memory_region region{0, 0, 0, v.ram_size, reinterpret_cast<std::uintptr_t>(v.ram)};
    if (::ioctl(v.vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return fail("KVM_SET_USER_MEMORY_REGION");
    // Loading is not what is measured: the library's loader puts the same bytes where vmm does.
    vcpu::guest_memory mem;
    (void)mem.add({0, {static_cast<std::byte*>(v.ram), v.ram_size}, false});
    vcpu::x86_64::multiboot_options mo;
    mo.ram_size = v.ram_size;
    mo.cmdline = "multiboot-guest-x86_64.elf bench";
    auto loaded = vcpu::x86_64::load_multiboot(image, mem, mo);
    if (!loaded) {
        error = loaded.err().message();
        return {};
    }
    if ((v.cpu = ::ioctl(v.vm, KVM_CREATE_VCPU, 0)) < 0) return fail("KVM_CREATE_VCPU");
    const int mmap_size = ::ioctl(v.kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size <= 0) return fail("KVM_GET_VCPU_MMAP_SIZE");
    v.run_size = static_cast<std::size_t>(mmap_size);
    void* r = ::mmap(nullptr, v.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v.cpu, 0);
    if (r == MAP_FAILED) return fail("mmap kvm_run");
    v.run = static_cast<kvm_run*>(r);

    // struct kvm_cpuid2 ends in a flexible array: a buffer with room for 100 entries behind it.
    constexpr std::uint32_t max_entries = 100;
    std::vector<std::uint64_t> cpuid_buf((sizeof(kvm_cpuid2) + max_entries * sizeof(kvm_cpuid_entry2)) / 8 + 1);
    auto* cpuid = reinterpret_cast<kvm_cpuid2*>(cpuid_buf.data());
    cpuid->nent = max_entries;
    // The request numbers as a C compiler computes them: in C++ the header's flexible-array
    // wrapper makes sizeof(kvm_cpuid2) differ from C's 8, which the kernel rejects (EINVAL).
    constexpr unsigned long get_supported_cpuid = _IOWR(KVMIO, 0x05, std::uint64_t);
    constexpr unsigned long set_cpuid2 = _IOW(KVMIO, 0x90, std::uint64_t);
    static_assert(_IOC_NR(KVM_GET_SUPPORTED_CPUID) == 0x05 && _IOC_NR(KVM_SET_CPUID2) == 0x90);
    if (::ioctl(v.kvm, get_supported_cpuid, cpuid) < 0) return fail("KVM_GET_SUPPORTED_CPUID");
    if (::ioctl(v.cpu, set_cpuid2, cpuid) < 0) return fail("KVM_SET_CPUID2");
    kvm_sregs s{};
    if (::ioctl(v.cpu, KVM_GET_SREGS, &s) < 0) return fail("KVM_GET_SREGS");
    kvm_segment code{};
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = 0x08;
    code.type = 11;
    code.present = 1;
    code.db = 1;
    code.s = 1;
    code.g = 1;
    kvm_segment data = code;
    data.selector = 0x10;
    data.type = 3;
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.cr0 = (s.cr0 | 1) & ~(1ull << 31);
    s.cr4 = 0;
    s.efer = 0;
    if (::ioctl(v.cpu, KVM_SET_SREGS, &s) < 0) return fail("KVM_SET_SREGS");
    kvm_regs g{};
    g.rip = loaded->entry;
    g.rax = 0x2badb002;
    g.rbx = loaded->info;
    g.rflags = 2;
    if (::ioctl(v.cpu, KVM_SET_REGS, &g) < 0) return fail("KVM_SET_REGS");

    vcpu::devices::acpi_pm_timer<> pm;
    std::string out;
    for (;;) {
        if (::ioctl(v.cpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return fail("KVM_RUN");
        }
        switch (v.run->exit_reason) {
        case KVM_EXIT_IO: {
            auto* data_p = reinterpret_cast<std::uint8_t*>(v.run) + v.run->io.data_offset;
            const auto port = v.run->io.port;
            if (v.run->io.direction == KVM_EXIT_IO_OUT) {
                if (port == 0xf4) return out;
                if (port == 0x3f8)
                    for (std::uint32_t i = 0; i < v.run->io.count; ++i) out.push_back(static_cast<char>(data_p[i]));
            } else {
                std::uint32_t val = 0xffffffffu;
                if (port == 0x3fd) val = 0x60;                       // LSR: THR empty, transmitter empty
                else if (port == 0xb008) val = pm.read(0, 4);        // PM timer
                std::memcpy(data_p, &val, v.run->io.size);
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (!v.run->mmio.is_write) std::memset(v.run->mmio.data, 0xff, sizeof v.run->mmio.data);
            break;
        default:
            error = "unexpected exit reason " + std::to_string(v.run->exit_reason);
            return {};
        }
    }
}

void BM_raw_loop(benchmark::State& state) {
    if (guest_path[0] == '\0') return state.SkipWithError("built without the Multiboot guests");
    std::ifstream f(guest_path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> image(c.size());
    std::memcpy(image.data(), c.data(), c.size());
    for (auto _ : state) {
        std::string error;
        const std::string out = raw_run(image, error);
        if (!error.empty()) return state.SkipWithError(error.c_str());
        g_raw = parse(out);
    }
    if (!complete(g_raw)) return state.SkipWithError("the guest under the raw loop printed no complete BENCH lines");
    set_counters(state, g_raw);
}

/// Runs after the two above (registration order): cycles under vmm / cycles under the raw loop.
void BM_ratio_vmm_over_raw(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(g_vmm.size());
    if (!complete(g_vmm) || !complete(g_raw)) return state.SkipWithError("a run above failed");
    for (const char* n : names) state.counters[std::string(n) + "_ratio"] = g_vmm.at(n) / g_raw.at(n);
}

BENCHMARK(BM_vmm)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_raw_loop)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ratio_vmm_over_raw)->Iterations(1);

} // namespace

VCPU_BENCH_MAIN(true)
