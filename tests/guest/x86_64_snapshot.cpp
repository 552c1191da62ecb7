// Whole-VM snapshots (kvm/snapshot.hpp, kvm/x86_64_snapshot.hpp) on real KVM. A C++ guest fills
// guest memory with a pattern (leaving every eighth page zero: those become holes in the file),
// then counts in a loop, reporting each count with ucall::sync; at the end it checks every page
// of the pattern itself and reports the count and the number of bad pages. The host stops it
// mid-count and writes a snapshot, then:
//   - a SECOND PROCESS (this test binary re-executed with VCPU_SNAPSHOT_CHILD set, handled
//     before main) restores the snapshot and runs the guest on; its exit code says whether the
//     counter continued from the snapshot and every page checked out;
//   - the same process restores it into a second VM and does the same;
//   - corrupt, truncated, wrong-version, wrong-arch and wrong-layout snapshots are refused with
//     a clear error, and the file still restores afterwards (a refusal changes nothing).
#include "support.hpp"

#include <kvm/x86_64_snapshot.hpp>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace kvm = vcpu::kvm;
namespace gx = vcpu::guest::x86_64;

constexpr u64 pattern_pages = 4096; // 16 MiB of the guest's RAM
constexpr u64 count_to = 40;
constexpr u64 snapshot_at = 15;
constexpr u64 counting = 1, done_marker = 0xd0e;
constexpr std::size_t ram_bytes = std::size_t{64} << 20;

// ---- guest code -----------------------------------------------------------------------------

VCPU_GUEST_CODE inline u64 pattern_word(u64 page, u64 k) {
    return (page * 0x9e3779b97f4a7c15ull) ^ (k * 0xff51afd7ed558ccdull) ^ 0x5a5a5a5a;
}
/// Byte offsets of the words written in each page (its first and last word among them).
constexpr u64 word_offsets[] = {0, 8, 2048, 4088};

/// Fills the pattern, counts to `limit` in `*counter` (one sync per count), then checks every
/// page and reports (done_marker, counter, bad pages).
VCPU_GUEST_CODE void fill_count_verify(u64 base, u64 pages, u64 counter_addr, u64 limit) {
    for (u64 p = 0; p < pages; ++p) {
        if (p % 8 == 7) continue; // stays zero
        for (u64 k = 0; k < 4; ++k) *reinterpret_cast<volatile u64*>(base + p * 4096 + word_offsets[k]) = pattern_word(p, k);
    }
    auto* counter = reinterpret_cast<volatile u64*>(counter_addr);
    while (*counter < limit) {
        *counter = *counter + 1;
        ucall::sync(counting, *counter);
    }
    u64 bad = 0;
    for (u64 p = 0; p < pages; ++p) {
        for (u64 k = 0; k < 4; ++k) {
            const u64 want = p % 8 == 7 ? 0 : pattern_word(p, k);
            if (*reinterpret_cast<volatile u64*>(base + p * 4096 + word_offsets[k]) != want) {
                ++bad;
                break;
            }
        }
    }
    ucall::sync(done_marker, *counter, bad);
}

// ---- host -----------------------------------------------------------------------------------

/// The guest address space of a restored machine: the loader's translation (image copy, then
/// identity map) with the image range of the process that loaded the guest, which a re-executed
/// binary cannot know by itself (ASLR); ucalls as `gx::space` decodes them.
struct restored_space {
    using ucall_exit = vcpu::port_io;
    const vcpu::guest_memory* mem = nullptr;
    gx::layout layout{};
    u64 lo = 0, hi = 0; ///< the image's virtual range in the saving process

