// The compile-cost baseline (scripts/compile-cost): the hello example's VMM written directly
// against the KVM ioctls, as a C++ VMM without vcpu would be. Same guest (examples/hello/guest.hpp),
// same shape: open /dev/kvm, one VM with 64 KiB of RAM, one real-mode vCPU, a KVM_RUN loop with a
// switch over the exit reason, the same report. It includes what such a VMM typically includes
// (<linux/kvm.h>, the ioctl/mman/fcntl headers, <chrono>, <cstdio>, <cstring>, <optional>,
// <span>, <string>, <variant>, <vector>), so "hello TU ÷ this TU" is what the library costs.
// It is built (benchmarks/CMakeLists.txt) so that it stays a working program.

#include "guest.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace {

struct error {
    const char* op;
    int err;
};
struct halted {};
struct unexpected_exit {
    std::uint32_t reason;
};
using outcome = std::variant<halted, unexpected_exit, error>;

struct fd {
    int n = -1;
    fd() = default;
    explicit fd(int v) : n(v) {}
    fd(fd&& o) noexcept : n(std::exchange(o.n, -1)) {}
    fd& operator=(fd&& o) noexcept {
        std::swap(n, o.n);
        return *this;
    }
    ~fd() {
        if (n >= 0) ::close(n);
    }
};

struct machine {
    fd kvm, vm, vcpu;
    std::span<std::uint8_t> ram;
    kvm_run* run = nullptr;
    std::size_t run_size = 0;
    ~machine() {
        if (run) ::munmap(run, run_size);
        if (!ram.empty()) ::munmap(ram.data(), ram.size());
    }
};

std::optional<error> setup(machine& m, std::size_t ram_bytes) {
    m.kvm = fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (m.kvm.n < 0) return error{"open /dev/kvm", errno};
    if (::ioctl(m.kvm.n, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return error{"KVM_GET_API_VERSION", errno};
    m.vm = fd(::ioctl(m.kvm.n, KVM_CREATE_VM, 0));
    if (m.vm.n < 0) return error{"KVM_CREATE_VM", errno};
    void* mem = ::mmap(nullptr, ram_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return error{"mmap guest RAM", errno};
    m.ram = {static_cast<std::uint8_t*>(mem), ram_bytes};
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = ram_bytes;
    region.userspace_addr = reinterpret_cast<std::uintptr_t>(mem);
    if (::ioctl(m.vm.n, KVM_SET_USER_MEMORY_REGION, &region) < 0) return error{"KVM_SET_USER_MEMORY_REGION", errno};
    m.vcpu = fd(::ioctl(m.vm.n, KVM_CREATE_VCPU, 0));
    if (m.vcpu.n < 0) return error{"KVM_CREATE_VCPU", errno};
    const int size = ::ioctl(m.kvm.n, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < static_cast<int>(sizeof(kvm_run))) return error{"KVM_GET_VCPU_MMAP_SIZE", errno};
    void* run = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED, m.vcpu.n, 0);
    if (run == MAP_FAILED) return error{"mmap kvm_run", errno};
    m.run = static_cast<kvm_run*>(run);
    m.run_size = static_cast<std::size_t>(size);

    // Real mode at 0000:load_address.
    kvm_sregs sregs{};
    if (::ioctl(m.vcpu.n, KVM_GET_SREGS, &sregs) < 0) return error{"KVM_GET_SREGS", errno};
    for (kvm_segment* s : {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss}) {
        s->base = 0;
        s->selector = 0;
    }
    if (::ioctl(m.vcpu.n, KVM_SET_SREGS, &sregs) < 0) return error{"KVM_SET_SREGS", errno};
    kvm_regs regs{};
    regs.rip = hello::load_address;
    regs.rflags = 0x2;
    if (::ioctl(m.vcpu.n, KVM_SET_REGS, &regs) < 0) return error{"KVM_SET_REGS", errno};
    return std::nullopt;
}

bool write(machine& m, std::size_t at, std::span<const std::uint8_t> bytes) {
    if (at > m.ram.size() || bytes.size() > m.ram.size() - at) return false;
    std::memcpy(m.ram.data() + at, bytes.data(), bytes.size());
    return true;
}

} // namespace

int main() {
    machine m;
    if (auto e = setup(m, 64 * 1024)) {
        std::fprintf(stderr, "raw_hello: %s: %s\n", e->op, std::strerror(e->err));
        return std::strcmp(e->op, "open /dev/kvm") == 0 ? 77 : 1;
    }
    std::vector<std::uint8_t> message(std::begin(hello::message), std::end(hello::message));
    if (!write(m, hello::load_address, hello::code) || !write(m, hello::load_address + 0x20, message)) {
        std::fprintf(stderr, "raw_hello: guest image does not fit in RAM\n");
        return 1;
    }

    std::string printed;
    std::uint32_t answer_back = 0;
    unsigned exits = 0;
    const auto start = std::chrono::steady_clock::now();
    outcome last = halted{};
    for (bool running = true; running;) {
        if (::ioctl(m.vcpu.n, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            last = error{"KVM_RUN", errno};
            break;
        }
        ++exits;
        kvm_run& r = *m.run;
        switch (r.exit_reason) {
        case KVM_EXIT_IO: {
            auto* data = reinterpret_cast<std::uint8_t*>(&r) + r.io.data_offset;
            if (r.io.port != hello::debug_port || r.io.count != 1 || r.io.size > 4 ||
                r.io.data_offset + r.io.size > m.run_size) {
                last = unexpected_exit{r.exit_reason};
                running = false;
            } else if (r.io.direction == KVM_EXIT_IO_IN) {
                const std::uint32_t v = 41;
                std::memcpy(data, &v, r.io.size);
            } else if (r.io.size == 1) {
                printed += static_cast<char>(*data);
            } else {
                std::uint32_t v = 0;
                std::memcpy(&v, data, r.io.size);
                answer_back = v;
            }
            break;
        }
        case KVM_EXIT_HLT:
            last = halted{};
            running = false;
            break;
        case KVM_EXIT_FAIL_ENTRY:
        case KVM_EXIT_INTERNAL_ERROR:
        case KVM_EXIT_SHUTDOWN:
        default:
            last = unexpected_exit{r.exit_reason};
            running = false;
            break;
        }
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;

    if (auto* e = std::get_if<error>(&last)) {
        std::fprintf(stderr, "raw_hello: %s: %s\n", e->op, std::strerror(e->err));
        return 1;
    }
    std::fputs(printed.c_str(), stdout);
    const bool ok_halt = std::holds_alternative<halted>(last);
    const auto us = std::chrono::duration<double, std::micro>(elapsed).count();
    std::printf("guest answered %u (expected 42), %s after %u exits\n", answer_back,
                ok_halt ? "halted" : "stopped on an unexpected exit", exits);
    std::printf("exit round trip: %.1f us on average (%.0f us in all)\n", us / exits, us);
    const bool ok = ok_halt && answer_back == 42 && printed == hello::message;
    return ok ? 0 : 1;
}
