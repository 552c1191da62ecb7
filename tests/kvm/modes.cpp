// Real guests in real, flat 32-bit protected and 64-bit long mode, run through
// basic_vcpu<x86_64, kvm::hal>. Each guest does the same conversation with
// the VMM, so every exit kind is answered and the guest's use of each answer
// is checked:
//   OUT 0x10 <- 0x41            PIO out (1 byte)
//   IN  0x10                    PIO in, answered 0x5a
//   MMIO write  = IN + 1        MMIO write (1 byte) of 0x5b
//   MMIO read   (2 or 4 bytes)  answered 0x1234 / 0x12345678
//   OUT 0x10 <- read + 1        PIO out (2 or 4 bytes)
//   HLT                         halt
//   (protected/long) LIDT of a zero-limit IDT, then UD2 → triple fault → shutdown
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <kvm/kvm.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

namespace {

using namespace vcpu;

constexpr std::uint16_t port = 0x10;

// BITS 16 at 0000:1000; MMIO at 0x20000 through DS = 0x2000 (no RAM there).
constexpr std::array<std::uint8_t, 23> real_guest{
    0xba, 0x10, 0x00, // mov dx, 0x10
    0xb0, 0x41,       // mov al, 0x41
    0xee,             // out dx, al
    0xec,             // in al, dx
    0x04, 0x01,       // add al, 1
    0xb9, 0x00, 0x20, // mov cx, 0x2000
    0x8e, 0xd9,       // mov ds, cx
    0xa2, 0x00, 0x00, // mov [0x0000], al        ; MMIO write 0x20000
    0xa1, 0x04, 0x00, // mov ax, [0x0004]        ; MMIO read 0x20004, 2 bytes
    0x40,             // inc ax
    0xef,             // out dx, ax
    0xf4,             // hlt
};

// BITS 32 at 0x100000, flat segments; MMIO at 0xd0000000; zero IDTR at 0x100100.
constexpr std::array<std::uint8_t, 36> protected_guest{
    0xba, 0x10, 0x00, 0x00, 0x00,       // mov edx, 0x10
    0xb0, 0x41,                         // mov al, 0x41
    0xee,                               // out dx, al
    0xec,                               // in al, dx
    0x04, 0x01,                         // add al, 1
    0xa2, 0x00, 0x00, 0x00, 0xd0,       // mov [0xd0000000], al
    0xa1, 0x04, 0x00, 0x00, 0xd0,       // mov eax, [0xd0000004]
    0x40,                               // inc eax
    0xef,                               // out dx, eax
    0xf4,                               // hlt
    0x0f, 0x01, 0x1d, 0x00, 0x01, 0x10, 0x00, // lidt [0x100100]
    0x0f, 0x0b,                         // ud2 → #UD with no IDT → triple fault
    0x90, 0x90, 0x90,
};

// BITS 64 at 0x100000, identity-mapped 4 GiB; same conversation.
constexpr std::array<std::uint8_t, 46> long_guest{
    0xba, 0x10, 0x00, 0x00, 0x00,                               // mov edx, 0x10
    0xb0, 0x41,                                                 // mov al, 0x41
    0xee,                                                       // out dx, al
    0xec,                                                       // in al, dx
    0x04, 0x01,                                                 // add al, 1
    0xa2, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00,       // mov [0xd0000000], al
    0xa1, 0x04, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00,       // mov eax, [0xd0000004]
    0xff, 0xc0,                                                 // inc eax
    0xef,                                                       // out dx, eax
    0xf4,                                                       // hlt
    0x0f, 0x01, 0x1c, 0x25, 0x00, 0x01, 0x10, 0x00,             // lidt [0x100100]
    0x0f, 0x0b,                                                 // ud2
    0x90, 0x90, 0x90,
};

/// What the VMM saw, in order.
struct transcript {
    std::vector<std::uint32_t> outs;      // PIO out values
    std::vector<std::uint8_t> out_sizes;
    unsigned ins = 0;
    std::vector<std::uint64_t> mmio_writes;
    std::vector<std::uint64_t> mmio_write_addrs;
    unsigned mmio_reads = 0;
};

template <class Cpu>
auto converse(Cpu& cpu, transcript& t, std::uint64_t mmio_base, std::uint64_t read_answer) {
    return cpu.run(
        [&](port_io& io) {
            REQUIRE(io.port == port);
            REQUIRE(io.count == 1);
            if (io.is_in()) {
                ++t.ins;
                io.set(0x5a);
            } else {
                t.outs.push_back(io.value());
                t.out_sizes.push_back(io.size);
            }
        },
        [&](mmio& m) {
            if (m.is_write()) {
                t.mmio_writes.push_back(m.value());
                t.mmio_write_addrs.push_back(m.address);
            } else {
                ++t.mmio_reads;
                CHECK(m.address == mmio_base + 4);
                m.set(read_answer);
            }
        },
        [](halt) { return action::stop; }, [](shutdown) { return action::stop; });
}

kvm::x86_64_options small_vm(std::size_t ram) {
    kvm::x86_64_options o;
    o.ram_bytes = ram;
    o.irqchip = o.pit = false; // HLT must reach userspace
    return o;
}

template <class Exit, class R>
void check_ends_with(const R& r) {
    REQUIRE_MESSAGE(r.has_value(), (r.has_value() ? "" : r.err().message()));
    CHECK(std::holds_alternative<Exit>(*r));
}

} // namespace

