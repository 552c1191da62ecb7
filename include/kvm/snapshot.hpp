#pragma once
/// \file
/// Whole-VM snapshots in one file, for any architecture: guest memory slots, the VM-level device
/// state and one state blob per vCPU, written by one process and restored by another (or by the
/// same one into a new VM). docs/snapshot.md.
///
/// **File layout** (format version 1, host byte order):
///
/// ```
///  offset 0       snapshot_header       magic "vcpusnap", version, arch name, page size, counts,
///                                       sizes, the metadata hash
///                 snapshot_slot[n]      slot number, flags, guest address, size, file offset
///                 snapshot_vcpu_entry[m] vCPU id and state size
///                 VM state blob         (VmState::serialize, may be empty)
///                 device state blob     the VMM's own device models, opaque here (may be empty)
///                 vCPU state blobs      in entry order (VcpuState::serialize)
///  memory_offset  slot contents         page aligned, one after the other; all-zero pages are
///                                       holes (never written), so they cost no disk space
///  file_size
/// ```
///
/// **Lazy restore.** Slot contents sit at page-aligned file offsets, so `basic_snapshot_file::
/// map_slot` maps them with `mmap(MAP_PRIVATE)` straight from the file and adopts the mapping as
/// guest RAM (`basic_guest_ram::adopt`): nothing is read or copied at restore; a page comes
/// from the page cache when the guest first touches it and is copied only when written
/// (copy-on-write: the file never changes). Restore time therefore does not grow with RAM size.
///
/// **Integrity.** A 64-bit FNV-1a hash covers every metadata byte (header, tables, state blobs:
/// everything before `memory_offset`), so a corrupt header or state is refused before anything
/// is touched. Memory is not hashed: checking it would read every page of the file at restore,
/// which is exactly the cost lazy mapping avoids (a 1 GiB guest would restore in the time it
/// takes to read 1 GiB); the file's size is checked instead (a truncated memory section is
/// refused), and content corruption is left to the storage layer.
///
/// **Generic over the architecture.** The per-arch parts are template parameters: the vCPU state
/// type (shaped like `x86_64_vcpu_state`: `static save(hal_vcpu&)`, `load(hal_vcpu&) const`,
/// `serialize()`, `static deserialize(span)`) and the VM state type (`x86_64_vm_state`, or
/// `no_vm_state` for an arch that has none yet); the arch's name (`Arch::name`) is stored and
/// checked. The x86-64 machine-level helpers are in kvm/x86_64_snapshot.hpp.
///
/// Setup and state-transfer path only: allocates, reads and writes files (plain POSIX calls:
/// these are not KVM calls); mappings go through the `Sys` seam (`basic_mapping`).

#include <kvm/fd.hpp>
#include <kvm/mapping.hpp>
#include <kvm/sys.hpp>
#include <kvm/vm.hpp>
#include <vcpu/config.hpp>
#include <vcpu/result.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vcpu::kvm {

/// The fixed header at offset 0 of a snapshot file.
struct snapshot_header {
    std::array<char, 8> magic{};     ///< `magic_v`
    std::uint32_t version = 0;       ///< `current_version`
    std::uint32_t header_size = 0;   ///< `sizeof(snapshot_header)`
    std::array<char, 16> arch{};     ///< `Arch::name` of the snapshotted VM, NUL padded
    std::uint32_t page_size = 0;     ///< the writer's page size; slot offsets and sizes are multiples of it
    std::uint32_t slot_count = 0;    ///< `snapshot_slot` records after the header
    std::uint32_t vcpu_count = 0;    ///< `snapshot_vcpu_entry` records after the slots
    std::uint32_t flags = 0;         ///< none defined in version 1 (must be 0)
    std::uint64_t vm_state_size = 0; ///< bytes of the VM state blob
    std::uint64_t device_state_size = 0; ///< bytes of the device state blob (the VMM's, opaque)
    std::uint64_t metadata_size = 0; ///< bytes from offset 0 to the end of the last vCPU blob
    std::uint64_t memory_offset = 0; ///< page-aligned start of the slot contents
    std::uint64_t file_size = 0;     ///< the whole file's size (end of the last slot)
    std::uint64_t metadata_hash = 0; ///< FNV-1a 64 of bytes [0, metadata_size) with this field 0

