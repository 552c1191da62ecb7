// arch/x86_64/paging.hpp: guest page-table walks over hand-built tables for each paging mode
// (none, 32-bit with and without PSE, PAE, 4-level and 5-level, with 4 KiB / 2 MiB / 4 MiB /
// 1 GiB pages), non-present entries, non-canonical addresses, tables outside RAM.
#include <doctest/doctest.h>

#include <arch/x86_64/paging.hpp>

#include <cstdint>
#include <map>
#include <optional>

namespace {
namespace x = vcpu::x86_64;

/// Sparse guest-physical memory of 8-byte words; reads outside `ram_end` are "not RAM".
struct phys {
    std::map<std::uint64_t, std::uint64_t> words;
    std::uint64_t ram_end = 1ull << 32;
    void set(std::uint64_t gpa, std::uint64_t v) { words[gpa] = v; }
    std::optional<std::uint64_t> operator()(std::uint64_t gpa) const {
        if (gpa >= ram_end) return std::nullopt;
        auto it = words.find(gpa);
        return it == words.end() ? 0 : it->second;
    }
};
constexpr std::uint64_t P = 1, W = 2, PS = 1u << 7;
constexpr std::uint64_t cr0_pg = 1ull << 31, cr4_pse = 1u << 4, cr4_pae = 1u << 5, cr4_la57 = 1u << 12, efer_lma = 1u << 10;
std::uint64_t idx(std::uint64_t gva, unsigned level) { return (gva >> (12 + 9 * (level - 1))) & 0x1ff; }
} // namespace

TEST_CASE("x86 paging: no paging is the identity") {
    phys m;
    auto t = x::translate({0, 0, 0, 0}, 0x12345678, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x12345678);
    CHECK(t->page_bytes == 0);
}

