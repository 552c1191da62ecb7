// vcpu::result / vcpu::error (the no-exception error path) and vcpu::guest_memory (the only way
// loaders and boot policies touch guest RAM): lifetimes, messages, and every bound.
#include <vcpu/memory.hpp>
#include <vcpu/result.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr auto max64 = std::numeric_limits<std::uint64_t>::max();

/// Counts live instances, so result's copies, moves and assignments can be checked for leaks
/// and double destruction.
struct tracked {
    static inline int alive = 0;
    int v = 0;
    explicit tracked(int x) : v(x) { ++alive; }
    tracked(const tracked& o) : v(o.v) { ++alive; }
    tracked(tracked&& o) noexcept : v(o.v) {
        o.v = -1;
        ++alive;
    }
    tracked& operator=(const tracked&) = default;
    ~tracked() { --alive; }
};

vcpu::result<int> parse_digit(char c) {
    if (c < '0' || c > '9') return vcpu::error{"parse digit", EINVAL, "not a digit"};
    return c - '0';
}

vcpu::result<void> two_steps(bool fail_first, int* reached) {
    VCPU_TRY_VOID(fail_first ? vcpu::result<void>(vcpu::error{"step one", EIO}) : vcpu::ok());
    *reached = 2;
    VCPU_TRY_VOID(parse_digit('x'));
    *reached = 3;
    return vcpu::ok();
}

// result is usable in constant expressions: construction, copy, assignment both ways.
constexpr int constexpr_result() {
    vcpu::result<int> a(5);
    vcpu::result<int> b(vcpu::error{"x", EPERM});
    vcpu::result<int> c = a;
    a = b;
    b = c;
    return (a ? 100 : a.err().code) + (b ? *b * 10 : 0) + c.value_or(0);
}
static_assert(constexpr_result() == EPERM + 50 + 5);
static_assert(vcpu::result<void>{}.has_value());
static_assert(!vcpu::result<void>{vcpu::error{"y", EIO}}.has_value());
static_assert(vcpu::error::errno_name(EBADF)[0] == 'E');

/// The errno of a failed result, 0 on success (never traps, unlike err() on a value).
template <class R>
int errno_of(const R& r) {
    return r ? 0 : r.err().code;
}

std::span<const std::byte> bytes_of(const std::vector<std::byte>& v) { return v; }

} // namespace

TEST_CASE("result: value and error alternatives") {
    auto ok = parse_digit('7');
    REQUIRE(ok);
    CHECK(ok.has_value());
    CHECK(*ok == 7);
    CHECK(ok.value() == 7);
    CHECK(ok.value_or(-1) == 7);

    auto bad = parse_digit('q');
    REQUIRE_FALSE(bad);
    CHECK_FALSE(bad.has_value());
    CHECK(bad.err().code == EINVAL);
    CHECK(std::string(bad.err().op) == "parse digit");
    CHECK(std::string(bad.err().detail) == "not a digit");
    CHECK(bad.value_or(-1) == -1);

    vcpu::result<void> v;
    CHECK(v);
    vcpu::result<void> e = vcpu::error{"op", ENOENT};
    CHECK_FALSE(e);
    CHECK(e.err().code == ENOENT);
}

TEST_CASE("result: non-trivial values are constructed and destroyed exactly once") {
    REQUIRE(tracked::alive == 0);
    {
        vcpu::result<tracked> a(tracked{1});
        CHECK(tracked::alive == 1);
        CHECK(a->v == 1);
        vcpu::result<tracked> b = a; // copy
        CHECK(tracked::alive == 2);
        vcpu::result<tracked> c = std::move(b); // move
        CHECK(tracked::alive == 3);
        CHECK(c->v == 1);
        vcpu::result<tracked> e(vcpu::error{"e", EIO});
        CHECK(tracked::alive == 3);
        a = e; // value -> error: the value dies
        CHECK(tracked::alive == 2);
        CHECK_FALSE(a);
        CHECK(a.err().code == EIO);
        e = c; // error -> value
        CHECK(tracked::alive == 3);
        REQUIRE(e);
        CHECK(e->v == 1);
        e = vcpu::result<tracked>(std::in_place, 9); // value -> value
        CHECK(tracked::alive == 3);
        CHECK(e->v == 9);
        tracked t = std::move(e).value();
        CHECK(t.v == 9);
    }
    CHECK(tracked::alive == 0);
}

