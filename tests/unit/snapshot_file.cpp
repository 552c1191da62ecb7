// The snapshot file format (kvm/snapshot.hpp) and the serialized x86-64 VM state
// (kvm/x86_64_vm_state.hpp) without KVM: a written file reads back with every slot, state blob
// and memory byte (holes as zeros), its memory maps copy-on-write, and EVERY single-byte change
// and EVERY truncation of the metadata, a truncated memory section, another version or arch is
// refused with an error naming what is wrong (run under ASan/UBSan in the sanitizer build: no
// out-of-bounds read on any of them). The real-KVM snapshot tests are
// tests/guest/x86_64_snapshot.cpp.
#include <kvm/snapshot.hpp>
#include <kvm/x86_64_vm_state.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

namespace kvm = vcpu::kvm;

/// Page-aligned anonymous memory standing in for guest RAM.
struct fake_ram {
    std::byte* p = nullptr;
    std::size_t n = 0;
    explicit fake_ram(std::size_t bytes) : n(bytes) {
        void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(m != MAP_FAILED);
        p = static_cast<std::byte*>(m);
    }
    ~fake_ram() { ::munmap(p, n); }
    fake_ram(const fake_ram&) = delete;
    fake_ram& operator=(const fake_ram&) = delete;
    [[nodiscard]] std::span<std::byte> bytes() const { return {p, n}; }
};

struct temp_dir {
    std::string path;
    temp_dir() {
        char t[] = "/tmp/vcpu-snapfile-XXXXXX";
        REQUIRE(::mkdtemp(t) != nullptr);
        path = t;
    }
    ~temp_dir() { (void)std::system(("rm -rf '" + path + "'").c_str()); }
    [[nodiscard]] std::string file(const char* name) const { return path + "/" + name; }
};

std::vector<std::byte> read_file(const std::string& path) {
    std::vector<std::byte> b;
    FILE* f = std::fopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    std::fseek(f, 0, SEEK_END);
    b.resize(static_cast<std::size_t>(std::ftell(f)));
    std::fseek(f, 0, SEEK_SET);
    REQUIRE(std::fread(b.data(), 1, b.size(), f) == b.size());
    std::fclose(f);
    return b;
}

std::vector<std::byte> blob(std::size_t n, unsigned seed) {
    std::vector<std::byte> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
    return b;
}

const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

/// Two slots (one read-only) with data, zero pages in between, a VM blob and two vCPU blobs.
struct sample {
    fake_ram low{16 * page}, high{4 * page};
    std::vector<std::byte> vm = blob(100, 1);
    std::vector<std::byte> devices = blob(57, 9); ///< the VMM's device models
    std::vector<kvm::snapshot_vcpu_blob> vcpus{{0, blob(300, 2)}, {3, blob(17, 3)}};
    sample() {
        for (std::size_t i = 0; i < low.n; i += page)
            if ((i / page) % 3 == 0) std::memset(low.p + i, static_cast<int>(0x40 + i / page), page);
        std::memset(high.p + page, 0x7e, page);
    }
    [[nodiscard]] std::vector<kvm::snapshot_region> regions() const {
        return {{0, 0, low.bytes(), false}, {5, 0x100000000ull, high.bytes(), true}};
    }
    kvm::snapshot_write_stats write(const std::string& path, kvm::snapshot_write_options o = {}) const {
        const auto r = regions();
        auto w = kvm::write_snapshot_file(path.c_str(), "testarch", r, vm, vcpus, devices, o);
        REQUIRE_MESSAGE(w, w.err().message());
        return *w;
    }
};

} // namespace

