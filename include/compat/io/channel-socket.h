/*
 * qemu-compat-host: QIOChannelSocket, as QEMU's io/channel-socket.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QIO_CHANNEL_SOCKET_H
#define QIO_CHANNEL_SOCKET_H

#include "io/channel.h"
#include "qemu/sockets.h"

#define TYPE_QIO_CHANNEL_SOCKET "qio-channel-socket"
OBJECT_DECLARE_SIMPLE_TYPE(QIOChannelSocket, QIO_CHANNEL_SOCKET)

struct QIOChannelSocket {
    QIOChannel parent;
    int fd;
    struct sockaddr_storage localAddr;
    socklen_t localAddrLen;
    struct sockaddr_storage remoteAddr;
    socklen_t remoteAddrLen;
    ssize_t zero_copy_queued;
    ssize_t zero_copy_sent;
    bool blocking;
    bool new_zero_copy_sent_success;
};

/* A new channel with no socket (fd -1). */
QIOChannelSocket *qio_channel_socket_new(void);

/* Connects to @addr (blocking).  Returns 0 or -1. */
int qio_channel_socket_connect_sync(QIOChannelSocket *ioc,
                                    SocketAddress *addr,
                                    Error **errp);

/*
 * Creates a listening socket bound to @addr with backlog @num (@num <= 0
 * means SOMAXCONN).  Inet hosts must already be resolved to one address
 * (see qio_dns_resolver_lookup_sync).  Returns 0 or -1.
 */
int qio_channel_socket_listen_sync(QIOChannelSocket *ioc,
                                   SocketAddress *addr,
                                   int num,
                                   Error **errp);

SocketAddress *qio_channel_socket_get_local_address(QIOChannelSocket *ioc,
                                                    Error **errp);
SocketAddress *qio_channel_socket_get_remote_address(QIOChannelSocket *ioc,
                                                     Error **errp);

/*
 * Accepts one pending connection.  Returns a new blocking channel, or NULL
 * with an error (also when nothing is pending on a non-blocking socket).
 */
QIOChannelSocket *qio_channel_socket_accept(QIOChannelSocket *ioc,
                                            Error **errp);

#endif /* QIO_CHANNEL_SOCKET_H */