    [[nodiscard]] std::span<const std::byte> contiguous(u64 gva) const noexcept {
        return vcpu::guest::image_space_bytes(mem, layout.image, layout.identity_gib, lo, hi, gva);
    }
    [[nodiscard]] std::span<const std::byte> bytes(u64 gva, u64 len) const noexcept {
        const auto c = contiguous(gva);
        return c.size() < len ? std::span<const std::byte>{} : c.first(static_cast<std::size_t>(len));
    }
    [[nodiscard]] std::optional<u64> ucall_address(const vcpu::port_io& io) const noexcept {
        if (io.port != vcpu::guest::ucall_port || !io.is_out() || io.size != 4 || io.count != 1) return std::nullopt;
        return io.value();
    }
    template <class Cpu, class Visitor>
    [[nodiscard]] std::optional<bool> register_ucall(const vcpu::port_io& io, Cpu& cpu, Visitor&& visit) const noexcept {
        if (io.port != vcpu::guest::ucall_sync_port || !io.is_out() || io.size != 4 || io.count != 1) return std::nullopt;
        const std::uint32_t n = io.value();
        auto g = cpu.hal().template load<vcpu::x86_64::regs_block>();
        if (n > vcpu::guest::max_register_values || !g) {
            vcpu::guest::bad_ucall b{vcpu::guest::bad_ucall::why::registers, 0, n};
            return visit(b);
        }
        const auto& r = **g;
        const u64 v[vcpu::guest::max_register_values] = {r.rdi, r.rsi, r.r8, r.r9, r.r10, r.rbx};
        vcpu::guest::sync s;
        s.count = static_cast<std::uint8_t>(n);
        for (std::uint32_t i = 0; i < n; ++i) s.values[i] = v[i];
        return visit(s);
    }
};

kvm::x86_64_options machine_options() {
    kvm::x86_64_options o;
    o.ram_bytes = ram_bytes;
    o.irqchip = true;
    o.pit = true; // so the snapshot carries PIC, IOAPIC, PIT and clock
    return o;
}

/// What a run after restore saw.
struct resumed {
    bool ok = false;
    std::string why;
    u64 first_count = 0, final_count = 0, bad_pages = ~u64{0};
};

/// Runs a restored machine to the guest's final report; every count must follow the last.
template <class Machine>
resumed run_restored(Machine& m, const restored_space& space, u64 expect_next) {
    resumed out;
    u64 next = expect_next;
    for (;;) {
        std::optional<vcpu::guest::sync> got;
        std::string failure;
        auto r = vcpu::guest::run(m.vcpus[0], space, [&](vcpu::guest::sync& s) {
            got = s;
            return vcpu::action::stop;
        }, [&](vcpu::guest::assert_fail& a) {
            std::array<char, 512> buf{};
            failure = std::string(a.describe(buf));
            return vcpu::action::stop;
        });
        if (!r) return out.why = r.err().message(), out;
        if (!failure.empty()) return out.why = failure, out;
        if (!got) return out.why = "the guest stopped without a sync", out;
        if ((*got)[0] == done_marker) {
            out.final_count = (*got)[1];
            out.bad_pages = (*got)[2];
            out.ok = out.final_count == count_to && out.bad_pages == 0 && out.first_count == expect_next;
            if (!out.ok) out.why = "wrong final report";
            return out;
        }
        if ((*got)[0] != counting || (*got)[1] != next) {
            out.why = "count did not continue: got " + std::to_string((*got)[1]) + ", expected " + std::to_string(next);
            return out;
        }
        if (next == expect_next) out.first_count = next;
        ++next;
    }
}

/// The VMM's device-model state the snapshots carry (opaque to the library).
const std::vector<std::byte> device_blob{std::byte{0xde}, std::byte{0xad}, std::byte{0x01}};

/// Restores `path` in this process and runs it to the end (`opened`: through an opened
/// `snapshot_file`, also checking the device state it carries).
resumed restore_and_run(const char* path, const restored_space& saved, u64 expect_next, bool opened = false) {
    auto m = [&]() -> vcpu::result<kvm::x86_64_machine> {
        if (!opened) return kvm::restore_x86_64_snapshot(path, machine_options(), vcpu::x86_64::cpuid_setup<>{});
        auto f = kvm::snapshot_file::open(path, "x86_64");
        if (!f) return f.err();
        if (!std::equal(f->device_state().begin(), f->device_state().end(), device_blob.begin(), device_blob.end()))
            return vcpu::error{"test", EINVAL, "device state did not round-trip"};
        return kvm::restore_x86_64_snapshot(*f, machine_options(), vcpu::x86_64::cpuid_setup<>{});
    }();
    if (!m) return resumed{false, m.err().message()};
    restored_space space = saved;
    space.mem = &m->memory;
    return run_restored(*m, space, expect_next);
}