    /// The first 8 bytes of every snapshot file: "vcpusnap".
    static constexpr std::array<char, 8> magic_v{'v', 'c', 'p', 'u', 's', 'n', 'a', 'p'};
    /// The format version this library writes and reads (others are refused with EPROTO).
    static constexpr std::uint32_t current_version = 1;
    /// Most slots a file may describe (KVM's own per-VM limit is of this order).
    static constexpr std::uint32_t max_slots = 512;
    /// Most vCPUs a file may describe.
    static constexpr std::uint32_t max_vcpus = 4096;
    /// Largest metadata section accepted (header, tables and state blobs), 256 MiB.
    static constexpr std::uint64_t max_metadata = std::uint64_t{256} << 20;
};
static_assert(std::is_standard_layout_v<snapshot_header> && std::is_trivially_copyable_v<snapshot_header>);
static_assert(sizeof(snapshot_header) == 96 && offsetof(snapshot_header, arch) == 16 &&
                  offsetof(snapshot_header, page_size) == 32 && offsetof(snapshot_header, vm_state_size) == 48 &&
                  offsetof(snapshot_header, device_state_size) == 56 && offsetof(snapshot_header, metadata_size) == 64 &&
                  offsetof(snapshot_header, memory_offset) == 72 && offsetof(snapshot_header, file_size) == 80 &&
                  offsetof(snapshot_header, metadata_hash) == 88,
              "kvm: snapshot_header is a file format: its layout must not change within a version");

/// One memory slot in a snapshot file.
struct snapshot_slot {
    std::uint32_t slot = 0;        ///< KVM slot number (KVM API 4.35)
    std::uint32_t flags = 0;       ///< `flag_read_only`
    std::uint64_t gpa = 0;         ///< guest physical address, page aligned
    std::uint64_t size = 0;        ///< bytes, a multiple of the page size
    std::uint64_t file_offset = 0; ///< where its contents start in the file, page aligned

    /// The slot was read-only (`KVM_MEM_READONLY`).
    static constexpr std::uint32_t flag_read_only = 1u << 0;
    /// Every flag this version defines.
    static constexpr std::uint32_t known_flags = flag_read_only;
};
static_assert(std::is_trivially_copyable_v<snapshot_slot> && sizeof(snapshot_slot) == 32 &&
              offsetof(snapshot_slot, gpa) == 8 && offsetof(snapshot_slot, size) == 16 &&
              offsetof(snapshot_slot, file_offset) == 24);

/// One vCPU in a snapshot file: its id and the size of its state blob.
struct snapshot_vcpu_entry {
    std::uint32_t id = 0;       ///< the vCPU id (KVM_CREATE_VCPU)
    std::uint32_t reserved = 0; ///< 0
    std::uint64_t size = 0;     ///< bytes of its state blob
};
static_assert(std::is_trivially_copyable_v<snapshot_vcpu_entry> && sizeof(snapshot_vcpu_entry) == 16);

/// One range of guest RAM to write: its slot, guest address and host bytes (both page aligned
/// and a whole number of pages long).
struct snapshot_region {
    std::uint32_t slot = 0;             ///< KVM slot number
    std::uint64_t gpa = 0;              ///< guest physical address
    std::span<const std::byte> host;    ///< the slot's host memory
    bool read_only = false;             ///< the slot is read-only
};

/// One vCPU's serialized state, to write.
struct snapshot_vcpu_blob {
    std::uint32_t id = 0;         ///< vCPU id
    std::vector<std::byte> state; ///< `VcpuState::serialize()`
};

/// How `write_snapshot_file` writes.
struct snapshot_write_options {
    bool skip_zero_pages = true; ///< leave all-zero pages as holes (sparse file)
    bool fsync = false;          ///< fsync the file (and its directory entry) before returning
};

/// What `write_snapshot_file` wrote.
struct snapshot_write_stats {
    std::uint64_t file_size = 0;    ///< the file's size (holes included)
    std::uint64_t memory_bytes = 0; ///< guest RAM described
    std::uint64_t written_pages = 0; ///< RAM pages written
    std::uint64_t zero_pages = 0;   ///< all-zero RAM pages left as holes
};

/// A VM state for architectures without one: nothing saved, nothing loaded, an empty blob.
struct no_vm_state {
    /// Saves nothing.
    template <class Vm>
    [[nodiscard]] static result<no_vm_state> save(const Vm&) noexcept {
        return no_vm_state{};
    }
    /// Loads nothing.
    template <class Vm>
    [[nodiscard]] result<void> load(const Vm&) const noexcept {
        return ok();
    }
    /// An empty blob.
    [[nodiscard]] std::vector<std::byte> serialize() const { return {}; }
    /// Accepts only an empty blob. Errors: EINVAL (op "no_vm_state::deserialize").
    [[nodiscard]] static result<no_vm_state> deserialize(std::span<const std::byte> b) noexcept {
        if (!b.empty()) return error{"no_vm_state::deserialize", EINVAL, "expected no VM state"}.with("size", b.size());
        return no_vm_state{};
    }
};

