/*
 * qemu-compat-host: human-readable messages on stderr, as QEMU's
 * qemu/error-report.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_ERROR_REPORT_H
#define QEMU_ERROR_REPORT_H

void error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif /* QEMU_ERROR_REPORT_H */
