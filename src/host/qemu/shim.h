/*
 * Host API functions that QEMU defines static inline (so they have no
 * symbol to link against): src/host/shim.c wraps them, compiled against
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

#endif
