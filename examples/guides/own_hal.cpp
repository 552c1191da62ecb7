// own_hal: a HAL that is not KVM, for docs/guides/writing-a-hal.md. `interp::hal` runs
// real-mode x86 code by interpreting six instructions itself (a stand-in for any other way of
// entering a guest: a bare-metal VMX root, an emulator, a remote machine). It keeps the
// registers of `vcpu::arch::x86_64` in the arch's own block layouts and MSR bank, stops with a
// raw exit record of its own (`interp::stop`), and teaches the library to decode that record by
// specializing `vcpu::exit_decoder`. Nothing here includes <linux/kvm.h>.

#include <arch/x86_64/arch.hpp>
#include <arch/x86_64/init.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/decoder.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <tuple>
#include <variant>

namespace interp {

namespace x86 = vcpu::x86_64;

/// This HAL's raw exit record: why the interpreter stopped.
struct stop {
    enum class why : std::uint8_t { port_in, port_out, halt, bad_opcode };
    why what = why::halt;
    std::uint16_t port = 0;      ///< port_in / port_out: DX
    std::uint8_t opcode = 0;     ///< bad_opcode: the byte it could not run
    std::span<std::byte> data;   ///< port_in / port_out: AL, inside the HAL
};

struct hal {
    template <class Arch>
    class vcpu {
        static_assert(std::is_same_v<Arch, ::vcpu::arch::x86_64>, "interp::hal runs x86-64 only");

    public:
        using raw_exit = stop;
        explicit vcpu(std::span<std::byte> ram) noexcept : ram_(ram) {}

        /// Runs until the next exit. An IN stopped at the previous exit completes first: the
        /// byte the handler put into `data` becomes AL, as KVM completes it at the next KVM_RUN.
        [[nodiscard]] ::vcpu::result<void> enter() noexcept {
            auto& r = std::get<x86::regs_layout>(blocks_);
            const auto& s = std::get<x86::sregs_layout>(blocks_);
            if (last_.what == stop::why::port_in) r.rax = (r.rax & ~0xffull) | std::to_integer<std::uint8_t>(al_);
            for (;;) {
                const std::uint64_t at = s.cs.base + (r.rip & 0xffff);
                if (at + 3 > ram_.size()) return ::vcpu::error{"interp fetch", EFAULT, "code outside RAM"};
                const auto byte = [&](unsigned i) { return std::to_integer<std::uint8_t>(ram_[at + i]); };
                const std::uint16_t dx = r.rdx & 0xffff;
                switch (byte(0)) {
                case 0xb0: r.rax = (r.rax & ~0xffull) | byte(1); r.rip += 2; continue;        // mov al, imm8
                case 0xba: r.rdx = (r.rdx & ~0xffffull) | byte(1) | byte(2) << 8; r.rip += 3; continue; // mov dx, imm16
                case 0xfe:                                                                    // inc al
                    if (byte(1) != 0xc0) break;
                    r.rax = (r.rax & ~0xffull) | ((r.rax + 1) & 0xff);
                    r.rip += 2;
                    continue;
                case 0xee:                                                                    // out dx, al
                    al_ = static_cast<std::byte>(r.rax & 0xff);
                    r.rip += 1;
                    last_ = {stop::why::port_out, dx, 0, {&al_, 1}};
                    return {};
                case 0xec:                                                                    // in al, dx
                    al_ = std::byte{0};
                    r.rip += 1;
                    last_ = {stop::why::port_in, dx, 0, {&al_, 1}};
                    return {};
                case 0xf4: r.rip += 1; last_ = {stop::why::halt, 0, 0, {}}; return {};        // hlt
                default: break;
                }
                last_ = {stop::why::bad_opcode, 0, byte(0), {}};
                return {};
            }
        }
        [[nodiscard]] stop exit_record() noexcept { return last_; }

        // Register movers: one load/modify pair for every block in Arch::register_blocks, and
        // get/set_keyed for its one keyed bank (MSRs). Arch::uses_one_reg is false: no ONE_REG.
        template <class B>
        [[nodiscard]] ::vcpu::result<const typename B::layout*> load() noexcept {
            return &std::get<typename B::layout>(blocks_);
        }
        template <class B>
        [[nodiscard]] ::vcpu::result<typename B::layout*> modify() noexcept {
            return &std::get<typename B::layout>(blocks_);
        }
        template <class Bank>
        [[nodiscard]] ::vcpu::result<std::uint64_t> get_keyed(std::uint64_t index) noexcept {
            for (const auto& m : msrs_)
                if (m.used && m.index == index) return m.value;
            return ::vcpu::error{"interp rdmsr", ENOENT}.with_hex("msr", index);
        }
        template <class Bank>
        [[nodiscard]] ::vcpu::result<void> set_keyed(std::uint64_t index, std::uint64_t value) noexcept {
            for (auto& m : msrs_)
                if (!m.used || m.index == index) {
                    m = {true, index, value};
                    return {};
                }
            return ::vcpu::error{"interp wrmsr", ENOSPC, "MSR table full"};
        }

