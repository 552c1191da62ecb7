// doctest runner for vcpu_kvm_tests. These tests need a usable /dev/kvm; without one (or with
// VCPU_FORCE_NO_KVM=1) the suite says why and exits 77, which ctest reports as "Skipped".
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <kvm/host.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include <fcntl.h>
#include <unistd.h>

namespace {

constexpr int skip_return_code = 77; // SKIP_RETURN_CODE in tests/CMakeLists.txt

/// Empty if /dev/kvm can be opened read-write, otherwise the reason it cannot.
std::string_view kvm_unavailable_reason() {
    if (const char* force = std::getenv("VCPU_FORCE_NO_KVM");
        force != nullptr && std::string_view{force} == "1") {
        return "VCPU_FORCE_NO_KVM=1";
    }
    const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return std::strerror(errno);
    }
    ::close(fd);
    return {};
}

} // namespace

int main(int argc, char** argv) {
    if (const auto reason = kvm_unavailable_reason(); !reason.empty()) {
        std::printf("SKIPPED: /dev/kvm not available (%.*s)\n", static_cast<int>(reason.size()),
                    reason.data());
        return skip_return_code;
    }
    // Where these tests run: the host's KVM or the nested machine (scripts/kvm-run).
    std::printf("vcpu kvm tests on %s\n", vcpu::kvm::describe_host().c_str());
    doctest::Context context;
    context.applyCommandLine(argc, argv);
    return context.run();
}
