/*
 * QIONetListener: a GSource callback that iterates its own GMainContext
 * (a nested g_main_context_iteration) while another client is queued.
 *
 * DESIGN.md section 3.10: the GLib path does not pay GLib's block of the
 * dispatching source on every wake-up, yet keeps what that block gives
 * (what GLib's default and upstream's net-listener.c do):
 * - the callback is never re-entered with the next client from inside
 *   its own nested loop;
 * - the nested loop does not spin on the still-readable listening socket
 *   (counted: how many nested rounds dispatched something, and how many
 *   blocking rounds a 50 ms wait took);
 * - no client is lost: the queued one, and a later one, are delivered
 *   once the callback has returned.
 * On the default GMainContext (iterated by the test's thread) and on a
 * private one iterated by a thread.  Switching recursion on for the watch
 * without more (g_source_set_can_recurse alone) fails every case here.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <poll.h>

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "test-util.h"

/* How the first callback's nested loop runs. */
typedef enum {
    NEST_NONBLOCKING,           /* NONBLOCKING_ROUNDS non-blocking rounds */
    NEST_BLOCKING,              /* blocking rounds until a 50 ms timeout */
    NEST_THEN_CLEAR,            /* non-blocking, then clears the callback */
} Nest;

enum { NONBLOCKING_ROUNDS = 200, TIMEOUT_MS = 50 };

typedef struct {
    Nest nest;
    bool threaded;
    GMainContext *gctx;         /* NULL: the default context */
    TuLoopThread loop;
    QIONetListener *listener;
    TuAccepts acc;
    gint depth;                 /* callbacks running now */
    gint reentered;             /* callbacks that started inside another */
    gint nested_dispatches;     /* nested rounds that dispatched a source */
    gint nested_rounds;         /* blocking rounds of the nested wait */
    gint nested_done;
} Case;

static gboolean set_flag(gpointer opaque)
{
    g_atomic_int_set((gint *)opaque, 1);
    return G_SOURCE_REMOVE;
}

/* Connects a client to the listener and waits until it is queued. */
static QIOChannelSocket *queue_client(Case *c)
{
    QIOChannelSocket *client = tu_connect_listener(c->listener, 0);
    int fd = qio_net_listener_sioc(c->listener, 0)->fd;

    g_assert_true(tu_wait_fd(fd, POLLIN,
                             g_get_monotonic_time() + TU_WAIT_US));
    return client;
}

static void nested_loop(Case *c)
{
    GMainContext *ctx = c->gctx ? c->gctx : g_main_context_default();

    if (c->nest == NEST_BLOCKING) {
        gint fired = 0;
        GSource *t = g_timeout_source_new(TIMEOUT_MS);
        int rounds = 0;

        g_source_set_callback(t, set_flag, &fired, NULL);
        g_source_attach(t, ctx);
        g_source_unref(t);
        while (!g_atomic_int_get(&fired)) {
            g_main_context_iteration(ctx, TRUE);
            rounds++;
        }
        g_atomic_int_set(&c->nested_rounds, rounds);
    } else {
        int dispatched = 0;

        for (int i = 0; i < NONBLOCKING_ROUNDS; i++) {
            dispatched += g_main_context_iteration(ctx, FALSE);
        }
        g_atomic_int_set(&c->nested_dispatches, dispatched);
    }
}

static void client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer data)
{
    Case *c = data;

    if (g_atomic_int_add(&c->depth, 1) > 0) {
        g_atomic_int_inc(&c->reentered);
    }
    tu_accept_cb(listener, sioc, &c->acc);
    if (tu_accepts_count(&c->acc) == 1) {
        /* Client 2 waits in the backlog during the nested loop. */
        QIOChannelSocket *second = queue_client(c);

        nested_loop(c);
        if (c->nest == NEST_THEN_CLEAR) {
            qio_net_listener_set_client_func_full(listener, NULL, NULL,
                                                  NULL, c->gctx);
        }
        g_atomic_int_set(&c->nested_done, 1);
        object_unref(OBJECT(second));
    }
    g_atomic_int_add(&c->depth, -1);
}