TEST_CASE("result: VCPU_TRY_VOID propagates the first error") {
    int reached = 0;
    auto r = two_steps(true, &reached);
    REQUIRE_FALSE(r);
    CHECK(std::string(r.err().op) == "step one");
    CHECK(reached == 0);
    auto r2 = two_steps(false, &reached);
    REQUIRE_FALSE(r2);
    CHECK(std::string(r2.err().op) == "parse digit");
    CHECK(reached == 2);
}

TEST_CASE("error::message names the operation, strerror text and errno name") {
    const vcpu::error e{"KVM_CREATE_VCPU", EBADF};
    const std::string m = e.message();
    CHECK(m.find("KVM_CREATE_VCPU") == 0);
    CHECK(m.find("failed") != std::string::npos);
    CHECK(m.find(std::strerror(EBADF)) != std::string::npos);
    CHECK(m.find("(EBADF)") != std::string::npos);
    CHECK(m == std::string("KVM_CREATE_VCPU failed: ") + std::strerror(EBADF) + " (EBADF)");

    const vcpu::error d{"mmap kvm_run", ENOMEM, "mapping too small"};
    CHECK(d.message() == std::string("mmap kvm_run failed: ") + std::strerror(ENOMEM) +
                             " (ENOMEM): mapping too small");

    CHECK(vcpu::error{"load bzImage", 0, "bad magic"}.message() == "load bzImage failed: bad magic");
    CHECK(vcpu::error{"plain"}.message() == "plain failed");
    // An errno without a symbolic name still gets its strerror text, and no empty "()".
    const std::string odd = vcpu::error{"odd", 200}.message();
    CHECK(odd.find(std::strerror(200)) != std::string::npos);
    CHECK(odd.find("()") == std::string::npos);
    CHECK(vcpu::error{"n", 0, nullptr}.message() == "n failed");
}

TEST_CASE("error: errno names, last_error, equality") {
    CHECK(std::string(vcpu::error::errno_name(EINTR)) == "EINTR");
    CHECK(std::string(vcpu::error::errno_name(EACCES)) == "EACCES");
    CHECK(std::string(vcpu::error::errno_name(EEXIST)) == "EEXIST");
    CHECK(std::string(vcpu::error::errno_name(ENOSPC)) == "ENOSPC");
    CHECK(std::string(vcpu::error::errno_name(EOVERFLOW)) == "EOVERFLOW");
    CHECK(std::string(vcpu::error::errno_name(0)).empty());
    CHECK(std::string(vcpu::error::errno_name(-1)).empty());

    errno = ENOTTY;
    const auto le = vcpu::last_error("KVM_CHECK_EXTENSION", "not a KVM fd");
    CHECK(le.code == ENOTTY);
    CHECK(std::string(le.op) == "KVM_CHECK_EXTENSION");
    CHECK(le.message().find("(ENOTTY): not a KVM fd") != std::string::npos);

    CHECK(vcpu::error{"a", 1} == vcpu::error{"a", 1, "detail is not compared"});
    CHECK_FALSE(vcpu::error{"a", 1} == vcpu::error{"a", 2});
    CHECK_FALSE(vcpu::error{"a", 1} == vcpu::error{"b", 1});
}

