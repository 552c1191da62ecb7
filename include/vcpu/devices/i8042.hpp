#pragma once
/// \file
/// Just enough of the PC's i8042 keyboard controller for Linux to probe it
/// and to reboot through it: port 0x60 (data) and 0x64 (status on read,
/// command on write). Command 0xFE ("pulse output line 0", which is wired to
/// the CPU's reset) is a reset request: the write returns `action::stop` and
/// `reset_requested()` turns true, so the VMM's run loop ends the VM
/// (Linux `reboot=k`, arch/x86/kernel/reboot.c `kb_wait` + `outb(0xfe, 0x64)`).
///
/// The controller reports no keyboard and no mouse: reads of 0x60 return the
/// last command byte or 0, the status register has "output buffer full"
/// clear and "input buffer full" clear, so `kb_wait` never spins.
///
/// Save/restore (`save` / `load`, record "I842", vcpu/devices/device_state.hpp): the output
/// byte and whether it is pending, the command byte, a command waiting for its data byte, and
/// the reset request.

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>
#include <vcpu/exits.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace vcpu::devices {

/// i8042 ports (IBM PC/AT Technical Reference, keyboard controller).
inline constexpr std::uint16_t i8042_data_port = 0x60;
/// Status (read) and command (write) port.
inline constexpr std::uint16_t i8042_command_port = 0x64;

/// i8042 commands written to port 0x64.
enum class i8042_command : std::uint8_t {
    read_command_byte = 0x20,
    write_command_byte = 0x60,
    self_test = 0xaa,      ///< answers 0x55 on port 0x60
    aux_interface_test = 0xa9, ///< answers 0x01 on port 0x60: AUX clock line stuck low (no AUX device channel)
    write_aux_output = 0xd3,   ///< the next data byte comes back at 0x60; here on the keyboard channel
    pulse_reset = 0xfe,    ///< pulse output line 0 (CPU reset)
};

/// Status register bits (port 0x64 read).
namespace i8042_status {
inline constexpr std::uint8_t output_full = 0x01; ///< data waiting at 0x60
inline constexpr std::uint8_t input_full = 0x02;  ///< controller busy
inline constexpr std::uint8_t system_flag = 0x04; ///< set after self test
} // namespace i8042_status

/// The i8042 as two one-port devices share it: place it once over 0x60..0x64
/// (`range<0x60, 5, i8042>`); offsets 0 (data) and 4 (status/command) are
/// decoded, the others (0x61 is the PC speaker/NMI port) read 0 and drop
/// writes.
///
/// A controller with a keyboard channel only: it answers every command a driver
/// probes the auxiliary (mouse) port with at once, so no probe waits for a timeout.
/// 0xD3 (write AUX output buffer) returns its byte without the AUX-data status bit
/// (0x20) and 0xA9 (AUX interface test) reports 0x01, a stuck clock line. Linux's
/// i8042_check_aux() then gives up on the AUX port after two answers; silent, it polled
/// the status port 10,000 times per command (I8042_CTL_TIMEOUT) for two of them.
class i8042 {
public:
    /// Offset 0: the pending output byte (then none is pending); offset 4: the status register.
    std::uint8_t read(std::uint64_t offset, std::uint8_t /*size*/) noexcept {
        if (offset == 0) {
            const std::uint8_t v = has_output_ ? output_ : 0;
            has_output_ = false;
            return v;
        }
        if (offset == 4)
            return static_cast<std::uint8_t>(i8042_status::system_flag |
                                              (has_output_ ? i8042_status::output_full : 0));
        return 0;
    }

    /// Offset 0: a data byte (for a pending write-command-byte or AUX-output command); offset 4: a command. Pulse-reset (0xFE) returns `action::stop`, so the run loop returns the exit.
    action write(std::uint64_t offset, std::uint8_t /*size*/, std::uint64_t value) noexcept {
        const auto b = static_cast<std::uint8_t>(value);
        if (offset == 0) {
            if (expect_command_byte_) {
                command_byte_ = b;
            } else if (expect_aux_byte_) {
                output_ = b;
                has_output_ = true;
            }
            expect_command_byte_ = expect_aux_byte_ = false;
            return action::resume;
        }
        if (offset != 4) return action::resume;
        switch (static_cast<i8042_command>(b)) {
        case i8042_command::pulse_reset:
            reset_ = true;
            return action::stop;
        case i8042_command::read_command_byte:
            output_ = command_byte_;
            has_output_ = true;
            break;
        case i8042_command::write_command_byte: expect_command_byte_ = true; break;
        case i8042_command::self_test:
            output_ = 0x55;
            has_output_ = true;
            break;
        case i8042_command::aux_interface_test:
            output_ = 0x01;
            has_output_ = true;
            break;
        case i8042_command::write_aux_output: expect_aux_byte_ = true; break;
        default: break;
        }
        return action::resume;
    }

    /// True once the guest wrote 0xFE to port 0x64.
    [[nodiscard]] bool reset_requested() const noexcept { return reset_; }

    /// Version of the state `save` writes (record tag "I842").
    static constexpr std::uint16_t state_version = 1;

    /// Appends the controller's state as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "I842", state_version);
        state_writer w(out);
        w.u8(output_);
        w.u8(command_byte_);
        w.flag(has_output_);
        w.flag(expect_command_byte_);
        w.flag(expect_aux_byte_);
        w.flag(reset_);
        end_device_record(out, at);
    }

    /// Loads a record `save` wrote; on error the controller is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "i8042::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "I842", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto output = r.u8(), command_byte = r.u8();
        const bool has_output = r.flag(), expect_cb = r.flag(), expect_aux = r.flag(), reset = r.flag();
        if (auto f = finish_device_record(r, op); !f) return f.err();
        if (expect_cb && expect_aux)
            return error{op, EINVAL, "bad value: waiting for two commands' data bytes at once"};
        output_ = output;
        command_byte_ = command_byte;
        has_output_ = has_output;
        expect_command_byte_ = expect_cb;
        expect_aux_byte_ = expect_aux;
        reset_ = reset;
        return ok();
    }

private:
    std::uint8_t output_ = 0, command_byte_ = 0;
    bool has_output_ = false, expect_command_byte_ = false, expect_aux_byte_ = false, reset_ = false;
};

} // namespace vcpu::devices
