/*
 * QIONetListener: callbacks that change the listener, drop the caller's
 * last reference and then run a nested event loop on their own context
 * (as AIO_WAIT_WHILE inside a callback does all over QEMU's block layer).
 *
 * DESIGN.md section 3.1: whatever a dispatch uses (its watch data, the
 * listener, the listening channel, the registration) stays alive until
 * that dispatch returns, whatever the callback did.  So after the nested
 * loop the callback may still call the listener's functions, and the
 * listener is finalized only once the dispatch has returned (section 2:
 * when no callback is set or it is disconnected, and no reference is
 * left).
 *
 * The matrix: where the callback runs (the main AioContext, an IOThread's
 * AioContext, a GSource on the default GMainContext, a GSource on a
 * private GMainContext iterated by a thread) x what the first callback
 * does before the nested loop (clear, disconnect, replace with another
 * callback, nothing), each followed by object_unref of the caller's last
 * reference.  Observed: which client got which callback (each callback
 * writes its tag byte to the client; a client the listener never handed
 * to a callback is reset when the listening socket closes and reads
 * nothing), notify exactly once per GSource registration and never while
 * a callback of that registration runs, finalize (the listener drops its
 * reference to its channels: an extra reference on channel 0 is left
 * alone, and the channel is closed) only after the dispatch returned, and
 * every fd closed at the end.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/aio-wait.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "iothread.h"
#include "test-util.h"

/* Where the callbacks run. */
typedef enum {
    ENV_AIO_MAIN,
    ENV_AIO_IOTHREAD,
    ENV_GLIB_DEFAULT,
    ENV_GLIB_THREAD,
} EnvKind;

/*
 * What the first callback does before dropping the last reference (all
 * but ACT_REPLACE_KEEP, where only the watch data the dispatch runs on
 * goes away, not the listener).
 */
typedef enum {
    ACT_CLEAR,
    ACT_DISCONNECT,
    ACT_REPLACE,
    ACT_UNREF_ONLY,
    ACT_REPLACE_KEEP,           /* the caller keeps its reference */
} Action;

typedef struct {
    EnvKind kind;
    AioContext *aio;            /* the AioContext kinds */
    IOThread *iothread;
    GMainContext *gctx;         /* ENV_GLIB_THREAD */
    TuLoopThread loop;
} Env;

static void env_start(Env *env, EnvKind kind)
{
    memset(env, 0, sizeof(*env));
    env->kind = kind;
    switch (kind) {
    case ENV_AIO_MAIN:
        env->aio = qemu_get_aio_context();
        break;
    case ENV_AIO_IOTHREAD:
        env->iothread = iothread_new();
        env->aio = iothread_get_aio_context(env->iothread);
        break;
    case ENV_GLIB_DEFAULT:
        break;
    case ENV_GLIB_THREAD:
        env->gctx = g_main_context_new();
        tu_loop_thread_start(&env->loop, env->gctx, "glib-loop");
        break;
    }
}

static void env_stop(Env *env)
{
    if (env->iothread) {
        iothread_join(env->iothread);
    }
    if (env->gctx) {
        tu_loop_thread_stop(&env->loop);
        g_main_context_unref(env->gctx);
    }
}

static bool env_is_aio(Env *env)
{
    return env->kind == ENV_AIO_MAIN || env->kind == ENV_AIO_IOTHREAD;
}

/* Sets (or with NULL @func clears) the callback in @env's context. */
static void env_set(Env *env, QIONetListener *listener,
                    QIONetListenerClientFunc func, gpointer data,
                    GDestroyNotify notify)
{
    if (env_is_aio(env)) {
        /* NULL names the main one, as QEMU's callers do. */
        qio_net_listener_set_client_aio_func(
            listener, func, data,
            env->kind == ENV_AIO_MAIN ? NULL : env->aio);
    } else {
        qio_net_listener_set_client_func_full(listener, func, data, notify,
                                              env->gctx);
    }
}

/*
 * One step of a wait in the test's thread: run the context if this thread
 * runs it, else let the other thread do it.
 */
static void env_step(Env *env)
{
    switch (env->kind) {
    case ENV_AIO_MAIN:
        tu_iterate_aio(env->aio);
        break;
    case ENV_GLIB_DEFAULT:
        tu_iterate_main();
        break;
    default:
        tu_nap();
        break;
    }
}

static void set_flag_bh(void *opaque)
{
    g_atomic_int_set((gint *)opaque, 1);
}

static gboolean set_flag_idle(gpointer opaque)
{
    g_atomic_int_set((gint *)opaque, 1);
    return G_SOURCE_REMOVE;
}

/*
 * AIO_WAIT_WHILE on @ctx until a bottom half scheduled now has run: the
 * nested loop then has run every BH scheduled before it.
 */
