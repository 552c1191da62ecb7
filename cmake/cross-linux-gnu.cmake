# Toolchain for cross-compiling vcpu and its tests with Debian's <arch>-linux-gnu g++, statically
# linked, run under qemu-<arch>(-static) user mode. Used through a per-arch wrapper:
#
#   cmake -S <repo> -B build/cross-aarch64 -DCMAKE_TOOLCHAIN_FILE=<repo>/cmake/cross-aarch64.cmake
#   cmake --build build/cross-aarch64 --target vcpu_unit_tests
#   ctest --test-dir build/cross-aarch64 -L unit        # runs through CMAKE_CROSSCOMPILING_EMULATOR
#
# A new arch needs only cmake/cross-<arch>.cmake:
#   set(VCPU_CROSS_ARCH <arch>)            # e.g. riscv64; the triple is <arch>-linux-gnu
#   include(${CMAKE_CURRENT_LIST_DIR}/cross-linux-gnu.cmake)
# (toolchains and qemu-user: `scripts/deps cross`). Normally driven by tests/cross/CMakeLists.txt.
#
# Boost and doctest are header-only host packages. The host's /usr/include must not be on the
# cross compiler's path (its glibc headers are the host's), so a directory holding only symlinks
# to /usr/include/boost and /usr/include/doctest is made and exported as VCPU_CROSS_HEADER_SHIM;
# the top-level CMakeLists.txt and tests/CMakeLists.txt then define Boost::headers and
# doctest::doctest on it (as -isystem) instead of calling find_package.
if(NOT VCPU_CROSS_ARCH)
    message(FATAL_ERROR "cross-linux-gnu.cmake: set VCPU_CROSS_ARCH (use cmake/cross-<arch>.cmake)")
endif()

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${VCPU_CROSS_ARCH})
set(VCPU_CROSS_TRIPLE ${VCPU_CROSS_ARCH}-linux-gnu)
set(CMAKE_CXX_COMPILER ${VCPU_CROSS_TRIPLE}-g++)
set(CMAKE_C_COMPILER ${VCPU_CROSS_TRIPLE}-gcc)
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)

set(CMAKE_FIND_ROOT_PATH /usr/${VCPU_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(VCPU_CROSS_EMULATOR NAMES qemu-${VCPU_CROSS_ARCH}-static qemu-${VCPU_CROSS_ARCH}
             NO_CMAKE_FIND_ROOT_PATH)
if(VCPU_CROSS_EMULATOR)
    set(CMAKE_CROSSCOMPILING_EMULATOR ${VCPU_CROSS_EMULATOR})
endif()

set(VCPU_CROSS_HEADER_SHIM ${CMAKE_BINARY_DIR}/vcpu-cross-include)
foreach(lib boost doctest)
    if(EXISTS /usr/include/${lib} AND NOT EXISTS ${VCPU_CROSS_HEADER_SHIM}/${lib})
        file(MAKE_DIRECTORY ${VCPU_CROSS_HEADER_SHIM})
        file(CREATE_LINK /usr/include/${lib} ${VCPU_CROSS_HEADER_SHIM}/${lib} SYMBOLIC)
    endif()
endforeach()

# Target-arch static libfdt and zlib (scripts/cross-sysroot, passed by scripts/cross).
if(VCPU_CROSS_EXTRA_ROOT)
    list(APPEND CMAKE_FIND_ROOT_PATH ${VCPU_CROSS_EXTRA_ROOT})
endif()
