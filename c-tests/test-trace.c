/*
 * Trace events on the compat host: the listener's events (QEMU 10.2's
 * qio_net_listener_watch / _unwatch / _callback, and ours: _batch,
 * _backoff, _release) go to GLib structured logging, domain
 * "qio-net-listener", level debug, with the event name in the field
 * QIO_NET_LISTENER_EVENT and QEMU's format string as the MESSAGE.
 * (Inside QEMU the same events fire QEMU's own trace functions instead.)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "io/net-listener.h"
#include "test-util.h"

static GMutex log_lock;
static GPtrArray *events;       /* "event: message" strings */

static GLogWriterOutput capture(GLogLevelFlags level, const GLogField *fields,
                                gsize n_fields, gpointer user_data)
{
    const char *domain = NULL, *event = NULL, *message = NULL;

    for (gsize i = 0; i < n_fields; i++) {
        if (g_str_equal(fields[i].key, "GLIB_DOMAIN")) {
            domain = fields[i].value;
        } else if (g_str_equal(fields[i].key, "QIO_NET_LISTENER_EVENT")) {
            event = fields[i].value;
        } else if (g_str_equal(fields[i].key, "MESSAGE")) {
            message = fields[i].value;
        }
    }
    if (g_strcmp0(domain, "qio-net-listener") != 0 || !event) {
        return g_log_writer_default(level, fields, n_fields, user_data);
    }
    g_assert_cmpint(level & G_LOG_LEVEL_MASK, ==, G_LOG_LEVEL_DEBUG);
    g_mutex_lock(&log_lock);
    g_ptr_array_add(events, g_strdup_printf("%s: %s", event, message));
    g_mutex_unlock(&log_lock);
    return G_LOG_WRITER_HANDLED;
}

static guint n_events(void)
{
    guint n;

    g_mutex_lock(&log_lock);
    n = events->len;
    g_mutex_unlock(&log_lock);
    return n;
}

/* Asserts the events since @from, by name, and returns the new count. */
static guint expect(guint from, const char *const *names, const char *ptr)
{
    guint i = from;

    g_mutex_lock(&log_lock);
    for (; *names; names++, i++) {
        g_assert_cmpuint(i, <, events->len);
        const char *ev = g_ptr_array_index(events, i);
        g_test_message("%s", ev);
        g_assert_true(g_str_has_prefix(ev, *names));
        g_assert_true(ev[strlen(*names)] == ':');
        /* Every message names the listener as QEMU's format does. */
        g_assert_nonnull(strstr(ev, ptr));
    }
    g_assert_cmpuint(i, ==, events->len);
    g_mutex_unlock(&log_lock);
    return i;
}

static void test_trace(gconstpointer opaque)
{
    TuMode mode = GPOINTER_TO_INT(opaque);
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");
    QIONetListener *l = qio_net_listener_new();
    TuAccepts acc;
    guint seen;
    g_autofree char *ptr = g_strdup_printf("Net listener=%p ", l);
    const char *watch_set[] = {
        "qio_net_listener_watch", NULL
    };
    const char *one_client[] = {
        "qio_net_listener_callback", "qio_net_listener_batch", NULL
    };
    const char *unwatch_release[] = {
        "qio_net_listener_unwatch", "qio_net_listener_release", NULL
    };

    tu_accepts_init(&acc);
    g_assert_cmpint(qio_net_listener_open_sync(l, addr, 4, &error_abort), ==, 0);
    seen = n_events();
    g_assert_cmpuint(seen, ==, 0);  /* no callback: add traces nothing */

    tu_set_cb(l, mode, tu_accept_cb, &acc);
    seen = expect(seen, watch_set, ptr);
    g_assert_nonnull(strstr(g_ptr_array_index(events, seen - 1),
                            " by set_client_func"));

    QIOChannelSocket *c = tu_connect_listener(l, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1 && n_events() >= seen + 2,
                  tu_iterate(mode));
    seen = expect(seen, one_client, ptr);
    g_assert_nonnull(strstr(g_ptr_array_index(events, seen - 1),
                            "accepted 1 clients in one wake-up"));

    /*
     * Then the watch is released once nothing can dispatch it: at once
     * for a GSource, in a bottom half for an AioContext fd handler.
     */
    if (mode == TU_MODE_GLIB) {
        tu_set_cb(l, mode, NULL, NULL);
    } else {
        qio_net_listener_disconnect(l);
    }
    TU_WAIT_UNTIL(n_events() >= seen + 2, tu_iterate(mode));
    g_assert_nonnull(strstr(g_ptr_array_index(events, seen),
                            mode == TU_MODE_GLIB ? " by set_client_func"
                                                 : " by disconnect"));
    seen = expect(seen, unwatch_release, ptr);

    object_unref(OBJECT(c));
    tu_accepts_destroy(&acc);
    object_unref(OBJECT(l));
    tu_spin(mode, 3);
    g_assert_cmpuint(n_events(), ==, seen);
    g_mutex_lock(&log_lock);
    g_ptr_array_set_size(events, 0);
    g_mutex_unlock(&log_lock);
}

int main(int argc, char **argv)
{
    /* Before the first event: the listener reads it once. */
    g_setenv("G_MESSAGES_DEBUG", "qio-net-listener", TRUE);
    events = g_ptr_array_new_with_free_func(g_free);
    g_log_set_writer_func(capture, NULL, NULL);
    tu_init(&argc, &argv);

    tu_add_modes("/trace", test_trace);
    int ret = g_test_run();
    g_ptr_array_unref(events);
    return ret;
}
