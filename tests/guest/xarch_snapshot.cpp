// AArch64 and RISC-V (one source): whole-VM snapshots through kvm/snapshot.hpp on real KVM
// inside the emulated machines (docs/snapshot.md "AArch64 and RISC-V"). The same shape as
// tests/guest/x86_64_snapshot.cpp: a C++ guest fills 8 MiB of its RAM with a pattern (every
// eighth page left zero: holes in the file), then counts, reporting each count with a ucall; the
// host stops it mid-count and writes a snapshot (`save_snapshot<vcpu_state_t<Arch>,
// no_vm_state>`: these VMs have no in-kernel irqchip, so there is no VM-level state). A SECOND
// PROCESS (this executable re-executed, running only the skipped case below) opens the file,
// maps its memory copy-on-write into a fresh VM (`snapshot_file::map_memory`), loads the vCPU
// state (`load_snapshot_state`) and runs on: the counter must continue from the snapshot and
// the guest checks every page of the pattern itself. Its exit code is the verdict. A corrupt,
// truncated or wrong-arch file is refused before any VM is touched.
#include "xarch_support.hpp"

#include <kvm/snapshot.hpp>
#include <kvm/vcpu_state.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using u64 = std::uint64_t;
namespace ucall = vcpu::guest::ucall;
namespace kvm = vcpu::kvm;

constexpr u64 pattern_pages = 2048; // 8 MiB of the guest's 64 MiB
constexpr u64 count_to = 40;
constexpr u64 snapshot_at = 15;
constexpr u64 done_marker = 0xd0e00000;

// ---- guest code -----------------------------------------------------------------------------

VCPU_GUEST_CODE inline u64 pattern_word(u64 page, u64 k) {
    return (page * 0x9e3779b97f4a7c15ull) ^ (k * 0xff51afd7ed558ccdull) ^ 0x5a5a5a5a;
}

/// Fills the pattern (four words a page: its first and last among them), counts to `limit` in
/// `*counter` (one one-value sync per count), then checks every page and reports with three
/// one-value syncs: done_marker, the counter, the number of bad pages. One-value syncs travel in
/// the ucall exit itself (no guest memory is read to decode them).
VCPU_GUEST_CODE void fill_count_verify(u64 base, u64 pages, u64 counter_addr, u64 limit) {
    constexpr u64 offsets[4] = {0, 8, 2048, 4088};
    for (u64 p = 0; p < pages; ++p) {
        if (p % 8 == 7) continue; // stays zero
        for (u64 k = 0; k < 4; ++k)
            *reinterpret_cast<volatile u64*>(base + p * 4096 + offsets[k]) = pattern_word(p, k);
    }
    auto* counter = reinterpret_cast<volatile u64*>(counter_addr);
    while (*counter < limit) {
        *counter = *counter + 1;
        ucall::sync(*counter);
    }
    u64 bad = 0;
    for (u64 p = 0; p < pages; ++p) {
        for (u64 k = 0; k < 4; ++k) {
            const u64 want = p % 8 == 7 ? 0 : pattern_word(p, k);
            if (*reinterpret_cast<volatile u64*>(base + p * 4096 + offsets[k]) != want) {
                ++bad;
                break;
            }
        }
    }
    ucall::sync(done_marker);
    ucall::sync(*counter);
    ucall::sync(bad);
}

// ---- host side ------------------------------------------------------------------------------

using state_t = kvm::vcpu_state_t<guest_test::arch>;
constexpr const char* file_env = "VCPU_XARCH_SNAPSHOT_FILE";

double ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

/// The guest's unhandled exceptions fail the test.
auto fail_on_exception() {
    return [](vcpu::guest::unhandled_exception& e) {
        FAIL("guest exception: vector ", e.vector, " syndrome 0x", std::hex, e.error_code, " pc 0x", e.pc);
        return vcpu::action::stop;
    };
}

/// Runs to the next sync and returns its value (REQUIREs one).
template <class Cpu, class Space>
u64 next_sync(Cpu& cpu, const Space& space) {
    std::optional<u64> got;
    auto r = vcpu::guest::run(
        cpu, space,
        [&](vcpu::guest::sync& s) {
            got = s[0];
            return vcpu::action::stop;
        },
        [](vcpu::interrupted&) { return vcpu::action::resume; }, guest_test::fail_on_guest_assert(),
        fail_on_exception(), [](vcpu::guest::done) { return vcpu::action::stop; });
    REQUIRE_MESSAGE(r, r.err().message());
    REQUIRE_MESSAGE(got.has_value(), "the guest stopped without a sync");
    return *got;
}

