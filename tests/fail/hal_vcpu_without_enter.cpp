// A HAL vCPU that can move registers but has no `enter()` does not model EntersGuest.
// expect-error: vcpu: Hal::vcpu<Arch> does not model EntersGuest: it needs `raw_exit`
#include <arch/x86_64/arch.hpp>
#include <vcpu/basic_vcpu.hpp>

#include <cstdint>

struct hal_without_enter {
    template <class A>
    struct vcpu {
        using raw_exit = ::vcpu::kvm::run_view;
        ::vcpu::kvm::run_view exit_record() noexcept { return {}; }
        template <class B>
        ::vcpu::result<const typename B::layout*> load() noexcept {
            return static_cast<const typename B::layout*>(nullptr);
        }
        template <class B>
        ::vcpu::result<typename B::layout*> modify() noexcept {
            return static_cast<typename B::layout*>(nullptr);
        }
        template <class B>
        ::vcpu::result<std::uint64_t> get_keyed(std::uint64_t) noexcept {
            return std::uint64_t{0};
        }
        template <class B>
        ::vcpu::result<void> set_keyed(std::uint64_t, std::uint64_t) noexcept {
            return {};
        }
    };
};

int main() { return sizeof(vcpu::basic_vcpu<vcpu::arch::x86_64, hal_without_enter>) != 0; }
