/*
 * See shim.h.  SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/aio.h"
#include "qemu/timer.h"
#include "shim.h"

__attribute__((visibility("hidden")))
QEMUTimer *qio_nl_aio_timer_new_ms(AioContext *ctx, QEMUTimerCB *cb,
                                   void *opaque)
{
    return aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_MS, cb, opaque);
}

__attribute__((visibility("hidden")))
int64_t qio_nl_clock_ms(void)
{
    return qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
}

__attribute__((visibility("hidden")))
void qio_nl_timer_free(QEMUTimer *ts)
{
    timer_free(ts);
}

#ifdef QIO_NL_QEMU_TRACE
#include "io/trace.h"

__attribute__((visibility("hidden")))
void qio_nl_trace_watch(void *listener, void *func, void *gctx, void *actx,
                        const char *by, bool enabled)
{
    if (enabled) {
        trace_qio_net_listener_watch(listener, func, gctx, actx, by);
    } else {
        trace_qio_net_listener_unwatch(listener, func, gctx, actx, by);
    }
}

__attribute__((visibility("hidden")))
void qio_nl_trace_callback(void *listener, void *func, void *gctx,
                           void *actx)
{
    trace_qio_net_listener_callback(listener, func, gctx, actx);
}

/* Ours: they fire only if qemu/trace-events was added to io/trace-events. */
__attribute__((visibility("hidden")))
void qio_nl_trace_batch(void *listener, unsigned accepted)
{
#ifdef TRACE_QIO_NET_LISTENER_BATCH_ENABLED
    trace_qio_net_listener_batch(listener, accepted);
#endif
}

__attribute__((visibility("hidden")))
void qio_nl_trace_backoff(void *listener, unsigned ms)
{
#ifdef TRACE_QIO_NET_LISTENER_BACKOFF_ENABLED
    trace_qio_net_listener_backoff(listener, ms);
#endif
}

__attribute__((visibility("hidden")))
void qio_nl_trace_release(void *listener)
{
#ifdef TRACE_QIO_NET_LISTENER_RELEASE_ENABLED
    trace_qio_net_listener_release(listener);
#endif
}

#else /* GLib structured logging */

#define QIO_NL_LOG_DOMAIN "qio-net-listener"

/*
 * Whether debug messages of our domain are shown, decided once (GLib reads
 * G_MESSAGES_DEBUG): a disabled event then costs one load, as in QEMU.
 */
static bool qio_nl_trace_on(void)
{
    static int on = -1;
    int v = __atomic_load_n(&on, __ATOMIC_RELAXED);

    if (v < 0) {
#if GLIB_CHECK_VERSION(2, 68, 0)
        v = !g_log_writer_default_would_drop(G_LOG_LEVEL_DEBUG,
                                             QIO_NL_LOG_DOMAIN);
#else
        const char *debug = g_getenv("G_MESSAGES_DEBUG");
        v = debug && (strstr(debug, "all") || strstr(debug, QIO_NL_LOG_DOMAIN));
#endif
        __atomic_store_n(&on, v, __ATOMIC_RELAXED);
    }
    return v;
}

#define QIO_NL_LOG(event, ...)                                          \
    do {                                                                \
        if (qio_nl_trace_on()) {                                        \
            g_log_structured(QIO_NL_LOG_DOMAIN, G_LOG_LEVEL_DEBUG,      \
                             "QIO_NET_LISTENER_EVENT", event,           \
                             "MESSAGE", __VA_ARGS__);                   \
        }                                                               \
    } while (0)

__attribute__((visibility("hidden")))
void qio_nl_trace_watch(void *listener, void *func, void *gctx, void *actx,
                        const char *by, bool enabled)
{
    if (enabled) {
        QIO_NL_LOG("qio_net_listener_watch",
                   "Net listener=%p watch enabled func=%p ctx=%p/%p by %s",
                   listener, func, gctx, actx, by);
    } else {
        QIO_NL_LOG("qio_net_listener_unwatch",
                   "Net listener=%p watch disabled func=%p ctx=%p/%p by %s",
                   listener, func, gctx, actx, by);
    }
}

__attribute__((visibility("hidden")))
void qio_nl_trace_callback(void *listener, void *func, void *gctx,
                           void *actx)
{
    QIO_NL_LOG("qio_net_listener_callback",
               "Net listener=%p callback forwarding to func=%p ctx=%p/%p",
               listener, func, gctx, actx);
}

__attribute__((visibility("hidden")))
void qio_nl_trace_batch(void *listener, unsigned accepted)
{
    QIO_NL_LOG("qio_net_listener_batch",
               "Net listener=%p accepted %u clients in one wake-up",
               listener, accepted);
}

__attribute__((visibility("hidden")))
void qio_nl_trace_backoff(void *listener, unsigned ms)
{
    QIO_NL_LOG("qio_net_listener_backoff",
               "Net listener=%p accept failed for lack of resources, "
               "pausing %u ms", listener, ms);
}

__attribute__((visibility("hidden")))
void qio_nl_trace_release(void *listener)
{
    QIO_NL_LOG("qio_net_listener_release",
               "Net listener=%p watch released", listener);
}

#endif
