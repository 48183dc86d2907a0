/*
 * qemu-compat-host: forward declarations shared by the headers, as in
 * QEMU's qemu/typedefs.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_TYPEDEFS_H
#define QEMU_TYPEDEFS_H

typedef struct AioContext AioContext;
typedef struct Error Error;
typedef struct IOThread IOThread;
typedef struct Object Object;
typedef struct ObjectClass ObjectClass;
typedef struct QEMUBH QEMUBH;
typedef struct QEMUTimer QEMUTimer;
typedef struct QIOChannel QIOChannel;
typedef struct QIOChannelSocket QIOChannelSocket;
typedef struct QObject QObject;
typedef struct SocketAddress SocketAddress;
typedef struct Visitor Visitor;

#endif /* QEMU_TYPEDEFS_H */