TEST_CASE("x86 paging: 4-level with 4 KiB, 2 MiB and 1 GiB pages") {
    phys m;
    const x::paging_mode mode{cr0_pg, 0x1000, cr4_pae, efer_lma};
    const std::uint64_t gva4k = 0xffff'8000'0040'1234ull; // kernel half
    m.set(0x1000 + idx(gva4k, 4) * 8, 0x2000 | P | W);
    m.set(0x2000 + idx(gva4k, 3) * 8, 0x3000 | P | W);
    m.set(0x3000 + idx(gva4k, 2) * 8, 0x4000 | P | W);
    m.set(0x4000 + idx(gva4k, 1) * 8, 0x0abc'd000 | P | (1ull << 63)); // NX is not an address bit
    auto t = x::translate(mode, gva4k, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x0abc'd234);
    CHECK(t->page_bytes == 0x1000);
    CHECK(t->bytes_to_page_end() == 0x1000 - 0x234);

    const std::uint64_t gva2m = 0x0000'0000'4020'0042ull;
    m.set(0x1000 + idx(gva2m, 4) * 8, 0x5000 | P);
    m.set(0x5000 + idx(gva2m, 3) * 8, 0x6000 | P);
    m.set(0x6000 + idx(gva2m, 2) * 8, 0x0060'0000 | P | PS);
    t = x::translate(mode, gva2m, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x0060'0042);
    CHECK(t->page_bytes == 0x20'0000);

    const std::uint64_t gva1g = 0x0000'0080'1234'5678ull;
    m.set(0x1000 + idx(gva1g, 4) * 8, 0x7000 | P);
    m.set(0x7000 + idx(gva1g, 3) * 8, 0x4000'0000 | P | PS);
    t = x::translate(mode, gva1g, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x4000'0000 + 0x1234'5678);
    CHECK(t->page_bytes == 0x4000'0000);

    // Not present at the last level; non-canonical; a table outside RAM.
    CHECK_FALSE(x::translate(mode, gva4k + 0x1000, m).has_value());
    CHECK_FALSE(x::translate(mode, 0x0000'8000'0000'0000ull, m).has_value());
    const std::uint64_t far = 0x0000'0100'0000'0000ull;
    m.set(0x1000 + idx(far, 4) * 8, (1ull << 40) | P);
    CHECK_FALSE(x::translate(mode, far, m).has_value());
}

TEST_CASE("x86 paging: 5-level (LA57) adds a level and widens canonical addresses") {
    phys m;
    const x::paging_mode mode{cr0_pg, 0x1000, cr4_pae | cr4_la57, efer_lma};
    const std::uint64_t gva = 0x0080'0000'0000'0123ull; // needs bit 55: not 4-level canonical
    m.set(0x1000 + idx(gva, 5) * 8, 0x2000 | P);
    m.set(0x2000 + idx(gva, 4) * 8, 0x3000 | P);
    m.set(0x3000 + idx(gva, 3) * 8, 0x4000 | P);
    m.set(0x4000 + idx(gva, 2) * 8, 0x5000 | P);
    m.set(0x5000 + idx(gva, 1) * 8, 0x9000 | P);
    auto t = x::translate(mode, gva, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x9123);
    CHECK_FALSE(x::translate({cr0_pg, 0x1000, cr4_pae, efer_lma}, gva, m).has_value());
}

TEST_CASE("x86 paging: PAE with 4 KiB and 2 MiB pages") {
    phys m;
    const x::paging_mode mode{cr0_pg, 0x1020, cr4_pae, 0}; // PDPT 32-byte aligned, not page aligned
    const std::uint64_t gva = 0xc010'2345;
    m.set(0x1020 + 3 * 8, 0x2000 | P);
    m.set(0x2000 + ((gva >> 21) & 0x1ff) * 8, 0x3000 | P);
    m.set(0x3000 + ((gva >> 12) & 0x1ff) * 8, 0x1'2345'6000ull | P); // above 4 GiB: PAE can
    auto t = x::translate(mode, gva, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x1'2345'6345ull);
    const std::uint64_t gva2m = 0x0040'0010;
    m.set(0x1020, 0x4000 | P);
    m.set(0x4000 + ((gva2m >> 21) & 0x1ff) * 8, 0x0080'0000 | P | PS);
    t = x::translate(mode, gva2m, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x0080'0010);
    CHECK(t->page_bytes == 0x20'0000);
    CHECK_FALSE(x::translate(mode, 0x8000'0000, m).has_value()); // PDPTE 2 not present
}

TEST_CASE("x86 paging: 32-bit paging with 4 KiB pages and PSE 4 MiB pages (PSE-36 high bits)") {
    phys m;
    const std::uint64_t gva = 0x0804'8123;
    m.set(0x1000 + ((gva >> 22) & 0x3ff) * 4, 0x2000 | P); // 4-byte entries: words overlap, so
    m.set(0x2000 + ((gva >> 12) & 0x3ff) * 4, 0x0055'5000 | P); // use 8-aligned slots only
    auto t = x::translate({cr0_pg, 0x1000, 0, 0}, gva, m);
    REQUIRE(t);
    CHECK(t->gpa == 0x0055'5123);
    const std::uint64_t big = 0x8040'0000 + 0x1234; // PDE index 0x201 (odd: the high half of a word)
    m.set(0x1000 + 0x200 * 4, (std::uint64_t{0x0c00'0000 | (0x3u << 13) | PS | P} << 32));
    t = x::translate({cr0_pg, 0x1000, cr4_pse, 0}, big, [&](std::uint64_t gpa) -> std::optional<std::uint64_t> {
        // A reader that returns the 8 bytes at any (4-aligned) gpa, as real memory would.
        auto lo = m(gpa & ~7ull);
        if (!lo) return std::nullopt;
        if ((gpa & 7) == 0) return lo;
        auto hi = m((gpa & ~7ull) + 8);
        return (*lo >> 32) | (hi.value_or(0) << 32);
    });
    REQUIRE(t);
    CHECK(t->gpa == 0x3'0c00'1234ull);
    CHECK(t->page_bytes == 0x40'0000);
}
