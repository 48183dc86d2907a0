/*
 * QIONetListener: disconnect is final, from any thread (DESIGN.md 3.9).
 *
 * Once qio_net_listener_disconnect() returns, no accept (or poll) of the
 * listener's fds may run in any thread, and no fd number may be released
 * while one is in flight.  Otherwise a dispatch in another thread, caught
 * between its "still serving?" check and accept(), accepts on whatever
 * socket the kernel gave the freed number next: a client of another
 * service reaches our callback, and that service never sees it.
 *
 * Fault injection makes the window wide: this program interposes
 * accept4() (QEMU's qemu_accept() and the compat host both call it), and
 * holds the first accept of each round in the serving thread until the
 * main thread says go, or for HOLD_US at most.  Each round, the main
 * thread:
 *   1. connects a client to a new listener and waits until the serving
 *      thread is inside accept4();
 *   2. disconnects the listener (which must wait for that accept);
 *   3. opens an unrelated listening socket (it gets the lowest free fd
 *      number: the listener's, if that was released) and connects a
 *      client to it, then says go;
 *   4. checks that no client of the unrelated socket reached the
 *      listener's callback (or wait_client), and that the unrelated
 *      socket still has its client.
 * The serving thread is an IOThread (AioContext), a thread iterating a
 * private GMainContext (GSource), or a thread blocked in wait_client.
 * With disconnect closing the fds under the in-flight accept (the code
 * before the fd gate), nearly every round fails; the hold is fault
 * injection, not a timing assertion: with the gate, the result does not
 * depend on it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "iothread.h"
#include "test-util.h"

#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>

#define ROUNDS 20
/* How long the serving thread's accept waits for "go" at most. */
#define HOLD_US (50 * 1000)

/* The accept4() hook's state. */
static struct {
    GMutex lock;
    GCond cond;
    pthread_t main_thread;
    bool armed;                 /* hold the next accept of another thread */
    bool entered;               /* it is held */
    bool go;                    /* let it run */
    bool returned;              /* it returned */
} hook;

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    bool held = false;
    long ret;

    if (!pthread_equal(pthread_self(), hook.main_thread)) {
        g_mutex_lock(&hook.lock);
        if (hook.armed) {
            gint64 end = g_get_monotonic_time() + HOLD_US;

            hook.armed = false;
            hook.entered = held = true;
            g_cond_broadcast(&hook.cond);
            while (!hook.go && g_cond_wait_until(&hook.cond, &hook.lock, end)) {
                /* until go, or HOLD_US */
            }
        }
        g_mutex_unlock(&hook.lock);
    }
    ret = syscall(SYS_accept4, fd, addr, len, flags);
    if (held) {
        int saved = errno;

        g_mutex_lock(&hook.lock);
        hook.returned = true;
        g_cond_broadcast(&hook.cond);
        g_mutex_unlock(&hook.lock);
        errno = saved;
    }
    return ret;
}

static void hook_arm(void)
{
    g_mutex_lock(&hook.lock);
    hook.armed = true;
    hook.entered = hook.go = hook.returned = false;
    g_mutex_unlock(&hook.lock);
}

/* Waits (bounded) until *@flag; fails the test if it never comes. */
static void hook_wait(bool *flag, const char *what)
{
    gint64 end = g_get_monotonic_time() + TU_WAIT_US;

    g_mutex_lock(&hook.lock);
    while (!*flag && g_cond_wait_until(&hook.cond, &hook.lock, end)) {
        /* wait */
    }
    if (!*flag) {
        g_error("the serving thread's accept never %s", what);
    }
    g_mutex_unlock(&hook.lock);
}

static void hook_go(void)
{
    g_mutex_lock(&hook.lock);
    hook.go = true;
    hook.armed = false;
    g_cond_broadcast(&hook.cond);
    g_mutex_unlock(&hook.lock);
}

