#pragma once
// The arch-neutral half of vmm_arm64 and vmm_riscv64, the two VMMs that boot stock Linux
// `Image`s on AArch64 and RISC-V KVM: options, files, the console (which times the first
// output and GUEST-BOOT-OK), per-vCPU exit counters, and one thread per vCPU with the kick
// protocol that ends them all when one of them sees the end of the VM. Each arch's main.cpp
// builds its machine (memory map, device tree, interrupt controller, UART) and its exit
// handlers, then calls `run_vcpus`.
//
// Unit-test images (docs/linux-boot.md, "Unit-test images"): a kernel file without the arch's
// Image magic is a flat test image of the kvm-unit-tests kind. The console then watches for the
// guest's `EXIT: STATUS=<n>` line and `utest_status` turns it into the process status.

#include <kvm/vcpu.hpp>
#include <vcpu/boot/flat_image.hpp>
#include <vcpu/boot/linux_image.hpp>
#include <vcpu/exit_name.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

namespace linux_vmm {

using clock_type = std::chrono::steady_clock;

struct options {
    std::string kernel, initrd, append;
    unsigned cpus = 1;
    std::uint64_t mem_mib = 512;
    bool summary = true;
    bool test_image = false; ///< --test-image: unit-test conventions even for a file with an Image header
};

inline void usage(const char* prog, const char* arch_line) {
    std::fprintf(stderr,
                 "usage: %s --kernel IMAGE [--initrd FILE] [--cmdline TEXT] [--cpus N] [--mem MIB] "
                 "[--quiet-summary] [--test-image]\n%s\n"
                 "  --kernel IMAGE   Linux Image, plain or gzip-compressed (Debian's vmlinuz)\n"
                 "  --initrd FILE    initial RAM disk\n"
                 "  --cmdline TEXT   appended to the built-in command line\n"
                 "  --cpus N         vCPUs, 1..8 (default 1)\n"
                 "  --mem MIB        guest RAM in MiB, 64..3072 (default 512)\n"
                 "  --test-image     run the kernel as a unit-test image even when it has an Image header\n"
                 "                   (loaded by its header; bootargs and exit status as below)\n"
                 "A kernel without the arch's Image magic (and not gzip) is run as a flat unit-test image\n"
                 "(docs/linux-boot.md): bootargs = --cmdline only, --initrd = its environment (KEY=VALUE).\n"
                 "Exit status: Linux: 0 when the guest powers off, 1 on any other end or a run-time error,\n"
                 "2 for a usage or setup error. Test image: N when the guest printed 'EXIT: STATUS=N'\n"
                 "(N = (code << 1) | 1 by convention, so 1 = pass) and then ended, 0 when it ended\n"
                 "without that line, 2 setup error, 3 image refused, 4 run-time error. 77: no KVM here.\n",
                 prog, arch_line);
}

/// Parses the command line; prints usage and returns nothing on error or --help.
inline std::optional<options> parse(int argc, char** argv, const char* arch_line) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (a == "--help" || a == "-h") {
            usage(argv[0], arch_line);
            return std::nullopt;
        } else if (a == "--quiet-summary") {
            o.summary = false;
        } else if (a == "--test-image") {
            o.test_image = true;
        } else if ((a == "--kernel" || a == "--initrd" || a == "--cmdline" || a == "--cpus" || a == "--mem") &&
                   (v = value()) != nullptr) {
            if (a == "--kernel") o.kernel = v;
            else if (a == "--initrd") o.initrd = v;
            else if (a == "--cmdline") o.append = v;
            else if (a == "--cpus") o.cpus = static_cast<unsigned>(std::strtoul(v, nullptr, 0));
            else o.mem_mib = std::strtoull(v, nullptr, 0);
        } else {
            std::fprintf(stderr, "%s: bad argument '%s'\n", argv[0], argv[i]);
            usage(argv[0], arch_line);
            return std::nullopt;
        }
    }
    if (o.kernel.empty() || o.cpus < 1 || o.cpus > 8 || o.mem_mib < 64 || o.mem_mib > 3072) {
        usage(argv[0], arch_line);
        return std::nullopt;
    }
    return o;
}

