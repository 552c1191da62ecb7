#pragma once
/// \file
/// A CMOS/RTC stub (Motorola MC146818A as in the IBM PC/AT): port 0x70
/// selects a register (bit 7 is the NMI mask), port 0x71 reads or writes it.
/// The time registers 0x00..0x09 answer the host's UTC time in BCD, 24-hour
/// mode (status register B = 0x02); status A says "no update in progress";
/// the other bytes of the 128-byte CMOS RAM are plain storage.
/// (MC146818A datasheet, "Address Map" and "Registers".)
///
/// Save/restore (`save` / `load`, record "CMOS", vcpu/devices/device_state.hpp): the index
/// register and the 128 bytes of CMOS RAM. The time is not saved: after a restore the RTC
/// reads the `Clock` again (the host's wall clock), as a real RTC keeps time while a machine
/// is off.

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstdint>
#include <ctime>
#include <span>
#include <vector>

namespace vcpu::devices {

/// The index register: selects the RTC/CMOS register (bit 7 is the NMI mask, ignored).
inline constexpr std::uint16_t cmos_index_port = 0x70;
/// The data register: reads or writes the selected register.
inline constexpr std::uint16_t cmos_data_port = 0x71;

/// MC146818A register indices.
enum class rtc_reg : std::uint8_t {
    seconds = 0x00, minutes = 0x02, hours = 0x04, day_of_week = 0x06,
    day_of_month = 0x07, month = 0x08, year = 0x09,
    status_a = 0x0a, status_b = 0x0b, status_c = 0x0c, status_d = 0x0d,
    century = 0x32, ///< IBM PC/AT convention (ACPI FADT "CENTURY")
};

/// Broken-down time the RTC reports (a policy so tests can pin it).
struct rtc_time {
    /// @{
    /// Seconds, minutes, hours (24-hour), day of week (1 = Sunday), day of month, month (1..12), full year.
    int sec = 0, min = 0, hour = 0, wday = 0, mday = 1, mon = 1, year = 2000;
    /// @}
};

/// The host's UTC time.
struct host_clock {
    /// The current UTC time from `gmtime_r`.
    [[nodiscard]] rtc_time operator()() const noexcept {
        const std::time_t t = std::time(nullptr);
        std::tm tm{};
        ::gmtime_r(&t, &tm);
        return rtc_time{tm.tm_sec, tm.tm_min, tm.tm_hour, tm.tm_wday + 1, tm.tm_mday,
                        tm.tm_mon + 1, tm.tm_year + 1900};
    }
};

/// `v` (0..99) in packed BCD, as the RTC reports time.
[[nodiscard]] constexpr std::uint8_t to_bcd(int v) noexcept {
    return static_cast<std::uint8_t>(((v / 10) % 10) << 4 | (v % 10));
}

/// The CMOS/RTC over ports 0x70..0x71 (`range<0x70, 2, cmos_rtc<>>`).
template <class Clock = host_clock>
class cmos_rtc {
public:
    cmos_rtc() = default;
    /// An RTC that reads time from `c`.
    explicit cmos_rtc(Clock c) : clock_(c) {}

    /// Offset 0: the index last written; offset 1: the selected register (`reg`).
    std::uint8_t read(std::uint64_t offset, std::uint8_t /*size*/) noexcept {
        if (offset == 0) return index_;
        return reg(index_ & 0x7f);
    }
    /// Offset 0 selects a register; offset 1 writes CMOS RAM at 0x0e and above (time registers are read-only).
    void write(std::uint64_t offset, std::uint8_t /*size*/, std::uint64_t value) noexcept {
        const auto b = static_cast<std::uint8_t>(value);
        if (offset == 0) index_ = b;
        else if ((index_ & 0x7f) >= 0x0e) ram_[index_ & 0x7f] = b; // time regs are read-only here
    }

    /// Register `i`: the time in BCD (24-hour), fixed status A-D (no update in progress, no interrupts), else CMOS RAM.
    [[nodiscard]] std::uint8_t reg(std::uint8_t i) const noexcept {
        const auto t = clock_();
        switch (static_cast<rtc_reg>(i)) {
        case rtc_reg::seconds: return to_bcd(t.sec);
        case rtc_reg::minutes: return to_bcd(t.min);
        case rtc_reg::hours: return to_bcd(t.hour);
        case rtc_reg::day_of_week: return to_bcd(t.wday);
        case rtc_reg::day_of_month: return to_bcd(t.mday);
        case rtc_reg::month: return to_bcd(t.mon);
        case rtc_reg::year: return to_bcd(t.year % 100);
        case rtc_reg::century: return to_bcd(t.year / 100);
        case rtc_reg::status_a: return 0x26;   // 32.768 kHz base, 1024 Hz rate, UIP = 0
        case rtc_reg::status_b: return 0x02;   // 24-hour, BCD, no interrupts
        case rtc_reg::status_c: return 0x00;   // no interrupt flags
        case rtc_reg::status_d: return 0x80;   // VRT: battery good
        default: return ram_[i & 0x7f];
        }
    }

    /// The index register (the last value written to port 0x70).
    [[nodiscard]] std::uint8_t index() const noexcept { return index_; }

    /// Version of the state `save` writes (record tag "CMOS").
    static constexpr std::uint16_t state_version = 1;

    /// Appends the index and CMOS RAM as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "CMOS", state_version);
        state_writer w(out);
        w.u8(index_);
        w.bytes(ram_);
        end_device_record(out, at);
    }

    /// Loads a record `save` wrote; on error the device is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "cmos_rtc::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "CMOS", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto index = r.u8();
        std::array<std::uint8_t, 128> ram{};
        r.bytes(ram);
        if (auto f = finish_device_record(r, op); !f) return f.err();
        index_ = index;
        ram_ = ram;
        return ok();
    }

private:
    [[no_unique_address]] Clock clock_{};
    std::array<std::uint8_t, 128> ram_{};
    std::uint8_t index_ = 0;
};

} // namespace vcpu::devices
