// x86-64 VM device state (kvm/x86_64_vm_state.hpp) on real KVM: the typed IRQCHIP, PIT2 and CLOCK
// calls round-trip; `x86_64_vm_state` saves a VM and loads it into a second one (directly and
// through its blob); a VM without the in-kernel devices saves without them and refuses a state
// that has them, saying what it lacks; and every GET/SET ioctl, failing through the Sys seam on
// real KVM, is reported by name with its errno.
#include "support.hpp"

#include <kvm/x86_64_vm_state.hpp>

#include <cerrno>
#include <cstdint>
#include <string>

namespace {

namespace kvm = vcpu::kvm;

template <class Sys = vcpu::kvm::linux_sys>
vcpu::result<kvm::basic_x86_64_machine<Sys>> make_machine(bool devices = true) {
    kvm::x86_64_options o;
    o.ram_bytes = std::size_t{2} << 20;
    o.irqchip = o.pit = devices;
    return kvm::vm_init_x86_64<Sys>(o);
}

/// Real KVM, but the ioctl whose request code is `fail_code` fails with `fail_errno`.
struct failing_sys : vcpu::kvm::linux_sys {
    static inline unsigned long fail_code = 0;
    static inline int fail_errno = EIO;
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_code) {
            errno = fail_errno;
            return -1;
        }
        return vcpu::kvm::linux_sys::ioctl(fd, req, arg);
    }
};

} // namespace

TEST_CASE("guest x86-64 vm_state: IRQCHIP, PIT2 and CLOCK round-trip on a VM") {
    auto m = make_machine();
    REQUIRE_MESSAGE(m, m.err().message());
    const auto& vm = m->vm;
    for (auto id : kvm::all_irqchips) {
        CAPTURE(static_cast<unsigned>(id));
        auto c = kvm::get_irqchip(vm, id);
        REQUIRE_MESSAGE(c, c.err().message());
        CHECK(c->chip_id == static_cast<std::uint32_t>(id));
        REQUIRE(kvm::set_irqchip(vm, *c));
    }
    auto slave = kvm::get_irqchip(vm, kvm::irqchip_id::pic_slave);
    REQUIRE(slave);
    slave->chip.pic.imr = 0x3c;
    slave->chip.pic.irq_base = 0x70;
    REQUIRE(kvm::set_irqchip(vm, *slave));
    CHECK(kvm::get_irqchip(vm, kvm::irqchip_id::pic_slave)->chip.pic.imr == 0x3c);
    CHECK(kvm::get_irqchip(vm, kvm::irqchip_id::pic_slave)->chip.pic.irq_base == 0x70);
    auto ioapic = kvm::get_irqchip(vm, kvm::irqchip_id::ioapic);
    REQUIRE(ioapic);
    CHECK(ioapic->chip.ioapic.base_address == 0xfec00000u); // KVM's IOAPIC default
    // An unknown chip id is refused before KVM sees it.
    ::kvm_irqchip bogus{};
    bogus.chip_id = 7;
    auto b = kvm::set_irqchip(vm, bogus);
    REQUIRE(!b);
    CHECK(b.err().code == EINVAL);
    CHECK(b.err().message().find("chip_id=7") != std::string::npos);

    auto pit = kvm::get_pit2(vm);
    REQUIRE_MESSAGE(pit, pit.err().message());
    pit->channels[2].count = 0x4242;
    pit->channels[2].mode = 3;
    REQUIRE(kvm::set_pit2(vm, *pit));
    auto pit2 = kvm::get_pit2(vm);
    REQUIRE(pit2);
    CHECK(pit2->channels[2].count == 0x4242);
    CHECK(pit2->channels[2].mode == 3);

    auto flags = kvm::clock_flags(vm);
    REQUIRE_MESSAGE(flags, flags.err().message());
    MESSAGE("KVM_CAP_ADJUST_CLOCK flags: " << *flags);
    auto c1 = kvm::get_clock(vm);
    REQUIRE_MESSAGE(c1, c1.err().message());
    // GET reports only flags the capability lists (TSC_STABLE only when the host clock is stable).
    CHECK((c1->flags & ~*flags) == 0);
    ::kvm_clock_data later{};
    later.clock = c1->clock + 5'000'000'000ull; // five seconds ahead
    REQUIRE(kvm::set_clock(vm, later));
    auto c2 = kvm::get_clock(vm);
    REQUIRE(c2);
    CHECK(c2->clock >= later.clock);
}