/// The whole file, or nothing with a message naming it.
inline std::optional<std::vector<std::byte>> read_file(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "vmm: cannot open %s '%s': %s\n", what, path.c_str(), std::strerror(errno));
        return std::nullopt;
    }
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
    return b;
}

/// Guest console output: bytes go to stdout; the time of the first byte and of the line
/// GUEST-BOOT-OK (../shared/guest's marker) are recorded from the VM's start, and the first
/// line `EXIT: STATUS=<n>` (a unit-test image's verdict, n in 0..255) is kept.
class console {
public:
    static constexpr std::string_view exit_prefix = "EXIT: STATUS=";
    void start() { t0_ = clock_type::now(); }
    void operator()(std::uint8_t b) {
        const auto now = clock_type::now();
        if (first_ns_ < 0) first_ns_ = ns(now);
        std::fputc(b, stdout);
        if (b == '\n') std::fflush(stdout);
        ++bytes_;
        // Match "GUEST-BOOT-OK" anywhere in the stream.
        static constexpr std::string_view marker = "GUEST-BOOT-OK";
        match_ = (static_cast<char>(b) == marker[match_]) ? match_ + 1 : (static_cast<char>(b) == marker[0] ? 1 : 0);
        if (match_ == marker.size() && boot_ok_ns_ < 0) boot_ok_ns_ = ns(now);
        if (match_ == marker.size()) match_ = 0;
        line_byte(static_cast<char>(b));
    }
    /// The n of the first `EXIT: STATUS=<n>` line, or -1.
    [[nodiscard]] int exit_status() const { return exit_status_; }
    [[nodiscard]] double first_output_s() const { return first_ns_ < 0 ? -1 : static_cast<double>(first_ns_) / 1e9; }
    [[nodiscard]] double boot_ok_s() const { return boot_ok_ns_ < 0 ? -1 : static_cast<double>(boot_ok_ns_) / 1e9; }
    [[nodiscard]] double elapsed_s() const {
        return std::chrono::duration<double>(clock_type::now() - t0_).count();
    }
    [[nodiscard]] std::uint64_t bytes() const { return bytes_; }

private:
    /// Line scanner for EXIT: STATUS=<n> (decimal, 0..255, the whole rest of the line; a
    /// trailing '\r' is allowed). Fixed buffer: a longer line is simply not a verdict.
    void line_byte(char c) {
        if (c != '\n') {
            if (line_len_ < line_.size()) line_[line_len_] = c;
            ++line_len_;
            return;
        }
        std::size_t n = line_len_ < line_.size() ? line_len_ : 0;
        line_len_ = 0;
        if (n > 0 && line_[n - 1] == '\r') --n;
        const std::string_view l(line_.data(), n);
        if (exit_status_ >= 0 || !l.starts_with(exit_prefix) || l.size() == exit_prefix.size()) return;
        int v = 0;
        for (char d : l.substr(exit_prefix.size())) {
            if (d < '0' || d > '9') return;
            v = v * 10 + (d - '0');
            if (v > 255) return;
        }
        exit_status_ = v;
    }
    std::array<char, 64> line_{};
    std::size_t line_len_ = 0;
    int exit_status_ = -1;
    [[nodiscard]] long long ns(clock_type::time_point t) const {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t - t0_).count();
    }
    clock_type::time_point t0_ = clock_type::now();
    long long first_ns_ = -1, boot_ok_ns_ = -1;
    std::size_t match_ = 0;
    std::uint64_t bytes_ = 0;
};

