// vmm_arm64: boots a stock arm64 Linux `Image` (plain or gzip'd) as a KVM guest through
// `vcpu::basic_vcpu<vcpu::arch::aarch64, vcpu::kvm::hal>`.
//
// The machine (addresses as QEMU's `virt` board has them):
//   0x0800'0000  in-kernel GICv3 distributor (KVM_CREATE_DEVICE, vgic-v3), 64 KiB
//   0x080a'0000  its redistributors, 128 KiB per vCPU
//   0x0900'0000  16550A UART (vcpu/devices/uart_8250.hpp) on MMIO, SPI 1 through KVM_IRQ_LINE
//   0x4000'0000  RAM (--mem MiB): kernel per booting.rst, initrd, DTB in the last 2 MiB
// The device tree is generated at run time with libfdt: memory, /chosen (bootargs, initrd),
// CPUs with enable-method "psci" (reg = each vCPU's MPIDR), psci (0.2, method "hvc"), the
// architected timer PPIs, the GIC and the UART. vCPU 0 starts at the kernel entry with X0 = DTB
// (`aarch64::kvm_boot`); the others start powered off (KVM_ARM_VCPU_POWER_OFF) and come up
// through KVM's in-kernel PSCI CPU_ON. PSCI SYSTEM_OFF comes back as a typed `system_event`,
// and the VMM exits 0. See docs/linux-boot.md.
//
// A kernel file without the arm64 Image magic (and not gzip) is a flat unit-test image of the
// kvm-unit-tests kind (vcpu/boot/flat_image.hpp): loaded at RAM base + 0x80000, bootargs = only
// --cmdline, the initrd = its environment; the same machine otherwise (--test-image: the same
// conventions for a file with an Image header, loaded by it). The guest prints
// `EXIT: STATUS=<n>` and calls PSCI SYSTEM_OFF; the VMM exits with n (linux_vmm::utest_status).
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/init.hpp>
#include <arch/aarch64/linux_boot.hpp>
#include <kvm/aarch64.hpp>
#include <kvm/device.hpp>
#include <kvm/hal.hpp>
#include <kvm/system.hpp>
#include <kvm/vm.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/boot/fdt.hpp>
#include <vcpu/boot/flat_image.hpp>
#include <vcpu/boot/linux_image.hpp>
#include <vcpu/devices/uart_8250.hpp>

#include "../common/kvm_host.hpp"
#include "../common/linux_vmm.hpp"

#include <cstdio>
#include <mutex>
#include <string>
#include <typeinfo>
#include <variant>
#include <vector>

