// Type-list operations (include/vcpu/meta.hpp) and the set of exits run() hands back
// (include/vcpu/dispatch.hpp), checked at compile time.
#include <vcpu/dispatch.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/meta.hpp>

#include <type_traits>
#include <variant>

namespace {
using vcpu::type_list;
struct a {};
struct b {};
struct c {};

static_assert(std::is_same_v<vcpu::list_filter_t<type_list<a, b, c>, true, false, true>, type_list<a, c>>);
static_assert(std::is_same_v<vcpu::list_filter_t<type_list<a, b, c>, false, false, false>, type_list<>>);
static_assert(std::is_same_v<vcpu::list_filter_t<type_list<>>, type_list<>>);
static_assert(std::is_same_v<vcpu::list_concat_t<type_list<a>, type_list<b, c>>, type_list<a, b, c>>);
static_assert(vcpu::list_contains_v<b, type_list<a, b>> && !vcpu::list_contains_v<c, type_list<a, b>>);

// What run() returns: exits no handler takes, and those whose handler may stop, in arch order.
struct takes_a {
    void operator()(a&) const noexcept {}
};
struct may_stop_b {
    vcpu::action operator()(b&) const noexcept { return vcpu::action::stop; }
};
struct takes_all {
    void operator()(auto&) const noexcept {}
};
using exits = type_list<a, b, c>;
static_assert(std::is_same_v<vcpu::unhandled_exit_t<exits, takes_a>, std::variant<b, c>>);
static_assert(std::is_same_v<vcpu::unhandled_exit_t<exits, takes_a, may_stop_b>, std::variant<b, c>>);
static_assert(std::is_same_v<vcpu::unhandled_exit_t<exits, may_stop_b, takes_all>, std::variant<b>>);
static_assert(std::is_same_v<vcpu::unhandled_exit_t<exits, takes_all>, std::variant<std::monostate>>);
static_assert(std::is_same_v<vcpu::unhandled_exit_t<exits>, std::variant<a, b, c>>);
} // namespace
