#pragma once
/// \file
/// Library version. Must equal project(vcpu VERSION ...) in CMakeLists.txt; the unit test
/// tests/unit/harness.cpp checks that.

#include <vcpu/config.hpp>

namespace vcpu {

/// Incremented on incompatible API changes (the CMake package uses SameMajorVersion).
inline constexpr int version_major = 0;
/// Incremented on compatible additions.
inline constexpr int version_minor = 1;
/// Incremented on fixes.
inline constexpr int version_patch = 0;

} // namespace vcpu
