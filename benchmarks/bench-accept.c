/*
 * bench-accept: how much it costs QIONetListener to accept and dispatch a
 * client, against a plain epoll + accept4 loop (the reference limit) and,
 * where built, libuv and GLib's GSocketService.
 *
 *   bench-accept [options] [SEQ [BURST]]       the interleaved timed run
 *       --runs R        runs of each figure (default 3 sequential, 5 burst)
 *       --servers LIST  comma-separated server names (default: all built)
 *       --results       also print one machine-readable "result" line per run
 *   bench-accept --list                        the servers built in
 *                                              (name, label, listener or
 *                                              reference)
 *   bench-accept serve SERVER TRANSPORT PATTERN N
 *   bench-accept client TRANSPORT PATTERN N ADDRESS [PID]
 *
 * (SEQ and BURST may also come from QIO_BENCH_CONNS and QIO_BENCH_BURST;
 * the arguments win.)  Servers, each on 127.0.0.1:0 and on a unix socket:
 *
 *   raw    a non-blocking listening socket, epoll_wait() + accept4() until
 *          EAGAIN, close() each client (plain POSIX: the reference);
 *   glib   the listener, set_client_func() on the default GMainContext,
 *          driven by g_main_context_iteration();
 *   aio    the listener, set_client_aio_func() on the main AioContext,
 *          driven by aio_poll();
 *   libuv, gio  (server-libuv.c, server-gio.c) if those libraries were
 *          found at build time.
 *
 * Built with QEMU's original net-listener.c object (bench-accept-upstream
 * in QEMU mode), the listener servers are called upstream-glib and
 * upstream-aio.  The listener's callback only counts; the listener then
 * drops the client, which closes it.
 *
 * Two patterns, each timed as wall-clock time and server-thread CPU time
 * per client, with the server's wake-ups (loop iterations that dispatched
 * a client) per client:
 *
 *   seq    SEQ connections (default 5000) one after the other: a client
 *          thread waits until the server thread sleeps in its poll (from
 *          /proc: so that every client is a wake-up of its own, not caught
 *          by an accept loop still running), connects, waits until the
 *          server has closed its end, and closes with a reset;
 *   burst  BURST connections (default 2000, kept below net.core.somaxconn
 *          and the fd limit) are queued while the server does not run;
 *          then it runs until all are accepted.
 *
 * Each figure is the median of its runs, all servers interleaved in each
 * run.  The program prints figures and ratios to raw and never judges
 * them: it exits non-zero only on a functional failure (an error, or
 * clients not all accepted within LIMIT_S seconds).
 *
 * "serve" and "client" split one measurement over two processes, for
 * benchmarks/measure.py to count a server's instructions (callgrind) and
 * system calls (strace) without the client's: serve listens and prints
 * "ready ADDRESS pid=PID"; for a burst it then waits for a line on stdin (sent
 * once the client has queued its connections); it serves N clients with
 * no timer in its loop and prints "done accepted=N iterations=I
 * dispatching=D".  The client connects to ADDRESS as the pattern says
 * (printing "queued" once a burst is queued; sequential clients wait for
 * process PID to be idle) and waits for each connection to be closed by
 * the server.
 *
 * Written against QEMU's API (plus POSIX for the reference loop and the
 * client): it builds in a QEMU tree as well.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE             /* accept4 */
#endif
#include "qemu/osdep.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/un.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/timer.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "bench-server.h"

#define DEFAULT_SEQ 5000
#define DEFAULT_BURST 2000
#define WARMUP 128              /* untimed sequential clients before each */
#define SEQ_RUNS 3
#define BURST_RUNS 5
#define LIMIT_S 60              /* bound of every wait: functional failure */

typedef enum Pattern {
    PATTERN_SEQ,
    PATTERN_BURST,
    PATTERN_COUNT
} Pattern;

static const char *const transport_names[BENCH_TRANSPORT_COUNT] = {
    "tcp", "unix",
};
static const char *const pattern_names[PATTERN_COUNT] = { "seq", "burst" };

static struct {
    int accepted;               /* by the server thread only */
    gint failed;                /* set by the client thread */
    char *tmpdir;               /* for unix socket paths */
    int paths;
} bench;

void bench_fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "bench-accept: FAILED: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