/// Exit counters of one vCPU (each thread writes only its own).
struct counters {
    std::uint64_t mmio_uart = 0, mmio_irqchip = 0, mmio_other = 0, sbi_console = 0, hypercall = 0,
                  interrupted = 0, system_event = 0, other = 0;
    counters& operator+=(const counters& o) {
        mmio_uart += o.mmio_uart;
        mmio_irqchip += o.mmio_irqchip;
        mmio_other += o.mmio_other;
        sbi_console += o.sbi_console;
        hypercall += o.hypercall;
        interrupted += o.interrupted;
        system_event += o.system_event;
        other += o.other;
        return *this;
    }
};

/// How the VM ended.
enum class ending : int { none, power_off, reset, crash, error };
inline const char* ending_name(ending e) {
    switch (e) {
    case ending::power_off: return "guest powered off (system event)";
    case ending::reset: return "guest reset (system event)";
    case ending::crash: return "guest crashed (system event)";
    case ending::error: return "error";
    case ending::none: break;
    }
    return "stopped";
}

/// Shared stop state.
struct vm_state {
    std::atomic<bool> stop{false};
    std::atomic<int> how{static_cast<int>(ending::none)};
    void finish(ending e) {
        int none = static_cast<int>(ending::none);
        how.compare_exchange_strong(none, static_cast<int>(e));
        stop.store(true);
    }
};

/// The body of one vCPU thread: runs `cpu` with the arch's exit handlers `hs...` plus the shared
/// ones (a kick's `interrupted` resumes until the VM is stopping; a system event ends the VM as
/// power-off, reset or crash) until the VM ends. A failed run or an exit no handler takes ends
/// the VM as an error, naming the vCPU.
template <class Cpu, class... Hs>
void run_until_end(Cpu& cpu, unsigned id, vm_state& state, counters& st, Hs&... hs) {
    auto on_intr = [&](vcpu::interrupted&) noexcept {
        ++st.interrupted;
        return state.stop.load() ? vcpu::action::stop : vcpu::action::resume;
    };
    auto on_event = [&](vcpu::system_event& e) noexcept {
        ++st.system_event;
        using k = vcpu::system_event::kind;
        state.finish(e.what == k::power_off ? ending::power_off
                     : e.what == k::reset   ? ending::reset
                                            : ending::crash);
        return vcpu::action::stop;
    };
    if (state.stop.load()) return;
    auto r = cpu.run(hs..., on_intr, on_event);
    if (!r) {
        std::fprintf(stderr, "vmm: vCPU %u: %s\n", id, r.err().message().c_str());
        state.finish(ending::error);
        return;
    }
    std::visit(
        [&]<class E>(E&) {
            using T = std::remove_cvref_t<E>;
            if constexpr (!std::is_same_v<T, vcpu::interrupted> && !std::is_same_v<T, vcpu::system_event>) {
                ++st.other;
                std::fprintf(stderr, "vmm: vCPU %u: unhandled exit %s\n", id, vcpu::exit_name<T>().data());
                state.finish(ending::error);
            }
        },
        *r);
}

