/*
 * qemu-compat-host: the IOThread helper of QEMU's tests/unit/iothread.h:
 * a thread running its own AioContext with aio_poll() until joined.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TEST_IOTHREAD_H
#define TEST_IOTHREAD_H

#include "qemu/aio.h"

typedef struct IOThread IOThread;

/* Starts the thread; returns once its AioContext is running. */
IOThread *iothread_new(void);
/* Stops the loop, joins the thread and frees it with its AioContext ref. */
void iothread_join(IOThread *iothread);
AioContext *iothread_get_aio_context(IOThread *iothread);

#endif
