// Suite 1, real KVM exits: framework vs raw, per exit kind, register path and guest mode.
//
// Each case runs one tiny guest loop and times, alternately in every iteration, a batch of exits
// through a plain C-style loop (ioctl(KVM_RUN) + switch on exit_reason, straight on the vCPU fd
// and kvm_run) and the same number through vcpu::basic_vcpu<arch::x86_64, kvm::hal>::run() with
// handlers, each on its own VM running the same guest. The raw loop's vCPU has
// kvm_valid_regs = 0 (KVM_SYNC_X86_REGS for the sync path), as a plain C VMM would. Counters: raw_ns, vcpu_ns (thread CPU ns per exit), ratio.
//
// Kinds: pio_out, pio_in, mmio_write, mmio_read, hlt, outsb (rep outsb, 16 bytes), insb
// (rep insb, 16 bytes), gpr (out dx, eax with eax = ebx; the handler reads RBX, checks it is the
// value sent, and writes RBX + 1; the guest sends it back on the next exit). Register paths for
// gpr: none (plain exit, no register access), sync (library default: KVM_CAP_SYNC_REGS, both
// loops use kvm_run->s.regs), getset (KVM_GET_REGS + KVM_SET_REGS per exit; the vCPU is made
// with vcpu_options{.sync_regs = 0}); and *_mirror: a plain kind whose raw loop asks KVM to
// store every block the library may sync (REGS|SREGS|EVENTS) at every exit, which shows what
// that costs (the library drops idle blocks from kvm_valid_regs). Guest modes: cpl0 and cpl3 (HLT faults at CPL3: no case).
//
// Every value the guest produces is checked (OUT data and port, MMIO address and data, string
// bytes, the register round trip; IN / MMIO-read answers are checked in the guest's RAX or memory
// after the timed loop); a mismatch is state.SkipWithError.

#include "support/guest.hpp"
#include "support/main.hpp"

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/registers.hpp>
#include <kvm/kvm.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/exits.hpp>

#include <benchmark/benchmark.h>
#include <linux/kvm.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <sys/ioctl.h>

namespace {

using namespace bench;
using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

enum class kind { pio_out, pio_in, mmio_write, mmio_read, hlt, outsb, insb, gpr };
enum class regs { none, sync, getset, mirror };

constexpr unsigned batch = 16;
constexpr u32 rbx_start = 0x12345678;

/// The guest loop of each kind (64-bit code; comments give the assembly).
std::vector<u8> code_of(kind k) {
    switch (k) {
    case kind::pio_out: return {0x66, 0xba, 0x10, 0x00, // mov dx, 0x10
                                0xb0, 0x5a,             // mov al, 0x5a
                                0xee,                   // L: out dx, al
                                0xeb, 0xfd};            //    jmp L
    case kind::pio_in: return {0x66, 0xba, 0x10, 0x00, // mov dx, 0x10
                               0xec,                   // L: in al, dx
                               0xeb, 0xfd};            //    jmp L
    case kind::mmio_write: return {0xbb, 0x00, 0x00, 0x00, 0x10, // mov ebx, 0x10000000
                                   0xb0, 0x5a,                   // mov al, 0x5a
                                   0x88, 0x03,                   // L: mov [rbx], al
                                   0xeb, 0xfc};                  //    jmp L
    case kind::mmio_read: return {0xbb, 0x00, 0x00, 0x00, 0x10, // mov ebx, 0x10000000
                                  0x8a, 0x03,                   // L: mov al, [rbx]
                                  0xeb, 0xfc};                  //    jmp L
    case kind::hlt: return {0xf4,        // L: hlt
                            0xeb, 0xfd}; //    jmp L
    case kind::outsb: return {0x66, 0xba, 0x10, 0x00,       // mov dx, 0x10
                              0xbe, 0x00, 0x00, 0x20, 0x00, // L: mov esi, 0x200000
                              0xb9, 0x10, 0x00, 0x00, 0x00, //    mov ecx, 16
                              0xf3, 0x6e,                   //    rep outsb
                              0xeb, 0xf2};                  //    jmp L
    case kind::insb: return {0x66, 0xba, 0x10, 0x00,       // mov dx, 0x10
                             0xbf, 0x00, 0x00, 0x20, 0x00, // L: mov edi, 0x200000
                             0xb9, 0x10, 0x00, 0x00, 0x00, //    mov ecx, 16
                             0xf3, 0x6c,                   //    rep insb
                             0xeb, 0xf2};                  //    jmp L
    case kind::gpr: return {0x66, 0xba, 0x10, 0x00, // mov dx, 0x10
                            0x89, 0xd8,             // L: mov eax, ebx
                            0xef,                   //    out dx, eax
                            0xeb, 0xfb};            //    jmp L
    }
    return {};
}

/// The checks are inlined into both loops alike, so that the compiler's inlining choices do not
/// make one loop's share of the common work cheaper than the other's.
#define VCPU_BENCH_INLINE [[gnu::always_inline]] inline

/// What the guest must produce, shared by the raw and framework loops (they run the same vCPU).
struct checker {
    kind k = kind::pio_out;
    regs r = regs::none;
    u64 exits = 0;
    u64 string_pos = 0;    ///< next expected byte of the rep outsb pattern
    u32 expect_rbx = rbx_start;
    u8 answer = 0, prev_answer = 0; ///< IN / MMIO-read answers (the guest completes one per entry)
    u8 insb_fill = 0, prev_insb_fill = 0;
    std::string why;

