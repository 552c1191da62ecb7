// vmm: a small VMM built on vcpu that boots a stock Linux bzImage, or a Multiboot test kernel
// (the kvm-unit-tests conventions of QEMU's PC machine), on x86-64 KVM.
//
// Devices live on a compile-time port bus (vcpu/bus.hpp): a 16550A UART on COM1 wired to the
// terminal (IRQ 4 through KVM_IRQ_LINE into the in-kernel IOAPIC), the i8042 (reset = end of
// VM), a CMOS/RTC and PCI conf1 ports with no devices. The in-kernel irqchip and PIT come from
// vm_init_x86_64; an MP table describes the CPUs and the IOAPIC. One thread per vCPU.
// A Multiboot kernel (detected by its header) also gets fw_cfg, isa-debug-exit, pc-testdev,
// the ACPI PM timer and ACPI tables, and vmm exits with the isa-debug-exit status.
// See docs/vmm.md.
#include <arch/x86_64/acpi.hpp>
#include <arch/x86_64/linux_boot.hpp>
#include <arch/x86_64/mptable.hpp>
#include <arch/x86_64/multiboot.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/bus.hpp>
#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/devices/cmos_rtc.hpp>
#include <vcpu/devices/fw_cfg.hpp>
#include <vcpu/devices/i8042.hpp>
#include <vcpu/devices/isa_debug_exit.hpp>
#include <vcpu/devices/pc_testdev.hpp>
#include <vcpu/devices/pci_absent.hpp>
#include <vcpu/devices/uart_8250.hpp>
#include <vcpu/vcpu.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <memory>
#include <thread>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

namespace {

using clock_type = std::chrono::steady_clock;
namespace x86 = vcpu::x86_64;
namespace dev = vcpu::devices;

constexpr const char* usage = R"(usage: vmm --kernel BZIMAGE|MULTIBOOT-ELF [options]
       vmm BZIMAGE INITRD CMDLINE MEM_MIB      (the x86nest kit's calling convention)

Boots a Linux x86-64 bzImage on /dev/kvm through the 32-bit boot protocol, or a Multiboot v1
ELF kernel (a kvm-unit-tests style test guest) on the machine QEMU gives such guests.

options:
  --kernel PATH    the kernel: a bzImage (Linux x86 boot protocol 2.06 or later), or a 32-bit
                   ELF with a Multiboot v1 header (detected by the header). Required.
  --initrd PATH    bzImage: an initramfs / initrd, loaded as high as the kernel allows.
                   Multiboot: module 0 (kvm-unit-tests: the environment, KEY=VALUE lines).
  --cmdline TEXT   the kernel command line (bzImage default: "console=ttyS0 panic=-1 reboot=t").
                   Keep console=ttyS0 for output on this terminal; reboot=t (triple fault)
                   or reboot=k (i8042 reset) lets a guest reboot end the VM.
                   Multiboot: the guest gets "KERNEL-PATH TEXT", as QEMU passes it (argv).
  --mem MIB        guest RAM in MiB, 16..3072 (default 256).
  --cpus N         vCPUs, 1..32 (default 1); one host thread each, listed in an MP table
                   (and for Multiboot in the ACPI MADT and fw_cfg); the APs wait for INIT/SIPI.
  --quiet-summary  do not print the exit summary on stderr.
  --no-kvm-status N  exit with status N instead of 2 when /dev/kvm cannot be opened (77 makes
                   ctest report a test as skipped). VCPU_FORCE_NO_KVM=1 in the environment
                   makes vmm behave as on a host without /dev/kvm.
  --help           this text.

The guest's serial console (COM1, 0x3f8) is this terminal: output goes to stdout, stdin
is fed to the UART. The VM ends when the guest reboots (i8042 reset or triple fault) or
powers off; vmm then exits 0 and prints a summary (exits per kind, time to first serial
output) on stderr. Exit status: 0 guest ended, 1 runtime error, 2 usage or setup error
(missing file, no /dev/kvm), 3 kernel rejected by the loader.

Multiboot guests also get fw_cfg (0x510), isa-debug-exit (0xf4), pc-testdev (0xe0, 0x2000,
MMIO 0xff000000), the ACPI PM timer (0xb008) and ACPI tables (RSDP at 0xf0000). A write of
CODE to port 0xf4 ends the VM and vmm exits with (CODE << 1) | 1, QEMU's convention (so 1
means the test passed). Other ends: 0 guest reset/shutdown, 4 runtime error (even, so never
read as a guest verdict), 2 and 3 as above.
)";