TEST_CASE("snapshot file: round trip of slots, state blobs and memory; zero pages are holes") {
    temp_dir d;
    const sample s;
    const auto path = d.file("a.snap");
    const auto st = s.write(path);
    CHECK(st.memory_bytes == 20 * page);
    CHECK(st.written_pages == 6 + 1); // pages 0, 3, 6, 9, 12, 15 of `low`, page 1 of `high`
    CHECK(st.zero_pages == 20 - 7);
    struct stat sb{};
    REQUIRE(::stat(path.c_str(), &sb) == 0);
    CHECK(static_cast<std::uint64_t>(sb.st_size) == st.file_size);

    auto f = kvm::snapshot_file::open(path.c_str(), "testarch");
    REQUIRE_MESSAGE(f, f.err().message());
    CHECK(f->header().page_size == page);
    REQUIRE(f->slots().size() == 2);
    CHECK(f->slots()[0].slot == 0);
    CHECK(f->slots()[0].gpa == 0);
    CHECK(f->slots()[0].size == 16 * page);
    CHECK(f->slots()[0].file_offset % page == 0);
    CHECK(f->slots()[1].slot == 5);
    CHECK(f->slots()[1].gpa == 0x100000000ull);
    CHECK(f->slots()[1].flags == kvm::snapshot_slot::flag_read_only);
    CHECK(std::vector<std::byte>(f->vm_state().begin(), f->vm_state().end()) == s.vm);
    CHECK(std::vector<std::byte>(f->device_state().begin(), f->device_state().end()) == s.devices);
    REQUIRE(f->vcpus().size() == 2);
    CHECK(f->vcpus()[1].id == 3);
    CHECK(std::vector<std::byte>(f->vcpu_state(0).begin(), f->vcpu_state(0).end()) == s.vcpus[0].state);
    CHECK(std::vector<std::byte>(f->vcpu_state(1).begin(), f->vcpu_state(1).end()) == s.vcpus[1].state);

    auto low = f->map_slot(0);
    REQUIRE_MESSAGE(low, low.err().message());
    REQUIRE(low->size() == s.low.n);
    CHECK(std::memcmp(low->bytes().data(), s.low.p, s.low.n) == 0);
    auto high = f->map_slot(1);
    REQUIRE_MESSAGE(high, high.err().message());
    CHECK(std::memcmp(high->bytes().data(), s.high.p, s.high.n) == 0);
    CHECK(!f->map_slot(2));

    // Copy-on-write: writing the mapping leaves the file as it was.
    const auto before = read_file(path);
    std::memset(low->bytes().data(), 0xcc, 2 * page);
    CHECK(read_file(path) == before);
    auto again = f->map_slot(0);
    REQUIRE(again);
    CHECK(std::memcmp(again->bytes().data(), s.low.p, s.low.n) == 0);
}

TEST_CASE("snapshot file: without zero-page skipping every page is written; same contents") {
    temp_dir d;
    const sample s;
    const auto st = s.write(d.file("full.snap"), kvm::snapshot_write_options{false, true});
    CHECK(st.written_pages == 20);
    CHECK(st.zero_pages == 0);
    s.write(d.file("sparse.snap"));
    CHECK(read_file(d.file("full.snap")) == read_file(d.file("sparse.snap")));
}

TEST_CASE("snapshot file: every metadata byte change and every truncation is refused") {
    temp_dir d;
    const sample s;
    const auto path = d.file("a.snap");
    s.write(path);
    const auto good = read_file(path);
    kvm::snapshot_header h;
    std::memcpy(&h, good.data(), sizeof h);
    const auto meta = std::span(good).first(h.metadata_size);
    REQUIRE(kvm::parse_snapshot_metadata(meta, "testarch", page, good.size()));

    std::size_t refused = 0;
    for (std::size_t i = 0; i < meta.size(); ++i) {
        for (std::uint8_t bit : {std::uint8_t{0x01}, std::uint8_t{0x80}}) {
            std::vector<std::byte> m(meta.begin(), meta.end());
            m[i] ^= std::byte{bit};
            auto r = kvm::parse_snapshot_metadata(m, "testarch", page, good.size());
            if (!r) ++refused;
            else FAIL_CHECK("byte " << i << " bit " << int(bit) << " accepted");
        }
    }
    CHECK(refused == 2 * meta.size());
    for (std::size_t n = 0; n < meta.size(); ++n) {
        auto r = kvm::parse_snapshot_metadata(meta.first(n), "testarch", page, good.size());
        REQUIRE(!r);
        CHECK(r.err().code == EINVAL);
    }
    // The file is shorter than its memory section.
    auto r = kvm::parse_snapshot_metadata(meta, "testarch", page, good.size() - 1);
    REQUIRE(!r);
    CHECK(std::string(r.err().detail).find("truncated memory section") != std::string::npos);
}

TEST_CASE("snapshot file: wrong magic, version, arch and page size name what mismatched") {
    temp_dir d;
    const sample s;
    const auto path = d.file("a.snap");
    s.write(path);
    const auto good = read_file(path);
    kvm::snapshot_header h;
    std::memcpy(&h, good.data(), sizeof h);
    auto check = [&](kvm::snapshot_header x, std::string_view arch, std::size_t pg, int code, const char* text) {
        auto r = kvm::check_snapshot_header(x, arch, pg, good.size());
        REQUIRE(!r);
        CHECK(r.err().code == code);
        const auto msg = r.err().message();
        CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
    };
    REQUIRE(kvm::check_snapshot_header(h, "testarch", page, good.size()));
    auto m = h;
    m.magic[7] = 'X';
    check(m, "testarch", page, EINVAL, "bad magic");
    auto v = h;
    v.version = 7;
    check(v, "testarch", page, EPROTO, "version=7");
    check(h, "x86_64", page, EINVAL, "snapshot_arch=\"testarch\"");
    check(h, "testarch", page * 4, EINVAL, "page size");

    auto f = kvm::snapshot_file::open(path.c_str(), "riscv64");
    REQUIRE(!f);
    CHECK(f.err().message().find("wrong arch") != std::string::npos);
    auto none = kvm::snapshot_file::open(d.file("missing").c_str(), "testarch");
    REQUIRE(!none);
    CHECK(none.err().code == ENOENT);
}