    bool fail(const char* w) {
        why = w;
        return false;
    }
    /// OUT data: port, size, count items at `p`.
    VCPU_BENCH_INLINE bool on_out(u32 port, const u8* p, u32 size, u32 count) {
        if (port != bench_port) return fail("OUT to an unexpected port");
        if (k == kind::outsb) {
            if (size != 1) return fail("rep outsb item size is not 1");
            for (u32 i = 0; i < count; ++i)
                if (p[i] != 0x41 + (string_pos++ % 16)) return fail("rep outsb bytes differ from guest memory");
            return true;
        }
        u32 v = 0;
        std::memcpy(&v, p, size <= 4 ? size : 4);
        if (k == kind::pio_out) return (size == 1 && v == (corrupt() ? 0x5bu : 0x5au)) || fail("OUT value is not 0x5a");
        if (k == kind::gpr) return (size == 4 && v == expect_rbx) || fail("OUT eax differs from the RBX the handler wrote");
        return fail("unexpected OUT");
    }
    /// IN answer into `p` (size * count bytes).
    VCPU_BENCH_INLINE bool on_in(u8* p, u32 size, u32 count) {
        if (k == kind::insb) {
            if (count != 16) return fail("rep insb did not exit once per 16 bytes");
            prev_insb_fill = insb_fill;
            insb_fill = static_cast<u8>(0xa0 + (exits % 16));
            std::memset(p, insb_fill, std::size_t{size} * count);
            return true;
        }
        if (k != kind::pio_in || size != 1 || count != 1) return fail("unexpected IN");
        prev_answer = answer;
        answer = static_cast<u8>(exits * 7 + 1);
        *p = answer;
        return true;
    }
    VCPU_BENCH_INLINE bool on_mmio(u64 addr, u8* data, u32 len, bool write) {
        if (addr != mmio_gpa || len != 1) return fail("MMIO access at an unexpected address or size");
        if (write) return (k == kind::mmio_write && data[0] == (corrupt() ? 0x5b : 0x5a)) || fail("MMIO write value is not 0x5a");
        if (k != kind::mmio_read) return fail("unexpected MMIO read");
        prev_answer = answer;
        answer = static_cast<u8>(exits * 7 + 3);
        data[0] = answer;
        return true;
    }
    VCPU_BENCH_INLINE bool on_halt() { return k == kind::hlt || fail("unexpected HLT"); }
    /// The handler's register step (gpr kind with a register path): `rbx` as read.
    VCPU_BENCH_INLINE u32 next_rbx(u64 rbx) {
        if (static_cast<u32>(rbx) != expect_rbx) {
            why = "RBX read back differs from the value written";
            return 0;
        }
        return ++expect_rbx;
    }
};

// Both batch functions stay out of line: they are the unit scripts/bench's callgrind run counts.
template <kind K, regs R>
[[gnu::noinline]] bool raw_batch(int fd, ::kvm_run* run, checker& c) {
    for (unsigned i = 0; i < batch; ++i) {
        if (::ioctl(fd, KVM_RUN, 0) < 0) return c.fail("KVM_RUN failed");
        ++c.exits;
        auto* base = reinterpret_cast<u8*>(run);
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                if constexpr (K == kind::gpr && (R == regs::sync || R == regs::getset)) {
                    // Read RBX, check it against the value sent, write RBX + 1.
                    u64 rbx = 0;
                    ::kvm_regs g{};
                    if constexpr (R == regs::sync) {
                        rbx = run->s.regs.regs.rbx;
                    } else {
                        if (::ioctl(fd, KVM_GET_REGS, &g) < 0) return c.fail("KVM_GET_REGS failed");
                        rbx = g.rbx;
                    }
                    if (!c.on_out(run->io.port, base + run->io.data_offset, run->io.size, run->io.count))
                        return false;
                    const u32 next = c.next_rbx(rbx);
                    if (next == 0) return false;
                    if constexpr (R == regs::sync) {
                        run->s.regs.regs.rbx = next;
                        run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
                    } else {
                        g.rbx = next;
                        if (::ioctl(fd, KVM_SET_REGS, &g) < 0) return c.fail("KVM_SET_REGS failed");
                    }
                } else if (!c.on_out(run->io.port, base + run->io.data_offset, run->io.size, run->io.count)) {
                    return false;
                }
            } else if (!c.on_in(base + run->io.data_offset, run->io.size, run->io.count)) {
                return false;
            }
            break;
        case KVM_EXIT_MMIO:
            if (!c.on_mmio(run->mmio.phys_addr, run->mmio.data, run->mmio.len, run->mmio.is_write != 0))
                return false;
            break;
        case KVM_EXIT_HLT:
            if (!c.on_halt()) return false;
            break;
        default: return c.fail("unexpected exit reason");
        }
    }
    return true;
}

