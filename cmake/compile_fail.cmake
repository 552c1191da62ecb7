# Compile-fail check, run as: cmake -DCXX=... -DCXX_ID=... -DSOURCE=... -DINCLUDES=a|b
#                                   -DFLAGS=f|g -P compile_fail.cmake
# SOURCE must NOT compile, and the compiler's diagnostics must match every
#   // expect-error: <regex>            (any compiler)
#   // expect-error(gcc): <regex>       (GCC only)
#   // expect-error(clang): <regex>     (Clang only)
# line in the file. At least one applicable line is required.

cmake_minimum_required(VERSION 3.21)

foreach(var CXX SOURCE)
    if(NOT DEFINED ${var})
        message(FATAL_ERROR "compile_fail.cmake: -D${var}=... is required")
    endif()
endforeach()

if(CXX_ID STREQUAL "GNU")
    set(compiler_tag gcc)
elseif(CXX_ID MATCHES "Clang")
    set(compiler_tag clang)
else()
    set(compiler_tag "${CXX_ID}")
endif()

file(STRINGS ${SOURCE} lines REGEX "//[ \t]*expect-error")
set(patterns)
foreach(line IN LISTS lines)
    if(line MATCHES "//[ \t]*expect-error(\\(([a-z]+)\\))?:[ \t]*(.*[^ \t])")
        set(tag "${CMAKE_MATCH_2}") # unset, not empty, when the group did not match
        set(pattern "${CMAKE_MATCH_3}")
        if(tag STREQUAL "" OR tag STREQUAL compiler_tag)
            list(APPEND patterns "${pattern}")
        endif()
    endif()
endforeach()
if(NOT patterns)
    message(FATAL_ERROR "${SOURCE}: no '// expect-error: <regex>' line for ${compiler_tag}")
endif()

string(REPLACE "|" ";" includes "${INCLUDES}")
string(REPLACE "|" ";" flags "${FLAGS}")
set(include_flags)
foreach(dir IN LISTS includes)
    list(APPEND include_flags -I${dir})
endforeach()

execute_process(
    COMMAND ${CXX} ${flags} -fsyntax-only ${include_flags} ${SOURCE}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)

# Plain message() keeps the compiler's formatting (FATAL_ERROR would re-wrap it).
if(result EQUAL 0)
    message("${output}")
    message(FATAL_ERROR "${SOURCE} compiled, but it must not")
endif()
foreach(pattern IN LISTS patterns)
    if(NOT output MATCHES "${pattern}")
        message("compiler output:\n${output}")
        message(FATAL_ERROR "${SOURCE} failed to compile, but its diagnostics do not match "
                            "the expected regex: ${pattern}")
    endif()
endforeach()
message(STATUS "${SOURCE}: failed to compile as expected")