static void set_cb(Case *c)
{
    qio_net_listener_set_client_func_full(c->listener, client_cb, c, NULL,
                                          c->gctx);
}

/* One step of a wait in the test's thread. */
static void step(Case *c)
{
    if (c->threaded) {
        tu_nap();
    } else {
        tu_iterate_main();
    }
}

/* Lets the loop run for a while: for checks that nothing happens. */
static void settle(Case *c)
{
    for (int i = 0; i < 20; i++) {
        if (c->threaded) {
            tu_nap();
        } else {
            g_main_context_iteration(NULL, FALSE);
        }
    }
}

static void run_case(Nest nest, bool threaded)
{
    Case c = { .nest = nest, .threaded = threaded };
    QIOChannelSocket *first, *third;

    tu_accepts_init(&c.acc);
    if (threaded) {
        c.gctx = g_main_context_new();
        tu_loop_thread_start(&c.loop, c.gctx, "recurse-loop");
    }
    c.listener = tu_new_inet_listener();
    set_cb(&c);

    first = tu_connect_listener(c.listener, 0);
    TU_WAIT_UNTIL(g_atomic_int_get(&c.nested_done), step(&c));

    if (nest == NEST_THEN_CLEAR) {
        /* Cleared: the queued client waits for the next callback. */
        settle(&c);
        g_assert_cmpint(tu_accepts_count(&c.acc), ==, 1);
        set_cb(&c);
    }
    /* The client queued during the nested loop, then a later one. */
    TU_WAIT_UNTIL(tu_accepts_count(&c.acc) == 2, step(&c));
    third = tu_connect_listener(c.listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&c.acc) == 3, step(&c));

    g_test_message("re-entered %d, nested rounds that dispatched %d/%d, "
                   "blocking rounds of a %d ms wait %d",
                   g_atomic_int_get(&c.reentered),
                   g_atomic_int_get(&c.nested_dispatches), NONBLOCKING_ROUNDS,
                   TIMEOUT_MS, g_atomic_int_get(&c.nested_rounds));
    g_assert_cmpint(g_atomic_int_get(&c.reentered), ==, 0);
    if (nest == NEST_BLOCKING) {
        /* The wake-up that parks the watch, the timeout, maybe one more. */
        g_assert_cmpint(g_atomic_int_get(&c.nested_rounds), <=, 5);
    } else {
        /* At most the round that parked the watch (and one stray). */
        g_assert_cmpint(g_atomic_int_get(&c.nested_dispatches), <=, 2);
    }

    qio_net_listener_disconnect(c.listener);
    object_unref(OBJECT(c.listener));
    if (threaded) {
        tu_loop_thread_stop(&c.loop);
        g_main_context_unref(c.gctx);
    }
    object_unref(OBJECT(first));
    object_unref(OBJECT(third));
    tu_accepts_destroy(&c.acc);
}

typedef struct {
    const char *path;
    Nest nest;
    bool threaded;
} CaseSpec;

static const CaseSpec cases[] = {
    { "/net-listener/recurse/nonblocking/default", NEST_NONBLOCKING, false },
    { "/net-listener/recurse/nonblocking/thread", NEST_NONBLOCKING, true },
    { "/net-listener/recurse/blocking/default", NEST_BLOCKING, false },
    { "/net-listener/recurse/blocking/thread", NEST_BLOCKING, true },
    { "/net-listener/recurse/clear/default", NEST_THEN_CLEAR, false },
    { "/net-listener/recurse/clear/thread", NEST_THEN_CLEAR, true },
};

static void test_case(gconstpointer data)
{
    const CaseSpec *spec = data;

    run_case(spec->nest, spec->threaded);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_test_add_data_func(cases[i].path, &cases[i], test_case);
    }
    return g_test_run();
}