/// The second process: VCPU_SNAPSHOT_CHILD="<path> <image lo> <image hi> <next count>" makes
/// this binary restore, run and exit before main (0: every check passed).
[[maybe_unused]] const int child_ran = [] {
    const char* arg = std::getenv("VCPU_SNAPSHOT_CHILD");
    if (arg == nullptr) return 0;
    char path[512] = {};
    u64 lo = 0, hi = 0, next = 0;
    if (std::sscanf(arg, "%511s %" SCNx64 " %" SCNx64 " %" SCNu64, path, &lo, &hi, &next) != 4) {
        std::fprintf(stderr, "snapshot child: bad VCPU_SNAPSHOT_CHILD '%s'\n", arg);
        std::_Exit(2);
    }
    restored_space s;
    s.lo = lo;
    s.hi = hi;
    const auto r = restore_and_run(path, s, next);
    std::fprintf(stderr, "snapshot child: first count %" PRIu64 ", final %" PRIu64 ", bad pages %" PRIu64 "%s%s\n",
                 r.first_count, r.final_count, r.bad_pages, r.ok ? "" : ": ", r.why.c_str());
    std::fflush(stderr);
    std::_Exit(r.ok ? 0 : 1);
}();

/// A temporary directory removed (with its files) at scope exit.
struct temp_dir {
    std::string path;
    temp_dir() {
        char t[] = "/tmp/vcpu-snapshot-XXXXXX";
        REQUIRE(::mkdtemp(t) != nullptr);
        path = t;
    }
    ~temp_dir() { (void)std::system(("rm -rf '" + path + "'").c_str()); }
    [[nodiscard]] std::string file(const char* name) const { return path + "/" + name; }
};

/// Machine 1: loads the guest, runs it to count `snapshot_at`, writes the snapshot to `path`,
/// then (when `finish`) runs it to the end as the uninterrupted reference.
struct original {
    restored_space space; ///< image range for the restores
    kvm::snapshot_write_stats stats;
};
original run_and_snapshot(const std::string& path) {
    auto m = kvm::vm_init_x86_64(machine_options(), vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(m, m.err().message());
    auto space = gx::space::load(m->memory, reinterpret_cast<const void*>(&fill_count_verify));
    REQUIRE_MESSAGE(space, space.err().message());
    const u64 base = space->free_begin();
    const u64 counter = base + pattern_pages * 4096;
    REQUIRE(base + (pattern_pages + 1) * 4096 <= ram_bytes);
    REQUIRE(space->enter(m->vcpus[0], gx::call(&fill_count_verify, base, pattern_pages, counter, count_to)));
    for (u64 next = 1;; ++next) {
        auto r = vcpu::guest::run(m->vcpus[0], *space, [](vcpu::guest::sync&) { return vcpu::action::stop; },
                                  guest_test::fail_on_guest_assert());
        REQUIRE_MESSAGE(r, r.err().message());
        const auto* s = std::get_if<vcpu::guest::sync>(&*r);
        REQUIRE(s != nullptr);
        REQUIRE((*s)[0] == counting);
        REQUIRE((*s)[1] == next);
        if (next == snapshot_at) break;
    }
    original o;
    auto w = kvm::save_x86_64_snapshot(path.c_str(), *m, device_blob);
    REQUIRE_MESSAGE(w, w.err().message());
    o.stats = *w;
    o.space.lo = space->image_va();
    o.space.hi = space->image_va() + space->image_bytes();
    // The original runs on to the end too: the snapshot took nothing from it.
    restored_space own = o.space;
    own.mem = &m->memory;
    const auto end = run_restored(*m, own, snapshot_at + 1);
    CHECK_MESSAGE(end.ok, end.why);
    return o;
}

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
void write_file(const std::string& path, std::span<const std::byte> b) {
    FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
    std::fclose(f);
}

} // namespace