struct options {
    std::string kernel, initrd, cmdline = "console=ttyS0 panic=-1 reboot=t";
    unsigned mem_mib = 256, cpus = 1;
    bool summary = true;
    bool cmdline_given = false;
    int no_kvm_status = 2;
};

[[noreturn]] void die(int code, const std::string& msg) {
    std::fprintf(stderr, "vmm: %s\n", msg.c_str());
    std::exit(code);
}

bool parse_uint(const char* s, unsigned& out) {
    char* end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > 0xffffffffUL) return false;
    out = static_cast<unsigned>(v);
    return true;
}

options parse(int argc, char** argv) {
    options o;
    std::vector<std::string_view> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) die(2, std::string(name) + " needs a value (see --help)");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            std::fputs(usage, stdout);
            std::exit(0);
        } else if (a == "--kernel") o.kernel = value("--kernel");
        else if (a == "--initrd") o.initrd = value("--initrd");
        else if (a == "--cmdline") {
            o.cmdline = value("--cmdline");
            o.cmdline_given = true;
        }
        else if (a == "--mem") {
            if (!parse_uint(value("--mem"), o.mem_mib)) die(2, "--mem wants a number of MiB");
        } else if (a == "--cpus") {
            if (!parse_uint(value("--cpus"), o.cpus)) die(2, "--cpus wants a number");
        } else if (a == "--quiet-summary") o.summary = false;
        else if (a == "--no-kvm-status") {
            unsigned v = 0;
            if (!parse_uint(value("--no-kvm-status"), v) || v > 255) die(2, "--no-kvm-status wants 0..255");
            o.no_kvm_status = static_cast<int>(v);
        }
        else if (a.starts_with("--")) die(2, "unknown option " + std::string(a) + " (see --help)");
        else positional.push_back(a);
    }
    if (!positional.empty()) {
        if (positional.size() != 4 || !o.kernel.empty())
            die(2, "positional form is: vmm KERNEL INITRD CMDLINE MEM_MIB (see --help)");
        o.kernel = positional[0];
        o.initrd = positional[1];
        o.cmdline = positional[2];
        o.cmdline_given = true;
        if (!parse_uint(argv[argc - 1], o.mem_mib)) die(2, "MEM_MIB must be a number");
    }
    if (o.kernel.empty()) die(2, "no kernel given: --kernel PATH (see --help)");
    if (o.mem_mib < 16 || o.mem_mib > 3072) die(2, "--mem must be 16..3072 MiB");
    if (o.cpus < 1 || o.cpus > x86::mp::max_cpus) die(2, "--cpus must be 1..32");
    return o;
}

std::vector<std::byte> read_file(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) die(2, std::string("cannot open ") + what + " '" + path + "': " + std::strerror(errno));
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
}

// ---- shared state --------------------------------------------------------------------------

std::atomic<bool> g_stop{false};
clock_type::time_point g_start;
std::atomic<long long> g_first_output_ns{-1};

/// Serial output: straight to stdout (unbuffered, so the console keeps up with the guest).
struct stdout_sink {
    void operator()(std::uint8_t b) const noexcept {
        long long expected = -1;
        g_first_output_ns.compare_exchange_strong(
            expected, std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - g_start).count());
        ssize_t r;
        do r = ::write(STDOUT_FILENO, &b, 1);
        while (r < 0 && errno == EINTR);
    }
};

