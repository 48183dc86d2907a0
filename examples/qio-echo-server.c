/*
 * qio-echo-server: a TCP/unix echo server on QIONetListener.
 *
 *   qio-echo-server [--aio] [--once] [ADDRESS]
 *
 * Listens on ADDRESS (socket_parse syntax: "HOST:PORT", "[IPV6]:PORT",
 * "unix:PATH", "fd:N"; default "127.0.0.1:0"), prints one "listening on
 * URI" line per socket, then one line per client, and echoes every byte
 * back.  Accepted clients come from the default GMainContext
 * (set_client_func), or with --aio from the main AioContext
 * (set_client_aio_func) driven by an aio_poll() loop.  Each client has its
 * own watch (a GSource, or AioContext fd handlers with --aio); nothing
 * blocks.  --once exits after the first client has gone.
 *
 * Written against QEMU's API: it builds in a QEMU tree as well.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"

typedef struct Server {
    bool use_aio;
    bool once;
    bool quit;
    unsigned next_id;
    GList *clients;
} Server;

typedef struct Client {
    Server *server;
    QIOChannelSocket *sioc;
    unsigned id;
    guint watch;            /* GSource id (GLib mode) */
    char buf[4096];
    size_t len;             /* bytes in buf still to echo */
    size_t off;             /* of which already written */
} Client;

static void client_update_watch(Client *c);

static void client_close(Client *c)
{
    Server *s = c->server;

    if (s->use_aio) {
        qio_channel_set_aio_fd_handler(QIO_CHANNEL(c->sioc),
                                       qemu_get_aio_context(), NULL,
                                       qemu_get_aio_context(), NULL, NULL);
    } else if (c->watch) {
        g_source_remove(c->watch);
    }
    printf("client %u disconnected\n", c->id);
    fflush(stdout);
    s->clients = g_list_remove(s->clients, c);
    qio_channel_close(QIO_CHANNEL(c->sioc), NULL);
    object_unref(OBJECT(c->sioc));
    g_free(c);
    if (s->once) {
        s->quit = true;
        if (!s->use_aio) {
            g_main_context_wakeup(NULL);
        }
    }
}

/*
 * Reads when the buffer is empty, writes while it is not: returns false
 * once the client is gone (closed and freed).
 */
static bool client_pump(Client *c)
{
    QIOChannel *ioc = QIO_CHANNEL(c->sioc);
    Error *err = NULL;
    ssize_t n;

    if (c->len == 0) {
        n = qio_channel_read(ioc, c->buf, sizeof(c->buf), &err);
        if (n == QIO_CHANNEL_ERR_BLOCK) {
            return true;
        }
        if (n <= 0) {
            if (n < 0) {
                error_report_err(err);
            }
            client_close(c);
            return false;
        }
        c->len = n;
        c->off = 0;
    }
    while (c->off < c->len) {
        n = qio_channel_write(ioc, c->buf + c->off, c->len - c->off, &err);
        if (n == QIO_CHANNEL_ERR_BLOCK) {
            return true;        /* wait until writable */
        }
        if (n < 0) {
            error_report_err(err);
            client_close(c);
            return false;
        }
        c->off += n;
    }
    c->len = c->off = 0;
    return true;
}

