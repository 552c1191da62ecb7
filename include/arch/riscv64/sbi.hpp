#pragma once
/// \file
/// RISC-V Supervisor Binary Interface constants, from the RISC-V SBI
/// specification v2.0: chapter 3 "Binary Encoding" (calling convention: EID in
/// a7, FID in a6, arguments in a0-a5, `struct sbiret { long error; long value; }`
/// returned in a0/a1; Table "Standard SBI Errors"), chapter 4 "Base
/// Extension", chapter 5 "Legacy Extensions", chapter 9 "Hart State Management
/// Extension", chapter 10 "System Reset Extension", chapter 12 "Debug Console
/// Extension".

#include <vcpu/config.hpp>

#include <cstdint>

namespace vcpu::riscv64::sbi {

/// Extension ids (a7). Legacy extensions (chapter 5) have one function each
/// and return only a0.
namespace ext {
/// @{
/// The legacy extensions (chapter 5), one function each: set_timer, console_putchar, console_getchar, clear_ipi, send_ipi, remote_fence_i, remote_sfence_vma, remote_sfence_vma_asid, shutdown.
inline constexpr std::uint64_t legacy_set_timer = 0x00;
inline constexpr std::uint64_t legacy_console_putchar = 0x01;
inline constexpr std::uint64_t legacy_console_getchar = 0x02;
inline constexpr std::uint64_t legacy_clear_ipi = 0x03;
inline constexpr std::uint64_t legacy_send_ipi = 0x04;
inline constexpr std::uint64_t legacy_remote_fence_i = 0x05;
inline constexpr std::uint64_t legacy_remote_sfence_vma = 0x06;
inline constexpr std::uint64_t legacy_remote_sfence_vma_asid = 0x07;
inline constexpr std::uint64_t legacy_shutdown = 0x08;
/// @}
inline constexpr std::uint64_t legacy_last = 0x0f; ///< 0x00-0x0F are legacy
inline constexpr std::uint64_t base = 0x10;  ///< Base extension (chapter 4)
inline constexpr std::uint64_t time = 0x54494D45;   ///< "TIME"
inline constexpr std::uint64_t ipi = 0x735049;      ///< "sPI"
inline constexpr std::uint64_t rfence = 0x52464E43; ///< "RFNC"
inline constexpr std::uint64_t hsm = 0x48534D;      ///< "HSM"
inline constexpr std::uint64_t srst = 0x53525354;   ///< "SRST"
inline constexpr std::uint64_t pmu = 0x504D55;      ///< "PMU"
inline constexpr std::uint64_t dbcn = 0x4442434E;   ///< "DBCN"
inline constexpr std::uint64_t susp = 0x53555350;   ///< "SUSP"
inline constexpr std::uint64_t sta = 0x535441;      ///< "STA"
/// @{
/// Experimental (0x08000000-0x08FFFFFF) and vendor (0x09000000-0x09FFFFFF)
/// ranges; KVM forwards both to userspace.
inline constexpr std::uint64_t experimental_first = 0x08000000, experimental_last = 0x08FFFFFF;
inline constexpr std::uint64_t vendor_first = 0x09000000, vendor_last = 0x09FFFFFF;
/// @}
} // namespace ext

/// Base extension functions (chapter 4).
namespace base_fid {
/// @{
/// Function ids, named as chapter 4 names the functions.
inline constexpr std::uint64_t get_spec_version = 0, get_impl_id = 1, get_impl_version = 2,
                               probe_extension = 3, get_mvendorid = 4, get_marchid = 5,
                               get_mimpid = 6;
/// @}
} // namespace base_fid

/// Hart State Management functions (chapter 9).
namespace hsm_fid {
/// @{
/// Function ids, named as chapter 9 names the functions.
inline constexpr std::uint64_t hart_start = 0, hart_stop = 1, hart_get_status = 2,
                               hart_suspend = 3;
/// @}
} // namespace hsm_fid

/// HSM hart states (chapter 9, Table "HSM Hart States").
namespace hart_state {
/// @{
/// The states `hart_get_status` returns.
inline constexpr std::uint64_t started = 0, stopped = 1, start_pending = 2, stop_pending = 3,
                               suspended = 4, suspend_pending = 5, resume_pending = 6;
/// @}
} // namespace hart_state

/// System Reset (chapter 10): `system_reset(reset_type, reset_reason)`.
namespace srst_fid {
inline constexpr std::uint64_t system_reset = 0;  ///< `system_reset(reset_type, reset_reason)`
} // namespace srst_fid
/// `reset_type` values of `system_reset`.
namespace reset_type {
/// @{
/// Power off, cold reboot, warm reboot.
inline constexpr std::uint64_t shutdown = 0, cold_reboot = 1, warm_reboot = 2;
/// @}
} // namespace reset_type
/// `reset_reason` values of `system_reset`.
namespace reset_reason {
/// @{
/// No reason, system failure.
inline constexpr std::uint64_t none = 0, system_failure = 1;
/// @}
} // namespace reset_reason

/// Debug Console (chapter 12).
namespace dbcn_fid {
/// `console_write(num_bytes, base_addr_lo, base_addr_hi)` → bytes written.
inline constexpr std::uint64_t console_write = 0;
/// `console_read(num_bytes, base_addr_lo, base_addr_hi)` → bytes read.
inline constexpr std::uint64_t console_read = 1;
/// `console_write_byte(byte)`.
inline constexpr std::uint64_t console_write_byte = 2;
} // namespace dbcn_fid

/// Standard SBI errors (chapter 3, Table "Standard SBI Errors"), as the
/// two's-complement `long` the caller sees in a0.
namespace error {
inline constexpr std::int64_t success = 0;  ///< SBI_SUCCESS
inline constexpr std::int64_t failed = -1;  ///< SBI_ERR_FAILED
inline constexpr std::int64_t not_supported = -2;  ///< SBI_ERR_NOT_SUPPORTED
inline constexpr std::int64_t invalid_param = -3;  ///< SBI_ERR_INVALID_PARAM
inline constexpr std::int64_t denied = -4;  ///< SBI_ERR_DENIED
inline constexpr std::int64_t invalid_address = -5;  ///< SBI_ERR_INVALID_ADDRESS
inline constexpr std::int64_t already_available = -6;  ///< SBI_ERR_ALREADY_AVAILABLE
inline constexpr std::int64_t already_started = -7;  ///< SBI_ERR_ALREADY_STARTED
inline constexpr std::int64_t already_stopped = -8;  ///< SBI_ERR_ALREADY_STOPPED
inline constexpr std::int64_t no_shmem = -9;  ///< SBI_ERR_NO_SHMEM
} // namespace error

/// An SBI error as the 64-bit register value.
[[nodiscard]] constexpr std::uint64_t as_reg(std::int64_t e) noexcept {
    return static_cast<std::uint64_t>(e);
}

} // namespace vcpu::riscv64::sbi
