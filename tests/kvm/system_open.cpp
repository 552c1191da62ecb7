// The host side of the KVM test suite: /dev/kvm opens and speaks the stable API (version 12).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

TEST_CASE("/dev/kvm reports KVM_API_VERSION") {
    const int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    // KVM_GET_API_VERSION takes no argument; 12 is the only stable API version (KVM API 4.1).
    CHECK(::ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION);
    CHECK(KVM_API_VERSION == 12);
    ::close(fd);
}