TEST_CASE("snapshot file: bad input to the writer is refused before a file appears") {
    temp_dir d;
    const sample s;
    const auto path = d.file("w.snap");
    std::vector<kvm::snapshot_region> r{{0, 0, s.low.bytes().first(page + 1), false}};
    auto w = kvm::write_snapshot_file(path.c_str(), "testarch", r, {}, {});
    REQUIRE(!w);
    CHECK(w.err().code == EINVAL);
    r = {{0, 0x800, s.low.bytes(), false}};
    CHECK(!kvm::write_snapshot_file(path.c_str(), "testarch", r, {}, {}));
    CHECK(!kvm::write_snapshot_file(path.c_str(), "a-very-long-arch-name", {}, {}, {}));
    CHECK(::access(path.c_str(), F_OK) != 0);
    // A directory that does not exist: the open fails, naming the temporary path.
    auto e = kvm::write_snapshot_file((d.path + "/no/such.snap").c_str(), "testarch", {}, {}, {});
    REQUIRE(!e);
    CHECK(std::string(e.err().op) == "open snapshot");
    CHECK(e.err().code == ENOENT);
}

#if defined(__x86_64__)
TEST_CASE("x86-64 VM state blob: round trip; every byte change and truncation refused") {
    kvm::x86_64_vm_state s;
    s.has_irqchip = true;
    for (std::size_t i = 0; i < s.irqchip.size(); ++i) s.irqchip[i].chip_id = static_cast<std::uint32_t>(kvm::all_irqchips[i]);
    s.irqchip[0].chip.pic.imr = 0xfb;
    s.irqchip[2].chip.ioapic.redirtbl[3].bits = 0x1234;
    s.has_pit = true;
    s.pit.channels[0].count = 0xffff;
    s.has_clock = true;
    s.clock.clock = 123456789;
    s.clock.flags = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME;
    const auto b = s.serialize();
    CHECK(b.size() == sizeof(kvm::x86_64_vm_state_header) + 3 * sizeof(::kvm_irqchip) + sizeof(::kvm_pit_state2) +
                           sizeof(::kvm_clock_data));
    auto back = kvm::x86_64_vm_state::deserialize(b);
    REQUIRE_MESSAGE(back, back.err().message());
    CHECK(back->serialize() == b);
    CHECK(back->irqchip[0].chip.pic.imr == 0xfb);
    CHECK(back->pit.channels[0].count == 0xffff);
    CHECK(back->clock.clock == 123456789);

    for (std::size_t i = 0; i < b.size(); ++i) {
        auto m = b;
        m[i] ^= std::byte{0x20};
        auto r = kvm::x86_64_vm_state::deserialize(m);
        CHECK_MESSAGE(!r, "byte " << i << " accepted");
        if (!r) CHECK(std::string(r.err().op) == "x86_64_vm_state::deserialize");
    }
    for (std::size_t n = 0; n < b.size(); ++n) CHECK(!kvm::x86_64_vm_state::deserialize(std::span(b).first(n)));
    auto longer = b;
    longer.push_back(std::byte{0});
    auto r = kvm::x86_64_vm_state::deserialize(longer);
    REQUIRE(!r);
    CHECK(std::string(r.err().detail).find("trailing") != std::string::npos);

    kvm::x86_64_vm_state empty; // a VM without in-kernel devices, clock not read
    const auto e = empty.serialize();
    CHECK(e.size() == sizeof(kvm::x86_64_vm_state_header));
    auto eb = kvm::x86_64_vm_state::deserialize(e);
    REQUIRE(eb);
    CHECK(!eb->has_irqchip);
    CHECK(!eb->has_pit);
}
#endif

TEST_CASE("no_vm_state: empty blob only") {
    CHECK(kvm::no_vm_state{}.serialize().empty());
    CHECK(kvm::no_vm_state::deserialize({}));
    const std::byte one[1]{};
    CHECK(!kvm::no_vm_state::deserialize(one));
}

