// custom_arch: plugging your own architecture and HAL policies into vcpu.
//
// "toy" is an accumulator machine with four instructions, and toy_hal runs
// it in-process (an interpreter standing in for a hardware entry path). Both
// are plain types checked by the library's concepts; basic_vcpu composes them
// exactly as it composes arch::x86_64 with kvm::hal — same run loop, same
// handlers, no virtual functions. Also the compiled example for the
// RegisterFile / ExitDecoder / HalFor / CpuInitFor documentation.

#include <vcpu/vcpu.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <tuple>
#include <variant>

namespace toy {

// ---- the architecture ---------------------------------------------------
struct core_layout {
    std::uint64_t pc = 0, acc = 0;
};
struct core_block {
    using layout = core_layout;
    static constexpr std::string_view name = "core";
};
inline constexpr vcpu::block_reg<core_block, std::uint64_t> program_counter{"pc", offsetof(core_layout, pc)};
inline constexpr vcpu::block_reg<core_block, std::uint64_t> acc{"acc", offsetof(core_layout, acc)};

enum class op : std::uint8_t { out, in, add, halt };
struct insn {
    op code;
    std::uint16_t arg;
};

/// The raw exit record the toy HAL produces (its "kvm_run").
struct trap {
    op code = op::halt;
    std::uint16_t port = 0;
    std::span<std::byte> data; ///< the accumulator's low byte
};

struct arch {
    using register_blocks = vcpu::type_list<core_block>;
    using keyed_banks = vcpu::type_list<>;
    static constexpr bool uses_one_reg = false;
    static constexpr auto registers = std::make_tuple(program_counter, acc);
    static constexpr unsigned gpr_count = 1;
    static constexpr auto gpr(unsigned) noexcept { return acc; }
    static constexpr auto pc = program_counter;
    using exit_types = vcpu::type_list<vcpu::port_io, vcpu::halt>;

    template <class Visitor>
    static void decode(const trap& r, Visitor&& visit) noexcept {
        if (r.code == op::halt) {
            vcpu::halt h{};
            visit(h);
            return;
        }
        vcpu::port_io io{r.port, 1, 1, r.code == op::in ? vcpu::direction::in : vcpu::direction::out,
                         r.data};
        visit(io);
    }
};

// ---- the HAL: an interpreter -------------------------------------------
struct hal {
    template <class Arch>
    class vcpu {
    public:
        using raw_exit = trap;
        explicit vcpu(std::span<const insn> program) noexcept : program_(program) {}

        [[nodiscard]] ::vcpu::result<void> enter() noexcept {
            if (pending_in_) core_.acc = std::to_integer<std::uint8_t>(byte_); // IN completes
            pending_in_ = false;
            while (core_.pc < program_.size()) {
                const insn i = program_[core_.pc++];
                switch (i.code) {
                case op::add: core_.acc += i.arg; break;
                case op::out:
                    byte_ = static_cast<std::byte>(core_.acc);
                    last_ = {op::out, i.arg, {&byte_, 1}};
                    return ::vcpu::ok();
                case op::in:
                    pending_in_ = true;
                    last_ = {op::in, i.arg, {&byte_, 1}};
                    return ::vcpu::ok();
                case op::halt: last_ = {op::halt, 0, {}}; return ::vcpu::ok();
                }
            }
            return ::vcpu::error{"toy enter", EFAULT, "pc ran off the program"};
        }
        [[nodiscard]] raw_exit exit_record() noexcept { return last_; }

        template <class B>
        [[nodiscard]] ::vcpu::result<const core_layout*> load() noexcept { return &core_; }
        template <class B>
        [[nodiscard]] ::vcpu::result<core_layout*> modify() noexcept { return &core_; }

    private:
        std::span<const insn> program_;
        core_layout core_{};
        std::byte byte_{};
        bool pending_in_ = false;
        trap last_{};
    };
};

/// A boot-state policy: start at instruction `entry`, accumulator `a`.
struct start_at {
    std::uint64_t entry = 0, a = 0;
    template <class Cpu>
    [[nodiscard]] vcpu::result<void> apply(Cpu& cpu) const noexcept {
        if (auto r = cpu.set(program_counter, entry); !r) return r;
        return cpu.set(acc, a);
    }
};

} // namespace toy

// The library's concepts accept the user's policies...
using toy_arch = toy::arch;
static_assert(vcpu::RegisterFile<toy_arch>);
static_assert(vcpu::ExitDecoder<toy_arch, toy::trap>);
static_assert(vcpu::HalFor<toy::hal, toy_arch>);
static_assert(vcpu::CpuInitFor<toy::start_at, vcpu::basic_vcpu<toy_arch, toy::hal>>);
// ... and adds nothing to them but one "exit pending" flag.
static_assert(std::is_empty_v<toy_arch> && std::is_empty_v<toy::hal>);
static_assert(sizeof(vcpu::basic_vcpu<toy_arch, toy::hal>) <=
              sizeof(toy::hal::vcpu<toy_arch>) + alignof(toy::hal::vcpu<toy_arch>));

int main() {
    using toy::insn, toy::op;
    // Reads a byte from port 1, adds 1, writes it to port 2, prints "hi" on port 3.
    static constexpr std::array<insn, 10> program{{{op::in, 1},
                                                  {op::add, 1},
                                                  {op::out, 2},
                                                  {op::add, 'h' - 42},
                                                  {op::out, 3},
                                                  {op::add, 'i' - 'h'},
                                                  {op::out, 3},
                                                  {op::add, '\n' - 'i' + 256},
                                                  {op::out, 3},
                                                   {op::halt, 0}}};
    vcpu::basic_vcpu<toy_arch, toy::hal> cpu{toy::hal::vcpu<toy_arch>{program}};
    if (!cpu.init(toy::start_at{0, 0})) return 1;

    std::string console;
    unsigned port2 = 0;
    auto last = cpu.run(
        [&](vcpu::port_io& io) {
            if (io.is_in()) io.set(41);
            else if (io.port == 2) port2 = io.value();
            else console += static_cast<char>(io.value());
        },
        [](vcpu::halt) { return vcpu::action::stop; });
    if (!last) {
        std::printf("custom_arch: %s\n", last.err().message().c_str());
        return 1;
    }
    // Only `halt` can come back: port I/O is always handled. The type says so.
    static_assert(std::is_same_v<std::remove_cvref_t<decltype(*last)>, std::variant<vcpu::halt>>);
    std::printf("toy guest wrote %u to port 2, printed \"hi\" and halted: %s", port2,
                console.c_str());
    const auto final_acc = cpu.get(toy::acc);
    return (port2 == 42 && console == "hi\n" && final_acc && (*final_acc & 0xff) == '\n') ? 0 : 1;
}
