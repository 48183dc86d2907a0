/*
 * qemu-compat-host: clocks and AioContext timers (qemu/timer.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_TIMER_H
#define QEMU_TIMER_H

#include "qemu/typedefs.h"

#define NANOSECONDS_PER_SECOND 1000000000LL

#define SCALE_MS 1000000
#define SCALE_US 1000
#define SCALE_NS 1

typedef enum {
    QEMU_CLOCK_REALTIME = 0,
    QEMU_CLOCK_VIRTUAL = 1,
    QEMU_CLOCK_HOST = 2,
    QEMU_CLOCK_VIRTUAL_RT = 3,
    QEMU_CLOCK_MAX
} QEMUClockType;

typedef void QEMUTimerCB(void *opaque);

int64_t qemu_clock_get_ms(QEMUClockType type);

/* Arms @ts to fire at @expire_time (in the timer's scale); callable anywhere. */
void timer_mod(QEMUTimer *ts, int64_t expire_time);
void timer_del(QEMUTimer *ts);
/* Disarms and frees @ts; NULL is allowed. */
void timer_free(QEMUTimer *ts);

#endif /* QEMU_TIMER_H */