TEST_CASE("guest x86-64 snapshot: a second process restores the snapshot and the guest finishes") {
    temp_dir dir;
    const auto path = dir.file("vm.snap");
    const auto o = run_and_snapshot(path);
    // Every eighth pattern page and all untouched RAM are holes: the file is sparse.
    CHECK(o.stats.memory_bytes == ram_bytes);
    CHECK(o.stats.zero_pages > o.stats.written_pages);
    struct stat st{};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(static_cast<u64>(st.st_size) == o.stats.file_size);
    MESSAGE("snapshot of " << ram_bytes / (1 << 20) << " MiB: " << o.stats.written_pages << " pages written, "
                           << o.stats.zero_pages << " holes, " << st.st_blocks * 512 / 1024 << " KiB on disk");

    char arg[700];
    std::snprintf(arg, sizeof arg, "VCPU_SNAPSHOT_CHILD=%s %" PRIx64 " %" PRIx64 " %" PRIu64, path.c_str(), o.space.lo,
                  o.space.hi, snapshot_at + 1);
    std::vector<char*> env;
    for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
    env.push_back(arg);
    env.push_back(nullptr);
    char exe[] = "/proc/self/exe";
    char* argv[] = {exe, nullptr};
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::execve(exe, argv, env.data());
        std::_Exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK_MESSAGE(WEXITSTATUS(status) == 0, "the restoring process failed (its stderr says why)");
}

TEST_CASE("guest x86-64 snapshot: same-process restore into a second VM, twice from one file") {
    temp_dir dir;
    const auto path = dir.file("vm.snap");
    const auto o = run_and_snapshot(path);
    const auto before = read_file(path);
    for (int i = 0; i < 2; ++i) {
        CAPTURE(i);
        const auto r = restore_and_run(path.c_str(), o.space, snapshot_at + 1, i == 1);
        CHECK_MESSAGE(r.ok, r.why);
        CHECK(r.first_count == snapshot_at + 1);
        CHECK(r.final_count == count_to);
        CHECK(r.bad_pages == 0);
    }
    // The guest wrote to its RAM after each restore: copy-on-write kept the file as it was.
    CHECK(read_file(path) == before);
}

