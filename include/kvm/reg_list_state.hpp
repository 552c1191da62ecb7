#pragma once
/// \file
/// `basic_reg_list_state<Rules>`: the whole state of one vCPU of an architecture whose KVM moves
/// every register through ONE_REG (arm64, riscv64): each register `KVM_GET_REG_LIST` reports
/// (KVM API 4.84), read with `KVM_GET_ONE_REG` (4.69) at the size its id's size field gives, and
/// `KVM_GET_MP_STATE` (4.38). One generic implementation; what differs per architecture — the
/// order registers must be restored in, which ones KVM reports but refuses to write — is a
/// `RegListRules` policy (kvm/aarch64_state.hpp, kvm/riscv64_state.hpp). docs/state.md,
/// "AArch64 and RISC-V".
///
/// Same shape as `x86_64_vcpu_state` (kvm/x86_64_state.hpp): `save(hal_vcpu&)`, `load(hal_vcpu&)`,
/// `serialize()`, `deserialize(span)`.
///
/// State-transfer path, not the run loop: `save`, `load`, `serialize` and `deserialize` allocate.
/// The ioctls are generic `<linux/kvm.h>` codes and the per-arch rules use the arch mirrors of
/// include/arch/, so this header compiles on every host (the blob format and the restore order
/// are unit-tested with a fake kernel on any host); issuing the calls is meaningful only on the
/// rules' architecture.

#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/vcpu.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

namespace vcpu::kvm {

/// How `load` writes one register (the per-architecture rules decide, by id).
enum class reg_restore : std::uint8_t {
    /// Written with `KVM_SET_ONE_REG` in its phase; a refusal is an error.
    write,
    /// Configuration that KVM fixes at the first `KVM_RUN` or checks against the host (arm64 ID
    /// and firmware registers, riscv64 ISA/SBI extensions and config): read first and written
    /// only when the saved value differs, so loading into a vCPU that already ran or whose host
    /// has the same configuration costs no refused write; a refused write of a different value is
    /// an error naming the register and both values.
    write_if_differs,
    /// KVM reports it but refuses every write (riscv64 timer frequency): never written; a saved
    /// value that differs from the vCPU's is an error (the state comes from another host).
    read_only,
};

/// Where one register goes in `load`: phases run in increasing order (registers of one phase in
/// the order `KVM_GET_REG_LIST` gave them), and how it is written.
struct reg_rule {
    std::uint8_t phase = 0;                  ///< lower phases are written first
    reg_restore how = reg_restore::write;    ///< see `reg_restore`
};

/// **RegListRules** — *intent*: what `basic_reg_list_state` needs to know about one architecture.
///
/// *Minimal complete definition*: `static constexpr std::array<char, 8> magic` (first bytes of a
/// blob, different per architecture), `static constexpr std::uint64_t arch_bits` (the
/// `KVM_REG_ARCH_MASK` field every id of the architecture carries), `static constexpr const char*
/// load_op` and `deserialize_op` (the op of errors `load` and `deserialize` make themselves),
/// `static reg_rule rule(std::uint64_t id) noexcept`.
///
/// *Laws*: `rule` is a pure function of the id.
template <class R>
concept RegListRules = requires(std::uint64_t id) {
    { R::magic } -> std::convertible_to<std::array<char, 8>>;
    { R::arch_bits } -> std::convertible_to<std::uint64_t>;
    { R::load_op } -> std::convertible_to<const char*>;
    { R::deserialize_op } -> std::convertible_to<const char*>;
    { R::rule(id) } noexcept -> std::same_as<reg_rule>;
};

/// Header of a serialized `basic_reg_list_state` (host byte order; all three architectures that
/// use it are little-endian). The body is `reg_count` 8-byte ids, then the registers' values
/// back to back, each `KVM_REG_SIZE(id)` bytes, in id order.
struct reg_list_state_header {
    std::array<char, 8> magic{};     ///< the rules' magic ("vcpua64s", "vcpurv6s")
    std::uint32_t version = 0;       ///< `reg_list_state_header::current_version`
    std::uint32_t header_size = 0;   ///< `sizeof(reg_list_state_header)`
    std::uint32_t reg_count = 0;     ///< registers in the body
    std::uint32_t mp_state = 0;      ///< `KVM_MP_STATE_*`
    std::uint64_t value_bytes = 0;   ///< bytes of the values section (sum of the ids' sizes)
    std::uint64_t body_size = 0;     ///< bytes after the header: `8 * reg_count + value_bytes`
    std::uint64_t body_hash = 0;     ///< FNV-1a 64 of the header (this field 0) and the body