    private:
        struct msr {
            bool used = false;
            std::uint64_t index = 0, value = 0;
        };
        std::span<std::byte> ram_;
        std::tuple<x86::regs_layout, x86::sregs_layout, x86::events_layout, x86::debugregs_layout> blocks_{};
        std::array<msr, 8> msrs_{};
        std::byte al_{};
        stop last_{};
    };
};

} // namespace interp

/// How x86-64 decodes this HAL's record. `basic_vcpu::run` calls this for every exit; the
/// visitor is the handler dispatch, inlined here.
template <>
struct vcpu::exit_decoder<vcpu::arch::x86_64, interp::stop> {
    template <class Visitor>
    static void decode(const interp::stop& s, Visitor&& visit) noexcept {
        using why = interp::stop::why;
        switch (s.what) {
        case why::port_in:
        case why::port_out: {
            port_io io{s.port, 1, 1, s.what == why::port_in ? direction::in : direction::out, s.data};
            visit(io);
            return;
        }
        case why::halt: {
            halt h{};
            visit(h);
            return;
        }
        case why::bad_opcode: break;
        }
        unknown u{s.opcode, 0};
        visit(u);
    }
};

// The HAL models HalFor<interp::hal, arch::x86_64>, step by step.
using interp_vcpu = interp::hal::vcpu<vcpu::arch::x86_64>;
static_assert(vcpu::HasVcpuState<interp::hal, vcpu::arch::x86_64>);
static_assert(vcpu::EntersGuest<interp_vcpu>);
static_assert(vcpu::MovesArchRegisters<interp_vcpu, vcpu::arch::x86_64>);
static_assert(vcpu::DecodesRecord<vcpu::arch::x86_64, interp::stop>);
static_assert(vcpu::HalFor<interp::hal, vcpu::arch::x86_64>);
// Boot states that need more of a HAL than the register movers name it as a concept of their own:
// cpuid_setup<> needs x86_64::CpuidHal (supported_cpuid, set_cpuid), which this HAL does not
// model, so it boots with real_mode only.
static_assert(!vcpu::x86_64::CpuidHal<interp_vcpu>);

// A HAL that can enter but moves no registers fails exactly one step: basic_vcpu<x86_64, H>
// would stop compiling with "Hal::vcpu<Arch> cannot move every register kind Arch declares".
struct enter_only_hal {
    template <class Arch>
    struct vcpu {
        using raw_exit = interp::stop;
        ::vcpu::result<void> enter() noexcept { return {}; }
        raw_exit exit_record() noexcept { return {}; }
    };
};
static_assert(vcpu::EntersGuest<enter_only_hal::vcpu<vcpu::arch::x86_64>>);
static_assert(!vcpu::MovesArchRegisters<enter_only_hal::vcpu<vcpu::arch::x86_64>, vcpu::arch::x86_64>);
static_assert(!vcpu::HalFor<enter_only_hal, vcpu::arch::x86_64>);

int main() {
    // mov dx, 0x10; in al, dx; out dx, al; inc al; out dx, al; mov al, 10; out dx, al; hlt
    std::array<std::byte, 0x2000> ram{};
    constexpr std::array<std::uint8_t, 13> code{0xba, 0x10, 0x00, 0xec, 0xee, 0xfe, 0xc0,
                                                0xee, 0xb0, 0x0a, 0xee, 0xf4, 0x00};
    for (std::size_t i = 0; i < code.size(); ++i) ram[0x1000 + i] = std::byte{code[i]};

    vcpu::basic_vcpu<vcpu::arch::x86_64, interp::hal> cpu{interp::hal::vcpu<vcpu::arch::x86_64>(ram)};
    if (!cpu.init(vcpu::x86_64::real_mode{0, 0x1000, 0})) return 1; // the same policy as on KVM
    if (!cpu.set(vcpu::x86_64::ia32_tsc, 1234)) return 1;         // an MSR, through the keyed bank

    std::string out;
    auto last = cpu.run(
        [&](vcpu::port_io& io) {
            if (io.is_in()) io.set('h');
            else out += static_cast<char>(io.value());
        },
        [](vcpu::halt) { return vcpu::action::stop; });
    if (!last) {
        std::printf("own_hal: %s\n", last.err().message().c_str());
        return 1;
    }
    const auto rip = cpu.get(vcpu::x86_64::rip);
    const auto tsc = cpu.get(vcpu::x86_64::ia32_tsc);
    const bool ok = std::holds_alternative<vcpu::halt>(*last) && out == "hi\n" && rip && *rip == 0x100c &&
                    tsc && *tsc == 1234;
    std::printf("interpreter HAL: guest printed \"hi\", halted at rip 0x%llx: %s\n",
                rip ? static_cast<unsigned long long>(*rip) : 0ull, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