TEST_CASE("guest x86-64 vm_state: saved from one VM, loaded into another, directly and as a blob") {
    auto a = make_machine();
    REQUIRE_MESSAGE(a, a.err().message());
    auto pic = kvm::get_irqchip(a->vm, kvm::irqchip_id::pic_master);
    REQUIRE(pic);
    pic->chip.pic.imr = 0x5a;
    REQUIRE(kvm::set_irqchip(a->vm, *pic));
    auto pit = kvm::get_pit2(a->vm);
    REQUIRE(pit);
    pit->channels[1].count = 0x777;
    REQUIRE(kvm::set_pit2(a->vm, *pit));
    auto s = kvm::x86_64_vm_state::save(a->vm);
    REQUIRE_MESSAGE(s, s.err().message());
    CHECK(s->has_irqchip);
    CHECK(s->has_pit);
    CHECK(s->has_clock);
    auto blob = kvm::x86_64_vm_state::deserialize(s->serialize());
    REQUIRE_MESSAGE(blob, blob.err().message());

    for (const auto* state : {&*s, &*blob}) {
        auto b = make_machine();
        REQUIRE_MESSAGE(b, b.err().message());
        auto l = state->load(b->vm);
        REQUIRE_MESSAGE(l, l.err().message());
        CHECK(kvm::get_irqchip(b->vm, kvm::irqchip_id::pic_master)->chip.pic.imr == 0x5a);
        CHECK(kvm::get_pit2(b->vm)->channels[1].count == 0x777);
        CHECK(kvm::get_clock(b->vm)->clock >= s->clock.clock);
    }
    // add_elapsed: when the save has REALTIME, the clock moves on by the time since the save.
    if ((s->clock.flags & KVM_CLOCK_REALTIME) != 0) {
        auto b = make_machine();
        REQUIRE(b);
        auto old = *s;
        old.clock.realtime -= 3'000'000'000ull; // "saved" three seconds earlier
        REQUIRE(old.load(b->vm, kvm::clock_restore::add_elapsed));
        CHECK(kvm::get_clock(b->vm)->clock >= s->clock.clock + 3'000'000'000ull);
    } else {
        MESSAGE("SKIPPED: add_elapsed: this host's KVM_GET_CLOCK has no KVM_CLOCK_REALTIME");
    }
}

TEST_CASE("guest x86-64 vm_state: a VM without in-kernel devices saves without them and refuses theirs") {
    auto bare = make_machine(false);
    REQUIRE_MESSAGE(bare, bare.err().message());
    auto s = kvm::x86_64_vm_state::save(bare->vm);
    REQUIRE_MESSAGE(s, s.err().message());
    CHECK(!s->has_irqchip);
    CHECK(!s->has_pit);
    CHECK(s->has_clock);
    auto g = kvm::get_irqchip(bare->vm, kvm::irqchip_id::pic_master);
    REQUIRE(!g);
    CHECK(g.err().code == ENXIO);
    CHECK(std::string(g.err().op) == "KVM_GET_IRQCHIP");

    auto full = make_machine();
    REQUIRE(full);
    auto with = kvm::x86_64_vm_state::save(full->vm);
    REQUIRE(with);
    auto l = with->load(bare->vm);
    REQUIRE(!l);
    CHECK(l.err().code == ENXIO);
    CHECK(l.err().message().find("irqchip the VM lacks") != std::string::npos);
    REQUIRE(s->load(full->vm)); // fewer devices saved than present: loads what there is
}

TEST_CASE("guest x86-64 vm_state: a failing GET or SET ioctl is reported by name") {
    namespace io = vcpu::kvm::ioctls;
    auto m = make_machine<failing_sys>();
    REQUIRE_MESSAGE(m, m.err().message());
    auto good = kvm::x86_64_vm_state::save(m->vm);
    REQUIRE_MESSAGE(good, good.err().message());
    struct injected {
        unsigned long code;
        const char* name;
    };
    for (const auto& g : {injected{io::vm::get_irqchip.code, "KVM_GET_IRQCHIP"}, injected{io::vm::get_pit2.code, "KVM_GET_PIT2"},
                          injected{io::vm::get_clock.code, "KVM_GET_CLOCK"}}) {
        for (int e : {EFAULT, EINTR, ENOMEM}) {
            CAPTURE(g.name);
            CAPTURE(e);
            failing_sys::fail_code = g.code;
            failing_sys::fail_errno = e;
            auto r = kvm::x86_64_vm_state::save(m->vm);
            failing_sys::fail_code = 0;
            REQUIRE(!r);
            CHECK(std::string(r.err().op) == g.name);
            CHECK(r.err().code == e);
        }
    }
    for (const auto& s : {injected{io::vm::set_irqchip.code, "KVM_SET_IRQCHIP"}, injected{io::vm::set_pit2.code, "KVM_SET_PIT2"},
                          injected{io::vm::set_clock.code, "KVM_SET_CLOCK"}}) {
        CAPTURE(s.name);
        failing_sys::fail_code = s.code;
        failing_sys::fail_errno = EFAULT;
        auto r = good->load(m->vm);
        failing_sys::fail_code = 0;
        REQUIRE(!r);
        CHECK(std::string(r.err().op) == s.name);
        CHECK(r.err().code == EFAULT);
    }
    // The chip id of a failing IRQCHIP call is in the error.
    failing_sys::fail_code = io::vm::get_irqchip.code;
    auto c = kvm::get_irqchip(m->vm, kvm::irqchip_id::ioapic);
    failing_sys::fail_code = 0;
    REQUIRE(!c);
    CHECK(c.err().message().find("chip_id=2") != std::string::npos);
    // A failing capability query names KVM_CHECK_EXTENSION.
    failing_sys::fail_code = io::vm::check_extension.code;
    auto f = kvm::clock_flags(m->vm);
    failing_sys::fail_code = 0;
    REQUIRE(!f);
    CHECK(std::string(f.err().op) == "KVM_CHECK_EXTENSION");
    REQUIRE(good->load(m->vm)); // nothing injected: loads
}
