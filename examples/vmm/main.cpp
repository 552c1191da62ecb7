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
#include <kvm/host.hpp>
#include <kvm/kvm.hpp>
#include <kvm/x86_64_gdb.hpp>
#include <kvm/x86_64_snapshot.hpp>
#include <vcpu/bus.hpp>
#include <vcpu/devices/acpi_pm_timer.hpp>
#include <vcpu/devices/cmos_rtc.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/devices/fw_cfg.hpp>
#include <vcpu/devices/i8042.hpp>
#include <vcpu/devices/isa_debug_exit.hpp>
#include <vcpu/devices/pc_testdev.hpp>
#include <vcpu/devices/pci_absent.hpp>
#include <vcpu/devices/uart_8250.hpp>
#include <vcpu/gdb/session.hpp>
#include <vcpu/gdb/socket.hpp>
#include <vcpu/vcpu.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
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
  --gdb PORT       wait for a debugger on 127.0.0.1:PORT (0: any free port; vmm prints it)
                   before the guest runs, and serve the GDB remote protocol (vcpu::gdb):
                   registers, memory by guest virtual address, breakpoints, watchpoints,
                   stepping; vCPUs are gdb threads, all stopped together. Loopback only.
  --snapshot-on WHEN FILE
                   write a snapshot of the running machine to FILE (once) when WHEN happens:
                   SIGUSR2 (the signal reaches vmm), boot-ok (the guest's serial output has
                   just shown GUEST-BOOT-OK), exit-count=N (the Nth port/MMIO exit to
                   vmm), or port=0xNN (the guest writes port NN, e.g. a marker the guest
                   writes at a known point; the write itself is completed before the save).
                   Every vCPU is stopped with a kick, pending I/O is completed, then guest
                   RAM, the in-kernel irqchip/PIT/clock, every vCPU's state and vmm's device
                   models (UART, i8042, CMOS, and for Multiboot fw_cfg, pc-testdev, PM timer,
                   isa-debug-exit) are saved; the guest then continues. Not with --gdb.
  --snapshot-and-exit  with --snapshot-on: end after writing the snapshot (exit status 0 on
                   Linux, 6 on Multiboot: odd statuses are guest verdicts).
  --restore FILE   instead of booting a kernel, build the machine from a snapshot in this new
                   process (memory size, vCPU count and Linux/Multiboot from the file, the same
                   CPUID policy as a boot) and continue the guest where it stopped.
                   --kernel, --mem and --cpus are not used with it.
  --quiet-summary  do not print the exit summary on stderr.
  --no-kvm-status N  exit with status N instead of 2 when /dev/kvm cannot be opened (77 makes
                   ctest report a test as skipped). VCPU_FORCE_NO_KVM=1 in the environment
                   makes vmm behave as on a host without /dev/kvm.
  --help           this text.

The guest's serial console (COM1, 0x3f8) is this terminal: output goes to stdout, stdin
is fed to the UART. The VM ends when the guest reboots (i8042 reset or triple fault) or
powers off; vmm then exits 0 and prints a summary (exits per kind and per port, handler time
per kind, time to the first serial output and to GUEST-BOOT-OK) on stderr. Exit status: 0 guest
ended, 1 runtime error or SIGTERM/SIGINT (vmm first prints where each vCPU is), 2 usage or
setup error (missing file, no /dev/kvm), 3 kernel rejected by the loader.

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
    int gdb_port = -1; ///< --gdb PORT, -1 without
    std::string snapshot_file;      ///< --snapshot-on ... FILE
    bool snapshot_on_signal = false; ///< --snapshot-on SIGUSR2
    bool snapshot_on_boot_ok = false; ///< --snapshot-on boot-ok
    std::uint64_t snapshot_exit_count = 0; ///< --snapshot-on exit-count=N
    int snapshot_port = -1;          ///< --snapshot-on port=0xNN
    bool snapshot_and_exit = false;  ///< --snapshot-and-exit
    std::string restore;            ///< --restore FILE
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
        } else if (a == "--gdb") {
            unsigned v = 0;
            if (!parse_uint(value("--gdb"), v) || v > 65535) die(2, "--gdb wants a TCP port, 0..65535");
            o.gdb_port = static_cast<int>(v);
        } else if (a == "--snapshot-on") {
            const std::string_view when = value("--snapshot-on");
            o.snapshot_file = value("--snapshot-on");
            if (when == "SIGUSR2") o.snapshot_on_signal = true;
            else if (when == "boot-ok") o.snapshot_on_boot_ok = true;
            else if (when.starts_with("exit-count=")) {
                unsigned v = 0;
                if (!parse_uint(argv[i - 1] + 11, v) || v == 0) die(2, "--snapshot-on exit-count=N wants N >= 1");
                o.snapshot_exit_count = v;
            } else if (when.starts_with("port=")) {
                char* end = nullptr;
                const unsigned long v = std::strtoul(argv[i - 1] + 5, &end, 0);
                if (end == argv[i - 1] + 5 || *end != '\0' || v > 0xffff) die(2, "--snapshot-on port=P wants a port 0..0xffff");
                o.snapshot_port = static_cast<int>(v);
            } else die(2, "--snapshot-on wants SIGUSR2, boot-ok, exit-count=N or port=0xNN, then a FILE (see --help)");
        } else if (a == "--snapshot-and-exit") o.snapshot_and_exit = true;
        else if (a == "--restore") o.restore = value("--restore");
        else if (a == "--quiet-summary") o.summary = false;
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
    if (o.snapshot_and_exit && o.snapshot_file.empty()) die(2, "--snapshot-and-exit needs --snapshot-on");
    if (!o.snapshot_file.empty() && o.gdb_port >= 0) die(2, "--snapshot-on does not go with --gdb");
    if (!o.restore.empty()) {
        if (!o.kernel.empty()) die(2, "--restore takes the machine from the snapshot: no --kernel");
        return o;
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

/// Serial output, buffered: the UART hands bytes over under the bus lock, and the main loop
/// writes them to stdout every 10 ms (also under the lock, so output keeps its order), so
/// stdout sees one write(2) per batch instead of one per byte (the vmm wrote every byte at once
/// before: 20,000 write calls per boot) and a vCPU thread does not wait for the terminal. Only a
/// full buffer makes the vCPU thread write it out itself.
/// The first byte's time and the time the guest printed `GUEST-BOOT-OK` are recorded.
struct console_out {
    static constexpr std::string_view marker = "GUEST-BOOT-OK";
    std::array<char, 16384> buf{};
    std::size_t n = 0;
    std::size_t matched = 0; ///< bytes of `marker` matched so far ('G' occurs once in it)
    std::uint64_t writes = 0;
    /// Writes the buffer to stdout (caller holds the bus lock).
    void flush() noexcept {
        std::size_t off = 0;
        while (off < n) {
            const ssize_t r = ::write(STDOUT_FILENO, buf.data() + off, n - off);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break; // stdout gone: drop the output, keep the guest running
            off += static_cast<std::size_t>(r);
        }
        if (n != 0) ++writes;
        n = 0;
    }
};
console_out g_console;
std::atomic<long long> g_boot_ok_ns{-1};
std::atomic<bool> g_boot_ok_seen{false}; ///< GUEST-BOOT-OK just printed (--snapshot-on boot-ok takes it)

long long since_start_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - g_start).count();
}

