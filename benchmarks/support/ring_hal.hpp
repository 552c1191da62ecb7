#pragma once
// bench::ring_hal: a HAL whose exits are kvm_run areas formatted once, at setup, from a
// vcpu::kvm::mock::script. enter() only moves to the next preformatted area, so a benchmark over it
// measures decode + dispatch + handlers and nothing else (the mock HAL copies every scripted exit
// into its kvm_run area on each enter(), which costs as much as a decode).
//
// Handlers write their answers (IN data, MMIO read data) into the areas; the exit fields a decoder
// reads are never written, so the ring replays the same exits forever.

#include <vcpu/exits.hpp>
#include <kvm/run.hpp>
#include <vcpu/meta.hpp>
#include <kvm/mock.hpp>
#include <vcpu/result.hpp>

#include <linux/kvm.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

namespace bench {

struct ring_hal {
    template <class Arch>
    class vcpu;
};

template <class Arch>
class ring_hal::vcpu {
public:
    using raw_exit = ::vcpu::kvm::run_view;

    explicit vcpu(const ::vcpu::kvm::mock::script& s) {
        const auto ex = s.exits();
        count_ = ex.size();
        areas_.reset(new (std::align_val_t{4096}) std::byte[count_ * stride]());
        coalesced_.resize(count_);
        for (std::size_t i = 0; i < count_; ++i) {
            std::byte* a = area(i);
            auto* r = reinterpret_cast<::kvm_run*>(a);
            r->exit_reason = ex[i].reason;
            r->if_flag = ex[i].if_flag;
            r->cr8 = ex[i].cr8;
            std::memcpy(a + ::vcpu::kvm::mock::script::payload_offset, ex[i].payload.data(),
                        ex[i].payload.size());
            std::memcpy(a + ::vcpu::kvm::mock::pio_data_offset, ex[i].pio.data(), ex[i].pio.size());
            coalesced_[i] = {ex[i].coalesced, ex[i].ncoalesced};
        }
    }

    [[nodiscard]] ::vcpu::result<void> enter() noexcept {
        if (count_ == 0) return ::vcpu::error{"ring enter", ENODATA, "empty ring"};
        cur_ = next_;
        next_ = next_ + 1 == count_ ? 0 : next_ + 1;
        consumed_ = 0;
        return ::vcpu::ok();
    }
    [[nodiscard]] ::vcpu::kvm::run_view exit_record() noexcept {
        return {reinterpret_cast<::kvm_run*>(area(cur_)), ::vcpu::kvm::mock::run_area_bytes};
    }
    template <class F>
    bool drain_coalesced(F&& f) noexcept {
        const auto& c = coalesced_[cur_];
        while (consumed_ < c.n) {
            ::vcpu::coalesced_write w = c.writes[consumed_++];
            if (!f(w)) return false;
        }
        return true;
    }

    template <class B>
    [[nodiscard]] ::vcpu::result<const typename B::layout*> load() noexcept {
        return static_cast<const typename B::layout*>(&std::get<typename B::layout>(blocks_));
    }
    template <class B>
    [[nodiscard]] ::vcpu::result<typename B::layout*> modify() noexcept {
        return &std::get<typename B::layout>(blocks_);
    }
    template <class Bank>
    [[nodiscard]] ::vcpu::result<std::uint64_t> get_keyed(std::uint64_t) noexcept {
        return std::uint64_t{0};
    }
    template <class Bank>
    [[nodiscard]] ::vcpu::result<void> set_keyed(std::uint64_t, std::uint64_t) noexcept {
        return ::vcpu::ok();
    }
    [[nodiscard]] ::vcpu::result<void> get_one_reg(std::uint64_t, std::span<std::byte>) noexcept {
        return ::vcpu::ok();
    }
    [[nodiscard]] ::vcpu::result<void> set_one_reg(std::uint64_t, std::span<const std::byte>) noexcept {
        return ::vcpu::ok();
    }

private:
    static constexpr std::size_t stride = ::vcpu::kvm::mock::run_area_bytes;
    struct deleter {
        void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{4096}); }
    };
    struct pending {
        std::array<::vcpu::coalesced_write, 4> writes{};
        std::uint8_t n = 0;
    };
    template <class List> struct storage;
    template <class... B> struct storage<::vcpu::type_list<B...>> {
        using type = std::tuple<typename B::layout...>;
    };
    [[nodiscard]] std::byte* area(std::size_t i) const noexcept { return areas_.get() + i * stride; }

    std::unique_ptr<std::byte[], deleter> areas_;
    std::vector<pending> coalesced_;
    std::size_t count_ = 0, next_ = 0, cur_ = 0;
    std::uint8_t consumed_ = 0;
    typename storage<typename Arch::register_blocks>::type blocks_{};
};

} // namespace bench
