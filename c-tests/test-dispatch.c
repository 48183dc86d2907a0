/*
 * QIONetListener: dispatching accepted clients to the callback, from a
 * GMainContext (default or private, in another thread) or an AioContext
 * (main, through aio_poll or the GLib main loop; IOThread); notify;
 * wait_client alongside an async callback.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "iothread.h"
#include "test-util.h"

/* Whether @sioc has data or end of file pending right now. */
static bool readable_now(QIOChannelSocket *sioc)
{
    struct pollfd pfd = { .fd = sioc->fd, .events = POLLIN };

    return poll(&pfd, 1, 0) > 0;
}

/*
 * The accepted channel is the server end of @client: same port pair, and
 * bytes flow both ways (the callback wrote @acc->greeting).
 */
static void check_pair(TuAccepts *acc, guint n, QIOChannelSocket *client)
{
    QIOChannelSocket *server = tu_accepts_client(acc, n);
    char buf[64] = "";

    g_assert_cmpint(tu_remote_port(server), ==, tu_local_port(client));
    g_assert_cmpint(tu_local_port(server), ==, tu_remote_port(client));
    if (acc->greeting) {
        size_t len = strlen(acc->greeting);
        g_assert_cmpuint(tu_read_bounded(client, buf, len), ==, len);
        g_assert_cmpstr(buf, ==, acc->greeting);
    }
    tu_write_str(client, "pong");
    memset(buf, 0, sizeof(buf));
    g_assert_cmpuint(tu_read_bounded(server, buf, 4), ==, 4);
    g_assert_cmpstr(buf, ==, "pong");
}

static void test_default_context(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2;
    TuAccepts acc;

    tu_accepts_init(&acc);
    acc.greeting = "hello\n";
    qio_net_listener_set_client_func(listener, tu_accept_cb, &acc, NULL);

    c1 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate_main());
    g_assert_true(acc.last_listener == listener);
    g_assert_true(acc.last_thread == g_thread_self());
    check_pair(&acc, 0, c1);

    c2 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 2, tu_iterate_main());
    check_pair(&acc, 1, c2);

    qio_net_listener_set_client_func(listener, NULL, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&acc);
}

static void test_private_context_thread(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    GMainContext *ctx = g_main_context_new();
    QIOChannelSocket *client;
    TuLoopThread lt;
    TuAccepts acc;

    tu_accepts_init(&acc);
    acc.greeting = "hi from a thread\n";
    qio_net_listener_set_client_func_full(listener, tu_accept_cb, &acc,
                                          tu_accepts_notify, ctx);
    client = tu_connect_listener(listener, 0);

    /* The default context does not serve a listener bound to another. */
    tu_spin_main(50);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 0);

    tu_loop_thread_start(&lt, ctx, "private-ctx");
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_nap());
    g_mutex_lock(&acc.lock);
    g_assert_true(acc.last_thread == lt.thread);
    g_assert_true(acc.last_listener == listener);
    g_mutex_unlock(&acc.lock);
    check_pair(&acc, 0, client);

    /* Clearing from this thread while the context runs in the other. */
    qio_net_listener_set_client_func_full(listener, NULL, NULL, NULL, ctx);
    TU_WAIT_UNTIL(tu_accepts_notified(&acc) == 1, tu_nap());

    tu_loop_thread_stop(&lt);

    object_unref(OBJECT(listener));
    g_assert_cmpint(tu_accepts_notified(&acc), ==, 1);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 1);
    g_main_context_unref(ctx);
    object_unref(OBJECT(client));
    tu_accepts_destroy(&acc);
}

/*
 * The main AioContext, named by NULL or explicitly, driven by aio_poll()
 * (@via_glib false) or by the GLib main loop it is attached to.
 */
typedef struct {
    bool explicit_ctx;
    bool via_glib;
} AioMainCase;

static const AioMainCase aio_null_poll = { false, false };
static const AioMainCase aio_null_glib = { false, true };
static const AioMainCase aio_main_poll = { true, false };
static const AioMainCase aio_main_glib = { true, true };