/// Runs `body(id)` on one thread per vCPU. `body` returns when its vCPU is done (it calls
/// `state.finish` when the VM ends); the others are then kicked out of KVM_RUN (a vCPU KVM
/// keeps asleep — powered off, or paused by a SYSTEM_OFF — only leaves on a signal) until every
/// thread has returned. Meanwhile this thread passes what arrives on stdin to `input(bytes, n)`
/// (the console's receive side) until stdin ends.
template <class Kicker, class Body, class Input>
void run_vcpus(unsigned n, std::vector<Kicker>& kickers, vm_state& state, Body&& body, Input&& input) {
    std::vector<pthread_t> threads(n);
    std::unique_ptr<std::atomic<bool>[]> stopped(new std::atomic<bool>[n]);
    for (unsigned i = 0; i < n; ++i) stopped[i].store(false);
    std::atomic<unsigned> started{0};
    std::vector<std::thread> workers;
    for (unsigned i = 0; i < n; ++i) {
        workers.emplace_back([&, i] {
            threads[i] = ::pthread_self();
            started.fetch_add(1);
            while (started.load() < n) std::this_thread::yield();
            body(i);
            stopped[i].store(true);
        });
    }
    bool stdin_open = ::fcntl(STDIN_FILENO, F_GETFL) != -1;
    while (!state.stop.load()) {
        bool all = true;
        for (unsigned i = 0; i < n; ++i) all = all && stopped[i].load();
        if (all) break;
        pollfd p{STDIN_FILENO, POLLIN, 0};
        if (!stdin_open || ::poll(&p, 1, 20) <= 0) {
            if (!stdin_open) std::this_thread::sleep_for(std::chrono::milliseconds(20));
            continue;
        }
        char buf[64];
        const ssize_t got = (p.revents & POLLIN) ? ::read(STDIN_FILENO, buf, sizeof buf) : -1;
        if (got <= 0) stdin_open = false; // end of input (or /dev/null, or an error): stop polling
        else input(buf, static_cast<std::size_t>(got));
    }
    for (bool all = false; !all; std::this_thread::sleep_for(std::chrono::milliseconds(20))) {
        all = true;
        for (unsigned j = 0; j < n; ++j) {
            if (stopped[j].load()) continue;
            all = false;
            (void)kickers[j].kick(threads[j], SIGUSR1);
        }
    }
    for (auto& w : workers) w.join();
}

/// The summary line block both VMMs print (stderr), and the process status.
inline int report(const options& o, const console& con, const std::vector<counters>& per_cpu, const vm_state& st,
                  const char* arch) {
    counters sum;
    for (const auto& c : per_cpu) sum += c;
    const auto how = static_cast<ending>(st.how.load());
    if (o.summary) {
        std::fprintf(stderr,
                     "\nvmm: summary (%s): %s after %.3f s, %u vCPU(s), %llu MiB\n"
                     "vmm:   first output %.3f s, GUEST-BOOT-OK %.3f s, console bytes %llu\n"
                     "vmm:   exits to userspace: MMIO %llu (UART %llu, irqchip %llu, other %llu), SBI console %llu, "
                     "hypercall %llu, interrupted %llu, system event %llu, other %llu\n",
                     arch, ending_name(how), con.elapsed_s(), o.cpus, static_cast<unsigned long long>(o.mem_mib),
                     con.first_output_s(), con.boot_ok_s(), static_cast<unsigned long long>(con.bytes()),
                     static_cast<unsigned long long>(sum.mmio_uart + sum.mmio_irqchip + sum.mmio_other),
                     static_cast<unsigned long long>(sum.mmio_uart), static_cast<unsigned long long>(sum.mmio_irqchip),
                     static_cast<unsigned long long>(sum.mmio_other), static_cast<unsigned long long>(sum.sbi_console),
                     static_cast<unsigned long long>(sum.hypercall), static_cast<unsigned long long>(sum.interrupted),
                     static_cast<unsigned long long>(sum.system_event), static_cast<unsigned long long>(sum.other));
    }
    return how == ending::power_off ? 0 : 1;
}

/// Process status of a unit-test image run (the convention of docs/linux-boot.md, the same
/// numbers as vmm's Multiboot mode with isa-debug-exit): the guest's `EXIT: STATUS=<n>` when it
/// printed one and the VM then ended by a system event (PSCI SYSTEM_OFF / SBI SRST, or a reset);
/// 0 when it ended without printing it; 4 for a run-time error. Prints what it decided on stderr.
namespace utest_exit {
inline constexpr int no_verdict = 0, setup_error = 2, refused = 3, runtime_error = 4;
}
inline int utest_status(const console& con, const vm_state& st) {
    const auto how = static_cast<ending>(st.how.load());
    if (how == ending::error || how == ending::none) {
        std::fprintf(stderr, "vmm: test image: run-time error, exit status %d\n", utest_exit::runtime_error);
        return utest_exit::runtime_error;
    }
    if (con.exit_status() < 0) {
        std::fprintf(stderr, "vmm: test image: %s without an 'EXIT: STATUS=' line, exit status %d\n", ending_name(how),
                     utest_exit::no_verdict);
        return utest_exit::no_verdict;
    }
    std::fprintf(stderr, "vmm: test image: guest printed EXIT: STATUS=%d, %s, exit status %d\n", con.exit_status(),
                 ending_name(how), con.exit_status());
    return con.exit_status();
}