namespace {
// Another architecture's vCPU state, shaped like x86_64_vcpu_state (save / load / serialize /
// deserialize), on a stand-in HAL: the generic snapshot functions take it as a template argument.
struct other_arch {
    static constexpr std::string_view name = "aarch64";
};
struct other_hal {
    unsigned vcpu_id = 0;
    std::uint64_t pc = 0;
    [[nodiscard]] unsigned id() const noexcept { return vcpu_id; }
};
struct other_cpu {
    using arch_type = other_arch;
    other_hal h;
    other_hal& hal() noexcept { return h; }
};
struct other_state {
    std::uint64_t pc = 0;
    static vcpu::result<other_state> save(other_hal& h) { return other_state{h.pc}; }
    vcpu::result<void> load(other_hal& h) const {
        h.pc = pc;
        return vcpu::ok();
    }
    [[nodiscard]] std::vector<std::byte> serialize() const {
        std::vector<std::byte> b(sizeof pc);
        std::memcpy(b.data(), &pc, sizeof pc);
        return b;
    }
    static vcpu::result<other_state> deserialize(std::span<const std::byte> b) {
        if (b.size() != sizeof(std::uint64_t)) return vcpu::error{"other_state::deserialize", EINVAL, "bad size"};
        other_state s;
        std::memcpy(&s.pc, b.data(), sizeof s.pc);
        if (s.pc == 0xbad) return vcpu::error{"other_state::deserialize", EINVAL, "refused"};
        return s;
    }
};
} // namespace

TEST_CASE("snapshot: generic over the arch: another arch's state type plugs in; mismatches change nothing") {
    temp_dir d;
    const auto path = d.file("other.snap");
    fake_ram ram(4 * page);
    std::memset(ram.p + page, 0x11, page);
    const kvm::snapshot_region regions[1]{{0, 0x40000000, ram.bytes(), false}};
    const kvm::basic_vm<kvm::linux_sys> no_vm(kvm::basic_fd<kvm::linux_sys>(-1), -1, 0); // no_vm_state never uses it
    std::vector<other_cpu> cpus{{{0, 0x80001000}}, {{1, 0x80002000}}};
    auto w = kvm::save_snapshot<other_state, kvm::no_vm_state>(path.c_str(), no_vm, std::span(cpus), std::span(regions));
    REQUIRE_MESSAGE(w, w.err().message());

    CHECK(!kvm::snapshot_file::open(path.c_str(), "x86_64")); // stored under the cpus' arch name
    auto f = kvm::snapshot_file::open(path.c_str(), "aarch64");
    REQUIRE_MESSAGE(f, f.err().message());
    CHECK(f->slots()[0].gpa == 0x40000000);
    CHECK(f->vm_state().empty());

    std::vector<other_cpu> fresh{{{0, 0}}, {{1, 0}}};
    auto l = kvm::load_snapshot_state<other_state, kvm::no_vm_state>(*f, no_vm, std::span(fresh));
    REQUIRE_MESSAGE(l, l.err().message());
    CHECK(fresh[0].h.pc == 0x80001000);
    CHECK(fresh[1].h.pc == 0x80002000);

    // Other vCPU ids or counts: refused, nothing loaded.
    std::vector<other_cpu> ids{{{0, 0}}, {{2, 0}}};
    auto bad_ids = kvm::load_snapshot_state<other_state, kvm::no_vm_state>(*f, no_vm, std::span(ids));
    REQUIRE(!bad_ids);
    CHECK(bad_ids.err().message().find("vCPU layout mismatch") != std::string::npos);
    CHECK(ids[0].h.pc == 0);
    std::vector<other_cpu> one{{{0, 0}}};
    CHECK(!kvm::load_snapshot_state<other_state, kvm::no_vm_state>(*f, no_vm, std::span(one)));
    CHECK(one[0].h.pc == 0);

    // A state that does not deserialize: refused before any vCPU is loaded.
    std::vector<other_cpu> bad{{{0, 0x1234}}, {{1, 0xbad}}};
    const auto path2 = d.file("bad.snap");
    REQUIRE(kvm::save_snapshot<other_state, kvm::no_vm_state>(path2.c_str(), no_vm, std::span(bad), std::span(regions)));
    auto f2 = kvm::snapshot_file::open(path2.c_str(), "aarch64");
    REQUIRE(f2);
    std::vector<other_cpu> target{{{0, 7}}, {{1, 7}}};
    auto r = kvm::load_snapshot_state<other_state, kvm::no_vm_state>(*f2, no_vm, std::span(target));
    REQUIRE(!r);
    CHECK(r.err().message().find("vcpu_id=1") != std::string::npos);
    CHECK(target[0].h.pc == 7);
    CHECK(target[1].h.pc == 7);
}
