#pragma once
/// \file
/// Decoding of the guest instructions an HS-mode hypervisor emulates: integer
/// loads and stores (standard and compressed, original or as the
/// *transformed instruction* the H extension writes to `htinst`), CSR
/// instructions and WFI.
///
/// Sources: RISC-V unprivileged spec, "RV32/64G Instruction Set Listings"
/// (LOAD/STORE/SYSTEM opcodes) and chapter "C Standard Extension" (C.LW, C.LD,
/// C.SW, C.SD, C.LWSP, C.LDSP, C.SWSP, C.SDSP) and "Zcb" (C.LBU, C.LHU, C.LH,
/// C.SB, C.SH); privileged spec, H extension, section "Transformed Instruction
/// or Pseudoinstruction for mtinst or htinst": bit 0 of a transformed
/// instruction is 1, bit 1 is 1 when the trapping instruction was 32 bits and
/// 0 when it was a 16-bit compressed one (the transformation yields the
/// equivalent 32-bit encoding), and the address-offset and immediate fields are
/// replaced, so only opcode, funct3 and rd/rs2 are read here; the values
/// 0x00002000/0x00003000 (32/64-bit read) and 0x00002020/0x00003020 (write)
/// with bit 0 clear are *pseudoinstructions* for implicit VS-stage page-table
/// accesses.
///
/// Everything here is `constexpr`, total over all inputs and free of UB: any
/// bit pattern yields a decoded access or "not one".

#include <vcpu/config.hpp>

#include <cstdint>
#include <optional>

