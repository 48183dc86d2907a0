/*
 * QIONetListener: seeded random sequences of API calls, from outside and
 * from inside the callbacks, checked against a small reference model of
 * DESIGN.md sections 2 and 3.
 *
 * Everything runs in the main thread: the default GMainContext (GSource
 * registrations) and the main AioContext (aio registrations, run by
 * aio_poll or through the GLib main loop it is attached to).  The model
 * follows each call as it is made, so a callback checks on entry that
 * it is the registration that must serve now.
 *
 * What is checked:
 * - a client is handed to the current registration only, once, or to
 *   wait_client; every client queued on an open socket while a
 *   registration is current is eventually delivered (DRAIN steps); none is
 *   accepted and dropped: a client the model holds queued on an open
 *   socket never sees end of file or a reset;
 * - notify runs exactly once per GSource registration, never while it is
 *   current and never while one of its callbacks runs;
 * - the listener is finalized exactly when the ownership rule says (no
 *   caller reference, and no callback set or disconnected) and never
 *   under a running dispatch: inside a callback, after whatever it did
 *   (last unref and nested loops included), the listener still answers;
 * - at the end every client reads what the model says (its registration's
 *   tag, 'w' for wait_client, nothing if never handed out) and every fd
 *   is closed.
 *
 * Usage: test-random [--seed N] [--seeds K] [--steps M] [g_test options]
 * (or QIO_TEST_SEED, QIO_TEST_SEEDS, QIO_TEST_STEPS): K sequences of up to
 * M outside steps, from seeds N, N+1, ...  (--seed alone runs one).  A
 * failure prints the seed and the operations run, to replay with
 * `test-random --seed N --steps M`; the same seed with fewer steps runs
 * the same prefix, then releases the listener.  QIO_TEST_SHOW_STEPS=1
 * prints every sequence.  Under valgrind, a step in which it reports an
 * error fails the sequence.  --kinds glib|aio (only those registrations)
 * and --no-nested (no nested loops in callbacks) tell holes apart.
 * Replays are exact on one host; another host may batch accepts
 * differently and so take other paths from the same seed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "test-util.h"

/* Under valgrind, an error it reports fails the step that caused it. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND_H 1
#endif
#endif

#define DEFAULT_SEED 20240601u
#define DEFAULT_SEEDS 1000
#define DEFAULT_STEPS 100

#define MAX_SOCKS 8             /* nsioc, closed ones included */
#define MAX_OPEN 3
#define MAX_QUEUED 8            /* per socket; the backlog is 16 */
#define MAX_CLIENTS 40
#define MAX_REGS 64
#define MAX_DEPTH 3             /* callbacks nested in callbacks */

typedef enum {
    RK_GLIB,                    /* set_client_func */
    RK_GLIB_FULL,               /* set_client_func_full, default ctx */
    RK_AIO,                     /* set_client_aio_func, NULL ctx */
    RK_AIO_MAIN,                /* set_client_aio_func, explicit main */
    RK_COUNT,
} RegKind;

static const char *const rk_names[] = {
    "glib", "glib-full", "aio", "aio-main",
};

typedef struct Seq Seq;

typedef struct {
    Seq *s;
    int id;
    RegKind kind;
    char tag;                   /* written to each client it gets */
    int depth;                  /* its callbacks running now */
    int notified;
} Reg;

typedef enum {
    CL_QUEUED,                  /* in its socket's accept queue */
    CL_DELIVERED,               /* handed to a callback */
    CL_WAITED,                  /* returned by wait_client */
    CL_ORPHANED,                /* its socket closed while queued */
} ClientState;

typedef struct {
    QIOChannelSocket *sioc;
    int sock;
    ClientState st;
    char expect;                /* the byte it must read; 0: none */
} Client;

typedef struct {
    bool open;
    SocketAddress *addr;        /* where clients connect */
    int queued;
} Sock;

