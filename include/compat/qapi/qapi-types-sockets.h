/*
 * qemu-compat-host: the C types that QEMU's QAPI generator emits for
 * qapi/sockets.json (SocketAddress and its branches), with the same
 * member names and order, so that code filling them in compiles unchanged.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QAPI_TYPES_SOCKETS_H
#define QAPI_TYPES_SOCKETS_H

#include "qemu/typedefs.h"

typedef enum NetworkAddressFamily {
    NETWORK_ADDRESS_FAMILY_IPV4,
    NETWORK_ADDRESS_FAMILY_IPV6,
    NETWORK_ADDRESS_FAMILY_UNIX,
    NETWORK_ADDRESS_FAMILY_VSOCK,
    NETWORK_ADDRESS_FAMILY_UNKNOWN,
    NETWORK_ADDRESS_FAMILY__MAX,
} NetworkAddressFamily;

typedef enum SocketAddressType {
    SOCKET_ADDRESS_TYPE_INET,
    SOCKET_ADDRESS_TYPE_UNIX,
    SOCKET_ADDRESS_TYPE_VSOCK,
    SOCKET_ADDRESS_TYPE_FD,
    SOCKET_ADDRESS_TYPE__MAX,
} SocketAddressType;

typedef struct InetSocketAddressBase InetSocketAddressBase;
typedef struct InetSocketAddress InetSocketAddress;
typedef struct UnixSocketAddress UnixSocketAddress;
typedef struct VsockSocketAddress VsockSocketAddress;
typedef struct FdSocketAddress FdSocketAddress;

struct InetSocketAddressBase {
    char *host;
    char *port;
};

struct InetSocketAddress {
    /* Members inherited from InetSocketAddressBase: */
    char *host;
    char *port;
    /* Own members: */
    bool has_numeric;
    bool numeric;
    bool has_to;
    uint16_t to;
    bool has_ipv4;
    bool ipv4;
    bool has_ipv6;
    bool ipv6;
    bool has_keep_alive;
    bool keep_alive;
    bool has_keep_alive_count;
    uint32_t keep_alive_count;
    bool has_keep_alive_idle;
    uint32_t keep_alive_idle;
    bool has_keep_alive_interval;
    uint32_t keep_alive_interval;
    bool has_mptcp;
    bool mptcp;
};

struct UnixSocketAddress {
    char *path;
    bool has_abstract;
    bool abstract;
    bool has_tight;
    bool tight;
};

struct VsockSocketAddress {
    char *cid;
    char *port;
};

struct FdSocketAddress {
    char *str;
};

struct SocketAddress {
    SocketAddressType type;
    union { /* union tag is @type */
        InetSocketAddress inet;
        UnixSocketAddress q_unix;
        VsockSocketAddress vsock;
        FdSocketAddress fd;
    } u;
};

/* Frees @obj and every string it owns; NULL is allowed. */
void qapi_free_SocketAddress(SocketAddress *obj);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(SocketAddress, qapi_free_SocketAddress)

#endif /* QAPI_TYPES_SOCKETS_H */
