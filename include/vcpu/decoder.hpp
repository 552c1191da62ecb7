#pragma once
/// \file
/// `exit_decoder<Arch, Raw>`: the customization point that turns a HAL's raw
/// exit record into typed exits. Decoding is keyed on the pair (architecture,
/// record type), so the set is open on both sides: a new HAL with a record
/// type of its own specializes `exit_decoder` for the architectures it runs,
/// in its own headers, without editing the architecture policies (for
/// example, a bare-metal arm64 HAL maps its trap frame onto
/// `aarch64::el2_syndrome` and calls `aarch64::decode`). The Linux-KVM
/// specializations for `kvm::run_view` are in kvm/exits.hpp; the ISA-level
/// ones (ESR_EL2, scause/htinst) are in each `arch/<a>/arch.hpp`.

#include <vcpu/config.hpp>

#include <utility>

namespace vcpu {

/// How `Arch` decodes a `Raw` exit record. A specialization provides
/// `template <class Visitor> static void decode(const Raw&, Visitor&&) noexcept`,
/// which calls the visitor exactly once with an lvalue exit of one of
/// `Arch::exit_types` (see the `ExitDecoder` concept for the laws). The
/// primary template serves an arch policy that decodes a record of its own
/// with a static member `Arch::decode(const Raw&, Visitor&&)` (a small custom
/// arch with its own HAL, as in examples/custom_arch); without either, there
/// is no `decode` and `DecodesRecord<Arch, Raw>` is false.
template <class Arch, class Raw>
struct exit_decoder {
    /// Forwards to `Arch::decode` when the arch policy has one for `Raw`.
    template <class Visitor>
        requires requires(const Raw& raw, Visitor& visit) { Arch::decode(raw, visit); }
    [[gnu::always_inline]] static constexpr void decode(const Raw& raw, Visitor&& visit) noexcept {
        Arch::decode(raw, std::forward<Visitor>(visit));
    }
};

/// Decodes `raw` as an exit of `Arch` through `exit_decoder<Arch, Raw>`.
template <class Arch, class Raw, class Visitor>
[[gnu::always_inline]] constexpr void decode_exit(const Raw& raw, Visitor&& visit) noexcept {
    exit_decoder<Arch, Raw>::decode(raw, std::forward<Visitor>(visit));
}

} // namespace vcpu
