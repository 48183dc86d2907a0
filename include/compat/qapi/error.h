/*
 * qemu-compat-host: QEMU's error reporting conventions (qapi/error.h).
 *
 * A function that can fail takes "Error **errp" as its last argument.  On
 * failure it sets *errp (only if errp is not NULL) and returns a distinct
 * value (-1, NULL, false).  &error_abort aborts at the failure site,
 * &error_fatal prints the message and exits with status 1.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef ERROR_H
#define ERROR_H

#include "qemu/typedefs.h"

const char *error_get_pretty(const Error *err);

#define error_setg(errp, fmt, ...)                              \
    error_setg_internal((errp), __FILE__, __LINE__, __func__,   \
                        (fmt), ## __VA_ARGS__)
void error_setg_internal(Error **errp,
                         const char *src, int line, const char *func,
                         const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);

/* Moves @local_err into *@dst_errp; frees it if @dst_errp is NULL or set. */
void error_propagate(Error **dst_errp, Error *local_err);

void error_free(Error *err);

/* Prints "error: MSG" to stderr and frees @err. */
void error_report_err(Error *err);
void warn_report_err(Error *err);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(Error, error_free)

extern Error *error_abort;
extern Error *error_fatal;

#endif /* ERROR_H */
