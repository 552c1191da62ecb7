# vcpu_expect_linux_boot(): vcpu::linux_boot must exist exactly when the outer build found libfdt
# and zlib (-DVCPU_EXPECT_LINUX_BOOT, set by vcpu_add_consumer_test); when it does, a program
# using the Linux-boot headers is built through it and run after the consumer (POST_BUILD).
function(vcpu_expect_linux_boot)
    if(VCPU_EXPECT_LINUX_BOOT AND NOT TARGET vcpu::linux_boot)
        message(FATAL_ERROR "the vcpu build found libfdt and zlib, but vcpu::linux_boot is missing")
    endif()
    if(NOT VCPU_EXPECT_LINUX_BOOT AND TARGET vcpu::linux_boot)
        message(FATAL_ERROR "vcpu::linux_boot exists although the vcpu build found no libfdt/zlib")
    endif()
    if(TARGET vcpu::linux_boot)
        add_executable(linux_boot_consumer ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/linux_boot_consumer.cpp)
        target_link_libraries(linux_boot_consumer PRIVATE vcpu::linux_boot)
        add_custom_command(TARGET linux_boot_consumer POST_BUILD COMMAND linux_boot_consumer)
    endif()
endfunction()
