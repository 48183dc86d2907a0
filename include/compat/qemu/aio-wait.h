/*
 * qemu-compat-host: AIO_WAIT_WHILE, QEMU's nested event loop
 * (qemu/aio-wait.h).  While it waits, only AioContext handlers run: the
 * GLib main loop does not.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_AIO_WAIT_H
#define QEMU_AIO_WAIT_H

#include "qemu/aio.h"
#include "qemu/main-loop.h"

#define AIO_WAIT_WHILE_INTERNAL(ctx, cond) ({                      \
    bool waited_ = false;                                          \
    AioContext *ctx_ = (ctx);                                      \
    if (ctx_ && in_aio_context_home_thread(ctx_)) {                \
        while ((cond)) {                                           \
            aio_poll(ctx_, true);                                  \
            waited_ = true;                                        \
        }                                                          \
    } else {                                                       \
        assert(qemu_get_current_aio_context() ==                   \
               qemu_get_aio_context());                            \
        while ((cond)) {                                           \
            aio_poll(qemu_get_aio_context(), true);                \
            waited_ = true;                                        \
        }                                                          \
    }                                                              \
    waited_; })

#define AIO_WAIT_WHILE(ctx, cond)                                  \
    AIO_WAIT_WHILE_INTERNAL(ctx, cond)

#define AIO_WAIT_WHILE_UNLOCKED(ctx, cond)                         \
    AIO_WAIT_WHILE_INTERNAL(ctx, cond)

#endif /* QEMU_AIO_WAIT_H */