namespace detail {
/// FNV-1a 64 of `b`, continuing from `x`.
[[nodiscard]] inline std::uint64_t snapshot_fnv1a(std::span<const std::byte> b,
                                                  std::uint64_t x = 0xcbf29ce484222325ull) noexcept {
    for (auto c : b) x = (x ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
    return x;
}
/// `v` rounded up to a multiple of `a` (a power of two).
[[nodiscard]] constexpr std::uint64_t round_up(std::uint64_t v, std::uint64_t a) noexcept {
    return (v + a - 1) & ~(a - 1);
}
/// True when the `n` bytes at `p` (8-byte aligned, `n` a multiple of 8) are all zero.
[[nodiscard]] inline bool all_zero(const std::byte* p, std::size_t n) noexcept {
    const auto* w = reinterpret_cast<const std::uint64_t*>(p); // page-aligned guest RAM
    std::uint64_t acc = 0;
    for (std::size_t i = 0; i < n / 8; ++i) acc |= w[i];
    return acc == 0;
}
/// pwrite of all `n` bytes (retrying short writes and EINTR). Errors: "write snapshot".
[[nodiscard]] inline result<void> pwrite_all(int fd, const std::byte* p, std::size_t n, std::uint64_t off) noexcept {
    while (n != 0) {
        const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0) {
            if (errno == EINTR) continue;
            return last_error("write snapshot").with("offset", off).with("size", n);
        }
        p += w;
        n -= static_cast<std::size_t>(w);
        off += static_cast<std::uint64_t>(w);
    }
    return ok();
}
/// pread of all `n` bytes; EINVAL "truncated" when the file ends first. Errors: "read snapshot".
[[nodiscard]] inline result<void> pread_all(int fd, std::byte* p, std::size_t n, std::uint64_t off) noexcept {
    while (n != 0) {
        const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
        if (r < 0) {
            if (errno == EINTR) continue;
            return last_error("read snapshot").with("offset", off).with("size", n);
        }
        if (r == 0) return error{"read snapshot", EINVAL, "truncated: the file ends inside the metadata"}.with("offset", off);
        p += r;
        n -= static_cast<std::size_t>(r);
        off += static_cast<std::uint64_t>(r);
    }
    return ok();
}
/// Closes a plain fd on scope exit (the snapshot file is not a KVM fd).
struct file_closer {
    int fd = -1; ///< the descriptor
    ~file_closer() {
        if (fd >= 0) (void)::close(fd);
    }
};
} // namespace detail