static void nested_aio(AioContext *ctx)
{
    gint ran = 0;

    for (int i = 0; i < 3; i++) {
        aio_poll(ctx, false);
    }
    aio_bh_schedule_oneshot(ctx, set_flag_bh, &ran);
    AIO_WAIT_WHILE(ctx, !g_atomic_int_get(&ran));
}

/* g_main_context_iteration of @ctx until an idle source added now ran. */
static void nested_glib(GMainContext *ctx)
{
    gint ran = 0;
    GSource *idle = g_idle_source_new();

    g_source_set_callback(idle, set_flag_idle, &ran, NULL);
    g_source_attach(idle, ctx);
    g_source_unref(idle);
    for (int i = 0; i < 3; i++) {
        g_main_context_iteration(ctx, FALSE);
    }
    TU_WAIT_UNTIL(g_atomic_int_get(&ran), g_main_context_iteration(ctx, FALSE));
}

/* The nested loop a callback runs on its own context. */
static void env_nested(Env *env)
{
    switch (env->kind) {
    case ENV_AIO_MAIN:
    case ENV_AIO_IOTHREAD:
        nested_aio(env->aio);
        break;
    case ENV_GLIB_DEFAULT:
        nested_glib(NULL);
        nested_aio(qemu_get_aio_context());
        break;
    case ENV_GLIB_THREAD:
        nested_glib(env->gctx);
        break;
    }
}

typedef struct Case Case;

/* One registration (func, data, notify) and what happened to it. */
typedef struct {
    Case *c;
    char tag;                   /* written to each client it gets */
    gint calls;
    gint depth;                 /* callbacks of it running now */
    gint notified;
    gint notified_in_cb;        /* notify while depth > 0 */
} Reg;

struct Case {
    Env env;
    Action act;
    QIONetListener *listener;
    QIOChannelSocket *sioc0;    /* our own reference: finalize indicator */
    Reg a, b;
    gint checks;                /* post-nested checks that ran */
    gint finalized_in_cb;       /* finalized before a dispatch returned */
};

/*
 * The listener holds a reference to each of its channels until finalize,
 * then closes and drops it: only our reference is left.
 */
static bool finalized(Case *c)
{
    return g_atomic_int_get((gint *)&OBJECT(c->sioc0)->ref) == 1;
}

static void reg_notify(gpointer data)
{
    Reg *r = data;

    if (g_atomic_int_get(&r->depth) > 0) {
        g_atomic_int_inc(&r->notified_in_cb);
    }
    g_atomic_int_inc(&r->notified);
}

static void client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer data);

/*
 * After the nested loop: the dispatch still holds the listener, so it is
 * alive and not finalized, and its functions answer as the contract says.
 */
static void check_after_nested(Case *c, QIONetListener *listener,
                               bool connected)
{
    if (finalized(c)) {
        /*
         * Released under the running dispatch.  Calling into it would use
         * freed memory here; the test thread reports it, and valgrind or
         * ASan report the listener's own use after this callback returns.
         */
        g_atomic_int_inc(&c->finalized_in_cb);
        g_atomic_int_inc(&c->checks);
        return;
    }
    g_assert_cmpint(qio_net_listener_is_connected(listener), ==, connected);
    g_assert_cmpuint(qio_net_listener_nsioc(listener), ==, 2);
    g_assert_true(qio_net_listener_sioc(listener, 0) == c->sioc0);
    g_assert_null(qio_net_listener_sioc(listener, 2));
    g_atomic_int_inc(&c->checks);
}

/* The first registration: call @n (from 1). */
static void a_step(Case *c, QIONetListener *listener, int n)
{
    if (n == 1) {
        switch (c->act) {
        case ACT_CLEAR:
            env_set(&c->env, listener, NULL, NULL, NULL);
            break;
        case ACT_DISCONNECT:
            qio_net_listener_disconnect(listener);
            break;
        case ACT_REPLACE:
        case ACT_REPLACE_KEEP:
            env_set(&c->env, listener, client_cb, &c->b, reg_notify);
            break;
        case ACT_UNREF_ONLY:
            break;
        }
        if (c->act != ACT_REPLACE_KEEP) {
            /* The caller's last reference. */
            object_unref(OBJECT(listener));
        }
        env_nested(&c->env);
        check_after_nested(c, listener, c->act != ACT_DISCONNECT);
    } else if (c->act == ACT_UNREF_ONLY && n == 3) {
        /* Only the watches hold it now: clearing lets it go. */
        env_set(&c->env, listener, NULL, NULL, NULL);
        env_nested(&c->env);
        check_after_nested(c, listener, true);
    }
}

