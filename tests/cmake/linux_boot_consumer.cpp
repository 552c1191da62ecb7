// Shared by the consumer projects in tests/cmake/* that see vcpu::linux_boot: the Linux-boot
// headers must compile through that target and their libfdt and zlib calls must link.
#include <vcpu/boot/fdt.hpp>
#include <vcpu/boot/gzip.hpp>

#include <array>
#include <cstddef>
#include <cstdio>

int main() {
    std::array<std::byte, 256> buf{};
    vcpu::boot::fdt_writer w(buf);
    w.begin_node("").prop_u32("#address-cells", 2).end_node();
    auto tree = w.finish();
    // Not gzip data: gunzip must say so (and zlib must have linked).
    std::array<std::byte, 4> junk{};
    std::array<std::byte, 16> out{};
    auto inflated = vcpu::boot::gunzip(junk, out);
    std::printf("fdt %s (%zu bytes), gunzip of junk %s\n", tree ? "ok" : "failed",
                tree ? tree->size() : 0, inflated ? "accepted" : "rejected");
    return tree && !inflated ? 0 : 1;
}
