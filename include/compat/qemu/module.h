/*
 * qemu-compat-host: module (constructor) initialisation, as QEMU's
 * qemu/module.h.  type_init() registers a function that
 * module_call_init(MODULE_INIT_QOM) runs once.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_MODULE_H
#define QEMU_MODULE_H

typedef enum {
    MODULE_INIT_MIGRATION,
    MODULE_INIT_BLOCK,
    MODULE_INIT_OPTS,
    MODULE_INIT_QOM,
    MODULE_INIT_TRACE,
    MODULE_INIT_XEN_BACKEND,
    MODULE_INIT_LIBQOS,
    MODULE_INIT_FUZZ_TARGET,
    MODULE_INIT_MAX
} module_init_type;

#define module_init(function, type)                                         \
static void __attribute__((constructor)) do_qemu_init_ ## function(void)    \
{                                                                           \
    register_module_init(function, type);                                   \
}

#define block_init(function) module_init(function, MODULE_INIT_BLOCK)
#define opts_init(function) module_init(function, MODULE_INIT_OPTS)
#define type_init(function) module_init(function, MODULE_INIT_QOM)
#define trace_init(function) module_init(function, MODULE_INIT_TRACE)

void register_module_init(void (*fn)(void), module_init_type type);

/*
 * Runs every function registered for @type that has not run yet, in
 * registration order.  The compat host also runs MODULE_INIT_QOM on its
 * own before the first type lookup, so plain C programs need not call it.
 */
void module_call_init(module_init_type type);

#endif /* QEMU_MODULE_H */