void bench_accepted(void)
{
    bench.accepted++;
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- addresses ---- */

typedef struct Addr {
    BenchTransport transport;
    int port;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} Addr;

static void remove_tmpdir(void)
{
    if (bench.tmpdir) {
        rmdir(bench.tmpdir);
    }
}

/* A new unix socket path in this process's temporary directory. */
static char *unix_path_new(void)
{
    if (!bench.tmpdir) {
        g_autoptr(GError) err = NULL;

        bench.tmpdir = g_dir_make_tmp("bench-accept-XXXXXX", &err);
        if (!bench.tmpdir) {
            bench_fail("temporary directory: %s", err->message);
        }
        atexit(remove_tmpdir);
    }
    return g_strdup_printf("%s/%d.sock", bench.tmpdir, bench.paths++);
}

static char *addr_format(const Addr *a)
{
    if (a->transport == BENCH_TCP) {
        return g_strdup_printf("tcp:127.0.0.1:%d", a->port);
    }
    return g_strdup_printf("unix:%s", a->path);
}

static bool addr_parse(const char *str, Addr *a)
{
    memset(a, 0, sizeof(*a));
    if (g_str_has_prefix(str, "tcp:127.0.0.1:")) {
        a->transport = BENCH_TCP;
        a->port = atoi(str + strlen("tcp:127.0.0.1:"));
        return a->port > 0;
    }
    if (g_str_has_prefix(str, "unix:") &&
        strlen(str + 5) < sizeof(a->path)) {
        a->transport = BENCH_UNIX;
        strcpy(a->path, str + 5);
        return true;
    }
    return false;
}

/* ---- the client side (POSIX) ---- */

/* A connected blocking socket, or -errno. */
static int addr_connect(const Addr *a)
{
    struct sockaddr_in in = {
        .sin_family = AF_INET,
        .sin_port = htons(a->port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    const struct sockaddr *sa = (const struct sockaddr *)&in;
    socklen_t len = sizeof(in);
    int fd;

    if (a->transport == BENCH_UNIX) {
        memcpy(un.sun_path, a->path, sizeof(a->path));
        sa = (const struct sockaddr *)&un;
        len = sizeof(un);
    }
    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    while (connect(fd, sa, len) < 0) {
        int err = errno;
        if (err != EINTR) {
            close(fd);
            return -err;
        }
    }
    return fd;
}

/* Waits until the server closed its end of @fd; 0 or -errno. */
static int wait_closed(int fd, int64_t deadline_ns)
{
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left_ms = (deadline_ns - now_ns()) / 1000000;
        char c;
        ssize_t n;

        if (left_ms <= 0) {
            return -ETIMEDOUT;
        }
        n = poll(&pfd, 1, MIN(left_ms, INT_MAX));
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
        if (n <= 0) {
            continue;
        }
        n = read(fd, &c, 1);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            return 0;
        }
        if (n > 0) {
            return -EPROTO;     /* the servers never write */
        }
        if (errno != EINTR && errno != EAGAIN) {
            return -errno;
        }
    }
}

/* Closes with a reset: no TIME_WAIT on either side. */
static void reset_close(int fd)
{
    struct linger lin = { .l_onoff = 1, .l_linger = 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
    close(fd);
}

/*
 * Waits until the server's thread @tid (of process @pid) sleeps in its
 * event loop's poll, so that the next client is a wake-up of its own
 * rather than caught by the accept loop still running for the last one
 * (which would make the counts depend on timing).  Best effort: returns
 * at once if /proc does not tell.
 */
static void wait_server_idle(int pid, int tid, int64_t deadline_ns)
{
    g_autofree char *stat = g_strdup_printf("/proc/%d/task/%d/stat", pid, tid);
    g_autofree char *wchan = g_strdup_printf("/proc/%d/task/%d/wchan", pid,
                                             tid);

    while (now_ns() < deadline_ns) {
        char buf[512], where[64];
        const char *state;
        int fd = open(stat, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

        if (fd >= 0) {
            close(fd);
        }
        if (n <= 0) {
            return;
        }
        buf[n] = 0;
        state = strrchr(buf, ')');
        if (!state) {
            return;
        }
        if (state[1] == ' ' && state[2] == 'S') {
            /* Asleep; in a poll, not a lock (valgrind's or a mutex). */
            fd = open(wchan, O_RDONLY | O_CLOEXEC);
            n = fd < 0 ? -1 : read(fd, where, sizeof(where) - 1);
            if (fd >= 0) {
                close(fd);
            }
            if (n <= 0) {
                return;
            }
            where[n] = 0;
            if (!strstr(where, "futex") && !strstr(where, "pipe")) {
                return;
            }
        }
        sched_yield();
    }
}

/*
 * @n clients one after the other, each once the server is idle if @pid is
 * not 0; NULL or an error message.
 */
static char *run_seq_clients(const Addr *a, int n, int pid, int tid,
                             int64_t deadline_ns)
{
    for (int i = 0; i < n; i++) {
        int fd;
        int err;

        if (pid) {
            wait_server_idle(pid, tid, deadline_ns);
        }
        fd = addr_connect(a);

        if (fd < 0) {
            return g_strdup_printf("connect %d of %d: %s", i + 1, n,
                                   strerror(-fd));
        }
        err = wait_closed(fd, deadline_ns);
        reset_close(fd);
        if (err < 0) {
            return g_strdup_printf("client %d of %d: %s", i + 1, n,
                                   strerror(-err));
        }
    }
    return NULL;
}

/* Queues @n connections in @fds, or fails. */
static void queue_burst(const Addr *a, int n, int *fds)
{
    for (int i = 0; i < n; i++) {
        fds[i] = addr_connect(a);
        if (fds[i] < 0) {
            bench_fail("burst: connect %d of %d: %s", i + 1, n,
                       strerror(-fds[i]));
        }
    }
}

typedef struct SeqJob {
    Addr addr;
    int total;
    int server_tid;
    int64_t deadline_ns;
    char *error;
} SeqJob;

static gpointer seq_client_thread(gpointer opaque)
{
    SeqJob *job = opaque;

    job->error = run_seq_clients(&job->addr, job->total, getpid(),
                                 job->server_tid, job->deadline_ns);
    if (job->error) {
        g_atomic_int_set(&bench.failed, 1);
    }
    return NULL;
}

/* ---- the reference server: epoll + accept4 ---- */

typedef struct RawServer {
    int lfd;
    int epfd;
    bool tick;
} RawServer;

static void *raw_open(BenchTransport transport, const char *path, bool tick,
                      int *port)
{
    RawServer *s = g_new0(RawServer, 1);
    struct sockaddr_in in = {
        .sin_family = AF_INET,
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    struct sockaddr *sa = (struct sockaddr *)&in;
    socklen_t len = sizeof(in);
    struct epoll_event ev = { .events = EPOLLIN };

    if (transport == BENCH_UNIX) {
        g_strlcpy(un.sun_path, path, sizeof(un.sun_path));
        sa = (struct sockaddr *)&un;
        len = sizeof(un);
    }
    s->tick = tick;
    s->lfd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (s->lfd < 0 || bind(s->lfd, sa, len) < 0 ||
        listen(s->lfd, BENCH_BACKLOG) < 0 ||
        getsockname(s->lfd, sa, &len) < 0) {
        bench_fail("raw listening socket: %s", strerror(errno));
    }
    if (transport == BENCH_TCP) {
        *port = ntohs(in.sin_port);
    }
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &ev) < 0) {
        bench_fail("epoll: %s", strerror(errno));
    }
    return s;
}

static void raw_step(void *opaque)
{
    RawServer *s = opaque;
    struct epoll_event ev;
    int n = epoll_wait(s->epfd, &ev, 1, s->tick ? BENCH_TICK_MS : -1);

    if (n < 0 && errno != EINTR) {
        bench_fail("epoll_wait: %s", strerror(errno));
    }
    if (n <= 0) {
        return;
    }
    for (;;) {
        int c = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            bench_fail("accept4: %s", strerror(errno));
        }
        close(c);
        bench_accepted();
    }
}

static void raw_close(void *opaque)
{
    RawServer *s = opaque;

    close(s->epfd);
    close(s->lfd);
    g_free(s);
}

/* ---- the listener, through a GMainContext or an AioContext ---- */

typedef struct ListenerServer {
    QIONetListener *listener;
    bool aio;
    guint tick_source;          /* GLib: wakes the default context */
    QEMUTimer *tick_timer;      /* aio: wakes the main AioContext */
} ListenerServer;

static void on_client(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer opaque)
{
    (void)listener;
    (void)sioc;
    (void)opaque;
    bench_accepted();
}

static gboolean glib_tick(gpointer opaque)
{
    (void)opaque;
    return G_SOURCE_CONTINUE;
}

static void aio_tick(void *opaque)
{
    ListenerServer *s = opaque;

    timer_mod(s->tick_timer,
              qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + BENCH_TICK_MS);
}

static void *listener_open(BenchTransport transport, const char *path,
                           bool tick, int *port, bool aio)
{
    ListenerServer *s = g_new0(ListenerServer, 1);
    g_autofree char *str = transport == BENCH_TCP ?
        g_strdup("127.0.0.1:0") : g_strdup_printf("unix:%s", path);
    Error *err = NULL;
    g_autoptr(SocketAddress) addr = socket_parse(str, &err);

    if (!addr) {
        bench_fail("socket_parse: %s", error_get_pretty(err));
    }
    s->aio = aio;
    s->listener = qio_net_listener_new();
    qio_net_listener_set_name(s->listener, "bench-accept");
    if (qio_net_listener_open_sync(s->listener, addr, BENCH_BACKLOG,
                                   &err) < 0) {
        bench_fail("qio_net_listener_open_sync: %s", error_get_pretty(err));
    }
    if (transport == BENCH_TCP) {
        g_autoptr(SocketAddress) local =
            qio_net_listener_get_local_address(s->listener, 0, &err);

        if (!local || local->type != SOCKET_ADDRESS_TYPE_INET) {
            bench_fail("qio_net_listener_get_local_address: %s",
                       err ? error_get_pretty(err) : "not an inet address");
        }
        *port = atoi(local->u.inet.port);
    }
    if (!aio) {
        qio_net_listener_set_client_func(s->listener, on_client, NULL, NULL);
        if (tick) {
            s->tick_source = g_timeout_add(BENCH_TICK_MS, glib_tick, NULL);
        }
    } else {
        qio_net_listener_set_client_aio_func(s->listener, on_client, NULL,
                                             NULL);
        if (tick) {
            s->tick_timer = aio_timer_new(qemu_get_aio_context(),
                                          QEMU_CLOCK_REALTIME, SCALE_MS,
                                          aio_tick, s);
            aio_tick(s);
        }
    }
    return s;
}

static void *glib_open(BenchTransport transport, const char *path, bool tick,
                       int *port)
{
    return listener_open(transport, path, tick, port, false);
}

static void *aio_open(BenchTransport transport, const char *path, bool tick,
                      int *port)
{
    return listener_open(transport, path, tick, port, true);
}

static void glib_step(void *opaque)
{
    (void)opaque;
    g_main_context_iteration(NULL, TRUE);
}

static void aio_step(void *opaque)
{
    (void)opaque;
    aio_poll(qemu_get_aio_context(), true);
}

static void listener_close(void *opaque)
{
    ListenerServer *s = opaque;

    if (!s->aio) {
        qio_net_listener_set_client_func(s->listener, NULL, NULL, NULL);
        if (s->tick_source) {
            g_source_remove(s->tick_source);
        }
    } else {
        qio_net_listener_set_client_aio_func(s->listener, NULL, NULL, NULL);
        if (s->tick_timer) {
            timer_free(s->tick_timer);
        }
    }
    object_unref(OBJECT(s->listener));
    /* Let any release the listener scheduled run now. */
    for (int i = 0; i < 10; i++) {
        g_main_context_iteration(NULL, FALSE);
        aio_poll(qemu_get_aio_context(), false);
    }
    g_free(s);
}

#ifdef BENCH_UPSTREAM
#define LISTENER_NAME(mode) "upstream-" mode
#define LISTENER_LABEL(ctx) "upstream " ctx
#else
#define LISTENER_NAME(mode) mode
#define LISTENER_LABEL(ctx) "listener " ctx
#endif

static const BenchServerOps server_raw = {
    .name = "raw",
    .label = "raw epoll+accept4",
    .open = raw_open,
    .step = raw_step,
    .close = raw_close,
};

static const BenchServerOps server_glib = {
    .name = LISTENER_NAME("glib"),
    .label = LISTENER_LABEL("GMainCtx"),
    .open = glib_open,
    .step = glib_step,
    .close = listener_close,
};

static const BenchServerOps server_aio = {
    .name = LISTENER_NAME("aio"),
    .label = LISTENER_LABEL("AioCtx"),
    .open = aio_open,
    .step = aio_step,
    .close = listener_close,
};

static const BenchServerOps *const all_servers[] = {
    &server_raw,
    &server_glib,
    &server_aio,
#ifdef HAVE_LIBUV
    &bench_server_libuv,
#endif
#ifdef HAVE_GIO
    &bench_server_gio,
#endif
};
#define ALL_SERVERS ((int)G_N_ELEMENTS(all_servers))

static const BenchServerOps *find_server(const char *name)
{
    for (int i = 0; i < ALL_SERVERS; i++) {
        if (!strcmp(all_servers[i]->name, name)) {
            return all_servers[i];
        }
    }
    return NULL;
}

/* ---- driving a server ---- */

typedef struct Cell {
    int clients;
    int64_t wall_ns;
    int64_t cpu_ns;             /* the server thread's */
    long iterations;            /* of the server's loop */
    long dispatching;           /* iterations that accepted a client */
} Cell;

/*
 * Runs the server until @target clients are accepted; false if the
 * client failed or @deadline_ns passed (0: no deadline).
 */
static bool run_server(const BenchServerOps *ops, void *s, int target,
                       int64_t deadline_ns, Cell *cell)
{
    while (bench.accepted < target) {
        int before = bench.accepted;

        if (deadline_ns && (g_atomic_int_get(&bench.failed) ||
                            now_ns() >= deadline_ns)) {
            return false;
        }
        ops->step(s);
        cell->iterations++;
        cell->dispatching += bench.accepted != before;
    }
    return true;
}

static void reset_counts(Cell *cell, int clients)
{
    memset(cell, 0, sizeof(*cell));
    cell->clients = clients;
    bench.accepted = 0;
    g_atomic_int_set(&bench.failed, 0);
}

static void seq_pass(const BenchServerOps *ops, void *s, const Addr *a,
                     int n, Cell *cell)
{
    SeqJob job = {
        .addr = *a,
        .total = n,
        .server_tid = gettid(),
        .deadline_ns = now_ns() + LIMIT_S * 1000000000LL,
    };
    int64_t t0, c0;
    GThread *thread;
    bool ok;

    reset_counts(cell, n);
    c0 = thread_cpu_ns();
    t0 = now_ns();
    thread = g_thread_new("bench-client", seq_client_thread, &job);
    ok = run_server(ops, s, n, job.deadline_ns, cell);
    cell->wall_ns = now_ns() - t0;
    cell->cpu_ns = thread_cpu_ns() - c0;
    g_thread_join(thread);
    if (job.error) {
        bench_fail("%s: seq: %s", ops->name, job.error);
    }
    if (!ok) {
        bench_fail("%s: seq: %d of %d clients accepted within %d s",
                   ops->name, bench.accepted, n, LIMIT_S);
    }
}

static void burst_pass(const BenchServerOps *ops, void *s, const Addr *a,
                       int n, int *fds, Cell *cell)
{
    int64_t t0, c0;
    bool ok;

    reset_counts(cell, n);
    queue_burst(a, n, fds);
    c0 = thread_cpu_ns();
    t0 = now_ns();
    ok = run_server(ops, s, n, t0 + LIMIT_S * 1000000000LL, cell);
    cell->wall_ns = now_ns() - t0;
    cell->cpu_ns = thread_cpu_ns() - c0;
    for (int i = 0; i < n; i++) {
        reset_close(fds[i]);
    }
    if (!ok) {
        bench_fail("%s: burst: %d of %d queued clients accepted within %d s",
                   ops->name, bench.accepted, n, LIMIT_S);
    }
}

/* One timed figure: a fresh server, a warm-up, the pattern. */
static void measure(const BenchServerOps *ops, BenchTransport transport,
                    Pattern pattern, int n, int *fds, Cell *cell)
{
    g_autofree char *path = transport == BENCH_UNIX ? unix_path_new() : NULL;
    Addr addr = { .transport = transport };
    Cell warm;
    void *s;

    if (path) {
        g_strlcpy(addr.path, path, sizeof(addr.path));
    }
    s = ops->open(transport, path, true, &addr.port);
    seq_pass(ops, s, &addr, WARMUP, &warm);
    if (pattern == PATTERN_SEQ) {
        seq_pass(ops, s, &addr, n, cell);
    } else {
        burst_pass(ops, s, &addr, n, fds, cell);
    }
    ops->close(s);
    if (path) {
        unlink(path);
    }
}

/* ---- command line ---- */

static int parse_count(const char *what, const char *str)
{
    char *end;
    long v = strtol(str, &end, 10);

    if (!*str || *end || v < 1 || v > 10000000) {
        fprintf(stderr, "bench-accept: bad %s '%s' (see the comment at the "
                "top of bench-accept.c)\n", what, str);
        exit(2);
    }
    return v;
}

static int parse_name(const char *what, const char *str,
                      const char *const *names, int count)
{
    for (int i = 0; i < count; i++) {
        if (!strcmp(names[i], str)) {
            return i;
        }
    }
    fprintf(stderr, "bench-accept: bad %s '%s'\n", what, str);
    exit(2);
}

static int read_somaxconn(void)
{
    g_autofree char *text = NULL;

    if (!g_file_get_contents("/proc/sys/net/core/somaxconn", &text, NULL,
                             NULL)) {
        return 4096;
    }
    return atoi(text);
}

/* A burst holds up to 2 fds per client; the accept queue is capped. */
static int max_burst(void)
{
    struct rlimit rl;
    int n = MIN(BENCH_BACKLOG, read_somaxconn()) - 16;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        n = MIN(n, ((int64_t)rl.rlim_cur - 64) / 2);
    }
    return n;
}