static void test_aio_main(gconstpointer opaque)
{
    const AioMainCase *tc = opaque;
    AioContext *ctx = qemu_get_aio_context();
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2;
    TuAccepts acc;

    tu_accepts_init(&acc);
    acc.greeting = "hello from aio\n";
    qio_net_listener_set_client_aio_func(listener, tu_accept_cb, &acc,
                                         tc->explicit_ctx ? ctx : NULL);

    c1 = tu_connect_listener(listener, 0);
    c2 = tu_connect_listener(listener, 0);
    if (tc->via_glib) {
        TU_WAIT_UNTIL(tu_accepts_count(&acc) == 2, tu_iterate_main());
    } else {
        TU_WAIT_UNTIL(tu_accepts_count(&acc) == 2, tu_iterate_aio(ctx));
    }
    g_assert_true(acc.last_listener == listener);
    g_assert_true(acc.last_thread == g_thread_self());
    /* Either order: match by port. */
    if (tu_remote_port(tu_accepts_client(&acc, 0)) == tu_local_port(c1)) {
        check_pair(&acc, 0, c1);
        check_pair(&acc, 1, c2);
    } else {
        check_pair(&acc, 0, c2);
        check_pair(&acc, 1, c1);
    }

    qio_net_listener_set_client_aio_func(listener, NULL, NULL,
                                         tc->explicit_ctx ? ctx : NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&acc);
}

static void test_aio_iothread(void)
{
    IOThread *iothread = iothread_new();
    AioContext *ctx = iothread_get_aio_context(iothread);
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    TuAccepts acc;

    tu_accepts_init(&acc);
    acc.greeting = "hello from an iothread\n";
    qio_net_listener_set_client_aio_func(listener, tu_accept_cb, &acc, ctx);

    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_nap());
    g_mutex_lock(&acc.lock);
    g_assert_true(acc.last_thread != g_thread_self());
    g_assert_true(acc.last_listener == listener);
    g_mutex_unlock(&acc.lock);
    check_pair(&acc, 0, client);

    /* Cleared and released from the main thread while ctx runs. */
    qio_net_listener_set_client_aio_func(listener, NULL, NULL, ctx);
    object_unref(OBJECT(listener));
    iothread_join(iothread);
    object_unref(OBJECT(client));
    tu_accepts_destroy(&acc);
}

static void test_two_listeners(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    QIONetListener *l1 = tu_new_inet_listener();
    QIONetListener *l2 = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2;
    TuAccepts acc;

    tu_accepts_init(&acc);
    tu_set_cb(l1, mode, tu_accept_cb, &acc);
    tu_set_cb(l2, mode, tu_accept_cb, &acc);

    c2 = tu_connect_listener(l2, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));
    g_assert_true(acc.last_listener == l2);
    c1 = tu_connect_listener(l1, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 2, tu_iterate(mode));
    g_assert_true(acc.last_listener == l1);
    check_pair(&acc, 0, c2);
    check_pair(&acc, 1, c1);

    tu_set_cb(l1, mode, NULL, NULL);
    tu_set_cb(l2, mode, NULL, NULL);
    object_unref(OBJECT(l1));
    object_unref(OBJECT(l2));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&acc);
}

static void test_clear_stops_accepting(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2;
    TuAccepts acc;

    tu_accepts_init(&acc);
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    c1 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));

    tu_set_cb(listener, mode, NULL, NULL);
    c2 = tu_connect_listener(listener, 0);
    tu_spin(mode, 100);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 1);
    /* Not accepted and dropped either: still queued, not at EOF. */
    g_assert_false(readable_now(c2));

    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 2, tu_iterate(mode));
    check_pair(&acc, 0, c1);
    check_pair(&acc, 1, c2);

    tu_set_cb(listener, mode, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&acc);
}

/* Direct replacement, from one kind of watch to another or the same. */
static const TuMode replace_glib_glib[] = { TU_MODE_GLIB, TU_MODE_GLIB };
static const TuMode replace_glib_aio[] = { TU_MODE_GLIB, TU_MODE_AIO };
static const TuMode replace_aio_aio[] = { TU_MODE_AIO, TU_MODE_AIO };
static const TuMode replace_aio_glib[] = { TU_MODE_AIO, TU_MODE_GLIB };

/* The new callback takes over at once, without clearing in between. */
static void test_replace_callback(gconstpointer opaque)
{
    const TuMode *modes = opaque;
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2;
    TuAccepts a, b;

    tu_accepts_init(&a);
    tu_accepts_init(&b);
    tu_set_cb(listener, modes[0], tu_accept_cb, &a);
    c1 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&a) == 1, tu_iterate(modes[0]));

    tu_set_cb(listener, modes[1], tu_accept_cb, &b);
    c2 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&b) == 1, tu_iterate(modes[1]));
    tu_spin(modes[0], 10);
    g_assert_cmpint(tu_accepts_count(&a), ==, 1);
    check_pair(&a, 0, c1);
    check_pair(&b, 0, c2);

    tu_set_cb(listener, modes[1], NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&a);
    tu_accepts_destroy(&b);
}

