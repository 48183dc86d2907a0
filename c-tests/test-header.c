/*
 * io/net-listener.h declares exactly QEMU 10.2's API.
 *
 * The callback type and the 13 prototypes below are copied verbatim from
 * QEMU 10.2's include/io/net-listener.h.  Our header is included after
 * them: any difference in a return or parameter type is a conflicting
 * declaration and fails the build.  Then every function is assigned to a
 * pointer of QEMU's exact type, and must link.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "io/channel-socket.h"
#include "qom/object.h"

typedef struct QIONetListener QIONetListener;

/* --- verbatim from QEMU 10.2 include/io/net-listener.h --- */
typedef void (*QIONetListenerClientFunc)(QIONetListener *listener,
                                         QIOChannelSocket *sioc,
                                         gpointer data);

QIONetListener *qio_net_listener_new(void);

void qio_net_listener_set_name(QIONetListener *listener,
                               const char *name);

int qio_net_listener_open_sync(QIONetListener *listener,
                               SocketAddress *addr,
                               int num,
                               Error **errp);

void qio_net_listener_add(QIONetListener *listener,
                          QIOChannelSocket *sioc);

void qio_net_listener_set_client_func_full(QIONetListener *listener,
                                           QIONetListenerClientFunc func,
                                           gpointer data,
                                           GDestroyNotify notify,
                                           GMainContext *context);

void qio_net_listener_set_client_func(QIONetListener *listener,
                                      QIONetListenerClientFunc func,
                                      gpointer data,
                                      GDestroyNotify notify);

void qio_net_listener_set_client_aio_func(QIONetListener *listener,
                                          QIONetListenerClientFunc func,
                                          void *data,
                                          AioContext *context);

QIOChannelSocket *qio_net_listener_wait_client(QIONetListener *listener);

void qio_net_listener_disconnect(QIONetListener *listener);

bool qio_net_listener_is_connected(QIONetListener *listener);

size_t qio_net_listener_nsioc(QIONetListener *listener);

QIOChannelSocket *qio_net_listener_sioc(QIONetListener *listener, size_t n);

SocketAddress *
qio_net_listener_get_local_address(QIONetListener *listener, size_t n,
                                   Error **errp);
/* --- end of the verbatim copy --- */

#include "io/net-listener.h"

/* QEMU's names of the type, as callers use them. */
G_STATIC_ASSERT(sizeof(TYPE_QIO_NET_LISTENER) == sizeof("qio-net-listener"));

/* cpr-transfer.c uses the header's autoptr cleanup; compile-only here. */
static G_GNUC_UNUSED void autoptr_compiles(void)
{
    g_autoptr(QIONetListener) listener = qio_net_listener_new();
    QIONetListener *checked = QIO_NET_LISTENER(listener);

    (void)checked;
}

int main(void)
{
    /* Each function, assigned to a pointer of QEMU's exact type. */
    QIONetListener *(*volatile p_new)(void) = qio_net_listener_new;
    void (*volatile p_set_name)(QIONetListener *, const char *) =
        qio_net_listener_set_name;
    int (*volatile p_open_sync)(QIONetListener *, SocketAddress *, int,
                                Error **) = qio_net_listener_open_sync;
    void (*volatile p_add)(QIONetListener *, QIOChannelSocket *) =
        qio_net_listener_add;
    void (*volatile p_set_client_func_full)(QIONetListener *,
                                            QIONetListenerClientFunc,
                                            gpointer, GDestroyNotify,
                                            GMainContext *) =
        qio_net_listener_set_client_func_full;
    void (*volatile p_set_client_func)(QIONetListener *,
                                       QIONetListenerClientFunc,
                                       gpointer, GDestroyNotify) =
        qio_net_listener_set_client_func;
    void (*volatile p_set_client_aio_func)(QIONetListener *,
                                           QIONetListenerClientFunc,
                                           void *, AioContext *) =
        qio_net_listener_set_client_aio_func;
    QIOChannelSocket *(*volatile p_wait_client)(QIONetListener *) =
        qio_net_listener_wait_client;
    void (*volatile p_disconnect)(QIONetListener *) =
        qio_net_listener_disconnect;
    bool (*volatile p_is_connected)(QIONetListener *) =
        qio_net_listener_is_connected;
    size_t (*volatile p_nsioc)(QIONetListener *) = qio_net_listener_nsioc;
    QIOChannelSocket *(*volatile p_sioc)(QIONetListener *, size_t) =
        qio_net_listener_sioc;
    SocketAddress *(*volatile p_get_local_address)(QIONetListener *, size_t,
                                                   Error **) =
        qio_net_listener_get_local_address;

    if (!p_new || !p_set_name || !p_open_sync || !p_add ||
        !p_set_client_func_full || !p_set_client_func ||
        !p_set_client_aio_func || !p_wait_client || !p_disconnect ||
        !p_is_connected || !p_nsioc || !p_sioc || !p_get_local_address) {
        return 1;
    }
    if (strcmp(TYPE_QIO_NET_LISTENER, "qio-net-listener") != 0) {
        return 1;
    }
    return 0;
}
