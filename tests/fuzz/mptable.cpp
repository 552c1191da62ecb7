// Fuzzes the MP table writer (arch/x86_64/mptable.hpp: write_mptable) with fuzzed CPU counts,
// table addresses and RAM sizes, into guest RAM with canaries around it (guest_ram.hpp).
//
// Input: u64 table address, u32 CPU count, u32 RAM size.
// Invariants: it succeeds exactly when 1 <= CPUs <= 32, the table lies below 4 GiB and inside
// RAM; then the MP floating pointer (MP spec 1.4 §4.1) and configuration table (§4.2) have
// their signatures, lengths and zero checksums, one enabled processor entry per CPU with APIC
// ids 0..n-1 and only CPU 0 the BSP, the I/O APIC with id n, 16 ISA interrupts and 2 local
// ones, all within mp::table_bytes(n) <= 1 KiB at the address; nothing around it changes. On
// failure the error names its operation and nothing is written.
#include "guest_ram.hpp"

#include <arch/x86_64/mptable.hpp>

namespace {
namespace x86 = vcpu::x86_64;
namespace mp = vcpu::x86_64::mp;

std::uint8_t sum(std::span<const std::byte> b) {
    std::uint8_t s = 0;
    for (auto x : b) s = static_cast<std::uint8_t>(s + std::to_integer<std::uint8_t>(x));
    return s;
}
} // namespace

void vcpu_fuzz::seeds(seed_set& out) {
    auto seed = [&](const char* name, std::uint64_t addr, std::uint32_t cpus, std::uint32_t ram) {
        bytes_out b;
        b.put(addr).put(cpus).put(ram);
        out.add(name, b);
    };
    seed("one_cpu", 0x9fc00, 1, 2u << 20);
    seed("two_cpus", 0x9fc00, 2, 2u << 20);
    seed("max_cpus", 0x9fc00, 32, 2u << 20);
    seed("too_many_cpus", 0x9fc00, 33, 2u << 20);
    seed("zero_cpus", 0x9fc00, 0, 2u << 20);
    seed("at_ram_end", (1u << 20) - mp::table_bytes(4), 4, 1u << 20);
    seed("past_ram_end", (1u << 20) - mp::table_bytes(4) + 1, 4, 1u << 20);
    seed("above_4g", 0x100000000ull, 1, 2u << 20);
    seed("just_below_4g", 0xffffffffull - 1024, 1, 2u << 20);
    seed("addr_wraps", ~0ull - 8, 2, 2u << 20);
    seed("no_ram", 0, 1, 0);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    vcpu_fuzz::input in(data, size);
    const auto addr = in.get<std::uint64_t>();
    const auto cpus = in.get<std::uint32_t>();
    const std::uint64_t ram = in.get<std::uint32_t>() % (vcpu_fuzz::max_backing + 1);
    vcpu_fuzz::guest_ram g(ram, 0);
    const std::size_t bytes = mp::table_bytes(cpus <= mp::max_cpus ? cpus : 0);
    // Mark the window and 64 bytes either side.
    const std::uint64_t lo = addr >= 64 ? addr - 64 : 0;
    g.mark(lo, 1024 + 128);
    const auto r = x86::write_mptable(g.mem, addr, cpus);
    VCPU_FUZZ_CHECK(g.canaries_intact());
    const bool fits = addr <= ram && bytes <= ram - addr;
    const bool valid = cpus >= 1 && cpus <= mp::max_cpus && addr <= 0xffffffffull - 1024 && fits;
    VCPU_FUZZ_CHECK(r.has_value() == valid);
    if (!r) {
        vcpu_fuzz::check_error(r.err(), {"write MP table", "write guest memory"});
        if (std::string_view(r.err().op) == "write MP table") VCPU_FUZZ_CHECK(r.err().code == EINVAL);
        VCPU_FUZZ_CHECK(g.still_marked(lo, 1024 + 128));
        vcpu_fuzz::note("mptable: %s", r.err().message().c_str());
        return 0;
    }
    vcpu_fuzz::note("mptable: %u CPUs at 0x%llx", cpus, static_cast<unsigned long long>(addr));
    VCPU_FUZZ_CHECK(bytes <= 1024);
    VCPU_FUZZ_CHECK(g.still_marked(lo, addr - lo));
    VCPU_FUZZ_CHECK(g.still_marked(addr + bytes, std::min<std::uint64_t>(1024 + 128 - (addr - lo) - bytes, ram - addr - bytes)));
    // §4.1 floating pointer.
    const auto fp = g.at(addr, mp::floating_size);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(addr) == mp::floating_signature && sum(fp) == 0);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(addr + 4) == addr + mp::floating_size);
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(addr + 8) == 1 && g.get<std::uint8_t>(addr + 9) == mp::spec_rev);
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(addr + 11) == 0); // a configuration table is present
    // §4.2 header and entries.
    const std::uint64_t c = addr + mp::floating_size;
    const auto len = g.get<std::uint16_t>(c + 4);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(c) == mp::config_signature && len == bytes - mp::floating_size);
    VCPU_FUZZ_CHECK(sum(g.at(c, len)) == 0 && g.get<std::uint8_t>(c + 6) == mp::spec_rev);
    VCPU_FUZZ_CHECK(g.get<std::uint16_t>(c + 34) == cpus + 2 + mp::isa_irqs + 2);
    VCPU_FUZZ_CHECK(g.get<std::uint32_t>(c + 36) == mp::local_apic_base);
    std::uint64_t e = c + mp::header_size;
    for (unsigned i = 0; i < cpus; ++i, e += mp::processor_size) {
        VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e) == 0 && g.get<std::uint8_t>(e + 1) == i);
        VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e + 3) == (mp::cpu_enabled | (i == 0 ? mp::cpu_bsp : 0)));
    }
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e) == 1); // bus
    e += 8;
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e) == 2 && g.get<std::uint8_t>(e + 1) == cpus && g.get<std::uint32_t>(e + 4) == mp::io_apic_base);
    e += 8;
    for (unsigned irq = 0; irq < mp::isa_irqs; ++irq, e += 8)
        VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e) == 3 && g.get<std::uint8_t>(e + 5) == irq && g.get<std::uint8_t>(e + 6) == cpus &&
                        g.get<std::uint8_t>(e + 7) == irq);
    VCPU_FUZZ_CHECK(g.get<std::uint8_t>(e) == 4 && g.get<std::uint8_t>(e + 8) == 4);
    VCPU_FUZZ_CHECK(e + 16 == addr + bytes);
    return 0;
}
