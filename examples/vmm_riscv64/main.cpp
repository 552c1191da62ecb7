// vmm_riscv64: boots a stock RISC-V Linux `Image` (plain or gzip'd) as a KVM guest through
// `vcpu::basic_vcpu<vcpu::arch::riscv64, vcpu::kvm::hal>`.
//
// The machine (addresses as QEMU's `virt` board has them):
//   0x0c00'0000  PLIC in userspace (vcpu/devices/plic.hpp): one S-mode context per hart,
//                driven into the vCPUs with KVM_INTERRUPT (QEMU 7.2 gives nested KVM no AIA)
//   0x1000'0000  16550A UART (vcpu/devices/uart_8250.hpp) on MMIO, PLIC source 10
//   0x8000'0000  RAM (--mem MiB): kernel per boot.rst, initrd, DTB in the last 2 MiB
// The device tree is generated at run time with libfdt: memory, /chosen, CPUs whose riscv,isa
// comes from KVM's ISA config registers and timebase-frequency from its timer register, a
// riscv,cpu-intc per hart, the PLIC and the UART. Hart 0 starts at the kernel entry with
// a0 = hart id, a1 = DTB (`riscv64::boot`); KVM keeps the others stopped until the guest starts
// them with SBI HSM hart_start (in-kernel). SBI SRST shutdown comes back as a typed
// `system_event`, and the VMM exits 0.
//
// --sbi-console instead makes the console the SBI debug console (DBCN, enabled per vCPU:
// KVM leaves it off) with console=hvc0 earlycon=sbi and no UART in the tree — for comparing
// the two (docs/linux-boot.md: Debian's kernel has no hvc_riscv_sbi driver, so only earlycon
// reaches it). See docs/linux-boot.md.
//
// A kernel file without the RISC-V Image magic2 (and not gzip) is a flat unit-test image of the
// kvm-unit-tests kind (vcpu/boot/flat_image.hpp): loaded at RAM base (0x80000000), bootargs =
// only --cmdline, the initrd = its environment; the same machine otherwise (a RISC-V `Image` with
// its header is loaded as Linux, at text_offset; with --test-image it gets the test conventions).
// The guest prints `EXIT: STATUS=<n>` and calls SBI SRST; the VMM exits with n
// (linux_vmm::utest_status).
#include <arch/riscv64/arch.hpp>
#include <arch/riscv64/init.hpp>
#include <arch/riscv64/linux_boot.hpp>
#include <arch/riscv64/sbi.hpp>
#include <kvm/hal.hpp>
#include <kvm/riscv64.hpp>
#include <kvm/system.hpp>
#include <kvm/vm.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/boot/fdt.hpp>
#include <vcpu/boot/flat_image.hpp>
#include <vcpu/boot/linux_image.hpp>
#include <vcpu/devices/plic.hpp>
#include <vcpu/devices/uart_8250.hpp>

#include "../common/kvm_host.hpp"
#include "../common/linux_vmm.hpp"

#include <array>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <typeinfo>
#include <variant>
#include <vector>

