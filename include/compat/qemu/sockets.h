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

/* Prepares the socket layer: nothing to do outside Windows; returns 0. */
int socket_init(void);

#endif /* QEMU_SOCKETS_H */
