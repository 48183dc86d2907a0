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