/// Writes a snapshot file at `path`: `arch` (the `Arch::name` of the VM), the memory `ram`, the
/// VM state blob, the vCPU blobs and the VMM's `device_state` blob (its device models, opaque to
/// the library; empty when there is none), laid out as the file comment shows. The file is written
/// as `path` + ".tmp" and renamed over `path` at the end, so a failed write leaves any earlier
/// snapshot at `path` untouched. All-zero pages are skipped (holes) unless
/// `o.skip_zero_pages` is false. Precondition: the vCPUs are stopped (not in KVM_RUN) and the
/// blobs were taken after they stopped. Errors (op "write_snapshot_file" unless a syscall
/// failed): EINVAL for an arch name over 15 characters, a region whose address or size is not
/// page aligned, too many slots or vCPUs; "open snapshot", "write snapshot", "fsync snapshot",
/// "rename snapshot" with errno.
[[nodiscard]] inline result<snapshot_write_stats> write_snapshot_file(const char* path, std::string_view arch,
                                                                      std::span<const snapshot_region> ram,
                                                                      std::span<const std::byte> vm_state,
                                                                      std::span<const snapshot_vcpu_blob> vcpus,
                                                                      std::span<const std::byte> device_state = {},
                                                                      const snapshot_write_options& o = {}) {
    constexpr const char* op = "write_snapshot_file";
    const std::size_t page = detail::host_page_size();
    snapshot_header h;
    h.magic = snapshot_header::magic_v;
    h.version = snapshot_header::current_version;
    h.header_size = sizeof h;
    if (arch.empty() || arch.size() >= h.arch.size())
        return error{op, EINVAL, "arch name must be 1..15 characters"}.with_text("arch", arch);
    std::copy(arch.begin(), arch.end(), h.arch.begin());
    h.page_size = static_cast<std::uint32_t>(page);
    if (ram.size() > snapshot_header::max_slots)
        return error{op, EINVAL, "too many memory slots"}.with("slots", ram.size()).with("max", snapshot_header::max_slots);
    if (vcpus.size() > snapshot_header::max_vcpus)
        return error{op, EINVAL, "too many vCPUs"}.with("vcpus", vcpus.size()).with("max", snapshot_header::max_vcpus);
    h.slot_count = static_cast<std::uint32_t>(ram.size());
    h.vcpu_count = static_cast<std::uint32_t>(vcpus.size());
    h.vm_state_size = vm_state.size();
    h.device_state_size = device_state.size();

    std::uint64_t meta = sizeof h + ram.size() * sizeof(snapshot_slot) + vcpus.size() * sizeof(snapshot_vcpu_entry) +
                         vm_state.size() + device_state.size();
    for (const auto& v : vcpus) meta += v.state.size();
    if (meta > snapshot_header::max_metadata)
        return error{op, EINVAL, "metadata too large"}.with("metadata_size", meta).with("max", snapshot_header::max_metadata);
    h.metadata_size = meta;
    h.memory_offset = detail::round_up(meta, page);

    std::vector<snapshot_slot> slots(ram.size());
    std::uint64_t at = h.memory_offset;
    snapshot_write_stats stats;
    for (std::size_t i = 0; i < ram.size(); ++i) {
        const auto& r = ram[i];
        const auto host = reinterpret_cast<std::uintptr_t>(r.host.data());
        if (r.gpa % page != 0 || r.host.size() % page != 0 || r.host.empty() || host % 8 != 0)
            return error{op, EINVAL, "memory region is not whole, aligned pages"}
                .with("slot", r.slot)
                .with_range("gpa", r.gpa, r.host.size())
                .with("page_size", page);
        slots[i] = snapshot_slot{r.slot, r.read_only ? snapshot_slot::flag_read_only : 0u, r.gpa, r.host.size(), at};
        at += r.host.size();
        stats.memory_bytes += r.host.size();
    }
    h.file_size = at;
    stats.file_size = at;

    // Metadata in one buffer, hashed with the hash field 0.
    std::vector<std::byte> m(meta);
    std::byte* p = m.data();
    auto put = [&p](const void* src, std::size_t n) {
        if (n != 0) std::memcpy(p, src, n);
        p += n;
    };
    put(&h, sizeof h);
    put(slots.data(), slots.size() * sizeof(snapshot_slot));
    for (const auto& v : vcpus) {
        const snapshot_vcpu_entry e{v.id, 0, v.state.size()};
        put(&e, sizeof e);
    }
    put(vm_state.data(), vm_state.size());
    put(device_state.data(), device_state.size());
    for (const auto& v : vcpus) put(v.state.data(), v.state.size());
    h.metadata_hash = detail::snapshot_fnv1a(m);
    std::memcpy(m.data(), &h, sizeof h);

    const std::string tmp = std::string(path) + ".tmp";
    detail::file_closer f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (f.fd < 0) return last_error("open snapshot").with_text("path", tmp);
    auto fail = [&tmp](error e) {
        (void)::unlink(tmp.c_str());
        return e;
    };
    // The size first: pages never written stay holes that read as zeros.
    if (::ftruncate(f.fd, static_cast<off_t>(h.file_size)) != 0)
        return fail(last_error("write snapshot", "ftruncate").with("size", h.file_size));
    if (auto w = detail::pwrite_all(f.fd, m.data(), m.size(), 0); !w) return fail(w.err());
    for (std::size_t i = 0; i < ram.size(); ++i) {
        const auto bytes = ram[i].host;
        // Runs of non-zero pages, one pwrite each.
        std::size_t run = 0, run_len = 0;
        for (std::size_t off = 0; off <= bytes.size(); off += page) {
            const bool data = off < bytes.size() && (!o.skip_zero_pages || !detail::all_zero(bytes.data() + off, page));
            if (off < bytes.size()) ++(data ? stats.written_pages : stats.zero_pages);
            if (data) {
                if (run_len == 0) run = off;
                run_len += page;
                continue;
            }
            if (run_len != 0) {
                if (auto w = detail::pwrite_all(f.fd, bytes.data() + run, run_len, slots[i].file_offset + run); !w)
                    return fail(w.err());
                run_len = 0;
            }
        }
    }
    if (o.fsync && ::fsync(f.fd) != 0) return fail(last_error("fsync snapshot").with_text("path", tmp));
    if (::close(std::exchange(f.fd, -1)) != 0) return fail(last_error("write snapshot", "close").with_text("path", tmp));
    if (::rename(tmp.c_str(), path) != 0) return fail(last_error("rename snapshot").with_text("path", path));
    if (o.fsync) {
        // The rename is durable once the directory is.
        std::string dir(path);
        const auto slash = dir.rfind('/');
        dir = slash == std::string::npos ? std::string(".") : dir.substr(0, slash == 0 ? 1 : slash);
        detail::file_closer d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
        if (d.fd >= 0 && ::fsync(d.fd) != 0) return last_error("fsync snapshot", "directory").with_text("path", dir);
    }
    return stats;
}