static void init_qemu(void)
{
    module_call_init(MODULE_INIT_QOM);
    qemu_init_main_loop(&error_fatal);
}

/* serve SERVER TRANSPORT PATTERN N */
static int cmd_serve(int argc, char **argv)
{
    const BenchServerOps *ops;
    BenchTransport transport;
    Pattern pattern;
    g_autofree char *path = NULL;
    g_autofree char *str = NULL;
    Addr addr;
    Cell cell;
    void *s;
    int n;

    if (argc != 4) {
        fprintf(stderr, "usage: bench-accept serve SERVER TRANSPORT PATTERN "
                "N\n");
        return 2;
    }
    ops = find_server(argv[0]);
    if (!ops) {
        fprintf(stderr, "bench-accept: no server '%s'\n", argv[0]);
        return 2;
    }
    transport = parse_name("transport", argv[1], transport_names,
                           BENCH_TRANSPORT_COUNT);
    pattern = parse_name("pattern", argv[2], pattern_names, PATTERN_COUNT);
    n = parse_count("N", argv[3]);
    if (pattern == PATTERN_BURST && n > max_burst()) {
        bench_fail("a burst of %d does not fit the accept queue (at most %d)",
                   n, max_burst());
    }

    init_qemu();
    memset(&addr, 0, sizeof(addr));
    addr.transport = transport;
    if (transport == BENCH_UNIX) {
        path = unix_path_new();
        g_strlcpy(addr.path, path, sizeof(addr.path));
    }
    s = ops->open(transport, path, false, &addr.port);
    str = addr_format(&addr);
    printf("ready %s pid=%d\n", str, (int)getpid());
    fflush(stdout);
    if (pattern == PATTERN_BURST) {
        char line[16];

        if (!fgets(line, sizeof(line), stdin)) {
            bench_fail("serve: no go-ahead on stdin");
        }
    }
    reset_counts(&cell, n);
    run_server(ops, s, n, 0, &cell);
    ops->close(s);
    if (path) {
        unlink(path);
    }
    printf("done accepted=%d iterations=%ld dispatching=%ld\n",
           bench.accepted, cell.iterations, cell.dispatching);
    return 0;
}

