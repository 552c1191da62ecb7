// The contract "register writes made in a handler are seen by the guest" when the exit still has a
// completion pending in KVM (KVM API 4.10 KVM_RUN: IN / MMIO-read data and the skip past the
// instruction are applied at the *next* KVM_RUN). A handler answers the exit and also writes a
// register — before or after answering — and the guest reports what it got: both must arrive.
//
// Every case is a 64-bit guest at 0x100000, at CPL0 and at CPL3 (IOPL = 3). Layout:
//   mov edx, 0x10 ; xor eax, eax ; xor ebx, ebx          (prologue, 9 bytes)
//   <the access under test>                              (IN / MMIO read / rep insb ...)
//   out dx, eax                                          (report 1: what the guest read)
//   mov eax, ebx ; out dx, eax                           (report 2: RBX as the guest sees it)
//   mov dx, 0x11 ; out dx, al ; jmp $                    (done)
#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <arch/x86_64/registers.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/exits.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

namespace bench {
constexpr std::uint64_t code_gpa = 0x100000;
constexpr std::uint64_t mmio_gpa = 0x10000000; // no slot backs it

/// A VM running `code` at 0x100000 in 64-bit mode (identity-mapped), CPL3 when `user`, without
/// an in-kernel irqchip, 4 MiB of RAM.
vcpu::result<vcpu::kvm::x86_64_machine> make_guest(std::span<const std::uint8_t> code, bool user) {
    vcpu::kvm::x86_64_options o;
    o.ram_bytes = std::size_t{4} << 20;
    o.irqchip = o.pit = false;
    auto m = vcpu::kvm::vm_init_x86_64(o);
    if (!m) return m.err();
    VCPU_TRY_VOID(m->memory.write(code_gpa, std::as_bytes(code)));
    VCPU_TRY_VOID(m->vcpus[0].init(
        vcpu::x86_64::long_mode<>{&m->memory, code_gpa, 0x80000, 0x9000, 1, user}));
    return m;
}
} // namespace bench

using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

constexpr u32 answer32 = 0xa1b2c3d4;
constexpr u32 rbx_value = 0x1234;
constexpr u8 done_port = 0x11;

const std::vector<u8> prologue{0xba, 0x10, 0x00, 0x00, 0x00, // mov edx, 0x10
                               0x31, 0xc0,                   // xor eax, eax
                               0x31, 0xdb};                  // xor ebx, ebx
const std::vector<u8> epilogue{0xef,                   // out dx, eax
                               0x89, 0xd8,             // mov eax, ebx
                               0xef,                   // out dx, eax
                               0x66, 0xba, 0x11, 0x00, // mov dx, 0x11
                               0xee,                   // out dx, al
                               0xeb, 0xfe};            // jmp $

enum class guest_access { in8, in16, in32, mmio8, mmio32, insb };
enum class regwrite { rbx_after_answer, rbx_before_answer, rip_skip };

std::vector<u8> body(guest_access a) {
    switch (a) {
    case guest_access::in8: return {0xec};                                               // in al, dx
    case guest_access::in16: return {0x66, 0xed};                                        // in ax, dx
    case guest_access::in32: return {0xed};                                              // in eax, dx
    case guest_access::mmio8: return {0x8a, 0x04, 0x25, 0x00, 0x00, 0x00, 0x10};         // mov al, [0x10000000]
    case guest_access::mmio32: return {0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x10};        // mov eax, [0x10000000]
    case guest_access::insb: return {0xbf, 0x00, 0x00, 0x20, 0x00,                       // mov edi, 0x200000
                               0xb9, 0x04, 0x00, 0x00, 0x00,                       // mov ecx, 4
                               0xf3, 0x6c,                                         // rep insb
                               0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00};          // mov eax, [0x200000]
    }
    return {};
}

u32 expected_read(guest_access a) {
    switch (a) {
    case guest_access::in8:
    case guest_access::mmio8: return answer32 & 0xff;
    case guest_access::in16: return answer32 & 0xffff;
    default: return answer32;
    }
}