namespace {

using linux_vmm::fail;

namespace rv = vcpu::riscv64;
namespace kvm = vcpu::kvm;
namespace boot = vcpu::boot;

constexpr std::uint64_t plic_base = 0x0c00'0000;
constexpr std::uint64_t uart_base = 0x1000'0000, uart_size = 0x100;
constexpr unsigned uart_source = 10, plic_sources = 31;
constexpr std::uint64_t ram_base = 0x8000'0000;
constexpr std::uint32_t plic_phandle = 1, intc_phandle_base = 2;
constexpr std::uint32_t uart_clock = 1'843'200;
constexpr std::uint32_t s_external_irq = 9; // scause interrupt 9: supervisor external

constexpr const char* arch_line =
    "Boots a RISC-V Linux Image on RISC-V KVM (userspace PLIC, 16550A UART at 0x10000000, SBI HSM/SRST).\n"
    "  --sbi-console    console on the SBI debug console (hvc0/earlycon=sbi) instead of the UART";

/// Multi-letter extensions put into riscv,isa when KVM gives them to the vCPU (ones that need
/// no further device-tree properties).
struct isa_ext_name {
    rv::abi::kvm_isa_ext id;
    std::string_view name;
};
constexpr std::array<isa_ext_name, 12> multi_letter{{
    {rv::abi::kvm_isa_ext::zicntr, "zicntr"},
    {rv::abi::kvm_isa_ext::zicsr, "zicsr"},
    {rv::abi::kvm_isa_ext::zifencei, "zifencei"},
    {rv::abi::kvm_isa_ext::zihintpause, "zihintpause"},
    {rv::abi::kvm_isa_ext::zihpm, "zihpm"},
    {rv::abi::kvm_isa_ext::zba, "zba"},
    {rv::abi::kvm_isa_ext::zbb, "zbb"},
    {rv::abi::kvm_isa_ext::zbs, "zbs"},
    {rv::abi::kvm_isa_ext::sstc, "sstc"},
    {rv::abi::kvm_isa_ext::svinval, "svinval"},
    {rv::abi::kvm_isa_ext::svnapot, "svnapot"},
    {rv::abi::kvm_isa_ext::svpbmt, "svpbmt"},
}};

/// The device tree of this machine (see the file comment).
vcpu::result<std::span<const std::byte>> make_dtb(std::span<std::byte> buf, const linux_vmm::options& o,
                                                  const boot::linux_layout& l, const std::string& bootargs,
                                                  const std::string& isa, std::uint64_t timebase, bool uart) {
    boot::fdt_writer w(buf);
    w.begin_node("");
    w.prop_string("compatible", "linux,dummy-virt");
    w.prop_u32("#address-cells", 2).prop_u32("#size-cells", 2);

    w.begin_node("chosen");
    w.prop_string("bootargs", bootargs);
    if (uart) w.prop_string("stdout-path", "/soc/serial@10000000");
    if (l.initrd_size != 0) {
        w.prop_u64("linux,initrd-start", l.initrd);
        w.prop_u64("linux,initrd-end", l.initrd + l.initrd_size);
    }
    w.end_node();

    w.begin_node("memory@80000000");
    w.prop_string("device_type", "memory");
    w.prop_u64s("reg", {ram_base, o.mem_mib << 20});
    w.end_node();

    w.begin_node("cpus");
    w.prop_u32("#address-cells", 1).prop_u32("#size-cells", 0);
    w.prop_u32("timebase-frequency", static_cast<std::uint32_t>(timebase));
    for (unsigned i = 0; i < o.cpus; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "cpu@%x", i);
        w.begin_node(name);
        w.prop_string("device_type", "cpu");
        w.prop_u32("reg", i);
        w.prop_string("compatible", "riscv");
        w.prop_string("riscv,isa", isa);
        w.prop_string("mmu-type", "riscv,sv39");
        w.prop_string("status", "okay");
        w.begin_node("interrupt-controller");
        w.prop_string("compatible", "riscv,cpu-intc");
        w.prop_u32("#interrupt-cells", 1);
        w.prop_empty("interrupt-controller");
        w.prop_u32("phandle", intc_phandle_base + i);
        w.end_node();
        w.end_node();
    }
    w.end_node();

    w.begin_node("soc");
    w.prop_u32("#address-cells", 2).prop_u32("#size-cells", 2);
    w.prop_string("compatible", "simple-bus");
    w.prop_empty("ranges");

    w.begin_node("plic@c000000");
    w.prop_strings("compatible", {"sifive,plic-1.0.0", "riscv,plic0"});
    w.prop_u64s("reg", {plic_base, vcpu::devices::plic_map::size(o.cpus)});
    w.prop_u32("#interrupt-cells", 1).prop_u32("#address-cells", 0);
    w.prop_empty("interrupt-controller");
    w.prop_u32("riscv,ndev", plic_sources);
    std::vector<std::uint32_t> targets;
    for (unsigned i = 0; i < o.cpus; ++i) {
        targets.push_back(intc_phandle_base + i);
        targets.push_back(s_external_irq); // context i = hart i, S-mode
    }
    w.prop_u32s("interrupts-extended", targets);
    w.prop_u32("phandle", plic_phandle);
    w.end_node();