/// The parsed metadata of a snapshot: header, slots, VM state, vCPU entries and blobs. Built by
/// `parse_snapshot_metadata` (which checks everything) and owned by `basic_snapshot_file`.
struct snapshot_metadata {
    snapshot_header header{};                 ///< the header
    std::vector<snapshot_slot> slots;         ///< the memory slots
    std::vector<snapshot_vcpu_entry> vcpus;   ///< the vCPU entries
    std::vector<std::byte> bytes;             ///< the metadata bytes [0, metadata_size)
    std::vector<std::uint64_t> vcpu_offsets;  ///< where each vCPU blob starts in `bytes`
    std::uint64_t vm_state_offset = 0;        ///< where the VM state blob starts in `bytes`
    std::uint64_t device_state_offset = 0;    ///< where the device state blob starts in `bytes`

    /// The VM state blob.
    [[nodiscard]] std::span<const std::byte> vm_state() const noexcept {
        return std::span(bytes).subspan(vm_state_offset, header.vm_state_size);
    }
    /// The device state blob (the VMM's).
    [[nodiscard]] std::span<const std::byte> device_state() const noexcept {
        return std::span(bytes).subspan(device_state_offset, header.device_state_size);
    }
    /// vCPU `i`'s state blob (`i` < `vcpus.size()`).
    [[nodiscard]] std::span<const std::byte> vcpu_state(std::size_t i) const noexcept {
        return std::span(bytes).subspan(vcpu_offsets[i], vcpus[i].size);
    }
};

/// Checks a snapshot header read from a file of `actual_file_size` bytes against what this
/// library reads: magic, version (EPROTO), header size, arch (`arch`; EINVAL "wrong arch" with
/// the file's arch as text), page size (the host's `page_size`), counts and sizes, and that the
/// file holds all of its memory section (EINVAL "truncated memory section"). Op
/// "snapshot header". Needs only the header: run before reading the rest.
[[nodiscard]] inline result<void> check_snapshot_header(const snapshot_header& h, std::string_view arch,
                                                        std::size_t page_size, std::uint64_t actual_file_size) noexcept {
    constexpr const char* op = "snapshot header";
    if (h.magic != snapshot_header::magic_v) return error{op, EINVAL, "not a vcpu snapshot (bad magic)"};
    if (h.version != snapshot_header::current_version)
        return error{op, EPROTO, "unsupported snapshot version"}
            .with("version", h.version)
            .with("supported", snapshot_header::current_version);
    if (h.header_size != sizeof h) return error{op, EINVAL, "bad header size"}.with("header_size", h.header_size);
    if (h.arch.back() != '\0') return error{op, EINVAL, "arch name not terminated"};
    const std::string_view file_arch(h.arch.data());
    if (file_arch != arch)
        return error{op, EINVAL, "wrong arch: the snapshot is of another architecture"}.with_text("snapshot_arch", file_arch);
    if (h.page_size != page_size)
        return error{op, EINVAL, "page size differs from this host's"}.with("snapshot_page_size", h.page_size).with("host_page_size", page_size);
    if (h.flags != 0) return error{op, EINVAL, "unknown flags"}.with_hex("flags", h.flags);
    if (h.slot_count > snapshot_header::max_slots) return error{op, EINVAL, "too many slots"}.with("slots", h.slot_count);
    if (h.vcpu_count > snapshot_header::max_vcpus) return error{op, EINVAL, "too many vCPUs"}.with("vcpus", h.vcpu_count);
    const std::uint64_t tables = sizeof h + std::uint64_t{h.slot_count} * sizeof(snapshot_slot) +
                                 std::uint64_t{h.vcpu_count} * sizeof(snapshot_vcpu_entry);
    if (h.metadata_size > snapshot_header::max_metadata || h.metadata_size < tables ||
        h.vm_state_size > h.metadata_size - tables || h.device_state_size > h.metadata_size - tables - h.vm_state_size)
        return error{op, EINVAL, "bad metadata size"}
            .with("metadata_size", h.metadata_size)
            .with("vm_state_size", h.vm_state_size)
            .with("device_state_size", h.device_state_size);
    if (h.memory_offset != detail::round_up(h.metadata_size, page_size))
        return error{op, EINVAL, "memory section not where the metadata ends"}.with("memory_offset", h.memory_offset);
    if (h.file_size < h.memory_offset) return error{op, EINVAL, "bad file size"}.with("file_size", h.file_size);
    if (actual_file_size < h.metadata_size)
        return error{op, EINVAL, "truncated: the file ends inside the metadata"}
            .with("file_size", actual_file_size)
            .with("metadata_size", h.metadata_size);
    if (actual_file_size < h.file_size)
        return error{op, EINVAL, "truncated memory section: the file is shorter than its slots"}
            .with("file_size", actual_file_size)
            .with("expected", h.file_size);
    return ok();
}