namespace vcpu::riscv64::insn {

/// Major opcodes (unprivileged spec, Table "RISC-V base opcode map").
namespace opcode {
/// @{
/// Opcode values (bits 6:0), named as the opcode map names them.
inline constexpr std::uint32_t load = 0x03, load_fp = 0x07, store = 0x23, store_fp = 0x27,
                               amo = 0x2f, system = 0x73;
/// @}
} // namespace opcode

/// `wfi` (privileged spec, "Wait for Interrupt").
inline constexpr std::uint32_t wfi = 0x10500073;

/// Direction of a decoded memory access.
enum class mem_op : std::uint8_t { load, store };

/// A plain integer load or store.
struct mem_access {
    mem_op op = mem_op::load;  ///< load or store
    std::uint8_t width = 0;     ///< bytes: 1, 2, 4 or 8
    bool sign_extend = false;   ///< loads: LB/LH/LW (and C.LW, C.LH); LD needs none
    std::uint8_t reg = 0;       ///< loads: rd; stores: rs2 (0..31)
    std::uint8_t length = 0;    ///< bytes of the guest instruction: 2 or 4
    friend constexpr bool operator==(const mem_access&, const mem_access&) = default;
};

/// Length in bytes of the instruction whose low bits are `insn` (16-bit when
/// bits [1:0] != 0b11; longer encodings are not used by RV64GC).
[[nodiscard]] constexpr std::uint8_t length_of(std::uint32_t insn) noexcept {
    return (insn & 3u) == 3u ? 4 : 2;
}

/// Decodes a 32-bit standard encoding. nullopt unless it is LB, LH, LW, LD,
/// LBU, LHU, LWU, SB, SH, SW or SD.
[[nodiscard]] constexpr std::optional<mem_access> decode_standard(std::uint32_t insn,
                                                                  std::uint8_t length = 4) noexcept {
    if ((insn & 3u) != 3u) return std::nullopt;
    const std::uint32_t op = insn & 0x7fu;
    const std::uint32_t f3 = (insn >> 12) & 7u;
    if (op == opcode::load) {
        if (f3 == 7) return std::nullopt; // reserved (would be LDU on RV128)
        const auto w = static_cast<std::uint8_t>(1u << (f3 & 3u));
        const bool sext = f3 < 3; // LB, LH, LW; LD (3) fills the register
        return mem_access{mem_op::load, w, sext, static_cast<std::uint8_t>((insn >> 7) & 31u), length};
    }
    if (op == opcode::store) {
        if (f3 > 3) return std::nullopt;
        return mem_access{mem_op::store, static_cast<std::uint8_t>(1u << f3), false,
                          static_cast<std::uint8_t>((insn >> 20) & 31u), length};
    }
    return std::nullopt;
}

/// Decodes a 16-bit compressed encoding (RV64C + Zcb). nullopt unless it is
/// C.LW, C.LD, C.SW, C.SD, C.LWSP, C.LDSP, C.SWSP, C.SDSP, C.LBU, C.LHU,
/// C.LH, C.SB or C.SH (C.LWSP/C.LDSP with rd = 0 are reserved).
[[nodiscard]] constexpr std::optional<mem_access> decode_compressed(std::uint32_t insn) noexcept {
    const std::uint32_t c = insn & 0xffffu;
    const std::uint32_t quadrant = c & 3u;
    const std::uint32_t f3 = (c >> 13) & 7u;
    const auto rdp = static_cast<std::uint8_t>(8u + ((c >> 2) & 7u)); // rd' / rs2'
    const auto rd = static_cast<std::uint8_t>((c >> 7) & 31u);
    const auto rs2 = static_cast<std::uint8_t>((c >> 2) & 31u);
    if (quadrant == 0) {
        switch (f3) {
        case 2: return mem_access{mem_op::load, 4, true, rdp, 2};   // C.LW
        case 3: return mem_access{mem_op::load, 8, false, rdp, 2};  // C.LD
        case 6: return mem_access{mem_op::store, 4, false, rdp, 2}; // C.SW
        case 7: return mem_access{mem_op::store, 8, false, rdp, 2}; // C.SD
        case 4: { // Zcb
            const std::uint32_t f6 = (c >> 10) & 0x3fu;
            const bool bit6 = ((c >> 6) & 1u) != 0;
            if (f6 == 0x20) return mem_access{mem_op::load, 1, false, rdp, 2};         // C.LBU
            if (f6 == 0x21) return mem_access{mem_op::load, 2, bit6, rdp, 2};          // C.LHU / C.LH
            if (f6 == 0x22) return mem_access{mem_op::store, 1, false, rdp, 2};        // C.SB
            if (f6 == 0x23 && !bit6) return mem_access{mem_op::store, 2, false, rdp, 2}; // C.SH
            return std::nullopt;
        }
        default: return std::nullopt; // C.ADDI4SPN, C.FLD, C.FSD, reserved
        }
    }
    if (quadrant == 2) {
        switch (f3) {
        case 2: return rd != 0 ? std::optional(mem_access{mem_op::load, 4, true, rd, 2}) : std::nullopt;
        case 3: return rd != 0 ? std::optional(mem_access{mem_op::load, 8, false, rd, 2}) : std::nullopt;
        case 6: return mem_access{mem_op::store, 4, false, rs2, 2}; // C.SWSP
        case 7: return mem_access{mem_op::store, 8, false, rs2, 2}; // C.SDSP
        default: return std::nullopt;
        }
    }
    return std::nullopt;
}

/// Decodes an original (untransformed) instruction of either length.
[[nodiscard]] constexpr std::optional<mem_access> decode_original(std::uint32_t insn) noexcept {
    return (insn & 3u) == 3u ? decode_standard(insn, 4) : decode_compressed(insn);
}

/// What an `htinst` value says.
enum class htinst_kind : std::uint8_t {
    none,          ///< 0: the hardware gave no information
    transformed,   ///< bit 0 set: a transformed instruction (see `decode_transformed`)
    pseudo,        ///< an implicit VS-stage page-table access (0x2000/0x3000/0x2020/0x3020)
    reserved,      ///< any other value: not defined by the spec
};

/// Classifies an `htinst` value.
[[nodiscard]] constexpr htinst_kind classify_htinst(std::uint64_t htinst) noexcept {
    if (htinst == 0) return htinst_kind::none;
    if (htinst > 0xffffffffu) return htinst_kind::reserved;
    if ((htinst & 1u) != 0) return htinst_kind::transformed;
    if (htinst == 0x2000 || htinst == 0x3000 || htinst == 0x2020 || htinst == 0x3020)
        return htinst_kind::pseudo;
    return htinst_kind::reserved;
}

/// Decodes a transformed instruction from `htinst`: the 32-bit equivalent with
/// bit 1 telling the original length. nullopt unless it is a plain integer
/// load/store.
[[nodiscard]] constexpr std::optional<mem_access> decode_transformed(std::uint64_t htinst) noexcept {
    if (classify_htinst(htinst) != htinst_kind::transformed) return std::nullopt;
    const auto t = static_cast<std::uint32_t>(htinst);
    const std::uint8_t len = (t & 2u) != 0 ? 4 : 2;
    return decode_standard(t | 2u, len);
}

/// A Zicsr instruction, in KVM's terms (`arch/riscv/kvm/vcpu_insn.c`
/// `csr_insn`): the CSR's new value is `(old & ~write_mask) | (new_value &
/// write_mask)` and `old` goes to `rd`.
struct csr_op {
    std::uint16_t csr = 0;         ///< CSR number (bits 31:20)
    std::uint8_t rd = 0;           ///< destination of the old value (0: discarded)
    std::uint8_t rs1 = 0;          ///< source register, or the 5-bit immediate when `immediate`
    bool immediate = false;        ///< CSRRWI/CSRRSI/CSRRCI
    std::uint8_t funct3 = 0;       ///< 1 RW, 2 RS, 3 RC, 5 RWI, 6 RSI, 7 RCI