template <kind K, regs R>
[[gnu::noinline]] bool vcpu_batch(cpu_t& cpu, checker& c) {
    unsigned n = 0;
    bool ok = true;
    auto done = [&]() noexcept { return ++n == batch || !ok ? vcpu::action::stop : vcpu::action::resume; };
    auto r = cpu.run(
        [&](vcpu::port_io& io) noexcept {
            ++c.exits;
            auto* p = reinterpret_cast<u8*>(io.data.data());
            if (io.is_out()) {
                if constexpr (K == kind::gpr && (R == regs::sync || R == regs::getset)) {
                    auto rbx = cpu.get(vcpu::x86_64::rbx);
                    if (!rbx) ok = c.fail("reading RBX failed");
                    else if (!c.on_out(io.port, p, io.size, io.count)) ok = false;
                    else if (const u32 next = c.next_rbx(*rbx); next == 0) ok = false;
                    else if (!cpu.set(vcpu::x86_64::rbx, next)) ok = c.fail("writing RBX failed");
                } else {
                    ok = c.on_out(io.port, p, io.size, io.count);
                }
            } else {
                ok = c.on_in(p, io.size, io.count);
            }
            return done();
        },
        [&](vcpu::mmio& m) noexcept {
            ++c.exits;
            ok = c.on_mmio(m.address, reinterpret_cast<u8*>(m.data.data()), m.size, m.is_write());
            return done();
        },
        [&](vcpu::halt&) noexcept {
            ++c.exits;
            ok = c.on_halt();
            return done();
        });
    if (!r) return c.fail("KVM_RUN failed");
    if (!ok) return false;
    if (n != batch) return c.fail("an exit nobody handles came back");
    return true;
}

/// After timing: the answers the guest completed (IN / MMIO read in AL, rep insb in memory).
bool check_guest_state(kind k, machine& m, checker& c) {
    ::kvm_regs g{};
    if (!get_regs(m.vcpus[0].hal().fd(), g)) return c.fail("KVM_GET_REGS failed");
    if (k == kind::pio_in || k == kind::mmio_read) {
        // The last exit's answer is completed at the next entry: AL holds the one before.
        if (static_cast<u8>(g.rax) != c.prev_answer) return c.fail("the guest did not receive the answer");
    }
    if (k == kind::insb) {
        std::byte b{};
        if (!m.memory.read(data_gpa + 15, std::span<std::byte>(&b, 1)) ||
            std::to_integer<u8>(b) != c.prev_insb_fill) // completed at the next entry
            return c.fail("rep insb data did not reach guest memory");
    }
    return true;
}

/// One side of a pair: its own VM and vCPU running the same guest, and its own checker.
template <kind K, regs R>
struct side {
    std::optional<machine> m;
    checker c = make_checker();
    static checker make_checker() {
        checker x;
        x.k = K;
        x.r = R;
        return x;
    }
    std::string error;

    side(bool user, vcpu::kvm::vcpu_options opt) {
        const auto code = code_of(K);
        auto g = make_guest(code, user, opt);
        if (!g) {
            error = g.err().message();
            return;
        }
        m.emplace(std::move(*g));
        if (auto e = cpu().set(vcpu::x86_64::rbx, rbx_start); !e) error = e.err().message();
    }
    cpu_t& cpu() { return m->vcpus[0]; }
};

