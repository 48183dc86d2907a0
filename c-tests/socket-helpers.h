/*
 * The socket helpers QEMU's unit tests use (tests/unit/socket-helpers.h
 * in a QEMU tree), with the same names and signatures, so that a test
 * written like QEMU's builds on the compat host too.  Our own
 * implementation (socket-helpers.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TESTS_SOCKET_HELPERS_H
#define TESTS_SOCKET_HELPERS_H

/*
 * Sets *@has_ipv4 / *@has_ipv6 to whether a TCP socket can be bound to
 * 127.0.0.1 / ::1.  Returns 0, or -1 if the check itself failed (an
 * error other than the protocol or the address being unavailable).
 */
int socket_check_protocol_support(bool *has_ipv4, bool *has_ipv6);

/* Sets *@has_afunix to whether AF_UNIX sockets can be created. */
void socket_check_afunix_support(bool *has_afunix);

#endif
