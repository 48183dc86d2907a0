/*
 * bench-accept: how fast QIONetListener accepts and dispatches clients,
 * against a plain epoll + accept4 loop as the reference limit.
 *
 *   bench-accept [CONNS [BURST]]
 *
 * (or the environment variables QIO_BENCH_CONNS, QIO_BENCH_BURST; the
 * arguments win).  Three server modes, each on 127.0.0.1:0:
 *
 *   raw   a non-blocking listening socket, epoll_wait() + accept4() until
 *         EAGAIN, close() each client (plain POSIX: the reference);
 *   glib  the listener, set_client_func() on the default GMainContext,
 *         driven by g_main_context_iteration();
 *   aio   the listener, set_client_aio_func() on the main AioContext,
 *         driven by aio_poll().
 *
 * The listener's callback only counts; the listener then drops the client,
 * which closes it.  Two figures per mode, all from one run:
 *
 *   rate   a client thread opens CONNS connections (default 20000) in waves
 *          of WAVE; each wave stays open until the server has accepted all
 *          of it, then is closed with SO_LINGER {1, 0} (a reset, so no
 *          TIME_WAIT piles up and ephemeral ports and fds never run out).
 *          Accepted connections per second, and the server thread's CPU
 *          time per connection.
 *   burst  with the server not running, BURST connections (default 2000,
 *          kept below net.core.somaxconn and the fd limit) are queued on a
 *          listener with backlog BACKLOG; then the server runs and the time
 *          until all are accepted is measured.
 *
 * Each figure is the median of several runs, the modes interleaved.  The
 * program prints absolute figures and listener/raw ratios and never judges
 * them: it exits non-zero only on a functional failure (an error, or
 * connections not all accepted within LIMIT_S seconds).
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/timer.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"

#define DEFAULT_CONNS 20000
#define DEFAULT_BURST 2000
#define WAVE 256
#define WARMUP 512              /* untimed connections before each rate run */
#define BACKLOG 4096
#define RATE_RUNS 3
#define BURST_RUNS 5
#define LIMIT_S 60              /* bound of every wait: functional failure */
#define TICK_MS 100             /* servers wake up at least this often */

typedef enum {
    MODE_RAW,
    MODE_GLIB,
    MODE_AIO,
    MODE_COUNT
} Mode;

static const char *const mode_names[MODE_COUNT] = {
    "raw epoll+accept4",
    "listener GMainCtx",
    "listener AioCtx",
};

/* Accepted-and-dispatched connections, shared with the client thread. */
static struct {
    gint accepted;
    gint wave_target;           /* the client waits for accepted >= this */
    gint failed;                /* the client thread gave up */
    GMutex lock;
    GCond cond;
} srv;

static void __attribute__((noreturn)) G_GNUC_PRINTF(1, 2)
fail(const char *fmt, ...)
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

/* Called once per accepted (and, for the listener, dispatched) client. */
static void count_one(void)
{
    int n = g_atomic_int_add(&srv.accepted, 1) + 1;

    if (n == g_atomic_int_get(&srv.wave_target)) {
        g_mutex_lock(&srv.lock);
        g_cond_broadcast(&srv.cond);
        g_mutex_unlock(&srv.lock);
    }
}

static void reset_counters(void)
{
    g_atomic_int_set(&srv.accepted, 0);
    g_atomic_int_set(&srv.wave_target, -1);
    g_atomic_int_set(&srv.failed, 0);
}

/* ---- the client side (POSIX) ---- */

static int client_connect(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -errno;
    }
    while (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
        int err = errno;
        if (err != EINTR) {
            close(fd);
            return -err;
        }
    }
    return fd;
}

