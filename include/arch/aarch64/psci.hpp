#pragma once
/// \file
/// PSCI function identifiers and return codes (Arm Power State Coordination
/// Interface, ARM DEN 0022, §5 "PSCI function definitions", Table 5-1 and
/// §5.2.2 "Return error codes"), called through the SMC Calling Convention
/// (ARM DEN 0028: W0 = function id, X1-X3 arguments, X0 result).

#include <vcpu/config.hpp>

#include <cstdint>
#include <optional>
#include <string_view>

namespace vcpu::aarch64::psci {

/// SMCCC function-id bits (ARM DEN 0028, §2.5 "Function Identifiers").
inline constexpr std::uint32_t fast_call = 1u << 31;   ///< bit 31: fast call
inline constexpr std::uint32_t smc64 = 1u << 30;       ///< bit 30: SMC64/HVC64 convention
inline constexpr std::uint32_t owner_shift = 24;        ///< bits [29:24]: service owner
inline constexpr std::uint32_t owner_standard = 4;     ///< standard secure service (PSCI)

/// PSCI functions (DEN 0022 Table 5-1). The value is the function number
/// (bits [15:0]); `id32`/`id64` give the full SMC32/SMC64 function ids.
enum class function : std::uint8_t {
    version = 0x00,
    cpu_suspend = 0x01,
    cpu_off = 0x02,
    cpu_on = 0x03,
    affinity_info = 0x04,
    migrate = 0x05,
    migrate_info_type = 0x06,
    migrate_info_up_cpu = 0x07,
    system_off = 0x08,
    system_reset = 0x09,
    features = 0x0a,
    cpu_freeze = 0x0b,
    cpu_default_suspend = 0x0c,
    node_hw_state = 0x0d,
    system_suspend = 0x0e,
    set_suspend_mode = 0x0f,
    stat_residency = 0x10,
    stat_count = 0x11,
    system_reset2 = 0x12,
    mem_protect = 0x13,
    mem_protect_check_range = 0x14,
};

/// Highest function number defined by PSCI 1.1.
inline constexpr std::uint8_t last_function = 0x14;

/// True when the function exists in the SMC64 convention too (DEN 0022
/// Table 5-1: those taking an address or MPIDR argument).
[[nodiscard]] constexpr bool has_smc64(function f) noexcept {
    switch (f) {
    case function::cpu_suspend: case function::cpu_on: case function::affinity_info:
    case function::migrate: case function::migrate_info_up_cpu:
    case function::cpu_default_suspend: case function::node_hw_state:
    case function::system_suspend: case function::stat_residency: case function::stat_count:
    case function::system_reset2: case function::mem_protect_check_range:
        return true;
    default:
        return false;
    }
}

/// SMC32 function id: 0x8400'00nn.
[[nodiscard]] constexpr std::uint32_t id32(function f) noexcept {
    return fast_call | owner_standard << owner_shift | static_cast<std::uint32_t>(f);
}
/// SMC64 function id: 0xC400'00nn.
[[nodiscard]] constexpr std::uint32_t id64(function f) noexcept { return id32(f) | smc64; }

static_assert(id32(function::version) == 0x84000000u);
static_assert(id32(function::system_off) == 0x84000008u);
static_assert(id64(function::cpu_on) == 0xc4000003u);

/// A decoded PSCI call: which function, and whether it used SMC64 (64-bit
/// arguments) or SMC32 (arguments are W registers).
struct call_id {
    function fn = function::version;  ///< the function
    bool is64 = false;  ///< SMC64 calling convention (64-bit arguments), else SMC32
    friend constexpr bool operator==(const call_id&, const call_id&) = default;
};

/// Decodes an SMCCC function id (W0). `nullopt` for anything that is not a
/// PSCI 1.1 function in a convention PSCI defines for it (e.g. SMC64
/// SYSTEM_OFF, function 0x15+, another service owner, a yielding call).
[[nodiscard]] constexpr std::optional<call_id> decode(std::uint32_t fid) noexcept {
    if ((fid & fast_call) == 0) return std::nullopt;
    if (((fid >> owner_shift) & 0x3f) != owner_standard) return std::nullopt;
    if ((fid & 0x00ff'ff00u) != 0) return std::nullopt; // bits [23:16] must be zero, PSCI uses 0x00-0x1f
    const std::uint32_t n = fid & 0xffu;
    if (n > last_function) return std::nullopt;
    const auto f = static_cast<function>(n);
    const bool is64 = (fid & smc64) != 0;
    if (is64 && !has_smc64(f)) return std::nullopt;
    return call_id{f, is64};
}

/// PSCI return codes (DEN 0022 §5.2.2), as the signed values placed in X0.
enum class status : std::int32_t {
    success = 0,
    not_supported = -1,
    invalid_parameters = -2,
    denied = -3,
    already_on = -4,
    on_pending = -5,
    internal_failure = -6,
    not_present = -7,
    disabled = -8,
    invalid_address = -9,
};

/// The X0 value for `s` (sign-extended to 64 bits, as SMCCC returns it).
[[nodiscard]] constexpr std::uint64_t to_x0(status s) noexcept {
    return static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(s)));
}

/// PSCI_VERSION result: major in [31:16], minor in [15:0].
[[nodiscard]] constexpr std::uint32_t version(std::uint16_t major, std::uint16_t minor) noexcept {
    return std::uint32_t{major} << 16 | minor;
}
inline constexpr std::uint32_t version_0_2 = version(0, 2);  ///< PSCI 0.2 (what `KVM_ARM_VCPU_PSCI_0_2` offers)
inline constexpr std::uint32_t version_1_1 = version(1, 1);  ///< PSCI 1.1

/// The function's name as the specification spells it.
[[nodiscard]] constexpr std::string_view name(function f) noexcept {
    switch (f) {
    case function::version: return "PSCI_VERSION";
    case function::cpu_suspend: return "CPU_SUSPEND";
    case function::cpu_off: return "CPU_OFF";
    case function::cpu_on: return "CPU_ON";
    case function::affinity_info: return "AFFINITY_INFO";
    case function::migrate: return "MIGRATE";
    case function::migrate_info_type: return "MIGRATE_INFO_TYPE";
    case function::migrate_info_up_cpu: return "MIGRATE_INFO_UP_CPU";
    case function::system_off: return "SYSTEM_OFF";
    case function::system_reset: return "SYSTEM_RESET";
    case function::features: return "PSCI_FEATURES";
    case function::cpu_freeze: return "CPU_FREEZE";
    case function::cpu_default_suspend: return "CPU_DEFAULT_SUSPEND";
    case function::node_hw_state: return "NODE_HW_STATE";
    case function::system_suspend: return "SYSTEM_SUSPEND";
    case function::set_suspend_mode: return "PSCI_SET_SUSPEND_MODE";
    case function::stat_residency: return "PSCI_STAT_RESIDENCY";
    case function::stat_count: return "PSCI_STAT_COUNT";
    case function::system_reset2: return "SYSTEM_RESET2";
    case function::mem_protect: return "MEM_PROTECT";
    case function::mem_protect_check_range: return "MEM_PROTECT_CHECK_RANGE";
    }
    return "PSCI_?";
}

} // namespace vcpu::aarch64::psci
