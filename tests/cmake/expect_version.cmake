# vcpu_expect_version(<target>): hands the version the outer build expects (-DVCPU_EXPECT_VERSION,
# set by vcpu_add_consumer_test) to consumer.cpp, which compares it with <vcpu/version.hpp>.
function(vcpu_expect_version target)
    if(NOT VCPU_EXPECT_VERSION MATCHES "^([0-9]+)\\.([0-9]+)\\.([0-9]+)$")
        message(FATAL_ERROR "pass -DVCPU_EXPECT_VERSION=<major>.<minor>.<patch>")
    endif()
    target_compile_definitions(${target} PRIVATE
        VCPU_EXPECT_MAJOR=${CMAKE_MATCH_1} VCPU_EXPECT_MINOR=${CMAKE_MATCH_2}
        VCPU_EXPECT_PATCH=${CMAKE_MATCH_3})
endfunction()