/* Closes with a reset: no TIME_WAIT on either side. */
static void client_reset_close(int fd)
{
    struct linger lin = { .l_onoff = 1, .l_linger = 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
    close(fd);
}

typedef struct {
    struct sockaddr_in sa;
    int total;
    int64_t deadline_ns;
    char error[160];
} ClientJob;

static void client_fail(ClientJob *job, const char *what, int err)
{
    snprintf(job->error, sizeof(job->error), "client: %s: %s", what,
             strerror(err));
    g_atomic_int_set(&srv.failed, 1);
}

static gpointer client_thread(gpointer opaque)
{
    ClientJob *job = opaque;
    int fds[WAVE];
    int done = 0;

    while (done < job->total) {
        int n = MIN(WAVE, job->total - done);
        int target = done + n;
        bool ok = true;

        g_atomic_int_set(&srv.wave_target, target);
        for (int i = 0; i < n; i++) {
            fds[i] = client_connect(&job->sa);
            if (fds[i] < 0) {
                client_fail(job, "connect", -fds[i]);
                for (int j = 0; j < i; j++) {
                    client_reset_close(fds[j]);
                }
                return NULL;
            }
        }
        g_mutex_lock(&srv.lock);
        while (g_atomic_int_get(&srv.accepted) < target) {
            gint64 end = g_get_monotonic_time() +
                (job->deadline_ns - now_ns()) / 1000;
            if (!g_cond_wait_until(&srv.cond, &srv.lock, end) &&
                now_ns() >= job->deadline_ns) {
                ok = g_atomic_int_get(&srv.accepted) >= target;
                break;
            }
        }
        g_mutex_unlock(&srv.lock);
        for (int i = 0; i < n; i++) {
            client_reset_close(fds[i]);
        }
        if (!ok) {
            client_fail(job, "server did not accept a wave in time",
                        ETIMEDOUT);
            return NULL;
        }
        done = target;
    }
    return NULL;
}

/* ---- the servers ---- */

typedef struct {
    Mode mode;
    int port;
    /* raw */
    int lfd;
    int epfd;
    /* listener */
    QIONetListener *listener;
    guint tick_source;          /* GLib: wakes the default context */
    QEMUTimer *tick_timer;      /* aio: wakes the main AioContext */
} Server;

static void on_client(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer opaque)
{
    (void)listener;
    (void)sioc;
    (void)opaque;
    count_one();
}

static gboolean glib_tick(gpointer opaque)
{
    (void)opaque;
    return G_SOURCE_CONTINUE;
}

static void aio_tick(void *opaque)
{
    Server *s = opaque;

    timer_mod(s->tick_timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + TICK_MS);
}

static void server_open(Server *s, Mode mode)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->lfd = s->epfd = -1;

    if (mode == MODE_RAW) {
        struct sockaddr_in sa = {
            .sin_family = AF_INET,
            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        socklen_t len = sizeof(sa);
        struct epoll_event ev = { .events = EPOLLIN };
        int one = 1;

        s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->lfd < 0 ||
            setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one,
                       sizeof(one)) < 0 ||
            bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(s->lfd, BACKLOG) < 0 ||
            getsockname(s->lfd, (struct sockaddr *)&sa, &len) < 0) {
            fail("raw listening socket: %s", strerror(errno));
        }
        s->port = ntohs(sa.sin_port);
        s->epfd = epoll_create1(EPOLL_CLOEXEC);
        ev.data.fd = s->lfd;
        if (s->epfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &ev) < 0) {
            fail("epoll: %s", strerror(errno));
        }
    } else {
        Error *err = NULL;
        g_autoptr(SocketAddress) addr = socket_parse("127.0.0.1:0", &err);
        g_autoptr(SocketAddress) local = NULL;

        if (!addr) {
            fail("socket_parse: %s", error_get_pretty(err));
        }
        s->listener = qio_net_listener_new();
        qio_net_listener_set_name(s->listener, "bench-accept");
        if (qio_net_listener_open_sync(s->listener, addr, BACKLOG, &err) < 0) {
            fail("qio_net_listener_open_sync: %s", error_get_pretty(err));
        }
        local = qio_net_listener_get_local_address(s->listener, 0, &err);
        if (!local || local->type != SOCKET_ADDRESS_TYPE_INET) {
            fail("qio_net_listener_get_local_address: %s",
                 err ? error_get_pretty(err) : "not an inet address");
        }
        s->port = atoi(local->u.inet.port);
        if (mode == MODE_GLIB) {
            qio_net_listener_set_client_func(s->listener, on_client, NULL,
                                             NULL);
            s->tick_source = g_timeout_add(TICK_MS, glib_tick, NULL);
        } else {
            qio_net_listener_set_client_aio_func(s->listener, on_client, NULL,
                                                 NULL);
            s->tick_timer = aio_timer_new(qemu_get_aio_context(),
                                          QEMU_CLOCK_REALTIME, SCALE_MS,
                                          aio_tick, s);
            aio_tick(s);
        }
    }
}