TEST_CASE("guest x86-64 snapshot: the VM device state travels: PIT, PIC, IOAPIC and clock") {
    temp_dir dir;
    const auto path = dir.file("vm.snap");
    auto m = kvm::vm_init_x86_64(machine_options(), vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(m, m.err().message());
    // Program values a fresh VM does not have: PIT channel 0 count, PIC mask, an IOAPIC entry.
    auto pit = kvm::get_pit2(m->vm);
    REQUIRE_MESSAGE(pit, pit.err().message());
    pit->channels[0].count = 0x1234;
    pit->channels[0].mode = 2;
    REQUIRE(kvm::set_pit2(m->vm, *pit));
    auto pic = kvm::get_irqchip(m->vm, kvm::irqchip_id::pic_master);
    REQUIRE_MESSAGE(pic, pic.err().message());
    pic->chip.pic.imr = 0xa5;
    REQUIRE(kvm::set_irqchip(m->vm, *pic));
    auto io = kvm::get_irqchip(m->vm, kvm::irqchip_id::ioapic);
    REQUIRE_MESSAGE(io, io.err().message());
    io->chip.ioapic.redirtbl[5].fields.vector = 0x45;
    REQUIRE(kvm::set_irqchip(m->vm, *io));
    auto clock = kvm::get_clock(m->vm);
    REQUIRE_MESSAGE(clock, clock.err().message());
    auto w = kvm::save_x86_64_snapshot(path.c_str(), *m);
    REQUIRE_MESSAGE(w, w.err().message());

    auto r = kvm::restore_x86_64_snapshot(path.c_str(), machine_options(), vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(r, r.err().message());
    auto pit2 = kvm::get_pit2(r->vm);
    REQUIRE_MESSAGE(pit2, pit2.err().message());
    CHECK(pit2->channels[0].count == 0x1234);
    CHECK(pit2->channels[0].mode == 2);
    CHECK(kvm::get_irqchip(r->vm, kvm::irqchip_id::pic_master)->chip.pic.imr == 0xa5);
    CHECK(kvm::get_irqchip(r->vm, kvm::irqchip_id::ioapic)->chip.ioapic.redirtbl[5].fields.vector == 0x45);
    // `exact`: the restored clock starts from the saved value, so it is not behind it.
    auto clock2 = kvm::get_clock(r->vm);
    REQUIRE_MESSAGE(clock2, clock2.err().message());
    CHECK(clock2->clock >= clock->clock);
}

TEST_CASE("guest x86-64 snapshot: bad files are refused with a clear error and change nothing") {
    temp_dir dir;
    const auto path = dir.file("vm.snap");
    const auto o = run_and_snapshot(path);
    const auto good = read_file(path);
    const auto bad = dir.file("bad.snap");

    auto refused = [&](std::span<const std::byte> bytes, int code, const char* text, kvm::x86_64_options opts = machine_options()) {
        write_file(bad, bytes);
        auto r = kvm::restore_x86_64_snapshot(bad.c_str(), opts, vcpu::x86_64::cpuid_setup<>{});
        REQUIRE(!r);
        CHECK(r.err().code == code);
        const std::string msg = r.err().message();
        CHECK_MESSAGE(msg.find(text) != std::string::npos, msg);
        MESSAGE(msg);
    };
    // Corrupt header: the magic, or any metadata byte (caught by the hash).
    auto magic = good;
    magic[0] = std::byte{'X'};
    refused(magic, EINVAL, "bad magic");
    auto flipped = good;
    flipped[sizeof(kvm::snapshot_header) + 9] ^= std::byte{0x10}; // inside the slot record
    refused(flipped, EBADMSG, "corrupt");
    auto state = good;
    state[sizeof(kvm::snapshot_header) + sizeof(kvm::snapshot_slot) + sizeof(kvm::snapshot_vcpu_entry) + 40] ^= std::byte{1};
    refused(state, EBADMSG, "corrupt");
    auto device = good;
    device[sizeof(kvm::snapshot_header) + sizeof(kvm::snapshot_slot) + sizeof(kvm::snapshot_vcpu_entry) +
           sizeof(kvm::x86_64_vm_state_header) + 3 * sizeof(::kvm_irqchip) + sizeof(::kvm_pit_state2) +
           sizeof(::kvm_clock_data) + 1] ^= std::byte{1}; // inside the device state
    refused(device, EBADMSG, "corrupt");
    // Wrong version.
    auto version = good;
    version[8] = std::byte{2};
    refused(version, EPROTO, "version");
    // Wrong arch.
    auto arch = good;
    std::memcpy(arch.data() + 16, "aarch64\0\0\0\0\0\0\0\0", 16);
    refused(arch, EINVAL, "wrong arch");
    // Truncated memory section (and truncated metadata).
    refused(std::span(good).first(good.size() - 4096), EINVAL, "truncated memory section");
    refused(std::span(good).first(100), EINVAL, "truncated");
    refused(std::span(good).first(10), EINVAL, "truncated");
    // A machine of another shape.
    auto bigger = machine_options();
    bigger.ram_bytes *= 2;
    refused(good, EINVAL, "memory layout mismatch", bigger);
    auto two = machine_options();
    two.vcpus = 2;
    refused(good, EINVAL, "vCPU layout mismatch", two);
    // Missing file.
    auto missing = kvm::restore_x86_64_snapshot(dir.file("none.snap").c_str(), machine_options());
    REQUIRE(!missing);
    CHECK(missing.err().code == ENOENT);
    CHECK(std::string(missing.err().op) == "open snapshot");

    // Nothing changed: the good file is intact and restores.
    CHECK(read_file(path) == good);
    const auto r = restore_and_run(path.c_str(), o.space, snapshot_at + 1);
    CHECK_MESSAGE(r.ok, r.why);
}

namespace {
/// Real KVM and files, but one step fails: the ioctl `fail_code`, or (`fail_file_mmap`) an mmap of
/// a file (the snapshot's memory), with `fail_errno`.
struct failing_sys : vcpu::kvm::linux_sys {
    static inline unsigned long fail_code = 0;
    static inline bool fail_file_mmap = false;
    static inline int fail_errno = EIO;
    static int ioctl(int fd, unsigned long req, void* arg) noexcept {
        if (req == fail_code) {
            errno = fail_errno;
            return -1;
        }
        return vcpu::kvm::linux_sys::ioctl(fd, req, arg);
    }
    static void* mmap(void* addr, std::size_t len, int prot, int flags, int fd, off_t off) noexcept {
        if (fail_file_mmap && fd >= 0 && (flags & MAP_PRIVATE) != 0) {
            errno = fail_errno;
            return MAP_FAILED;
        }
        return vcpu::kvm::linux_sys::mmap(addr, len, prot, flags, fd, off);
    }
};
} // namespace

TEST_CASE("guest x86-64 snapshot: a failing step of save or restore is reported by name") {
    namespace io = vcpu::kvm::ioctls;
    temp_dir dir;
    const auto path = dir.file("vm.snap");
    auto m = kvm::vm_init_x86_64<failing_sys>(machine_options(), vcpu::x86_64::cpuid_setup<>{});
    REQUIRE_MESSAGE(m, m.err().message());
    REQUIRE(kvm::save_x86_64_snapshot(path.c_str(), *m));

    struct injected {
        unsigned long code;
        const char* name;
    };
    // Save: a failing GET leaves no file behind (nor a temporary one).
    const auto other = dir.file("other.snap");
    for (const auto& g : {injected{io::vm::get_irqchip.code, "KVM_GET_IRQCHIP"}, injected{io::vm::get_clock.code, "KVM_GET_CLOCK"},
                          injected{io::vcpu::get_sregs.code, "KVM_GET_SREGS"}}) {
        CAPTURE(g.name);
        auto fresh = kvm::vm_init_x86_64<failing_sys>(machine_options(), vcpu::x86_64::cpuid_setup<>{});
        REQUIRE(fresh);
        failing_sys::fail_code = g.code;
        failing_sys::fail_errno = EFAULT;
        auto w = kvm::save_x86_64_snapshot(other.c_str(), *fresh);
        failing_sys::fail_code = 0;
        REQUIRE(!w);
        CHECK(std::string(w.err().op) == g.name);
        CHECK(w.err().code == EFAULT);
        CHECK(::access(other.c_str(), F_OK) != 0);
        CHECK(::access((other + ".tmp").c_str(), F_OK) != 0);
    }
    // Restore: each failing SET names itself.
    for (const auto& s : {injected{io::vm::set_irqchip.code, "KVM_SET_IRQCHIP"}, injected{io::vm::set_pit2.code, "KVM_SET_PIT2"},
                          injected{io::vm::set_clock.code, "KVM_SET_CLOCK"}, injected{io::vm::set_user_memory_region.code, "KVM_SET_USER_MEMORY_REGION"},
                          injected{io::vcpu::set_lapic.code, "KVM_SET_LAPIC"}}) {
        CAPTURE(s.name);
        failing_sys::fail_code = s.code;
        failing_sys::fail_errno = EINVAL;
        auto r = kvm::restore_x86_64_snapshot<failing_sys>(path.c_str(), machine_options(), vcpu::x86_64::cpuid_setup<>{});
        failing_sys::fail_code = 0;
        REQUIRE(!r);
        CHECK(std::string(r.err().op) == s.name);
        CHECK(r.err().code == EINVAL);
    }
    failing_sys::fail_file_mmap = true;
    failing_sys::fail_errno = ENOMEM;
    auto r = kvm::restore_x86_64_snapshot<failing_sys>(path.c_str(), machine_options(), vcpu::x86_64::cpuid_setup<>{});
    failing_sys::fail_file_mmap = false;
    REQUIRE(!r);
    CHECK(std::string(r.err().op) == "mmap snapshot memory");
    CHECK(r.err().code == ENOMEM);
    REQUIRE(kvm::restore_x86_64_snapshot<failing_sys>(path.c_str(), machine_options(), vcpu::x86_64::cpuid_setup<>{}));
}
