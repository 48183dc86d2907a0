/*
 * qemu-compat-host: socket address helpers of QEMU's qemu/sockets.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_SOCKETS_H
#define QEMU_SOCKETS_H

#include "qapi/qapi-types-sockets.h"

/*
 * A numeric PORT above 65535 is rejected everywhere (socket_parse(),
 * socket_listen(), socket_connect() and the DNS resolver) with "port N out
 * of range", where getaddrinfo() would wrap it; a service name is resolved
 * by getaddrinfo().
 *
 * Parses "tcp:HOST:PORT", "HOST:PORT", "[IPV6]:PORT", "unix:PATH",
 * "fd:N" (or "fd:NAME") and "vsock:CID:PORT" into a new SocketAddress.
 * Inet options may follow as ",to=N", ",ipv4=on|off", ",ipv6=on|off",
 * ",numeric=on|off", ",keep-alive=on|off"; unix ones as ",abstract=on|off",
 * ",tight=on|off".
 */
SocketAddress *socket_parse(const char *str, Error **errp);

/* Returns a new string for @addr in the syntax socket_parse() accepts. */
char *socket_uri(SocketAddress *addr);

/* Converts a sockaddr into a new SocketAddress (inet, unix or vsock). */
SocketAddress *socket_sockaddr_to_address(struct sockaddr_storage *sa,
                                          socklen_t salen, Error **errp);

/* The local address a socket fd is bound to. */
SocketAddress *socket_local_address(int fd, Error **errp);
SocketAddress *socket_remote_address(int fd, Error **errp);

/*
 * Listens on @addr with @num as the backlog (inet must be a numeric host
 * already resolved; unix, vsock and fd are supported).  Returns a
 * close-on-exec, blocking fd or -1 with an error naming the address.
 */
int socket_listen(SocketAddress *addr, int num, Error **errp);

/* Connects to @addr (inet names are resolved); returns a blocking fd or -1. */
int socket_connect(SocketAddress *addr, Error **errp);

/* Sets O_NONBLOCK on (false) or off (true); returns false and errno on error. */
bool qemu_set_blocking(int fd, bool block, Error **errp);

/* Whether @fd is a socket. */
bool fd_is_socket(int fd);

/* socket(2) with close-on-exec set; -1 and errno on failure. */
int qemu_socket(int domain, int type, int protocol);

/* Prepares the socket layer: nothing to do outside Windows; returns 0. */
int socket_init(void);

#endif /* QEMU_SOCKETS_H */
