#pragma once
/// \file
/// QEMU's `pc-testdev` (hw/misc/pc-testdev.c), the ISA test device the
/// kvm-unit-tests x86 guests use (`-device pc-testdev`), split into the
/// three bus devices its address ranges need:
///
/// - `pc_testdev_ports` at 0xe0..0xeb: a 32-bit scratch register at
///   0xe0..0xe3 (an access of 1, 2 or 4 bytes at port 0xe0 + k reads or
///   replaces bytes k.. of it), the "flush page" port 0xe4 (a 4-byte write
///   of a guest physical address asks the host to drop its mappings of
///   that page; QEMU does two `mprotect` calls), and 0xe8..0xeb, the same
///   scratch register reached byte by byte.
/// - `pc_testdev_irq` at 0x2000..0x2017: a write of v to port 0x2000 + n
///   sets ISA IRQ line n to `v != 0`; reads return 0.
/// - `pc_testdev_iomem` on the MMIO bus at 0xff000000: 64 KiB of RAM-like
///   storage behind MMIO exits (little-endian accesses of 1..8 bytes).
///
/// The flush and IRQ effects go through policies (`Flush(gpa)`,
/// `Irq(line, level)`), so the devices stay free of KVM; a KVM VMM calls
/// `KVM_IRQ_LINE` from its `Irq`.
///
/// Save/restore (`save` / `load`, vcpu/devices/device_state.hpp): `pc_testdev_ports` saves its
/// scratch register (record "PCTP"), `pc_testdev_iomem` its 64 KiB (record "PCTM");
/// `pc_testdev_irq` holds no state (the lines' levels live in the interrupt controller).

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace vcpu::devices {

/// pc-testdev addresses (hw/misc/pc-testdev.c `testdev_realizefn`).
inline constexpr std::uint16_t pc_testdev_port = 0xe0;        ///< scratch register
inline constexpr std::uint16_t pc_testdev_port_count = 12;///< 0xe0..0xeb
inline constexpr std::uint16_t pc_testdev_irq_port = 0x2000;  ///< IRQ line 0
inline constexpr std::uint16_t pc_testdev_irq_lines = 24;     ///< 0x2000..0x2017
inline constexpr std::uint64_t pc_testdev_iomem_base = 0xff000000;  ///< IOMEM: QEMU's memory-mapped test area (`pc-testdev` iomem)
inline constexpr std::uint64_t pc_testdev_iomem_size = 0x10000; ///< IOMEM_LEN

/// Offsets inside `pc_testdev_ports`.
namespace pc_testdev_reg {
inline constexpr std::uint64_t scratch = 0x0;      ///< 0xe0..0xe3
inline constexpr std::uint64_t flush_page = 0x4;   ///< 0xe4 (4-byte writes)
inline constexpr std::uint64_t scratch_byte = 0x8; ///< 0xe8..0xeb
} // namespace pc_testdev_reg

/// A flush policy that does nothing (the default).
struct no_flush {
    /// Ignores the page address.
    constexpr void operator()(std::uint64_t /*gpa*/) const noexcept {}
};
/// An IRQ policy that drives nothing (the default).
struct no_irq_lines {
    /// Ignores the line change.
    constexpr void operator()(unsigned /*line*/, bool /*level*/) const noexcept {}
};

/// Ports 0xe0..0xeb (`range<0xe0, 12, pc_testdev_ports<>>`).
template <class Flush = no_flush>
class pc_testdev_ports {
public:
    pc_testdev_ports() = default;
    /// Ports whose flush-page writes go to `f`.
    explicit pc_testdev_ports(Flush f) noexcept : flush_(static_cast<Flush&&>(f)) {}

    /// Scratch reads return the addressed bytes; the flush port reads 0.
    std::uint32_t read(std::uint64_t offset, std::uint8_t size) noexcept {
        if (offset >= pc_testdev_reg::flush_page && offset < pc_testdev_reg::scratch_byte) return 0;
        const unsigned shift = 8 * static_cast<unsigned>(offset & 3);
        return (scratch_ & lane_mask(offset, size)) >> shift;
    }
    /// Scratch writes replace the addressed bytes; a 4-byte write to the
    /// flush port passes the page address (low 12 bits cleared) to `Flush`.
    void write(std::uint64_t offset, std::uint8_t size, std::uint64_t value) noexcept {
        if (offset >= pc_testdev_reg::flush_page && offset < pc_testdev_reg::scratch_byte) {
            if (offset == pc_testdev_reg::flush_page && size == 4) flush_(value & ~std::uint64_t{0xfff});
            return;
        }
        const unsigned shift = 8 * static_cast<unsigned>(offset & 3);
        const std::uint32_t m = lane_mask(offset, size);
        scratch_ = (scratch_ & ~m) | (static_cast<std::uint32_t>(value << shift) & m);
    }
    /// The scratch register.
    [[nodiscard]] std::uint32_t scratch() const noexcept { return scratch_; }
    /// The flush policy (e.g. to read what it recorded).
    [[nodiscard]] Flush& flush() noexcept { return flush_; }

    /// Version of the state `save` writes (record tag "PCTP").
    static constexpr std::uint16_t state_version = 1;
    /// Appends the scratch register as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "PCTP", state_version);
        state_writer(out).u32(scratch_);
        end_device_record(out, at);
    }
    /// Loads a record `save` wrote; on error the device is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "pc_testdev_ports::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "PCTP", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto scratch = r.u32();
        if (auto f = finish_device_record(r, op); !f) return f.err();
        scratch_ = scratch;
        return ok();
    }

