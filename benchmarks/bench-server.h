/*
 * bench-accept: the accept loops under test, as the harness sees them.
 *
 * Every server listens on loopback TCP (127.0.0.1, port chosen by the
 * kernel) or on a unix socket path the harness chooses, closes each client
 * as soon as it is accepted (or lets its library do so when its callback
 * returns) and calls bench_accepted() once per client.  The harness drives
 * the server's own loop one iteration at a time with step(), counting the
 * iterations that dispatched a client (its wake-ups).
 *
 * Plain C with no QEMU header, so that servers built on other libraries
 * (libuv, GIO) compile apart from QEMU's headers.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef BENCH_SERVER_H
#define BENCH_SERVER_H

#include <stdbool.h>

#define BENCH_BACKLOG 4096
#define BENCH_TICK_MS 100       /* with a tick, step() returns this often */

typedef enum BenchTransport {
    BENCH_TCP,
    BENCH_UNIX,
    BENCH_TRANSPORT_COUNT
} BenchTransport;

typedef struct BenchServerOps {
    const char *name;           /* for --servers and the result lines */
    const char *label;          /* for the table */
    /*
     * Listens with backlog BENCH_BACKLOG on 127.0.0.1:0 (and sets *port)
     * or on @path.  With @tick, step() returns at least every
     * BENCH_TICK_MS even when no client comes; without, it blocks until
     * its loop dispatched something (what the instruction and syscall
     * counts want: no timer in the loop).
     */
    void *(*open)(BenchTransport transport, const char *path, bool tick,
                  int *port);
    /* One iteration of the server's event loop: wait, then dispatch. */
    void (*step)(void *server);
    void (*close)(void *server);
} BenchServerOps;

/* A server calls this once per accepted client. */
void bench_accepted(void);

/* A functional failure: prints the message and exits non-zero. */
void bench_fail(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

#ifdef HAVE_LIBUV
extern const BenchServerOps bench_server_libuv;
#endif
#ifdef HAVE_GIO
extern const BenchServerOps bench_server_gio;
#endif

#endif /* BENCH_SERVER_H */
