// A guest entry function whose parameter does not travel in an integer register.
// expect-error: vcpu::guest::call: arguments must be integers, enums or pointers
#include <vcpu/guest/call.hpp>

void entry(double) {}

int main() {
    const vcpu::guest::call c(&entry, 1.0);
    return static_cast<int>(c.count);
}
