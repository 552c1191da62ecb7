include_guard(GLOBAL)
# Install rules: headers, the vcpu::vcpu target (and vcpu::linux_boot where libfdt and zlib were
# found) and a relocatable package config. Everything goes under one project root:
#   <prefix>/include/vcpu/{vcpu,arch,kvm}/...   (VCPU_INSTALL_INCLUDEDIR, the include path)
#   <prefix>/share/cmake/vcpu/                  (VCPU_INSTALL_CMAKEDIR)

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Header-only and architecture-independent, so the package lives under share/.
set(VCPU_INSTALL_CMAKEDIR ${CMAKE_INSTALL_DATADIR}/cmake/vcpu
    CACHE STRING "Where vcpuConfig.cmake is installed, relative to the prefix")

set(vcpu_install_targets vcpu)
if(TARGET vcpu_linux_boot)
    list(APPEND vcpu_install_targets vcpu_linux_boot)
endif()
install(TARGETS ${vcpu_install_targets} EXPORT vcpuTargets)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/
        DESTINATION ${VCPU_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
install(EXPORT vcpuTargets
        NAMESPACE vcpu::
        FILE vcpuTargets.cmake
        DESTINATION ${VCPU_INSTALL_CMAKEDIR})

configure_package_config_file(
    ${PROJECT_SOURCE_DIR}/cmake/vcpuConfig.cmake.in
    ${PROJECT_BINARY_DIR}/vcpuConfig.cmake
    INSTALL_DESTINATION ${VCPU_INSTALL_CMAKEDIR})
write_basic_package_version_file(
    ${PROJECT_BINARY_DIR}/vcpuConfigVersion.cmake
    COMPATIBILITY SameMajorVersion
    ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/vcpuConfig.cmake ${PROJECT_BINARY_DIR}/vcpuConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/VcpuBootLibs.cmake
        DESTINATION ${VCPU_INSTALL_CMAKEDIR})