    if (uart) {
        w.begin_node("serial@10000000");
        w.prop_string("compatible", "ns16550a");
        w.prop_u64s("reg", {uart_base, uart_size});
        w.prop_u32("clock-frequency", uart_clock);
        w.prop_u32("interrupt-parent", plic_phandle);
        w.prop_u32("interrupts", uart_source);
        w.end_node();
    }
    w.end_node(); // soc

    w.end_node();
    return w.finish();
}

} // namespace

int main(int argc, char** argv) {
    // --sbi-console is this VMM's own option; the rest are linux_vmm's.
    bool sbi_console = false;
    std::vector<char*> args;
    for (int i = 0; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--sbi-console") sbi_console = true;
        else args.push_back(argv[i]);
    }
    auto opt = linux_vmm::parse(static_cast<int>(args.size()), args.data(), arch_line);
    if (!opt) return 2;
    auto kernel = linux_vmm::read_file(opt->kernel, "kernel");
    if (!kernel) return linux_vmm::utest_exit::setup_error;
    std::vector<std::byte> initrd;
    if (!opt->initrd.empty()) {
        auto f = linux_vmm::read_file(opt->initrd, "initrd");
        if (!f) return linux_vmm::utest_exit::setup_error;
        initrd = std::move(*f);
    }
    const bool flat = boot::is_flat_image(*kernel, rv::image::magic2_offset, rv::image::magic2);
    const bool utest = flat || opt->test_image; // test conventions; the loader follows the file
    // A test image gets only the user's arguments (its argv[1..]); Linux gets a console first.
    const std::string bootargs =
        utest ? opt->append
              : linux_vmm::cmdline(sbi_console ? "console=hvc0 earlycon=sbi panic=-1"
                                               : "console=ttyS0 earlycon=uart8250,mmio,0x10000000 panic=-1",
                                   *opt);

    // RAM and the images first: a bad kernel is rejected on any host.
    auto ram = kvm::guest_ram::allocate(opt->mem_mib << 20);
    if (!ram) return fail("guest RAM", ram.err());
    vcpu::guest_memory mem;
    if (auto r = mem.add(ram->region(ram_base)); !r) return fail("guest memory map", r.err());
    boot::linux_layout layout;
    if (auto status = linux_vmm::load_kernel<rv::image_format>(mem, ram_base, opt->mem_mib << 20, boot::riscv64_flat_offset, *kernel, initrd,
                                                         bootargs.size(), flat, utest, layout))
        return *status;

    auto sys = example::open_kvm_for("riscv64");
    if (!sys) return 77;
    auto vm = sys->create_vm();
    if (!vm) return fail("create VM", vm.err());
    if (auto r = vm->set_memory({0, ram_base, ram->bytes()}); !r) return fail("memory slot", r.err());

    using cpu_type = decltype(vm->create_vcpu<vcpu::arch::riscv64>(0))::value_type;
    std::vector<cpu_type> cpus;
    for (unsigned i = 0; i < opt->cpus; ++i) {
        auto c = vm->create_vcpu<vcpu::arch::riscv64>(i);
        if (!c) return fail("create vCPU", c.err());
        // Hart i: a0 = i, a1 = DTB. KVM keeps harts other than 0 stopped until HSM hart_start,
        // which sets their pc/a0/a1 itself.
        if (auto r = c->init(rv::boot{layout.entry, i, layout.dtb}); !r) return fail("vCPU boot state", r.err());
        if (sbi_console)
            if (auto r = kvm::enable_sbi_extension(*c, rv::abi::kvm_sbi_ext::dbcn); !r)
                return fail("enable SBI DBCN", r.err());
        cpus.push_back(std::move(*c));
    }
    // riscv,isa and timebase-frequency from what KVM gives hart 0.
    auto isa_bits = cpus[0].get(rv::isa);
    if (!isa_bits) return fail("read ISA config register", isa_bits.err());
    std::vector<std::string_view> multi;
    for (const auto& e : multi_letter) {
        auto on = cpus[0].get(rv::isa_extension(e.id));
        if (on && *on == 1) multi.push_back(e.name); // ENOENT: this kernel does not know it
    }
    const std::string isa = rv::isa_string(*isa_bits, multi);
    auto timebase = cpus[0].get(rv::timer_frequency);
    if (!timebase) return fail("read timer frequency", timebase.err());
    std::fprintf(stderr, "vmm: riscv,isa \"%s\", timebase-frequency %llu\n", isa.c_str(),
                 static_cast<unsigned long long>(*timebase));

    std::vector<std::byte> dtb_buf(64 * 1024);
    auto dtb = make_dtb(dtb_buf, *opt, layout, bootargs, isa, *timebase, !sbi_console);
    if (!dtb) return fail("device tree", dtb.err());
    if (auto r = mem.write(layout.dtb, *dtb); !r) return fail("write device tree", r.err());

    if (auto r = kvm::install_kick_handler(); !r) return fail("kick handler", r.err());

    linux_vmm::console con;
    linux_vmm::vm_state state;
    std::vector<int> vcpu_fds;
    for (auto& c : cpus) vcpu_fds.push_back(c.hal().fd());
    auto hart_irq = [&](unsigned context, bool level) {
        if (auto r = kvm::riscv_external_interrupt(vcpu_fds[context], level); !r) {
            std::fprintf(stderr, "vmm: PLIC -> hart %u: %s\n", context, r.err().message().c_str());
            state.finish(linux_vmm::ending::error);
        }
    };
    vcpu::devices::plic<decltype(hart_irq)> plic(opt->cpus, plic_sources, hart_irq);
    auto uart_irq = [&](bool level) { plic.set_level(uart_source, level); }; // under dev_lock
    vcpu::devices::uart_8250<std::reference_wrapper<linux_vmm::console>, decltype(uart_irq)> uart(std::ref(con),
                                                                                                 uart_irq);
    const std::uint64_t plic_size = vcpu::devices::plic_map::size(opt->cpus);
    std::mutex dev_lock;
    std::vector<linux_vmm::counters> stats(opt->cpus);
    std::vector<kvm::kicker> kickers;
    for (auto& c : cpus) kickers.push_back(c.hal().make_kicker());

    con.start();
    linux_vmm::run_vcpus(opt->cpus, kickers, state, [&](unsigned id) {
        auto& cpu = cpus[id];
        auto& st = stats[id];
        auto on_mmio = [&](vcpu::mmio& m) noexcept {
            std::lock_guard g(dev_lock);
            if (m.address - uart_base < uart_size) {
                ++st.mmio_uart;
                if (m.is_read()) m.set(uart.read(m.address - uart_base, m.size));
                else uart.write(m.address - uart_base, m.size, m.value());
            } else if (m.address - plic_base < plic_size) {
                ++st.mmio_irqchip;
                if (m.is_read()) m.set(plic.read(m.address - plic_base, m.size));
                else plic.write(m.address - plic_base, m.size, m.value());
            } else {
                ++st.mmio_other;
                if (m.is_read()) m.set(0);
            }
        };
        auto on_console = [&](rv::console_write& w) noexcept {
            ++st.sbi_console;
            std::lock_guard g(dev_lock);
            if (!w.in_memory) {
                con(w.byte);
                w.done();
                return;
            }
            // Guest-controlled buffer: only inside guest RAM.
            auto bytes = mem.at(w.address, w.length);
            if (bytes.size() != w.length) {
                w.fail(rv::sbi::error::invalid_param);
                return;
            }
            for (auto b : bytes) con(std::to_integer<std::uint8_t>(b));
            w.done(w.length);
        };
        auto on_sbi = [&](rv::sbi_call&) noexcept { ++st.hypercall; }; // unknown: KVM's preset NOT_SUPPORTED
        linux_vmm::run_until_end(cpu, id, state, st, on_mmio, on_console, on_sbi);
    }, [&](const char* bytes, std::size_t n) {
        std::lock_guard g(dev_lock);
        for (std::size_t i = 0; i < n; ++i) (void)uart.receive(static_cast<std::uint8_t>(bytes[i]));
    });
    std::fflush(stdout);
    const int linux_status = linux_vmm::report(*opt, con, stats, state, "riscv64");
    return utest ? linux_vmm::utest_status(con, state) : linux_status;
}
