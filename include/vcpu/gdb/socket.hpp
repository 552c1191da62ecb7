#pragma once
/// \file
/// The GDB stub's transport: a TCP `listener` on the loopback address only (a debugger can
/// read and write all guest memory, so it is never offered to the network) and the connected
/// `stream` it accepts, which models `GdbTransport` (`vcpu/gdb/session.hpp`). POSIX sockets;
/// errors name the call, the errno and the port.

#include <vcpu/result.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

namespace vcpu::gdb {

/// A connected byte stream (an accepted socket, or either end of a `socketpair` in tests);
/// owns its fd.
class stream {
public:
    /// Takes ownership of the connected socket `fd`.
    explicit stream(int fd) noexcept : fd_(fd) {}
    /// Takes `o`'s fd.
    stream(stream&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    /// Takes `o`'s fd, closing this one's.
    stream& operator=(stream&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    ~stream() { reset(); }

    /// Reads what is there (waits for at least one byte); 0 when the peer closed.
    [[nodiscard]] result<std::size_t> read_some(std::span<char> buf) noexcept {
        for (;;) {
            const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
            if (n >= 0) return static_cast<std::size_t>(n);
            if (errno != EINTR) return last_error("recv gdb connection");
        }
    }
    /// Writes all of `s`.
    [[nodiscard]] result<void> write_all(std::string_view s) noexcept {
        while (!s.empty()) {
            const ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                return last_error("send gdb connection");
            }
            s.remove_prefix(static_cast<std::size_t>(n));
        }
        return ok();
    }
    /// True when a read would not block (data, or the peer closed), waiting up to `ms` (0: poll).
    [[nodiscard]] result<bool> readable(int ms) noexcept {
        pollfd p{fd_, POLLIN, 0};
        for (;;) {
            const int n = ::poll(&p, 1, ms);
            if (n >= 0) return n > 0;
            if (errno != EINTR) return last_error("poll gdb connection");
        }
    }
    /// The socket.
    [[nodiscard]] int fd() const noexcept { return fd_; }

private:
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    int fd_ = -1;
};

/// A listening TCP socket on 127.0.0.1.
class listener {
public:
    /// Listens on 127.0.0.1:`port` (0: a free port the kernel picks; `port()` says which).
    [[nodiscard]] static result<listener> open(std::uint16_t port) noexcept {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return last_error("socket (gdb listener)");
        listener l(fd);
        const int one = 1;
        (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
            return last_error("bind 127.0.0.1 (gdb listener)").with("port", port);
        if (::listen(fd, 1) != 0) return last_error("listen (gdb listener)").with("port", port);
        socklen_t len = sizeof a;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return last_error("getsockname (gdb listener)");
        l.port_ = ntohs(a.sin_port);
        return l;
    }

    /// Waits up to `timeout_ms` (-1: for ever) for gdb to connect; ETIMEDOUT when nobody did.
    [[nodiscard]] result<stream> accept(int timeout_ms = -1) const noexcept {
        pollfd p{fd_, POLLIN, 0};
        for (;;) {
            const int n = ::poll(&p, 1, timeout_ms);
            if (n > 0) break;
            if (n == 0) return error{"accept gdb connection", ETIMEDOUT, "no debugger connected in time"}.with("port", port_);
            if (errno != EINTR) return last_error("poll (gdb listener)").with("port", port_);
        }
        const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return last_error("accept gdb connection").with("port", port_);
        const int one = 1;
        (void)::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); // small packets, ping-pong
        return stream(c);
    }

    /// The port listened on.
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

    /// Takes `o`'s socket.
    listener(listener&& o) noexcept : fd_(std::exchange(o.fd_, -1)), port_(o.port_) {}
    /// Takes `o`'s socket, closing this one's.
    listener& operator=(listener&& o) noexcept {
        if (this != &o) {
            if (fd_ >= 0) ::close(fd_);
            fd_ = std::exchange(o.fd_, -1);
            port_ = o.port_;
        }
        return *this;
    }
    listener(const listener&) = delete;
    listener& operator=(const listener&) = delete;
    ~listener() {
        if (fd_ >= 0) ::close(fd_);
    }

private:
    explicit listener(int fd) noexcept : fd_(fd) {}
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

} // namespace vcpu::gdb
