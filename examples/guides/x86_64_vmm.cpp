// x86_64_vmm: the VMM of docs/guides/writing-a-vmm.md. It opens /dev/kvm, gives a VM 2 MiB of
// RAM, creates one vCPU in 64-bit long mode and runs a guest that prints on the debug port, reads
// an MMIO counter, writes the counter plus one back and halts. Exit status: 0 when the guest did
// all of that, 1 otherwise, 77 (ctest: skipped) when /dev/kvm cannot be opened.

#include "board.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <span>
#include <type_traits>
#include <variant>

namespace {

constexpr std::size_t ram_bytes = 2 << 20;    // guest RAM at GPA 0
constexpr std::uint64_t entry = 0x10'0000;    // the code
constexpr std::uint64_t message = 0x10'0100;  // the string it prints
constexpr std::uint64_t stack = 0x8'0000;     // top of the stack (unused by this guest)

// 64-bit code (GNU as, .code64), assembled by hand.
constexpr std::array<std::uint8_t, 35> code{
    0xbe, 0x00, 0x01, 0x10, 0x00,             //       mov  $0x100100, %esi
    0xba, 0xe9, 0x00, 0x00, 0x00,             //       mov  $0xe9, %edx
    0xac,                                     // next: lodsb
    0x84, 0xc0,                               //       test %al, %al
    0x74, 0x03,                               //       jz   done
    0xee,                                     //       out  %al, %dx       port I/O exit
    0xeb, 0xf8,                               //       jmp  next
    0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30, // done: mov  0x30000000, %eax MMIO read exit
    0xff, 0xc0,                               //       inc  %eax
    0x89, 0x04, 0x25, 0x04, 0x00, 0x00, 0x30, //       mov  %eax, 0x30000004 MMIO write exit
    0xf4,                                     //       hlt                 halt exit
};
constexpr char text[] = "hello from long mode\n";

int fail(const char* what, const vcpu::error& e) {
    std::fprintf(stderr, "x86_64_vmm: %s: %s\n", what, e.message().c_str());
    return 1;
}

} // namespace

int main() {
    // /dev/kvm, then a VM. Intel VMX wants the TSS and identity-map pages placed before a vCPU
    // runs (KVM API 4.36 and 4.40); out of the way of RAM, below 4 GiB.
    auto sys = vcpu::kvm::system::open();
    if (!sys) {
        std::printf("SKIPPED: %s\n", sys.err().message().c_str());
        return 77;
    }
    auto vm = sys->create_vm();
    if (!vm) return fail("create VM", vm.err());
    if (auto r = vm->set_tss_addr(0xffff'd000); !r) return fail("TSS address", r.err());
    if (auto r = vm->set_identity_map_addr(0xffff'c000); !r) return fail("identity map", r.err());

    // Guest RAM: anonymous host memory, installed as memory slot 0 at GPA 0. `mem` is the
    // VMM's own view of the same bytes, for loaders and device models.
    auto ram = vcpu::kvm::guest_ram::allocate(ram_bytes);
    if (!ram) return fail("guest RAM", ram.err());
    if (auto r = vm->set_memory({0, 0, ram->bytes()}); !r) return fail("memory slot", r.err());
    vcpu::guest_memory mem;
    if (auto r = mem.add(ram->region(0)); !r) return fail("memory map", r.err());
    if (auto r = mem.write(entry, std::as_bytes(std::span(code))); !r) return fail("load code", r.err());
    if (auto r = mem.write(message, std::as_bytes(std::span(text))); !r) return fail("load text", r.err());

    // One vCPU, in long mode: page tables identity-mapping the first GiB are built in guest RAM
    // (at 0x9000), then CR0/CR3/CR4/EFER, flat 64-bit segments, RIP and RSP are set.
    auto cpu = vm->create_vcpu<vcpu::arch::x86_64>(0);
    if (!cpu) return fail("create vCPU", cpu.err());
    if (auto r = cpu->init(vcpu::x86_64::long_mode<>{&mem, entry, stack}); !r)
        return fail("boot state", r.err());

    // Run until a handler says stop or an exit comes that no handler takes.
    guide::board dev;
    auto last = cpu->run(
        [&](vcpu::port_io& io) { return dev.on_port(io); },
        [&](vcpu::mmio& m) { return dev.on_mmio(m); },
        [](vcpu::halt) { return vcpu::action::stop; });
    if (!last) return fail("run", last.err()); // KVM_RUN failed: the error names it and errno

    // `*last` is a variant of the exits that can come back; say which one did.
    bool halted = false;
    std::visit(
        [&]<class E>(E& e) {
            if constexpr (std::is_same_v<E, vcpu::halt>) {
                halted = true;
            } else if constexpr (std::is_same_v<E, vcpu::port_io>) {
                std::fprintf(stderr, "x86_64_vmm: unexpected port access 0x%x\n", e.port);
            } else if constexpr (std::is_same_v<E, vcpu::mmio>) {
                std::fprintf(stderr, "x86_64_vmm: unexpected MMIO at 0x%llx\n",
                             static_cast<unsigned long long>(e.address));
            } else {
                std::fprintf(stderr, "x86_64_vmm: unhandled exit (variant index %zu)\n", last->index());
            }
        },
        *last);
    auto rip = cpu->get(vcpu::x86_64::rip);

    std::fputs(dev.console.c_str(), stdout);
    std::printf("counter read %u, guest stored %u, %s at rip 0x%llx\n", dev.counter, dev.stored,
                halted ? "halted" : "stopped", rip ? static_cast<unsigned long long>(*rip) : 0ull);
    return halted && dev.stored == dev.counter + 1 && dev.console == text ? 0 : 1;
}