template <kind K, regs R, bool User>
void BM_exit(benchmark::State& state) {
    // Two VMs running the same guest: the raw loop owns one vCPU, the framework the other, so
    // neither sees the other's register caches or pending writes.
    vcpu::kvm::vcpu_options fw_opt;
    if (R == regs::getset) fw_opt.sync_regs = 0;
    side<K, R> raw(User, {}), fw(User, fw_opt);
    if (!raw.error.empty() || !fw.error.empty()) {
        state.SkipWithError((raw.error + fw.error).c_str());
        return;
    }
    const int fd = raw.cpu().hal().fd();
    ::kvm_run* run = raw.cpu().hal().run();
    // The raw loop's first entry must apply the initial state the library staged in kvm_run
    // (sync regs); after that it uses only what a plain C VMM uses.
    if (!vcpu_batch<K, R>(raw.cpu(), raw.c)) {
        state.SkipWithError(raw.c.why.c_str());
        return;
    }
    run->kvm_valid_regs = R == regs::sync ? KVM_SYNC_X86_REGS : 0;
    // mirror: the raw loop asks KVM to store every block the library may sync.
    if (R == regs::mirror) run->kvm_valid_regs = fw.cpu().hal().sync_mask();
    if (!raw_batch<K, R>(fd, run, raw.c) || !vcpu_batch<K, R>(fw.cpu(), fw.c)) {
        state.SkipWithError((raw.c.why + fw.c.why).c_str());
        return;
    }
    std::string why;
    paired(
        state, batch,
        [&] {
            const bool ok = raw_batch<K, R>(fd, run, raw.c);
            if (!ok) why = "raw loop: " + raw.c.why;
            return ok;
        },
        [&] {
            const bool ok = vcpu_batch<K, R>(fw.cpu(), fw.c);
            if (!ok) why = "basic_vcpu: " + fw.c.why;
            return ok;
        },
        why);
    if (!why.empty()) return; // reported by paired()
    if (!check_guest_state(K, *raw.m, raw.c) || !check_guest_state(K, *fw.m, fw.c)) {
        state.SkipWithError((raw.c.why + fw.c.why).c_str());
        return;
    }
    if (K == kind::outsb || K == kind::insb) state.counters["bytes_per_exit"] = 16;
}

/// The cost of touching a GPR, framework only: the same guest on two VMs, handlers that read and
/// write RBX through the library's default path (sync regs) vs handlers that touch no register,
/// timed alternately. Counters: raw_ns = plain, vcpu_ns = GPR-touching, ratio = GPR / plain.
template <bool User>
void BM_gpr_cost(benchmark::State& state) {
    side<kind::gpr, regs::none> plain(User, {});
    side<kind::gpr, regs::sync> gpr(User, {});
    if (!plain.error.empty() || !gpr.error.empty()) {
        state.SkipWithError((plain.error + gpr.error).c_str());
        return;
    }
    if (!vcpu_batch<kind::gpr, regs::none>(plain.cpu(), plain.c) ||
        !vcpu_batch<kind::gpr, regs::sync>(gpr.cpu(), gpr.c)) {
        state.SkipWithError((plain.c.why + gpr.c.why).c_str());
        return;
    }
    std::string why;
    paired(
        state, batch,
        [&] {
            const bool ok = vcpu_batch<kind::gpr, regs::none>(plain.cpu(), plain.c);
            if (!ok) why = "plain: " + plain.c.why;
            return ok;
        },
        [&] {
            const bool ok = vcpu_batch<kind::gpr, regs::sync>(gpr.cpu(), gpr.c);
            if (!ok) why = "GPR: " + gpr.c.why;
            return ok;
        },
        why);
}

/// VCPU_BENCH_ITERATIONS=n runs every case exactly n iterations (scripts/bench counts the
/// userspace instructions per exit of both loops under callgrind with it).
template <kind K, regs R = regs::none>
void reg(const char* name) {
    const std::string base = std::string("exits/") + name;
    const char* fixed = std::getenv("VCPU_BENCH_ITERATIONS");
    auto add = [&](const std::string& n, void (*fn)(benchmark::State&)) {
        auto* b = benchmark::RegisterBenchmark(n.c_str(), fn)->UseRealTime();
        if (fixed != nullptr) b->Iterations(std::atoll(fixed));
    };
    add(base + "/cpl0", BM_exit<K, R, false>);
    if constexpr (K != kind::hlt) // HLT at CPL3 is #GP
        add(base + "/cpl3", BM_exit<K, R, true>);
}

[[maybe_unused]] const bool registered = [] {
    reg<kind::pio_out>("pio_out");
    reg<kind::pio_in>("pio_in");
    reg<kind::mmio_write>("mmio_write");
    reg<kind::mmio_read>("mmio_read");
    reg<kind::hlt>("hlt");
    reg<kind::outsb>("outsb");
    reg<kind::insb>("insb");
    reg<kind::gpr, regs::none>("gpr_none");
    reg<kind::gpr, regs::sync>("gpr_sync");
    reg<kind::gpr, regs::getset>("gpr_getset");
    reg<kind::pio_out, regs::mirror>("pio_out_mirror");
    reg<kind::mmio_write, regs::mirror>("mmio_write_mirror");
    benchmark::RegisterBenchmark("gpr_cost/cpl0", BM_gpr_cost<false>)->UseRealTime();
    benchmark::RegisterBenchmark("gpr_cost/cpl3", BM_gpr_cost<true>)->UseRealTime();
    return true;
}();

} // namespace

VCPU_BENCH_MAIN(true)
