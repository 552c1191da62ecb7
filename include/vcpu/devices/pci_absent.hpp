#pragma once
/// \file
/// PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, §3.2.2.3.2)
/// with no devices behind it: CONFIG_ADDRESS at 0xcf8 (32-bit, read back as
/// written) and CONFIG_DATA at 0xcfc..0xcff, which read all ones — the value
/// a master abort returns, so every vendor ID is 0xffff ("no device") — and
/// drop writes. Linux then finds conf1 usable and an empty bus.

#include <vcpu/config.hpp>

#include <cstdint>

namespace vcpu::devices {

/// CONFIG_ADDRESS of PCI configuration mechanism #1 (PCI Local Bus spec 3.0, 3.2.2.3.2).
inline constexpr std::uint16_t pci_config_address_port = 0xcf8;
/// CONFIG_DATA of mechanism #1.
inline constexpr std::uint16_t pci_config_data_port = 0xcfc;

/// Place over 0xcf8..0xcff (`range<0xcf8, 8, pci_absent>`).
class pci_absent {
public:
    /// CONFIG_ADDRESS reads back what was written (Linux's `pci_check_type1` probes that); CONFIG_DATA reads all ones: no device on any bus.
    std::uint32_t read(std::uint64_t offset, std::uint8_t size) noexcept {
        if (offset < 4) {
            // Linux's pci_check_type1 writes 0x80000000 to 0xcf8 with a
            // 32-bit access and expects to read it back.
            return size == 4 ? address_ : (address_ >> (8 * offset));
        }
        return 0xffffffffu;
    }
    /// Keeps a 32-bit write to CONFIG_ADDRESS; drops everything else.
    void write(std::uint64_t offset, std::uint8_t size, std::uint64_t value) noexcept {
        if (offset == 0 && size == 4) address_ = static_cast<std::uint32_t>(value);
    }
    /// The last value written to CONFIG_ADDRESS.
    [[nodiscard]] std::uint32_t config_address() const noexcept { return address_; }

private:
    std::uint32_t address_ = 0;
};

} // namespace vcpu::devices
