/*
 * qemu-compat-host: the main loop (qemu/main-loop.h).
 *
 * qemu_init_main_loop() makes the calling thread the main thread and
 * creates the main-loop AioContext, attached to GLib's default
 * GMainContext: iterating GLib's default context also runs it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_MAIN_LOOP_H
#define QEMU_MAIN_LOOP_H

#include "qemu/aio.h"

/* Returns 0, or -1 and an error.  Calling it again is a no-op. */
int qemu_init_main_loop(Error **errp);

/* The main-loop AioContext; NULL before qemu_init_main_loop(). */
AioContext *qemu_get_aio_context(void);

#endif /* QEMU_MAIN_LOOP_H */
