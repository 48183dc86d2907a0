/*
 * QIONetListener: opening sockets (open_sync, add), enumerating them
 * (nsioc, sioc, get_local_address), naming them, and bad input.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/dns-resolver.h"
#include "io/net-listener.h"
#include "test-util.h"

/* A client connects and is handed over by wait_client: proves listening. */
static void check_accepts_on(QIONetListener *listener, size_t n)
{
    QIOChannelSocket *client = tu_connect_listener(listener, n);
    QIOChannelSocket *server;
    TuWatchdog *wd = tu_watchdog_start("qio_net_listener_wait_client", 10);

    server = qio_net_listener_wait_client(listener);
    tu_watchdog_stop(wd);
    g_assert_nonnull(server);
    tu_write_str(client, "ping");
    {
        char buf[5] = "";
        g_assert_cmpuint(tu_read_bounded(server, buf, 4), ==, 4);
        g_assert_cmpstr(buf, ==, "ping");
    }
    object_unref(OBJECT(server));
    object_unref(OBJECT(client));
}

static void test_new_is_empty(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Error *err = NULL;

    g_assert_nonnull(listener);
    g_assert_nonnull(object_dynamic_cast(OBJECT(listener),
                                         TYPE_QIO_NET_LISTENER));
    g_assert_cmpstr(object_get_typename(OBJECT(listener)), ==,
                    "qio-net-listener");
    g_assert_false(qio_net_listener_is_connected(listener));
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 0);
    g_assert_null(qio_net_listener_sioc(listener, 0));
    g_assert_null(qio_net_listener_get_local_address(listener, 0, &err));
    g_assert_nonnull(err);
    g_assert_cmpstr(error_get_pretty(err), !=, "");
    error_free(err);
    object_unref(OBJECT(listener));
}

static void test_open_inet_port0(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    g_autoptr(SocketAddress) local = NULL;

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    g_assert_true(qio_net_listener_is_connected(listener));
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 1);
    g_assert_nonnull(qio_net_listener_sioc(listener, 0));

    local = qio_net_listener_get_local_address(listener, 0, &error_abort);
    g_assert_cmpint(local->type, ==, SOCKET_ADDRESS_TYPE_INET);
    g_assert_cmpstr(local->u.inet.host, ==, "127.0.0.1");
    g_assert_cmpint(tu_inet_port(local), >, 0);
    g_assert_cmpint(tu_inet_port(local), ==,
                    tu_local_port(qio_net_listener_sioc(listener, 0)));

    check_accepts_on(listener, 0);
    object_unref(OBJECT(listener));
}

static void test_open_localhost(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("localhost:0");
    SocketAddress **resolved = NULL;
    size_t nresolved = 0;
    size_t n;

    g_assert_cmpint(qio_dns_resolver_lookup_sync(
                        qio_dns_resolver_get_instance(), addr,
                        &nresolved, &resolved, &error_abort), ==, 0);
    g_assert_cmpuint(nresolved, >=, 1);

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    n = qio_net_listener_nsioc(listener);
    g_test_message("localhost resolves to %zu addresses, listening on %zu",
                   nresolved, n);
    /* One socket per resolved address (some family may be unavailable). */
    g_assert_cmpuint(n, >=, 1);
    g_assert_cmpuint(n, <=, nresolved);

    for (size_t i = 0; i < n; i++) {
        g_autoptr(SocketAddress) local =
            qio_net_listener_get_local_address(listener, i, &error_abort);
        bool found = false;

        g_assert_cmpint(local->type, ==, SOCKET_ADDRESS_TYPE_INET);
        g_assert_cmpint(tu_inet_port(local), >, 0);
        for (size_t j = 0; j < nresolved; j++) {
            if (g_str_equal(resolved[j]->u.inet.host, local->u.inet.host)) {
                found = true;
            }
        }
        g_assert_true(found);
        check_accepts_on(listener, i);
    }

    for (size_t j = 0; j < nresolved; j++) {
        qapi_free_SocketAddress(resolved[j]);
    }
    g_free(resolved);
    object_unref(OBJECT(listener));
}

