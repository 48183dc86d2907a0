/*
 * QIONetListener: lifetime of the listener, its sockets and the accepted
 * clients: disconnect, the last unref closing every fd (with and without
 * a callback), serving on after the caller's last unref, references,
 * g_autoptr.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "test-util.h"

/* Iterates both loops: whatever releases the listener can run. */
static void iterate_both(void)
{
    g_main_context_iteration(NULL, FALSE);
    aio_poll(qemu_get_aio_context(), false);
    tu_nap();
}

/*
 * Runs one full cycle (open, callback, accept, release) so that anything
 * the host or the listener creates once per process exists before a test
 * counts fds.
 */
static void warm_up(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    TuAccepts acc;

    tu_accepts_init(&acc);
    qio_net_listener_set_client_func(listener, tu_accept_cb, &acc, NULL);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate_main());
    qio_net_listener_set_client_func(listener, NULL, NULL, NULL);
    qio_net_listener_set_client_aio_func(listener, tu_accept_cb, &acc, NULL);
    qio_net_listener_set_client_aio_func(listener, NULL, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(client));
    tu_accepts_destroy(&acc);
    tu_spin_main(5);
}

static void test_disconnect(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) addr = tu_unix_address(path, false);
    g_autoptr(SocketAddress) inet = tu_parse("127.0.0.1:0");
    QIONetListener *listener = qio_net_listener_new();
    QIOChannelSocket *probe;
    Error *err = NULL;
    TuAccepts acc;
    int fds;

    warm_up();
    tu_accepts_init(&acc);
    fds = tu_count_fds();
    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    g_assert_true(qio_net_listener_is_connected(listener));

    qio_net_listener_disconnect(listener);
    g_assert_false(qio_net_listener_is_connected(listener));
    qio_net_listener_disconnect(listener);
    g_assert_false(qio_net_listener_is_connected(listener));

    /* The sockets are closed while the listener lives on. */
    TU_WAIT_UNTIL(tu_count_fds() == fds, iterate_both());
    probe = qio_channel_socket_new();
    g_assert_cmpint(qio_channel_socket_connect_sync(probe, addr, &err),
                    ==, -1);
    g_assert_nonnull(err);
    error_free(err);
    object_unref(OBJECT(probe));
    tu_spin(mode, 10);
    g_assert_cmpint(tu_accepts_count(&acc), ==, 0);

    /* It can listen again, and the callback still set serves the new one. */
    g_assert_cmpint(qio_net_listener_open_sync(listener, inet, 5,
                                               &error_abort), ==, 0);
    g_assert_true(qio_net_listener_is_connected(listener));
    {
        size_t n = qio_net_listener_nsioc(listener);
        QIOChannelSocket *client = tu_connect_listener(listener, n - 1);

        TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));
        object_unref(OBJECT(client));
    }
    qio_net_listener_disconnect(listener);
    g_assert_false(qio_net_listener_is_connected(listener));

    /* Disconnected with a callback still set: the unref finalizes. */
    object_unref(OBJECT(listener));
    tu_accepts_destroy(&acc);
    TU_WAIT_UNTIL(tu_count_fds() == fds, iterate_both());
    tu_rmdir_tmp(dir);
}

static void test_unref_closes_fds(void)
{
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) unix_addr = tu_unix_address(path, false);
    g_autoptr(SocketAddress) inet4 = tu_parse("127.0.0.1:0");
    g_autoptr(SocketAddress) inet6 = tu_parse("[::1]:0");
    QIONetListener *listener;
    size_t n = 2;
    int fds;

    warm_up();
    fds = tu_count_fds();
    listener = qio_net_listener_new();
    qio_net_listener_open_sync(listener, inet4, 5, &error_abort);
    qio_net_listener_open_sync(listener, unix_addr, 5, &error_abort);
    if (tu_have_ipv6()) {
        qio_net_listener_open_sync(listener, inet6, 5, &error_abort);
        n++;
    }
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, n);
    g_assert_cmpint(tu_count_fds(), ==, fds + n);

    object_unref(OBJECT(listener));
    g_assert_cmpint(tu_count_fds(), ==, fds);
    /* The unix socket file goes with its socket, as in QEMU. */
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    tu_rmdir_tmp(dir);
}

static void test_unref_after_clearing_callback(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    QIONetListener *listener;
    QIOChannelSocket *client;
    TuAccepts acc;
    int fds;

    warm_up();
    tu_accepts_init(&acc);
    fds = tu_count_fds();
    listener = tu_new_inet_listener();
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));

    tu_set_cb(listener, mode, NULL, NULL);
    object_unref(OBJECT(listener));
    object_unref(OBJECT(client));
    tu_accepts_destroy(&acc);
    TU_WAIT_UNTIL(tu_count_fds() == fds, iterate_both());
}

/*
 * As upstream: with a callback set, the watches keep the listener alive
 * after the caller's last unref; it serves until the callback clears
 * itself, and only then goes away.
 */
