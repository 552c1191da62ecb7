#pragma once
// Shared by the libFuzzer harnesses in tests/fuzz/ (test code, not part of the library).
//
// Each harness is one translation unit that includes this header and defines
//   extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t);
//   void vcpu_fuzz::seeds(vcpu_fuzz::seed_set&);       // its seed corpus
// This header supplies LLVMFuzzerInitialize, which turns the fuzzer into its own corpus
// generator: with VCPU_FUZZ_WRITE_SEEDS=<dir> set it writes the seeds to <dir> and exits
// (scripts/fuzz --write-seeds regenerates tests/fuzz/corpus/ this way). With VCPU_FUZZ_VERBOSE=1
// every input prints a one-line summary of what it reached (`note`), to check that the seeds
// reach each exit kind / loader branch.
//
// Invariant failures print the expression and the location and abort(); libFuzzer reports that
// as a crash and saves the input.

#include <array>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <sys/stat.h>

#define VCPU_FUZZ_CHECK(cond)                                                                      \
    do {                                                                                           \
        if (!(cond)) ::vcpu_fuzz::fail(__FILE__, __LINE__, #cond);                                  \
    } while (0)

namespace vcpu_fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* what) {
    std::fprintf(stderr, "\n%s:%d: fuzz invariant violated: %s\n", file, line, what);
    std::fflush(stderr);
    std::abort();
}

inline bool& verbose_flag() {
    static bool v = [] {
        const char* e = std::getenv("VCPU_FUZZ_VERBOSE");
        return e != nullptr && e[0] != '\0' && e[0] != '0';
    }();
    return v;
}

/// Prints a summary line when VCPU_FUZZ_VERBOSE is set (seed checking); free otherwise.
[[gnu::format(printf, 1, 2)]] inline void note(const char* fmt, ...) {
    if (!verbose_flag()) return;
    std::va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

/// Reads a fuzz input front to back; past the end every read yields zeros, so any input is a
/// valid (if short) record. Seeds are written with `bytes_out` in the same order.
class input {
public:
    input(const std::uint8_t* d, std::size_t n) noexcept : p_(d), n_(n) {}

    template <class T>
        requires std::is_integral_v<T>
    T get() noexcept {
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) v |= std::uint64_t{byte()} << (8 * i);
        return static_cast<T>(v);
    }
    bool flag() noexcept { return (byte() & 1) != 0; }
    /// Up to `n` bytes (fewer when the input ends).
    std::span<const std::uint8_t> take(std::size_t n) noexcept {
        const std::size_t k = n < n_ - at_ ? n : n_ - at_;
        auto s = std::span<const std::uint8_t>(p_ + at_, k);
        at_ += k;
        return s;
    }
    std::span<const std::uint8_t> rest() noexcept { return take(n_ - at_); }
    [[nodiscard]] std::size_t left() const noexcept { return n_ - at_; }

private:
    std::uint8_t byte() noexcept { return at_ < n_ ? p_[at_++] : 0; }
    const std::uint8_t* p_;
    std::size_t n_, at_ = 0;
};

/// Builds a seed in the format `input` reads.
class bytes_out {
public:
    template <class T>
        requires std::is_integral_v<T> || std::is_enum_v<T>
    bytes_out& put(T v) {
        std::uint64_t u = static_cast<std::uint64_t>(v);
        for (std::size_t i = 0; i < sizeof(T); ++i) b_.push_back(static_cast<std::uint8_t>(u >> (8 * i)));
        return *this;
    }
    bytes_out& raw(const void* p, std::size_t n) {
        const auto* c = static_cast<const std::uint8_t*>(p);
        b_.insert(b_.end(), c, c + n);
        return *this;
    }
    bytes_out& raw(std::span<const std::uint8_t> s) { return raw(s.data(), s.size()); }
    bytes_out& raw(std::string_view s) { return raw(s.data(), s.size()); }
    bytes_out& zeros(std::size_t n) {
        b_.insert(b_.end(), n, 0);
        return *this;
    }
    [[nodiscard]] const std::vector<std::uint8_t>& bytes() const noexcept { return b_; }
    [[nodiscard]] std::vector<std::uint8_t>& bytes() noexcept { return b_; }

private:
    std::vector<std::uint8_t> b_;
};

/// The named seeds of one target.
class seed_set {
public:
    void add(std::string name, std::vector<std::uint8_t> bytes) {
        names_.push_back(std::move(name));
        data_.push_back(std::move(bytes));
    }
    void add(std::string name, const bytes_out& b) { add(std::move(name), b.bytes()); }
    [[nodiscard]] std::size_t size() const noexcept { return names_.size(); }
    [[nodiscard]] const std::string& name(std::size_t i) const { return names_[i]; }
    [[nodiscard]] const std::vector<std::uint8_t>& data(std::size_t i) const { return data_[i]; }

private:
    std::vector<std::string> names_;
    std::vector<std::vector<std::uint8_t>> data_;
};

/// Defined by each harness.
void seeds(seed_set& out);

/// True when [p, p+n) lies inside [base, base+size) (as addresses; an empty view at the end counts).
inline bool inside(const void* p, std::size_t n, const void* base, std::size_t size) noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p), b = reinterpret_cast<std::uintptr_t>(base);
    return a >= b && a - b <= size && n <= size - (a - b);
}

/// A fixed-capacity list of numbers describing one decoded exit, for "decoding twice gives the
/// same exit" checks (no allocation).
struct digest {
    std::array<std::uint64_t, 64> v{};
    std::size_t n = 0;
    std::uint32_t calls = 0; ///< how often the visitor ran
    void add(std::uint64_t x) noexcept {
        if (n < v.size()) v[n++] = x;
    }
    template <class... T>
    void add_all(T... xs) noexcept {
        (add(static_cast<std::uint64_t>(xs)), ...);
    }
    friend bool operator==(const digest& a, const digest& b) noexcept {
        return a.n == b.n && a.calls == b.calls &&
               std::memcmp(a.v.data(), b.v.data(), a.n * sizeof(std::uint64_t)) == 0;
    }
};

} // namespace vcpu_fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* dir = std::getenv("VCPU_FUZZ_WRITE_SEEDS");
    if (dir == nullptr || dir[0] == '\0') return 0;
    vcpu_fuzz::seed_set s;
    vcpu_fuzz::seeds(s);
    ::mkdir(dir, 0755);
    for (std::size_t i = 0; i < s.size(); ++i) {
        const std::string path = std::string(dir) + "/" + s.name(i);
        std::FILE* f = std::fopen(path.c_str(), "wb");
        if (f == nullptr || std::fwrite(s.data(i).data(), 1, s.data(i).size(), f) != s.data(i).size()) {
            std::fprintf(stderr, "cannot write seed %s\n", path.c_str());
            std::exit(1);
        }
        std::fclose(f);
    }
    std::fprintf(stderr, "wrote %zu seeds to %s\n", s.size(), dir);
    std::exit(0);
}
