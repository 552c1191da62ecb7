#pragma once
/// \file
/// Compiler-feature gate: every vcpu header includes this first, so a too-old language mode
/// fails with one readable line instead of a cascade of template errors.

#if __cplusplus < 202002L
#error "vcpu needs C++20 (-std=c++20)"
#endif

#if !defined(__cpp_concepts) || __cpp_concepts < 201907L
#error "vcpu needs a compiler with C++20 concepts (__cpp_concepts >= 201907L)"
#endif
