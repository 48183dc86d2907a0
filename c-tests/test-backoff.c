/*
 * Out of file descriptors with clients queued: the listener must not spin
 * on a socket that stays readable, and must lose none of the queued
 * clients once descriptors are free again.
 *
 * The process lowers its own RLIMIT_NOFILE and fills every free fd below
 * it, so accept() fails with EMFILE; it restores both afterwards.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <sys/resource.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qom/object.h"
#include "io/net-listener.h"
#include "test-util.h"

typedef struct {
    struct rlimit old;
    GArray *fds;
} Exhaustion;

/*
 * Returns false if this process cannot be run out of fds faithfully.
 * Leaves @spare descriptors free (for what the code under test opens
 * before it accepts).
 */
static bool exhaust_fds_but(Exhaustion *ex, int spare)
{
    GDir *dir = g_dir_open("/proc/self/fd", 0, NULL);
    const char *name;
    int highest = 0;
    struct rlimit low;

    g_assert_nonnull(dir);
    while ((name = g_dir_read_name(dir))) {
        highest = MAX(highest, atoi(name));
    }
    /* Closed before filling, or its fd would be the free slot. */
    g_dir_close(dir);
    g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &ex->old), ==, 0);
    low = ex->old;
    low.rlim_cur = highest + 16;
    if (setrlimit(RLIMIT_NOFILE, &low) < 0) {
        /*
         * valgrind refuses (it keeps fds of its own above the limit), and
         * under it an accept() beyond its limit is done by the kernel and
         * then closed, losing the client: nothing to measure there.
         */
        return false;
    }
    ex->fds = g_array_new(FALSE, FALSE, sizeof(int));
    for (;;) {
        int fd = dup(0);
        if (fd < 0) {
            g_assert_cmpint(errno, ==, EMFILE);
            break;
        }
        g_array_append_val(ex->fds, fd);
    }
    for (; spare > 0 && ex->fds->len; spare--) {
        close(g_array_index(ex->fds, int, ex->fds->len - 1));
        g_array_set_size(ex->fds, ex->fds->len - 1);
    }
    return true;
}

static bool exhaust_fds(Exhaustion *ex)
{
    return exhaust_fds_but(ex, 0);
}

/* A listener counter (a read-only QOM property). */
static uint64_t counter(QIONetListener *listener, const char *name)
{
    return object_property_get_uint(OBJECT(listener), name, &error_abort);
}

static void restore_fds(Exhaustion *ex)
{
    for (guint i = 0; i < ex->fds->len; i++) {
        close(g_array_index(ex->fds, int, i));
    }
    g_array_free(ex->fds, TRUE);
    g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &ex->old), ==, 0);
}

/* One non-blocking round of the loop that dispatches @mode's watches. */
static bool dispatch_once(TuMode mode)
{
    if (mode == TU_MODE_AIO) {
        return aio_poll(qemu_get_aio_context(), false);
    }
    return g_main_context_iteration(NULL, FALSE);
}

static void test_backoff(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIONetListener *listener = qio_net_listener_new();
    QIOChannelSocket *clients[4];
    Exhaustion ex;
    TuAccepts acc;
    int dispatches = 0;

    tu_accepts_init(&acc);
    qio_net_listener_open_sync(listener, addr, 16, &error_abort);
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    clients[0] = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, tu_iterate(mode));

    for (int i = 1; i < 4; i++) {
        clients[i] = tu_connect_listener(listener, 0);
    }
    if (!exhaust_fds(&ex)) {
        g_test_skip("cannot lower RLIMIT_NOFILE here (valgrind)");
        goto out;
    }
    /*
     * A watch that retries at once dispatches on every round; one that
     * backs off dispatches once, then waits for its timer.
     */
    for (int i = 0; i < 2000; i++) {
        dispatches += dispatch_once(mode);
    }
    g_assert_cmpint(tu_accepts_count(&acc), ==, 1);
    restore_fds(&ex);
    g_test_message("%d dispatches in 2000 rounds while out of fds", dispatches);
    g_assert_cmpint(dispatches, <, 20);

    /* After the back-off every queued client is accepted. */
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 4, tu_iterate(mode));
    /* Each resource failure started a pause; none was a busy retry. */
    g_assert_cmpuint(counter(listener, "backoffs"), >=, 1);
    g_assert_cmpuint(counter(listener, "accept-errors-resource"), ==,
                     counter(listener, "backoffs"));
    g_assert_cmpuint(counter(listener, "accepted"), ==, 4);

out:
    tu_set_cb(listener, mode, NULL, NULL);
    qio_net_listener_disconnect(listener);
    tu_spin(mode, 5);
    object_unref(OBJECT(listener));
    for (int i = 0; i < 4; i++) {
        object_unref(OBJECT(clients[i]));
    }
    tu_accepts_destroy(&acc);
}

typedef struct {
    QIONetListener *listener;
    Exhaustion ex;
} WaitBackoff;

/* Frees the fds once wait_client has backed off twice (bounded wait). */
static gpointer release_after_backoffs(gpointer opaque)
{
    WaitBackoff *wb = opaque;
    gint64 deadline = g_get_monotonic_time() + TU_WAIT_US;

    while (counter(wb->listener, "backoffs") < 2 &&
           g_get_monotonic_time() < deadline) {
        g_usleep(1000);
    }
    restore_fds(&wb->ex);
    return NULL;
}

/*
 * wait_client out of fds with a client queued: it pauses (a timer in its
 * private context) instead of spinning, then returns that client.
 */
static void test_wait_client_backoff(void)
{
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIONetListener *listener = qio_net_listener_new();
    WaitBackoff wb = { .listener = listener };
    QIOChannelSocket *client, *sioc;
    GThread *thread;
    TuWatchdog *wd;

    qio_net_listener_open_sync(listener, addr, 16, &error_abort);
    client = tu_connect_listener(listener, 0);
    /* One spare fd: wait_client's private GMainContext opens an eventfd. */
    if (!exhaust_fds_but(&wb.ex, 1)) {
        g_test_skip("cannot lower RLIMIT_NOFILE here (valgrind)");
        object_unref(OBJECT(client));
        object_unref(OBJECT(listener));
        return;
    }
    thread = g_thread_new("release-fds", release_after_backoffs, &wb);
    wd = tu_watchdog_start("wait_client out of fds", 60);
    sioc = qio_net_listener_wait_client(listener);
    tu_watchdog_stop(wd);
    g_thread_join(thread);

    g_assert_nonnull(sioc);
    g_assert_cmpuint(counter(listener, "backoffs"), >=, 2);
    g_assert_cmpuint(counter(listener, "accept-errors-resource"), ==,
                     counter(listener, "backoffs"));
    g_assert_cmpuint(counter(listener, "accepted"), ==, 1);
    object_unref(OBJECT(sioc));
    object_unref(OBJECT(client));
    object_unref(OBJECT(listener));
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    tu_add_modes("/net-listener/backoff/out-of-fds", test_backoff);
    g_test_add_func("/net-listener/backoff/out-of-fds/wait-client",
                    test_wait_client_backoff);
    return g_test_run();
}
