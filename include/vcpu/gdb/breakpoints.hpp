#pragma once
/// \file
/// `vcpu::gdb::software_breakpoints`: the bookkeeping of a target that implements `Z0` by
/// writing the arch's trap instruction into guest memory: the bytes each trap replaced, put
/// back on removal and shown instead of the trap when gdb reads that memory (gdb expects to
/// read the program, not the stub's traps). Fixed capacity, no allocation.

#include <vcpu/result.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace vcpu::gdb {

/// Up to `Max` software breakpoints of at most 8 bytes each.
template <std::size_t Max = 64>
class software_breakpoints {
public:
    /// Writes `trap` at `address` through `write(address, bytes) -> result<void>`, after saving
    /// what `read(address, bytes) -> result<std::size_t>` finds there. Inserting at an address
    /// that already has one does nothing. ENOSPC when full; EFAULT when the memory is not there.
    template <class Read, class Write>
    [[nodiscard]] result<void> insert(std::uint64_t address, std::span<const std::byte> trap, Read&& read,
                                      Write&& write) {
        if (find(address) != nullptr) return ok();
        if (trap.empty() || trap.size() > 8)
            return error{"insert software breakpoint", EINVAL, "trap instruction of 1 to 8 bytes"}.with("bytes", trap.size());
        entry* free_slot = nullptr;
        for (auto& e : entries_)
            if (!e.used) {
                free_slot = &e;
                break;
            }
        if (free_slot == nullptr)
            return error{"insert software breakpoint", ENOSPC, "breakpoint table full"}.with("capacity", Max);
        entry e{};
        e.address = address;
        e.length = static_cast<std::uint8_t>(trap.size());
        auto got = read(address, std::span<std::byte>(e.original.data(), trap.size()));
        if (!got) return got.err();
        if (*got != trap.size())
            return error{"insert software breakpoint", EFAULT, "guest memory not mapped"}.with_hex("address", address);
        if (auto w = write(address, trap); !w) return w.err();
        e.used = true;
        *free_slot = e;
        return ok();
    }

    /// Puts back the bytes the breakpoint at `address` replaced; nothing when there is none.
    template <class Write>
    [[nodiscard]] result<void> remove(std::uint64_t address, Write&& write) {
        entry* e = find(address);
        if (e == nullptr) return ok();
        if (auto w = write(address, std::span<const std::byte>(e->original.data(), e->length)); !w) return w.err();
        e->used = false;
        return ok();
    }

    /// Removes every breakpoint (see `remove`); stops at the first write that fails.
    template <class Write>
    [[nodiscard]] result<void> remove_all(Write&& write) {
        for (auto& e : entries_) {
            if (!e.used) continue;
            if (auto w = write(e.address, std::span<const std::byte>(e.original.data(), e.length)); !w) return w.err();
            e.used = false;
        }
        return ok();
    }

    /// Replaces trap bytes in `data` (guest memory read from `address`) by the bytes they hide.
    void hide(std::uint64_t address, std::span<std::byte> data) const noexcept {
        for (const auto& e : entries_) {
            if (!e.used) continue;
            for (std::size_t i = 0; i < e.length; ++i) {
                const std::uint64_t a = e.address + i;
                if (a >= address && a - address < data.size()) data[a - address] = e.original[i];
            }
        }
    }

    /// True when a breakpoint is inserted at `address`.
    [[nodiscard]] bool contains(std::uint64_t address) const noexcept {
        for (const auto& e : entries_)
            if (e.used && e.address == address) return true;
        return false;
    }
    /// Breakpoints inserted.
    [[nodiscard]] std::size_t size() const noexcept {
        std::size_t n = 0;
        for (const auto& e : entries_) n += e.used ? 1 : 0;
        return n;
    }

private:
    struct entry {
        std::uint64_t address = 0;
        std::array<std::byte, 8> original{};
        std::uint8_t length = 0;
        bool used = false;
    };
    entry* find(std::uint64_t address) noexcept {
        for (auto& e : entries_)
            if (e.used && e.address == address) return &e;
        return nullptr;
    }
    std::array<entry, Max> entries_{};
};

} // namespace vcpu::gdb
