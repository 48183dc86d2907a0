/*
 * QIONetListener: the NBD deadlock of QEMU issue 3169 (DESIGN.md section 1).
 *
 * One process serves, and in a nested AIO_WAIT_WHILE loop waits for its
 * own client to be served.  The server's listener writes a greeting to
 * every client it accepts; the client side is event-driven on the same
 * main AioContext (non-blocking connect, an fd read handler).  A timer
 * ticking every 10 ms bounds each nested wait, so a stall shows as a
 * failed assertion instead of a hang.
 *
 * - set_client_aio_func: the nested loop accepts, the wait completes.
 * - set_client_func (GSource on the default GMainContext): the nested loop
 *   cannot accept; no greeting arrives in a bounded number of rounds,
 *   until the GLib main loop runs (or the callback moves to the
 *   AioContext, which is the upstream fix for NBD).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/aio-wait.h"
#include "qemu/timer.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "test-util.h"

#define GREETING "NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53"
#define GREETING_LEN (sizeof(GREETING) - 1)

/* Bounds of the nested waits, in 10 ms timer ticks. */
#define TICKS_MUST_FINISH 500
#define TICKS_STALL 50

typedef struct {
    AioContext *ctx;
    QIONetListener *listener;
    QEMUTimer *timer;
    int ticks;
    int served;                 /* server callback runs */
    int fd;                     /* the client's socket */
    char buf[64];
    size_t got;
    bool eof;
    bool failed;
    bool done;                  /* greeting complete, or the client failed */
    bool nested_ran;
} Scenario;

/* The server: greets every client it accepts (as an NBD server does). */
static void server_accept(QIONetListener *listener, QIOChannelSocket *sioc,
                          gpointer data)
{
    Scenario *s = data;

    g_assert_true(listener == s->listener);
    s->served++;
    qio_channel_write_all(QIO_CHANNEL(sioc), GREETING, GREETING_LEN,
                          &error_abort);
}

static void tick(void *opaque)
{
    Scenario *s = opaque;

    s->ticks++;
    timer_mod(s->timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 10);
}

/* The client: reads the greeting as it arrives. */
static void client_readable(void *opaque)
{
    Scenario *s = opaque;
    ssize_t n = read(s->fd, s->buf + s->got, sizeof(s->buf) - s->got);

    if (n > 0) {
        s->got += n;
        if (s->got >= GREETING_LEN) {
            s->done = true;
        }
    } else if (n == 0) {
        s->eof = true;
        s->done = true;
    } else if (errno != EAGAIN && errno != EINTR) {
        s->failed = true;
        s->done = true;
    }
    if (s->done) {
        /* Level-triggered: stop before the server's close shows as EOF. */
        aio_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL, NULL, NULL);
    }
}

static void scenario_init(Scenario *s)
{
    g_autoptr(SocketAddress) addr = tu_parse("127.0.0.1:0");

    memset(s, 0, sizeof(*s));
    s->ctx = qemu_get_aio_context();
    s->fd = -1;
    s->listener = qio_net_listener_new();
    qio_net_listener_set_name(s->listener, "nbd-server-listener");
    g_assert_cmpint(qio_net_listener_open_sync(s->listener, addr, 1,
                                               &error_abort), ==, 0);
    s->timer = aio_timer_new(s->ctx, QEMU_CLOCK_REALTIME, SCALE_MS,
                             tick, s);
}