/* A plain listening socket on 127.0.0.1, not the listener's. */
static int unrelated_listen(int *port)
{
    struct sockaddr_in sin = {
        .sin_family = AF_INET,
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), ==, 0);
    g_assert_cmpint(listen(fd, 4), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sin, &len), ==, 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

static int connect_port(int port)
{
    struct sockaddr_in sin = {
        .sin_family = AF_INET,
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        .sin_port = htons(port),
    };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), ==, 0);
    return fd;
}

/* The local ports of the clients that reached a callback this round. */
typedef struct {
    GMutex lock;
    int ports[4];
    int n;
} Seen;

static void seen_add(Seen *seen, QIOChannelSocket *sioc)
{
    int port = tu_local_port(sioc);

    g_mutex_lock(&seen->lock);
    if (seen->n < (int)G_N_ELEMENTS(seen->ports)) {
        seen->ports[seen->n] = port;
    }
    seen->n++;
    g_mutex_unlock(&seen->lock);
}

static void race_cb(QIONetListener *listener G_GNUC_UNUSED, QIOChannelSocket *sioc,
                    gpointer opaque)
{
    seen_add(opaque, sioc);
}

typedef enum {
    SERVE_IOTHREAD,
    SERVE_GLIB_THREAD,
    SERVE_WAIT_CLIENT,
} Serve;

typedef struct {
    Serve serve;
    IOThread *iothread;
    GMainContext *gctx;
    TuLoopThread loop;
    Seen seen;
    QIONetListener *listener;
    GThread *waiter;
} Env;

static void flag_bh(void *opaque)
{
    g_atomic_int_set((gint *)opaque, 1);
}

static gboolean flag_idle(gpointer opaque)
{
    flag_bh(opaque);
    return G_SOURCE_REMOVE;
}

/*
 * Waits until the serving thread has finished the dispatch that was in
 * flight (a bottom half or idle callback queued behind it runs).
 */
static void flush_serving_thread(Env *env)
{
    gint done = 0;

    switch (env->serve) {
    case SERVE_IOTHREAD:
        aio_bh_schedule_oneshot(iothread_get_aio_context(env->iothread),
                                flag_bh, &done);
        break;
    case SERVE_GLIB_THREAD:
        g_main_context_invoke(env->gctx, flag_idle, &done);
        break;
    case SERVE_WAIT_CLIENT:
        return;
    }
    TU_WAIT_UNTIL(g_atomic_int_get(&done), tu_nap());
}

static gpointer wait_client_thread(gpointer opaque)
{
    Env *env = opaque;
    QIOChannelSocket *client = qio_net_listener_wait_client(env->listener);

    if (client) {
        seen_add(&env->seen, client);
        object_unref(OBJECT(client));
    }
    return NULL;
}

static void serve(Env *env)
{
    switch (env->serve) {
    case SERVE_IOTHREAD:
        qio_net_listener_set_client_aio_func(
            env->listener, race_cb, &env->seen,
            iothread_get_aio_context(env->iothread));
        break;
    case SERVE_GLIB_THREAD:
        qio_net_listener_set_client_func_full(env->listener, race_cb,
                                              &env->seen, NULL, env->gctx);
        break;
    case SERVE_WAIT_CLIENT:
        env->waiter = g_thread_new("wait-client", wait_client_thread, env);
        break;
    }
}

