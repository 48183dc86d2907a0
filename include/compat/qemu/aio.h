/*
 * qemu-compat-host: QEMU's AioContext event loop (qemu/aio.h).
 *
 * An AioContext runs fd handlers, bottom halves and timers.  Its home
 * thread runs it with aio_poll(); it is also a GSource (aio_get_g_source)
 * so a GLib main loop can run it.  Handlers are called without any lock
 * held; a handler removed with aio_set_fd_handler() is not called again
 * once removal returns, except by a dispatch already running in the home
 * thread, which always ends before any bottom half scheduled after the
 * removal runs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_AIO_H
#define QEMU_AIO_H

#include "qemu/typedefs.h"
#include "qemu/timer.h"

typedef void QEMUBHFunc(void *opaque);
typedef bool AioPollFn(void *opaque);
typedef void IOHandler(void *opaque);

typedef struct MemReentrancyGuard MemReentrancyGuard;

/*
 * Runs @cb(@opaque) once in @ctx's thread, as soon as possible.  Callable
 * from any thread.  @name is for debugging.
 */
void aio_bh_schedule_oneshot_full(AioContext *ctx, QEMUBHFunc *cb,
                                  void *opaque, const char *name);
#define aio_bh_schedule_oneshot(ctx, cb, opaque) \
    aio_bh_schedule_oneshot_full((ctx), (cb), (opaque), (stringify(cb)))

#define aio_bh_new(ctx, cb, opaque) \
    aio_bh_new_full((ctx), (cb), (opaque), (stringify(cb)), NULL)

/*
 * Runs ready handlers, bottom halves and expired timers once.  If
 * @blocking, first waits until there is something to do.  Returns true if
 * any callback ran.  Must be called from @ctx's home thread.
 */
bool aio_poll(AioContext *ctx, bool blocking);

/*
 * Registers (or, with both @io_read and @io_write NULL, removes) the
 * handlers of @fd in @ctx.  Callable from any thread.  @io_poll and
 * @io_poll_ready are accepted for API compatibility; the compat host does
 * no userspace polling and never calls them.
 */
void aio_set_fd_handler(AioContext *ctx,
                        int fd,
                        IOHandler *io_read,
                        IOHandler *io_write,
                        AioPollFn *io_poll,
                        IOHandler *io_poll_ready,
                        void *opaque);

/* A timer in @ctx: @cb runs in @ctx's thread when it expires. */
QEMUTimer *aio_timer_new(AioContext *ctx, QEMUClockType type, int scale,
                         QEMUTimerCB *cb, void *opaque);

/* The AioContext of the calling thread (its IOThread's, or main's). */
AioContext *qemu_get_current_aio_context(void);

/* Whether the caller runs in @ctx's home thread. */
bool in_aio_context_home_thread(AioContext *ctx);

#endif /* QEMU_AIO_H */