static void test_notify_on_replace_and_finalize(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    TuAccepts a, b;

    tu_accepts_init(&a);
    tu_accepts_init(&b);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &a,
                                     tu_accepts_notify);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &b,
                                     tu_accepts_notify);
    TU_WAIT_UNTIL(tu_accepts_notified(&a) == 1, tu_iterate_main());

    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&b) == 1, tu_iterate_main());
    g_assert_cmpint(tu_accepts_count(&a), ==, 0);

    /* Disconnecting keeps the registration: no notify yet. */
    qio_net_listener_disconnect(listener);
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&b), ==, 0);

    object_unref(OBJECT(listener));
    TU_WAIT_UNTIL(tu_accepts_notified(&b) == 1, tu_iterate_main());
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 1);
    g_assert_cmpint(tu_accepts_notified(&b), ==, 1);

    object_unref(OBJECT(client));
    tu_accepts_destroy(&a);
    tu_accepts_destroy(&b);
}

static void test_notify_at_finalize_no_sockets(void)
{
    QIONetListener *listener = qio_net_listener_new();
    TuAccepts a;

    tu_accepts_init(&a);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &a,
                                     tu_accepts_notify);
    tu_spin_main(5);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 0);
    object_unref(OBJECT(listener));
    TU_WAIT_UNTIL(tu_accepts_notified(&a) == 1, tu_iterate_main());
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 1);
    tu_accepts_destroy(&a);
}

static void test_notify_on_clear(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    TuAccepts a;

    tu_accepts_init(&a);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &a,
                                     tu_accepts_notify);
    qio_net_listener_set_client_func(listener, NULL, NULL, NULL);
    TU_WAIT_UNTIL(tu_accepts_notified(&a) == 1, tu_iterate_main());
    object_unref(OBJECT(listener));
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 1);
    tu_accepts_destroy(&a);
}

static void test_same_tuple_is_noop(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    TuAccepts a;

    tu_accepts_init(&a);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &a,
                                     tu_accepts_notify);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &a,
                                     tu_accepts_notify);
    qio_net_listener_set_client_func_full(listener, tu_accept_cb, &a,
                                          tu_accepts_notify, NULL);
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 0);

    /* Still armed, once. */
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&a) == 1, tu_iterate_main());
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_count(&a), ==, 1);
    check_pair(&a, 0, client);

    qio_net_listener_set_client_func(listener, NULL, NULL, NULL);
    TU_WAIT_UNTIL(tu_accepts_notified(&a) == 1, tu_iterate_main());
    object_unref(OBJECT(listener));
    tu_spin_main(20);
    g_assert_cmpint(tu_accepts_notified(&a), ==, 1);
    object_unref(OBJECT(client));
    tu_accepts_destroy(&a);
}

static void test_same_aio_tuple_is_noop(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    TuAccepts a;

    tu_accepts_init(&a);
    qio_net_listener_set_client_aio_func(listener, tu_accept_cb, &a, NULL);
    qio_net_listener_set_client_aio_func(listener, tu_accept_cb, &a, NULL);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&a) == 1,
                  tu_iterate_aio(qemu_get_aio_context()));
    tu_spin_aio(qemu_get_aio_context(), 20);
    g_assert_cmpint(tu_accepts_count(&a), ==, 1);
    check_pair(&a, 0, client);

    qio_net_listener_set_client_aio_func(listener, NULL, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(client));
    tu_accepts_destroy(&a);
}

static void test_wait_client_with_async(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *c1, *c2, *server;
    TuWatchdog *wd;
    TuAccepts acc;

    tu_accepts_init(&acc);
    tu_set_cb(listener, mode, tu_accept_cb, &acc);

    c1 = tu_connect_listener(listener, 0);
    wd = tu_watchdog_start("qio_net_listener_wait_client", 10);
    server = qio_net_listener_wait_client(listener);
    tu_watchdog_stop(wd);
    g_assert_nonnull(server);
    g_assert_cmpint(tu_remote_port(server), ==, tu_local_port(c1));
    /* That client went to wait_client only. */
    tu_spin(mode, 20);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 0);

    /* The async callback is back for the next one. */
    c2 = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));
    check_pair(&acc, 0, c2);
    tu_spin(mode, 10);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 1);

    tu_set_cb(listener, mode, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(server));
    object_unref(OBJECT(c1));
    object_unref(OBJECT(c2));
    tu_accepts_destroy(&acc);
}