/* One round of the server: waits (at most about TICK_MS) and dispatches. */
static void server_step(Server *s)
{
    switch (s->mode) {
    case MODE_RAW: {
        struct epoll_event ev;
        int n = epoll_wait(s->epfd, &ev, 1, TICK_MS);

        if (n < 0 && errno != EINTR) {
            fail("epoll_wait: %s", strerror(errno));
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
                fail("accept4: %s", strerror(errno));
            }
            close(c);
            count_one();
        }
        break;
    }
    case MODE_GLIB:
        g_main_context_iteration(NULL, TRUE);
        break;
    case MODE_AIO:
        aio_poll(qemu_get_aio_context(), true);
        break;
    default:
        g_assert_not_reached();
    }
}

/* Runs the server until @target clients are accepted; false on timeout. */
static bool server_run(Server *s, int target, int64_t deadline_ns)
{
    while (g_atomic_int_get(&srv.accepted) < target) {
        if (g_atomic_int_get(&srv.failed) || now_ns() >= deadline_ns) {
            return false;
        }
        server_step(s);
    }
    return true;
}

static void server_close(Server *s)
{
    if (s->mode == MODE_RAW) {
        close(s->epfd);
        close(s->lfd);
        return;
    }
    if (s->mode == MODE_GLIB) {
        qio_net_listener_set_client_func(s->listener, NULL, NULL, NULL);
        g_source_remove(s->tick_source);
    } else {
        qio_net_listener_set_client_aio_func(s->listener, NULL, NULL, NULL);
        timer_free(s->tick_timer);
    }
    object_unref(OBJECT(s->listener));
    /* Let any release the listener scheduled run now. */
    for (int i = 0; i < 10; i++) {
        g_main_context_iteration(NULL, FALSE);
        aio_poll(qemu_get_aio_context(), false);
    }
}