TEST_CASE("error: context values, ranges and text are kept inline and rendered by message()") {
    const auto e = vcpu::error{"KVM_SET_USER_MEMORY_REGION", EEXIST, "guest range overlaps another slot"}
                       .with("slot", 1u)
                       .with_range("gpa", 0x8000, 0x2000)
                       .with("other_slot", 0)
                       .with_range("other_gpa", 0, 0x10000);
    CHECK(e.value("slot") == 1);
    CHECK(e.value("gpa") == 0x8000);
    CHECK(e.value("other_slot") == 0);
    CHECK_FALSE(e.value("nothing").has_value());
    CHECK(e.text().empty());
    CHECK(e.message() == std::string("KVM_SET_USER_MEMORY_REGION failed: ") + std::strerror(EEXIST) +
                             " (EEXIST): guest range overlaps another slot (slot=1, gpa=[0x8000, 0xa000), "
                             "other_slot=0, other_gpa=[0x0, 0x10000))");
    // Signed values, hexadecimal, text; the operation and errno stay first.
    auto t = vcpu::error{"open /dev/kvm", ENOENT}.with("fd", -1).with_hex("flags", 0x80002).with_text("path", "/nonexistent");
    CHECK(t.text() == "/nonexistent");
    CHECK(t.message() == std::string("open /dev/kvm failed: ") + std::strerror(ENOENT) +
                             " (ENOENT) (fd=-1, flags=0x80002, path=\"/nonexistent\")");
    // Past capacity: values are dropped, the text is cut, and the message says so.
    vcpu::error full{"many", 0};
    for (unsigned i = 0; i < vcpu::error_context::max_values + 2; ++i) full.with("v", i);
    CHECK(full.context.count == vcpu::error_context::max_values);
    full.with_text("path", std::string(100, 'x'));
    CHECK(full.text().size() == vcpu::error_context::max_text);
    CHECK(full.message().find(", ...)") != std::string::npos);
    // A range ending at 2^64 does not wrap to 0 in the message.
    CHECK(vcpu::error{"r", 0}.with_range("gpa", ~std::uint64_t{0} - 0xfff, 0x1000).message() ==
          "r failed (gpa=[0xfffffffffffff000, 2^64))");
    // Equality still compares operation and errno only.
    CHECK(e == vcpu::error{"KVM_SET_USER_MEMORY_REGION", EEXIST});
}

// Building an error is constant-evaluable (no allocation), and it stays a plain value.
static_assert([] {
    auto e = vcpu::error{"x", EINVAL}.with("id", 300u).with("max", 288).with_text("path", "/dev/kvm");
    return *e.value("id") == 300 && *e.value("max") == 288 && e.text() == "/dev/kvm";
}());
static_assert(std::is_trivially_copyable_v<vcpu::error> && std::is_trivially_destructible_v<vcpu::error>);
// result<void> is a flag plus the error's bytes, which success never writes (a union), and a
// copy of a success never reads (not trivially copyable on purpose: a trivial copy moves them all).
static_assert(!std::is_trivially_copyable_v<vcpu::result<void>> &&
              std::is_trivially_destructible_v<vcpu::result<void>>);
static_assert(sizeof(vcpu::result<void>) <= sizeof(vcpu::error) + alignof(vcpu::error));
static_assert([] {
    vcpu::result<void> ok = vcpu::ok();
    vcpu::result<void> copy = ok; // copying a success copies no error
    vcpu::result<int> v = 3;
    vcpu::result<int> w = std::move(v);
    vcpu::result<int> bad = vcpu::error{"y", 1}.with("n", 5u);
    vcpu::result<int> bad2 = bad;
    return copy.has_value() && *w == 3 && !bad2 && bad2.err().value("n") == 5;
}());

TEST_CASE("guest_memory: errors name the ranges involved") {
    std::vector<std::byte> a(0x1000), b(0x2000);
    vcpu::basic_guest_memory<2> mem;
    REQUIRE(mem.add({0x10000, a}));
    auto overlap = mem.add({0x10800, b});
    REQUIRE_FALSE(overlap);
    CHECK(overlap.err().value("gpa") == 0x10800);
    CHECK(overlap.err().value("existing") == 0x10000);
    CHECK(overlap.err().message().find("gpa=[0x10800, 0x12800), existing=[0x10000, 0x11000)") != std::string::npos);
    std::array<std::byte, 4> four{};
    auto w = mem.write(0x10ffe, four);
    REQUIRE_FALSE(w);
    CHECK(w.err().code == EFAULT);
    CHECK(w.err().message().find("gpa=[0x10ffe, 0x11002)") != std::string::npos);
    auto rd = mem.read(0x20000, four);
    REQUIRE_FALSE(rd);
    CHECK(rd.err().value("gpa") == 0x20000);
    REQUIRE(mem.add({0x20000, b}));
    auto full = mem.add({0x40000, b});
    REQUIRE_FALSE(full);
    CHECK(full.err().code == ENOSPC);
    CHECK(full.err().value("capacity") == 2);
}

