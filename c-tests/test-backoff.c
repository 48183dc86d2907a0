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
#include "io/net-listener.h"
#include "test-util.h"

typedef struct {
    struct rlimit old;
    GArray *fds;
} Exhaustion;

/* Returns false if this process cannot be run out of fds faithfully. */
static bool exhaust_fds(Exhaustion *ex)
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
    return true;
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

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    module_call_init(MODULE_INIT_QOM);
    qemu_init_main_loop(&error_abort);

    g_test_add_data_func("/net-listener/backoff/out-of-fds/glib",
                         GINT_TO_POINTER(TU_MODE_GLIB), test_backoff);
    g_test_add_data_func("/net-listener/backoff/out-of-fds/aio",
                         GINT_TO_POINTER(TU_MODE_AIO), test_backoff);
    return g_test_run();
}
