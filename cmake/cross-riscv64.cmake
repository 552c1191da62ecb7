# RISC-V 64 cross toolchain (g++-riscv64-linux-gnu, static, qemu-riscv64-static); see cross-linux-gnu.cmake.
set(VCPU_CROSS_ARCH riscv64)
include(${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake)
