#pragma once
/// \file
/// Register descriptors: compile-time values that say where a register lives
/// and how wide it is, so one generic `get`/`set` reaches any architecture's
/// registers through any HAL.
///
/// Three storage kinds cover the KVM ABIs of x86-64, AArch64 and RISC-V:
///
/// | kind          | what the HAL moves             | examples                          |
/// | ------------- | ------------------------------ | --------------------------------- |
/// | `block_reg`   | a whole struct (a "block")     | x86 `kvm_regs`, `kvm_sregs`       |
/// | `one_reg`     | one register by 64-bit id      | arm64/riscv `KVM_GET_ONE_REG`     |
/// | `keyed_reg`   | one entry of an indexed bank   | x86 MSRs (`KVM_GET_MSRS`)         |
///
/// A block is a tag type `B` with `using layout = <standard-layout struct>` and
/// `static constexpr std::string_view name`. HALs cache blocks (KVM keeps the
/// synced ones in `kvm_run->s.regs`), so reading ten GPRs costs one fetch.
/// Access rights are part of the type: writing an `access::ro` register does
/// not compile.

#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>

namespace vcpu {

/// Who may access a register.
enum class access : std::uint8_t { rw, ro, wo };

/// A 128-bit register value (AArch64 V0-V31), little-endian halves.
struct u128 {
    /// @{
    /// The low and high 64 bits.
    std::uint64_t lo = 0, hi = 0;
    /// @}
    friend constexpr bool operator==(const u128&, const u128&) = default;
};

namespace detail {
/// Not constexpr on purpose: a `block_reg` whose bytes leave its block calls it during constant
/// evaluation, so the descriptor does not compile and the diagnostic names this function.
inline void block_register_lies_outside_its_block() noexcept {}
} // namespace detail

/// Register that lives at byte `offset` inside block `Block`'s layout.
///
/// Descriptors are made at compile time (the constructor is `consteval`), and one whose
/// `[offset, offset + sizeof(T))` leaves `Block::layout` does not compile; reads and writes then
/// need no run-time bounds test.
template <class Block, class T, access A = access::rw>
struct block_reg {
    /// The register block type (its `layout` is the struct the HAL loads and stores).
    using block = Block;
    /// The register's value type.
    using value_type = T;
    /// Who may access the register (`ro` ones cannot be `set`).
    static constexpr access rights = A;
    std::string_view name;  ///< the register's name in the manual (for messages)
    std::size_t offset = 0;  ///< byte offset of the value inside `Block::layout`

    static_assert(std::is_trivially_copyable_v<T>, "block register values are copied bytewise");

    constexpr block_reg() noexcept = default;
    /// A descriptor named `n` at byte `off` of the block; does not compile when the value would leave the block.
    consteval block_reg(std::string_view n, std::size_t off) noexcept : name(n), offset(off) {
        if (off > sizeof(typename Block::layout) || sizeof(T) > sizeof(typename Block::layout) - off)
            detail::block_register_lies_outside_its_block();
    }

    /// Width of the value in bits.
    [[nodiscard]] constexpr std::size_t width_bits() const noexcept { return sizeof(T) * 8; }

    /// Reads the value out of a block image.
    [[nodiscard]] T read_from(const typename Block::layout& l) const noexcept {
        T v{};
        std::memcpy(&v, reinterpret_cast<const std::byte*>(&l) + offset, sizeof(T));
        return v;
    }
    /// Writes `v` into a block image.
    void write_to(typename Block::layout& l, const T& v) const noexcept {
        std::memcpy(reinterpret_cast<std::byte*>(&l) + offset, &v, sizeof(T));
    }
};

/// Register reached one at a time by a 64-bit id (`KVM_{GET,SET}_ONE_REG`).
template <class T, access A = access::rw>
struct one_reg {
    /// The register's value type.
    using value_type = T;
    /// Who may access the register (`ro` ones cannot be `set`).
    static constexpr access rights = A;
    std::string_view name;  ///< the register's name in the manual (for messages)
    std::uint64_t id = 0;  ///< the 64-bit register id (`KVM_REG_*` encoding on KVM)
    /// Width of the value in bits.
    [[nodiscard]] constexpr std::size_t width_bits() const noexcept { return sizeof(T) * 8; }
};

/// Register in an indexed bank (`Bank` is a tag type with a `name`), e.g. an
/// x86 MSR by its index.
template <class Bank, class T = std::uint64_t, access A = access::rw>
struct keyed_reg {
    /// The bank tag type; the HAL reaches the register through `get_keyed<Bank>` / `set_keyed<Bank>`.
    using bank = Bank;
    /// The register's value type.
    using value_type = T;
    /// Who may access the register (`ro` ones cannot be `set`).
    static constexpr access rights = A;
    std::string_view name;  ///< the register's name in the manual (for messages)
    std::uint64_t key = 0;  ///< index inside the bank (e.g. the MSR number)
    /// Width of the value in bits.
    [[nodiscard]] constexpr std::size_t width_bits() const noexcept { return sizeof(T) * 8; }
};

namespace detail {
template <class R> struct is_block_reg : std::false_type {};
template <class B, class T, access A> struct is_block_reg<block_reg<B, T, A>> : std::true_type {};
template <class R> struct is_one_reg : std::false_type {};
template <class T, access A> struct is_one_reg<one_reg<T, A>> : std::true_type {};
template <class R> struct is_keyed_reg : std::false_type {};
template <class B, class T, access A> struct is_keyed_reg<keyed_reg<B, T, A>> : std::true_type {};
} // namespace detail

/// A register descriptor of one of the three storage kinds.
template <class R>
concept RegisterDescriptor =
    detail::is_block_reg<std::remove_cvref_t<R>>::value ||
    detail::is_one_reg<std::remove_cvref_t<R>>::value ||
    detail::is_keyed_reg<std::remove_cvref_t<R>>::value;

/// A bit field `[Lsb, Lsb+Width)` of a register, as named in a manual.
template <unsigned Lsb, unsigned Width = 1, access A = access::rw>
struct bitfield {
    static_assert(Width >= 1 && Lsb + Width <= 64, "bit field must fit in 64 bits");
    /// Lowest bit of the field.
    static constexpr unsigned lsb = Lsb;
    /// Number of bits.
    static constexpr unsigned width = Width;
    /// Who may write the field (`set` does not compile for `ro`).
    static constexpr access rights = A;
    /// The field's bits in place.
    static constexpr std::uint64_t mask =
        (Width == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << Width) - 1)) << Lsb;

    /// The field's value, shifted down to bit 0.
    [[nodiscard]] static constexpr std::uint64_t get(std::uint64_t reg) noexcept {
        return (reg & mask) >> Lsb;
    }
    /// True when any bit of the field is set.
    [[nodiscard]] static constexpr bool test(std::uint64_t reg) noexcept { return (reg & mask) != 0; }
    /// `reg` with this field replaced by `v` (truncated to the field's width).
    [[nodiscard]] static constexpr std::uint64_t set(std::uint64_t reg, std::uint64_t v) noexcept {
        static_assert(A != access::ro, "vcpu: this bit field is read-only (access::ro)");
        return (reg & ~mask) | ((v << Lsb) & mask);
    }
    /// The field's bits for value `v` (for or-ing constants together).
    [[nodiscard]] static constexpr std::uint64_t bits(std::uint64_t v = 1) noexcept {
        return (v << Lsb) & mask;
    }
};

} // namespace vcpu