/* client TRANSPORT PATTERN N ADDRESS [PID] */
static int cmd_client(int argc, char **argv)
{
    int64_t deadline_ns = now_ns() + LIMIT_S * 1000000000LL;
    Pattern pattern;
    Addr addr;
    int n, pid = 0;

    if (argc < 4 || argc > 5 || !addr_parse(argv[3], &addr) ||
        addr.transport != (BenchTransport)parse_name(
            "transport", argv[0], transport_names, BENCH_TRANSPORT_COUNT)) {
        fprintf(stderr, "usage: bench-accept client TRANSPORT PATTERN N "
                "ADDRESS [PID]\n");
        return 2;
    }
    if (argc == 5) {
        pid = parse_count("PID", argv[4]);
    }
    pattern = parse_name("pattern", argv[1], pattern_names, PATTERN_COUNT);
    n = parse_count("N", argv[2]);
    if (pattern == PATTERN_SEQ) {
        g_autofree char *error = run_seq_clients(&addr, n, pid, pid,
                                                 deadline_ns);

        if (error) {
            bench_fail("client: %s", error);
        }
    } else {
        g_autofree int *fds = g_new(int, n);

        max_burst();            /* raises the fd limit */
        queue_burst(&addr, n, fds);
        printf("queued\n");
        fflush(stdout);
        /* The time the server takes is not the client's to bound. */
        deadline_ns = now_ns() + 10 * LIMIT_S * 1000000000LL;
        for (int i = 0; i < n; i++) {
            int err = wait_closed(fds[i], deadline_ns);

            if (err < 0) {
                bench_fail("client %d of %d: %s", i + 1, n, strerror(-err));
            }
            reset_close(fds[i]);
        }
    }
    printf("done\n");
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef struct Figures {
    double wall_us;             /* per client, medians */
    double cpu_us;
    double wakeups;
} Figures;

static void print_table(const BenchServerOps **servers, int nservers,
                        BenchTransport t, Pattern p, int clients, int runs,
                        Figures *fig)
{
    Figures *raw = NULL;

    for (int i = 0; i < nservers; i++) {
        if (servers[i] == &server_raw) {
            raw = &fig[i];
        }
    }
    printf("\n%s %s: %d clients%s, median of %d runs\n", transport_names[t],
           pattern_names[p], clients,
           p == PATTERN_SEQ ? " one after the other" : " queued", runs);
    printf("  %-22s %10s %7s %12s %7s %14s\n", "server", "us/client",
           "vs-raw", "CPU us/cl.", "vs-raw", "wake-ups/cl.");
    for (int i = 0; i < nservers; i++) {
        printf("  %-22s %10.2f %7.2f %12.2f %7.2f %14.4f\n",
               servers[i]->label, fig[i].wall_us,
               raw ? fig[i].wall_us / raw->wall_us : 0, fig[i].cpu_us,
               raw ? fig[i].cpu_us / raw->cpu_us : 0, fig[i].wakeups);
    }
}

int main(int argc, char **argv)
{
    const char *env_seq = getenv("QIO_BENCH_CONNS");
    const char *env_burst = getenv("QIO_BENCH_BURST");
    const BenchServerOps *servers[G_N_ELEMENTS(all_servers)];
    int nservers = 0;
    int seq = DEFAULT_SEQ, burst = DEFAULT_BURST, burst_asked;
    int runs[PATTERN_COUNT] = { SEQ_RUNS, BURST_RUNS };
    const char *server_list = NULL;
    bool results = false;
    int npos = 0;
    g_autofree int *fds = NULL;
    int64_t start = now_ns();

    if (argc > 1 && !strcmp(argv[1], "serve")) {
        return cmd_serve(argc - 2, argv + 2);
    }
    if (argc > 1 && !strcmp(argv[1], "client")) {
        return cmd_client(argc - 2, argv + 2);
    }
    if (env_seq && *env_seq) {
        seq = parse_count("QIO_BENCH_CONNS", env_seq);
    }
    if (env_burst && *env_burst) {
        burst = parse_count("QIO_BENCH_BURST", env_burst);
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            for (int j = 0; j < ALL_SERVERS; j++) {
                const BenchServerOps *ops = all_servers[j];

                printf("%s\t%s\t%s\n", ops->name, ops->label,
                       ops->close == listener_close ? "listener" :
                       "reference");
            }
            return 0;
        } else if (!strcmp(argv[i], "--results")) {
            results = true;
        } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            runs[PATTERN_SEQ] = runs[PATTERN_BURST] =
                parse_count("--runs", argv[++i]);
        } else if (!strcmp(argv[i], "--servers") && i + 1 < argc) {
            server_list = argv[++i];
        } else if (argv[i][0] != '-' && npos == 0) {
            seq = parse_count("SEQ", argv[i]);
            npos++;
        } else if (argv[i][0] != '-' && npos == 1) {
            burst = parse_count("BURST", argv[i]);
            npos++;
        } else {
            fprintf(stderr, "bench-accept: bad argument '%s' (see the "
                    "comment at the top of bench-accept.c)\n", argv[i]);
            return 2;
        }
    }
    if (server_list) {
        g_auto(GStrv) names = g_strsplit(server_list, ",", -1);

        for (int i = 0; names[i]; i++) {
            const BenchServerOps *ops = find_server(names[i]);

            if (!ops) {
                fprintf(stderr, "bench-accept: no server '%s'\n", names[i]);
                return 2;
            }
            if (nservers < ALL_SERVERS) {
                servers[nservers++] = ops;
            }
        }
    } else {
        for (int i = 0; i < ALL_SERVERS; i++) {
            servers[nservers++] = all_servers[i];
        }
    }

    init_qemu();
    burst_asked = burst;
    burst = MIN(burst, max_burst());
    if (burst < 1) {
        bench_fail("no room for a burst (somaxconn %d)", read_somaxconn());
    }
    fds = g_new(int, burst);

    printf("bench-accept: %d CPUs, loopback 127.0.0.1 and unix sockets\n",
           (int)sysconf(_SC_NPROCESSORS_ONLN));
    printf("seq:   %d clients one after the other, %d runs\n", seq,
           runs[PATTERN_SEQ]);
    printf("burst: %d queued clients%s, backlog %d, %d runs\n", burst,
           burst != burst_asked ? " (clamped)" : "", BENCH_BACKLOG,
           runs[PATTERN_BURST]);
    printf("each after %d untimed sequential clients on a fresh server; "
           "servers interleaved\n", WARMUP);
    fflush(stdout);

    {
        int maxruns = MAX(runs[PATTERN_SEQ], runs[PATTERN_BURST]);
        int ncells = BENCH_TRANSPORT_COUNT * PATTERN_COUNT * nservers;
        g_autofree double *wall = g_new0(double, ncells * maxruns);
        g_autofree double *cpu = g_new0(double, ncells * maxruns);
        g_autofree double *wake = g_new0(double, ncells * maxruns);
        g_autofree Figures *fig = g_new0(Figures, nservers);

#define CELL(t, p, i) ((((t) * PATTERN_COUNT + (p)) * nservers + (i)) * maxruns)
        for (int run = 0; run < maxruns; run++) {
            for (BenchTransport t = 0; t < BENCH_TRANSPORT_COUNT; t++) {
                for (Pattern p = 0; p < PATTERN_COUNT; p++) {
                    int n = p == PATTERN_SEQ ? seq : burst;

                    if (run >= runs[p]) {
                        continue;
                    }
                    for (int i = 0; i < nservers; i++) {
                        int at = CELL(t, p, i) + run;
                        Cell c;

                        measure(servers[i], t, p, n, fds, &c);
                        wall[at] = c.wall_ns / 1e3 / n;
                        cpu[at] = c.cpu_ns / 1e3 / n;
                        wake[at] = (double)c.dispatching / n;
                        printf("  run %d  %-4s %-5s %-22s %9.2f ms  "
                               "%7.2f us/client  CPU %6.2f us/client  "
                               "%.4f wake-ups/client\n", run + 1,
                               transport_names[t], pattern_names[p],
                               servers[i]->label, c.wall_ns / 1e6, wall[at],
                               cpu[at], wake[at]);
                        if (results) {
                            printf("result server=%s transport=%s "
                                   "pattern=%s run=%d clients=%d "
                                   "wall_ns=%" PRId64 " cpu_ns=%" PRId64
                                   " iterations=%ld dispatching=%ld\n",
                                   servers[i]->name, transport_names[t],
                                   pattern_names[p], run + 1, n, c.wall_ns,
                                   c.cpu_ns, c.iterations, c.dispatching);
                        }
                        fflush(stdout);
                    }
                }
            }
        }

        for (BenchTransport t = 0; t < BENCH_TRANSPORT_COUNT; t++) {
            for (Pattern p = 0; p < PATTERN_COUNT; p++) {
                for (int i = 0; i < nservers; i++) {
                    int at = CELL(t, p, i);

                    fig[i].wall_us = median(&wall[at], runs[p]);
                    fig[i].cpu_us = median(&cpu[at], runs[p]);
                    fig[i].wakeups = median(&wake[at], runs[p]);
                }
                print_table(servers, nservers, t, p,
                            p == PATTERN_SEQ ? seq : burst, runs[p], fig);
            }
        }
#undef CELL
    }
    printf("\nvs-raw: server / raw epoll+accept4 (above 1 is slower).  CPU: "
           "the server thread's.\nwake-ups: loop iterations that accepted "
           "a client.  Total time %.1f s; figures only, nothing is asserted "
           "on speed.\n", (now_ns() - start) / 1e9);
    return 0;
}