/// The UART's sink (called under the bus lock).
struct stdout_sink {
    void operator()(std::uint8_t b) const noexcept {
        auto& c = g_console;
        if (g_first_output_ns.load(std::memory_order_relaxed) < 0) g_first_output_ns.store(since_start_ns());
        c.matched = static_cast<char>(b) == console_out::marker[c.matched] ? c.matched + 1
                    : static_cast<char>(b) == console_out::marker[0]      ? 1
                                                                           : 0;
        if (c.matched == console_out::marker.size()) {
            c.matched = 0;
            long long none = -1;
            g_boot_ok_ns.compare_exchange_strong(none, since_start_ns());
            g_boot_ok_seen.store(true);
        }
        c.buf[c.n++] = static_cast<char>(b);
        if (c.n == c.buf.size()) c.flush();
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
                                    vcpu::range<dev::com1_base, dev::uart_ports, uart>>;
// No PCI host bridge on the Linux machine: 0xcf8..0xcff are not decoded (reads all ones, as on
// a PC without PCI), so Linux's conf1/conf2 probes fail and it skips the PCI scan; the writes
// are coalesced sinks (linux_sink_zones).

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

/// Exit kinds the summary counts (exits to userspace, one per KVM_RUN return).
enum kind : unsigned { k_serial, k_pci, k_port_other, k_mmio, k_interrupted, k_shutdown, k_system_event, k_other, kinds };
constexpr std::array<const char*, kinds> kind_names{"serial", "PCI config", "other port I/O", "MMIO",
                                                    "interrupted", "shutdown", "system event", "other"};

/// Per-vCPU counts and handler time per exit kind (each vCPU thread writes only its own).
struct counters {
    std::array<std::uint64_t, kinds> n{};
    std::array<std::uint64_t, kinds> ns{}; ///< userspace time in the handlers
    std::uint64_t coalesced = 0;           ///< writes KVM buffered without an exit
};

/// Per-port exit counts (in, out) and coalesced writes, shared, updated under the bus lock.
struct port_counts {
    std::array<std::uint32_t, 65536> in{}, out{}, coalesced{};
};

kind port_kind(std::uint16_t port) noexcept {
    if (port >= dev::com1_base && port < dev::com1_base + dev::uart_ports) return k_serial;
    if (port >= dev::pci_config_address_port && port < dev::pci_config_address_port + 8) return k_pci;
    return k_port_other;
}

const char* port_name(std::uint16_t port) noexcept {
    switch (port) {
    case 0x3f8: return "COM1 THR/RBR";
    case 0x3f9: return "COM1 IER";
    case 0x3fa: return "COM1 IIR/FCR";
    case 0x3fb: return "COM1 LCR";
    case 0x3fc: return "COM1 MCR";
    case 0x3fd: return "COM1 LSR";
    case 0x3fe: return "COM1 MSR";
    case 0x3ff: return "COM1 SCR";
    case 0xcf8: return "PCI CONFIG_ADDRESS";
    case 0xcfc: case 0xcfd: case 0xcfe: case 0xcff: return "PCI CONFIG_DATA";
    case 0x60: return "i8042 data";
    case 0x64: return "i8042 status/command";
    case 0x70: return "CMOS index";
    case 0x71: return "CMOS data";
    case 0x80: return "POST/io_delay";
    case 0x2e: case 0x4e: return "Super I/O index";
    case 0x2f: case 0x4f: return "Super I/O data";
    case 0x87: return "DMA page";
    case 0x2f8: case 0x2f9: case 0x2fa: case 0x2fb: case 0x2fc: case 0x2fd: case 0x2fe: case 0x2ff: return "COM2";
    case 0x3e8: case 0x3e9: case 0x3ea: case 0x3eb: case 0x3ec: case 0x3ed: case 0x3ee: case 0x3ef: return "COM3";
    case 0x2e8: case 0x2e9: case 0x2ea: case 0x2eb: case 0x2ec: case 0x2ed: case 0x2ee: case 0x2ef: return "COM4";
    default: return "";
    }
}

/// --snapshot-on: a snapshot is wanted (set by a vCPU thread or the SIGUSR2 handler's flag),
/// taken by the main thread while every vCPU thread waits in `pause_gate`.
std::atomic<bool> g_snapshot_wanted{false};
std::atomic<bool> g_snapshot_done{false};
volatile std::sig_atomic_t g_sigusr2 = 0;
std::atomic<std::uint64_t> g_exits_to_vmm{0};

/// vCPU threads park here while the main thread saves the machine (--snapshot-on).
struct pause_gate {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<bool> pausing{false};
    unsigned parked = 0;
    /// vCPU thread: waits while a pause is under way (or until the VM ends).
    void park(const std::atomic<bool>& stop) {
        std::unique_lock lk(mu);
        ++parked;
        cv.notify_all();
        cv.wait(lk, [&] { return !pausing.load() || stop.load(); });
        --parked;
    }
    /// Main thread: lets the vCPUs run again.
    void release() {
        std::lock_guard lk(mu);
        pausing.store(false);
        cv.notify_all();
    }
};

/// The device-state blob's first record: what kind of machine vmm built ("VMM0").
inline constexpr std::uint16_t vmm_machine_version = 1;

/// Request bits vmm posts with `kicker::kick` (reported in `interrupted::requests`).
inline constexpr std::uint32_t request_stop = 1u << 0; ///< the VM is ending: leave run()
inline constexpr std::uint32_t request_dump = 1u << 1; ///< print where this vCPU is, then go on
inline constexpr std::uint32_t request_debug = 1u << 2; ///< gdb stops every vCPU (all-stop)
inline constexpr std::uint32_t request_pause = 1u << 3; ///< --snapshot-on: every vCPU parks

/// All-stop debugging (--gdb): the vCPU threads park here while the debugger looks at the
/// machine, and run when it resumes (all of them) or steps (one). The first vCPU to stop
/// (a debug exit) records why and makes the others stop too; the main thread kicks them.
struct debug_gate {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<bool> enabled{false}; ///< false: never park (no debugger, or it detached)
    std::atomic<bool> stopping{true}; ///< a stop is under way: vCPUs leave run() and park
    std::uint64_t epoch = 0;         ///< one per resume or step
    int step_cpu = -1;               ///< the vCPU that steps, -1: all run
    unsigned parked = 0;             ///< vCPU threads waiting in `wait_turn`
    std::vector<std::uint64_t> seen; ///< per vCPU: the last epoch it ran in
    std::optional<vcpu::gdb::stop_reason> reason;

    /// vCPU `id`: parks until the debugger lets it run; false when the VM is ending.
    bool wait_turn(unsigned id, const std::atomic<bool>& stop) {
        std::unique_lock lk(mu);
        if (!enabled.load()) return !stop.load();
        ++parked;
        cv.notify_all();
        cv.wait(lk, [&] {
            return stop.load() || !enabled.load() ||
                   (!stopping.load() && epoch != seen[id] && (step_cpu < 0 || step_cpu == static_cast<int>(id)));
        });
        --parked;
        seen[id] = epoch;
        return !stop.load();
    }
    /// A vCPU stopped for the debugger (the first reason of a run wins).
    void report(const vcpu::gdb::stop_reason& why) {
        std::lock_guard lk(mu);
        if (!reason) reason = why;
        stopping.store(true);
        cv.notify_all();
    }
    /// Lets every vCPU (or only `step`) run once more.
    void release(int step) {
        std::lock_guard lk(mu);
        reason.reset();
        step_cpu = step;
        ++epoch;
        stopping.store(false);
        cv.notify_all();
    }
    /// The debugger is gone: nobody parks any more.
    void disable() {
        std::lock_guard lk(mu);
        enabled.store(false);
        stopping.store(false);
        cv.notify_all();
    }
    /// Wakes parked threads to see the VM's end.
    void wake_all() {
        std::lock_guard lk(mu);
        cv.notify_all();
    }
};

enum class ending { none, reset_i8042, triple_fault, power_off, reset_event, debug_exit, terminated, error, snapshot };
std::atomic<int> g_ending{static_cast<int>(ending::none)};
volatile std::sig_atomic_t g_terminate = 0; ///< SIGTERM/SIGINT (e.g. from `timeout`)

const char* ending_name(ending e) {
    switch (e) {
    case ending::reset_i8042: return "guest reset through the i8042 (0xFE to port 0x64)";
    case ending::triple_fault: return "guest triple fault (shutdown): reboot=t";
    case ending::power_off: return "guest powered off (system event)";
    case ending::reset_event: return "guest reset (system event)";
    case ending::debug_exit: return "guest wrote isa-debug-exit (port 0xf4)";
    case ending::terminated: return "vmm terminated by a signal (SIGTERM/SIGINT)";
    case ending::error: return "error";
    case ending::snapshot: return "snapshot written (--snapshot-and-exit)";
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

/// Ports whose guest writes are pure sinks on the Linux machine (nothing decodes them and
/// a read does not depend on them): KVM buffers such writes in the coalesced ring
/// (KVM_CAP_COALESCED_PIO) instead of exiting, and vmm drops them when it drains the ring.
/// 0xcf8..0xcff: no PCI host bridge, so Linux's conf1 probe fails and its PCI scan is skipped
/// (reads still exit and float to all ones), while the AMD GART probe (family 0xf CPUs) still
/// does its 2 x 8192 raw CONFIG_ADDRESS writes + CONFIG_DATA reads: the writes stop exiting.
/// 0x80: the POST/io_delay port, written by outb_p().
struct sink_zone {
    std::uint16_t port;
    std::uint16_t size;
};
constexpr std::array<sink_zone, 2> linux_sink_zones{{{0xcf8, 8}, {0x80, 1}}};

/// Whether a bus has an isa-debug-exit device (the Multiboot bus does).
template <class Bus>
inline constexpr bool has_debug_exit = std::is_same_v<Bus, multiboot_bus>;

/// Appends vmm's machine record and every device model's state (docs/vmm.md) to `out`.
template <class Bus, class Mmio>
void save_devices(std::vector<std::byte>& out, Bus& bus, Mmio& mmio, const options& opt, bool multiboot) {
    const auto at = dev::begin_device_record(out, "VMM0", vmm_machine_version);
    dev::state_writer w(out);
    w.flag(multiboot);
    w.u32(opt.cpus);
    w.u32(opt.mem_mib);
    dev::end_device_record(out, at);
    bus.template get<dev::i8042>().save(out);
    bus.template get<dev::cmos_rtc<>>().save(out);
    bus.template get<uart>().save(out);
    if constexpr (has_debug_exit<Bus>) {
        bus.template get<testdev_ports>().save(out);
        bus.template get<dev::isa_debug_exit>().save(out);
        bus.template get<dev::fw_cfg>().save(out);
        bus.template get<dev::acpi_pm_timer<>>().save(out);
        mmio.template get<dev::pc_testdev_iomem>().save(out);
    }
}

/// Loads what `save_devices` wrote (after the machine record) into `bus` and `mmio`.
template <class Bus, class Mmio>
vcpu::result<void> load_devices(std::span<const std::byte> rest, Bus& bus, Mmio& mmio) {
    auto next = [&]() { return dev::next_device_record(rest); };
    auto load = [&](auto& d) -> vcpu::result<void> {
        auto r = next();
        if (!r) return r.err();
        return d.load(*r);
    };
    VCPU_TRY_VOID(load(bus.template get<dev::i8042>()));
    VCPU_TRY_VOID(load(bus.template get<dev::cmos_rtc<>>()));
    VCPU_TRY_VOID(load(bus.template get<uart>()));
    if constexpr (has_debug_exit<Bus>) {
        VCPU_TRY_VOID(load(bus.template get<testdev_ports>()));
        VCPU_TRY_VOID(load(bus.template get<dev::isa_debug_exit>()));
        VCPU_TRY_VOID(load(bus.template get<dev::fw_cfg>()));
        VCPU_TRY_VOID(load(bus.template get<dev::acpi_pm_timer<>>()));
        VCPU_TRY_VOID(load(mmio.template get<dev::pc_testdev_iomem>()));
    }
    if (!rest.empty())
        return vcpu::error{"vmm device state", EINVAL, "trailing bytes after the device records"}.with("bytes",
                                                                                                       rest.size());
    bus.template get<uart>().sync_irq();
    return vcpu::ok();
}

/// Prints where vCPU `id` is (on a dump request: a hang or SIGTERM).
template <class Cpu>
void dump_vcpu(unsigned id, Cpu& cpu, const counters& st) {
    ::kvm_mp_state mp{};
    const auto mpr = cpu.hal().ioctl(VCPU_KVM_IOCTL(vcpu, KVM_GET_MP_STATE), &mp);
    const auto rip = cpu.get(x86::rip);
    const auto rflags = cpu.get(x86::rflags);
    std::uint64_t exits = 0;
    for (auto v : st.n) exits += v;
    std::fprintf(stderr, "vmm: vCPU %u: rip %#llx rflags %#llx mp_state %d, %llu exits so far\n", id,
                 rip ? static_cast<unsigned long long>(*rip) : 0ULL,
                 rflags ? static_cast<unsigned long long>(*rflags) : 0ULL, mpr ? static_cast<int>(mp.mp_state) : -1,
                 static_cast<unsigned long long>(exits));
}

/// Runs every vCPU on its own thread over `bus` (port I/O) and `mmio` (MMIO), feeds stdin to
/// the UART, and returns the process exit status once the VM has ended.
///
/// Stopping: the first vCPU thread (or the main thread, on SIGTERM) to end the VM sets
/// `g_stop` and kicks every vCPU with `request_stop` (kicker::kick). Each vCPU thread bound
/// itself as its kicker's target (hal_vcpu::bind_kick_thread), so the kick interrupts
/// KVM_RUN wherever the vCPU is: running guest code, halted in the in-kernel LAPIC, or an AP
/// parked in INIT/wait-for-SIPI (KVM_RUN blocks there, or returns EAGAIN, which the HAL retries
/// until a kick posts a request); a kick that lands while the thread is in userspace leaves
/// `immediate_exit` set, so the next KVM_RUN returns at once. The library clears
/// `immediate_exit` before it takes the request bits: the handler must not clear it again
/// (that would drop a kick landing in between).
template <class Bus, class Mmio>
int run_vm(vcpu::kvm::x86_64_machine& m, const options& opt, Bus& bus, Mmio& mmio, bool multiboot,
           std::span<const std::byte> restored_devices = {}) {
    spin_lock bus_lock;
    if (!opt.restore.empty()) {
        if (auto r = load_devices(restored_devices, bus, mmio); !r)
            die(2, "--restore: device state: " + r.err().message());
    }
    pause_gate pause;
    std::vector<counters> stats(opt.cpus);
    auto ports = std::make_unique<port_counts>();
    std::vector<vcpu::kvm::kicker> kickers;
    for (auto& c : m.vcpus) kickers.push_back(c.hal().make_kicker());
    std::unique_ptr<std::atomic<bool>[]> stopped(new std::atomic<bool>[opt.cpus]);
    for (unsigned i = 0; i < opt.cpus; ++i) stopped[i].store(false);
    auto kick_all = [&](std::uint32_t bits) {
        for (unsigned j = 0; j < opt.cpus; ++j)
            if (!stopped[j].load()) (void)kickers[j].kick(bits);
    };

    // Coalesced sink zones (Linux machine only: the Multiboot bus decodes these ports).
    bool coalescing = false;
    if (!multiboot) {
        coalescing = true;
        for (const auto z : linux_sink_zones) {
            if (auto r = m.vm.register_coalesced_pio(z.port, z.size); !r) {
                std::fprintf(stderr, "vmm: coalesced PIO unavailable, those writes exit: %s\n", r.err().message().c_str());
                coalescing = false;
                break;
            }
        }
    }

    // --gdb: the debugger sees every vCPU (gdb thread i + 1 = vCPU i) and guest RAM. On PVM,
    // whose KVM emulates guest CPL0 code and cannot run INT3, software breakpoints take debug
    // registers (four at most).
    using hal_type = std::remove_reference_t<decltype(m.vcpus[0].hal())>;
    std::vector<hal_type*> hals;
    for (auto& c : m.vcpus) hals.push_back(&c.hal());
    auto guest_ram = [&m](std::uint64_t gpa, std::size_t n) { return m.memory.at(gpa, n); };
    vcpu::kvm::x86_64_gdb_target target{std::span<hal_type*>(hals), guest_ram,
                                        vcpu::kvm::describe_host().kind == vcpu::kvm::host_kind::pvm};
    debug_gate gate;
    gate.seen.assign(opt.cpus, 0);
    std::optional<vcpu::gdb::session<vcpu::gdb::stream>> debugger;
    if (opt.gdb_port >= 0) {
        auto l = vcpu::gdb::listener::open(static_cast<std::uint16_t>(opt.gdb_port));
        if (!l) die(2, "--gdb: " + l.err().message());
        std::fprintf(stderr, "vmm: waiting for gdb on 127.0.0.1:%u (gdb -ex 'target remote 127.0.0.1:%u')\n",
                     l->port(), l->port());
        auto c = l->accept();
        if (!c) die(2, "--gdb: " + c.err().message());
        debugger.emplace(std::move(*c));
        gate.enabled.store(true);
        std::fprintf(stderr, "vmm: gdb connected; the guest starts when it continues\n");
    }

    raw_terminal term;
    g_start = clock_type::now();

    auto vcpu_thread = [&](unsigned id) {
        auto& cpu = m.vcpus[id];
        auto& st = stats[id];
        auto timed = [&](kind k, clock_type::time_point t0) noexcept {
            ++st.n[k];
            st.ns[k] += static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count());
        };
        auto on_pio = [&](vcpu::port_io& io) noexcept {
            const auto t0 = clock_type::now();
            if (!opt.snapshot_file.empty() && !g_snapshot_done.load()) {
                const bool at_port = opt.snapshot_port >= 0 && !io.is_in() && io.port == opt.snapshot_port;
                if (at_port || (opt.snapshot_exit_count != 0 && ++g_exits_to_vmm == opt.snapshot_exit_count)) {
                    // Stop here: this vCPU parks, the main thread stops the others and saves.
                    pause.pausing.store(true);
                    g_snapshot_wanted.store(true);
                    if (at_port) {
                        timed(port_kind(io.port), t0);
                        return vcpu::action::stop;
                    }
                }
            }
            bus_lock.lock();
            if (io.is_in()) ++ports->in[io.port];
            else ++ports->out[io.port];
            const auto a = bus(io);
            bool debug_exit = false;
            if constexpr (has_debug_exit<Bus>) debug_exit = bus.template get<dev::isa_debug_exit>().exited();
            bus_lock.unlock();
            if (a == vcpu::action::stop) finish(debug_exit ? ending::debug_exit : ending::reset_i8042);
            else if (opt.snapshot_on_boot_ok && !g_snapshot_done.load() && g_boot_ok_seen.exchange(false)) {
                // The UART write that completed GUEST-BOOT-OK: stop right after it and snapshot.
                pause.pausing.store(true);
                g_snapshot_wanted.store(true);
                timed(port_kind(io.port), t0);
                return vcpu::action::stop;
            }
            timed(port_kind(io.port), t0);
            return a;
        };
        auto on_coalesced = [&](vcpu::coalesced_write& w) noexcept {
            // Only the sink zones are registered: drop the write, count it.
            ++st.coalesced;
            if (w.pio && w.address < 65536) {
                bus_lock.lock();
                ++ports->coalesced[w.address];
                bus_lock.unlock();
            }
            return vcpu::action::resume;
        };
        auto on_mmio = [&](vcpu::mmio& mm) noexcept {
            const auto t0 = clock_type::now();
            if (opt.snapshot_exit_count != 0 && !g_snapshot_done.load() &&
                ++g_exits_to_vmm == opt.snapshot_exit_count) {
                pause.pausing.store(true);
                g_snapshot_wanted.store(true);
            }
            bus_lock.lock();
            mmio(mm);
            bus_lock.unlock();
            timed(k_mmio, t0);
        };
        auto on_intr = [&](vcpu::interrupted& i) noexcept {
            ++st.n[k_interrupted];
            if (i.requests & request_dump) dump_vcpu(id, cpu, st);
            // A kick from an earlier stop can arrive late: only a stop under way parks.
            return g_stop.load() || pause.pausing.load() || (gate.enabled.load() && gate.stopping.load())
                       ? vcpu::action::stop
                       : vcpu::action::resume;
        };
        auto on_debug = [&](vcpu::debug& d) noexcept {
            ++st.n[k_other];
            gate.report(target.stop_for(id, d));
            return vcpu::action::stop;
        };
        auto on_shutdown = [&](vcpu::shutdown&) noexcept {
            ++st.n[k_shutdown];
            finish(ending::triple_fault);
            return vcpu::action::stop;
        };
        auto on_event = [&](vcpu::system_event& e) noexcept {
            ++st.n[k_system_event];
            finish(e.what == vcpu::system_event::kind::reset ? ending::reset_event : ending::power_off);
            return vcpu::action::stop;
        };
        if (auto b = cpu.hal().bind_kick_thread(SIGUSR1); !b) {
            std::fprintf(stderr, "vmm: vCPU %u: %s\n", id, b.err().message().c_str());
            finish(ending::error);
        }
        while (!g_stop.load()) {
            if (pause.pausing.load()) {
                pause.park(g_stop);
                continue;
            }
            if (!gate.wait_turn(id, g_stop)) break;
            auto r = cpu.run(on_pio, on_coalesced, on_mmio, on_intr, on_shutdown, on_event, on_debug);
            if (!r) {
                std::fprintf(stderr, "vmm: vCPU %u: %s\n", id, r.err().message().c_str());
                finish(ending::error);
                break;
            }
            const bool done = std::visit(
                [&]<class E>(E& e) {
                    using T = std::remove_cvref_t<E>;
                    if constexpr (std::is_same_v<T, vcpu::debug>) {
                        return false; // stopped for gdb: park, then run again
                    } else if constexpr (std::is_same_v<T, vcpu::interrupted>) {
                        return g_stop.load(); // else: stopped for gdb
                    } else if constexpr (std::is_same_v<T, vcpu::port_io>) {
                        return g_stop.load() || !pause.pausing.load(); // else: stopped for a snapshot
                    } else if constexpr (std::is_same_v<T, vcpu::shutdown> ||
                                         std::is_same_v<T, vcpu::system_event>) {
                        return true; // a handler asked to stop; the reason is recorded
                    } else if constexpr (std::is_same_v<T, vcpu::x86_64::emulation_failure>) {
                        ++st.n[k_other];
                        std::fprintf(stderr, "vmm: vCPU %u: KVM could not emulate an instruction (%zu bytes)\n", id,
                                     e.insn.size());
                        finish(ending::error);
                        return true;
                    } else {
                        ++st.n[k_other];
                        std::fprintf(stderr, "vmm: vCPU %u: unhandled exit %s\n", id, vcpu::exit_name<T>().data());
                        finish(ending::error);
                        return true;
                    }
                },
                *r);
            if (done) break;
        }
        stopped[id].store(true);
        // Bring the other vCPUs out of KVM_RUN (they may be halted, or APs waiting for SIPI).
        kick_all(request_stop);
        gate.wake_all();
    };

    // The vCPU threads block SIGTERM/SIGINT (they inherit the mask, and KVM_RUN runs with it
    // minus the kick signal), so those reach the main thread, which ends the VM.
    sigset_t term_set, old_set;
    sigemptyset(&term_set);
    sigaddset(&term_set, SIGTERM);
    sigaddset(&term_set, SIGINT);
    sigaddset(&term_set, SIGUSR2);
    ::pthread_sigmask(SIG_BLOCK, &term_set, &old_set);
    std::vector<std::thread> workers;
    for (unsigned i = 0; i < opt.cpus; ++i) workers.emplace_back([&, i] { vcpu_thread(i); });
    ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);

    auto flush_console = [&] {
        bus_lock.lock();
        g_console.flush();
        bus_lock.unlock();
    };
    // stdin -> UART receive FIFO, polled so the loop notices the end of the VM; the console
    // buffer is flushed on each round (every 10 ms).
    const bool stdin_open = ::fcntl(STDIN_FILENO, F_GETFL) != -1;
    // One round of the console: flush the guest's output, feed stdin to the UART (waits up to
    // 10 ms). False when a signal ended the VM.
    auto console_round = [&]() -> bool {
        if (g_terminate) {
            std::fprintf(stderr, "\nvmm: terminated by a signal; where the vCPUs are:\n");
            kick_all(request_dump);
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
            finish(ending::terminated);
            return false;
        }
        pollfd p{STDIN_FILENO, POLLIN, 0};
        const bool in = stdin_open && ::poll(&p, 1, 10) > 0 && (p.revents & POLLIN) != 0;
        flush_console();
        if (!in) {
            if (!stdin_open || (p.revents & (POLLHUP | POLLNVAL))) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            return true;
        }
        char buf[64];
        const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n <= 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            return true;
        }
        bus_lock.lock();
        for (ssize_t i = 0; i < n; ++i) bus.template get<uart>().receive(static_cast<std::uint8_t>(buf[i]));
        bus_lock.unlock();
        return true;
    };
    if (debugger) {
        // All-stop: gdb looks at the machine only while every vCPU thread waits at the gate.
        auto all_parked = [&] {
            std::lock_guard lk(gate.mu);
            unsigned ended = 0;
            for (unsigned j = 0; j < opt.cpus; ++j) ended += stopped[j].load() ? 1u : 0u;
            return gate.parked + ended >= opt.cpus;
        };
        auto wait_parked = [&] {
            while (!g_stop.load() && !all_parked()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        };
        wait_parked();
        for (;;) {
            auto req = debugger->serve(target);
            if (!req || !vcpu::gdb::is_running(req->kind)) {
                if (!req) std::fprintf(stderr, "vmm: gdb: %s\n", req.err().message().c_str());
                if (req && req->kind == vcpu::gdb::request_kind::kill) {
                    std::fprintf(stderr, "vmm: gdb ended the guest (kill)\n");
                    finish(ending::terminated);
                } else if (auto d = target.disarm(); !d) {
                    std::fprintf(stderr, "vmm: gdb detach: %s\n", d.err().message().c_str());
                    finish(ending::error);
                } else {
                    std::fprintf(stderr, "vmm: gdb %s; the guest runs on\n",
                                 req && req->connection_closed ? "disconnected" : "detached");
                }
                gate.disable();
                break;
            }
            const bool step = req->kind == vcpu::gdb::request_kind::step;
            if (auto a = target.arm(step ? std::optional<unsigned>(req->cpu) : std::nullopt); !a) {
                std::fprintf(stderr, "vmm: gdb: %s\n", a.err().message().c_str());
                finish(ending::error);
                gate.disable();
                break;
            }
            gate.release(step ? static_cast<int>(req->cpu) : -1);
            bool ended = false;
            for (;;) {
                {
                    std::lock_guard lk(gate.mu);
                    if (gate.reason) break;
                }
                if (g_stop.load() || !console_round()) {
                    ended = true;
                    break;
                }
                if (auto irq = debugger->interrupt_requested(); irq && *irq)
                    gate.report({vcpu::gdb::stop_kind::interrupt, req->cpu});
            }
            if (ended) { // the guest ended the VM while running: gdb sees the inferior exit
                (void)debugger->stopped({vcpu::gdb::stop_kind::exited});
                break;
            }
            kick_all(request_debug);
            wait_parked();
            std::optional<vcpu::gdb::stop_reason> why;
            {
                std::lock_guard lk(gate.mu);
                why = gate.reason;
            }
            if (auto w = debugger->stopped(*why); !w) {
                std::fprintf(stderr, "vmm: gdb: %s; the guest runs on\n", w.err().message().c_str());
                (void)target.disarm();
                gate.disable();
                break;
            }
        }
    }
    // --snapshot-on: stop every vCPU (kick, then each parks), save, then go on or end.
    auto take_snapshot = [&] {
        pause.pausing.store(true);
        kick_all(request_pause);
        for (;;) {
            unsigned ended = 0;
            for (unsigned j = 0; j < opt.cpus; ++j) ended += stopped[j].load() ? 1u : 0u;
            {
                std::lock_guard lk(pause.mu);
                if (pause.parked + ended >= opt.cpus) break;
            }
            if (g_stop.load()) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (!g_stop.load()) {
            const auto t0 = clock_type::now();
            std::vector<std::byte> devices;
            bus_lock.lock();
            save_devices(devices, bus, mmio, opt, multiboot);
            bus_lock.unlock();
            auto w = vcpu::kvm::save_x86_64_snapshot(opt.snapshot_file.c_str(), m, devices);
            if (!w) {
                std::fprintf(stderr, "vmm: snapshot: %s\n", w.err().message().c_str());
                finish(ending::error);
            } else {
                std::fprintf(stderr, "vmm: snapshot written to %s (%u vCPU(s), %zu bytes of device state) in %.1f ms\n",
                             opt.snapshot_file.c_str(), opt.cpus, devices.size(),
                             std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
                if (opt.snapshot_and_exit) finish(ending::snapshot);
            }
        }
        g_snapshot_done.store(true);
        g_snapshot_wanted.store(false);
        pause.release();
    };
    while (!g_stop.load() && console_round()) {
        if (g_sigusr2 && opt.snapshot_on_signal && !g_snapshot_done.load()) g_snapshot_wanted.store(true);
        if (g_snapshot_wanted.load() && !g_snapshot_done.load()) take_snapshot();
    }
    pause.release();
    // The VM is ending: one kick per vCPU is enough (see above). A vCPU thread that has not
    // stopped after 2 s is a bug: say where it is, then kick again.
    const auto end_requested = clock_type::now();
    kick_all(request_stop);
    for (bool all = false, reported = false; !all; std::this_thread::sleep_for(std::chrono::milliseconds(5))) {
        all = true;
        for (unsigned j = 0; j < opt.cpus; ++j) all = all && stopped[j].load();
        if (!all && !reported && clock_type::now() - end_requested > std::chrono::seconds(2)) {
            reported = true;
            for (unsigned j = 0; j < opt.cpus; ++j)
                if (!stopped[j].load()) std::fprintf(stderr, "vmm: vCPU %u did not stop within 2 s of the kick\n", j);
            kick_all(request_stop | request_dump);
        }
    }
    for (auto& w : workers) w.join();
    const double stop_ms = std::chrono::duration<double, std::milli>(clock_type::now() - end_requested).count();
    flush_console();
    const double total = std::chrono::duration<double>(clock_type::now() - g_start).count();
    const auto how = static_cast<ending>(g_ending.load());

    int status = how == ending::error || how == ending::none || how == ending::terminated ? (multiboot ? 4 : 1) : 0;
    if (how == ending::snapshot && multiboot) status = 6; // even: never read as a guest verdict
    if constexpr (has_debug_exit<Bus>) {
        const auto& d = bus.template get<dev::isa_debug_exit>();
        if (how == ending::debug_exit && d.exited()) status = d.exit_status();
    }

    if (opt.summary) {
        counters sum;
        for (const auto& s : stats) {
            for (unsigned k = 0; k < kinds; ++k) {
                sum.n[k] += s.n[k];
                sum.ns[k] += s.ns[k];
            }
            sum.coalesced += s.coalesced;
        }
        std::uint64_t exits = 0;
        for (auto v : sum.n) exits += v;
        auto secs = [](long long ns) {
            char b[32];
            if (ns < 0) return std::string("none");
            std::snprintf(b, sizeof b, "%.2f s", static_cast<double>(ns) / 1e9);
            return std::string(b);
        };
        std::fprintf(stderr, "\nvmm: summary: %s after %.2f s, %u vCPU(s), %u MiB; all vCPUs stopped %.1f ms after the end\n",
                     ending_name(how), total, opt.cpus, opt.mem_mib, stop_ms);
        std::fprintf(stderr, "vmm:   time to first serial output: %s, to GUEST-BOOT-OK: %s\n",
                     secs(g_first_output_ns.load()).c_str(), secs(g_boot_ok_ns.load()).c_str());
        std::fprintf(stderr,
                     "vmm:   exits to userspace: %llu: port I/O %llu (serial %llu, PCI config %llu, other %llu), "
                     "MMIO %llu, interrupted %llu, shutdown %llu, system event %llu, other %llu\n",
                     static_cast<unsigned long long>(exits),
                     static_cast<unsigned long long>(sum.n[k_serial] + sum.n[k_pci] + sum.n[k_port_other]),
                     static_cast<unsigned long long>(sum.n[k_serial]), static_cast<unsigned long long>(sum.n[k_pci]),
                     static_cast<unsigned long long>(sum.n[k_port_other]), static_cast<unsigned long long>(sum.n[k_mmio]),
                     static_cast<unsigned long long>(sum.n[k_interrupted]),
                     static_cast<unsigned long long>(sum.n[k_shutdown]),
                     static_cast<unsigned long long>(sum.n[k_system_event]), static_cast<unsigned long long>(sum.n[k_other]));
        std::string t;
        for (unsigned k = 0; k < kinds; ++k) {
            if (sum.n[k] == 0 || k == k_interrupted || k == k_shutdown || k == k_system_event || k == k_other) continue;
            char b[96];
            std::snprintf(b, sizeof b, "%s%s %.3f s (%.1f us/exit)", t.empty() ? "" : ", ", kind_names[k],
                          static_cast<double>(sum.ns[k]) / 1e9,
                          static_cast<double>(sum.ns[k]) / 1e3 / static_cast<double>(sum.n[k]));
            t += b;
        }
        std::fprintf(stderr, "vmm:   userspace time in exit handlers: %s\n", t.empty() ? "none" : t.c_str());
        std::fprintf(stderr, "vmm:   writes buffered by KVM without an exit (coalesced PIO): %llu%s\n",
                     static_cast<unsigned long long>(sum.coalesced),
                     multiboot ? "" : coalescing ? "" : " (coalesced PIO unavailable)");
        std::fprintf(stderr, "vmm:   serial bytes out: %llu in %llu writes to stdout\n",
                     static_cast<unsigned long long>(bus.template get<uart>().transmitted()),
                     static_cast<unsigned long long>(g_console.writes));
        // Per-port table, busiest first.
        std::vector<std::uint32_t> used;
        for (std::uint32_t p = 0; p < 65536; ++p)
            if (ports->in[p] + ports->out[p] + ports->coalesced[p] != 0) used.push_back(p);
        std::sort(used.begin(), used.end(), [&](std::uint32_t a, std::uint32_t b) {
            const auto ta = ports->in[a] + ports->out[a], tb = ports->in[b] + ports->out[b];
            return ta != tb ? ta > tb : a < b;
        });
        std::fprintf(stderr, "vmm:   exits per port:   port  exits     in    out  coalesced  device\n");
        std::size_t shown = 0;
        std::uint64_t rest_n = 0, rest_in = 0, rest_out = 0, rest_c = 0;
        for (const auto p : used) {
            const auto in = ports->in[p], out = ports->out[p], c = ports->coalesced[p];
            if (shown++ < 24) {
                std::fprintf(stderr, "vmm:                   %#6x %6u %6u %6u %10u  %s\n", p, in + out, in, out, c,
                             port_name(static_cast<std::uint16_t>(p)));
            } else {
                rest_n += 1;
                rest_in += in;
                rest_out += out;
                rest_c += c;
            }
        }
        if (rest_n != 0)
            std::fprintf(stderr, "vmm:         %4llu more ports %6llu %6llu %6llu %10llu\n",
                         static_cast<unsigned long long>(rest_n), static_cast<unsigned long long>(rest_in + rest_out),
                         static_cast<unsigned long long>(rest_in), static_cast<unsigned long long>(rest_out),
                         static_cast<unsigned long long>(rest_c));
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

/// Installs the kick and termination handlers, builds the device bus of the machine kind
/// (Linux or Multiboot) and runs it: the common end of a boot and of a `--restore`
/// (`restored_devices`: the device-state records to load into the new bus).
int start_machine(vcpu::kvm::x86_64_machine& m, const options& opt, bool multiboot, std::size_t ram_bytes,
                  std::span<const std::byte> restored_devices = {}) {
    if (auto r = vcpu::kvm::install_kick_handler(); !r) die(2, r.err().message());
    // SIGTERM/SIGINT (a harness's timeout, ^C on a raw terminal is the guest's): end the VM
    // cleanly, saying where each vCPU was, and print the summary.
    {
        struct sigaction sa{};
        sa.sa_handler = [](int) { g_terminate = 1; };
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGTERM, &sa, nullptr);
        ::sigaction(SIGINT, &sa, nullptr);
        if (opt.snapshot_on_signal) {
            struct sigaction su{};
            su.sa_handler = [](int) { g_sigusr2 = 1; };
            sigemptyset(&su.sa_mask);
            ::sigaction(SIGUSR2, &su, nullptr);
        }
    }
    if (multiboot) {
        auto bus = std::make_unique<multiboot_bus>(
            dev::i8042{}, dev::cmos_rtc<>{}, testdev_ports(host_page_flush{&m.memory}), dev::isa_debug_exit{},
            uart(stdout_sink{}, kvm_irq4{&m.vm}),
            dev::fw_cfg(dev::fw_cfg_config{ram_bytes, static_cast<std::uint16_t>(opt.cpus), 0, {}}),
            testdev_irq(kvm_irq_lines{&m.vm}), dev::acpi_pm_timer<>{}, dev::pci_absent{});
        auto mmio = std::make_unique<multiboot_mmio>();
        return run_vm(m, opt, *bus, *mmio, true, restored_devices);
    }
    platform_bus bus(dev::i8042{}, dev::cmos_rtc<>{}, uart(stdout_sink{}, kvm_irq4{&m.vm}));
    no_mmio mmio;
    return run_vm(m, opt, bus, mmio, false, restored_devices);
}

/// --restore FILE: the machine from the snapshot (memory, vCPU count, Linux or Multiboot from
/// the file; CPUID as a boot sets it; the PIT as a boot creates it), then its devices.
int restore_main(options& opt) {
    auto f = vcpu::kvm::snapshot_file::open(opt.restore.c_str(), vcpu::arch::x86_64::name);
    if (!f) die(2, "--restore: " + f.err().message());
    auto blob = f->device_state();
    auto head = dev::next_device_record(blob);
    std::uint16_t version = 0;
    auto body = head ? dev::open_device_record(*head, "vmm machine record", "VMM0", vmm_machine_version, version)
                     : vcpu::result<std::span<const std::byte>>(head.err());
    if (!body) die(2, "--restore: device state: " + body.err().message());
    dev::state_reader r(*body);
    const bool multiboot = r.flag();
    opt.cpus = r.u32();
    opt.mem_mib = r.u32();
    if (auto c = dev::finish_device_record(r, "vmm machine record"); !c)
        die(2, "--restore: device state: " + c.err().message());
    if (opt.cpus < 1 || opt.cpus > x86::mp::max_cpus || opt.mem_mib < 16 || opt.mem_mib > 3072)
        die(2, "--restore: the snapshot's machine is out of vmm's range");

    vcpu::kvm::x86_64_options mo;
    mo.ram_bytes = std::size_t{opt.mem_mib} << 20;
    mo.vcpus = opt.cpus;
    if (const char* e = std::getenv("VCPU_FORCE_NO_KVM"); e != nullptr && std::string_view(e) == "1")
        mo.device = "/nonexistent/kvm";
    // restore_x86_64_snapshot's steps, with vmm's per-vCPU CPUID and its PIT (speaker port).
    const auto slots = f->slots();
    if (slots.size() != 1 || slots[0].gpa != 0 || slots[0].size != mo.ram_bytes || f->vcpus().size() != opt.cpus)
        die(2, "--restore: the snapshot's memory or vCPU table does not match its vmm record");
    auto sys = vcpu::kvm::system::open(mo.device);
    if (!sys) {
        const auto& e = sys.err();
        die(opt.no_kvm_status, std::string(opt.no_kvm_status == 77 ? "SKIPPED: " : "") + "cannot use KVM: " +
                                   e.message() + " (is the kvm module loaded and /dev/kvm accessible?)");
    }
    auto vm = sys->create_vm();
    if (!vm) die(2, "--restore: " + vm.err().message());
    auto check = [](const vcpu::result<void>& x) {
        if (!x) die(2, "--restore: " + x.err().message());
    };
    check(vm->set_tss_addr(mo.tss_addr));
    check(vm->set_identity_map_addr(mo.identity_map_addr));
    check(vm->create_irqchip());
    check(vm->create_pit2(KVM_PIT_SPEAKER_DUMMY));
    auto rams = f->map_memory(*vm);
    if (!rams) die(2, "--restore: " + rams.err().message());
    vcpu::guest_memory mem;
    check(mem.add((*rams)[0].region(0)));
    std::vector<vcpu::kvm::x86_64_machine::cpu_type> cpus;
    for (unsigned id = 0; id < opt.cpus; ++id) {
        auto cpu = vm->template create_vcpu<vcpu::arch::x86_64>(id, mo.vcpu);
        if (!cpu) die(2, "--restore: " + cpu.err().message());
        check(cpu->init(vcpu::init_sequence(x86::cpuid_setup<>{id, {}}, x86::misc_enable_fast_strings{})));
        cpus.push_back(std::move(*cpu));
    }
    const auto t0 = clock_type::now();
    check(vcpu::kvm::load_snapshot_state<vcpu::kvm::x86_64_vcpu_state, vcpu::kvm::x86_64_vm_state>(
        *f, *vm, std::span(cpus), vcpu::kvm::clock_restore::exact));
    vcpu::kvm::x86_64_machine m{std::move(*sys), std::move((*rams)[0]), std::move(*vm), mem, std::move(cpus)};
    std::fprintf(stderr, "vmm: restored %s (%s, %u vCPU(s), %u MiB); state loaded in %.1f ms\n", opt.restore.c_str(),
                 multiboot ? "Multiboot" : "Linux", opt.cpus, opt.mem_mib,
                 std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
    return start_machine(m, opt, multiboot, mo.ram_bytes, blob);
}

int main(int argc, char** argv) {
    options opt = parse(argc, argv);
    if (!opt.restore.empty()) return restore_main(opt);
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
    // in-kernel LAPIC for the guest's INIT + SIPI. Every guest sees the hypervisor bit (the
    // library's cpuid_setup sets it).
    for (unsigned i = 0; i < opt.cpus; ++i) {
        auto& cpu = m.vcpus[i];
        const x86::cpuid_setup<> linux_cpuid{i, {}};
        vcpu::result<void> r =
            multiboot ? (i != 0 ? cpu.init(vcpu::init_sequence(x86::cpuid_setup<>{i, {}},
                                                               x86::misc_enable_fast_strings{}))
                                : cpu.init(x86::multiboot_boot_state(i, entry, boot_data)))
            : i != 0  ? cpu.init(vcpu::init_sequence(linux_cpuid, x86::misc_enable_fast_strings{}))
                      : cpu.init(vcpu::init_sequence(x86::flat_protected_mode{entry, boot_data}, linux_cpuid,
                                                     x86::misc_enable_fast_strings{}));
        if (!r) die(2, "vCPU " + std::to_string(i) + " init: " + r.err().message());
    }
    return start_machine(m, opt, multiboot, mo.ram_bytes);
}
