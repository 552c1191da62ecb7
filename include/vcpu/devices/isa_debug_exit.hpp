#pragma once
/// \file
/// QEMU's `isa-debug-exit` device: a write to its port ends the virtual
/// machine, and QEMU exits with process status `(value << 1) | 1`
/// (hw/misc/debugexit.c, `debug_exit_write`). The kvm-unit-tests x86
/// harness runs QEMU with `-device isa-debug-exit,iobase=0xf4,iosize=0x4`
/// and reads the status as the verdict: a guest `exit(0)` writes 0, status
/// 1 means PASS; any other code n gives status 2n + 1.
///
/// Here the write stops the run loop (`action::stop`) and records the
/// value; the VMM then ends with `exit_status()`. Reads return 0 (QEMU's
/// `debug_exit_read`).
///
/// Save/restore (`save` / `load`, record "DBGX", vcpu/devices/device_state.hpp): whether the
/// guest wrote the port and the value.

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>
#include <vcpu/exits.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace vcpu::devices {

/// The port and width kvm-unit-tests configures (x86/run: `iobase=0xf4,iosize=0x4`).
inline constexpr std::uint16_t isa_debug_exit_port = 0xf4;
/// Width of the port block kvm-unit-tests configures.
inline constexpr std::uint16_t isa_debug_exit_ports = 4;

/// Place over 0xf4..0xf7 (`range<0xf4, 4, isa_debug_exit>`).
class isa_debug_exit {
public:
    /// Reads return 0.
    std::uint32_t read(std::uint64_t /*offset*/, std::uint8_t /*size*/) noexcept { return 0; }

    /// Any write of any width at any offset ends the VM with `value`
    /// (already masked to the access width by the bus). The first write
    /// wins: a second vCPU writing later does not change the verdict.
    action write(std::uint64_t /*offset*/, std::uint8_t /*size*/, std::uint64_t value) noexcept {
        if (!exited_) {
            code_ = static_cast<std::uint32_t>(value);
            exited_ = true;
        }
        return action::stop;
    }

    /// True once the guest wrote the port.
    [[nodiscard]] bool exited() const noexcept { return exited_; }
    /// The value written.
    [[nodiscard]] std::uint32_t code() const noexcept { return code_; }
    /// QEMU's process status for it, `(code << 1) | 1`, cut to the 8 bits a
    /// process status keeps (POSIX `exit`: `status & 0377`).
    [[nodiscard]] int exit_status() const noexcept { return static_cast<int>(((code_ << 1) | 1u) & 0xffu); }

    /// Version of the state `save` writes (record tag "DBGX").
    static constexpr std::uint16_t state_version = 1;
    /// Appends the verdict as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "DBGX", state_version);
        state_writer w(out);
        w.u32(code_);
        w.flag(exited_);
        end_device_record(out, at);
    }
    /// Loads a record `save` wrote; on error the device is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "isa_debug_exit::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "DBGX", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto code = r.u32();
        const bool exited = r.flag();
        if (auto f = finish_device_record(r, op); !f) return f.err();
        if (!exited && code != 0) return error{op, EINVAL, "bad value: a code without a write"}.with("code", code);
        code_ = code;
        exited_ = exited;
        return ok();
    }

private:
    std::uint32_t code_ = 0;
    bool exited_ = false;
};

} // namespace vcpu::devices