struct Seq {
    guint32 seed;
    int steps;
    int step;                   /* the outside step running, from 0 */
    GRand *rand;                /* the steps */
    GString *log;
    char *dir;
    QIONetListener *l;
    QIOChannelSocket *sioc0;    /* our own reference: finalize indicator */
    bool caller_ref;
    bool connected;
    bool finishing;             /* callbacks clear themselves */
    Sock socks[MAX_SOCKS];
    int nsock;
    Client clients[MAX_CLIENTS + 1];    /* + the one "finish" may add */
    int nclients;
    Reg *regs[MAX_REGS];
    int nregs;
    Reg *current;
    int depth;                  /* callbacks running now */
    int deliveries;
    int unix_seq;
};

/*
 * Diagnostics, to tell one hole from another: only GSource or only aio
 * registrations (--kinds glib|aio), no nested loops in callbacks
 * (--no-nested).
 */
enum { KINDS_ALL, KINDS_GLIB, KINDS_AIO };
static int opt_kinds = KINDS_ALL;
static bool opt_no_nested;

/* The sequence running now, for the failure report. */
static Seq *running;
static int total_ops;
static int total_steps;
static int total_deliveries;

static void report(Seq *s)
{
    g_printerr("test-random: FAILED with seed %u in step %d of %d\n"
               "  replay: test-random --seed %u --steps %d\n"
               "  steps: %s\n",
               s->seed, s->step, s->steps, s->seed, s->steps, s->log->str);
}