TEST_CASE("real mode guest: PIO out/in, MMIO write/read, HLT") {
    auto m = kvm::vm_init_x86_64(small_vm(64 * 1024), x86_64::real_mode{0, 0x1000, 0});
    REQUIRE_MESSAGE(m.has_value(), (m.has_value() ? "" : m.err().message()));
    REQUIRE(m->memory.write(0x1000, std::as_bytes(std::span(real_guest))).has_value());
    auto& cpu = m->vcpus.front();

    transcript t;
    auto r = converse(cpu, t, 0x20000, 0x1234);
    check_ends_with<halt>(r);
    REQUIRE(t.outs.size() == 2);
    CHECK(t.outs[0] == 0x41);
    CHECK(t.out_sizes[0] == 1);
    CHECK(t.ins == 1);
    REQUIRE(t.mmio_writes.size() == 1);
    CHECK(t.mmio_write_addrs[0] == 0x20000);
    CHECK(t.mmio_writes[0] == 0x5b); // the guest used our IN answer
    CHECK(t.mmio_reads == 1);
    CHECK(t.outs[1] == 0x1235); // ... and our MMIO answer
    CHECK(t.out_sizes[1] == 2);

    // Registers come from kvm_run's sync area: RIP is past the HLT.
    auto rip = cpu.get(x86_64::rip);
    REQUIRE(rip.has_value());
    CHECK(*rip == 0x1000 + real_guest.size());
}

TEST_CASE("flat protected mode guest: the conversation, HLT, then triple fault → shutdown") {
    auto m = kvm::vm_init_x86_64(small_vm(2 << 20), x86_64::flat_protected_mode{0x100000, 0x10000});
    REQUIRE_MESSAGE(m.has_value(), (m.has_value() ? "" : m.err().message()));
    REQUIRE(m->memory.write(0x100000, std::as_bytes(std::span(protected_guest))).has_value());
    auto& cpu = m->vcpus.front();

    // The boot state is what the Linux 32-bit protocol asks for.
    auto rsi = cpu.get(x86_64::rsi);
    REQUIRE(rsi.has_value());
    CHECK(*rsi == 0x10000);
    auto cs = cpu.get(x86_64::cs);
    REQUIRE(cs.has_value());
    CHECK(cs->selector == 0x10);
    CHECK(cs->db == 1);
    CHECK(cs->g == 1);

    transcript t;
    auto r = converse(cpu, t, 0xd0000000, 0x12345678);
    check_ends_with<halt>(r);
    REQUIRE(t.outs.size() == 2);
    CHECK(t.outs[0] == 0x41);
    CHECK(t.mmio_writes.at(0) == 0x5b);
    CHECK(t.mmio_write_addrs.at(0) == 0xd0000000);
    CHECK(t.outs[1] == 0x12345679);
    CHECK(t.out_sizes[1] == 4);

    auto r2 = converse(cpu, t, 0xd0000000, 0);
    check_ends_with<shutdown>(r2);
}

TEST_CASE("long mode guest (identity-mapped 2 MiB pages): the conversation, then shutdown") {
    auto m = kvm::vm_init_x86_64(small_vm(2 << 20));
    REQUIRE_MESSAGE(m.has_value(), (m.has_value() ? "" : m.err().message()));
    x86_64::long_mode<> lm;
    lm.memory = &m->memory;
    lm.entry = 0x100000;
    lm.stack = 0x1ff000;
    lm.map_gib = 4; // reach the MMIO window at 0xd0000000
    auto& cpu = m->vcpus.front();
    REQUIRE(cpu.init(lm).has_value());
    REQUIRE(m->memory.write(0x100000, std::as_bytes(std::span(long_guest))).has_value());

    transcript t;
    auto r = converse(cpu, t, 0xd0000000, 0x12345678);
    check_ends_with<halt>(r);
    REQUIRE(t.outs.size() == 2);
    CHECK(t.outs[0] == 0x41);
    CHECK(t.mmio_writes.at(0) == 0x5b);
    CHECK(t.outs[1] == 0x12345679);

    auto efer = cpu.get(x86_64::efer);
    REQUIRE(efer.has_value());
    CHECK(x86_64::efer_bits::lma.test(*efer));

    auto r2 = converse(cpu, t, 0xd0000000, 0);
    check_ends_with<shutdown>(r2);
}

TEST_CASE("registers written before a run are what the guest sees (sync regs, no GET/SET)") {
    // mov eax, ebx ; out dx, eax ; hlt   (BITS 16 with 0x66 operand-size prefixes)
    constexpr std::array<std::uint8_t, 6> guest{0x66, 0x89, 0xd8, 0x66, 0xef, 0xf4};
    auto m = kvm::vm_init_x86_64(small_vm(64 * 1024), x86_64::real_mode{0, 0x1000, 0});
    REQUIRE(m.has_value());
    REQUIRE(m->memory.write(0x1000, std::as_bytes(std::span(guest))).has_value());
    auto& cpu = m->vcpus.front();
    REQUIRE(cpu.set(x86_64::rbx, 0xfeedbeef).has_value());
    REQUIRE(cpu.set(x86_64::rdx, port).has_value());
    std::uint32_t seen = 0;
    auto r = cpu.run([&](port_io& io) { seen = io.value(); }, [](halt) { return action::stop; });
    check_ends_with<halt>(r);
    CHECK(seen == 0xfeedbeef);
    auto rax = cpu.get(x86_64::rax);
    REQUIRE(rax.has_value());
    CHECK(*rax == 0xfeedbeef);
}
