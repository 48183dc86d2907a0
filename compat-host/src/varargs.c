/*
 * The variadic functions of the compat host's C API.  Stable Rust cannot
 * define C variadic functions, so these format the message with GLib and
 * hand the finished string to the Rust side.
 *
 * They are defined under "compat_impl_" names: a cdylib built by rustc
 * exports only Rust items, so error.rs exports QEMU's names as naked
 * functions that tail-jump here (all argument registers intact).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"

/* Implemented in Rust (error.rs): take ownership of @msg (g_malloc'ed). */
void compat_error_set(Error **errp, const char *src, int line,
                      const char *func, char *msg);
void compat_report(const char *level, char *msg);

void compat_impl_error_setg_internal(Error **errp,
                                     const char *src, int line,
                                     const char *func, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);
void compat_impl_error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

void compat_impl_error_setg_internal(Error **errp,
                         const char *src, int line, const char *func,
                         const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    compat_error_set(errp, src, line, func, msg);
}

void compat_impl_error_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    compat_report("error", g_strdup_vprintf(fmt, ap));
    va_end(ap);
}
