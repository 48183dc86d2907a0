/*
 * Helpers shared by the QIONetListener C tests.
 *
 * Written against QEMU's API only, so that the tests also build inside a
 * QEMU tree.  Every wait is bounded: a test that would hang fails instead.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QIO_NET_LISTENER_TEST_UTIL_H
#define QIO_NET_LISTENER_TEST_UTIL_H

#include "qapi/error.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"

/* How long a test waits for something that must happen. */
#define TU_WAIT_US (10 * G_USEC_PER_SEC)

/*
 * Runs @step until @cond holds, for at most TU_WAIT_US, then asserts
 * @cond: a missing event fails the test instead of hanging it.
 */
#define TU_WAIT_UNTIL(cond, step)                                       \
    do {                                                                \
        gint64 tu_deadline_ = g_get_monotonic_time() + TU_WAIT_US;      \
        while (!(cond) && g_get_monotonic_time() < tu_deadline_) {      \
            step;                                                       \
        }                                                               \
        g_assert_true(cond);                                            \
    } while (0)

/*
 * The start of every test program: GLib's test framework, the QOM types
 * and the main loop (whose AioContext the TU_MODE_AIO cases use).
 */
void tu_init(int *argc, char ***argv);

/* One non-blocking round of the default GMainContext (sleeps if idle). */
void tu_iterate_main(void);
/* One non-blocking round of @ctx (sleeps if idle); main thread only. */
void tu_iterate_aio(AioContext *ctx);
/* Sleeps a little: the step of a wait on another thread. */
void tu_nap(void);

/*
 * @rounds rounds of tu_iterate_main() (also runs the main AioContext,
 * which is attached to it): for checks that something does NOT happen.
 */
void tu_spin_main(int rounds);
/* Same with aio_poll(@ctx, false). */
void tu_spin_aio(AioContext *ctx, int rounds);

/*
 * How a parameterised test registers and drives its callback:
 * set_client_func on the default GMainContext (iterated with
 * g_main_context_iteration), or set_client_aio_func on the main
 * AioContext (iterated with aio_poll).
 */
typedef enum {
    TU_MODE_GLIB,
    TU_MODE_AIO,
} TuMode;

/*
 * Registers @fn twice: as @path/glib with data TU_MODE_GLIB and as
 * @path/aio with data TU_MODE_AIO.
 */
void tu_add_modes(const char *path, GTestDataFunc fn);

/* Sets (or with NULL @func clears) the callback; no notify. */
void tu_set_cb(QIONetListener *listener, TuMode mode,
               QIONetListenerClientFunc func, gpointer data);
void tu_iterate(TuMode mode);
void tu_spin(TuMode mode, int rounds);

/* The number of open file descriptors of the process. */
int tu_count_fds(void);

/* socket_parse() that must succeed. */
SocketAddress *tu_parse(const char *str);
/* A unix SocketAddress for @path (abstract if @abstract). */
SocketAddress *tu_unix_address(const char *path, bool abstract);
/* An fd SocketAddress naming @str. */
SocketAddress *tu_fd_address(const char *str);

/* A new listener on 127.0.0.1 (a free port, backlog 16); must succeed. */
QIONetListener *tu_new_inet_listener(void);

/* Whether a TCP socket can be bound to ::1 on this host. */
bool tu_have_ipv6(void);

/* A new temporary directory (free with tu_rmdir_tmp). */
char *tu_make_tmpdir(void);
/* Removes @dir (and any socket files left in it), frees the string. */
void tu_rmdir_tmp(char *dir);

/* A blocking client connected to @addr; the test fails on error. */
QIOChannelSocket *tu_connect(SocketAddress *addr);
/* A blocking client connected to socket @n of @listener. */
QIOChannelSocket *tu_connect_listener(QIONetListener *listener, size_t n);

/* The port of an inet address, as a number. */
int tu_inet_port(SocketAddress *addr);
/* The port of @sioc's local / remote inet address. */
int tu_local_port(QIOChannelSocket *sioc);
int tu_remote_port(QIOChannelSocket *sioc);

/*
 * Waits until @fd has one of the poll(2) @events, at the latest until the
 * monotonic time @deadline; false if the deadline came first.
 */
bool tu_wait_fd(int fd, short events, gint64 deadline);

/*
 * Reads up to @len bytes from @sioc, waiting at most TU_WAIT_US in total;
 * stops early at end of file.  Returns the number of bytes read.
 */
size_t tu_read_bounded(QIOChannelSocket *sioc, void *buf, size_t len);
/* Whether @sioc reaches end of file within TU_WAIT_US (no data before). */
bool tu_wait_eof(QIOChannelSocket *sioc);
/* Writes all of @str to @sioc (must succeed). */
void tu_write_str(QIOChannelSocket *sioc, const char *str);

/*
 * Asserts that @err is set and non-empty and (on the compat host, whose
 * socket errors always name the address) mentions @needle; frees it.
 */
void tu_assert_error_mentions(Error **err, const char *needle);

/*
 * A watchdog thread that aborts the process if not stopped within
 * @seconds: bounds calls that block by design (wait_client).
 */
typedef struct TuWatchdog TuWatchdog;
TuWatchdog *tu_watchdog_start(const char *what, int seconds);
void tu_watchdog_stop(TuWatchdog *wd);

/*
 * A thread that iterates @ctx (blocking) until stopped: the loop of a
 * private GMainContext.
 */
typedef struct {
    GMainContext *ctx;
    GThread *thread;
    gint stop;
} TuLoopThread;

void tu_loop_thread_start(TuLoopThread *lt, GMainContext *ctx,
                          const char *name);
/* Stops and joins the thread; the context is left to the caller. */
void tu_loop_thread_stop(TuLoopThread *lt);

/*
 * A record of callback invocations, safe to update from any thread.
 */
typedef struct TuAccepts {
    GMutex lock;
    int count;                  /* callbacks run */
    QIONetListener *last_listener;
    GThread *last_thread;
    GPtrArray *clients;         /* references to accepted channels */
    const char *greeting;       /* if set, written to each client */
    int notified;               /* notify(data) calls */
} TuAccepts;

void tu_accepts_init(TuAccepts *acc);
/* Closes and unreferences the kept clients. */
void tu_accepts_destroy(TuAccepts *acc);
int tu_accepts_count(TuAccepts *acc);
int tu_accepts_notified(TuAccepts *acc);
/* The nth accepted client (borrowed). */
QIOChannelSocket *tu_accepts_client(TuAccepts *acc, guint n);

/* A QIONetListenerClientFunc recording into a TuAccepts (data). */
void tu_accept_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                  gpointer data);
/* A GDestroyNotify counting into a TuAccepts. */
void tu_accepts_notify(gpointer data);

/* A TuAccepts for a callback that clears itself after one client. */
typedef struct TuOnce {
    TuAccepts acc;              /* first: tu_accept_cb's data */
    TuMode mode;
} TuOnce;

/*
 * A QIONetListenerClientFunc recording into a TuOnce (data), then
 * clearing the listener's callback (as char-socket does).
 */
void tu_accept_once_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                       gpointer data);

#endif
