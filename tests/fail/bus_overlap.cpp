// Two device ranges that overlap must not compile.
// expect-error: vcpu::bus: two device ranges overlap
#include <vcpu/bus.hpp>

#include <cstdint>

struct dev {
    std::uint8_t read(std::uint64_t, std::uint8_t) { return 0; }
    void write(std::uint64_t, std::uint8_t, std::uint64_t) {}
};

// 0x3f8..0x3ff and 0x3fc..0x3fc overlap (declared apart: sorting finds it).
vcpu::port_bus<vcpu::unmapped::ignore, vcpu::range<0x3f8, 8, dev>, vcpu::range<0x60, 1, dev>,
               vcpu::range<0x3fc, 1, dev>>
    bus;