static void test_serves_after_last_unref(gconstpointer opaque)
{
    TuOnce od = { .mode = GPOINTER_TO_INT(opaque) };
    QIONetListener *listener;
    QIOChannelSocket *client;
    int fds;

    warm_up();
    tu_accepts_init(&od.acc);
    fds = tu_count_fds();
    listener = tu_new_inet_listener();
    if (od.mode == TU_MODE_GLIB) {
        qio_net_listener_set_client_func(listener, tu_accept_once_cb, &od,
                                         tu_accepts_notify);
    } else {
        qio_net_listener_set_client_aio_func(listener, tu_accept_once_cb, &od,
                                             NULL);
    }
    client = tu_connect_listener(listener, 0);
    object_unref(OBJECT(listener));

    TU_WAIT_UNTIL(tu_accepts_count(&od.acc) == 1, tu_iterate(od.mode));
    g_assert_true(od.acc.last_listener == listener);
    if (od.mode == TU_MODE_GLIB) {
        TU_WAIT_UNTIL(tu_accepts_notified(&od.acc) == 1, iterate_both());
    }
    object_unref(OBJECT(client));
    tu_accepts_destroy(&od.acc);
    TU_WAIT_UNTIL(tu_count_fds() == fds, iterate_both());
    tu_spin_main(10);
    g_assert_cmpint(od.acc.notified, ==, od.mode == TU_MODE_GLIB ? 1 : 0);
}

static void drop_client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                           gpointer data)
{
    int *count = data;

    g_assert_nonnull(listener);
    g_assert_nonnull(sioc);
    (*count)++;
}

static QIOChannelSocket *kept;

static void keep_client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                           gpointer data)
{
    int *count = data;

    g_assert_nonnull(listener);
    kept = QIO_CHANNEL_SOCKET(object_ref(OBJECT(sioc)));
    (*count)++;
}

/* The listener drops its reference to the client after the callback. */
static void test_client_reference(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *client;
    int count = 0;

    /* Not kept by the callback: closed, the client sees end of file. */
    tu_set_cb(listener, mode, drop_client_cb, &count);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(count == 1, tu_iterate(mode));
    g_assert_true(tu_wait_eof(client));
    object_unref(OBJECT(client));

    /* Kept: the callback's reference is the only one left. */
    count = 0;
    tu_set_cb(listener, mode, keep_client_cb, &count);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(count == 1, tu_iterate(mode));
    TU_WAIT_UNTIL(OBJECT(kept)->ref == 1, tu_iterate(mode));
    tu_write_str(kept, "still open\n");
    {
        char buf[16] = "";
        g_assert_cmpuint(tu_read_bounded(client, buf, 11), ==, 11);
        g_assert_cmpstr(buf, ==, "still open\n");
    }
    object_unref(OBJECT(kept));
    kept = NULL;
    g_assert_true(tu_wait_eof(client));
    object_unref(OBJECT(client));

    tu_set_cb(listener, mode, NULL, NULL);
    object_unref(OBJECT(listener));
}

static void test_listener_refs(void)
{
    QIONetListener *listener;
    QIOChannelSocket *client, *server;
    TuWatchdog *wd;
    int fds;

    warm_up();
    fds = tu_count_fds();
    listener = tu_new_inet_listener();
    g_assert_true(object_ref(OBJECT(listener)) == OBJECT(listener));
    object_unref(OBJECT(listener));

    /* Still alive and listening with the second reference. */
    g_assert_true(qio_net_listener_is_connected(listener));
    client = tu_connect_listener(listener, 0);
    wd = tu_watchdog_start("qio_net_listener_wait_client", 10);
    server = qio_net_listener_wait_client(listener);
    tu_watchdog_stop(wd);
    g_assert_nonnull(server);
    /* The caller owns the returned client. */
    g_assert_cmpuint(OBJECT(server)->ref, ==, 1);
    object_unref(OBJECT(server));
    object_unref(OBJECT(client));

    object_unref(OBJECT(listener));
    g_assert_cmpint(tu_count_fds(), ==, fds);
}

static void test_autoptr(void)
{
    int fds;

    warm_up();
    fds = tu_count_fds();
    {
        g_autoptr(QIONetListener) listener = qio_net_listener_new();
        g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");

        qio_net_listener_open_sync(listener, addr, 1, &error_abort);
        g_assert_cmpint(tu_count_fds(), ==, fds + 1);
    }
    g_assert_cmpint(tu_count_fds(), ==, fds);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    tu_add_modes("/net-listener/lifecycle/disconnect", test_disconnect);
    g_test_add_func("/net-listener/lifecycle/unref-closes-fds",
                    test_unref_closes_fds);
    tu_add_modes("/net-listener/lifecycle/unref-after-clear",
                 test_unref_after_clearing_callback);
    tu_add_modes("/net-listener/lifecycle/serves-after-unref",
                 test_serves_after_last_unref);
    tu_add_modes("/net-listener/lifecycle/client-reference",
                 test_client_reference);
    g_test_add_func("/net-listener/lifecycle/listener-refs",
                    test_listener_refs);
    g_test_add_func("/net-listener/lifecycle/autoptr", test_autoptr);
    return g_test_run();
}