namespace {

using linux_vmm::fail;

namespace a64 = vcpu::aarch64;
namespace kvm = vcpu::kvm;
namespace boot = vcpu::boot;

constexpr std::uint64_t gic_dist = 0x0800'0000;
constexpr std::uint64_t gic_redist = 0x080a'0000;
constexpr std::uint64_t uart_base = 0x0900'0000, uart_size = 0x1000;
constexpr std::uint32_t uart_spi = 1;
constexpr std::uint64_t ram_base = 0x4000'0000;
constexpr std::uint32_t gic_phandle = 1;
constexpr std::uint32_t uart_clock = 1'843'200; // the PC16550D's reference clock

// Device-tree interrupt specifiers for the GIC (bindings/interrupt-controller/arm,gic-v3.yaml):
// <type number flags>, type 0 = SPI, 1 = PPI; flags 4 = level high, and for PPIs the CPU mask.
constexpr std::uint32_t dt_spi = 0, dt_ppi = 1, dt_level_high = 4;

constexpr const char* arch_line =
    "Boots an arm64 Linux Image on AArch64 KVM (in-kernel vGICv3, PSCI, 16550A UART at 0x9000000).";

/// The device tree of this machine (see the file comment).
vcpu::result<std::span<const std::byte>> make_dtb(std::span<std::byte> buf, const linux_vmm::options& o,
                                                  const boot::linux_layout& l, const std::string& bootargs,
                                                  const std::vector<std::uint64_t>& mpidrs) {
    boot::fdt_writer w(buf);
    w.begin_node("");
    w.prop_string("compatible", "linux,dummy-virt");
    w.prop_u32("#address-cells", 2).prop_u32("#size-cells", 2);
    w.prop_u32("interrupt-parent", gic_phandle);

    w.begin_node("chosen");
    w.prop_string("bootargs", bootargs);
    w.prop_string("stdout-path", "/uart@9000000");
    if (l.initrd_size != 0) {
        w.prop_u64("linux,initrd-start", l.initrd);
        w.prop_u64("linux,initrd-end", l.initrd + l.initrd_size);
    }
    w.end_node();

    w.begin_node("memory@40000000");
    w.prop_string("device_type", "memory");
    w.prop_u64s("reg", {ram_base, o.mem_mib << 20});
    w.end_node();

    w.begin_node("cpus");
    w.prop_u32("#address-cells", 1).prop_u32("#size-cells", 0);
    for (std::size_t i = 0; i < mpidrs.size(); ++i) {
        char name[32];
        const auto reg = static_cast<std::uint32_t>(mpidrs[i] & 0xff'ffff); // Aff2..Aff0
        std::snprintf(name, sizeof name, "cpu@%x", reg);
        w.begin_node(name);
        w.prop_string("device_type", "cpu");
        w.prop_string("compatible", "arm,arm-v8");
        w.prop_u32("reg", reg);
        w.prop_string("enable-method", "psci");
        w.end_node();
    }
    w.end_node();

    w.begin_node("psci");
    w.prop_strings("compatible", {"arm,psci-0.2", "arm,psci"});
    w.prop_string("method", "hvc");
    w.end_node();

    // Architected timer: secure phys, non-secure phys, virtual, hypervisor PPIs 13, 14, 11, 10
    // (bindings/timer/arm,arch_timer.yaml), level-high, routed to every CPU.
    const std::uint32_t ppi_flags = dt_level_high | (((1u << mpidrs.size()) - 1) << 8);
    w.begin_node("timer");
    w.prop_string("compatible", "arm,armv8-timer");
    w.prop_u32s("interrupts", {dt_ppi, 13, ppi_flags, dt_ppi, 14, ppi_flags, dt_ppi, 11, ppi_flags, dt_ppi, 10,
                               ppi_flags});
    w.prop_empty("always-on");
    w.end_node();

    char gic_name[32];
    std::snprintf(gic_name, sizeof gic_name, "intc@%llx", static_cast<unsigned long long>(gic_dist));
    w.begin_node(gic_name);
    w.prop_string("compatible", "arm,gic-v3");
    w.prop_u32("#interrupt-cells", 3);
    w.prop_empty("interrupt-controller");
    w.prop_u64s("reg", {gic_dist, kvm::arm::vgic_v3_dist_size, gic_redist,
                        kvm::arm::vgic_v3_redist_size * mpidrs.size()});
    w.prop_u32("phandle", gic_phandle);
    w.end_node();

    w.begin_node("uart@9000000");
    w.prop_string("compatible", "ns16550a");
    w.prop_u64s("reg", {uart_base, uart_size});
    w.prop_u32("clock-frequency", uart_clock);
    w.prop_u32s("interrupts", {dt_spi, uart_spi, dt_level_high});
    w.end_node();

    w.end_node();
    return w.finish();
}

} // namespace

int main(int argc, char** argv) {
    auto opt = linux_vmm::parse(argc, argv, arch_line);
    if (!opt) return 2;
    auto kernel = linux_vmm::read_file(opt->kernel, "kernel");
    if (!kernel) return linux_vmm::utest_exit::setup_error;
    std::vector<std::byte> initrd;
    if (!opt->initrd.empty()) {
        auto f = linux_vmm::read_file(opt->initrd, "initrd");
        if (!f) return linux_vmm::utest_exit::setup_error;
        initrd = std::move(*f);
    }
    const bool flat = boot::is_flat_image(*kernel, a64::image::magic_offset, a64::image::magic);
    const bool utest = flat || opt->test_image; // test conventions; the loader follows the file
    // A test image gets only the user's arguments (its argv[1..]); Linux gets a console first.
    const std::string bootargs =
        utest ? opt->append : linux_vmm::cmdline("console=ttyS0 earlycon=uart8250,mmio,0x9000000 panic=-1", *opt);

    // RAM and the images first: a bad kernel is rejected on any host.
    auto ram = kvm::guest_ram::allocate(opt->mem_mib << 20);
    if (!ram) return fail("guest RAM", ram.err());
    vcpu::guest_memory mem;
    if (auto r = mem.add(ram->region(ram_base)); !r) return fail("guest memory map", r.err());

    boot::linux_layout layout;
    if (auto status = linux_vmm::load_kernel<a64::image_format>(mem, ram_base, opt->mem_mib << 20, boot::arm64_flat_offset, *kernel, initrd,
                                                         bootargs.size(), flat, utest, layout))
        return *status;

    auto sys = example::open_kvm_for("aarch64");
    if (!sys) return 77;
    auto vm = sys->create_vm();
    if (!vm) return fail("create VM", vm.err());
    if (auto r = vm->set_memory({0, ram_base, ram->bytes()}); !r) return fail("memory slot", r.err());

    // vCPUs: KVM_ARM_PREFERRED_TARGET + PSCI 0.2; secondaries powered off until CPU_ON.
    auto init = kvm::aarch64::preferred_init(*vm);
    if (!init) return fail("preferred target", init.err());
    using cpu_type = decltype(vm->create_vcpu<vcpu::arch::aarch64>(0))::value_type;
    std::vector<cpu_type> cpus;
    std::vector<std::uint64_t> mpidrs;
    for (unsigned i = 0; i < opt->cpus; ++i) {
        auto c = vm->create_vcpu<vcpu::arch::aarch64>(i);
        if (!c) return fail("create vCPU", c.err());
        auto vi = *init;
        if (i != 0) vi.with(a64::feature::power_off);
        if (auto r = c->init(a64::kvm_boot{vi, layout.entry, layout.dtb}); !r) return fail("vCPU boot state", r.err());
        auto mpidr = c->get(a64::mpidr_el1);
        if (!mpidr) return fail("read MPIDR_EL1", mpidr.err());
        mpidrs.push_back(*mpidr & a64::mpidr_bits::affinity_mask);
        cpus.push_back(std::move(*c));
    }
    // The in-kernel GICv3, initialised once every vCPU exists.
    auto gic = kvm::create_vgic_v3(*vm, gic_dist, gic_redist);
    if (!gic) return fail("create vGICv3", gic.err());
    if (auto r = kvm::vgic_init(*gic); !r) return fail("initialise vGICv3", r.err());

    std::vector<std::byte> dtb_buf(64 * 1024);
    auto dtb = make_dtb(dtb_buf, *opt, layout, bootargs, mpidrs);
    if (!dtb) return fail("device tree", dtb.err());
    if (auto r = mem.write(layout.dtb, *dtb); !r) return fail("write device tree", r.err());

    if (auto r = kvm::install_kick_handler(); !r) return fail("kick handler", r.err());

    linux_vmm::console con;
    linux_vmm::vm_state state;
    auto uart_irq = [&](bool level) {
        if (auto r = vm->irq_line(kvm::arm::spi_irq(uart_spi), level); !r) {
            std::fprintf(stderr, "vmm: UART interrupt: %s\n", r.err().message().c_str());
            state.finish(linux_vmm::ending::error);
        }
    };
    vcpu::devices::uart_8250<std::reference_wrapper<linux_vmm::console>, decltype(uart_irq)> uart(std::ref(con),
                                                                                                 uart_irq);
    std::mutex uart_lock;
    std::vector<linux_vmm::counters> stats(opt->cpus);
    std::vector<kvm::kicker> kickers;
    for (auto& c : cpus) kickers.push_back(c.hal().make_kicker());

    con.start();
    linux_vmm::run_vcpus(opt->cpus, kickers, state, [&](unsigned id) {
        auto& cpu = cpus[id];
        auto& st = stats[id];
        auto on_mmio = [&](vcpu::mmio& m) noexcept {
            if (m.address - uart_base < uart_size) {
                ++st.mmio_uart;
                std::lock_guard g(uart_lock);
                if (m.is_read()) m.set(uart.read(m.address - uart_base, m.size));
                else uart.write(m.address - uart_base, m.size, m.value());
            } else {
                ++st.mmio_other; // nothing else here: reads as 0, writes ignored
                if (m.is_read()) m.set(0);
            }
        };
        linux_vmm::run_until_end(cpu, id, state, st, on_mmio);
    }, [&](const char* bytes, std::size_t n) {
        std::lock_guard g(uart_lock);
        for (std::size_t i = 0; i < n; ++i) (void)uart.receive(static_cast<std::uint8_t>(bytes[i]));
    });
    std::fflush(stdout);
    const int linux_status = linux_vmm::report(*opt, con, stats, state, "aarch64");
    return utest ? linux_vmm::utest_status(con, state) : linux_status;
}