static void test_open_unix_path(void)
{
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) addr = tu_unix_address(path, false);
    g_autoptr(SocketAddress) local = NULL;
    QIONetListener *listener = qio_net_listener_new();

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 1,
                                               &error_abort), ==, 0);
    g_assert_true(qio_net_listener_is_connected(listener));
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 1);
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));

    local = qio_net_listener_get_local_address(listener, 0, &error_abort);
    g_assert_cmpint(local->type, ==, SOCKET_ADDRESS_TYPE_UNIX);
    g_assert_cmpstr(local->u.q_unix.path, ==, path);

    check_accepts_on(listener, 0);
    object_unref(OBJECT(listener));
    tu_rmdir_tmp(dir);
}

static void test_open_unix_abstract(void)
{
    g_autofree char *name = g_strdup_printf("qio-net-listener-test-%d-%u",
                                            (int)getpid(), g_random_int());
    g_autoptr(SocketAddress) addr = tu_unix_address(name, true);
    QIONetListener *listener = qio_net_listener_new();
    QIOChannelSocket *client;
    QIOChannelSocket *server;
    TuWatchdog *wd;

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 1,
                                               &error_abort), ==, 0);
    g_assert_true(qio_net_listener_is_connected(listener));
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 1);
    /* Abstract: nothing appears in the file system. */
    g_assert_false(g_file_test(name, G_FILE_TEST_EXISTS));

    client = tu_connect(addr);
    wd = tu_watchdog_start("qio_net_listener_wait_client", 10);
    server = qio_net_listener_wait_client(listener);
    tu_watchdog_stop(wd);
    g_assert_nonnull(server);
    object_unref(OBJECT(server));
    object_unref(OBJECT(client));
    object_unref(OBJECT(listener));
}

static void test_open_several(void)
{
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) inet = tu_parse("127.0.0.1:0");
    g_autoptr(SocketAddress) unix_addr = tu_unix_address(path, false);
    QIONetListener *listener = qio_net_listener_new();
    int ports[3];

    for (size_t i = 0; i < 3; i++) {
        g_autoptr(SocketAddress) local = NULL;

        g_assert_cmpint(qio_net_listener_open_sync(listener, inet, 5,
                                                   &error_abort), ==, 0);
        g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, i + 1);
        local = qio_net_listener_get_local_address(listener, i,
                                                   &error_abort);
        ports[i] = tu_inet_port(local);
        for (size_t j = 0; j < i; j++) {
            g_assert_cmpint(ports[j], !=, ports[i]);
        }
    }
    g_assert_cmpint(qio_net_listener_open_sync(listener, unix_addr, 5,
                                               &error_abort), ==, 0);
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 4);

    /* Earlier sockets keep their addresses as more are added. */
    for (size_t i = 0; i < 3; i++) {
        g_autoptr(SocketAddress) local =
            qio_net_listener_get_local_address(listener, i, &error_abort);
        g_assert_cmpint(tu_inet_port(local), ==, ports[i]);
    }
    {
        g_autoptr(SocketAddress) local =
            qio_net_listener_get_local_address(listener, 3, &error_abort);
        g_assert_cmpint(local->type, ==, SOCKET_ADDRESS_TYPE_UNIX);
    }
    for (size_t i = 0; i < 4; i++) {
        check_accepts_on(listener, i);
    }
    g_assert_null(qio_net_listener_sioc(listener, 4));
    object_unref(OBJECT(listener));
    tu_rmdir_tmp(dir);
}

