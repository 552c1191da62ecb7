// aarch64_kvm: a real AArch64 KVM guest driven through
// `vcpu::basic_vcpu<vcpu::arch::aarch64, vcpu::kvm::hal>`.
//
// The guest (hand-assembled A64, source in the comment below) reads a device
// register, checks the value the VMM answered, writes value+1 back, does a
// 64-bit read and a sign-extending 16-bit read whose result it stores back
// (KVM applies ESR_EL2.ISS SSE/SF when it completes the load), then calls PSCI SYSTEM_OFF through HVC, which ends the run as a
// typed `vcpu::system_event`. Before that it measures the MMIO-write exit
// round trip through the framework and through a raw `ioctl(KVM_RUN)` loop
// on the same vCPU.
//
// It runs where /dev/kvm is an arm64 KVM: natively on arm64, or inside the
// emulated AArch64 machine of ../shared/xarch (`scripts/xarch-run aarch64
// <this binary>`, ctest `xarch.aarch64.kvm`). Elsewhere it exits 77 (skipped).
//
// Usage: aarch64_kvm [bench-exits]   (default 2000; 0 skips the benchmark)

#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/init.hpp>
#include <arch/aarch64/psci.hpp>
#include <kvm/aarch64.hpp>
#include <kvm/hal.hpp>
#include <kvm/system.hpp>
#include <kvm/vm.hpp>
#include <vcpu/basic_vcpu.hpp>

#include "../common/kvm_host.hpp"
#include "../common/mmio_round_trip.hpp"

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <variant>

#include <sys/ioctl.h>

namespace {

namespace a64 = vcpu::aarch64;

constexpr std::uint64_t ram_gpa = 0x10000;
constexpr std::size_t ram_bytes = 0x10000;
constexpr std::uint64_t mmio_base = 0x1000'0000; // no memslot: every access exits
constexpr std::uint64_t bench_entry = ram_gpa + 0x100;

// Guest code (GNU as, A64), loaded at ram_gpa:
//        ldr  x1, mmio_base
//        ldr  w2, [x1]            // DEV_ID: VMM answers 0x1234
//        mov  w3, #0x1234
//        cmp  w2, w3
//        b.ne fail
//        add  w2, w2, #1
//        str  w2, [x1, #4]        // VMM checks 0x1235
//        ldr  x4, [x1, #8]        // VMM answers 0x0123456789abcdef
//        ldr  x5, magic64
//        cmp  x4, x5
//        b.ne fail
//        ldrsh x6, [x1, #16]      // VMM answers 0x8001 -> X6 = -0x7fff
//        str  x6, [x1, #24]       // VMM checks 0xffffffffffff8001 (see below)
//        nop; nop; nop
//        ldr  w0, psci_off        // PSCI SYSTEM_OFF (0x84000008)
//        hvc  #0
//        b    .
// fail:  mov  w0, #0xdead
//        str  w0, [x1, #0xf8]     // VMM reports the failure
//        ldr  w0, psci_off
//        hvc  #0
//        b    .
//        (literals: mmio_base, magic64, minus7fff, psci_off; nops to 0x100)
// bench: ldr  x1, mmio_base       // at +0x100
//        mov  x2, #0
//     1: str  x2, [x1, #32]       // one MMIO-write exit per iteration
//        add  x2, x2, #1
//        b    1b
constexpr std::array<std::uint32_t, 69> guest_code{
    0x58000301, 0xb9400022, 0x52824683, 0x6b03005f, 0x540001e1, 0x11000442, 0xb9000422, 0xf9400424,
    0x58000245, 0xeb05009f, 0x54000121, 0x79802026, 0xf9000c26, 0xd503201f, 0xd503201f, 0xd503201f,
    0x180001c0, 0xd4000002, 0x14000000, 0x529bd5a0, 0xb900f820, 0x18000120, 0xd4000002, 0x14000000,
    0x10000000, 0x00000000, 0x89abcdef, 0x01234567, 0xffff8001, 0xffffffff, 0x84000008, 0xd503201f,
    0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f,
    0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f,
    0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f,
    0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f, 0xd503201f,
    0x58fffb01, 0xd2800002, 0xf9001022, 0x91000442, 0x17fffffe,
};
static_assert(guest_code[30] == a64::psci::id32(a64::psci::function::system_off));
static_assert(guest_code.size() * 4 > bench_entry - ram_gpa);

int fail(const char* what, const vcpu::error& e) {
    std::printf("AARCH64_KVM FAIL: %s: %s\n", what, e.message().c_str());
    return 1;
}

} // namespace