/// What a run after the restore saw: every count from `first`, then the guest's report.
template <class Cpu, class Space>
void run_to_end(Cpu& cpu, const Space& space, u64 first) {
    for (u64 next = first; next <= count_to; ++next) REQUIRE(next_sync(cpu, space) == next);
    REQUIRE(next_sync(cpu, space) == done_marker);
    CHECK(next_sync(cpu, space) == count_to);
    const u64 bad = next_sync(cpu, space);
    CHECK_MESSAGE(bad == 0, bad, " pattern pages differ after the restore");
}

std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
}
void write_file(const std::string& path, std::span<const std::byte> b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    REQUIRE(f.good());
}

} // namespace

TEST_CASE("guest " GUEST_ARCH " snapshot: a second process restores the snapshot and the guest finishes") {
    auto m = guest_test::make_machine(reinterpret_cast<const void*>(&fill_count_verify));
    const u64 base = m->space->free_begin();
    const u64 counter = base + pattern_pages * 4096;
    REQUIRE(counter + 4096 <= guest_test::ram_base + guest_test::ram_bytes);
    REQUIRE(m->space->enter(*m->cpu, vcpu::guest::call(&fill_count_verify, base, pattern_pages, counter, count_to)));
    for (u64 next = 1; next <= snapshot_at; ++next) REQUIRE(next_sync(*m->cpu, *m->space) == next);

    const std::string path = "xarch_snapshot." + std::to_string(::getpid()) + ".snap";
    const kvm::snapshot_region ram[1]{
        kvm::snapshot_region{0, guest_test::ram_base, std::span<const std::byte>(m->ram->bytes()), false}};
    auto t0 = std::chrono::steady_clock::now();
    auto w = kvm::save_snapshot<state_t, kvm::no_vm_state>(path.c_str(), *m->vm, std::span(&*m->cpu, 1),
                                                            std::span(ram));
    const double save_ms = ms_since(t0);
    REQUIRE_MESSAGE(w, w.err().message());
    struct stat st{};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(static_cast<u64>(st.st_size) == w->file_size);
    CHECK(w->memory_bytes == guest_test::ram_bytes);
    CHECK(w->zero_pages > 0); // every eighth pattern page and the untouched RAM are holes
    std::printf("snapshot %s: %llu MiB RAM, file %llu bytes (%llu KiB on disk), %llu pages written, %llu holes, "
                "save %.2f ms\n",
                GUEST_ARCH, static_cast<unsigned long long>(w->memory_bytes >> 20),
                static_cast<unsigned long long>(w->file_size), static_cast<unsigned long long>(st.st_blocks / 2),
                static_cast<unsigned long long>(w->written_pages), static_cast<unsigned long long>(w->zero_pages),
                save_ms);

    // The original runs on to the end: the save took nothing from it.
    run_to_end(*m->cpu, *m->space, snapshot_at + 1);
    m.reset(); // the first VM is gone before the second process starts

    // Bad files are refused when opened, before any VM exists: a flipped metadata byte (the
    // hash), a truncated memory section, another architecture's name asked for.
    const auto good = read_file(path);
    {
        auto bad = good;
        bad[sizeof(kvm::snapshot_header) + 3] ^= std::byte{0x40};
        write_file(path + ".bad", bad);
        auto f = kvm::snapshot_file::open((path + ".bad").c_str(), guest_test::arch::name);
        REQUIRE_FALSE(f);
        MESSAGE("corrupt: ", f.err().message());
        write_file(path + ".bad", std::span(good).first(good.size() - 4096));
        f = kvm::snapshot_file::open((path + ".bad").c_str(), guest_test::arch::name);
        REQUIRE_FALSE(f);
        MESSAGE("truncated: ", f.err().message());
        ::unlink((path + ".bad").c_str());
        f = kvm::snapshot_file::open(path.c_str(), "x86_64");
        REQUIRE_FALSE(f);
        MESSAGE("wrong arch: ", f.err().message());
    }

    std::fflush(stdout);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::setenv(file_env, path.c_str(), 1);
        char* args[] = {const_cast<char*>("vcpu_guest_tests"),
                        const_cast<char*>("--test-case=*snapshot child: restore*"),
                        const_cast<char*>("--no-skip"), const_cast<char*>("--minimal"),
                        const_cast<char*>("--no-intro"), const_cast<char*>("--no-version"), nullptr};
        ::execv("/proc/self/exe", args);
        std::_Exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    // The restore wrote to guest RAM: copy-on-write kept the file as it was.
    CHECK(read_file(path) == good);
    ::unlink(path.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK_MESSAGE(WEXITSTATUS(status) == 0, "the second process failed (its output is above)");
}

// Runs only as the second process of the case above (doctest::skip() otherwise). Its name must not
// match xarch_state.cpp's child filter ("*restored in a second process*"): one executable.
TEST_CASE("guest " GUEST_ARCH " snapshot child: restore in a second process" * doctest::skip()) {
    const char* path = std::getenv(file_env);
    REQUIRE_MESSAGE(path != nullptr, "run by the case above, with ", std::string(file_env), " set");
    auto t0 = std::chrono::steady_clock::now();
    auto f = kvm::snapshot_file::open(path, guest_test::arch::name);
    REQUIRE_MESSAGE(f, f.err().message());
    REQUIRE(f->slots().size() == 1);
    REQUIRE(f->vcpus().size() == 1);
    auto sys = kvm::system::open();
    REQUIRE_MESSAGE(sys, sys.err().message());
    auto vm = sys->create_vm();
    REQUIRE_MESSAGE(vm, vm.err().message());
    auto rams = f->map_memory(*vm);
    REQUIRE_MESSAGE(rams, rams.err().message());
    vcpu::guest_memory memory;
    REQUIRE(memory.add((*rams)[0].region(f->slots()[0].gpa)));
#if defined(__aarch64__)
    auto init = vcpu::kvm::aarch64::preferred_init(*vm);
    REQUIRE_MESSAGE(init, init.err().message());
    auto cpu = vm->create_vcpu<guest_test::arch>(0);
    REQUIRE_MESSAGE(cpu, cpu.err().message());
    auto booted = cpu->init(vcpu::aarch64::kvm_boot{*init, 0, 0});
#else
    auto cpu = vm->create_vcpu<guest_test::arch>(0);
    REQUIRE_MESSAGE(cpu, cpu.err().message());
    auto booted = cpu->init(vcpu::riscv64::boot{0, 0, 0});
    (void)vcpu::kvm::enable_sbi_extension(*cpu, vcpu::riscv64::abi::kvm_sbi_ext::vendor);
#endif
    REQUIRE_MESSAGE(booted, booted.err().message());
    auto loaded = kvm::load_snapshot_state<state_t, kvm::no_vm_state>(*f, *vm, std::span(&*cpu, 1));
    const double restore_ms = ms_since(t0);
    REQUIRE_MESSAGE(loaded, loaded.err().message());
    // The ucall decoder: one-value syncs read neither guest memory nor the image layout, so a
    // space loaded into scratch memory (never installed in the VM: loading into the restored RAM
    // would overwrite it) decodes them.
    auto scratch = kvm::guest_ram::allocate(guest_test::ram_bytes);
    REQUIRE_MESSAGE(scratch, scratch.err().message());
    vcpu::guest_memory scratch_mem;
    REQUIRE(scratch_mem.add(scratch->region(guest_test::ram_base)));
    auto space = guest_test::gx::space::load(scratch_mem, reinterpret_cast<const void*>(&fill_count_verify));
    REQUIRE_MESSAGE(space, space.err().message());
    auto t1 = std::chrono::steady_clock::now();
    run_to_end(*cpu, *space, snapshot_at + 1);
    const double run_ms = ms_since(t1);
    std::printf("snapshot %s (second process, pid %d): open + map + load %.2f ms; the guest then counted %llu..%llu "
                "and checked %llu pages in %.2f ms\n",
                GUEST_ARCH, static_cast<int>(::getpid()), restore_ms, static_cast<unsigned long long>(snapshot_at + 1),
                static_cast<unsigned long long>(count_to), static_cast<unsigned long long>(pattern_pages), run_ms);
}
