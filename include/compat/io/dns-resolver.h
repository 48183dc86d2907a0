/*
 * qemu-compat-host: synchronous name resolution of socket addresses, as
 * QEMU's io/dns-resolver.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QIO_DNS_RESOLVER_H
#define QIO_DNS_RESOLVER_H

#include "qom/object.h"
#include "qapi/qapi-types-sockets.h"

#define TYPE_QIO_DNS_RESOLVER "qio-dns-resolver"
OBJECT_DECLARE_SIMPLE_TYPE(QIODNSResolver, QIO_DNS_RESOLVER)

struct QIODNSResolver {
    Object parent;
};

/* The process-wide resolver (never freed). */
QIODNSResolver *qio_dns_resolver_get_instance(void);

/*
 * Resolves @addr.  An inet address expands to one numeric address per
 * getaddrinfo() result (honouring ipv4/ipv6, without duplicates); every
 * other type is copied as is.  On success *naddrs and *addrs hold new
 * addresses that the caller frees (each with qapi_free_SocketAddress, the
 * array with g_free) and 0 is returned; on failure -1 and an error.
 */
int qio_dns_resolver_lookup_sync(QIODNSResolver *resolver,
                                 SocketAddress *addr,
                                 size_t *naddrs,
                                 SocketAddress ***addrs,
                                 Error **errp);

#endif /* QIO_DNS_RESOLVER_H */