static struct sockaddr_in server_addr(Server *s)
{
    struct sockaddr_in sa = {
        .sin_family = AF_INET,
        .sin_port = htons(s->port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    return sa;
}

/* ---- the two measurements ---- */

typedef struct {
    double rate;                /* connections per second */
    double cpu_us;              /* server thread CPU per connection */
} RateResult;

static void rate_pass(Server *s, int total, RateResult *res)
{
    ClientJob job = {
        .sa = server_addr(s),
        .total = total,
        .deadline_ns = now_ns() + LIMIT_S * 1000000000LL,
    };
    int64_t t0, t1, c0, c1;
    GThread *thread;
    bool ok;

    reset_counters();
    c0 = thread_cpu_ns();
    t0 = now_ns();
    thread = g_thread_new("bench-client", client_thread, &job);
    ok = server_run(s, total, job.deadline_ns);
    t1 = now_ns();
    c1 = thread_cpu_ns();
    g_thread_join(thread);
    if (job.error[0]) {
        fail("%s: rate: %s", mode_names[s->mode], job.error);
    }
    if (!ok) {
        fail("%s: rate: %d of %d connections accepted within %d s",
             mode_names[s->mode], g_atomic_int_get(&srv.accepted), total,
             LIMIT_S);
    }
    if (res) {
        res->rate = total / ((t1 - t0) / 1e9);
        res->cpu_us = (c1 - c0) / 1e3 / total;
    }
}

static double burst_pass(Server *s, int k, int *fds)
{
    struct sockaddr_in sa = server_addr(s);
    int64_t t0, t1;
    bool ok;

    reset_counters();
    for (int i = 0; i < k; i++) {
        fds[i] = client_connect(&sa);
        if (fds[i] < 0) {
            fail("%s: burst: connect %d of %d: %s", mode_names[s->mode],
                 i + 1, k, strerror(-fds[i]));
        }
    }
    t0 = now_ns();
    ok = server_run(s, k, t0 + LIMIT_S * 1000000000LL);
    t1 = now_ns();
    for (int i = 0; i < k; i++) {
        client_reset_close(fds[i]);
    }
    if (!ok) {
        fail("%s: burst: %d of %d queued connections accepted within %d s",
             mode_names[s->mode], g_atomic_int_get(&srv.accepted), k, LIMIT_S);
    }
    return (t1 - t0) / 1e6;
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

static int parse_count(const char *what, const char *str)
{
    char *end;
    long v = strtol(str, &end, 10);

    if (*end || v < 1 || v > 10000000) {
        fprintf(stderr, "bench-accept: bad %s '%s'\n", what, str);
        fprintf(stderr, "usage: bench-accept [CONNS [BURST]]\n");
        exit(2);
    }
    return v;
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

int main(int argc, char **argv)
{
    const char *env_conns = getenv("QIO_BENCH_CONNS");
    const char *env_burst = getenv("QIO_BENCH_BURST");
    int conns = DEFAULT_CONNS, burst = DEFAULT_BURST, burst_asked;
    int somaxconn = read_somaxconn();
    struct rlimit rl;
    double rate[MODE_COUNT][RATE_RUNS], cpu[MODE_COUNT][RATE_RUNS];
    double drain[MODE_COUNT][BURST_RUNS];
    double rate_med[MODE_COUNT], cpu_med[MODE_COUNT], drain_med[MODE_COUNT];
    g_autofree int *fds = NULL;
    int64_t start = now_ns();

    if (env_conns && *env_conns) {
        conns = parse_count("QIO_BENCH_CONNS", env_conns);
    }
    if (env_burst && *env_burst) {
        burst = parse_count("QIO_BENCH_BURST", env_burst);
    }
    if (argc > 3) {
        fprintf(stderr, "usage: bench-accept [CONNS [BURST]]\n");
        return 2;
    }
    if (argc > 1) {
        conns = parse_count("CONNS", argv[1]);
    }
    if (argc > 2) {
        burst = parse_count("BURST", argv[2]);
    }

    module_call_init(MODULE_INIT_QOM);
    qemu_init_main_loop(&error_fatal);

    /* A burst holds 2 fds per connection; the accept queue is capped. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    burst_asked = burst;
    burst = MIN(burst, MIN(BACKLOG, somaxconn) - 16);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        burst = MIN(burst, ((int64_t)rl.rlim_cur - 64) / 2);
    }
    if (burst < 1) {
        fail("no room for a burst (somaxconn %d)", somaxconn);
    }
    fds = g_new(int, burst);

    printf("bench-accept: %d CPUs, loopback 127.0.0.1\n",
           (int)sysconf(_SC_NPROCESSORS_ONLN));
    printf("rate:  %d connections per run (waves of %d, reset on close), "
           "%d untimed warm-up, median of %d runs\n",
           conns, WAVE, WARMUP, RATE_RUNS);
    printf("burst: %d queued connections%s, backlog %d, somaxconn %d, "
           "median of %d runs\n", burst,
           burst != burst_asked ? " (clamped)" : "", BACKLOG, somaxconn,
           BURST_RUNS);
    fflush(stdout);

    for (int run = 0; run < RATE_RUNS; run++) {
        for (Mode m = 0; m < MODE_COUNT; m++) {
            Server s;
            RateResult r;

            server_open(&s, m);
            rate_pass(&s, WARMUP, NULL);
            rate_pass(&s, conns, &r);
            server_close(&s);
            rate[m][run] = r.rate;
            cpu[m][run] = r.cpu_us;
            printf("  rate  run %d  %-18s %9.0f conn/s  %6.2f us/conn "
                   "server CPU\n", run + 1, mode_names[m], r.rate, r.cpu_us);
            fflush(stdout);
        }
    }

    for (int run = 0; run < BURST_RUNS; run++) {
        for (Mode m = 0; m < MODE_COUNT; m++) {
            Server s;

            server_open(&s, m);
            drain[m][run] = burst_pass(&s, burst, fds);
            server_close(&s);
            printf("  burst run %d  %-18s %9.2f ms  (%.0f conn/s)\n",
                   run + 1, mode_names[m], drain[m][run],
                   burst / (drain[m][run] / 1e3));
            fflush(stdout);
        }
    }

    for (Mode m = 0; m < MODE_COUNT; m++) {
        rate_med[m] = median(rate[m], RATE_RUNS);
        cpu_med[m] = median(cpu[m], RATE_RUNS);
        drain_med[m] = median(drain[m], BURST_RUNS);
    }

    printf("\n%-18s %13s %7s %10s %7s %13s\n", "mode", "rate(conn/s)",
           "vs-raw", "burst(ms)", "vs-raw", "cpu(us/conn)");
    for (Mode m = 0; m < MODE_COUNT; m++) {
        printf("%-18s %13.0f %7.2f %10.2f %7.2f %13.2f\n", mode_names[m],
               rate_med[m], rate_med[m] / rate_med[MODE_RAW], drain_med[m],
               drain_med[m] / drain_med[MODE_RAW], cpu_med[m]);
    }
    printf("vs-raw: listener / raw (rate: above 1 is faster; burst: above 1 "
           "is slower).  cpu: server thread CPU time per connection.\n");
    printf("total time %.1f s; figures only, nothing is asserted on speed\n",
           (now_ns() - start) / 1e9);
    return 0;
}
