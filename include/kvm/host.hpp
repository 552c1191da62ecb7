#pragma once
/// \file
/// What kind of KVM this host offers, in words a test log or a benchmark
/// table can carry: `describe_host()` reads which KVM module is loaded
/// (`/sys/module/kvm_intel`, `kvm_amd`, `kvm_pvm`, or the arm64/riscv64 KVM
/// built into `kvm`), whether the host itself runs under a hypervisor (the x86
/// CPUID "hypervisor" bit as `/proc/cpuinfo` shows it) and the CPU model.
///
/// Runners that execute a program somewhere unusual (inside an emulated
/// machine, say) set the environment variable `VCPU_KVM_HOST_LABEL`, which is
/// appended, so every log line says where it ran. Setup-path code: reads a
/// few small files, no allocation, no exceptions.

#include <vcpu/config.hpp>

#include <array>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include <sys/stat.h>

namespace vcpu::kvm {

/// The kernel module providing `/dev/kvm`.
enum class host_kind : unsigned char {
    none,  ///< no KVM module is loaded
    vmx,   ///< `kvm_intel`: Intel VT-x
    svm,   ///< `kvm_amd`: AMD SVM
    pvm,   ///< `kvm_pvm`: paging-based KVM (no VT-x/SVM; guest kernel code is emulated)
    arm64, ///< arm64 KVM (EL2), built into `kvm`
    riscv, ///< RISC-V KVM (H extension), built into `kvm`
    other, ///< `kvm` is loaded but none of the above is recognised
};

/// A short name for `k`: "VT-x", "SVM", "kvm-pvm", "arm64 EL2", "RISC-V H", ...
[[nodiscard]] constexpr std::string_view to_string(host_kind k) noexcept {
    switch (k) {
    case host_kind::none: return "no KVM";
    case host_kind::vmx: return "VT-x";
    case host_kind::svm: return "SVM";
    case host_kind::pvm: return "kvm-pvm";
    case host_kind::arm64: return "arm64 EL2";
    case host_kind::riscv: return "RISC-V H";
    case host_kind::other: return "KVM";
    }
    return "KVM";
}

/// What `describe_host()` found.
struct host_info {
    host_kind kind = host_kind::none;  ///< which KVM flavour the host offers (`host_kind::none`: no usable /dev/kvm)
    bool under_hypervisor = false;       ///< the host is itself a guest (nested KVM)
    std::array<char, 96> cpu{};          ///< CPU model name, "" when unknown
    std::array<char, 96> label{};        ///< `VCPU_KVM_HOST_LABEL`, "" when unset
    std::array<char, 256> text{};        ///< the whole description, NUL-terminated

    /// E.g. "/dev/kvm: kvm-pvm, host under a hypervisor; CPU AMD EPYC".
    [[nodiscard]] const char* c_str() const noexcept { return text.data(); }
};

namespace detail {

[[nodiscard]] inline bool path_exists(const char* p) noexcept {
    struct stat st {};
    return ::stat(p, &st) == 0;
}

/// Copies the value of the first `/proc/cpuinfo` line starting with `key`
/// (up to its ':'), trimmed, into `out`. Returns false when absent.
template <std::size_t N>
bool cpuinfo_value(const char* key, std::array<char, N>& out) noexcept {
    std::FILE* f = std::fopen("/proc/cpuinfo", "r");
    if (f == nullptr) return false;
    std::array<char, 4096> line{};
    bool found = false;
    const std::size_t klen = std::strlen(key);
    while (std::fgets(line.data(), static_cast<int>(line.size()), f) != nullptr) {
        if (std::strncmp(line.data(), key, klen) != 0) continue;
        const char* colon = std::strchr(line.data(), ':');
        if (colon == nullptr) continue;
        const char* v = colon + 1;
        while (*v == ' ' || *v == '\t') ++v;
        std::size_t n = std::strcspn(v, "\n");
        if (n >= N) n = N - 1;
        std::memcpy(out.data(), v, n);
        out[n] = '\0';
        found = true;
        break;
    }
    std::fclose(f);
    return found;
}

/// True when the x86 "flags" line of /proc/cpuinfo holds the word `flag`.
inline bool cpu_flag(const char* flag) noexcept {
    std::FILE* f = std::fopen("/proc/cpuinfo", "r");
    if (f == nullptr) return false;
    // The flags line is long (2-3 KiB on current CPUs); read it in one piece.
    std::array<char, 8192> line{};
    bool found = false;
    const std::size_t flen = std::strlen(flag);
    while (std::fgets(line.data(), static_cast<int>(line.size()), f) != nullptr) {
        if (std::strncmp(line.data(), "flags", 5) != 0) continue;
        for (const char* p = std::strchr(line.data(), ':'); p != nullptr && *p != '\0';) {
            while (*p == ' ' || *p == ':') ++p;
            const std::size_t n = std::strcspn(p, " \n");
            if (n == flen && std::strncmp(p, flag, n) == 0) found = true;
            p += n;
            if (*p == '\n') break;
        }
        break;
    }
    std::fclose(f);
    return found;
}

} // namespace detail

/// Describes the KVM this process would get from `/dev/kvm`, and where it
/// runs (see the file comment). Never fails: unknown parts are left out.
[[nodiscard]] inline host_info describe_host() noexcept {
    host_info h;
    if (detail::path_exists("/sys/module/kvm_intel")) h.kind = host_kind::vmx;
    else if (detail::path_exists("/sys/module/kvm_amd")) h.kind = host_kind::svm;
    else if (detail::path_exists("/sys/module/kvm_pvm")) h.kind = host_kind::pvm;
#if defined(__aarch64__)
    else if (detail::path_exists("/sys/module/kvm") || detail::path_exists("/dev/kvm")) h.kind = host_kind::arm64;
#elif defined(__riscv)
    else if (detail::path_exists("/sys/module/kvm") || detail::path_exists("/dev/kvm")) h.kind = host_kind::riscv;
#endif
    else if (detail::path_exists("/sys/module/kvm")) h.kind = host_kind::other;

#if defined(__x86_64__) || defined(__i386__)
    h.under_hypervisor = detail::cpu_flag("hypervisor");
    (void)detail::cpuinfo_value("model name", h.cpu);
#elif defined(__aarch64__)
    // arm64 /proc/cpuinfo has no model name; the implementer/part pair identifies the core.
    std::array<char, 24> impl{}, part{};
    if (detail::cpuinfo_value("CPU implementer", impl) && detail::cpuinfo_value("CPU part", part))
        std::snprintf(h.cpu.data(), h.cpu.size(), "implementer %s part %s", impl.data(), part.data());
#elif defined(__riscv)
    (void)detail::cpuinfo_value("isa", h.cpu);
#endif
    if (const char* l = std::getenv("VCPU_KVM_HOST_LABEL"); l != nullptr)
        std::snprintf(h.label.data(), h.label.size(), "%s", l);

    const std::string_view kind = to_string(h.kind);
    std::snprintf(h.text.data(), h.text.size(), "/dev/kvm: %.*s%s%s%s%s%s",
                  static_cast<int>(kind.size()), kind.data(),
                  h.under_hypervisor ? ", host under a hypervisor" : "",
                  h.cpu[0] != '\0' ? "; CPU " : "", h.cpu.data(),
                  h.label[0] != '\0' ? "; " : "", h.label.data());
    return h;
}

} // namespace vcpu::kvm