static gboolean client_io_glib(QIOChannel *ioc, GIOCondition cond,
                               gpointer opaque)
{
    Client *c = opaque;
    bool was_writing = c->len > 0;

    (void)ioc;
    (void)cond;
    if (!client_pump(c)) {
        return G_SOURCE_REMOVE;     /* client_close removed the source */
    }
    if ((c->len > 0) != was_writing) {
        c->watch = 0;
        client_update_watch(c);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void client_io_aio(void *opaque)
{
    Client *c = opaque;

    if (client_pump(c)) {
        client_update_watch(c);
    }
}

/* Watch for input, or for room to write while output is pending. */
static void client_update_watch(Client *c)
{
    bool writing = c->len > 0;

    if (c->server->use_aio) {
        AioContext *ctx = qemu_get_aio_context();

        qio_channel_set_aio_fd_handler(QIO_CHANNEL(c->sioc),
                                       ctx, writing ? NULL : client_io_aio,
                                       ctx, writing ? client_io_aio : NULL,
                                       c);
    } else {
        if (c->watch) {
            g_source_remove(c->watch);
        }
        c->watch = qio_channel_add_watch(QIO_CHANNEL(c->sioc),
                                         (writing ? G_IO_OUT : G_IO_IN) |
                                         G_IO_HUP | G_IO_ERR,
                                         client_io_glib, c, NULL);
    }
}

static void client_accepted(QIONetListener *listener, QIOChannelSocket *sioc,
                            gpointer opaque)
{
    Server *s = opaque;
    Client *c = g_new0(Client, 1);
    Error *err = NULL;
    SocketAddress *remote;
    char *uri;

    (void)listener;
    c->server = s;
    c->id = ++s->next_id;
    c->sioc = QIO_CHANNEL_SOCKET(object_ref(OBJECT(sioc)));

    remote = qio_channel_socket_get_remote_address(sioc, &err);
    if (remote) {
        uri = socket_uri(remote);
        qapi_free_SocketAddress(remote);
    } else {
        uri = g_strdup("(unknown)");
        warn_report_err(err);
    }
    printf("client %u connected from %s\n", c->id, uri);
    fflush(stdout);
    g_free(uri);

    if (!qio_channel_set_blocking(QIO_CHANNEL(sioc), false, &err)) {
        error_report_err(err);
        qio_channel_close(QIO_CHANNEL(sioc), NULL);
        object_unref(OBJECT(c->sioc));
        g_free(c);
        return;
    }
    s->clients = g_list_prepend(s->clients, c);
    client_update_watch(c);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: qio-echo-server [--aio] [--once] [ADDRESS]\n"
            "  ADDRESS   HOST:PORT, [IPV6]:PORT, unix:PATH or fd:N "
            "(default 127.0.0.1:0)\n"
            "  --aio     accept from the main AioContext "
            "(set_client_aio_func)\n"
            "  --once    exit after the first client disconnects\n");
}

int main(int argc, char **argv)
{
    Server server = { 0 };
    const char *address = NULL;
    QIONetListener *listener;
    SocketAddress *addr;
    Error *err = NULL;
    size_t i;

    for (int a = 1; a < argc; a++) {
        if (g_str_equal(argv[a], "--aio")) {
            server.use_aio = true;
        } else if (g_str_equal(argv[a], "--once")) {
            server.once = true;
        } else if (g_str_equal(argv[a], "--help") ||
                   g_str_equal(argv[a], "-h")) {
            usage(stdout);
            return 0;
        } else if (argv[a][0] == '-' && argv[a][1] != '\0') {
            error_report("unknown option '%s'", argv[a]);
            usage(stderr);
            return 1;
        } else if (address) {
            error_report("only one ADDRESS may be given");
            return 1;
        } else {
            address = argv[a];
        }
    }

    if (!address) {
        address = "127.0.0.1:0";
    }
    /* A client that goes away mid-echo is an error, not a signal. */
    signal(SIGPIPE, SIG_IGN);

    module_call_init(MODULE_INIT_QOM);
    if (qemu_init_main_loop(&err) < 0) {
        error_report_err(err);
        return 1;
    }

    addr = socket_parse(address, &err);
    if (!addr) {
        error_report_err(err);
        return 1;
    }

    listener = qio_net_listener_new();
    qio_net_listener_set_name(listener, "echo-server-listener");
    if (qio_net_listener_open_sync(listener, addr, 16, &err) < 0) {
        error_report_err(err);
        object_unref(OBJECT(listener));
        qapi_free_SocketAddress(addr);
        return 1;
    }
    qapi_free_SocketAddress(addr);

    for (i = 0; i < qio_net_listener_nsioc(listener); i++) {
        SocketAddress *local =
            qio_net_listener_get_local_address(listener, i, &err);
        char *uri;

        if (!local) {
            error_report_err(err);
            object_unref(OBJECT(listener));
            return 1;
        }
        uri = socket_uri(local);
        printf("listening on %s\n", uri);
        g_free(uri);
        qapi_free_SocketAddress(local);
    }
    fflush(stdout);

    if (server.use_aio) {
        qio_net_listener_set_client_aio_func(listener, client_accepted,
                                             &server, NULL);
        while (!server.quit) {
            aio_poll(qemu_get_aio_context(), true);
        }
        qio_net_listener_set_client_aio_func(listener, NULL, NULL, NULL);
    } else {
        qio_net_listener_set_client_func(listener, client_accepted,
                                         &server, NULL);
        while (!server.quit) {
            g_main_context_iteration(NULL, TRUE);
        }
        qio_net_listener_set_client_func(listener, NULL, NULL, NULL);
    }

    qio_net_listener_disconnect(listener);
    object_unref(OBJECT(listener));
    while (server.clients) {
        server.once = false;
        client_close(server.clients->data);
    }
    return 0;
}
