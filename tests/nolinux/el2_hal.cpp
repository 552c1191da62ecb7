// A HAL that is not Linux KVM, compiled with <linux/kvm.h> unavailable: a bare-metal EL2
// hypervisor's exit path, modelled by a scripted trap source. Its raw exit record is its own
// type (`el2_exit`); it decodes through the arch's ISA-level ESR_EL2 decoder by specializing
// `vcpu::exit_decoder` here, without touching include/arch/ or include/kvm/.
#include <arch/aarch64/arch.hpp>
#include <arch/aarch64/psci.hpp>
#include <vcpu/basic_vcpu.hpp>
#include <vcpu/decoder.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>

namespace a64 = vcpu::aarch64;

namespace el2 {

/// What this HAL's exit path saves: the syndrome registers and the guest's X0-X30.
struct el2_exit {
    std::uint64_t esr = 0, far = 0, hpfar = 0;
    a64::gpr_frame* frame = nullptr;
};

/// One scripted guest exit.
struct trap {
    std::uint64_t esr, far, hpfar;
    unsigned reg;        ///< the register the guest set before trapping ...
    std::uint64_t value; ///< ... to this value
};

struct hal {
    template <class Arch>
    class vcpu {
    public:
        using raw_exit = el2_exit;
        explicit vcpu(std::span<const trap> script) noexcept : script_(script) {}

        [[nodiscard]] ::vcpu::result<void> enter() noexcept {
            if (next_ > 0) a64::complete_mmio_read(syndrome()); // what the EL2 HAL does on return
            if (next_ >= script_.size()) return ::vcpu::error{"el2 eret", ENODATA};
            const trap& t = script_[next_++];
            last_ = t;
            frame_.x[t.reg] = t.value;
            return {};
        }
        [[nodiscard]] raw_exit exit_record() noexcept { return {last_.esr, last_.far, last_.hpfar, &frame_}; }

        [[nodiscard]] ::vcpu::result<void> get_one_reg(std::uint64_t id, std::span<std::byte> out) noexcept {
            const auto* slot = find(id);
            if (slot == nullptr || out.size() != 8) return ::vcpu::error{"el2 get reg", ENOENT};
            std::memcpy(out.data(), slot, 8);
            return {};
        }
        [[nodiscard]] ::vcpu::result<void> set_one_reg(std::uint64_t id, std::span<const std::byte> in) noexcept {
            auto* slot = find(id);
            if (slot == nullptr || in.size() != 8) return ::vcpu::error{"el2 set reg", ENOENT};
            std::memcpy(slot, in.data(), 8);
            return {};
        }
        [[nodiscard]] std::uint64_t x(unsigned i) const noexcept { return frame_.x[i]; }

    private:
        [[nodiscard]] a64::el2_syndrome syndrome() noexcept {
            return {last_.esr, last_.far, last_.hpfar, &frame_, a64::el2_vector::sync, 0};
        }
        /// X0-X30 live in the saved frame; other ids are not kept by this HAL.
        [[nodiscard]] ::vcpu::record_u64* find(std::uint64_t id) noexcept {
            for (unsigned i = 0; i < 31; ++i)
                if (a64::xregs[i].id == id) return &frame_.x[i];
            return nullptr;
        }
        std::span<const trap> script_;
        std::size_t next_ = 0;
        trap last_{};
        a64::gpr_frame frame_{};
    };
};

} // namespace el2

/// The whole extension: this HAL's record decodes as an EL2 syndrome.
template <>
struct vcpu::exit_decoder<vcpu::arch::aarch64, el2::el2_exit> {
    template <class Visitor>
    static void decode(const el2::el2_exit& e, Visitor&& visit) noexcept {
        aarch64::decode(aarch64::el2_syndrome{e.esr, e.far, e.hpfar, e.frame, aarch64::el2_vector::sync, 0},
                        static_cast<Visitor&&>(visit));
    }
};

static_assert(vcpu::HalFor<el2::hal, vcpu::arch::aarch64>);

namespace {

int failures = 0;
void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "FAIL: %s\n", what);
        ++failures;
    }
}

/// ESR_EL2 of a data abort from a lower EL with a valid syndrome (ISV = 1).
constexpr std::uint64_t dabt(unsigned sas, unsigned srt, bool write) {
    namespace d = a64::esr::dabt;
    const std::uint64_t iss = d::isv.bits(1) | d::sas.bits(sas) | d::srt.bits(srt) | d::sf.bits(1) |
                              d::wnr.bits(write ? 1 : 0) | d::dfsc.bits(0x07);
    return a64::esr::make(a64::exception_class::dabt_low, static_cast<std::uint32_t>(iss));
}
/// ESR_EL2 of an HVC #0.
constexpr std::uint64_t hvc0 = a64::esr::make(a64::exception_class::hvc64, 0);

} // namespace

int main() {
    constexpr std::uint64_t uart = 0x0900'0000;
    // HPFAR_EL2 holds IPA[47:12] in bits [43:4]; FAR_EL2 gives the page offset.
    const std::array<el2::trap, 4> script{{
        {dabt(2, 3, true), uart + 0x10, (uart >> 12) << 4, 3, 0x1234'5678}, // str w3, [uart+0x10]
        {dabt(0, 2, false), uart + 0x18, (uart >> 12) << 4, 2, 0xdead},      // ldrb w2, [uart+0x18]
        {hvc0, 0, 0, 0, a64::psci::id32(a64::psci::function::system_off)}, // PSCI SYSTEM_OFF
        {a64::esr::make(a64::exception_class::wfx, 0), 0, 0, 0, 0},          // wfi (not reached)
    }};
    vcpu::basic_vcpu<vcpu::arch::aarch64, el2::hal> cpu{el2::hal::vcpu<vcpu::arch::aarch64>(script)};

    std::uint64_t written = 0, write_addr = 0, read_addr = 0;
    bool powered_off = false;
    auto r = cpu.run(
        [&](vcpu::mmio& m) {
            if (m.dir == vcpu::direction::out) {
                write_addr = m.address;
                written = m.value();
            } else {
                read_addr = m.address;
                m.set(0x41);
            }
        },
        [&](vcpu::system_event& e) {
            powered_off = e.what == vcpu::system_event::kind::power_off;
            return vcpu::action::stop;
        },
        [](vcpu::halt&) { return vcpu::action::stop; });
    check(r.has_value(), "run() succeeds");
    check(write_addr == uart + 0x10 && written == 0x1234'5678, "the MMIO store carries W3 and the IPA");
    check(read_addr == uart + 0x18, "the MMIO load has the IPA");
    check(cpu.hal().x(2) == 0x41, "the load's answer lands in X2 (zero-extended byte)");
    check(powered_off, "PSCI SYSTEM_OFF through HVC is a power-off system event");
    auto x2 = cpu.get(a64::xregs[2]);
    check(x2.has_value() && *x2 == 0x41, "the register file reads X2 through this HAL's ONE_REG path");
    if (failures == 0) std::puts("el2 HAL: 3 exits decoded through exit_decoder<aarch64, el2_exit>, no Linux headers");
    return failures == 0 ? 0 : 1;
}
