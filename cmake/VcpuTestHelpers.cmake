include_guard(GLOBAL)

# vcpu_add_doctest_per_file(<exe> <label> <sources>)
#   Registers one ctest "<label>.<stem>" per source (main.cpp excepted) that runs only the
#   TEST_CASEs defined in that file. A file without test cases runs nothing and passes.
function(vcpu_add_doctest_per_file exe label sources)
    foreach(source IN LISTS sources)
        get_filename_component(stem ${source} NAME_WE)
        if(stem STREQUAL "main")
            continue()
        endif()
        get_filename_component(name ${source} NAME)
        # "*/name" so that harness.cpp does not also select my_harness.cpp.
        add_test(NAME ${label}.${stem}
                 COMMAND ${exe} --source-file=*/${name} --no-intro --no-version)
        set_tests_properties(${label}.${stem} PROPERTIES LABELS ${label})
    endforeach()
endfunction()

# vcpu_add_consumer_test(<dir> <cmake -D options>...)
#   Configures, builds and runs the consumer project tests/cmake/<dir> with the same compiler
#   and generator, as ctest "cmake.<dir>".
function(vcpu_add_consumer_test dir)
    set(bindir ${CMAKE_BINARY_DIR}/consumer-${dir})
    add_test(NAME cmake.${dir}
             COMMAND ${CMAKE_CTEST_COMMAND}
                     --build-and-test ${CMAKE_CURRENT_SOURCE_DIR}/cmake/${dir} ${bindir}
                     --build-generator ${CMAKE_GENERATOR}
                     --build-makeprogram ${CMAKE_MAKE_PROGRAM}
                     --build-options
                         -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
                         -DCMAKE_BUILD_TYPE=$<CONFIG>
                         -DVCPU_EXPECT_VERSION=${PROJECT_VERSION}
                         ${ARGN}
                     --test-command ${bindir}/consumer)
    set_tests_properties(cmake.${dir} PROPERTIES LABELS cmake)
endfunction()
