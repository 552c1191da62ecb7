#pragma once
/// \file
/// How the KVM HAL moves an architecture's register storage. An architecture's
/// register-block tags (`Arch::register_blocks`) and keyed banks
/// (`Arch::keyed_banks`) are arch-neutral; this header declares the traits
/// that map each of them to KVM ioctls, specialised per host ABI
/// (x86: include/kvm/x86_64_abi.hpp).

#include <kvm/ioctls.hpp>
#include <vcpu/config.hpp>

#include <cstddef>
#include <cstdint>

namespace vcpu::kvm {

/// KVM ioctls and sync-register placement of register block `B`.
///
/// A specialisation provides:
/// - `static constexpr ioctl_def<fd_kind::vcpu> get, set;` — the block's
///   GET/SET ioctls, whose argument is a `B::layout*`;
/// - `static constexpr std::uint64_t sync_bit;` — its bit in
///   `kvm_run::kvm_valid_regs`/`kvm_dirty_regs` (KVM API 5 "The kvm_run
///   structure", `KVM_CAP_SYNC_REGS`), or 0 when KVM never syncs it;
/// - `static constexpr std::size_t sync_offset;` — its offset in `kvm_run::s`.
///
/// The primary template is left undefined: using a block the host cannot move
/// fails to compile, naming this trait.
template <class B>
struct block_traits;

/// KVM ioctls of keyed bank `Bank` (x86 MSRs). A specialisation provides
/// `template <class Sys> static result<std::uint64_t> get(int vcpu_fd, std::uint64_t key) noexcept`
/// and `template <class Sys> static result<void> set(int vcpu_fd, std::uint64_t key, std::uint64_t v) noexcept`.
template <class Bank>
struct keyed_traits;

/// True when `block_traits<B>` is specialised on this host.
template <class B>
concept KvmBlock = requires {
    { block_traits<B>::get.code } -> std::convertible_to<unsigned long>;
    { block_traits<B>::set.code } -> std::convertible_to<unsigned long>;
    { block_traits<B>::sync_bit } -> std::convertible_to<std::uint64_t>;
    { block_traits<B>::sync_offset } -> std::convertible_to<std::size_t>;
};

} // namespace vcpu::kvm