/// Prints "vmm: WHAT: <error>" and returns the setup-error status (2 in both modes: never a
/// test verdict).
inline int fail(const char* what, const vcpu::error& e) {
    std::fprintf(stderr, "vmm: %s: %s\n", what, e.message().c_str());
    return utest_exit::setup_error;
}

/// Places `kernel` in guest RAM at `ram_base`: a flat test image (`flat`: no `Format` Image
/// magic) at `ram_base + flat_offset`, else a `Format` Linux Image (plain or gzip); then the
/// initrd and the device-tree slot, with room for `cmdline_bytes` of bootargs. Prints where each
/// piece went and fills `layout`. On failure returns the process status to end with: `refused`
/// for an image rejected under test conventions (`utest`), else `setup_error`.
template <class Format>
[[nodiscard]] std::optional<int> load_kernel(vcpu::guest_memory& mem, std::uint64_t ram_base,
                                             std::uint64_t ram_bytes, std::uint64_t flat_offset,
                                             std::span<const std::byte> kernel, std::span<const std::byte> initrd,
                                             std::size_t cmdline_bytes, bool flat, bool utest,
                                             vcpu::boot::linux_layout& layout) {
    using ull = unsigned long long;
    if (flat) {
        auto f = vcpu::boot::load_flat_image<Format>(mem, ram_base, ram_bytes, flat_offset, kernel, initrd,
                                                     cmdline_bytes);
        if (!f) {
            (void)fail("test image rejected", f.err());
            return utest_exit::refused;
        }
        layout = {};
        layout.entry = f->entry;
        layout.initrd = f->initrd;
        layout.initrd_size = f->initrd_size;
        layout.dtb = f->dtb;
        layout.dtb_max = f->dtb_max;
        std::fprintf(stderr,
                     "vmm: flat test image (no %s magic): entry 0x%llx, %zu bytes, initrd 0x%llx+0x%llx, DTB 0x%llx\n",
                     Format::name, static_cast<ull>(f->entry), kernel.size(), static_cast<ull>(f->initrd),
                     static_cast<ull>(f->initrd_size), static_cast<ull>(f->dtb));
        return std::nullopt;
    }
    auto l = vcpu::boot::load_linux_image<Format>(mem, ram_base, ram_bytes, kernel, initrd, cmdline_bytes);
    if (!l) {
        (void)fail("kernel rejected", l.err());
        return utest ? utest_exit::refused : utest_exit::setup_error;
    }
    layout = *l;
    std::fprintf(stderr,
                 "vmm: %s%s%s: entry 0x%llx (text_offset 0x%llx, image_size 0x%llx), initrd 0x%llx+0x%llx, "
                 "DTB 0x%llx\n",
                 Format::name, layout.compressed ? " (gzip)" : "", utest ? " as a test image" : "",
                 static_cast<ull>(layout.entry), static_cast<ull>(layout.header.text_offset),
                 static_cast<ull>(layout.header.image_size), static_cast<ull>(layout.initrd),
                 static_cast<ull>(layout.initrd_size), static_cast<ull>(layout.dtb));
    return std::nullopt;
}

/// The kernel command line: the arch's console part, then the user's.
inline std::string cmdline(std::string_view base, const options& o) {
    std::string s(base);
    if (!o.append.empty()) {
        s += ' ';
        s += o.append;
    }
    return s;
}

} // namespace linux_vmm
