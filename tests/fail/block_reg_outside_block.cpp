// A register descriptor whose bytes leave its block does not compile (block_reg's constructor
// is consteval and checks offset + size against the block's layout).
// expect-error: block_register_lies_outside_its_block
#include <arch/x86_64/registers.hpp>

#include <cstdint>

inline constexpr vcpu::block_reg<vcpu::x86_64::regs_block, std::uint64_t> past_the_end{
    "bad", sizeof(vcpu::x86_64::regs_layout) - 4};

int main() { return static_cast<int>(past_the_end.offset); }
