/*
 * qemu-compat-host: the scalar part of QEMU's qapi/visitor.h, which is
 * what property accessors (ObjectPropertyAccessor) call.
 *
 * The compat host has no QObject and no structured visits: its visitors
 * carry one scalar.  object_property_get_*() hands a getter an output
 * visitor, which records the one value the getter visits;
 * object_property_set_*() hands a setter an input visitor, which supplies
 * its value, converted as QEMU's QObject input visitor converts it.
 *
 * Each function returns true on success.  Output visits leave *obj
 * unchanged and never fail; a getter that visits a second value aborts,
 * as QEMU asserts.  Input visits set *obj, or fail with QEMU's messages:
 * "Invalid parameter type for 'NAME', expected: integer" (boolean,
 * string) when the value has another type, and "Parameter 'NAME' expects
 * uint8_t" (int32_t, uint64, ...) when it is out of the type's range.
 * Input string visits set *obj to a new string (free it with g_free())
 * or to NULL on failure.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QAPI_VISITOR_H
#define QAPI_VISITOR_H

#include "qemu/typedefs.h"

bool visit_type_uint64(Visitor *v, const char *name, uint64_t *obj,
                       Error **errp);
bool visit_type_int64(Visitor *v, const char *name, int64_t *obj,
                      Error **errp);

#endif /* QAPI_VISITOR_H */
