/*
 * The variadic functions of the compat host's C API, in C so that they
 * work on every architecture: each formats its message with GLib and
 * hands the finished string to the non-variadic Rust core in error.rs
 * (compat_error_set, compat_report), which takes it over.
 *
 * They carry QEMU's names: the static library meson links into
 * libqemucompat.so (version script compat-host/libqemucompat.map) exports
 * them like the Rust functions, and the Rust tests link them directly.
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

void error_setg_internal(Error **errp,
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

void error_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    compat_report("error", g_strdup_vprintf(fmt, ap));
    va_end(ap);
}