    /// The format version this library writes and reads (others are refused with EPROTO).
    static constexpr std::uint32_t current_version = 1;
    /// Most registers a blob may list (arm64 with SVE lists about 600, riscv64 about 250).
    static constexpr std::uint32_t max_regs = 65536;
};
static_assert(std::is_standard_layout_v<reg_list_state_header> && std::is_trivially_copyable_v<reg_list_state_header>);
static_assert(sizeof(reg_list_state_header) == 48 && offsetof(reg_list_state_header, version) == 8 &&
              offsetof(reg_list_state_header, header_size) == 12 &&
              offsetof(reg_list_state_header, reg_count) == 16 && offsetof(reg_list_state_header, mp_state) == 20 &&
              offsetof(reg_list_state_header, value_bytes) == 24 &&
              offsetof(reg_list_state_header, body_size) == 32 && offsetof(reg_list_state_header, body_hash) == 40,
              "kvm: reg_list_state_header is a file format: its layout must not change within a version");

namespace detail {
/// Bytes of ONE_REG register `id` (`KVM_REG_SIZE`: 1 << the size field, bits 55:52).
[[nodiscard]] constexpr std::uint64_t one_reg_size(std::uint64_t id) noexcept {
    return std::uint64_t{1} << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
}
/// The widest ONE_REG register (`KVM_REG_SIZE_U2048`, arm64 SVE Z registers at VL 2048).
inline constexpr std::size_t max_one_reg_bytes = 256;
/// FNV-1a 64 of `b`, continuing from `x` (the offset basis by default).
[[nodiscard]] inline std::uint64_t state_fnv1a(std::span<const std::byte> b,
                                               std::uint64_t x = 0xcbf29ce484222325ull) noexcept {
    for (auto c : b) x = (x ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
    return x;
}
/// The first (up to) 8 bytes of a register value as a number, for error messages.
[[nodiscard]] inline std::uint64_t low_word(std::span<const std::byte> v) noexcept {
    std::uint64_t w = 0;
    std::memcpy(&w, v.data(), std::min<std::size_t>(v.size(), sizeof w));
    return w;
}
} // namespace detail

/// Every register `KVM_GET_REG_LIST` reports for one vCPU, and its MP state. See the file
/// comment; `Rules` is the architecture's `RegListRules`.
template <RegListRules Rules>
struct basic_reg_list_state {
    std::vector<std::uint64_t> ids;  ///< as `KVM_GET_REG_LIST` listed them
    std::vector<std::byte> values;   ///< the registers' values back to back, `KVM_REG_SIZE(id)` bytes each
    std::uint32_t mp_state = 0;      ///< `KVM_MP_STATE_*` (KVM_GET_MP_STATE)

    /// The saved value of register `id`, empty when the state does not hold it.
    [[nodiscard]] std::span<const std::byte> value(std::uint64_t id) const noexcept {
        std::size_t at = 0;
        for (auto i : ids) {
            const auto n = static_cast<std::size_t>(detail::one_reg_size(i));
            if (i == id) return std::span<const std::byte>(values).subspan(at, n);
            at += n;
        }
        return {};
    }
    /// The saved value of a register of at most 8 bytes (0 when absent).
    [[nodiscard]] std::uint64_t value_u64(std::uint64_t id) const noexcept {
        auto v = value(id);
        return v.empty() ? 0 : detail::low_word(v);
    }
    /// Replaces the saved value of register `id` (same size); false when the state lacks it.
    bool set_value(std::uint64_t id, std::span<const std::byte> v) noexcept {
        std::size_t at = 0;
        for (auto i : ids) {
            const auto n = static_cast<std::size_t>(detail::one_reg_size(i));
            if (i == id) {
                if (v.size() != n) return false;
                std::memcpy(values.data() + at, v.data(), n);
                return true;
            }
            at += n;
        }
        return false;
    }

