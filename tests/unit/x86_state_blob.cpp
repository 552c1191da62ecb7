// The serialized x86-64 vCPU state (kvm/x86_64_state.hpp) without KVM: a round trip keeps every
// byte, and EVERY truncation and EVERY single-byte change of a blob is refused with an error
// naming deserialize (run under ASan/UBSan in the sanitizer build: no out-of-bounds read on any
// of them). The real-KVM save/load is tests/guest/x86_64_state.cpp.
#include <kvm/x86_64_state.hpp>

#include <doctest/doctest.h>

#if defined(__x86_64__)
#include <cerrno>
#include <cstring>
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
    // An SVM-format nested state of 128 + 64 bytes (header: flags, format, size).
    s.nested.words.assign(24, 0);
    const std::uint16_t flags = 0, format = KVM_STATE_NESTED_FORMAT_SVM;
    const std::uint32_t size = 192;
    std::memcpy(reinterpret_cast<std::byte*>(s.nested.words.data()), &flags, 2);
    std::memcpy(reinterpret_cast<std::byte*>(s.nested.words.data()) + 2, &format, 2);
    std::memcpy(reinterpret_cast<std::byte*>(s.nested.words.data()) + 4, &size, 4);
    s.nested.words[20] = 0x5eed;
    return s;
}
} // namespace

TEST_CASE("x86-64 state blob: round trip keeps every section") {
    const auto s = sample();
    const auto blob = s.serialize();
    CHECK(blob.size() == sizeof(vcpu::kvm::x86_64_state_header) + sizeof s.regs + sizeof s.sregs + s.xsave.size() +
                             sizeof s.xcrs + sizeof s.lapic + 4 + sizeof s.events + sizeof s.debugregs + 2 * 16 +
                             192);
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
    CHECK(back->nested.words == s.nested.words);
    CHECK(back->nested.format() == KVM_STATE_NESTED_FORMAT_SVM);
    CHECK(back->nested.size() == 192);

    vcpu::kvm::x86_64_vcpu_state fpu_only; // no XSAVE, XCRS or LAPIC: the FPU section instead
    fpu_only.fpu.fcw = 0x37f;
    auto b2 = vcpu::kvm::x86_64_vcpu_state::deserialize(fpu_only.serialize());
    REQUIRE(b2);
    CHECK(b2->xsave.size() == 0);
    CHECK(b2->fpu.fcw == 0x37f);
    CHECK(!b2->has_lapic);
    CHECK(b2->nested.size() == 0);
}

TEST_CASE("x86-64 state blob: a version 1 blob (before nested state) is refused with a clear error") {
    auto blob = sample().serialize();
    const std::uint32_t v1 = 1;
    std::memcpy(blob.data() + offsetof(vcpu::kvm::x86_64_state_header, version), &v1, sizeof v1);
    auto r = vcpu::kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE(!r);
    CHECK(r.err().code == EPROTO);
    const std::string msg = r.err().message();
    CHECK_MESSAGE(msg.find("older library") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("version=1") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("supported=2") != std::string::npos, msg);
}

TEST_CASE("x86-64 state blob: a nested-state section whose own size disagrees is refused") {
    auto s = sample();
    const std::uint32_t wrong = 184; // the header says 192 bytes follow
    std::memcpy(reinterpret_cast<std::byte*>(s.nested.words.data()) + 4, &wrong, 4);
    auto r = vcpu::kvm::x86_64_vcpu_state::deserialize(s.serialize());
    // serialize writes nested.size() bytes (184): a consistent blob of a shorter state
    REQUIRE(r);
    CHECK(r->nested.size() == 184);
    auto t = sample();
    t.nested.words.resize(2); // shorter than its header
    auto blob = t.serialize();
    auto back = vcpu::kvm::x86_64_vcpu_state::deserialize(blob);
    REQUIRE(back);
    CHECK(back->nested.size() == 0); // not saved: bytes() is empty for a short buffer
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