/// UART interrupt: KVM_IRQ_LINE on GSI 4 of the in-kernel IOAPIC/PIC.
struct kvm_irq4 {
    const vcpu::kvm::vm* vm = nullptr;
    void operator()(bool level) const noexcept {
        if (vm != nullptr) (void)vm->irq_line(dev::com1_irq, level);
    }
};

using uart = dev::uart_8250<stdout_sink, kvm_irq4>;
using platform_bus = vcpu::port_bus<vcpu::unmapped::all_ones,
                                    vcpu::range<dev::i8042_data_port, 5, dev::i8042>, // 0x61 is KVM's (speaker port),
                                    vcpu::range<dev::cmos_index_port, 2, dev::cmos_rtc<>>,
                                    vcpu::range<dev::com1_base, dev::uart_ports, uart>,
                                    vcpu::range<dev::pci_config_address_port, 8, dev::pci_absent>>;

/// pc-testdev IRQ lines: KVM_IRQ_LINE on GSI n of the in-kernel IOAPIC/PIC.
struct kvm_irq_lines {
    const vcpu::kvm::vm* vm = nullptr;
    void operator()(unsigned line, bool level) const noexcept {
        if (vm != nullptr) (void)vm->irq_line(line, level);
    }
};

/// pc-testdev flush: drop the host mappings of one guest page, as QEMU does (two mprotect
/// calls), so every vCPU's next access to it faults and re-walks the tables.
struct host_page_flush {
    const vcpu::guest_memory* mem = nullptr;
    void operator()(std::uint64_t gpa) const noexcept {
        if (mem == nullptr) return;
        auto page = mem->at(gpa, 4096);
        if (page.size() != 4096) return;
        (void)::mprotect(page.data(), page.size(), PROT_NONE);
        (void)::mprotect(page.data(), page.size(), PROT_READ | PROT_WRITE);
    }
};

using testdev_ports = dev::pc_testdev_ports<host_page_flush>;
using testdev_irq = dev::pc_testdev_irq<kvm_irq_lines>;
/// The PC devices plus what the kvm-unit-tests x86 guests expect of QEMU's machine.
using multiboot_bus =
    vcpu::port_bus<vcpu::unmapped::all_ones, vcpu::range<dev::i8042_data_port, 5, dev::i8042>,
                   vcpu::range<dev::cmos_index_port, 2, dev::cmos_rtc<>>,
                   vcpu::range<dev::pc_testdev_port, dev::pc_testdev_port_count, testdev_ports>,
                   vcpu::range<dev::isa_debug_exit_port, dev::isa_debug_exit_ports, dev::isa_debug_exit>,
                   vcpu::range<dev::com1_base, dev::uart_ports, uart>,
                   vcpu::range<dev::fw_cfg_port, dev::fw_cfg_ports, dev::fw_cfg>,
                   vcpu::range<dev::pc_testdev_irq_port, dev::pc_testdev_irq_lines, testdev_irq>,
                   vcpu::range<dev::acpi_pm_timer_port, dev::acpi_pm_timer_ports, dev::acpi_pm_timer<>>,
                   vcpu::range<dev::pci_config_address_port, 8, dev::pci_absent>>;
using multiboot_mmio =
    vcpu::mmio_bus<vcpu::unmapped::all_ones,
                   vcpu::range<dev::pc_testdev_iomem_base, dev::pc_testdev_iomem_size, dev::pc_testdev_iomem>>;

/// The Linux path's MMIO: nothing is mapped, reads float to all ones.
struct no_mmio {
    void operator()(vcpu::mmio& mm) const noexcept {
        if (mm.is_read()) mm.set(~std::uint64_t{0});
    }
};

/// A spin lock around the shared bus: uncontended it costs two atomic ops, and holding it
/// never blocks in the kernel (device handlers only write to stdout or call KVM_IRQ_LINE).
class spin_lock {
public:
    void lock() noexcept {
        while (f_.test_and_set(std::memory_order_acquire)) f_.wait(true, std::memory_order_relaxed);
    }
    void unlock() noexcept {
        f_.clear(std::memory_order_release);
        f_.notify_one();
    }

private:
    std::atomic_flag f_ = ATOMIC_FLAG_INIT;
};

