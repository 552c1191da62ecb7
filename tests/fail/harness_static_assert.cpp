// Proves the compile-fail harness: this must fail, and with this message.
// expect-error: vcpu harness: this static_assert must fire
#include <vcpu/version.hpp>

static_assert(vcpu::version_major < 0, "vcpu harness: this static_assert must fire");
