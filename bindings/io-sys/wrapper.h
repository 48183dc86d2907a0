/*
 * The host API: every QEMU header whose functions the listener calls.
 * bindgen reads this file against the host actually linked: the compat
 * host's headers (include/compat) by default, QEMU's own in a QEMU build.
 */
#include "qemu/osdep.h"
#include "qemu/module.h"
#include "qom/object.h"
#include "qapi/visitor.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "io/channel-socket.h"
#include "io/dns-resolver.h"
#include "qemu/main-loop.h"
#include "qemu/aio.h"
#include "qemu/timer.h"
#include "shim.h"
