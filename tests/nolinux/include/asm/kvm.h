// Stands in for the kernel header in the no-Linux-headers build (tests/CMakeLists.txt).
#error "vcpu: this translation unit must compile without <asm/kvm.h>"
