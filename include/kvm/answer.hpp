#pragma once
/// \file
/// Where the VMM's answer to an exit lives in `kvm_run`: the one definition the exit trace
/// (kvm/record.hpp, kvm/replay.hpp) and the mock HAL (kvm/mock.hpp) share. An answer is what a
/// handler writes back for KVM to complete the exit at the next `KVM_RUN` (KVM API 5 "The
/// kvm_run structure", each exit's "userspace should put the result in ..." field):
///
/// | exit                  | arch    | answer, in order                                           |
/// | --------------------- | ------- | ---------------------------------------------------------- |
/// | `KVM_EXIT_IO`, IN     | x86_64  | `size * count` bytes at `io.data_offset` (the data page)   |
/// | `KVM_EXIT_MMIO`, read | all     | `mmio.data[0 .. len)`                                      |
/// | `KVM_EXIT_HYPERCALL`  | x86_64  | `hypercall.ret` (arm64 SMCCC calls answer in registers)    |
/// | `KVM_EXIT_X86_RDMSR`  | x86_64  | `msr.data`, then `msr.error`                               |
/// | `KVM_EXIT_X86_WRMSR`  | x86_64  | `msr.error`                                                |
/// | `KVM_EXIT_RISCV_SBI`  | riscv64 | `riscv_sbi.ret[0]` (SBI error), `riscv_sbi.ret[1]` (value) |
/// | `KVM_EXIT_RISCV_CSR`  | riscv64 | `riscv_csr.ret_value`                                      |
///
/// Every other exit, and an exit of another arch's (which that arch's decoder reports as
/// `unknown`, so no handler answers it), takes no answer in `kvm_run`.

#include <kvm/run.hpp>
#include <vcpu/config.hpp>

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace vcpu::kvm {

/// The answer of one exit: up to two pieces of `kvm_run`, in the order the table in this
/// header gives (so the first 8 bytes are the main value: IN/MMIO data, RDMSR data, the SBI
/// error). Views into the `kvm_run` it was taken from, valid as long as that exit is.
struct answer_area {
    std::array<std::span<std::byte>, 2> parts{};

    /// Bytes over all pieces.
    [[nodiscard]] std::size_t size() const noexcept { return parts[0].size() + parts[1].size(); }
    /// True when the exit takes no answer.
    [[nodiscard]] bool empty() const noexcept { return size() == 0; }
    /// Copies the answer into `out` (at least `size()` bytes), pieces in order.
    void copy_to(std::span<std::byte> out) const noexcept {
        std::size_t at = 0;
        for (const auto& p : parts) {
            if (!p.empty()) std::memcpy(out.data() + at, p.data(), p.size());
            at += p.size();
        }
    }
    /// Byte `i` of the answer (`i < size()`).
    [[nodiscard]] std::byte operator[](std::size_t i) const noexcept {
        return i < parts[0].size() ? parts[0][i] : parts[1][i - parts[0].size()];
    }
    /// True when the answer equals `bytes` (same size, same bytes).
    [[nodiscard]] bool equals(std::span<const std::byte> bytes) const noexcept {
        if (bytes.size() != size()) return false;
        for (std::size_t i = 0; i < bytes.size(); ++i)
            if ((*this)[i] != bytes[i]) return false;
        return true;
    }
    /// The answer's first bytes (at most 8) as a little-endian number.
    [[nodiscard]] std::uint64_t first_u64() const noexcept {
        std::array<std::byte, 8> b{};
        std::size_t at = 0;
        for (const auto& p : parts) {
            const std::size_t n = p.size() < b.size() - at ? p.size() : b.size() - at;
            if (n != 0) std::memcpy(b.data() + at, p.data(), n);
            at += n;
        }
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < b.size(); ++i) v |= std::uint64_t{std::to_integer<std::uint8_t>(b[i])} << (8 * i);
        return v;
    }
};

namespace detail {
template <class T>
[[nodiscard]] std::span<std::byte> field_bytes(T& f) noexcept {
    return std::as_writable_bytes(std::span<T, 1>(&f, 1));
}
} // namespace detail

/// Where the VMM's answer to the exit in `v` of an `Arch` vCPU lives (the table above, by
/// `Arch::name`); empty when the exit takes none on `Arch`, when `v` is not a mapped
/// `kvm_run`, or when its sizes are ones the decoders reject (a malformed exit nobody answers).
template <class Arch>
[[nodiscard]] answer_area answer_of(const run_view& v) noexcept {
    constexpr std::string_view arch = Arch::name;
    constexpr bool x86 = arch == "x86_64";
    constexpr bool riscv = arch == "riscv64";
    if (v.run == nullptr || v.mapped < sizeof(::kvm_run)) return {};
    ::kvm_run& r = *v.run;
    switch (r.exit_reason) {
    case KVM_EXIT_IO:
        if (!x86) return {};
        if (r.io.direction != KVM_EXIT_IO_IN || (r.io.size != 1 && r.io.size != 2 && r.io.size != 4)) return {};
        return {{v.at(r.io.data_offset, std::uint64_t{r.io.size} * r.io.count), {}}};
    case KVM_EXIT_MMIO:
        if (r.mmio.is_write || r.mmio.len > sizeof(r.mmio.data)) return {};
        return {{std::as_writable_bytes(std::span(r.mmio.data)).first(r.mmio.len), {}}};
    case KVM_EXIT_HYPERCALL:
        if (!x86) return {};
        return {{detail::field_bytes(r.hypercall.ret), {}}};
#ifdef KVM_EXIT_X86_RDMSR
    case KVM_EXIT_X86_RDMSR:
        if (!x86) return {};
        return {{detail::field_bytes(r.msr.data), detail::field_bytes(r.msr.error)}};
    case KVM_EXIT_X86_WRMSR:
        if (!x86) return {};
        return {{detail::field_bytes(r.msr.error), {}}};
#endif
#ifdef KVM_EXIT_RISCV_SBI
    case KVM_EXIT_RISCV_SBI:
        if (!riscv) return {};
        return {{std::as_writable_bytes(std::span(r.riscv_sbi.ret)), {}}};
    case KVM_EXIT_RISCV_CSR:
        if (!riscv) return {};
        return {{detail::field_bytes(r.riscv_csr.ret_value), {}}};
#endif
    default: return {};
    }
}

#ifdef KVM_EXIT_RISCV_SBI
static_assert(sizeof(::kvm_run{}.riscv_sbi.ret) == 16, "kvm: riscv_sbi.ret is two 64-bit slots");
#endif

} // namespace vcpu::kvm
