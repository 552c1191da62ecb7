# The C libraries the Linux-boot headers use (include/vcpu/boot/gzip.hpp: zlib; fdt.hpp: libfdt),
# from Debian's zlib1g-dev and libfdt-dev (scripts/deps). Defines the INTERFACE target
# vcpu_boot_libs and VCPU_HAVE_BOOT_LIBS; VCPU_BOOT_LIBS_MISSING names what was not found.
# When found, also the IMPORTED targets vcpu::libfdt and vcpu::zlib, which the exported
# vcpu::linux_boot links by name: this file is installed next to vcpuConfig.cmake, which includes
# it to define them again on the consumer's machine.
# Cross builds find the target's static archives through CMAKE_FIND_ROOT_PATH (scripts/cross
# fetches them with scripts/cross-sysroot and passes VCPU_CROSS_EXTRA_ROOT).
if(TARGET vcpu_boot_libs OR TARGET vcpu::libfdt)
    return()
endif()
set(_suffixes lib lib64)
if(CMAKE_LIBRARY_ARCHITECTURE)
    list(PREPEND _suffixes lib/${CMAKE_LIBRARY_ARCHITECTURE})
endif()
if(VCPU_CROSS_TRIPLE)
    list(PREPEND _suffixes lib/${VCPU_CROSS_TRIPLE})
endif()
find_path(VCPU_LIBFDT_INCLUDE libfdt.h)
find_path(VCPU_ZLIB_INCLUDE zlib.h)
if(CMAKE_CROSSCOMPILING) # static binaries: the archives
    find_library(VCPU_LIBFDT NAMES libfdt.a fdt PATH_SUFFIXES ${_suffixes})
    find_library(VCPU_ZLIB NAMES libz.a z PATH_SUFFIXES ${_suffixes})
else()
    find_library(VCPU_LIBFDT NAMES fdt libfdt.a PATH_SUFFIXES ${_suffixes})
    find_library(VCPU_ZLIB NAMES z libz.a PATH_SUFFIXES ${_suffixes})
endif()
set(VCPU_BOOT_LIBS_MISSING "")
foreach(v VCPU_LIBFDT_INCLUDE VCPU_LIBFDT)
    if(NOT ${v})
        list(APPEND VCPU_BOOT_LIBS_MISSING "libfdt (libfdt-dev)")
        break()
    endif()
endforeach()
foreach(v VCPU_ZLIB_INCLUDE VCPU_ZLIB)
    if(NOT ${v})
        list(APPEND VCPU_BOOT_LIBS_MISSING "zlib (zlib1g-dev)")
        break()
    endif()
endforeach()
if(NOT VCPU_BOOT_LIBS_FOR_PACKAGE) # vcpuConfig.cmake sets it: only the IMPORTED targets there
    add_library(vcpu_boot_libs INTERFACE)
endif()
if(VCPU_BOOT_LIBS_MISSING)
    set(VCPU_HAVE_BOOT_LIBS OFF)
    string(REPLACE ";" ", " VCPU_BOOT_LIBS_MISSING "${VCPU_BOOT_LIBS_MISSING}")
    message(STATUS "vcpu: Linux-boot pieces need ${VCPU_BOOT_LIBS_MISSING}: not found (scripts/deps)")
else()
    set(VCPU_HAVE_BOOT_LIBS ON)
    foreach(lib libfdt zlib)
        string(TOUPPER ${lib} var)
        add_library(vcpu::${lib} UNKNOWN IMPORTED GLOBAL)
        set_target_properties(vcpu::${lib} PROPERTIES
            IMPORTED_LOCATION ${VCPU_${var}}
            INTERFACE_INCLUDE_DIRECTORIES ${VCPU_${var}_INCLUDE})
    endforeach()
    if(NOT VCPU_BOOT_LIBS_FOR_PACKAGE)
        target_link_libraries(vcpu_boot_libs INTERFACE vcpu::libfdt vcpu::zlib)
    endif()
endif()
