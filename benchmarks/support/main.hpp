#pragma once
// Shared main for the vcpu benchmarks: VCPU_BENCH_MAIN(needs_kvm).
//
// - Without a usable /dev/kvm (or with VCPU_FORCE_NO_KVM=1) a KVM suite prints why and exits 77
//   (ctest: skipped).
// - Every case verifies what its guest produced and calls state.SkipWithError on a wrong value;
//   the run then exits 1 and prints "vcpu-bench: N case(s) reported errors", so a smoke run under
//   ctest fails instead of timing a broken guest.
// - VCPU_BENCH_CORRUPT=1 makes bench::corrupt() true: suites then expect a wrong value on
//   purpose, which proves the checks fire (ctest bench.framework.detects_wrong_results).

#include <kvm/host.hpp>

#include <benchmark/benchmark.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

namespace bench {

inline constexpr int skip_return_code = 77;

/// CPU time of the calling thread in nanoseconds. The suites report per-exit costs from it
/// rather than from wall time: the build machines are shared, and time the thread spends
/// preempted is not a cost of the code under test. For KVM exits the time spent in KVM_RUN
/// (guest and host kernel) is charged to the thread, so it is counted.
inline double thread_cpu_ns() noexcept {
    timespec t{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

/// True when VCPU_BENCH_CORRUPT=1: expected guest values are deliberately wrong.
/// Read once: the checks call it at every exit, and getenv there would be most of what a
/// loop measures.
inline bool corrupt() noexcept {
    static const bool on = [] {
        const char* c = std::getenv("VCPU_BENCH_CORRUPT");
        return c != nullptr && std::string_view(c) == "1";
    }();
    return on;
}

/// Empty when /dev/kvm opens read-write, otherwise why not.
inline std::string kvm_unavailable_reason() {
    if (const char* f = std::getenv("VCPU_FORCE_NO_KVM"); f != nullptr && std::string_view(f) == "1")
        return "VCPU_FORCE_NO_KVM=1";
    const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) return std::strerror(errno);
    ::close(fd);
    return {};
}

/// The console reporter, counting cases that reported an error.
class checking_reporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const auto& r : runs)
            if (failed(r)) ++errors;
        ConsoleReporter::ReportRuns(runs);
    }
    /// Google Benchmark < 1.8 has Run::error_occurred, >= 1.8 Run::skipped.
    template <class R>
    static bool failed(const R& r) {
        if constexpr (requires { r.error_occurred; }) return r.error_occurred;
        else return r.skipped == decltype(r.skipped)(2); // internal::SkippedWithError
    }
    int errors = 0;
};

inline int run_main(int argc, char** argv, bool needs_kvm) {
    if (needs_kvm) {
        if (const auto why = kvm_unavailable_reason(); !why.empty()) {
            std::printf("SKIPPED: /dev/kvm not available (%s)\n", why.c_str());
            return skip_return_code;
        }
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    // Where the numbers come from: the host's KVM, or the nested machine (scripts/kvm-run sets
    // VCPU_KVM_HOST_LABEL there). Shown in the console header and in the JSON "context".
    if (needs_kvm) benchmark::AddCustomContext("kvm_host", vcpu::kvm::describe_host().c_str());
    checking_reporter reporter;
    const auto ran = benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    if (reporter.errors != 0) {
        std::printf("vcpu-bench: %d case(s) reported errors\n", reporter.errors);
        return 1;
    }
    if (ran == 0) {
        std::printf("vcpu-bench: no benchmark matched\n");
        return 1;
    }
    return 0;
}

} // namespace bench

#define VCPU_BENCH_MAIN(needs_kvm)                                                                 \
    int main(int argc, char** argv) { return ::bench::run_main(argc, argv, (needs_kvm)); }