int main(int argc, char** argv) {
    const long bench_exits = argc > 1 ? std::atol(argv[1]) : 2000;
    std::setvbuf(stdout, nullptr, _IONBF, 0);

    auto sys = example::open_kvm_for("aarch64");
    if (!sys) return 77;
    auto vm = sys->create_vm();
    if (!vm) return fail("create VM", vm.err());
    auto ram = vcpu::kvm::basic_guest_ram<vcpu::kvm::linux_sys>::allocate(ram_bytes);
    if (!ram) return fail("guest RAM", ram.err());
    std::memcpy(ram->bytes().data(), guest_code.data(), sizeof guest_code);
    if (auto r = vm->set_memory({0, ram_gpa, ram->bytes()}); !r) return fail("memory slot", r.err());

    // CpuInit: KVM_ARM_PREFERRED_TARGET + KVM_ARM_VCPU_INIT (PSCI 0.2), PC, X0, PSTATE.
    auto init = vcpu::kvm::aarch64::preferred_init(*vm);
    if (!init) return fail("preferred target", init.err());
    auto cpu = vm->create_vcpu<vcpu::arch::aarch64>(0);
    if (!cpu) return fail("create vCPU", cpu.err());
    if (auto r = cpu->init(a64::kvm_boot{*init, ram_gpa, 0}); !r) return fail("kvm_boot", r.err());
    std::printf("AARCH64_KVM: target=%u features=0x%x pc=0x%llx pstate=0x%llx\n", init->target,
                init->features[0], static_cast<unsigned long long>(*cpu->get(a64::pc)),
                static_cast<unsigned long long>(*cpu->get(a64::pstate)));

    // --- Benchmark: MMIO-write round trip, framework vs raw ioctl loop -----
    if (bench_exits > 0) {
        if (auto r = cpu->set(a64::pc, bench_entry); !r) return fail("set pc", r.err());
        const auto rt = example::measure_mmio_round_trip(*cpu, mmio_base + 32, bench_exits);
        if (rt.failure != nullptr) {
            std::printf("AARCH64_KVM FAIL: benchmark: %s\n", rt.failure);
            return 1;
        }
        std::printf("AARCH64_KVM BENCH: %ld MMIO-write exits x2: framework %.2f us/exit, raw ioctl "
                    "%.2f us/exit, ratio %.3f\n",
                    bench_exits, rt.framework_us, rt.raw_us, rt.framework_us / rt.raw_us);
    }

    // --- The functional guest: MMIO reads/writes answered here, then PSCI --
    if (auto r = cpu->set(a64::pc, ram_gpa); !r) return fail("set pc", r.err());
    std::uint64_t wrote32 = 0, wrote64 = 0, failed = 0;
    int mmio_exits = 0;
    auto device = [&](vcpu::mmio& m) {
        ++mmio_exits;
        switch (m.address - mmio_base) {
        case 0x00: m.set(0x1234); break;                 // DEV_ID
        case 0x04: wrote32 = m.value(); break;
        case 0x08: m.set(0x0123'4567'89ab'cdefULL); break;
        case 0x10: m.set(0x8001); break;                 // LDRSH: KVM sign-extends
        case 0x18: wrote64 = m.value(); break;
        case 0xf8: failed = m.value(); break;
        default: break;
        }
    };
    auto end = cpu->run(device);
    if (!end) return fail("run", end.err());
    const auto* ev = std::get_if<vcpu::system_event>(&*end);
    std::printf("AARCH64_KVM: %d MMIO exits; guest wrote 0x%llx and 0x%llx; exit %s (raw type %u)\n",
                mmio_exits, static_cast<unsigned long long>(wrote32),
                static_cast<unsigned long long>(wrote64),
                ev == nullptr ? "not a system_event"
                : ev->what == vcpu::system_event::kind::power_off ? "system_event power_off"
                                                                  : "system_event (other)",
                ev ? ev->raw_type : 0);
    // LDRSH X6 of 0x8001 must leave 0xffffffffffff8001 in X6: KVM sign-extends
    // when the data-abort syndrome has SSE=1. QEMU 7.2's TCG (the xarch
    // machine) reports SSE=0 for this load, so KVM zero-extends it there;
    // that is the emulated CPU's syndrome, not this VMM, and is reported.
    const bool sext_ok = wrote64 == 0xffff'ffff'ffff'8001ULL;
    const bool sext_tcg = wrote64 == 0x8001;
    if (sext_tcg)
        std::printf("AARCH64_KVM NOTE: LDRSH came back zero-extended: the CPU's ESR_EL2.ISS.SSE was 0 "
                    "(known with QEMU 7.2 TCG)\n");
    const bool ok = ev != nullptr && ev->what == vcpu::system_event::kind::power_off && failed == 0 &&
                    wrote32 == 0x1235 && (sext_ok || sext_tcg) && mmio_exits == 5;
    if (!ok) {
        std::printf("AARCH64_KVM FAIL: guest check failed (fail code 0x%llx)\n",
                    static_cast<unsigned long long>(failed));
        return 1;
    }
    std::printf("AARCH64_KVM PASS\n");
    return 0;
}
