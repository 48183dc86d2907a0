/*
 * qemu-compat-host: the compiler helpers of QEMU's qemu/compiler.h that
 * QEMU-style C code commonly uses.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_COMPILER_H
#define QEMU_COMPILER_H

#define xstringify(s) #s
#define stringify(s) xstringify(s)

#define QEMU_NORETURN __attribute__((noreturn))
#define QEMU_WARN_UNUSED_RESULT __attribute__((warn_unused_result))
#define QEMU_PACKED __attribute__((packed))
#define G_NORETURN_COMPAT __attribute__((noreturn))

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#define coroutine_fn
#define coroutine_mixed_fn

#endif /* QEMU_COMPILER_H */