/* The replacement (ACT_REPLACE*): serves two clients, clears itself. */
static void b_step(Case *c, QIONetListener *listener, int n)
{
    if (n == 2) {
        env_set(&c->env, listener, NULL, NULL, NULL);
        env_nested(&c->env);
        check_after_nested(c, listener, true);
    }
}

static void client_cb(QIONetListener *listener, QIOChannelSocket *sioc,
                      gpointer data)
{
    Reg *r = data;
    Case *c = r->c;
    int n;

    g_assert_true(listener == c->listener);
    qio_channel_write_all(QIO_CHANNEL(sioc), &r->tag, 1, &error_abort);
    g_atomic_int_inc(&r->depth);
    n = g_atomic_int_add(&r->calls, 1) + 1;
    if (r == &c->a) {
        a_step(c, listener, n);
    } else {
        b_step(c, listener, n);
    }
    g_atomic_int_add(&r->depth, -1);
}

static QIONetListener *new_listener(const char *dir)
{
    QIONetListener *listener = qio_net_listener_new();
    g_autoptr(SocketAddress) inet = tu_parse("127.0.0.1:0");
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) unix_addr = tu_unix_address(path, false);

    g_assert_cmpint(qio_net_listener_open_sync(listener, inet, 16,
                                               &error_abort), ==, 0);
    g_assert_cmpint(qio_net_listener_open_sync(listener, unix_addr, 16,
                                               &error_abort), ==, 0);
    return listener;
}

/*
 * One plain cycle in @env (serve a client, clear, release) so that what
 * the host creates once per context exists before the test counts fds.
 */
static void warm_up(Env *env, const char *dir)
{
    QIONetListener *listener = new_listener(dir);
    QIOChannelSocket *sioc0 =
        QIO_CHANNEL_SOCKET(object_ref(OBJECT(qio_net_listener_sioc(listener,
                                                                   0))));
    QIOChannelSocket *client;
    TuAccepts acc;

    tu_accepts_init(&acc);
    env_set(env, listener, tu_accept_cb, &acc, NULL);
    client = tu_connect_listener(listener, 0);
    TU_WAIT_UNTIL(tu_accepts_count(&acc) == 1, env_step(env));
    env_set(env, listener, NULL, NULL, NULL);
    object_unref(OBJECT(listener));
    TU_WAIT_UNTIL(g_atomic_int_get((gint *)&OBJECT(sioc0)->ref) == 1,
                  env_step(env));
    object_unref(OBJECT(sioc0));
    object_unref(OBJECT(client));
    tu_accepts_destroy(&acc);
}

typedef struct {
    EnvKind kind;
    Action act;
} Params;

#define NCLIENTS 3

