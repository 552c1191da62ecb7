#pragma once
/// \file
/// The concepts an architecture and a HAL satisfy. Each is built from small
/// named requirements so a failing check points at the missing piece, and
/// `basic_vcpu` restates them as `static_assert`s with readable messages.
///
/// Every concept below is documented in one outline:
/// **intent**, **minimal complete definition**, **laws**, **models**.

#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/registers.hpp>
#include <vcpu/result.hpp>

#include <vcpu/meta.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace vcpu {

namespace detail {
/// Stands in for "any handler" when checking a decoder: accepts every exit.
struct any_exit_visitor {
    template <class E>
    constexpr void operator()(E&) const noexcept {}
};
} // namespace detail

// ---------------------------------------------------------------------------
// RegisterFile
// ---------------------------------------------------------------------------

/// Named step: the arch lists its register descriptors.
template <class A>
concept HasRegisterList = requires { A::registers; };

/// Named step: general-purpose registers are reachable by number, as
/// instruction decoders need (x86 ModRM reg, AArch64 SRT, RISC-V rd).
template <class A>
concept HasGprIndexing = requires(unsigned i) {
    { A::gpr_count } -> std::convertible_to<unsigned>;
    { A::gpr(i) } -> RegisterDescriptor;
};

/// Named step: the arch names its program counter.
template <class A>
concept HasProgramCounter = requires {
    { A::pc } -> RegisterDescriptor;
};

/// Named step: the arch declares the storage its registers live in, which a
/// HAL must move (`MovesArchRegisters`): `register_blocks` and `keyed_banks`
/// (`type_list`s of block / bank tags, possibly empty) and `uses_one_reg`.
template <class A>
concept DeclaresRegisterStorage = requires {
    typename A::register_blocks;
    typename A::keyed_banks;
    { A::uses_one_reg } -> std::convertible_to<bool>;
};

/// **RegisterFile** — *intent*: an architecture's registers as compile-time
/// descriptors (name, id or offset, width, access) that a generic
/// `get`/`set` reaches through any HAL.
///
/// *Minimal complete definition*: `A::registers` (a `std::tuple` of
/// descriptors), `A::gpr_count` and `A::gpr(i)` for `i < gpr_count`,
/// `A::pc`, and the storage the descriptors name: `A::register_blocks`,
/// `A::keyed_banks` (`type_list`s) and `static constexpr bool
/// A::uses_one_reg`.
///
/// *Laws*: descriptor names are unique; `set(r, v)` then `get(r)` yields `v`
/// for every `access::rw` register whose architecture does not mask bits;
/// `gpr(i)` for `i >= gpr_count` is never called by the library.
///
/// *Models*: `vcpu::arch::x86_64` (blocks `kvm_regs`/`kvm_sregs`, MSRs by
/// index), `aarch64` and `riscv64` (ONE_REG ids).
template <class A>
concept RegisterFile =
    HasRegisterList<A> && HasGprIndexing<A> && HasProgramCounter<A> && DeclaresRegisterStorage<A>;

// ---------------------------------------------------------------------------
// ExitDecoder
// ---------------------------------------------------------------------------

/// Named step: the arch lists every exit type its decoders can produce.
template <class A>
concept HasExitTypes = requires { typename A::exit_types; };

/// Named step: `exit_decoder<A, Raw>` is specialized (visible here) for this
/// raw record type (vcpu/decoder.hpp).
template <class A, class Raw>
concept DecodesRecord = requires(const Raw& raw, detail::any_exit_visitor v) {
    exit_decoder<A, Raw>::decode(raw, v);
};

/// **ExitDecoder** — *intent*: turn one raw exit record (`kvm_run`, or an
/// ESR_EL2/FAR/HPFAR or scause/htval/htinst triple) into exactly one typed
/// exit, handed to a visitor, so dispatch inlines into the decoder's switch.
///
/// *Minimal complete definition*: `A::exit_types` (a `type_list` of exit
/// types) and a specialization `exit_decoder<A, Raw>` with
/// `static void decode(const Raw&, Visitor&&)` calling the visitor exactly
/// once with an lvalue exit of one of those types. The specialization may
/// live with the HAL (kvm/exits.hpp for `kvm::run_view`) or with the arch
/// (arch.hpp for ISA-level records); neither side needs editing to add the
/// other.
///
/// *Laws*: decode never reads or forms a view outside the record: sizes,
/// counts and offsets are validated first, and a record that fails becomes
/// `malformed_exit`. Unknown reasons become `unknown` with the raw code.
/// Decoding is deterministic and has no side effects except through the
/// visitor.
///
/// *Models*: `x86_64` and `aarch64`/`riscv64` over `kvm::run_view` (kvm/exits.hpp);
/// `aarch64` over `el2_syndrome`, `riscv64` over `hs_trap`.
template <class A, class Raw>
concept ExitDecoder = HasExitTypes<A> && DecodesRecord<A, Raw>;

