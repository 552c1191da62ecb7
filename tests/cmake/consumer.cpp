// Shared by the consumer projects in tests/cmake/*: each of the three header roots (vcpu/, arch/,
// kvm/) must be reachable through the vcpu::vcpu target, and the version must be the one the
// package claims.
#include <arch/x86_64/abi.hpp>
#include <kvm/fd.hpp>
#include <vcpu/version.hpp>

#include <cstdio>

int main() {
    std::printf("vcpu %d.%d.%d\n", vcpu::version_major, vcpu::version_minor, vcpu::version_patch);
    return (vcpu::version_major == VCPU_EXPECT_MAJOR && vcpu::version_minor == VCPU_EXPECT_MINOR &&
            vcpu::version_patch == VCPU_EXPECT_PATCH)
               ? 0
               : 1;
}