    /// Saves `cpu`'s state: first completes an exit KVM has not finished (`complete_pending_io`,
    /// KVM API 4.10: an MMIO read's data, an SBI call's return must reach the registers before
    /// they are read; an MMIO write's instruction must be skipped, else the restored vCPU issues
    /// it again — measured: arm64 re-sent the ucall it was saved at), then `KVM_GET_REG_LIST` (sized by its E2BIG answer), `KVM_GET_ONE_REG` of
    /// every id at its size, and `KVM_GET_MP_STATE`. On arm64 with SVE the vCPU must be finalized
    /// (before, KVM_GET_REG_LIST fails with EPERM, KVM API 4.84). Errors: the failing ioctl's name,
    /// errno, the register and the vCPU id.
    template <class Sys, class Arch>
    [[nodiscard]] static result<basic_reg_list_state> save(hal_vcpu<Sys, Arch>& cpu) {
        basic_reg_list_state s;
        VCPU_TRY_VOID(cpu.complete_pending_io(true));
        auto list = reg_list_of(cpu);
        if (!list) return list.err();
        s.ids = std::move(*list);
        std::uint64_t bytes = 0;
        for (auto id : s.ids) bytes += detail::one_reg_size(id);
        s.values.resize(static_cast<std::size_t>(bytes));
        std::size_t at = 0;
        for (auto id : s.ids) {
            const auto n = static_cast<std::size_t>(detail::one_reg_size(id));
            if (n > detail::max_one_reg_bytes)
                return error{ioctls::vcpu::get_reg_list.name, EPROTO, "register wider than KVM_REG_SIZE_U2048"}
                    .with_hex("reg", id);
            VCPU_TRY_VOID(cpu.get_one_reg(id, std::span(s.values).subspan(at, n)));
            at += n;
        }
        ::kvm_mp_state mp{};
        if (auto r = cpu.ioctl(ioctls::vcpu::get_mp_state, &mp); !r) return r.err();
        s.mp_state = mp.mp_state;
        return s;
    }