static void test_wait_client_dead_listener(void)
{
    QIONetListener *listener = qio_net_listener_new();
    TuWatchdog *wd;

    /* No socket at all: nothing can ever connect. */
    wd = tu_watchdog_start("wait_client without sockets", 10);
    g_assert_null(qio_net_listener_wait_client(listener));
    tu_watchdog_stop(wd);
    object_unref(OBJECT(listener));

    /* Disconnected. */
    listener = tu_new_inet_listener();
    qio_net_listener_disconnect(listener);
    wd = tu_watchdog_start("wait_client on a disconnected listener", 10);
    g_assert_null(qio_net_listener_wait_client(listener));
    tu_watchdog_stop(wd);
    object_unref(OBJECT(listener));
}

static void test_clear_inside_callback(gconstpointer opaque)
{
    TuOnce od = { .mode = GPOINTER_TO_INT(opaque) };
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *clients[3];

    tu_accepts_init(&od.acc);
    /* All queued before the first wake-up: a batch accept must stop. */
    for (int i = 0; i < 3; i++) {
        clients[i] = tu_connect_listener(listener, 0);
    }
    for (int round = 1; round <= 3; round++) {
        tu_set_cb(listener, od.mode, tu_accept_once_cb, &od);
        TU_WAIT_UNTIL(tu_accepts_count(&od.acc) == round,
                      tu_iterate(od.mode));
        tu_spin(od.mode, 30);
        g_assert_cmpint(tu_accepts_count(&od.acc), ==, round);
    }
    /* Each client was accepted exactly once, none was dropped. */
    for (int i = 0; i < 3; i++) {
        int port = tu_local_port(clients[i]);
        int found = 0;

        for (guint j = 0; j < 3; j++) {
            if (tu_remote_port(tu_accepts_client(&od.acc, j)) == port) {
                check_pair(&od.acc, j, clients[i]);
                found++;
            }
        }
        g_assert_cmpint(found, ==, 1);
    }
    object_unref(OBJECT(listener));
    for (int i = 0; i < 3; i++) {
        object_unref(OBJECT(clients[i]));
    }
    tu_accepts_destroy(&od.acc);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    g_test_add_func("/net-listener/dispatch/default-context",
                    test_default_context);
    g_test_add_func("/net-listener/dispatch/private-context-thread",
                    test_private_context_thread);
    g_test_add_data_func("/net-listener/dispatch/aio-main/null/aio-poll",
                         &aio_null_poll, test_aio_main);
    g_test_add_data_func("/net-listener/dispatch/aio-main/null/glib",
                         &aio_null_glib, test_aio_main);
    g_test_add_data_func("/net-listener/dispatch/aio-main/explicit/aio-poll",
                         &aio_main_poll, test_aio_main);
    g_test_add_data_func("/net-listener/dispatch/aio-main/explicit/glib",
                         &aio_main_glib, test_aio_main);
    g_test_add_func("/net-listener/dispatch/aio-iothread", test_aio_iothread);
    tu_add_modes("/net-listener/dispatch/two-listeners", test_two_listeners);
    tu_add_modes("/net-listener/dispatch/clear-stops-accepting",
                 test_clear_stops_accepting);
    tu_add_modes("/net-listener/dispatch/clear-inside-callback",
                 test_clear_inside_callback);
    g_test_add_data_func("/net-listener/dispatch/replace/glib-glib",
                         replace_glib_glib, test_replace_callback);
    g_test_add_data_func("/net-listener/dispatch/replace/glib-aio",
                         replace_glib_aio, test_replace_callback);
    g_test_add_data_func("/net-listener/dispatch/replace/aio-aio",
                         replace_aio_aio, test_replace_callback);
    g_test_add_data_func("/net-listener/dispatch/replace/aio-glib",
                         replace_aio_glib, test_replace_callback);
    g_test_add_func("/net-listener/notify/replace-and-finalize",
                    test_notify_on_replace_and_finalize);
    g_test_add_func("/net-listener/notify/finalize-no-sockets",
                    test_notify_at_finalize_no_sockets);
    g_test_add_func("/net-listener/notify/clear", test_notify_on_clear);
    g_test_add_func("/net-listener/notify/same-tuple-is-noop",
                    test_same_tuple_is_noop);
    g_test_add_func("/net-listener/dispatch/same-aio-tuple-is-noop",
                    test_same_aio_tuple_is_noop);
    tu_add_modes("/net-listener/wait-client/with-async",
                 test_wait_client_with_async);
    g_test_add_func("/net-listener/wait-client/dead-listener",
                    test_wait_client_dead_listener);
    return g_test_run();
}