struct counters {
    std::uint64_t pio_serial = 0, pio_pci = 0, pio_other = 0, mmio = 0, interrupted = 0, shutdown = 0,
                  system_event = 0, other = 0;
};

enum class ending { none, reset_i8042, triple_fault, power_off, reset_event, debug_exit, error };
std::atomic<int> g_ending{static_cast<int>(ending::none)};

const char* ending_name(ending e) {
    switch (e) {
    case ending::reset_i8042: return "guest reset through the i8042 (0xFE to port 0x64)";
    case ending::triple_fault: return "guest triple fault (shutdown): reboot=t";
    case ending::power_off: return "guest powered off (system event)";
    case ending::reset_event: return "guest reset (system event)";
    case ending::debug_exit: return "guest wrote isa-debug-exit (port 0xf4)";
    case ending::error: return "error";
    case ending::none: break;
    }
    return "stopped";
}

void finish(ending e) {
    int none = static_cast<int>(ending::none);
    g_ending.compare_exchange_strong(none, static_cast<int>(e));
    g_stop.store(true);
}

/// The terminal in raw-ish mode (no echo, no line buffering) while the guest owns it.
struct raw_terminal {
    termios saved{};
    bool active = false;
    raw_terminal() {
        if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved) == 0) {
            termios t = saved;
            t.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
            active = ::tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
        }
    }
    ~raw_terminal() {
        if (active) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    }
};


/// Whether a bus has an isa-debug-exit device (the Multiboot bus does).
template <class Bus>
inline constexpr bool has_debug_exit = std::is_same_v<Bus, multiboot_bus>;