    /// Loads this state into `cpu`, a vCPU of a VM with the same memory and the same vCPU features
    /// (arm64: `KVM_ARM_VCPU_INIT` with the same features, SVE finalized; riscv64: created, never
    /// run or run with the same configuration). Steps:
    /// 1. completes a pending exit of `cpu`;
    /// 2. `KVM_GET_REG_LIST` of `cpu` must list exactly the saved ids (else EINVAL naming the first
    ///    id one side lacks: the vCPU features differ);
    /// 3. registers by `Rules::rule(id).phase`, lowest first (the architecture's order: firmware
    ///    and ID registers / ISA configuration first, timers last, see the rules), each as its
    ///    `reg_restore` says;
    /// 4. `KVM_SET_MP_STATE` last (a vCPU made runnable before its registers were in place could
    ///    be entered by another thread's PSCI/HSM call with half a state).
    /// Errors: "KVM_SET_ONE_REG" with errno, the register, the saved value's low 64 bits and the
    /// vCPU id; "<arch> state load" EINVAL for a read-only register that differs.
    template <class Sys, class Arch>
    [[nodiscard]] result<void> load(hal_vcpu<Sys, Arch>& cpu) const {
        const char* op = load_op();
        if (auto c = check_sizes(op); !c) return c;
        VCPU_TRY_VOID(cpu.complete_pending_io(true));
        auto have = reg_list_of(cpu);
        if (!have) return have.err();
        {
            auto mine = ids;
            auto theirs = *have;
            std::sort(mine.begin(), mine.end());
            std::sort(theirs.begin(), theirs.end());
            if (mine != theirs) {
                auto [a, b] = std::mismatch(mine.begin(), mine.end(), theirs.begin(), theirs.end());
                const bool saved_only = b == theirs.end() || (a != mine.end() && *a < *b);
                return error{op, EINVAL,
                             saved_only ? "the state has a register the vCPU lacks (vCPU features differ)"
                                        : "the vCPU has a register the state lacks (vCPU features differ)"}
                    .with_hex("reg", saved_only ? *a : *b)
                    .with("saved_regs", mine.size())
                    .with("vcpu_regs", theirs.size())
                    .with("vcpu_id", cpu.id());
            }
        }
        // Offsets of each value, then the phase order (stable: the list order within a phase).
        std::vector<std::size_t> offset(ids.size());
        std::size_t at = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            offset[i] = at;
            at += static_cast<std::size_t>(detail::one_reg_size(ids[i]));
        }
        std::vector<std::size_t> order(ids.size());
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return Rules::rule(ids[a]).phase < Rules::rule(ids[b]).phase; });
        std::array<std::byte, detail::max_one_reg_bytes> now{};
        for (std::size_t i : order) {
            const std::uint64_t id = ids[i];
            const auto n = static_cast<std::size_t>(detail::one_reg_size(id));
            const auto saved = std::span<const std::byte>(values).subspan(offset[i], n);
            const reg_rule r = Rules::rule(id);
            if (r.how != reg_restore::write) {
                VCPU_TRY_VOID(cpu.get_one_reg(id, std::span(now).first(n)));
                if (std::memcmp(now.data(), saved.data(), n) == 0) continue;
                if (r.how == reg_restore::read_only)
                    return error{op, EINVAL, "a read-only register differs from the saved state (another host?)"}
                        .with_hex("reg", id)
                        .with_hex("saved", detail::low_word(saved))
                        .with_hex("vcpu", detail::low_word(std::span<const std::byte>(now).first(n)))
                        .with("vcpu_id", cpu.id());
            }
            if (auto w = cpu.set_one_reg(id, saved); !w) {
                const bool config = r.how == reg_restore::write_if_differs;
                return error{ioctls::vcpu::set_one_reg.name, w.err().code,
                             config ? "configuration register differs and KVM refused it (EBUSY: only before "
                                      "the first KVM_RUN; EINVAL/EPERM: not on this host or vCPU)"
                                    : "register refused while loading state"}
                    .with_hex("reg", id)
                    .with_hex("saved", detail::low_word(saved))
                    .with("vcpu_id", cpu.id());
            }
        }
        ::kvm_mp_state mp{mp_state};
        if (auto r = cpu.ioctl(ioctls::vcpu::set_mp_state, &mp); !r) return error(r.err()).with("mp_state", mp_state);
        return ok();
    }

    /// The flat, versioned form: `reg_list_state_header`, the ids, the values.
    [[nodiscard]] std::vector<std::byte> serialize() const {
        reg_list_state_header h;
        h.magic = Rules::magic;
        h.version = reg_list_state_header::current_version;
        h.header_size = sizeof h;
        h.reg_count = static_cast<std::uint32_t>(ids.size());
        h.mp_state = mp_state;
        h.value_bytes = values.size();
        h.body_size = ids.size() * sizeof(std::uint64_t) + values.size();
        std::vector<std::byte> out(sizeof h + h.body_size);
        if (!ids.empty()) std::memcpy(out.data() + sizeof h, ids.data(), ids.size() * sizeof(std::uint64_t));
        if (!values.empty())
            std::memcpy(out.data() + sizeof h + ids.size() * sizeof(std::uint64_t), values.data(), values.size());
        std::memcpy(out.data(), &h, sizeof h); // body_hash still 0: hashed as such
        h.body_hash = detail::state_fnv1a(out);
        std::memcpy(out.data(), &h, sizeof h);
        return out;
    }

    /// Parses `serialize`'s output. Every size is checked before a byte is copied: a blob that is
    /// truncated or has trailing bytes, another magic (another architecture's state), another
    /// version (EPROTO), a register count above `max_regs`, sizes that disagree, a hash over
    /// header and body that does not match (EBADMSG), an id of another architecture, a size field
    /// above 2048 bits or a repeated id is an error (op "<arch> state deserialize", EINVAL unless
    /// said) naming what is wrong — never undefined behaviour.
    [[nodiscard]] static result<basic_reg_list_state> deserialize(std::span<const std::byte> blob) {
        const char* op = deserialize_op();
        reg_list_state_header h;
        if (blob.size() < sizeof h)
            return error{op, EINVAL, "truncated: shorter than the header"}.with("size", blob.size()).with("needed", sizeof h);
        std::memcpy(&h, blob.data(), sizeof h);
        if (h.magic != Rules::magic) return error{op, EINVAL, "not a vCPU state of this architecture (bad magic)"};
        if (h.version != reg_list_state_header::current_version)
            return error{op, EPROTO, "unsupported format version"}
                .with("version", h.version)
                .with("supported", reg_list_state_header::current_version);
        if (h.header_size != sizeof h) return error{op, EINVAL, "bad header size"}.with("header_size", h.header_size);
        if (h.reg_count > reg_list_state_header::max_regs)
            return error{op, EINVAL, "implausible register count"}.with("reg_count", h.reg_count);
        if (h.value_bytes > std::uint64_t{h.reg_count} * detail::max_one_reg_bytes)
            return error{op, EINVAL, "values section larger than the registers can be"}.with("value_bytes", h.value_bytes);
        const std::uint64_t want = std::uint64_t{h.reg_count} * sizeof(std::uint64_t) + h.value_bytes;
        if (h.body_size != want)
            return error{op, EINVAL, "body size disagrees with the header"}.with("body_size", h.body_size).with("expected", want);
        if (blob.size() - sizeof h < want)
            return error{op, EINVAL, "truncated: body shorter than the header says"}
                .with("size", blob.size())
                .with("needed", sizeof h + want);
        if (blob.size() - sizeof h > want)
            return error{op, EINVAL, "trailing bytes after the state"}.with("size", blob.size()).with("expected", sizeof h + want);
        const auto body = blob.subspan(sizeof h);
        {
            reg_list_state_header zeroed = h;
            zeroed.body_hash = 0;
            std::array<std::byte, sizeof zeroed> head{};
            std::memcpy(head.data(), &zeroed, sizeof zeroed);
            if (detail::state_fnv1a(body, detail::state_fnv1a(head)) != h.body_hash)
                return error{op, EBADMSG, "corrupt: hash mismatch"};
        }
        basic_reg_list_state s;
        s.ids.resize(h.reg_count);
        if (h.reg_count != 0) std::memcpy(s.ids.data(), body.data(), h.reg_count * sizeof(std::uint64_t));
        s.values.resize(static_cast<std::size_t>(h.value_bytes));
        if (h.value_bytes != 0)
            std::memcpy(s.values.data(), body.data() + h.reg_count * sizeof(std::uint64_t), s.values.size());
        s.mp_state = h.mp_state;
        if (auto c = s.check_sizes(op); !c) return c.err();
        return s;
    }

    /// Checks the ids against the values (each id of this architecture, at most 2048 bits, none
    /// twice, sizes adding up to `values.size()`): what `deserialize` and `load` rely on.
    [[nodiscard]] result<void> check_sizes(const char* op) const {
        std::uint64_t sum = 0;
        for (auto id : ids) {
            if ((id & KVM_REG_ARCH_MASK) != Rules::arch_bits)
                return error{op, EINVAL, "register id of another architecture"}.with_hex("reg", id);
            if (detail::one_reg_size(id) > detail::max_one_reg_bytes)
                return error{op, EINVAL, "register size field above 2048 bits"}.with_hex("reg", id);
            sum += detail::one_reg_size(id);
        }
        if (sum != values.size())
            return error{op, EINVAL, "register sizes disagree with the values"}.with("sizes", sum).with("values", values.size());
        auto sorted = ids;
        std::sort(sorted.begin(), sorted.end());
        if (auto d = std::adjacent_find(sorted.begin(), sorted.end()); d != sorted.end())
            return error{op, EINVAL, "register listed twice"}.with_hex("reg", *d);
        return ok();
    }

