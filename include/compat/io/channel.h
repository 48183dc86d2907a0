/*
 * qemu-compat-host: the QIOChannel API of QEMU's io/channel.h that socket
 * users need.  The only concrete channel of the compat host is
 * QIOChannelSocket (io/channel-socket.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QIO_CHANNEL_H
#define QIO_CHANNEL_H

#include "qom/object.h"
#include "qemu/aio.h"

#define TYPE_QIO_CHANNEL "qio-channel"
OBJECT_DECLARE_SIMPLE_TYPE(QIOChannel, QIO_CHANNEL)

#define QIO_CHANNEL_ERR_BLOCK -2

typedef enum QIOChannelFeature QIOChannelFeature;

enum QIOChannelFeature {
    QIO_CHANNEL_FEATURE_FD_PASS,
    QIO_CHANNEL_FEATURE_SHUTDOWN,
    QIO_CHANNEL_FEATURE_LISTEN,
    QIO_CHANNEL_FEATURE_WRITE_ZERO_COPY,
    QIO_CHANNEL_FEATURE_READ_MSG_PEEK,
    QIO_CHANNEL_FEATURE_SEEKABLE,
    QIO_CHANNEL_FEATURE_CONCURRENT_IO,
};

typedef gboolean (*QIOChannelFunc)(QIOChannel *ioc,
                                   GIOCondition condition,
                                   gpointer data);

struct QIOChannel {
    Object parent;
    unsigned int features; /* bitmask of QIOChannelFeatures */
    char *name;
    AioContext *read_ctx;
    void *read_coroutine;
    AioContext *write_ctx;
    void *write_coroutine;
    bool follow_coroutine_ctx;
};

/* Copies @name; shown in error messages and by debuggers. */
void qio_channel_set_name(QIOChannel *ioc, const char *name);

/*
 * Reads at most @buflen bytes.  Returns the count, 0 at end of file,
 * QIO_CHANNEL_ERR_BLOCK if non-blocking and nothing is ready, or -1.
 */
ssize_t qio_channel_read(QIOChannel *ioc, void *buf, size_t buflen,
                         Error **errp);
ssize_t qio_channel_write(QIOChannel *ioc, const void *buf, size_t buflen,
                          Error **errp);

int qio_channel_write_all(QIOChannel *ioc, const void *buf, size_t buflen,
                          Error **errp);

bool qio_channel_set_blocking(QIOChannel *ioc, bool enabled, Error **errp);

/* Closes the channel; further I/O fails.  Returns 0 or -1. */
int qio_channel_close(QIOChannel *ioc, Error **errp);

typedef enum QIOChannelShutdown {
    QIO_CHANNEL_SHUTDOWN_READ = 1,
    QIO_CHANNEL_SHUTDOWN_WRITE = 2,
    QIO_CHANNEL_SHUTDOWN_BOTH = 3,
} QIOChannelShutdown;

/*
 * shutdown(2) of the socket, keeping its fd: an accept() blocked on a
 * listening socket returns.  Returns 0 or -1.
 */
int qio_channel_shutdown(QIOChannel *ioc, QIOChannelShutdown how,
                         Error **errp);

/*
 * A new, unattached GSource that is ready when @condition holds on the
 * channel.  Its callback has the QIOChannelFunc signature; the source
 * holds a reference to @ioc.
 */
GSource *qio_channel_create_watch(QIOChannel *ioc, GIOCondition condition);

guint qio_channel_add_watch(QIOChannel *ioc, GIOCondition condition,
                            QIOChannelFunc func, gpointer user_data,
                            GDestroyNotify notify);

/*
 * As qio_channel_create_watch(), with @func/@user_data/@notify set and
 * attached to @context (NULL: the default context).  Returns the source
 * with a reference the caller must drop with g_source_unref().
 */
GSource *qio_channel_add_watch_source(QIOChannel *ioc, GIOCondition condition,
                                      QIOChannelFunc func, gpointer user_data,
                                      GDestroyNotify notify,
                                      GMainContext *context);

/*
 * Installs (or with NULL handlers removes) AioContext fd handlers for the
 * channel's fd: @io_read in @read_ctx and @io_write in @write_ctx.
 */
void qio_channel_set_aio_fd_handler(QIOChannel *ioc,
                                    AioContext *read_ctx,
                                    IOHandler *io_read,
                                    AioContext *write_ctx,
                                    IOHandler *io_write,
                                    void *opaque);

#endif /* QIO_CHANNEL_H */
