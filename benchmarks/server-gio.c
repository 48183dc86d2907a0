/*
 * bench-accept's GIO server: GLib's own listener (GSocketService), whose
 * "incoming" signal hands out a GSocketConnection per client, driven by
 * the default GMainContext.  The handler only counts; GIO closes the
 * connection when it drops it after the signal.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include "bench-server.h"

typedef struct GioServer {
    GSocketService *service;
    guint tick;
} GioServer;

static gboolean on_incoming(GSocketService *service,
                            GSocketConnection *connection,
                            GObject *source, gpointer opaque)
{
    (void)service;
    (void)connection;
    (void)source;
    (void)opaque;
    bench_accepted();
    return FALSE;
}

static gboolean on_tick(gpointer opaque)
{
    (void)opaque;
    return G_SOURCE_CONTINUE;
}

static void *gio_server_open(BenchTransport transport, const char *path,
                             bool tick, int *port)
{
    GioServer *s = g_new0(GioServer, 1);
    g_autoptr(GSocketAddress) addr = NULL;
    g_autoptr(GSocketAddress) effective = NULL;
    g_autoptr(GError) err = NULL;

    s->service = g_socket_service_new();
    g_socket_listener_set_backlog(G_SOCKET_LISTENER(s->service),
                                  BENCH_BACKLOG);
    if (transport == BENCH_TCP) {
        addr = g_inet_socket_address_new_from_string("127.0.0.1", 0);
    } else {
        addr = g_unix_socket_address_new(path);
    }
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(s->service), addr,
                                       G_SOCKET_TYPE_STREAM,
                                       G_SOCKET_PROTOCOL_DEFAULT, NULL,
                                       &effective, &err)) {
        bench_fail("GSocketService: %s", err->message);
    }
    if (transport == BENCH_TCP) {
        *port = g_inet_socket_address_get_port(
            G_INET_SOCKET_ADDRESS(effective));
    }
    g_signal_connect(s->service, "incoming", G_CALLBACK(on_incoming), NULL);
    g_socket_service_start(s->service);
    if (tick) {
        s->tick = g_timeout_add(BENCH_TICK_MS, on_tick, NULL);
    }
    return s;
}

static void gio_server_step(void *opaque)
{
    (void)opaque;
    g_main_context_iteration(NULL, TRUE);
}

static void gio_server_close(void *opaque)
{
    GioServer *s = opaque;

    g_socket_service_stop(s->service);
    g_socket_listener_close(G_SOCKET_LISTENER(s->service));
    g_object_unref(s->service);
    if (s->tick) {
        g_source_remove(s->tick);
    }
    /* Let GIO's cancelled accept tasks finish. */
    for (int i = 0; i < 100 && g_main_context_iteration(NULL, FALSE); i++) {
        /* nothing */
    }
    g_free(s);
}

const BenchServerOps bench_server_gio = {
    .name = "gio",
    .label = "GIO GSocketService",
    .open = gio_server_open,
    .step = gio_server_step,
    .close = gio_server_close,
};
