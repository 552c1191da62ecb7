# AArch64 cross toolchain (g++-aarch64-linux-gnu, static, qemu-aarch64-static); see cross-linux-gnu.cmake.
set(VCPU_CROSS_ARCH aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake)
