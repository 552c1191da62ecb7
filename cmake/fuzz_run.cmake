# Runs one libFuzzer harness for a bounded time (ctest fuzz.<target>, tests/fuzz/CMakeLists.txt):
#   cmake -DFUZZER=<exe> -DNAME=<target> -DCORPUS=<seed dir> -DWORK=<work dir> -DSECONDS=<n>
#         -P fuzz_run.cmake
# The seeds are copied to <work dir>/corpus (libFuzzer adds what it finds there, the checked-in
# corpus stays as it is). Fails when the fuzzer reports anything (crash, leak, sanitizer error,
# invariant violation, timeout), naming the input that reproduces it. Prints the executions.
foreach(var FUZZER NAME CORPUS WORK SECONDS)
    if(NOT DEFINED ${var})
        message(FATAL_ERROR "fuzz_run.cmake: -D${var}= is required")
    endif()
endforeach()
if(NOT IS_DIRECTORY ${CORPUS})
    message(FATAL_ERROR "fuzz ${NAME}: no seed corpus at ${CORPUS}")
endif()
file(GLOB seeds ${CORPUS}/*)
list(LENGTH seeds nseeds)
if(nseeds EQUAL 0)
    message(FATAL_ERROR "fuzz ${NAME}: the seed corpus ${CORPUS} is empty")
endif()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)
file(COPY ${seeds} DESTINATION ${WORK}/corpus)

execute_process(
    COMMAND ${FUZZER} -max_total_time=${SECONDS} -print_final_stats=1 -timeout=20 -rss_limit_mb=2048
            -artifact_prefix=${WORK}/artifacts/ ${WORK}/corpus
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE out)
file(WRITE ${WORK}/log.txt "${out}")

set(execs "?")
if(out MATCHES "stat::number_of_executed_units: *([0-9]+)")
    set(execs ${CMAKE_MATCH_1})
endif()
set(added "?")
if(out MATCHES "stat::new_units_added: *([0-9]+)")
    set(added ${CMAKE_MATCH_1})
endif()
set(cov "")
if(out MATCHES "#[0-9]+[ \t]+DONE[ \t]+cov: ([0-9]+) ft: ([0-9]+)")
    set(cov ", cov ${CMAKE_MATCH_1} ft ${CMAKE_MATCH_2}")
endif()
set(summary "fuzz ${NAME}: ${execs} executions in ${SECONDS} s from ${nseeds} seeds, ${added} new inputs${cov}")

if(NOT rc EQUAL 0)
    file(GLOB artifacts ${WORK}/artifacts/*)
    # The last lines carry the report: sanitizer or invariant message and the stack.
    string(LENGTH "${out}" len)
    if(len GREATER 12000)
        math(EXPR from "${len} - 12000")
        string(SUBSTRING "${out}" ${from} -1 out)
    endif()
    message("${out}")
    message(FATAL_ERROR "${summary}\nfuzz ${NAME}: FAILED (exit ${rc}); reproduce with\n  ${FUZZER} ${artifacts}\n(full log: ${WORK}/log.txt)")
endif()
message("${summary}")