/// Runs every vCPU on its own thread over `bus` (port I/O) and `mmio` (MMIO), feeds stdin to
/// the UART, and returns the process exit status once the VM has ended.
template <class Bus, class Mmio>
int run_vm(vcpu::kvm::x86_64_machine& m, const options& opt, Bus& bus, Mmio& mmio, bool multiboot) {
    spin_lock bus_lock;
    std::vector<counters> stats(opt.cpus);
    std::vector<pthread_t> threads(opt.cpus);
    std::vector<vcpu::kvm::kicker> kickers;
    for (auto& c : m.vcpus) kickers.push_back(c.hal().make_kicker());

    raw_terminal term;
    g_start = clock_type::now();

    auto vcpu_thread = [&](unsigned id) {
        auto& cpu = m.vcpus[id];
        auto& st = stats[id];
        auto on_pio = [&](vcpu::port_io& io) noexcept {
            if (io.port >= 0x3f8 && io.port < 0x400) ++st.pio_serial;
            else if (io.port >= 0xcf8 && io.port < 0xd00) ++st.pio_pci;
            else ++st.pio_other;
            bus_lock.lock();
            const auto a = bus(io);
            bool debug_exit = false;
            if constexpr (has_debug_exit<Bus>) debug_exit = bus.template get<dev::isa_debug_exit>().exited();
            bus_lock.unlock();
            if (a == vcpu::action::stop) finish(debug_exit ? ending::debug_exit : ending::reset_i8042);
            return a;
        };
        auto on_mmio = [&](vcpu::mmio& mm) noexcept {
            ++st.mmio;
            bus_lock.lock();
            mmio(mm);
            bus_lock.unlock();
        };
        auto on_intr = [&](vcpu::interrupted&) noexcept {
            ++st.interrupted;
            cpu.hal().immediate_exit(false);
            return g_stop.load() ? vcpu::action::stop : vcpu::action::resume;
        };
        auto on_shutdown = [&](vcpu::shutdown&) noexcept {
            ++st.shutdown;
            finish(ending::triple_fault);
            return vcpu::action::stop;
        };
        auto on_event = [&](vcpu::system_event& e) noexcept {
            ++st.system_event;
            finish(e.what == vcpu::system_event::kind::reset ? ending::reset_event : ending::power_off);
            return vcpu::action::stop;
        };
        while (!g_stop.load()) {
            auto r = cpu.run(on_pio, on_mmio, on_intr, on_shutdown, on_event);
            if (!r) {
                std::fprintf(stderr, "vmm: vCPU %u: %s\n", id, r.err().message().c_str());
                finish(ending::error);
                break;
            }
            const bool done = std::visit(
                [&]<class E>(E& e) {
                    using T = std::remove_cvref_t<E>;
                    if constexpr (std::is_same_v<T, vcpu::port_io> || std::is_same_v<T, vcpu::interrupted> ||
                                  std::is_same_v<T, vcpu::shutdown> || std::is_same_v<T, vcpu::system_event>) {
                        return true; // a handler asked to stop; the reason is recorded
                    } else if constexpr (std::is_same_v<T, vcpu::x86_64::emulation_failure>) {
                        ++st.other;
                        std::fprintf(stderr, "vmm: vCPU %u: KVM could not emulate an instruction (%zu bytes)\n", id,
                                     e.insn.size());
                        finish(ending::error);
                        return true;
                    } else {
                        ++st.other;
                        std::fprintf(stderr, "vmm: vCPU %u: unhandled exit %s\n", id, typeid(T).name());
                        finish(ending::error);
                        return true;
                    }
                },
                *r);
            if (done) break;
        }
        // Bring the other vCPUs out of KVM_RUN.
        for (unsigned j = 0; j < opt.cpus; ++j)
            if (j != id) (void)kickers[j].kick(threads[j], SIGUSR1);
    };

    std::vector<std::thread> workers;
    std::atomic<unsigned> started{0};
    std::unique_ptr<std::atomic<bool>[]> stopped(new std::atomic<bool>[opt.cpus]);
    for (unsigned i = 0; i < opt.cpus; ++i) stopped[i].store(false);
    for (unsigned i = 0; i < opt.cpus; ++i) {
        workers.emplace_back([&, i] {
            threads[i] = ::pthread_self();
            started.fetch_add(1);
            while (started.load() < opt.cpus) std::this_thread::yield(); // kickers need every id
            vcpu_thread(i);
            stopped[i].store(true);
        });
    }

    // stdin -> UART receive FIFO, polled so the loop notices the end of the VM.
    const bool stdin_open = ::fcntl(STDIN_FILENO, F_GETFL) != -1;
    while (!g_stop.load()) {
        pollfd p{STDIN_FILENO, POLLIN, 0};
        if (!stdin_open || ::poll(&p, 1, 100) <= 0 || (p.revents & POLLIN) == 0) {
            if (!stdin_open || (p.revents & (POLLHUP | POLLNVAL))) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        char buf[64];
        const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n <= 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        bus_lock.lock();
        for (ssize_t i = 0; i < n; ++i) bus.template get<uart>().receive(static_cast<std::uint8_t>(buf[i]));
        bus_lock.unlock();
    }
    // The VM is ending: keep kicking the vCPU threads that have not stopped
    // yet. One kick per thread is enough when it lands in KVM_RUN or before
    // it; repeating it makes the end independent of where each thread was.
    for (bool all = false; !all; std::this_thread::sleep_for(std::chrono::milliseconds(50))) {
        all = true;
        for (unsigned j = 0; j < opt.cpus; ++j) {
            if (stopped[j].load()) continue;
            all = false;
            (void)kickers[j].kick(threads[j], SIGUSR1);
        }
    }
    for (auto& w : workers) w.join();
    const double total = std::chrono::duration<double>(clock_type::now() - g_start).count();
    const auto how = static_cast<ending>(g_ending.load());

    int status = how == ending::error || how == ending::none ? (multiboot ? 4 : 1) : 0;
    if constexpr (has_debug_exit<Bus>) {
        const auto& d = bus.template get<dev::isa_debug_exit>();
        if (how == ending::debug_exit && d.exited()) status = d.exit_status();
    }

    if (opt.summary) {
        counters sum;
        for (const auto& s : stats) {
            sum.pio_serial += s.pio_serial;
            sum.pio_pci += s.pio_pci;
            sum.pio_other += s.pio_other;
            sum.mmio += s.mmio;
            sum.interrupted += s.interrupted;
            sum.shutdown += s.shutdown;
            sum.system_event += s.system_event;
            sum.other += s.other;
        }
        const long long first = g_first_output_ns.load();
        std::fprintf(stderr,
                     "\nvmm: summary: %s after %.2f s, %u vCPU(s), %u MiB\n"
                     "vmm:   time to first serial output: %s\n"
                     "vmm:   exits to userspace: port I/O %llu (serial %llu, PCI config %llu, other %llu), "
                     "MMIO %llu, interrupted %llu, shutdown %llu, system event %llu, other %llu\n"
                     "vmm:   serial bytes out: %llu\n",
                     ending_name(how), total, opt.cpus, opt.mem_mib,
                     first < 0 ? "none" : (std::to_string(static_cast<double>(first) / 1e9) + " s").c_str(),
                     static_cast<unsigned long long>(sum.pio_serial + sum.pio_pci + sum.pio_other),
                     static_cast<unsigned long long>(sum.pio_serial), static_cast<unsigned long long>(sum.pio_pci),
                     static_cast<unsigned long long>(sum.pio_other), static_cast<unsigned long long>(sum.mmio),
                     static_cast<unsigned long long>(sum.interrupted), static_cast<unsigned long long>(sum.shutdown),
                     static_cast<unsigned long long>(sum.system_event), static_cast<unsigned long long>(sum.other),
                     static_cast<unsigned long long>(bus.template get<uart>().transmitted()));
    }
    if constexpr (has_debug_exit<Bus>) {
        // Printed even with --quiet-summary: it is the verdict a harness reads.
        const auto& d = bus.template get<dev::isa_debug_exit>();
        if (how == ending::debug_exit && d.exited())
            std::fprintf(stderr, "vmm: isa-debug-exit: guest wrote %#x, exit status %d\n", d.code(), status);
        else
            std::fprintf(stderr, "vmm: the guest did not write isa-debug-exit; exit status %d\n", status);
    }
    return status;
}

} // namespace

