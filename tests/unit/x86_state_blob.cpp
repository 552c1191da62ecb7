// The serialized x86-64 vCPU state (kvm/x86_64_state.hpp) without KVM: a round trip keeps every
// byte, and EVERY truncation and EVERY single-byte change of a blob is refused with an error
// naming deserialize (run under ASan/UBSan in the sanitizer build: no out-of-bounds read on any
// of them). The real-KVM save/load is tests/guest/x86_64_state.cpp.
#include <kvm/x86_64_state.hpp>

#include <doctest/doctest.h>

#if defined(__x86_64__)
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace {
vcpu::kvm::x86_64_vcpu_state sample() {
    vcpu::kvm::x86_64_vcpu_state s;
    s.regs.rip = 0xffffffff81000000ull;
    s.regs.rax = 42;
    s.sregs.cr0 = 0x80050033;
    s.xsave.words.assign(1024 + 64, 0);
    for (std::size_t i = 0; i < s.xsave.words.size(); ++i) s.xsave.words[i] = static_cast<std::uint32_t>(i * 7);
    s.has_xcrs = true;
    s.xcrs.nr_xcrs = 1;
    s.xcrs.xcrs[0].value = 7;
    s.has_lapic = true;
    s.lapic.regs[0x20] = 1;
    s.mp_state = KVM_MP_STATE_RUNNABLE;
    s.debugregs.dr7 = 0x400;
    s.msrs = {{0x10, 0, 123}, {0xc0000082u, 0, 0xffffffff81000000ull}};
    s.tsc_khz = 2'000'000;
    return s;
}
} // namespace

TEST_CASE("x86-64 state blob: round trip keeps every section") {
    const auto s = sample();
    const auto blob = s.serialize();
    CHECK(blob.size() == sizeof(vcpu::kvm::x86_64_state_header) + sizeof s.regs + sizeof s.sregs + s.xsave.size() +
                             sizeof s.xcrs + sizeof s.lapic + 4 + sizeof s.events + sizeof s.debugregs + 2 * 16);
    auto back = vcpu::kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE_MESSAGE(back, back.err().message());
    CHECK(back->serialize() == blob);
    CHECK(back->regs.rip == s.regs.rip);
    CHECK(back->xsave.words == s.xsave.words);
    CHECK(back->has_lapic);
    CHECK(back->lapic.regs[0x20] == 1);
    CHECK(back->msrs.size() == 2);
    CHECK(back->msrs[1].data == 0xffffffff81000000ull);
    CHECK(back->tsc_khz == 2'000'000);

    vcpu::kvm::x86_64_vcpu_state fpu_only; // no XSAVE, XCRS or LAPIC: the FPU section instead
    fpu_only.fpu.fcw = 0x37f;
    auto b2 = vcpu::kvm::x86_64_vcpu_state::deserialize(fpu_only.serialize());
    REQUIRE(b2);
    CHECK(b2->xsave.size() == 0);
    CHECK(b2->fpu.fcw == 0x37f);
    CHECK(!b2->has_lapic);
}

TEST_CASE("x86-64 state blob: every truncation and every changed byte is refused") {
    const auto blob = sample().serialize();
    for (std::size_t n = 0; n < blob.size(); ++n) {
        auto r = vcpu::kvm::x86_64_vcpu_state::deserialize(std::span(blob).first(n));
        REQUIRE_MESSAGE(!r, n);
        CHECK(std::string(r.err().op) == "x86_64_vcpu_state::deserialize");
    }
    auto b = blob;
    for (std::size_t i = 0; i < b.size(); ++i) {
        b[i] ^= std::byte{0x01};
        auto r = vcpu::kvm::x86_64_vcpu_state::deserialize(b);
        REQUIRE_MESSAGE(!r, i);
        CHECK((r.err().code == EINVAL || r.err().code == EPROTO || r.err().code == EBADMSG));
        b[i] ^= std::byte{0x01};
    }
}
#endif
