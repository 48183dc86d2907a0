/*
 * Which socket families this host offers: see socket-helpers.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <netinet/in.h>
#include <sys/socket.h>
#include "socket-helpers.h"

/*
 * Binds a TCP socket of @family to its loopback address, port 0.
 * 1: works; 0: the family or the address is not available; -1: another
 * error.
 */
static int try_loopback(int family)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    int fd, ret, saved;

    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        len = sizeof(*sin6);
    }

    fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT ? 0 : -1;
    }
    ret = bind(fd, (struct sockaddr *)&ss, len);
    saved = errno;
    close(fd);
    if (ret == 0) {
        return 1;
    }
    return saved == EADDRNOTAVAIL || saved == EAFNOSUPPORT ? 0 : -1;
}

int socket_check_protocol_support(bool *has_ipv4, bool *has_ipv6)
{
    int v4 = try_loopback(AF_INET);
    int v6 = try_loopback(AF_INET6);

    if (v4 < 0 || v6 < 0) {
        return -1;
    }
    *has_ipv4 = v4 == 1;
    *has_ipv6 = v6 == 1;
    return 0;
}

void socket_check_afunix_support(bool *has_afunix)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    *has_afunix = fd >= 0;
    if (fd >= 0) {
        close(fd);
    }
}
