// Proves the unit-test harness runs, and that include/vcpu/version.hpp matches the CMake
// project version (passed in as VCPU_TEST_PROJECT_VERSION_* by tests/CMakeLists.txt).
#include <doctest/doctest.h>
#include <vcpu/version.hpp>

TEST_CASE("version.hpp matches project(vcpu VERSION ...)") {
    CHECK(vcpu::version_major == VCPU_TEST_PROJECT_VERSION_MAJOR);
    CHECK(vcpu::version_minor == VCPU_TEST_PROJECT_VERSION_MINOR);
    CHECK(vcpu::version_patch == VCPU_TEST_PROJECT_VERSION_PATCH);
}