/* One round; returns how many violations it saw (0 or 1). */
static int one_round(Env *env, int round)
{
    int listener_port, other_port, other_fd, c1, c2, got, i;
    int violations = 0;

    env->listener = tu_new_inet_listener();
    {
        g_autoptr(SocketAddress) addr =
            qio_net_listener_get_local_address(env->listener, 0,
                                               &error_abort);
        listener_port = tu_inet_port(addr);
    }
    env->seen.n = 0;
    hook_arm();
    serve(env);

    c1 = connect_port(listener_port);
    hook_wait(&hook.entered, "started");

    qio_net_listener_disconnect(env->listener);
    other_fd = unrelated_listen(&other_port);
    c2 = connect_port(other_port);
    hook_go();
    hook_wait(&hook.returned, "returned");

    if (env->waiter) {
        g_thread_join(env->waiter);
        env->waiter = NULL;
    }
    flush_serving_thread(env);

    g_mutex_lock(&env->seen.lock);
    for (i = 0; i < MIN(env->seen.n, (int)G_N_ELEMENTS(env->seen.ports)); i++) {
        if (env->seen.ports[i] != listener_port) {
            g_test_message("round %d: a client of port %d (not the listener's "
                           "%d) reached the listener", round,
                           env->seen.ports[i], listener_port);
            violations++;
        }
    }
    g_mutex_unlock(&env->seen.lock);

    /*
     * The unrelated socket still gets its client (unless it was stolen,
     * seen above: then it never comes, so don't wait for it).
     */
    if (!violations) {
        if (!tu_wait_fd(other_fd, POLLIN,
                        g_get_monotonic_time() + TU_WAIT_US)) {
            g_test_message("round %d: the unrelated socket lost its client",
                           round);
            violations++;
        } else {
            got = accept4(other_fd, NULL, NULL, SOCK_CLOEXEC);
            g_assert_cmpint(got, >=, 0);
            close(got);
        }
    }

    switch (env->serve) {
    case SERVE_IOTHREAD:
        qio_net_listener_set_client_aio_func(
            env->listener, NULL, NULL,
            iothread_get_aio_context(env->iothread));
        break;
    case SERVE_GLIB_THREAD:
        qio_net_listener_set_client_func_full(env->listener, NULL, NULL,
                                              NULL, env->gctx);
        break;
    case SERVE_WAIT_CLIENT:
        break;
    }
    object_unref(OBJECT(env->listener));
    env->listener = NULL;
    close(c1);
    close(c2);
    close(other_fd);
    return violations;
}

static void test_race(gconstpointer opaque)
{
    Env env = { .serve = GPOINTER_TO_INT(opaque) };
    int fds = tu_count_fds();
    int violations = 0, round;

    g_mutex_init(&env.seen.lock);
    switch (env.serve) {
    case SERVE_IOTHREAD:
        env.iothread = iothread_new();
        break;
    case SERVE_GLIB_THREAD:
        env.gctx = g_main_context_new();
        tu_loop_thread_start(&env.loop, env.gctx, "glib-loop");
        break;
    case SERVE_WAIT_CLIENT:
        break;
    }

    for (round = 0; round < ROUNDS; round++) {
        violations += one_round(&env, round);
    }

    switch (env.serve) {
    case SERVE_IOTHREAD:
        iothread_join(env.iothread);
        break;
    case SERVE_GLIB_THREAD:
        tu_loop_thread_stop(&env.loop);
        g_main_context_unref(env.gctx);
        break;
    case SERVE_WAIT_CLIENT:
        break;
    }
    g_mutex_clear(&env.seen.lock);
    g_test_message("%d of %d rounds failed", violations, ROUNDS);
    g_assert_cmpint(violations, ==, 0);
    TU_WAIT_UNTIL(tu_count_fds() == fds, tu_nap());
}

int main(int argc, char **argv)
{
    hook.main_thread = pthread_self();
    tu_init(&argc, &argv);
    g_test_add_data_func("/net-listener/disconnect-race/iothread",
                         GINT_TO_POINTER(SERVE_IOTHREAD), test_race);
    g_test_add_data_func("/net-listener/disconnect-race/glib-thread",
                         GINT_TO_POINTER(SERVE_GLIB_THREAD), test_race);
    g_test_add_data_func("/net-listener/disconnect-race/wait-client",
                         GINT_TO_POINTER(SERVE_WAIT_CLIENT), test_race);
    return g_test_run();
}
