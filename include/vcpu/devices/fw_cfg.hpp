#pragma once
/// \file
/// QEMU's firmware configuration device, x86 I/O-port interface
/// (docs/specs/fw_cfg.rst in QEMU: "Selector Register" at 0x510, 16 bits,
/// "Data Register" at 0x511, 8 bits). Writing a key to the selector picks
/// an item and rewinds its offset; each byte read from the data port
/// returns the next byte of the item, and 0 past its end or for a key that
/// has no item. Numbers in the fixed items are little-endian; the file
/// directory (key 0x19) is big-endian, as the document says.
///
/// Items present: signature "QEMU" (0x00), interface id 1 = traditional
/// interface, no DMA (0x01), UUID (0x02), RAM size in bytes (0x03, u64),
/// nographic (0x04, u16 = 1), CPU count (0x05, u16), max CPUs (0x0f, u16),
/// and the file directory (0x19) with up to `max_files` named files whose
/// bytes the caller owns. kvm-unit-tests (lib/x86/fwcfg.c) reads 0x05 for
/// the CPU count and 0x03 for the RAM size.
///
/// Access rules follow QEMU's `fw_cfg_io` ("comb" region): a 16-bit write
/// at offset 0 selects; a 1-byte read at either offset reads data; other
/// reads return all ones, other writes are dropped (data writes were
/// removed from QEMU in 2.4).
///
/// Save/restore (`save` / `load`, record "FWCF", vcpu/devices/device_state.hpp): the selected
/// key and the read offset in its item. The machine description and the files are the VMM's
/// configuration, rebuilt by the restoring VMM, not state: `load` refuses an offset past the
/// end of the selected item as this device describes it (another machine's state).

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace vcpu::devices {

inline constexpr std::uint16_t fw_cfg_port = 0x510;  ///< selector; data at 0x511
/// Ports of the device: selector and data.
inline constexpr std::uint16_t fw_cfg_ports = 2;

/// Item keys (QEMU docs/specs/fw_cfg.rst "Selector Register" table,
/// include/standard-headers/linux/qemu_fw_cfg.h).
enum class fw_cfg_key : std::uint16_t {
    signature = 0x00,
    id = 0x01,
    uuid = 0x02,
    ram_size = 0x03,
    nographic = 0x04,
    nb_cpus = 0x05,
    machine_id = 0x06,
    max_cpus = 0x0f,
    file_dir = 0x19,
    file_first = 0x20, ///< selector of the first file in the directory
};

/// fw_cfg.rst "Interface Identification": bit 0 traditional interface.
inline constexpr std::uint32_t fw_cfg_id_traditional = 1u << 0;
/// fw_cfg.rst "File Directory": a `FWCfgFile` name field is 56 bytes.
inline constexpr std::size_t fw_cfg_file_name_bytes = 56;
/// sizeof(struct FWCfgFile): be32 size, be16 select, be16 reserved, name[56].
inline constexpr std::size_t fw_cfg_file_entry_bytes = 64;

/// What the machine looks like.
struct fw_cfg_config {
    std::uint64_t ram_size = 0;          ///< bytes of guest RAM
    std::uint16_t cpus = 1;              ///< vCPUs present at boot
    std::uint16_t max_cpus = 0;          ///< 0: same as `cpus`
    std::array<std::uint8_t, 16> uuid{}; ///< the machine UUID (zeros: none)
};

/// One file in the directory (name without the NUL, at most 55 bytes).
struct fw_cfg_file {
    std::string_view name;  ///< the file's name, e.g. "etc/e820" (at most 55 bytes)
    std::span<const std::byte> bytes;  ///< its contents; must outlive the device
};

/// The device over 0x510..0x511 (`range<0x510, 2, fw_cfg<>>`).
template <std::size_t MaxFiles = 8>
class basic_fw_cfg {
public:
    /// Most files the directory holds.
    static constexpr std::size_t max_files = MaxFiles;

    basic_fw_cfg() = default;
    /// A device describing the machine `c`, with no files yet.
    explicit basic_fw_cfg(const fw_cfg_config& c) noexcept : cfg_(c) {}

    /// Adds a file (its bytes must outlive the device). False when the
    /// directory is full, the name is empty or longer than 55 bytes, or a
    /// file is larger than 4 GiB - 1 (the directory's size field).
    bool add_file(fw_cfg_file f) noexcept {
        if (file_count_ == MaxFiles || f.name.empty() || f.name.size() >= fw_cfg_file_name_bytes ||
            f.bytes.size() > 0xffffffffu)
            return false;
        files_[file_count_++] = f;
        return true;
    }

    /// A 1-byte read at either port returns the next byte of the selected
    /// item (0 past its end); wider reads are not valid and return all ones.
    std::uint32_t read(std::uint64_t /*offset*/, std::uint8_t size) noexcept {
        if (size != 1) return 0xffffffffu;
        const std::uint8_t b = byte_at(key_, offset_);
        if (offset_ < item_size(key_)) ++offset_;
        return b;
    }
    /// A 16-bit write to the selector (offset 0) selects `value` and rewinds
    /// the item; every other write is dropped.
    void write(std::uint64_t offset, std::uint8_t size, std::uint64_t value) noexcept {
        if (offset == 0 && size == 2) {
            key_ = static_cast<std::uint16_t>(value);
            offset_ = 0;
        }
    }

    /// The selected key.
    [[nodiscard]] std::uint16_t selected() const noexcept { return key_; }
    /// The read offset in the selected item.
    [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

    /// Version of the state `save` writes (record tag "FWCF").
    static constexpr std::uint16_t state_version = 1;

    /// Appends the selector and offset as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "FWCF", state_version);
        state_writer w(out);
        w.u16(key_);
        w.u64(offset_);
        end_device_record(out, at);
    }

    /// Loads a record `save` wrote; on error the device is unchanged.
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "fw_cfg::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "FWCF", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto key = r.u16();
        const auto off = r.u64();
        if (auto f = finish_device_record(r, op); !f) return f.err();
        if (off > item_size(key))
            return error{op, EINVAL, "bad value: read offset past the selected item's end"}
                .with_hex("key", key)
                .with("offset", off)
                .with("item_size", item_size(key));
        key_ = key;
        offset_ = off;
        return ok();
    }

    /// Size in bytes of the item under `key` (0: no such item).
    [[nodiscard]] std::uint64_t item_size(std::uint16_t key) const noexcept {
        switch (static_cast<fw_cfg_key>(key)) {
        case fw_cfg_key::signature: return 4;
        case fw_cfg_key::id: return 4;
        case fw_cfg_key::uuid: return 16;
        case fw_cfg_key::ram_size: return 8;
        case fw_cfg_key::nographic:
        case fw_cfg_key::nb_cpus:
        case fw_cfg_key::max_cpus: return 2;
        case fw_cfg_key::file_dir: return 4 + file_count_ * fw_cfg_file_entry_bytes;
        default: break;
        }
        if (const auto* f = file(key)) return f->bytes.size();
        return 0;
    }

    /// Byte `off` of the item under `key` (0 past its end or for no item).
    [[nodiscard]] std::uint8_t byte_at(std::uint16_t key, std::uint64_t off) const noexcept {
        if (off >= item_size(key)) return 0;
        auto le = [off](std::uint64_t v) { return static_cast<std::uint8_t>(v >> (8 * off)); };
        switch (static_cast<fw_cfg_key>(key)) {
        case fw_cfg_key::signature: return static_cast<std::uint8_t>("QEMU"[off]);
        case fw_cfg_key::id: return le(fw_cfg_id_traditional);
        case fw_cfg_key::uuid: return cfg_.uuid[off];
        case fw_cfg_key::ram_size: return le(cfg_.ram_size);
        case fw_cfg_key::nographic: return le(1);
        case fw_cfg_key::nb_cpus: return le(cfg_.cpus);
        case fw_cfg_key::max_cpus: return le(cfg_.max_cpus != 0 ? cfg_.max_cpus : cfg_.cpus);
        case fw_cfg_key::file_dir: return dir_byte(off);
        default: break;
        }
        if (const auto* f = file(key)) return std::to_integer<std::uint8_t>(f->bytes[off]);
        return 0;
    }

private:
    [[nodiscard]] const fw_cfg_file* file(std::uint16_t key) const noexcept {
        const auto first = static_cast<std::uint16_t>(fw_cfg_key::file_first);
        if (key < first || static_cast<std::size_t>(key - first) >= file_count_) return nullptr;
        return &files_[key - first];
    }
    /// The directory: be32 count, then per file be32 size, be16 select,
    /// be16 reserved, name[56] NUL-padded (fw_cfg.rst "File Directory").
    [[nodiscard]] std::uint8_t dir_byte(std::uint64_t off) const noexcept {
        auto be = [](std::uint64_t v, unsigned width, std::uint64_t i) {
            return static_cast<std::uint8_t>(v >> (8 * (width - 1 - i)));
        };
        if (off < 4) return be(file_count_, 4, off);
        const std::uint64_t e = (off - 4) / fw_cfg_file_entry_bytes, i = (off - 4) % fw_cfg_file_entry_bytes;
        const auto& f = files_[e];
        if (i < 4) return be(f.bytes.size(), 4, i);
        if (i < 6) return be(static_cast<std::uint16_t>(fw_cfg_key::file_first) + e, 2, i - 4);
        if (i < 8) return 0;
        const std::uint64_t c = i - 8;
        return c < f.name.size() ? static_cast<std::uint8_t>(f.name[c]) : 0;
    }

    fw_cfg_config cfg_{};
    std::array<fw_cfg_file, MaxFiles> files_{};
    std::size_t file_count_ = 0;
    std::uint16_t key_ = 0;
    std::uint64_t offset_ = 0;
};

/// The fw_cfg device with room for 8 files.
using fw_cfg = basic_fw_cfg<>;

} // namespace vcpu::devices