private:
    /// Bytes [offset & 3, (offset & 3) + size) of the register, cut at its end.
    static constexpr std::uint32_t lane_mask(std::uint64_t offset, std::uint8_t size) noexcept {
        const unsigned start = static_cast<unsigned>(offset & 3);
        unsigned n = size;
        if (n > 4 - start) n = 4 - start;
        const std::uint64_t bytes = (std::uint64_t{1} << (8 * n)) - 1;
        return static_cast<std::uint32_t>(bytes << (8 * start));
    }
    [[no_unique_address]] Flush flush_{};
    std::uint32_t scratch_ = 0;
};

/// Ports 0x2000..0x2017 (`range<0x2000, 24, pc_testdev_irq<Irq>>`).
template <class Irq = no_irq_lines>
class pc_testdev_irq {
public:
    pc_testdev_irq() = default;
    /// Lines driven through `i(line, level)`.
    explicit pc_testdev_irq(Irq i) noexcept : irq_(static_cast<Irq&&>(i)) {}

    /// Reads return 0 (QEMU's `test_irq_line_read`).
    std::uint8_t read(std::uint64_t, std::uint8_t) noexcept { return 0; }
    /// Sets line `offset` to `value != 0`.
    void write(std::uint64_t offset, std::uint8_t /*size*/, std::uint64_t value) noexcept {
        if (offset < pc_testdev_irq_lines) irq_(static_cast<unsigned>(offset), value != 0);
    }
    /// The IRQ policy (e.g. to read what it recorded).
    [[nodiscard]] Irq& irq() noexcept { return irq_; }

private:
    [[no_unique_address]] Irq irq_{};
};

/// The 64 KiB MMIO window (`range<0xff000000, 0x10000, pc_testdev_iomem>`
/// on an MMIO bus). Zero-initialised. An access that runs past the end of
/// the window reads zeros and drops the bytes past the end.
class pc_testdev_iomem {
public:
    /// Little-endian read of `size` (1..8) bytes at `offset`.
    std::uint64_t read(std::uint64_t offset, std::uint8_t size) const noexcept {
        std::uint64_t v = 0;
        const std::size_t n = clamp(offset, size);
        for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{buf_[offset + i]} << (8 * i);
        return v;
    }
    /// Little-endian write of `size` (1..8) bytes at `offset`.
    void write(std::uint64_t offset, std::uint8_t size, std::uint64_t value) noexcept {
        const std::size_t n = clamp(offset, size);
        for (std::size_t i = 0; i < n; ++i) buf_[offset + i] = static_cast<std::uint8_t>(value >> (8 * i));
    }

    /// Version of the state `save` writes (record tag "PCTM").
    static constexpr std::uint16_t state_version = 1;
    /// Appends the window's 64 KiB as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "PCTM", state_version);
        state_writer(out).bytes(buf_);
        end_device_record(out, at);
    }
    /// Loads a record `save` wrote; on error the window is unchanged (checked before copying).
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "pc_testdev_iomem::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "PCTM", state_version, version);
        if (!body) return body.err();
        if (body->size() != pc_testdev_iomem_size)
            return error{op, EINVAL, "bad record: the window's size differs"}.with("bytes", body->size()).with(
                "window_size", pc_testdev_iomem_size);
        std::memcpy(buf_.data(), body->data(), buf_.size());
        return ok();
    }

private:
    static constexpr std::size_t clamp(std::uint64_t offset, std::uint8_t size) noexcept {
        if (offset >= pc_testdev_iomem_size) return 0;
        const std::uint64_t room = pc_testdev_iomem_size - offset;
        const std::uint64_t want = size > 8 ? 8 : size;
        return static_cast<std::size_t>(want < room ? want : room);
    }
    std::array<std::uint8_t, pc_testdev_iomem_size> buf_{};
};

} // namespace vcpu::devices