/// Parses and checks the metadata bytes `m` (the file's [0, metadata_size), header included):
/// the header (as `check_snapshot_header`), the hash (EBADMSG "corrupt"), every slot (aligned,
/// inside the memory section, in file order without overlap, known flags) and the vCPU
/// entries (sizes adding up, ids unique). Op "snapshot metadata" for what the header does not
/// cover. Never reads outside `m`.
[[nodiscard]] inline result<snapshot_metadata> parse_snapshot_metadata(std::span<const std::byte> m, std::string_view arch,
                                                                      std::size_t page_size, std::uint64_t actual_file_size) {
    constexpr const char* op = "snapshot metadata";
    snapshot_metadata out;
    auto& h = out.header;
    if (m.size() < sizeof h)
        return error{"snapshot header", EINVAL, "truncated: shorter than the header"}.with("size", m.size()).with("needed", sizeof h);
    std::memcpy(&h, m.data(), sizeof h);
    VCPU_TRY_VOID(check_snapshot_header(h, arch, page_size, actual_file_size));
    if (m.size() != h.metadata_size)
        return error{op, EINVAL, "metadata size disagrees with the header"}.with("size", m.size()).with("metadata_size", h.metadata_size);
    {
        snapshot_header zeroed = h;
        zeroed.metadata_hash = 0;
        std::array<std::byte, sizeof zeroed> head{};
        std::memcpy(head.data(), &zeroed, sizeof zeroed);
        if (detail::snapshot_fnv1a(m.subspan(sizeof h), detail::snapshot_fnv1a(head)) != h.metadata_hash)
            return error{op, EBADMSG, "corrupt: metadata hash mismatch"};
    }
    std::size_t at = sizeof h;
    out.slots.resize(h.slot_count);
    if (!out.slots.empty()) std::memcpy(out.slots.data(), m.data() + at, out.slots.size() * sizeof(snapshot_slot));
    at += out.slots.size() * sizeof(snapshot_slot);
    out.vcpus.resize(h.vcpu_count);
    if (!out.vcpus.empty()) std::memcpy(out.vcpus.data(), m.data() + at, out.vcpus.size() * sizeof(snapshot_vcpu_entry));
    at += out.vcpus.size() * sizeof(snapshot_vcpu_entry);
    out.vm_state_offset = at;
    at += h.vm_state_size; // both checked against metadata_size by check_snapshot_header
    out.device_state_offset = at;
    at += h.device_state_size;
    std::uint64_t expect = h.memory_offset;
    for (std::size_t i = 0; i < out.slots.size(); ++i) {
        const auto& s = out.slots[i];
        if ((s.flags & ~snapshot_slot::known_flags) != 0 || s.gpa % page_size != 0 || s.size % page_size != 0 ||
            s.size == 0 || s.file_offset != expect || s.size > h.file_size - s.file_offset ||
            s.gpa + (s.size - 1) < s.gpa)
            return error{op, EINVAL, "bad memory slot record"}
                .with("index", i)
                .with("slot", s.slot)
                .with_range("gpa", s.gpa, s.size)
                .with("file_offset", s.file_offset);
        expect = s.file_offset + s.size;
    }
    if (expect != h.file_size) return error{op, EINVAL, "slots do not fill the memory section"}.with("file_size", h.file_size).with("slots_end", expect);
    out.vcpu_offsets.resize(out.vcpus.size());
    for (std::size_t i = 0; i < out.vcpus.size(); ++i) {
        const auto& v = out.vcpus[i];
        if (v.reserved != 0 || v.size > m.size() - at)
            return error{op, EINVAL, "bad vCPU entry"}.with("index", i).with("vcpu_id", v.id).with("size", v.size);
        for (std::size_t j = 0; j < i; ++j)
            if (out.vcpus[j].id == v.id) return error{op, EINVAL, "duplicate vCPU id"}.with("vcpu_id", v.id);
        out.vcpu_offsets[i] = at;
        at += v.size;
    }
    if (at != m.size()) return error{op, EINVAL, "metadata sizes do not add up"}.with("parsed", at).with("metadata_size", m.size());
    out.bytes.assign(m.begin(), m.end());
    return out;
}

