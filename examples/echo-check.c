/*
 * echo-check: runs qio-echo-server --once and checks it as a client would.
 *
 *   echo-check SERVER [SERVER-ARGS...]
 *
 * Starts SERVER --once SERVER-ARGS, reads its "listening on URI" line,
 * connects, checks the "client 1 connected from URI" line names this
 * client, echoes a short line and a large buffer (written from another
 * thread so that both sides' socket buffers fill and the server must wait
 * for room to write), disconnects and expects the server to exit with
 * status 0.  Every wait is bounded; on failure the server is killed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include <poll.h>
#include <sys/wait.h>
#include "qapi/error.h"
#include "qemu/module.h"
#include "qemu/sockets.h"
#include "io/channel-socket.h"
#include "test-util.h"

#define TIMEOUT_US (20 * G_USEC_PER_SEC)
#define BIG_LEN (1024 * 1024)

static GPid server_pid = -1;
static int server_out = -1;
static GString *out_buf;

static void __attribute__((noreturn)) G_GNUC_PRINTF(1, 2)
fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "echo-check: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
    }
    exit(1);
}

/* The next line the server prints (without newline), within the timeout. */
static char *server_line(void)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    char *nl;

    while (!(nl = memchr(out_buf->str, '\n', out_buf->len))) {
        char chunk[256];
        ssize_t n;

        if (!tu_wait_fd(server_out, POLLIN, deadline)) {
            fail("no line from the server in time (have \"%s\")",
                 out_buf->str);
        }
        n = read(server_out, chunk, sizeof(chunk));
        if (n == 0) {
            fail("server closed its output (have \"%s\")", out_buf->str);
        }
        if (n < 0 && errno != EINTR) {
            fail("read: %s", strerror(errno));
        }
        if (n > 0) {
            g_string_append_len(out_buf, chunk, n);
        }
    }
    {
        char *line = g_strndup(out_buf->str, nl - out_buf->str);
        g_string_erase(out_buf, 0, nl - out_buf->str + 1);
        printf("server: %s\n", line);
        return line;
    }
}

/* Reads exactly @len bytes from @sioc within the timeout. */
static void read_exact(QIOChannelSocket *sioc, char *buf, size_t len)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    size_t got = 0;

    while (got < len) {
        ssize_t n;

        if (!tu_wait_fd(sioc->fd, POLLIN, deadline)) {
            fail("echo incomplete: %zu of %zu bytes in time", got, len);
        }
        n = qio_channel_read(QIO_CHANNEL(sioc), buf + got, len - got, NULL);
        if (n == QIO_CHANNEL_ERR_BLOCK) {
            continue;
        }
        if (n <= 0) {
            fail("echo ended after %zu of %zu bytes", got, len);
        }
        got += n;
    }
}

typedef struct {
    QIOChannelSocket *sioc;
    const char *buf;
    size_t len;
} Writer;

static gpointer writer_thread(gpointer opaque)
{
    Writer *w = opaque;

    if (qio_channel_write_all(QIO_CHANNEL(w->sioc), w->buf, w->len,
                              NULL) < 0) {
        fail("writing %zu bytes failed", w->len);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    g_autoptr(GPtrArray) args = g_ptr_array_new();
    g_autoptr(GError) gerr = NULL;
    g_autoptr(SocketAddress) addr = NULL;
    g_autoptr(SocketAddress) local = NULL;
    g_autofree char *line = NULL;
    g_autofree char *expect = NULL;
    g_autofree char *local_uri = NULL;
    g_autofree char *big = NULL;
    g_autofree char *echo = NULL;
    QIOChannelSocket *client;
    Error *err = NULL;
    Writer writer;
    GThread *thread;
    gint64 deadline;
    int status;
    char small[16] = "";

    if (argc < 2) {
        fprintf(stderr, "usage: echo-check SERVER [SERVER-ARGS...]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    module_call_init(MODULE_INIT_QOM);
    out_buf = g_string_new("");

    g_ptr_array_add(args, argv[1]);
    g_ptr_array_add(args, (char *)"--once");
    for (int i = 2; i < argc; i++) {
        g_ptr_array_add(args, argv[i]);
    }
    g_ptr_array_add(args, NULL);
    if (!g_spawn_async_with_pipes(NULL, (char **)args->pdata, NULL,
                                  G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL,
                                  &server_pid, NULL, &server_out, NULL,
                                  &gerr)) {
        fail("cannot start %s: %s", argv[1], gerr->message);
    }

    line = server_line();
    if (!g_str_has_prefix(line, "listening on ")) {
        fail("unexpected first line \"%s\"", line);
    }
    addr = socket_parse(line + strlen("listening on "), &err);
    if (!addr) {
        fail("cannot parse the address: %s", error_get_pretty(err));
    }

    client = qio_channel_socket_new();
    if (qio_channel_socket_connect_sync(client, addr, &err) < 0) {
        fail("cannot connect: %s", error_get_pretty(err));
    }
    local = qio_channel_socket_get_local_address(client, &err);
    if (!local) {
        fail("no local address: %s", error_get_pretty(err));
    }

    /* Further "listening on" lines (several sockets) come first. */
    do {
        g_free(line);
        line = server_line();
    } while (g_str_has_prefix(line, "listening on "));
    if (local->type == SOCKET_ADDRESS_TYPE_INET) {
        local_uri = socket_uri(local);
        expect = g_strdup_printf("client 1 connected from %s", local_uri);
        if (!g_str_equal(line, expect)) {
            fail("got \"%s\", expected \"%s\"", line, expect);
        }
    } else if (!g_str_has_prefix(line, "client 1 connected from ")) {
        fail("unexpected line \"%s\"", line);
    }

    /* A short line. */
    if (qio_channel_write_all(QIO_CHANNEL(client), "hello\n", 6, &err) < 0) {
        fail("write: %s", error_get_pretty(err));
    }
    read_exact(client, small, 6);
    if (memcmp(small, "hello\n", 6) != 0) {
        fail("echo of \"hello\" differs: \"%s\"", small);
    }

    /* A large buffer, written while this thread reads. */
    big = g_malloc(BIG_LEN);
    echo = g_malloc(BIG_LEN);
    for (size_t i = 0; i < BIG_LEN; i++) {
        big[i] = (char)(i * 7 + i / 4096);
    }
    writer = (Writer) { .sioc = client, .buf = big, .len = BIG_LEN };
    thread = g_thread_new("writer", writer_thread, &writer);
    read_exact(client, echo, BIG_LEN);
    g_thread_join(thread);
    if (memcmp(big, echo, BIG_LEN) != 0) {
        fail("echo of the large buffer differs");
    }

    /* Disconnect: --once makes the server exit. */
    object_unref(OBJECT(client));
    g_free(line);
    line = server_line();
    if (!g_str_equal(line, "client 1 disconnected")) {
        fail("unexpected line \"%s\"", line);
    }

    deadline = g_get_monotonic_time() + TIMEOUT_US;
    while (waitpid(server_pid, &status, WNOHANG) == 0) {
        if (g_get_monotonic_time() > deadline) {
            fail("server did not exit after the client left");
        }
        g_usleep(10 * 1000);
    }
    server_pid = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fail("server ended with status 0x%x", status);
    }
    close(server_out);
    g_string_free(out_buf, TRUE);
    printf("echo-check: ok\n");
    return 0;
}