static void test_nested(gconstpointer opaque)
{
    const Params *p = opaque;
    Case c = { .act = p->act };
    char *dir = tu_make_tmpdir();
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autoptr(SocketAddress) addr0 = NULL;
    QIOChannelSocket *clients[NCLIENTS];
    /* What each client must read: a registration's tag, or nothing. */
    const char *expect;
    int expect_a, expect_b, expect_checks;
    bool glib;
    int fds;

    env_start(&c.env, p->kind);
    glib = !env_is_aio(&c.env);
    warm_up(&c.env, dir);
    fds = tu_count_fds();

    c.a = (Reg) { .c = &c, .tag = 'a' };
    c.b = (Reg) { .c = &c, .tag = 'b' };
    c.listener = new_listener(dir);
    c.sioc0 = QIO_CHANNEL_SOCKET(
        object_ref(OBJECT(qio_net_listener_sioc(c.listener, 0))));
    addr0 = qio_net_listener_get_local_address(c.listener, 0, &error_abort);

    switch (c.act) {
    case ACT_CLEAR:
    case ACT_DISCONNECT:
        /* The rest of the burst is never handed out: reset at close. */
        expect = "a--";
        expect_a = 1;
        expect_b = 0;
        expect_checks = 1;
        break;
    case ACT_REPLACE:
    case ACT_REPLACE_KEEP:
        expect = "abb";
        expect_a = 1;
        expect_b = 2;
        expect_checks = 2;
        break;
    case ACT_UNREF_ONLY:
        expect = "aaa";
        expect_a = 3;
        expect_b = 0;
        expect_checks = 2;
        break;
    default:
        g_assert_not_reached();
    }

    /*
     * A burst queued before the callback is set: a batch accept sees all
     * of it at the first wake-up.  With ACT_UNREF_ONLY only one client
     * comes first; the others come once the listener has no caller
     * reference and must still be served.
     */
    for (int i = 0; i < NCLIENTS; i++) {
        clients[i] = i == 0 || c.act != ACT_UNREF_ONLY ? tu_connect(addr0)
                                                       : NULL;
    }
    env_set(&c.env, c.listener, client_cb, &c.a, reg_notify);
    /* From here on the listener's reference is the callback's to drop. */
    /* (Except with ACT_REPLACE_KEEP: the test drops it once served.) */
    TU_WAIT_UNTIL(g_atomic_int_get(&c.checks) >= 1 &&
                  g_atomic_int_get(&c.a.depth) == 0, env_step(&c.env));
    g_assert_cmpint(g_atomic_int_get(&c.finalized_in_cb), ==, 0);
    if (c.act == ACT_UNREF_ONLY) {
        g_assert_false(finalized(&c));
        g_assert_cmpint(g_atomic_int_get(&c.a.calls), ==, 1);
        for (int i = 1; i < NCLIENTS; i++) {
            clients[i] = tu_connect(addr0);
        }
    }
    if (c.act == ACT_REPLACE_KEEP) {
        TU_WAIT_UNTIL(g_atomic_int_get(&c.checks) == expect_checks &&
                      g_atomic_int_get(&c.b.depth) == 0, env_step(&c.env));
        g_assert_false(finalized(&c));
        object_unref(OBJECT(c.listener));
    }

    TU_WAIT_UNTIL(finalized(&c) &&
                  g_atomic_int_get(&c.a.depth) == 0 &&
                  g_atomic_int_get(&c.b.depth) == 0 &&
                  (!glib || (g_atomic_int_get(&c.a.notified) >= 1 &&
                             g_atomic_int_get(&c.b.notified) >=
                             (expect_b ? 1 : 0))),
                  env_step(&c.env));
    /* Nothing more happens. */
    for (int i = 0; i < 20; i++) {
        env_step(&c.env);
    }
    g_assert_cmpint(g_atomic_int_get(&c.a.calls), ==, expect_a);
    g_assert_cmpint(g_atomic_int_get(&c.b.calls), ==, expect_b);
    g_assert_cmpint(g_atomic_int_get(&c.checks), ==, expect_checks);
    g_assert_cmpint(g_atomic_int_get(&c.finalized_in_cb), ==, 0);
    g_assert_cmpint(g_atomic_int_get(&c.a.notified), ==, glib ? 1 : 0);
    g_assert_cmpint(g_atomic_int_get(&c.b.notified), ==,
                    glib && expect_b ? 1 : 0);
    g_assert_cmpint(g_atomic_int_get(&c.a.notified_in_cb), ==, 0);
    g_assert_cmpint(g_atomic_int_get(&c.b.notified_in_cb), ==, 0);
    g_assert_cmpint(c.sioc0->fd, ==, -1);
    /* The unix socket file goes with its socket. */
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));

    /*
     * Each client got its registration's tag, then end of file; a client
     * never handed to a callback was reset when the listening socket
     * closed (not accepted and dropped: that would have been counted).
     */
    for (int i = 0; i < NCLIENTS; i++) {
        char buf[2] = "";
        size_t want = expect[i] == '-' ? 0 : 1;

        g_assert_cmpuint(tu_read_bounded(clients[i], buf, 2), ==, want);
        if (want) {
            g_assert_cmpint(buf[0], ==, expect[i]);
        }
        object_unref(OBJECT(clients[i]));
    }
    object_unref(OBJECT(c.sioc0));
    TU_WAIT_UNTIL(tu_count_fds() == fds, env_step(&c.env));
    env_stop(&c.env);
    tu_rmdir_tmp(dir);
}

static const char *const env_names[] = {
    [ENV_AIO_MAIN] = "aio-main",
    [ENV_AIO_IOTHREAD] = "aio-iothread",
    [ENV_GLIB_DEFAULT] = "glib-default",
    [ENV_GLIB_THREAD] = "glib-thread",
};

static const char *const act_names[] = {
    [ACT_CLEAR] = "clear-unref",
    [ACT_DISCONNECT] = "disconnect-unref",
    [ACT_REPLACE] = "replace-unref",
    [ACT_UNREF_ONLY] = "unref-only",
    [ACT_REPLACE_KEEP] = "replace-keep-ref",
};

int main(int argc, char **argv)
{
    static Params params[ARRAY_SIZE(env_names) * ARRAY_SIZE(act_names)];
    int n = 0;

    tu_init(&argc, &argv);

    for (size_t e = 0; e < ARRAY_SIZE(env_names); e++) {
        for (size_t a = 0; a < ARRAY_SIZE(act_names); a++) {
            g_autofree char *name =
                g_strdup_printf("/net-listener/nested/%s/%s",
                                env_names[e], act_names[a]);

            params[n] = (Params) { .kind = e, .act = a };
            g_test_add_data_func(name, &params[n], test_nested);
            n++;
        }
    }
    return g_test_run();
}
