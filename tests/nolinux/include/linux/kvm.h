// Stands in for the kernel header in the no-Linux-headers build (tests/CMakeLists.txt): a
// header of the core or an ISA-level arch header that reaches for it fails to compile.
#error "vcpu: this translation unit must compile without <linux/kvm.h>"
