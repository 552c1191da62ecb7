#pragma once
/// \file
/// `vcpu::kvm::run_view`: the exit record every KVM-ABI HAL (the real KVM HAL, the
/// mock, a trace replay) hands to an architecture's decoder. The generic part
/// of `struct kvm_run` is the same on every Linux architecture, so each arch
/// decodes it on every host; arch-specific sync-register areas are reached
/// through the arch's own mirror structs.

#include <vcpu/config.hpp>

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace vcpu::kvm {

/// A `kvm_run` area and how many bytes of it are mapped (`KVM_GET_VCPU_MMAP_SIZE`).
/// Decoders check that every offset they follow (port I/O `data_offset`)
/// stays inside `[run, run + mapped)`.
struct run_view {
    ::kvm_run* run = nullptr;  ///< the mapped `struct kvm_run`
    std::size_t mapped = 0;  ///< bytes mapped at `run`
    /// Kick requests taken at this exit (`interrupted::requests`); not part of `kvm_run`, so a
    /// HAL passes them beside it (the KVM HAL's kicker protocol; 0 for mock and replay).
    std::uint32_t requests = 0;

    /// The mapped bytes as a span (the bound every offset is checked against).
    [[nodiscard]] std::span<std::byte> bytes() const noexcept {
        return {reinterpret_cast<std::byte*>(run), mapped};
    }
    /// `len` bytes at `offset`, or an empty span when that leaves the mapping
    /// (overflow-safe).
    [[nodiscard]] std::span<std::byte> at(std::uint64_t offset, std::uint64_t len) const noexcept {
        if (offset > mapped || len > mapped - offset) return {};
        return bytes().subspan(static_cast<std::size_t>(offset), static_cast<std::size_t>(len));
    }
};

} // namespace vcpu::kvm