TEST_CASE("guest_memory: add rejects overlap, wrap-around and a full table") {
    std::vector<std::byte> a(0x1000), b(0x1000), c(0x3000);
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0x10000, a}));
    CHECK(mem.add({0x11000, b}));  // adjacent above
    CHECK(mem.add({0xf000, b}));   // adjacent below (GPA ranges only; host bytes may alias)
    REQUIRE(mem.regions().size() == 3);
    CHECK(mem.regions()[0].gpa == 0x10000);

    struct probe {
        std::uint64_t gpa;
        std::size_t size;
    };
    for (auto p : {probe{0x10000, 0x1000}, probe{0x10fff, 1}, probe{0xe001, 0x1000},
                   probe{0x11fff, 0x10}, probe{0x8000, 0x10000}, probe{0x10800, 0x10}}) {
        CAPTURE(p.gpa);
        auto r = mem.add({p.gpa, std::span<std::byte>(c).first(p.size)});
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EEXIST);
        CHECK(std::string(r.err().op) == "add guest region");
    }
    CHECK(mem.regions().size() == 3);

    SUBCASE("a region that wraps the address space") {
        auto r = mem.add({max64 - 0x7ff, c}); // 0x3000 bytes from 2^64 - 0x800
        REQUIRE_FALSE(r);
        CHECK(r.err().code == EOVERFLOW);
        auto r2 = mem.add({max64, std::span<std::byte>(c).first(2)});
        REQUIRE_FALSE(r2);
        CHECK(r2.err().code == EOVERFLOW);
    }
    SUBCASE("regions ending exactly at 2^64 are allowed, and still overlap-checked") {
        REQUIRE(mem.add({max64 - 0xfff, a})); // [2^64 - 4 KiB, 2^64)
        CHECK(mem.at(max64, 1).data() == a.data() + 0xfff);
        CHECK(mem.at(max64 - 0xfff, 0x1000).size() == 0x1000);
        auto inside = mem.add({max64 - 0x7ff, std::span<std::byte>(c).first(0x10)});
        REQUIRE_FALSE(inside);
        CHECK(inside.err().code == EEXIST);
        auto covering = mem.add({max64 - 0x1fff, std::span<std::byte>(c).first(0x2000)});
        REQUIRE_FALSE(covering);
        CHECK(covering.err().code == EEXIST);
        auto last_byte = mem.add({max64, std::span<std::byte>(c).first(1)});
        REQUIRE_FALSE(last_byte);
        CHECK(last_byte.err().code == EEXIST);
        CHECK(mem.add({max64 - 0x1fff, std::span<std::byte>(c).first(0x1000)})); // just below
    }
    SUBCASE("a full table") {
        vcpu::basic_guest_memory<2> small;
        REQUIRE(small.add({0, a}));
        REQUIRE(small.add({0x1000, b}));
        auto r = small.add({0x2000, c});
        REQUIRE_FALSE(r);
        CHECK(r.err().code == ENOSPC);
        CHECK(small.regions().size() == 2);
    }
}

TEST_CASE("guest_memory: at() translates only ranges inside one region") {
    std::vector<std::byte> lo(0x1000), hi(0x1000);
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0x0, lo}));
    REQUIRE(mem.add({0x1000, hi}));
    CHECK(mem.at(0, 0x1000).data() == lo.data());
    CHECK(mem.at(0x1ff8, 8).data() == hi.data() + 0xff8);
    CHECK(mem.at(0x1ff8, 8).size() == 8);
    CHECK(mem.at(0xff8, 0x10).empty());   // straddles two regions
    CHECK(mem.at(0x1ff9, 8).empty());     // one byte past the end
    CHECK(mem.at(0x2000, 1).empty());     // outside
    CHECK(mem.at(0x10, max64).empty());   // huge length
    CHECK(mem.at(max64, 2).empty());      // address + length wraps
}