const char* name(guest_access a) {
    constexpr const char* n[] = {"in al", "in ax", "in eax", "mmio read 1", "mmio read 4", "rep insb"};
    return n[static_cast<int>(a)];
}
const char* name(regwrite w) {
    constexpr const char* n[] = {"RBX after the answer", "RBX before the answer", "RIP"};
    return n[static_cast<int>(w)];
}

struct outcome {
    std::vector<u32> reports;
    std::string error;
};

outcome run_case(guest_access a, regwrite w, bool user) {
    // rip_skip: a `mov al, 0x77` after the guest_access that the handler's RIP write jumps over; the
    // guest must still see the answer.
    std::vector<u8> code = prologue;
    const auto b = body(a);
    code.insert(code.end(), b.begin(), b.end());
    std::size_t skip_to = 0;
    if (w == regwrite::rip_skip) {
        // rep insb reads its data with a later mov; the skipped mov must come after the guest_access.
        const std::vector<u8> skipped{0xb0, 0x77}; // mov al, 0x77
        const std::size_t at = a == guest_access::insb ? code.size() - 7 : code.size();
        code.insert(code.begin() + static_cast<std::ptrdiff_t>(at), skipped.begin(), skipped.end());
        skip_to = at + skipped.size();
    }
    code.insert(code.end(), epilogue.begin(), epilogue.end());

    outcome o;
    auto m = bench::make_guest(code, user);
    if (!m) {
        o.error = m.err().message();
        return o;
    }
    auto& cpu = m->vcpus[0];
    auto answer = [&](auto&& set) {
        const auto write_reg = [&] {
            if (w == regwrite::rip_skip) {
                if (!cpu.set(vcpu::x86_64::rip, bench::code_gpa + skip_to)) o.error = "writing RIP failed";
            } else if (!cpu.set(vcpu::x86_64::rbx, rbx_value)) {
                o.error = "writing RBX failed";
            }
        };
        if (w == regwrite::rbx_before_answer) write_reg();
        set();
        if (w != regwrite::rbx_before_answer) write_reg();
    };
    unsigned exits = 0;
    auto r = cpu.run(
        [&](vcpu::port_io& io) {
            if (++exits > 64) return vcpu::action::stop;
            if (io.port == done_port) return vcpu::action::stop;
            if (io.is_out()) {
                o.reports.push_back(io.value());
                return vcpu::action::resume;
            }
            answer([&] {
                if (a == guest_access::insb)
                    for (u32 i = 0; i < io.count; ++i) io.set((answer32 >> (8 * i)) & 0xff, i);
                else
                    io.set(answer32);
            });
            return vcpu::action::resume;
        },
        [&](vcpu::mmio& mm) {
            if (++exits > 64 || mm.is_write() || mm.address != bench::mmio_gpa) return vcpu::action::stop;
            answer([&] { mm.set(answer32); });
            return vcpu::action::resume;
        });
    if (!r) o.error = r.err().message();
    return o;
}

} // namespace

TEST_CASE("pending I/O: a handler's register writes and its answer both reach the guest") {
    for (bool user : {false, true}) {
        for (guest_access a : {guest_access::in8, guest_access::in16, guest_access::in32, guest_access::mmio8, guest_access::mmio32,
                         guest_access::insb}) {
            for (regwrite w : {regwrite::rbx_after_answer, regwrite::rbx_before_answer,
                               regwrite::rip_skip}) {
                CAPTURE(user);
                INFO(name(a), ", ", name(w));
                const auto o = run_case(a, w, user);
                REQUIRE(o.error.empty());
                REQUIRE(o.reports.size() == 2);
                CHECK(o.reports[0] == expected_read(a));
                CHECK(o.reports[1] == (w == regwrite::rip_skip ? 0u : rbx_value));
            }
        }
    }
}