/// An opened, checked snapshot file: its metadata in memory and the fd its memory is mapped
/// from. Opening reads only the metadata (never the memory section) and checks all of it, so
/// a corrupt, truncated, wrong-version or wrong-arch file is refused before any VM is touched.
template <class Sys = linux_sys>
class basic_snapshot_file {
public:
    /// Opens `path`, checking it is a snapshot of architecture `arch` (`Arch::name`) for this
    /// host's page size. Errors: "open snapshot" / "read snapshot" with errno and path; the
    /// checks of `check_snapshot_header` and `parse_snapshot_metadata`.
    [[nodiscard]] static result<basic_snapshot_file> open(const char* path, std::string_view arch) {
        basic_fd<Sys> fd(Sys::open(path, O_RDONLY | O_CLOEXEC));
        if (!fd) return last_error("open snapshot").with_text("path", path);
        struct stat st{};
        if (::fstat(fd.get(), &st) != 0) return last_error("read snapshot", "fstat").with_text("path", path);
        const auto actual = static_cast<std::uint64_t>(st.st_size);
        snapshot_header h;
        if (actual < sizeof h)
            return error{"snapshot header", EINVAL, "truncated: shorter than the header"}.with("file_size", actual).with_text("path", path);
        VCPU_TRY_VOID(detail::pread_all(fd.get(), reinterpret_cast<std::byte*>(&h), sizeof h, 0));
        const std::size_t page = detail::host_page_size();
        // The error's one text names the path, unless it already names something (the arch).
        auto with_path = [path](error e) {
            if (e.text().empty()) e.with_text("path", path);
            return e;
        };
        if (auto c = check_snapshot_header(h, arch, page, actual); !c) return with_path(c.err());
        std::vector<std::byte> m(h.metadata_size);
        VCPU_TRY_VOID(detail::pread_all(fd.get(), m.data(), m.size(), 0));
        auto md = parse_snapshot_metadata(m, arch, page, actual);
        if (!md) return with_path(md.err());
        return basic_snapshot_file(std::move(fd), std::move(*md));
    }

    /// The header.
    [[nodiscard]] const snapshot_header& header() const noexcept { return md_.header; }
    /// The memory slots.
    [[nodiscard]] std::span<const snapshot_slot> slots() const noexcept { return md_.slots; }
    /// The VM state blob.
    [[nodiscard]] std::span<const std::byte> vm_state() const noexcept { return md_.vm_state(); }
    /// The device state blob the VMM wrote (empty when it wrote none).
    [[nodiscard]] std::span<const std::byte> device_state() const noexcept { return md_.device_state(); }
    /// The vCPU entries (ids and blob sizes).
    [[nodiscard]] std::span<const snapshot_vcpu_entry> vcpus() const noexcept { return md_.vcpus; }
    /// vCPU `i`'s state blob.
    [[nodiscard]] std::span<const std::byte> vcpu_state(std::size_t i) const noexcept { return md_.vcpu_state(i); }
    /// The snapshot file's fd (owned).
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }

    /// Maps slot `i`'s contents from the file, `MAP_PRIVATE | MAP_NORESERVE` (read-write, or
    /// read-only for a read-only slot), as guest RAM: nothing is read now; the guest's first
    /// touch of a page brings it from the page cache, its first write copies it (the file never
    /// changes). Errors: "mmap snapshot memory" with errno and size; EINVAL for a bad index.
    [[nodiscard]] result<basic_guest_ram<Sys>> map_slot(std::size_t i) const noexcept {
        if (i >= md_.slots.size()) return error{"mmap snapshot memory", EINVAL, "no such slot"}.with("index", i);
        const auto& s = md_.slots[i];
        const int prot = (s.flags & snapshot_slot::flag_read_only) != 0 ? PROT_READ : PROT_READ | PROT_WRITE;
        auto m = basic_mapping<Sys>::map("mmap snapshot memory", static_cast<std::size_t>(s.size), prot,
                                         MAP_PRIVATE | MAP_NORESERVE, fd_.get(), static_cast<off_t>(s.file_offset));
        if (!m) return error(m.err()).with("slot", s.slot);
        return basic_guest_ram<Sys>::adopt(std::move(*m));
    }

    /// Maps every slot (`map_slot`) and installs it in `vm` with its slot number, guest address
    /// and read-only flag. Returns the mappings, by slot order; keep them alive as long as the
    /// VM. Errors: the first failing map or `basic_vm::set_memory` (slots already installed stay:
    /// destroy the VM).
    [[nodiscard]] result<std::vector<basic_guest_ram<Sys>>> map_memory(basic_vm<Sys>& vm) const {
        std::vector<basic_guest_ram<Sys>> rams;
        rams.reserve(md_.slots.size());
        for (std::size_t i = 0; i < md_.slots.size(); ++i) {
            auto r = map_slot(i);
            if (!r) return r.err();
            const auto& s = md_.slots[i];
            VCPU_TRY_VOID(vm.set_memory(
                memory_slot{s.slot, s.gpa, r->bytes(), (s.flags & snapshot_slot::flag_read_only) != 0, false}));
            rams.push_back(std::move(*r));
        }
        return rams;
    }

