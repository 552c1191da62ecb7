// doctest main of vcpu_guest_mock_tests (one translation unit implements doctest).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