private:
    [[nodiscard]] static const char* load_op() noexcept { return Rules::load_op; }
    [[nodiscard]] static const char* deserialize_op() noexcept { return Rules::deserialize_op; }

    /// `KVM_GET_REG_LIST`, sized by its E2BIG answer (KVM API 4.84: "if the number of registers
    /// is larger than n, E2BIG is returned and n is set to the number needed").
    template <class Sys, class Arch>
    [[nodiscard]] static result<std::vector<std::uint64_t>> reg_list_of(hal_vcpu<Sys, Arch>& cpu) {
        std::vector<std::uint64_t> storage(1 + 512);
        for (int attempt = 0; attempt < 4; ++attempt) {
            auto r = cpu.reg_list(storage);
            if (r) return std::vector<std::uint64_t>(r->begin(), r->end());
            if (r.err().code != E2BIG) return r.err();
            const std::uint64_t needed = r.err().value("needed").value_or(storage.size() * 2);
            if (needed > 1 + std::size_t{reg_list_state_header::max_regs})
                return error{ioctls::vcpu::get_reg_list.name, E2BIG, "implausible register count"}.with("needed", needed);
            storage.assign(std::max(static_cast<std::size_t>(needed), storage.size() + 1), 0);
        }
        return error{ioctls::vcpu::get_reg_list.name, E2BIG, "the register list kept growing"}.with("vcpu_id", cpu.id());
    }
};

} // namespace vcpu::kvm
