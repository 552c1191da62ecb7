#pragma once
/// \file
/// The ACPI power-management timer (ACPI 6.5 §4.8.3.3 "Power Management
/// Timer (PM_TMR)"): a free-running counter at 3.579545 MHz, read through
/// the 4-byte port block that the FADT's `PM_TMR_BLK` names. It is 24 bits
/// wide unless the FADT sets `TMR_VAL_EXT` (Table 5.10, flag bit 8); this
/// one is 24 bits, so the FADT written by `arch/x86_64/acpi.hpp` leaves
/// that flag clear. Writes are ignored (the register is read-only).
///
/// The count comes from a `Clock` policy returning nanoseconds, so tests
/// pin time; the default reads the host's `CLOCK_MONOTONIC`
/// (`std::chrono::steady_clock`). The count starts at 0 when the device is
/// constructed.
///
/// Save/restore (`save` / `load`, record "PMTM", vcpu/devices/device_state.hpp): the time the
/// timer has run, in nanoseconds; `load` makes the count go on from there, as if no time
/// passed while the machine was saved (the same choice as `clock_restore::exact` for
/// kvmclock, and the restored TSC: a guest comparing the PM timer against the TSC sees both
/// continue together).

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

namespace vcpu::devices {

/// PM timer frequency (ACPI 6.5 §4.8.3.3: 3.579545 MHz).
inline constexpr std::uint64_t acpi_pm_timer_hz = 3579545;
/// The counter's width without `TMR_VAL_EXT` (§4.8.3.3).
inline constexpr unsigned acpi_pm_timer_bits = 24;
/// QEMU's PIIX4 PM I/O base 0xb000 + 8, where its FADT puts PM_TMR_BLK
/// (hw/acpi/piix4.c; the i440fx "pc" machine kvm-unit-tests uses).
inline constexpr std::uint16_t acpi_pm_timer_port = 0xb008;
/// PM_TMR_LEN (ACPI 6.5 Table 5.9: 4).
inline constexpr std::uint16_t acpi_pm_timer_ports = 4;

/// Nanoseconds of the host's monotonic clock.
struct steady_ns {
    /// The clock's current value in nanoseconds.
    [[nodiscard]] std::uint64_t operator()() const noexcept {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
                .count());
    }
};

/// Ticks of a 3.579545 MHz clock in `ns` nanoseconds, without overflow for
/// any `ns` (the product is split at whole seconds).
[[nodiscard]] constexpr std::uint64_t pm_timer_ticks(std::uint64_t ns) noexcept {
    constexpr std::uint64_t ns_per_s = 1000000000;
    return (ns / ns_per_s) * acpi_pm_timer_hz + (ns % ns_per_s) * acpi_pm_timer_hz / ns_per_s;
}

/// The PM timer over its 4-port block (`range<acpi_pm_timer_port, 4, acpi_pm_timer<>>`).
template <class Clock = steady_ns>
class acpi_pm_timer {
public:
    /// The counter's 24 bits.
    static constexpr std::uint32_t mask = (1u << acpi_pm_timer_bits) - 1;

    acpi_pm_timer() noexcept : start_(clock_()) {}
    /// A timer that reads time from `c`, counting from 0 at construction.
    explicit acpi_pm_timer(Clock c) noexcept : clock_(static_cast<Clock&&>(c)), start_(clock_()) {}

    /// The current count (24 bits): `size` bytes of it from byte `offset`.
    std::uint32_t read(std::uint64_t offset, std::uint8_t size) noexcept {
        if (offset >= 4) return 0;
        const std::uint32_t v = count() >> (8 * offset);
        return size >= 4 ? v : v & ((1u << (8 * size)) - 1);
    }
    /// Ignored: PM_TMR is read-only.
    void write(std::uint64_t, std::uint8_t, std::uint64_t) noexcept {}

    /// The counter value now.
    [[nodiscard]] std::uint32_t count() noexcept {
        return static_cast<std::uint32_t>(pm_timer_ticks(clock_() - start_)) & mask;
    }

    /// Nanoseconds the timer has run (since construction, or as loaded).
    [[nodiscard]] std::uint64_t elapsed_ns() const noexcept { return clock_() - start_; }

    /// Version of the state `save` writes (record tag "PMTM").
    static constexpr std::uint16_t state_version = 1;
    /// Appends the time run so far as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "PMTM", state_version);
        state_writer(out).u64(elapsed_ns());
        end_device_record(out, at);
    }
    /// Loads a record `save` wrote: the count continues from the saved time. On error the
    /// timer is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "acpi_pm_timer::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "PMTM", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto elapsed = r.u64();
        if (auto f = finish_device_record(r, op); !f) return f.err();
        start_ = clock_() - elapsed; // modular: clock_() - start_ == elapsed whatever the clock's value
        return ok();
    }

private:
    [[no_unique_address]] Clock clock_{};
    std::uint64_t start_ = 0;
};

} // namespace vcpu::devices
