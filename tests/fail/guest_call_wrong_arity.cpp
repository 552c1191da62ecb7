// A guest entry function started with a different number of arguments than it takes.
// expect-error: vcpu::guest::call: wrong number of arguments
#include <vcpu/guest/call.hpp>

void entry(int, long) {}

int main() {
    const vcpu::guest::call c(&entry, 1);
    return static_cast<int>(c.count);
}
