/*
 * bench-accept's libuv server: what the listener is compared with.
 *
 * uv_listen() with a connection callback that does what a libuv server
 * does for each client: allocate a handle, uv_accept() into it, and
 * uv_close() it (the fd is closed at once, the handle freed by the close
 * callback in the same loop iteration).  libuv's own accept loop takes
 * every pending client in one wake-up (accept4 until EAGAIN).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "bench-server.h"

typedef struct UvServer {
    uv_loop_t loop;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } server;
    uv_timer_t tick;
    bool has_tick;
    BenchTransport transport;
} UvServer;

static void check(int err, const char *what)
{
    if (err < 0) {
        bench_fail("libuv: %s: %s", what, uv_strerror(err));
    }
}

static void free_handle(uv_handle_t *handle)
{
    free(handle);
}

static void on_connection(uv_stream_t *server, int status)
{
    UvServer *s = server->data;
    uv_stream_t *client;

    check(status, "connection");
    if (s->transport == BENCH_TCP) {
        uv_tcp_t *tcp = malloc(sizeof(*tcp));

        check(tcp ? uv_tcp_init(&s->loop, tcp) : UV_ENOMEM, "uv_tcp_init");
        client = (uv_stream_t *)tcp;
    } else {
        uv_pipe_t *pipe = malloc(sizeof(*pipe));

        check(pipe ? uv_pipe_init(&s->loop, pipe, 0) : UV_ENOMEM,
              "uv_pipe_init");
        client = (uv_stream_t *)pipe;
    }
    check(uv_accept(server, client), "uv_accept");
    uv_close((uv_handle_t *)client, free_handle);
    bench_accepted();
}

static void on_tick(uv_timer_t *timer)
{
    (void)timer;
}

static void *uv_server_open(BenchTransport transport, const char *path,
                            bool tick, int *port)
{
    UvServer *s = calloc(1, sizeof(*s));

    if (!s) {
        bench_fail("libuv: out of memory");
    }
    s->transport = transport;
    check(uv_loop_init(&s->loop), "uv_loop_init");
    if (transport == BENCH_TCP) {
        struct sockaddr_in sa;
        struct sockaddr_storage local;
        int len = sizeof(local);

        check(uv_tcp_init(&s->loop, &s->server.tcp), "uv_tcp_init");
        check(uv_ip4_addr("127.0.0.1", 0, &sa), "uv_ip4_addr");
        check(uv_tcp_bind(&s->server.tcp, (struct sockaddr *)&sa, 0),
              "uv_tcp_bind");
        check(uv_tcp_getsockname(&s->server.tcp, (struct sockaddr *)&local,
                                 &len), "uv_tcp_getsockname");
        *port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    } else {
        check(uv_pipe_init(&s->loop, &s->server.pipe, 0), "uv_pipe_init");
        check(uv_pipe_bind(&s->server.pipe, path), "uv_pipe_bind");
    }
    s->server.stream.data = s;
    check(uv_listen(&s->server.stream, BENCH_BACKLOG, on_connection),
          "uv_listen");
    if (tick) {
        check(uv_timer_init(&s->loop, &s->tick), "uv_timer_init");
        check(uv_timer_start(&s->tick, on_tick, BENCH_TICK_MS, BENCH_TICK_MS),
              "uv_timer_start");
        s->has_tick = true;
    }
    return s;
}

static void uv_server_step(void *opaque)
{
    UvServer *s = opaque;

    uv_run(&s->loop, UV_RUN_ONCE);
}

static void uv_server_close(void *opaque)
{
    UvServer *s = opaque;

    uv_close(&s->server.handle, NULL);
    if (s->has_tick) {
        uv_close((uv_handle_t *)&s->tick, NULL);
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
    check(uv_loop_close(&s->loop), "uv_loop_close");
    free(s);
}

const BenchServerOps bench_server_libuv = {
    .name = "libuv",
    .label = "libuv uv_listen",
    .open = uv_server_open,
    .step = uv_server_step,
    .close = uv_server_close,
};