static void test_add_preopened(void)
{
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIOChannelSocket *sioc = qio_channel_socket_new();
    QIONetListener *listener = qio_net_listener_new();
    int fds_before_listen;

    fds_before_listen = tu_count_fds();
    g_assert_cmpint(qio_channel_socket_listen_sync(sioc, addr, 5,
                                                   &error_abort), ==, 0);
    g_assert_cmpuint(OBJECT(sioc)->ref, ==, 1);

    qio_net_listener_add(listener, sioc);
    g_assert_true(qio_net_listener_is_connected(listener));
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 1);
    g_assert_true(qio_net_listener_sioc(listener, 0) == sioc);
    /* The listener holds its own reference... */
    g_assert_cmpuint(OBJECT(sioc)->ref, >=, 2);
    /* ...so the caller may drop its one. */
    object_unref(OBJECT(sioc));
    g_assert_true(qio_net_listener_sioc(listener, 0) == sioc);

    {
        g_autoptr(SocketAddress) local =
            qio_net_listener_get_local_address(listener, 0, &error_abort);
        g_assert_cmpint(local->type, ==, SOCKET_ADDRESS_TYPE_INET);
    }
    check_accepts_on(listener, 0);

    /* The last reference to the listener releases the channel too. */
    object_unref(OBJECT(listener));
    g_assert_cmpint(tu_count_fds(), ==, fds_before_listen);
}

static void test_out_of_range(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    Error *err = NULL;

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 1);
    g_assert_nonnull(qio_net_listener_sioc(listener, 0));
    g_assert_null(qio_net_listener_sioc(listener, 1));
    g_assert_null(qio_net_listener_sioc(listener, SIZE_MAX));

    g_assert_null(qio_net_listener_get_local_address(listener, 1, &err));
    g_assert_nonnull(err);
    g_assert_cmpstr(error_get_pretty(err), !=, "");
    error_free(err);
    err = NULL;
    g_assert_null(qio_net_listener_get_local_address(listener, SIZE_MAX,
                                                     &err));
    g_assert_nonnull(err);
    error_free(err);
    /* A NULL errp is allowed. */
    g_assert_null(qio_net_listener_get_local_address(listener, 7, NULL));

    object_unref(OBJECT(listener));
}

static void test_sioc_is_borrowed(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIOChannelSocket *sioc;
    uint32_t ref;

    qio_net_listener_open_sync(listener, addr, 5, &error_abort);
    sioc = qio_net_listener_sioc(listener, 0);
    ref = OBJECT(sioc)->ref;
    g_assert_true(qio_net_listener_sioc(listener, 0) == sioc);
    g_assert_cmpuint(OBJECT(sioc)->ref, ==, ref);
    object_unref(OBJECT(listener));
}

static void test_set_name(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    char *name = g_strdup("first-name");

    qio_net_listener_set_name(listener, name);
    /* The listener copies the name. */
    memset(name, 'x', strlen(name));
    g_free(name);

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    g_assert_cmpstr(QIO_CHANNEL(qio_net_listener_sioc(listener, 0))->name,
                    ==, "first-name");

    qio_net_listener_set_name(listener, "second-name");
    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 5,
                                               &error_abort), ==, 0);
    g_assert_cmpstr(QIO_CHANNEL(qio_net_listener_sioc(listener, 1))->name,
                    ==, "second-name");
    object_unref(OBJECT(listener));
}

/*
 * Bad input: open_sync fails with -1 and an Error naming the address,
 * leaks no fd, and leaves the listener as it was and usable.
 */
static void check_open_fails(SocketAddress *bad, const char *mention)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) good = tu_parse("127.0.0.1:0");
    Error *err = NULL;
    int fds;

    /* Once on an empty listener, once on one that already listens. */
    for (int round = 0; round < 2; round++) {
        size_t nsioc = qio_net_listener_nsioc(listener);

        fds = tu_count_fds();
        g_assert_cmpint(qio_net_listener_open_sync(listener, bad, 5, &err),
                        ==, -1);
        tu_assert_error_mentions(&err, mention);
        g_assert_cmpint(tu_count_fds(), ==, fds);
        g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, nsioc);
        g_assert_true(qio_net_listener_is_connected(listener) == (round > 0));

        g_assert_cmpint(qio_net_listener_open_sync(listener, good, 5,
                                                   &error_abort), ==, 0);
        g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, nsioc + 1);
        g_assert_true(qio_net_listener_is_connected(listener));
    }
    /* A NULL errp is allowed. */
    g_assert_cmpint(qio_net_listener_open_sync(listener, bad, 5, NULL),
                    ==, -1);
    check_accepts_on(listener, 1);
    object_unref(OBJECT(listener));
}

