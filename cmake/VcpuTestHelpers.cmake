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

# vcpu_add_consumer_test(<dir> [TEST_COMMAND <cmd>...] [OPTIONS <cmake -D options>...])
#   Configures, builds and runs the consumer project tests/cmake/<dir> with the same compiler
#   and generator, as ctest "cmake.<dir>". The run is <build>/consumer unless TEST_COMMAND is
#   given (in it, @BINDIR@ stands for the consumer's build directory).
function(vcpu_add_consumer_test dir)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "TEST_COMMAND;OPTIONS")
    set(bindir ${CMAKE_BINARY_DIR}/consumer-${dir})
    set(cmd ${bindir}/consumer)
    if(arg_TEST_COMMAND)
        string(REPLACE "@BINDIR@" "${bindir}" cmd "${arg_TEST_COMMAND}")
    endif()
    add_test(NAME cmake.${dir}
             COMMAND ${CMAKE_CTEST_COMMAND}
                     --build-and-test ${CMAKE_CURRENT_SOURCE_DIR}/cmake/${dir} ${bindir}
                     --build-generator ${CMAKE_GENERATOR}
                     --build-makeprogram ${CMAKE_MAKE_PROGRAM}
                     --build-options
                         # Every run configures afresh: a cache left by an earlier configure with
                         # another spelling of the compiler made CMake drop it with the -D options.
                         --fresh
                         -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
                         -DCMAKE_BUILD_TYPE=$<CONFIG>
                         -DVCPU_EXPECT_VERSION=${PROJECT_VERSION}
                         -DVCPU_EXPECT_LINUX_BOOT=${VCPU_HAVE_BOOT_LIBS}
                         ${arg_OPTIONS}
                     --test-command ${cmd})
    set_tests_properties(cmake.${dir} PROPERTIES LABELS cmake)
endfunction()

# ---- real-KVM tests ---------------------------------------------------------------------------
# vcpu_add_kvm_test(<name> COMMAND <program> [args...] [LABELS <label>...]
#                   [ENVIRONMENT <VAR=value>...] [FILES <path>...] [WORKING_DIRECTORY <dir>]
#                   [TIMEOUT <s>] [RUN_SERIAL])
#   A test that needs real x86 KVM. It runs through scripts/kvm-run: on this host's /dev/kvm when
#   the probe guest runs there, otherwise as one entry of the single nested-machine boot that the
#   fixture test `kvm.batch` makes for the whole ctest run (its output and exit status are then
#   reported here, so a failure names the doctest case as on the host). Skipped (77) only when
#   neither can run KVM. <program> must be a path or $<TARGET_FILE:...>; arguments naming existing
#   files are carried into the nested machine, and so are FILES (paths the program finds by
#   itself, e.g. compiled in). Call vcpu_finish_kvm_tests() once, after every
#   such test is added.
set(VCPU_KVM_RESULTS ${CMAKE_BINARY_DIR}/kvm-results CACHE INTERNAL "")
function(vcpu_add_kvm_test name)
    cmake_parse_arguments(PARSE_ARGV 1 arg "RUN_SERIAL" "WORKING_DIRECTORY;TIMEOUT"
                          "COMMAND;LABELS;ENVIRONMENT;FILES")
    if(NOT arg_COMMAND)
        message(FATAL_ERROR "vcpu_add_kvm_test(${name}): COMMAND is required")
    endif()
    set(wd ${CMAKE_CURRENT_BINARY_DIR})
    if(arg_WORKING_DIRECTORY)
        set(wd ${arg_WORKING_DIRECTORY})
    endif()
    add_test(NAME ${name}
             COMMAND ${PROJECT_SOURCE_DIR}/scripts/kvm-run test --probe $<TARGET_FILE:vcpu_kvm_host>
                     ${VCPU_KVM_RESULTS} ${name} -- ${arg_COMMAND}
             WORKING_DIRECTORY ${wd})
    set(labels kvm)
    if(arg_LABELS)
        set(labels ${arg_LABELS})
    endif()
    # Long runs (a label ending in "-long") do not join the shared nested boot of kvm.batch: in
    # the nested machine they get a boot of their own, only when ctest selects them.
    set(solo FALSE)
    foreach(l IN LISTS labels)
        if(l MATCHES "-long$")
            set(solo TRUE)
        endif()
    endforeach()
    set_tests_properties(${name} PROPERTIES LABELS "${labels}" SKIP_RETURN_CODE 77
                         FIXTURES_REQUIRED vcpu_kvm_batch)
    if(arg_ENVIRONMENT)
        set_tests_properties(${name} PROPERTIES ENVIRONMENT "${arg_ENVIRONMENT}")
    endif()
    if(arg_TIMEOUT)
        set_tests_properties(${name} PROPERTIES TIMEOUT ${arg_TIMEOUT})
    endif()
    if(arg_RUN_SERIAL)
        set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
    endif()
    # The manifest line for the nested run: NAME, CWD, ENV ('|'-separated, as ';' would split a
    # CMake list; scripts/xarch-run reads '|' too), PROGRAM, ARGS, separated by TABs.
    # FILES travel in the same field as "@<path>" entries.
    set(env_items ${arg_ENVIRONMENT})
    foreach(f IN LISTS arg_FILES)
        list(APPEND env_items "@${f}")
    endforeach()
    set(env -)
    if(env_items)
        list(JOIN env_items "|" env)
    endif()
    list(JOIN arg_COMMAND "\t" cmd)
    if(solo)
        set_property(GLOBAL APPEND PROPERTY VCPU_KVM_SOLO_MANIFEST "${name}\t${wd}\t${env}\t${cmd}")
        set_tests_properties(${name} PROPERTIES RESOURCE_LOCK x86nest)
    else()
        set_property(GLOBAL APPEND PROPERTY VCPU_KVM_MANIFEST "${name}\t${wd}\t${env}\t${cmd}")
    endif()
endfunction()

# vcpu_finish_kvm_tests(): writes the manifest of every vcpu_add_kvm_test and adds the fixture
# test kvm.batch that runs them (once per ctest run) where real KVM is.
function(vcpu_finish_kvm_tests)
    get_property(lines GLOBAL PROPERTY VCPU_KVM_MANIFEST)
    get_property(solo_lines GLOBAL PROPERTY VCPU_KVM_SOLO_MANIFEST)
    if(NOT lines AND NOT solo_lines)
        return()
    endif()
    list(JOIN lines "\n" content)
    set(manifest ${CMAKE_BINARY_DIR}/kvm-manifest.tsv)
    file(GENERATE OUTPUT ${manifest} CONTENT "${content}\n")
    list(JOIN solo_lines "\n" solo_content)
    set(solo_manifest ${CMAKE_BINARY_DIR}/kvm-manifest-solo.tsv)
    file(GENERATE OUTPUT ${solo_manifest} CONTENT "${solo_content}\n")
    add_test(NAME kvm.batch
             COMMAND ${PROJECT_SOURCE_DIR}/scripts/kvm-run batch --probe $<TARGET_FILE:vcpu_kvm_host>
                     ${manifest} ${VCPU_KVM_RESULTS} ${solo_manifest})
    set_tests_properties(kvm.batch PROPERTIES LABELS kvm FIXTURES_SETUP vcpu_kvm_batch
                         TIMEOUT 1500 RESOURCE_LOCK x86nest)
endfunction()