/* Non-blocking connect to the server; reads are handled by s->ctx. */
static void client_start(Scenario *s)
{
    g_autoptr(SocketAddress) addr =
        qio_net_listener_get_local_address(s->listener, 0, &error_abort);
    struct addrinfo hints = {
        .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res = NULL;

    g_assert_cmpint(addr->type, ==, SOCKET_ADDRESS_TYPE_INET);
    g_assert_cmpint(getaddrinfo(addr->u.inet.host, addr->u.inet.port,
                                &hints, &res), ==, 0);
    s->fd = socket(res->ai_family,
                   res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    g_assert_cmpint(s->fd, >=, 0);
    if (connect(s->fd, res->ai_addr, res->ai_addrlen) < 0) {
        g_assert_cmpint(errno, ==, EINPROGRESS);
    }
    freeaddrinfo(res);
    aio_set_fd_handler(s->ctx, s->fd, client_readable, NULL, NULL, NULL, s);
}

/* The nested event loop, as bdrv_open() runs it: only AioContext work. */
static void nested_wait(Scenario *s, int max_ticks)
{
    s->ticks = 0;
    timer_mod(s->timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 10);
    AIO_WAIT_WHILE(s->ctx, !s->done && s->ticks < max_ticks);
    timer_del(s->timer);
}

static void check_greeted(Scenario *s)
{
    g_assert_true(s->done);
    g_assert_false(s->failed);
    g_assert_false(s->eof);
    g_assert_cmpuint(s->got, ==, GREETING_LEN);
    g_assert_cmpmem(s->buf, s->got, GREETING, GREETING_LEN);
    g_assert_cmpint(s->served, ==, 1);
}

static void scenario_finish(Scenario *s)
{
    if (s->fd >= 0) {
        aio_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL, NULL, NULL);
        close(s->fd);
    }
    timer_free(s->timer);
    qio_net_listener_set_client_func(s->listener, NULL, NULL, NULL);
    qio_net_listener_set_client_aio_func(s->listener, NULL, NULL, NULL);
    object_unref(OBJECT(s->listener));
    /* Let the releases the listener scheduled in the AioContext run. */
    for (int i = 0; i < 100 && aio_poll(s->ctx, false); i++) {
        /* nothing */
    }
}

/* set_client_aio_func (NULL or the explicit main context): completes. */
static void test_aio_completes(gconstpointer opaque)
{
    bool explicit_ctx = GPOINTER_TO_INT(opaque);
    Scenario s;

    scenario_init(&s);
    qio_net_listener_set_client_aio_func(s.listener, server_accept, &s,
                                         explicit_ctx ? s.ctx : NULL);
    client_start(&s);
    nested_wait(&s, TICKS_MUST_FINISH);
    check_greeted(&s);
    scenario_finish(&s);
}

static gboolean nested_wait_idle(gpointer opaque)
{
    Scenario *s = opaque;

    client_start(s);
    nested_wait(s, TICKS_MUST_FINISH);
    s->nested_ran = true;
    return G_SOURCE_REMOVE;
}

/*
 * Closer to QEMU: the nested wait runs from a main-loop callback (a QMP
 * command opening the image), so GLib is inside a dispatch meanwhile.
 */
static void test_aio_completes_inside_main_loop(void)
{
    Scenario s;

    scenario_init(&s);
    qio_net_listener_set_client_aio_func(s.listener, server_accept, &s, NULL);
    g_idle_add(nested_wait_idle, &s);
    TU_WAIT_UNTIL(s.nested_ran, tu_iterate_main());
    check_greeted(&s);
    scenario_finish(&s);
}

/* Upstream before 10.2: the GMainContext-driven accept stalls. */
static void test_gsource_stalls(void)
{
    Scenario s;

    scenario_init(&s);
    qio_net_listener_set_client_func(s.listener, server_accept, &s, NULL);
    client_start(&s);
    nested_wait(&s, TICKS_STALL);
    g_test_message("after %d nested rounds: served %d, greeting bytes %zu",
                   s.ticks, s.served, s.got);
    g_assert_cmpint(s.ticks, >=, TICKS_STALL);
    g_assert_false(s.done);
    g_assert_cmpint(s.served, ==, 0);

    /* Running the GLib main loop releases it. */
    TU_WAIT_UNTIL(s.done, tu_iterate_main());
    check_greeted(&s);
    scenario_finish(&s);
}

/* The NBD fix: moving the callback to the AioContext releases the wait. */
static void test_gsource_then_aio(void)
{
    Scenario s;

    scenario_init(&s);
    qio_net_listener_set_client_func(s.listener, server_accept, &s, NULL);
    client_start(&s);
    nested_wait(&s, TICKS_STALL);
    g_assert_false(s.done);
    g_assert_cmpint(s.served, ==, 0);

    qio_net_listener_set_client_aio_func(s.listener, server_accept, &s, NULL);
    nested_wait(&s, TICKS_MUST_FINISH);
    check_greeted(&s);
    scenario_finish(&s);
}

int main(int argc, char **argv)
{
    tu_init(&argc, &argv);

    g_test_add_data_func("/net-listener/deadlock/aio/null-ctx",
                         GINT_TO_POINTER(false), test_aio_completes);
    g_test_add_data_func("/net-listener/deadlock/aio/main-ctx",
                         GINT_TO_POINTER(true), test_aio_completes);
    g_test_add_func("/net-listener/deadlock/aio/inside-main-loop",
                    test_aio_completes_inside_main_loop);
    g_test_add_func("/net-listener/deadlock/gsource/stalls",
                    test_gsource_stalls);
    g_test_add_func("/net-listener/deadlock/gsource/then-aio",
                    test_gsource_then_aio);
    return g_test_run();
}