static void test_bad_unknown_host(void)
{
    g_autoptr(SocketAddress) bad = tu_parse("no-such-host.invalid:0");

    check_open_fails(bad, "no-such-host.invalid");
}

static void test_bad_port_in_use(void)
{
    QIONetListener *first = qio_net_listener_new();
    g_autoptr(SocketAddress) any = tu_parse("127.0.0.1:0");
    g_autoptr(SocketAddress) local = NULL;
    g_autoptr(SocketAddress) bad = NULL;
    g_autofree char *str = NULL;

    qio_net_listener_open_sync(first, any, 5, &error_abort);
    local = qio_net_listener_get_local_address(first, 0, &error_abort);
    str = g_strdup_printf("127.0.0.1:%s", local->u.inet.port);
    bad = tu_parse(str);
    check_open_fails(bad, local->u.inet.port);
    object_unref(OBJECT(first));
}

/* An inet address filled in by hand, as QEMU code builds one. */
static SocketAddress *inet_address(const char *host, const char *port)
{
    SocketAddress *addr = g_new0(SocketAddress, 1);

    addr->type = SOCKET_ADDRESS_TYPE_INET;
    addr->u.inet.host = g_strdup(host);
    addr->u.inet.port = g_strdup(port);
    return addr;
}

/*
 * A port above 65535: getaddrinfo() takes "99999" modulo 65536, so a
 * resolver that hands it on listens on port 34463 (QEMU's does, and so
 * does upstream's listener).  Ours rejects it before resolving, so the
 * case holds on the compat host and inside QEMU alike.
 */
static void test_bad_port_out_of_range(void)
{
    static const char *const ports[] = { "99999", "65536", "4294967296" };

    for (size_t i = 0; i < G_N_ELEMENTS(ports); i++) {
        g_autofree char *msg = g_strdup_printf("port %s out of range",
                                               ports[i]);
        g_autoptr(SocketAddress) bad = inet_address("127.0.0.1", ports[i]);
        QIONetListener *listener = qio_net_listener_new();
        Error *err = NULL;

        /*
         * The listener checks the port itself: QEMU's own resolver passes
         * it to getaddrinfo(), which wraps it (99999 would listen on
         * 34463), so this holds inside QEMU too.
         */
        g_assert_cmpint(qio_net_listener_open_sync(listener, bad, 5, &err),
                        ==, -1);
        g_assert_nonnull(err);
        g_assert_cmpstr(error_get_pretty(err), ==, msg);
        error_free(err);
        err = NULL;
        g_assert_false(qio_net_listener_is_connected(listener));
        g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 0);
        object_unref(OBJECT(listener));

#ifdef QEMU_COMPAT_HOST
        /* The compat host's own parser and sockets reject it as well. */
        g_autofree char *str = g_strdup_printf("127.0.0.1:%s", ports[i]);
        g_assert_null(socket_parse(str, &err));
        g_assert_nonnull(err);
        g_assert_cmpstr(error_get_pretty(err), ==, msg);
        error_free(err);
        check_open_fails(bad, ports[i]);
#endif
    }
}

/* A service name that getaddrinfo() does not know. */
static void test_bad_unknown_service(void)
{
    g_autoptr(SocketAddress) bad = tu_parse("127.0.0.1:no-such-service");

    check_open_fails(bad, "no-such-service");
}