static void on_fatal_signal(int sig)
{
    if (running) {
        report(running);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

#define CHECK(cond, ...)                                                \
    do {                                                                \
        if (!(cond)) {                                                  \
            g_printerr("test-random: check failed at %s:%d: %s: ",      \
                       __FILE__, __LINE__, #cond);                      \
            g_printerr(__VA_ARGS__);                                    \
            g_printerr("\n");                                           \
            report(s);                                                  \
            running = NULL;                                             \
            abort();                                                    \
        }                                                               \
    } while (0)

static unsigned valgrind_errors(void)
{
#ifdef HAVE_VALGRIND_H
    return VALGRIND_COUNT_ERRORS;
#else
    return 0;
#endif
}

static void logf_(Seq *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void logf_(Seq *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_string_append_vprintf(s->log, fmt, ap);
    va_end(ap);
    g_string_append_c(s->log, ' ');
    total_ops++;
}

static int pick(Seq *s, int n)
{
    return g_rand_int_range(s->rand, 0, n);
}

static bool chance(Seq *s, int percent)
{
    return pick(s, 100) < percent;
}

static bool finalized(Seq *s)
{
    return OBJECT(s->sioc0)->ref == 1;
}

/* The ownership rule (section 2): what keeps the listener alive. */
static bool model_alive(Seq *s)
{
    return s->caller_ref || (s->current && s->connected);
}

/* ---- sockets and clients ---- */

static int open_socks(Seq *s)
{
    int n = 0;

    for (int i = 0; i < s->nsock; i++) {
        n += s->socks[i].open;
    }
    return n;
}

static int queued_open(Seq *s)
{
    int n = 0;

    for (int i = 0; i < s->nsock; i++) {
        if (s->socks[i].open) {
            n += s->socks[i].queued;
        }
    }
    return n;
}

static SocketAddress *next_address(Seq *s, bool unix_)
{
    if (unix_) {
        g_autofree char *path =
            g_strdup_printf("%s/s%d", s->dir, s->unix_seq++);
        return tu_unix_address(path, false);
    }
    return tu_parse("127.0.0.1:0");
}

/* The model's side of a socket the listener now has (index nsock). */
static void sock_added(Seq *s)
{
    Sock *k = &s->socks[s->nsock];

    k->open = true;
    k->queued = 0;
    k->addr = qio_net_listener_get_local_address(s->l, s->nsock,
                                                 &error_abort);
    s->nsock++;
    s->connected = true;
}

static void do_open(Seq *s, bool unix_)
{
    g_autoptr(SocketAddress) addr = next_address(s, unix_);

    logf_(s, "open(%s)", unix_ ? "unix" : "inet");
    CHECK(qio_net_listener_open_sync(s->l, addr, 16, &error_abort) == 0,
          "open_sync");
    sock_added(s);
}

static void do_add(Seq *s, bool unix_)
{
    g_autoptr(SocketAddress) addr = next_address(s, unix_);
    QIOChannelSocket *sioc = qio_channel_socket_new();

    logf_(s, "add(%s)", unix_ ? "unix" : "inet");
    CHECK(qio_channel_socket_listen_sync(sioc, addr, 16, &error_abort) == 0,
          "listen_sync");
    qio_net_listener_add(s->l, sioc);
    object_unref(OBJECT(sioc));
    sock_added(s);
}

static void do_disconnect(Seq *s)
{
    logf_(s, "disconnect");
    /* The model first: finalize may follow (after the dispatch, if any). */
    s->connected = false;
    for (int i = 0; i < s->nsock; i++) {
        s->socks[i].open = false;
        s->socks[i].queued = 0;
    }
    for (int i = 0; i < s->nclients; i++) {
        if (s->clients[i].st == CL_QUEUED) {
            s->clients[i].st = CL_ORPHANED;
        }
    }
    qio_net_listener_disconnect(s->l);
}

/*
 * A client of open socket @k: it sends its index so that whoever
 * accepts it can tell which one it is.
 */
static void connect_one(Seq *s, int k)
{
    Client *c = &s->clients[s->nclients];
    guint32 id = s->nclients;

    c->sioc = tu_connect(s->socks[k].addr);
    c->sock = k;
    c->st = CL_QUEUED;
    c->expect = 0;
    qio_channel_write_all(QIO_CHANNEL(c->sioc), (char *)&id, sizeof(id),
                          &error_abort);
    s->socks[k].queued++;
    s->nclients++;
}

/* An open socket with room, or -1. */
static int pick_connectable(Seq *s)
{
    int cand[MAX_SOCKS], n = 0;

    if (s->nclients >= MAX_CLIENTS) {
        return -1;
    }
    for (int i = 0; i < s->nsock; i++) {
        if (s->socks[i].open && s->socks[i].queued < MAX_QUEUED) {
            cand[n++] = i;
        }
    }
    return n ? cand[pick(s, n)] : -1;
}

static void do_connect(Seq *s, int n)
{
    logf_(s, "connect(%d)", n);
    for (int i = 0; i < n; i++) {
        int k = pick_connectable(s);

        if (k < 0) {
            break;
        }
        connect_one(s, k);
    }
}

/* Which client the server end @sioc belongs to (it sent its index). */
static Client *identify(Seq *s, QIOChannelSocket *sioc, guint32 *idp)
{
    guint32 id = G_MAXUINT32;

    CHECK(tu_read_bounded(sioc, &id, sizeof(id)) == sizeof(id),
          "accepted client sent no index");
    CHECK(id < (guint32)s->nclients, "unknown client %u", id);
    *idp = id;
    return &s->clients[id];
}

/* A client taken from the queue of an open socket (checked). */
static void dequeue(Seq *s, Client *c, guint32 id, ClientState st, char tag)
{
    CHECK(c->st == CL_QUEUED, "client %u handed out in state %d", id,
          c->st);
    CHECK(s->socks[c->sock].open, "client %u from a closed socket", id);
    s->socks[c->sock].queued--;
    c->st = st;
    c->expect = tag;
}

static void do_wait_client(Seq *s)
{
    QIOChannelSocket *sioc;
    TuWatchdog *wd;
    Client *c;
    guint32 id;

    logf_(s, "wait_client");
    wd = tu_watchdog_start("qio_net_listener_wait_client", 10);
    sioc = qio_net_listener_wait_client(s->l);
    tu_watchdog_stop(wd);
    CHECK(sioc != NULL, "wait_client returned NULL with a client queued");
    c = identify(s, sioc, &id);
    dequeue(s, c, id, CL_WAITED, 'w');
    qio_channel_write_all(QIO_CHANNEL(sioc), "w", 1, &error_abort);
    object_unref(OBJECT(sioc));
}

/* ---- registrations ---- */

static void client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer data);

static void reg_notify(gpointer data)
{
    Reg *r = data;
    Seq *s = r->s;

    CHECK(r->kind == RK_GLIB || r->kind == RK_GLIB_FULL,
          "notify of aio registration %d", r->id);
    CHECK(r->notified == 0, "second notify of registration %d", r->id);
    /* The current one is notified only at finalize, after every dispatch. */
    CHECK(r != s->current || (!model_alive(s) && s->depth == 0),
          "notify of the current registration %d (depth %d)", r->id,
          s->depth);
    CHECK(r->depth == 0, "notify of registration %d during its callback",
          r->id);
    r->notified++;
}

static void call_set(Seq *s, Reg *r)
{
    switch (r->kind) {
    case RK_GLIB:
        qio_net_listener_set_client_func(s->l, client_cb, r, reg_notify);
        break;
    case RK_GLIB_FULL:
        qio_net_listener_set_client_func_full(s->l, client_cb, r,
                                              reg_notify, NULL);
        break;
    case RK_AIO:
        qio_net_listener_set_client_aio_func(s->l, client_cb, r, NULL);
        break;
    case RK_AIO_MAIN:
        qio_net_listener_set_client_aio_func(s->l, client_cb, r,
                                             qemu_get_aio_context());
        break;
    default:
        g_assert_not_reached();
    }
}

static void do_set(Seq *s)
{
    Reg *r;

    if (s->nregs >= MAX_REGS) {
        return;
    }
    r = g_new0(Reg, 1);
    r->s = s;
    r->id = s->nregs;
    r->kind = opt_kinds == KINDS_GLIB ? pick(s, 2)
              : opt_kinds == KINDS_AIO ? RK_AIO + pick(s, 2)
              : pick(s, RK_COUNT);
    r->tag = 'A' + r->id % 26;
    s->regs[s->nregs++] = r;
    logf_(s, "set(r%d,%s)", r->id, rk_names[r->kind]);
    /* The model first: a notify of the old one may run inside. */
    s->current = r;
    call_set(s, r);
}

static void do_clear(Seq *s)
{
    int how = pick(s, 3);

    logf_(s, "clear(%d)", how);
    s->current = NULL;
    switch (how) {
    case 0:
        qio_net_listener_set_client_func(s->l, NULL, NULL, NULL);
        break;
    case 1:
        qio_net_listener_set_client_func_full(s->l, NULL, NULL, NULL, NULL);
        break;
    default:
        qio_net_listener_set_client_aio_func(s->l, NULL, NULL, NULL);
        break;
    }
}

/*
 * The identical tuple again: a no-op.  set_client_func and
 * set_client_func_full on the default context are the same tuple; for
 * aio the model is the same whether the call names the main context or
 * NULL (no notify either way).
 */
static void do_reset_same(Seq *s)
{
    Reg *r = s->current;
    RegKind saved = r->kind;

    if (r->kind == RK_GLIB || r->kind == RK_GLIB_FULL) {
        r->kind = chance(s, 50) ? RK_GLIB : RK_GLIB_FULL;
    } else {
        r->kind = chance(s, 50) ? RK_AIO : RK_AIO_MAIN;
    }
    logf_(s, "reset(r%d,%s)", r->id, rk_names[r->kind]);
    call_set(s, r);
    r->kind = saved;
}

static void do_unref(Seq *s)
{
    logf_(s, "unref");
    s->caller_ref = false;
    object_unref(OBJECT(s->l));
}

/* The listener answers as the model says (only while it is alive). */
static void check_api(Seq *s, QIONetListener *l)
{
    CHECK(!finalized(s), "%s", s->depth ? "finalized under a running dispatch"
          : "finalized while the model holds it alive");
    CHECK(qio_net_listener_is_connected(l) == s->connected,
          "is_connected %d, model %d", qio_net_listener_is_connected(l),
          s->connected);
    CHECK(qio_net_listener_nsioc(l) == (size_t)s->nsock,
          "nsioc %zu, model %d", qio_net_listener_nsioc(l), s->nsock);
    CHECK(qio_net_listener_sioc(l, 0) == s->sioc0, "sioc(0) changed");
    CHECK(qio_net_listener_sioc(l, s->nsock) == NULL, "sioc out of range");
}

/* ---- loops ---- */

static void iterate_glib(int rounds)
{
    for (int i = 0; i < rounds; i++) {
        g_main_context_iteration(NULL, FALSE);
    }
}

static void iterate_aio(int rounds)
{
    for (int i = 0; i < rounds; i++) {
        aio_poll(qemu_get_aio_context(), false);
    }
}

/* A nested loop inside a callback of @r, on its own context. */
static void nested_loop(Seq *s, Reg *r)
{
    int rounds = 1 + pick(s, 3);

    if (opt_no_nested) {
        return;
    }
    if (r->kind == RK_GLIB || r->kind == RK_GLIB_FULL) {
        logf_(s, "nested(glib,%d)", rounds);
        iterate_glib(rounds);
        iterate_aio(1);
    } else {
        logf_(s, "nested(aio,%d)", rounds);
        iterate_aio(rounds);
    }
}

/* Whether a queued client can be served by the current registration. */
static bool servable(Seq *s)
{
    return s->current && queued_open(s) > 0;
}

static void drain(Seq *s)
{
    gint64 deadline = g_get_monotonic_time() + TU_WAIT_US;

    logf_(s, "drain");
    while (servable(s)) {
        CHECK(g_get_monotonic_time() < deadline,
              "%d queued clients not delivered to r%d", queued_open(s),
              s->current->id);
        if (!g_main_context_iteration(NULL, FALSE)) {
            tu_nap();
        }
    }
}

/*
 * No client the model holds queued on an open socket has seen end of
 * file or a reset: none was accepted and dropped.
 */
static void check_queued_untouched(Seq *s)
{
    for (int i = 0; i < s->nclients; i++) {
        Client *c = &s->clients[i];
        struct pollfd pfd = { .fd = c->sioc->fd, .events = POLLIN };

        if (c->st == CL_QUEUED) {
            CHECK(poll(&pfd, 1, 0) == 0,
                  "client %d queued on an open socket was accepted and "
                  "dropped", i);
        }
    }
}

/* ---- callbacks ---- */

/* Inside a callback of @r: a few random API calls. */
static void callback_ops(Seq *s, Reg *r, GRand *cr)
{
    int nops;

    if (s->finishing) {
        logf_(s, "clear");
        s->current = NULL;
        qio_net_listener_set_client_func(s->l, NULL, NULL, NULL);
        if (g_rand_boolean(cr)) {
            nested_loop(s, r);
        }
        return;
    }
    if (s->depth > MAX_DEPTH || g_rand_int_range(cr, 0, 100) < 45) {
        return;
    }
    nops = g_rand_int_range(cr, 1, 4);
    for (int i = 0; i < nops; i++) {
        int op = g_rand_int_range(cr, 0, 100);

        CHECK(!finalized(s), "finalized under a running dispatch");
        if (opt_no_nested && op >= 40 && op < 62) {
            continue;
        }

        if (op < 14) {
            do_clear(s);
        } else if (op < 26) {
            do_set(s);
        } else if (op < 32) {
            if (s->current) {
                do_reset_same(s);
            }
        } else if (op < 40) {
            do_disconnect(s);
        } else if (op < 62) {
            nested_loop(s, r);
        } else if (op < 72) {
            /* Rarely: it ends the sequence soon after. */
            if (s->caller_ref && g_rand_int_range(cr, 0, 100) < 30) {
                do_unref(s);
            }
        } else if (op < 82) {
            do_connect(s, 1);
        } else if (op < 88) {
            if (s->nsock < MAX_SOCKS && open_socks(s) < MAX_OPEN) {
                do_open(s, g_rand_boolean(cr));
            }
        } else if (op < 94) {
            if (queued_open(s) > 0) {
                do_wait_client(s);
            }
        } else {
            logf_(s, "api");
        }
    }
}

static void client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer data)
{
    Reg *r = data;
    Seq *s = r->s;
    GRand *cr;
    Client *c;
    guint32 id;

    CHECK(s == running, "callback of a finished sequence");
    CHECK(listener == s->l, "callback with another listener");
    c = identify(s, sioc, &id);
    g_string_append_printf(s->log, "[r%d:c%u ", r->id, id);
    CHECK(r == s->current, "client %u handed to r%d, current r%d", id,
          r->id, s->current ? s->current->id : -1);
    dequeue(s, c, id, CL_DELIVERED, r->tag);
    qio_channel_write_all(QIO_CHANNEL(sioc), &r->tag, 1, &error_abort);

    /* Which calls it makes depends on the seed and this delivery's index. */
    cr = g_rand_new_with_seed(s->seed * 7919u + s->deliveries++);
    total_deliveries++;
    r->depth++;
    s->depth++;
    callback_ops(s, r, cr);
    /* Still alive under this dispatch, whatever the callback did. */
    check_api(s, listener);
    s->depth--;
    r->depth--;
    g_rand_free(cr);
    g_string_append(s->log, "] ");
}

/* ---- one sequence ---- */

static void do_iterate(Seq *s)
{
    int rounds = 1 + pick(s, 3);
    bool glib = chance(s, 50);

    logf_(s, "iterate(%s,%d)", glib ? "glib" : "aio", rounds);
    if (glib) {
        iterate_glib(rounds);
    } else {
        iterate_aio(rounds);
    }
}

/* The outside operations and their weights. */
typedef enum {
    OP_SET, OP_CLEAR, OP_RESET, OP_DISCONNECT, OP_OPEN, OP_ADD, OP_WAIT,
    OP_CONNECT, OP_ITERATE, OP_DRAIN, OP_UNREF, OP_API, OP_COUNT,
} OutsideOp;

static const int op_weight[OP_COUNT] = {
    [OP_SET] = 12, [OP_CLEAR] = 5, [OP_RESET] = 5, [OP_DISCONNECT] = 2,
    [OP_OPEN] = 5, [OP_ADD] = 3, [OP_WAIT] = 4, [OP_CONNECT] = 20,
    [OP_ITERATE] = 18, [OP_DRAIN] = 10, [OP_UNREF] = 1, [OP_API] = 3,
};

static OutsideOp pick_op(Seq *s)
{
    int total = 0, r;

    for (int i = 0; i < OP_COUNT; i++) {
        total += op_weight[i];
    }
    r = pick(s, total);
    for (int i = 0; i < OP_COUNT; i++) {
        if (r < op_weight[i]) {
            return i;
        }
        r -= op_weight[i];
    }
    g_assert_not_reached();
}

/* Whether @op can run now (the test holds no reference: no API call). */
static bool op_possible(Seq *s, OutsideOp op)
{
    bool room = s->nsock < MAX_SOCKS && open_socks(s) < MAX_OPEN;

    switch (op) {
    case OP_CONNECT:
        return pick_connectable(s) >= 0;
    case OP_ITERATE:
    case OP_DRAIN:
        return true;
    default:
        break;
    }
    if (!s->caller_ref) {
        return false;
    }
    switch (op) {
    case OP_RESET:
        return s->current != NULL;
    case OP_OPEN:
    case OP_ADD:
        return room;
    case OP_WAIT:
        return queued_open(s) > 0;
    case OP_UNREF:
        /* Mostly while it serves on (section 2's ownership rule). */
        return (s->current && s->connected) || chance(s, 20);
    default:
        return true;
    }
}

static void outside_step(Seq *s)
{
    OutsideOp op;

    do {
        op = pick_op(s);
    } while (!op_possible(s, op));

    switch (op) {
    case OP_SET:
        do_set(s);
        break;
    case OP_CLEAR:
        do_clear(s);
        break;
    case OP_RESET:
        do_reset_same(s);
        break;
    case OP_DISCONNECT:
        do_disconnect(s);
        break;
    case OP_OPEN:
        do_open(s, chance(s, 50));
        break;
    case OP_ADD:
        do_add(s, chance(s, 50));
        break;
    case OP_WAIT:
        do_wait_client(s);
        break;
    case OP_CONNECT:
        do_connect(s, 1 + pick(s, 3));
        break;
    case OP_ITERATE:
        do_iterate(s);
        break;
    case OP_DRAIN:
        drain(s);
        break;
    case OP_UNREF:
        do_unref(s);
        break;
    default:
        logf_(s, "api");
        check_api(s, s->l);
        break;
    }
}

/* Iterates both loops until @cond, bounded. */
#define SETTLE_UNTIL(cond)                                              \
    do {                                                                \
        gint64 dl_ = g_get_monotonic_time() + TU_WAIT_US;               \
        while (!(cond)) {                                               \
            CHECK(g_get_monotonic_time() < dl_, "timed out: %s", #cond); \
            bool busy_ = g_main_context_iteration(NULL, FALSE);         \
            busy_ |= aio_poll(qemu_get_aio_context(), false);           \
            if (!busy_) {                                               \
                tu_nap();                                               \
            }                                                           \
        }                                                               \
    } while (0)

static bool all_notified(Seq *s)
{
    for (int i = 0; i < s->nregs; i++) {
        Reg *r = s->regs[i];
        bool glib = r->kind == RK_GLIB || r->kind == RK_GLIB_FULL;

        if (r->notified != (glib ? 1 : 0)) {
            return false;
        }
    }
    return true;
}

static void run_sequence(guint32 seed, int steps)
{
    Seq *s = g_new0(Seq, 1);
    int fds = tu_count_fds();

    s->seed = seed;
    s->steps = steps;
    s->rand = g_rand_new_with_seed(seed);
    s->log = g_string_new(NULL);
    s->dir = tu_make_tmpdir();
    running = s;

    s->l = qio_net_listener_new();
    s->caller_ref = true;
    for (int i = 0, n = 1 + pick(s, MAX_OPEN); i < n; i++) {
        do_open(s, chance(s, 50));
    }
    s->sioc0 = QIO_CHANNEL_SOCKET(
        object_ref(OBJECT(qio_net_listener_sioc(s->l, 0))));

    for (s->step = 0; s->step < steps && model_alive(s); s->step++) {
        unsigned errors = valgrind_errors();

        total_steps++;
        outside_step(s);
        CHECK(valgrind_errors() == errors, "valgrind reported an error in "
              "the last step");
        if (model_alive(s)) {
            CHECK(!finalized(s), "finalized while the model holds it");
            check_queued_untouched(s);
        }
    }

    /* The end: let it go as the ownership rule says. */
    if (s->caller_ref) {
        switch (pick(s, 3)) {
        case 0:
            do_clear(s);
            break;
        case 1:
            do_disconnect(s);
            break;
        default:
            break;
        }
        do_unref(s);
    }
    if (model_alive(s)) {
        logf_(s, "finish");
        s->finishing = true;
        if (queued_open(s) == 0) {
            /* Alive: it is connected, so some socket is open. */
            for (int k = 0; k < s->nsock; k++) {
                if (s->socks[k].open) {
                    connect_one(s, k);
                    break;
                }
            }
        }
        SETTLE_UNTIL(!model_alive(s));
    }
    SETTLE_UNTIL(finalized(s));
    SETTLE_UNTIL(all_notified(s));
    iterate_glib(3);
    iterate_aio(3);
    CHECK(finalized(s), "released twice?");
    CHECK(all_notified(s), "notify count changed after finalize");
    CHECK(s->sioc0->fd == -1, "channel 0 not closed at finalize");

    for (int i = 0; i < s->nclients; i++) {
        Client *c = &s->clients[i];
        char buf[2] = "";
        size_t got = tu_read_bounded(c->sioc, buf, 2);

        if (c->expect) {
            CHECK(got == 1 && buf[0] == c->expect,
                  "client %d read %zu byte(s) '%c', expected '%c'", i, got,
                  got ? buf[0] : '-', c->expect);
        } else {
            CHECK(got == 0, "client %d, never handed out, read %zu byte(s)",
                  i, got);
        }
        object_unref(OBJECT(c->sioc));
    }
    for (int i = 0; i < s->nsock; i++) {
        qapi_free_SocketAddress(s->socks[i].addr);
    }
    object_unref(OBJECT(s->sioc0));
    SETTLE_UNTIL(tu_count_fds() == fds);
    CHECK(valgrind_errors() == 0, "valgrind reported an error at the end");
    running = NULL;
    if (g_getenv("QIO_TEST_SHOW_STEPS")) {
        g_printerr("seed %u: %s\n", s->seed, s->log->str);
    }

    for (int i = 0; i < s->nregs; i++) {
        g_free(s->regs[i]);
    }
    tu_rmdir_tmp(s->dir);
    g_string_free(s->log, TRUE);
    g_rand_free(s->rand);
    g_free(s);
}

static guint32 opt_seed = DEFAULT_SEED;
static int opt_seeds = DEFAULT_SEEDS;
static int opt_steps = DEFAULT_STEPS;

static void test_sequences(void)
{
    gint64 start = g_get_monotonic_time();

    for (int i = 0; i < opt_seeds; i++) {
        run_sequence(opt_seed + i, opt_steps);
    }
    g_test_message("%d seeds from %u, up to %d steps each: %d steps, "
                   "%d operations, %d clients delivered to callbacks, "
                   "in %.1f s", opt_seeds, opt_seed, opt_steps, total_steps,
                   total_ops, total_deliveries,
                   (g_get_monotonic_time() - start) / 1e6);
}

static long env_or(const char *name, long dflt)
{
    const char *v = g_getenv(name);

    return v && *v ? strtol(v, NULL, 0) : dflt;
}

/* Takes our options out of argv before g_test_init (which owns --seed). */
static void parse_args(int *argc, char **argv)
{
    int out = 1;
    bool seed_given = false, seeds_given = false;

    opt_seed = env_or("QIO_TEST_SEED", DEFAULT_SEED);
    opt_seeds = env_or("QIO_TEST_SEEDS", DEFAULT_SEEDS);
    opt_steps = env_or("QIO_TEST_STEPS", DEFAULT_STEPS);
    for (int i = 1; i < *argc; i++) {
        if (i + 1 < *argc && !strcmp(argv[i], "--seed")) {
            opt_seed = strtoul(argv[++i], NULL, 0);
            seed_given = true;
        } else if (i + 1 < *argc && !strcmp(argv[i], "--seeds")) {
            opt_seeds = atoi(argv[++i]);
            seeds_given = true;
        } else if (i + 1 < *argc && !strcmp(argv[i], "--steps")) {
            opt_steps = atoi(argv[++i]);
        } else if (i + 1 < *argc && !strcmp(argv[i], "--kinds")) {
            i++;
            opt_kinds = !strcmp(argv[i], "glib") ? KINDS_GLIB
                        : !strcmp(argv[i], "aio") ? KINDS_AIO : KINDS_ALL;
        } else if (!strcmp(argv[i], "--no-nested")) {
            opt_no_nested = true;
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    *argc = out;
    if (seed_given && !seeds_given) {
        opt_seeds = 1;
    }
}

int main(int argc, char **argv)
{
    parse_args(&argc, argv);
    tu_init(&argc, &argv);
    signal(SIGABRT, on_fatal_signal);
    signal(SIGSEGV, on_fatal_signal);
    signal(SIGBUS, on_fatal_signal);

    g_test_add_func("/net-listener/random/sequences", test_sequences);
    return g_test_run();
}