// ---------------------------------------------------------------------------
// HAL
// ---------------------------------------------------------------------------

/// Named step: the HAL has a per-vCPU state type for arch `A`.
template <class H, class A>
concept HasVcpuState = requires { typename H::template vcpu<A>; };

/// Named step: a HAL vCPU enters the guest and exposes the exit record.
template <class V>
concept EntersGuest = requires(V& v) {
    typename V::raw_exit;
    { v.enter() } noexcept -> std::same_as<result<void>>;
    { v.exit_record() } noexcept -> std::same_as<typename V::raw_exit>;
};

/// Named step: the HAL can move register block `B` (load for reading,
/// modify for writing; modify marks the block dirty).
template <class V, class B>
concept MovesBlock = requires(V& v) {
    { v.template load<B>() } noexcept -> std::same_as<result<const typename B::layout*>>;
    { v.template modify<B>() } noexcept -> std::same_as<result<typename B::layout*>>;
};

/// Named step: the HAL reaches registers by ONE_REG id.
template <class V>
concept MovesOneReg = requires(V& v, std::uint64_t id, std::span<std::byte> out,
                               std::span<const std::byte> in) {
    { v.get_one_reg(id, out) } noexcept -> std::same_as<result<void>>;
    { v.set_one_reg(id, in) } noexcept -> std::same_as<result<void>>;
};

/// Named step: the HAL reaches entries of keyed bank `B`.
template <class V, class B>
concept MovesKeyed = requires(V& v, std::uint64_t key, std::uint64_t val) {
    { v.template get_keyed<B>(key) } noexcept -> std::same_as<result<std::uint64_t>>;
    { v.template set_keyed<B>(key, val) } noexcept -> std::same_as<result<void>>;
};

namespace detail {
template <class V, class List> struct moves_all_blocks;
template <class V, class... B>
struct moves_all_blocks<V, type_list<B...>> : std::bool_constant<(MovesBlock<V, B> && ...)> {};
template <class V, class List> struct moves_all_keyed;
template <class V, class... B>
struct moves_all_keyed<V, type_list<B...>> : std::bool_constant<(MovesKeyed<V, B> && ...)> {};
} // namespace detail

/// Named step: the HAL vCPU moves every storage kind arch `A` declares
/// (`A::register_blocks`, `A::keyed_banks` as `type_list`s, and
/// `A::uses_one_reg`).
template <class V, class A>
concept MovesArchRegisters =
    detail::moves_all_blocks<V, typename A::register_blocks>::value &&
    detail::moves_all_keyed<V, typename A::keyed_banks>::value &&
    (!A::uses_one_reg || MovesOneReg<V>);

/// **HalFor** — *intent*: a way to create, enter and inspect a vCPU of
/// architecture `A` (Linux KVM, a mock, a replay of a recording, a
/// bare-metal EL2/HS-mode entry path).
///
/// *Minimal complete definition*: a member template `H::vcpu<A>` with
/// `raw_exit`, `noexcept enter()` → `result<void>`, `noexcept exit_record()`
/// → `raw_exit`, and the register movers for every storage kind `A` uses.
///
/// *Laws*: after `enter()` succeeds, `exit_record()` describes the exit that
/// ended it (a signal or `immediate_exit` is reported as an "interrupted"
/// record, not an error); register writes made between two `enter()` calls
/// are visible to the guest at the next one; `load` after `modify` sees the
/// modified values.
///
/// *Models*: `vcpu::kvm::hal`, `vcpu::kvm::mock::hal`.
template <class H, class A>
concept HalFor = HasVcpuState<H, A> && EntersGuest<typename H::template vcpu<A>> &&
                 MovesArchRegisters<typename H::template vcpu<A>, A> &&
                 ExitDecoder<A, typename H::template vcpu<A>::raw_exit>;

/// **CpuInitFor** — *intent*: the initial/boot state of a vCPU (x86 real,
/// flat protected or long mode; AArch64 KVM target + PSCI; RISC-V pc/a0/a1),
/// written through the vCPU's register file and HAL.
///
/// *Minimal complete definition*: `p.apply(cpu)` → `result<void>`.
///
/// *Laws*: applying the same policy twice yields the same state; a failing
/// step returns its error and leaves later steps undone.
///
/// *Models*: `x86_64::real_mode`, `x86_64::flat_protected_mode`,
/// `x86_64::long_mode`; `aarch64::kvm_boot`; `riscv64::boot`.
template <class P, class Cpu>
concept CpuInitFor = requires(const P& p, Cpu& cpu) {
    { p.apply(cpu) } -> std::same_as<result<void>>;
};

} // namespace vcpu
