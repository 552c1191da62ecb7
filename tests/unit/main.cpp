// doctest runner for vcpu_unit_tests; the test cases live in the other files of tests/unit/.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
