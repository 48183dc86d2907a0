/*
 * The listener's counters, read-only QOM properties beyond QEMU's API:
 * accepted, accept-errors-resource, accept-errors-other, backoffs,
 * wakeups, max-batch (the out-of-fds ones are checked in test-backoff).
 * Through them, that clients one at a time are served one per wake-up
 * and that a burst after them is batched again.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qom/object.h"
#include "io/net-listener.h"
#include "test-util.h"

#define BURST 40

static uint64_t counter(QIONetListener *listener, const char *name)
{
    return object_property_get_uint(OBJECT(listener), name, &error_abort);
}

/* Clears, disconnects and drops the listener, then the burst's clients. */
static void finish(QIONetListener *listener, TuMode mode,
                   QIOChannelSocket **clients, TuAccepts *acc)
{
    tu_set_cb(listener, mode, NULL, NULL);
    qio_net_listener_disconnect(listener);
    tu_spin(mode, 5);
    object_unref(OBJECT(listener));
    for (int i = 0; i < BURST; i++) {
        object_unref(OBJECT(clients[i]));
    }
    tu_accepts_destroy(acc);
}

static void test_counters(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIONetListener *listener = qio_net_listener_new();
    QIOChannelSocket *clients[BURST];
    const char *names[] = {
        "accepted", "accept-errors-resource", "accept-errors-other",
        "backoffs", "wakeups", "max-batch",
    };
    Error *err = NULL;
    TuAccepts acc;

    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        g_assert_cmpuint(counter(listener, names[i]), ==, 0);
    }
    tu_accepts_init(&acc);
    qio_net_listener_open_sync(listener, addr, BURST, &error_abort);
    /* A burst queued before the loop runs: batches of at most 32. */
    for (int i = 0; i < BURST; i++) {
        clients[i] = tu_connect_listener(listener, 0);
    }
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == BURST, tu_iterate(mode));

    g_assert_cmpuint(counter(listener, "accepted"), ==, BURST);
    g_assert_cmpuint(counter(listener, "max-batch"), >=, 2);
    g_assert_cmpuint(counter(listener, "max-batch"), <=, 32);
    g_assert_cmpuint(counter(listener, "wakeups"), >=, 2);   /* 40 > 32 */
    g_assert_cmpuint(counter(listener, "wakeups"), <=, BURST);
    g_assert_cmpuint(counter(listener, "backoffs"), ==, 0);
    g_assert_cmpuint(counter(listener, "accept-errors-resource"), ==, 0);

    /* Read-only, and only these names. */
    object_property_set_uint(OBJECT(listener), "accepted", 7, &err);
    g_assert_nonnull(err);
    error_free(err);
    err = NULL;
    g_assert_cmpuint(counter(listener, "accepted"), ==, BURST);
    object_property_get_uint(OBJECT(listener), "no-such-counter", &err);
    g_assert_nonnull(err);
    error_free(err);

    finish(listener, mode, clients, &acc);
}

/*
 * Clients one at a time put the socket in single mode (no look for a
 * second client after the first); a burst queued after them is still
 * served in batches: the loop comes straight back to the socket, so the
 * listener looks again (core/src/listener/accept.rs, BatchHint).
 */
static void test_single_then_burst(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIONetListener *listener = qio_net_listener_new();
    QIOChannelSocket *clients[BURST];
    enum { SINGLES = 5 };
    uint64_t wakeups;
    TuAccepts acc;

    tu_accepts_init(&acc);
    qio_net_listener_open_sync(listener, addr, BURST, &error_abort);
    tu_set_cb(listener, mode, tu_accept_cb, &acc);
    for (int i = 0; i < SINGLES; i++) {
        QIOChannelSocket *c = tu_connect_listener(listener, 0);

        TU_WAIT_UNTIL(tu_accepts_count(&acc) == i + 1, tu_iterate(mode));
        object_unref(OBJECT(c));
        g_usleep(1000);
    }
    g_assert_cmpuint(counter(listener, "wakeups"), ==, SINGLES);
    g_assert_cmpuint(counter(listener, "max-batch"), ==, 1);

    for (int i = 0; i < BURST; i++) {
        clients[i] = tu_connect_listener(listener, 0);
    }
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == SINGLES + BURST, tu_iterate(mode));
    wakeups = counter(listener, "wakeups") - SINGLES;
    g_test_message("%d queued clients after %d single ones: %" PRIu64
                   " wake-ups, largest batch %" PRIu64, BURST, SINGLES,
                   wakeups, counter(listener, "max-batch"));
    /*
     * Ideally 3 (one client, then 32, then the rest): the look resumes
     * once two wake-ups come within BURST_GAP_NS.  That is a matter of
     * timing (a loaded machine, valgrind or ASan may never see it, and a
     * burst is then served one client per wake-up, as upstream does), so
     * only what does not depend on it is asserted: every client is
     * delivered, in at most one wake-up each.  The resumption itself is
     * checked deterministically by BatchHint's unit tests (a fake clock);
     * the figure here is for the reader.
     */
    g_assert_cmpuint(wakeups, <=, BURST);

    finish(listener, mode, clients, &acc);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    tu_add_modes("/net-listener/counters", test_counters);
    tu_add_modes("/net-listener/single-then-burst", test_single_then_burst);
    return g_test_run();
}