private:
    basic_snapshot_file(basic_fd<Sys> fd, snapshot_metadata md) noexcept : fd_(std::move(fd)), md_(std::move(md)) {}
    basic_fd<Sys> fd_;
    snapshot_metadata md_;
};

/// Production snapshot file.
using snapshot_file = basic_snapshot_file<linux_sys>;

/// Saves the VM-level state (`VmState::save(vm)`) and each vCPU's (`VcpuState::save(cpu.hal())`,
/// which first completes pending I/O) and writes them with `ram` and the VMM's `device_state` to
/// `path` (`write_snapshot_file`), under `Cpu::arch_type::name`. Precondition: no vCPU is in KVM_RUN.
/// Errors: the first failing save, serialization or write.
template <class VcpuState, class VmState, class Sys, class Cpu>
[[nodiscard]] result<snapshot_write_stats> save_snapshot(const char* path, const basic_vm<Sys>& vm, std::span<Cpu> cpus,
                                                         std::span<const snapshot_region> ram,
                                                         std::span<const std::byte> device_state = {},
                                                         const snapshot_write_options& o = {}) {
    std::vector<snapshot_vcpu_blob> blobs;
    blobs.reserve(cpus.size());
    for (auto& c : cpus) {
        auto s = VcpuState::save(c.hal());
        if (!s) return s.err();
        blobs.push_back(snapshot_vcpu_blob{static_cast<std::uint32_t>(c.hal().id()), s->serialize()});
    }
    // After the vCPUs: their save completes pending I/O, which may still change device state.
    auto v = VmState::save(vm);
    if (!v) return v.err();
    const auto vm_blob = v->serialize();
    return write_snapshot_file(path, Cpu::arch_type::name, ram, vm_blob, blobs, device_state, o);
}

/// Loads a snapshot's VM state into `vm` (`VmState::load(vm, vm_args...)`), then vCPU `i`'s
/// state into `cpus[i]`. Every blob is deserialized first, and the vCPUs are matched by id,
/// so a snapshot that does not fit (EINVAL "vCPU layout mismatch" naming the counts or ids, op
/// "load_snapshot_state") or holds a bad state changes nothing. Memory is the caller's
/// (`basic_snapshot_file::map_memory`). Errors: as said, then the first failing load.
template <class VcpuState, class VmState, class Sys, class Cpu, class... VmArgs>
[[nodiscard]] result<void> load_snapshot_state(const basic_snapshot_file<Sys>& f, const basic_vm<Sys>& vm,
                                               std::span<Cpu> cpus, VmArgs&&... vm_args) {
    constexpr const char* op = "load_snapshot_state";
    if (cpus.size() != f.vcpus().size())
        return error{op, EINVAL, "vCPU layout mismatch: different vCPU counts"}
            .with("snapshot_vcpus", f.vcpus().size())
            .with("vm_vcpus", cpus.size());
    for (std::size_t i = 0; i < cpus.size(); ++i)
        if (static_cast<std::uint32_t>(cpus[i].hal().id()) != f.vcpus()[i].id)
            return error{op, EINVAL, "vCPU layout mismatch: different ids"}
                .with("index", i)
                .with("snapshot_id", f.vcpus()[i].id)
                .with("vm_id", cpus[i].hal().id());
    auto v = VmState::deserialize(f.vm_state());
    if (!v) return v.err();
    std::vector<VcpuState> states;
    states.reserve(cpus.size());
    for (std::size_t i = 0; i < cpus.size(); ++i) {
        auto s = VcpuState::deserialize(f.vcpu_state(i));
        if (!s) return error(s.err()).with("vcpu_id", f.vcpus()[i].id);
        states.push_back(std::move(*s));
    }
    VCPU_TRY_VOID(v->load(vm, std::forward<VmArgs>(vm_args)...));
    for (std::size_t i = 0; i < cpus.size(); ++i) VCPU_TRY_VOID(states[i].load(cpus[i].hal()));
    return ok();
}

} // namespace vcpu::kvm
