/*
 * Host API functions that QEMU defines static inline (so they have no
 * symbol to link against): shim.c wraps them, compiled against
 * the host's own headers.  Hidden: the listener library exports none.
 */
#ifndef QIO_NET_LISTENER_HOST_SHIM_H
#define QIO_NET_LISTENER_HOST_SHIM_H

/* aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_MS, cb, opaque) */
QEMUTimer *qio_nl_aio_timer_new_ms(AioContext *ctx, QEMUTimerCB *cb,
                                   void *opaque);
/* qemu_clock_get_ms(QEMU_CLOCK_REALTIME) */
int64_t qio_nl_clock_ms(void);
/* timer_free(ts) */
void qio_nl_timer_free(QEMUTimer *ts);

/*
 * Trace events.  In QEMU (QIO_NL_QEMU_TRACE) they call QEMU's generated
 * trace functions of io/trace-events: watch, unwatch and callback as
 * upstream, and ours (batch, backoff, release) if they were added to
 * io/trace-events (qemu/trace-events in this repository); elsewhere they
 * go to GLib structured logging, domain "qio-net-listener", level debug
 * (shown with G_MESSAGES_DEBUG=qio-net-listener).
 */
void qio_nl_trace_watch(void *listener, void *func, void *gctx, void *actx,
                        const char *by, bool enabled);
void qio_nl_trace_callback(void *listener, void *func, void *gctx,
                           void *actx);
void qio_nl_trace_batch(void *listener, unsigned accepted);
void qio_nl_trace_backoff(void *listener, unsigned ms);
void qio_nl_trace_release(void *listener);

#endif