int main(int argc, char** argv) {
    options opt = parse(argc, argv);
    const auto kernel = read_file(opt.kernel, "kernel");
    std::vector<std::byte> initrd;
    if (!opt.initrd.empty()) initrd = read_file(opt.initrd, "initrd");

    // Multiboot or bzImage, chosen by the Multiboot magic; reject a bad kernel before /dev/kvm.
    const bool multiboot = x86::has_multiboot_magic(kernel);
    if (multiboot) {
        if (auto h = x86::parse_multiboot(kernel); !h)
            die(3, "kernel '" + opt.kernel + "' rejected: " + h.err().message());
        // QEMU passes "KERNEL CMDLINE" as the Multiboot command line (the guest's argv).
        opt.cmdline = opt.cmdline_given && !opt.cmdline.empty() ? opt.kernel + " " + opt.cmdline : opt.kernel;
    } else if (auto h = x86::parse_bzimage(kernel); !h) {
        die(3, "kernel '" + opt.kernel + "' rejected: " + h.err().message());
    }

    vcpu::kvm::x86_64_options mo;
    mo.ram_bytes = std::size_t{opt.mem_mib} << 20;
    mo.vcpus = opt.cpus;
    mo.pit = false; // created below with the speaker port emulated in the kernel
    // The test suites' convention (tests/kvm): VCPU_FORCE_NO_KVM=1 behaves as a host without KVM.
    if (const char* f = std::getenv("VCPU_FORCE_NO_KVM"); f != nullptr && std::string_view(f) == "1")
        mo.device = "/nonexistent/kvm";
    auto machine = vcpu::kvm::vm_init_x86_64(mo);
    if (!machine) {
        const auto& e = machine.err();
        if (std::string_view(e.op) == "open /dev/kvm")
            die(opt.no_kvm_status, std::string(opt.no_kvm_status == 77 ? "SKIPPED: " : "") + "cannot use KVM: " +
                                       e.message() + " (is the kvm module loaded and /dev/kvm accessible?)");
        die(2, "VM setup failed: " + e.message());
    }
    auto& m = *machine;
    // KVM_PIT_SPEAKER_DUMMY: KVM also emulates port 0x61 (PIT channel 2 gate/output), which
    // Linux's PIT-based TSC calibration polls; without it that loop never ends.
    if (auto r = m.vm.create_pit2(KVM_PIT_SPEAKER_DUMMY); !r) die(2, "VM setup failed: " + r.err().message());

    std::uint64_t entry = 0, boot_data = 0;
    if (multiboot) {
        const std::array<x86::multiboot_module_source, 1> modules{{{initrd, opt.initrd}}};
        x86::multiboot_options mbo;
        mbo.ram_size = mo.ram_bytes;
        mbo.cmdline = opt.cmdline;
        if (!opt.initrd.empty()) mbo.modules = modules;
        auto loaded = x86::load_multiboot(kernel, m.memory, mbo);
        if (!loaded) die(3, "kernel '" + opt.kernel + "' rejected: " + loaded.err().message());
        entry = loaded->entry;
        boot_data = loaded->info;
        x86::acpi::acpi_options ao;
        ao.cpus = opt.cpus;
        ao.pm_timer_port = dev::acpi_pm_timer_port;
        if (auto r = x86::acpi::write_acpi_tables(m.memory, ao); !r) die(2, "ACPI tables: " + r.err().message());
    } else {
        auto loaded = x86::load_bzimage(m.memory, {kernel, initrd, opt.cmdline, mo.ram_bytes});
        if (!loaded) die(3, "kernel '" + opt.kernel + "' rejected: " + loaded.err().message());
        entry = loaded->entry;
        boot_data = loaded->boot_params;
    }
    if (auto r = x86::write_mptable(m.memory, x86::boot_layout::mptable, opt.cpus); !r)
        die(2, "MP table: " + r.err().message());

    // The BSP starts at the kernel's entry; the APs keep KVM's reset state and wait in the
    // in-kernel LAPIC for the guest's INIT + SIPI.
    for (unsigned i = 0; i < opt.cpus; ++i) {
        auto& cpu = m.vcpus[i];
        vcpu::result<void> r = i != 0   ? cpu.init(vcpu::init_sequence(x86::cpuid_setup<>{i, {}},
                                                                       x86::misc_enable_fast_strings{}))
                               : multiboot ? cpu.init(x86::multiboot_boot_state(i, entry, boot_data))
                                           : cpu.init(x86::linux_boot_state(i, entry, boot_data));
        if (!r) die(2, "vCPU " + std::to_string(i) + " init: " + r.err().message());
    }
    if (auto r = vcpu::kvm::install_kick_handler(); !r) die(2, r.err().message());

    if (multiboot) {
        auto bus = std::make_unique<multiboot_bus>(
            dev::i8042{}, dev::cmos_rtc<>{}, testdev_ports(host_page_flush{&m.memory}), dev::isa_debug_exit{},
            uart(stdout_sink{}, kvm_irq4{&m.vm}),
            dev::fw_cfg(dev::fw_cfg_config{mo.ram_bytes, static_cast<std::uint16_t>(opt.cpus), 0, {}}),
            testdev_irq(kvm_irq_lines{&m.vm}), dev::acpi_pm_timer<>{}, dev::pci_absent{});
        auto mmio = std::make_unique<multiboot_mmio>();
        return run_vm(m, opt, *bus, *mmio, true);
    }
    platform_bus bus(dev::i8042{}, dev::cmos_rtc<>{}, uart(stdout_sink{}, kvm_irq4{&m.vm}), dev::pci_absent{});
    no_mmio mmio;
    return run_vm(m, opt, bus, mmio, false);
}