TEST_CASE("guest_memory: read / write bounds") {
    std::vector<std::byte> ram(0x1000, std::byte{0xcc});
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0x8000, ram}));
    const std::vector<std::byte> four{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
    const std::vector<std::byte> five(5, std::byte{5});

    REQUIRE(mem.write(0x8ffc, bytes_of(four))); // the last four bytes
    CHECK(ram[0xffc] == std::byte{1});
    CHECK(ram[0xfff] == std::byte{4});

    auto past = mem.write(0x8ffc, bytes_of(five)); // one byte too many: nothing is written
    REQUIRE_FALSE(past);
    CHECK(past.err().code == EFAULT);
    CHECK(ram[0xffc] == std::byte{1});
    CHECK(errno_of(mem.write(0x7fff, bytes_of(four))) == EFAULT); // starts before the region
    CHECK(ram[0] == std::byte{0xcc});
    CHECK(errno_of(mem.write(max64 - 1, bytes_of(four))) == EFAULT);
    CHECK(mem.write(0x8000, {})); // empty write inside: fine

    std::array<std::byte, 4> got{};
    REQUIRE(mem.read(0x8ffc, got));
    CHECK(got[3] == std::byte{4});
    std::array<std::byte, 8> big{};
    auto rd = mem.read(0x8ffc, big);
    REQUIRE_FALSE(rd);
    CHECK(rd.err().code == EFAULT);
    CHECK(big[0] == std::byte{0}); // untouched
    CHECK(errno_of(mem.read(0x9001, std::span<std::byte>{})) == EFAULT); // empty, outside
    CHECK(mem.read(0x8000, std::span<std::byte>{}));                          // empty, inside
    CHECK(mem.read(0x9000, std::span<std::byte>{})); // empty, at the end
    CHECK(errno_of(mem.read(max64 - 2, got)) == EFAULT);

    REQUIRE(mem.write_le<std::uint32_t>(0x8010, 0x11223344));
    CHECK(ram[0x10] == std::byte{0x44});
    CHECK(ram[0x13] == std::byte{0x11});
    REQUIRE(mem.write_le<std::uint64_t>(0x8020, 0x0102030405060708ull));
    CHECK(ram[0x20] == std::byte{0x08});
    CHECK(ram[0x27] == std::byte{0x01});
    CHECK(errno_of(mem.write_le<std::uint64_t>(0x8ffc, 1)) == EFAULT);
}

TEST_CASE("guest_memory: a read-only region refuses writes with EACCES") {
    std::vector<std::byte> rom(0x100, std::byte{0xaa}), ram(0x100);
    vcpu::guest_memory mem;
    REQUIRE(mem.add({0xfff00, rom, true}));
    REQUIRE(mem.add({0x0, ram}));
    const std::vector<std::byte> one{std::byte{0x55}};
    auto w = mem.write(0xfff10, bytes_of(one));
    REQUIRE_FALSE(w);
    CHECK(w.err().code == EACCES);
    CHECK(std::string(w.err().op) == "write guest memory");
    CHECK(w.err().message().find("EACCES") != std::string::npos);
    CHECK(rom[0x10] == std::byte{0xaa});
    CHECK(errno_of(mem.write_le<std::uint16_t>(0xfff00, 0x1234)) == EACCES);
    std::array<std::byte, 2> got{};
    REQUIRE(mem.read(0xfff00, got)); // reads are fine
    CHECK(got[0] == std::byte{0xaa});
    CHECK(mem.write(0x10, bytes_of(one))); // the writable region still is
    CHECK(ram[0x10] == std::byte{0x55});
    CHECK(mem.regions()[0].read_only);
    CHECK_FALSE(mem.regions()[1].read_only);
}