    /// `write_mask` and `new_value` for source value `src` (the value of
    /// `rs1`, or the immediate): CSRRW(I) writes all bits with `src`; CSRRS(I)
    /// sets the bits of `src`; CSRRC(I) clears them.
    [[nodiscard]] constexpr std::uint64_t write_mask(std::uint64_t src) const noexcept {
        return (funct3 & 3u) == 1 ? ~std::uint64_t{0} : src;
    }
    /// The bits the instruction writes under `write_mask(src)`: `src` for CSRRW(I), all ones for CSRRS(I), zero for CSRRC(I).
    [[nodiscard]] constexpr std::uint64_t new_value(std::uint64_t src) const noexcept {
        switch (funct3 & 3u) {
        case 1: return src;
        case 2: return ~std::uint64_t{0};
        default: return 0;
        }
    }
};

/// Decodes CSRRW/CSRRS/CSRRC/CSRRWI/CSRRSI/CSRRCI; nullopt otherwise.
[[nodiscard]] constexpr std::optional<csr_op> decode_csr(std::uint32_t insn) noexcept {
    if ((insn & 0x7fu) != opcode::system) return std::nullopt;
    const auto f3 = static_cast<std::uint8_t>((insn >> 12) & 7u);
    if (f3 == 0 || f3 == 4) return std::nullopt; // ECALL/WFI/SRET..., HLV/HSV
    return csr_op{static_cast<std::uint16_t>(insn >> 20), static_cast<std::uint8_t>((insn >> 7) & 31u),
                  static_cast<std::uint8_t>((insn >> 15) & 31u), f3 >= 5, f3};
}

/// Sign- or zero-extends the low `width` bytes of `v` to 64 bits.
[[nodiscard]] constexpr std::uint64_t extend(std::uint64_t v, std::uint8_t width, bool sign) noexcept {
    if (width >= 8) return v;
    if (width == 0) return 0;
    const unsigned bits = width * 8u;
    const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
    v &= mask;
    if (sign && ((v >> (bits - 1)) & 1u) != 0) v |= ~mask;
    return v;
}

} // namespace vcpu::riscv64::insn