static void test_bad_unix_path_too_long(void)
{
    char *dir = tu_make_tmpdir();
    g_autofree char *longname = g_strnfill(200, 'n');
    g_autofree char *path = g_build_filename(dir, longname, NULL);
    g_autoptr(SocketAddress) bad = tu_unix_address(path, false);

    check_open_fails(bad, path);
    tu_rmdir_tmp(dir);
}

static void test_bad_unix_missing_dir(void)
{
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "missing", "sock", NULL);
    g_autoptr(SocketAddress) bad = tu_unix_address(path, false);

    check_open_fails(bad, path);
    tu_rmdir_tmp(dir);
}

static void test_bad_fd_invalid(void)
{
    g_autoptr(SocketAddress) bad = tu_fd_address("999999");

    check_open_fails(bad, "999999");
}

/*
 * "fd:N" hands the fd over, as in QEMU (socket_get_fd): a non-socket fd is
 * rejected and closed, so nothing leaks and nothing else is closed.
 */
static void test_bad_fd_pipe(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) good = tu_parse("127.0.0.1:0");
    g_autoptr(SocketAddress) bad = NULL;
    g_autofree char *str = NULL;
    Error *err = NULL;
    struct stat st;
    int pipefd[2];
    int fds = tu_count_fds();

    g_assert_cmpint(pipe(pipefd), ==, 0);
    str = g_strdup_printf("%d", pipefd[0]);
    bad = tu_fd_address(str);
    g_assert_cmpint(qio_net_listener_open_sync(listener, bad, 5, &err), ==, -1);
    tu_assert_error_mentions(&err, str);
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 0);
    g_assert_false(qio_net_listener_is_connected(listener));
    /* The rejected fd was consumed; the other end of the pipe is intact. */
    g_assert_cmpint(fstat(pipefd[0], &st), ==, -1);
    g_assert_cmpint(fstat(pipefd[1], &st), ==, 0);
    close(pipefd[1]);
    g_assert_cmpint(tu_count_fds(), ==, fds);

    g_assert_cmpint(qio_net_listener_open_sync(listener, good, 5,
                                               &error_abort), ==, 0);
    check_accepts_on(listener, 0);
    object_unref(OBJECT(listener));
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    g_test_add_func("/net-listener/open/new-is-empty", test_new_is_empty);
    g_test_add_func("/net-listener/open/inet-port0", test_open_inet_port0);
    g_test_add_func("/net-listener/open/localhost", test_open_localhost);
    g_test_add_func("/net-listener/open/unix-path", test_open_unix_path);
    g_test_add_func("/net-listener/open/unix-abstract",
                    test_open_unix_abstract);
    g_test_add_func("/net-listener/open/several", test_open_several);
    g_test_add_func("/net-listener/open/add-preopened", test_add_preopened);
    g_test_add_func("/net-listener/open/out-of-range", test_out_of_range);
    g_test_add_func("/net-listener/open/sioc-is-borrowed",
                    test_sioc_is_borrowed);
    g_test_add_func("/net-listener/open/set-name", test_set_name);
    g_test_add_func("/net-listener/bad/unknown-host", test_bad_unknown_host);
    g_test_add_func("/net-listener/bad/port-in-use", test_bad_port_in_use);
    g_test_add_func("/net-listener/bad/port-out-of-range",
                    test_bad_port_out_of_range);
    g_test_add_func("/net-listener/bad/unknown-service",
                    test_bad_unknown_service);
    g_test_add_func("/net-listener/bad/unix-path-too-long",
                    test_bad_unix_path_too_long);
    g_test_add_func("/net-listener/bad/unix-missing-dir",
                    test_bad_unix_missing_dir);
    g_test_add_func("/net-listener/bad/fd-invalid", test_bad_fd_invalid);
    g_test_add_func("/net-listener/bad/fd-pipe", test_bad_fd_pipe);
    return g_test_run();
}
