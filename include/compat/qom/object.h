/*
 * qemu-compat-host: the QEMU Object Model subset of QEMU's qom/object.h:
 * type registration, object_new/ref/unref with a finalize chain, the
 * checked casts behind OBJECT_DECLARE_SIMPLE_TYPE, and object properties
 * (visitor-based accessors, the scalar getters and setters, and the
 * str/bool/integer-pointer helpers).  Interfaces are not supported
 * (TypeInfo::interfaces must be NULL).  Layouts of
 * Object, ObjectClass's first member, ObjectProperty and TypeInfo are
 * QEMU 10.2's.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef QEMU_OBJECT_H
#define QEMU_OBJECT_H

#include "qemu/typedefs.h"

struct TypeImpl;
typedef struct TypeImpl *Type;
typedef struct TypeInfo TypeInfo;
typedef struct InterfaceInfo InterfaceInfo;

#define TYPE_OBJECT "object"

typedef struct ObjectProperty ObjectProperty;

/*
 * Reads (get) or writes (set) property @name of @obj through the visitor
 * @v: the accessor visits exactly one value, e.g.
 * visit_type_uint64(v, name, &value, errp) (see qapi/visitor.h).
 */
typedef void (ObjectPropertyAccessor)(Object *obj,
                                      Visitor *v,
                                      const char *name,
                                      void *opaque,
                                      Error **errp);

/* Not called by the compat host (no composition tree); kept for layout. */
typedef Object *(ObjectPropertyResolve)(Object *obj,
                                        void *opaque,
                                        const char *part);

/*
 * Called once when the property goes away: by object_property_del(), or
 * when its object is finalized (before any instance_finalize runs).
 */
typedef void (ObjectPropertyRelease)(Object *obj,
                                     const char *name,
                                     void *opaque);

/* Not called by the compat host (no default values); kept for layout. */
typedef void (ObjectPropertyInit)(Object *obj, ObjectProperty *prop);

struct ObjectProperty
{
    char *name;
    char *type;
    char *description;
    ObjectPropertyAccessor *get;
    ObjectPropertyAccessor *set;
    ObjectPropertyResolve *resolve;
    ObjectPropertyRelease *release;
    ObjectPropertyInit *init;
    void *opaque;
    QObject *defval;
};

typedef void (ObjectUnparent)(Object *obj);
typedef void (ObjectFree)(void *obj);

#define OBJECT_CLASS_CAST_CACHE 4

struct ObjectClass {
    /* private: */
    Type type;
    GSList *interfaces;
    const char *object_cast_cache[OBJECT_CLASS_CAST_CACHE];
    const char *class_cast_cache[OBJECT_CLASS_CAST_CACHE];
    ObjectUnparent *unparent;
    GHashTable *properties;
};

struct Object {
    /* private: */
    ObjectClass *class;
    ObjectFree *free;
    GHashTable *properties;
    uint32_t ref;
    Object *parent;
};

struct InterfaceInfo {
    const char *type;
};

struct TypeInfo {
    const char *name;
    const char *parent;

    size_t instance_size;
    size_t instance_align;
    void (*instance_init)(Object *obj);
    void (*instance_post_init)(Object *obj);
    void (*instance_finalize)(Object *obj);

    bool abstract;
    size_t class_size;

    void (*class_init)(ObjectClass *klass, const void *data);
    void (*class_base_init)(ObjectClass *klass, const void *data);
    const void *class_data;

    const InterfaceInfo *interfaces;
};

#define OBJECT(obj) \
    ((Object *)(obj))

#define OBJECT_CHECK(type, obj, name) \
    ((type *)object_dynamic_cast_assert(OBJECT(obj), (name), \
                                        __FILE__, __LINE__, __func__))

#define DECLARE_INSTANCE_CHECKER(InstanceType, OBJ_NAME, TYPENAME) \
    static inline G_GNUC_UNUSED InstanceType * \
    OBJ_NAME(const void *obj) \
    { return OBJECT_CHECK(InstanceType, obj, TYPENAME); }

#define OBJECT_DECLARE_SIMPLE_TYPE(InstanceType, MODULE_OBJ_NAME) \
    typedef struct InstanceType InstanceType; \
    \
    G_DEFINE_AUTOPTR_CLEANUP_FUNC(InstanceType, object_unref) \
    \
    DECLARE_INSTANCE_CHECKER(InstanceType, MODULE_OBJ_NAME, TYPE_##MODULE_OBJ_NAME)

/* Registers @info; the TypeInfo and its strings must outlive the process. */
Type type_register_static(const TypeInfo *info);

/* Creates an instance of @typename with a reference count of 1. */
Object *object_new(const char *typename);

/* Takes a reference; returns @obj.  Atomic, callable from any thread. */
Object *object_ref(void *obj);

/*
 * Drops a reference; the last one runs instance_finalize of the type and
 * of each parent type (most derived first) and frees the instance.
 */
void object_unref(void *obj);

const char *object_get_typename(const Object *obj);

/* Returns @obj if it is an instance of @typename (or a subtype), else NULL. */
Object *object_dynamic_cast(Object *obj, const char *typename);

/* As object_dynamic_cast(), but aborts with the caller's location on failure. */
Object *object_dynamic_cast_assert(Object *obj, const char *typename,
                                   const char *file, int line,
                                   const char *func);

/*
 * Properties.
 *
 * As in QEMU, a property of an object is looked up first among the class
 * properties of its type and its parent types, then among its own.  Every
 * object has the class property "type" (a string, its type name).
 * Accessors and release functions are called with no lock held: they may
 * use any QOM function, on any object.  Adding or deleting a property must
 * not race with using that same property from another thread (QEMU needs
 * the BQL for both); reading properties from several threads is fine.
 */

/*
 * Adds property @name of type @type (a free-form name such as "uint64" or
 * "bool") to @obj.  A @get or @set of NULL makes the property write-only
 * or read-only; @release, if not NULL, is called once when the property
 * goes away.  A @name ending in "[*]" takes the first free "name[N]".
 * Returns the property, or NULL with "attempt to add duplicate property
 * 'NAME' to object (type 'TYPE')" if @obj already has one of that name.
 */
ObjectProperty *object_property_try_add(Object *obj, const char *name,
                                        const char *type,
                                        ObjectPropertyAccessor *get,
                                        ObjectPropertyAccessor *set,
                                        ObjectPropertyRelease *release,
                                        void *opaque, Error **errp);

/* object_property_try_add() with &error_abort: a duplicate aborts. */
ObjectProperty *object_property_add(Object *obj, const char *name,
                                    const char *type,
                                    ObjectPropertyAccessor *get,
                                    ObjectPropertyAccessor *set,
                                    ObjectPropertyRelease *release,
                                    void *opaque);

/*
 * Calls the release function of @obj's own property @name, then removes
 * it.  Deleting a property that @obj does not have aborts (QEMU crashes).
 */
void object_property_del(Object *obj, const char *name);

/* The property, or NULL. */
ObjectProperty *object_property_find(Object *obj, const char *name);
/* The property, or NULL and "Property 'TYPE.NAME' not found". */
ObjectProperty *object_property_find_err(Object *obj,
                                         const char *name,
                                         Error **errp);

/*
 * Scalar access, as QEMU's QObject-based getters and setters: the value
 * the getter visits is converted to the requested type if it fits (an
 * int64 property reads as uint when it is not negative, and so on), else
 * "Invalid parameter type for 'NAME', expected: uint" (int, boolean,
 * string).  A missing property gives "Property 'TYPE.NAME' not found"; one
 * without a getter (setter) "Property 'TYPE.NAME' is not readable"
 * ("... is not writable").  On failure the getters return 0, -1, false
 * or NULL; the setters return false.  object_property_get_str() returns a
 * new string (free it with g_free()).
 */
bool object_property_set_str(Object *obj, const char *name,
                             const char *value, Error **errp);
char *object_property_get_str(Object *obj, const char *name,
                              Error **errp);
bool object_property_set_bool(Object *obj, const char *name,
                              bool value, Error **errp);
bool object_property_get_bool(Object *obj, const char *name,
                              Error **errp);
bool object_property_set_int(Object *obj, const char *name,
                             int64_t value, Error **errp);
int64_t object_property_get_int(Object *obj, const char *name,
                                Error **errp);
bool object_property_set_uint(Object *obj, const char *name,
                              uint64_t value, Error **errp);
uint64_t object_property_get_uint(Object *obj, const char *name,
                                  Error **errp);

/* The property's type name, or NULL and "Property ... not found". */
const char *object_property_get_type(Object *obj, const char *name,
                                     Error **errp);

/*
 * A "string" property read and written through @get (returns a new
 * string) and @set; either may be NULL.
 */
ObjectProperty *object_property_add_str(Object *obj, const char *name,
                             char *(*get)(Object *, Error **),
                             void (*set)(Object *, const char *, Error **));

/* A "bool" property read and written through @get and @set. */
ObjectProperty *object_property_add_bool(Object *obj, const char *name,
                              bool (*get)(Object *, Error **),
                              void (*set)(Object *, bool, Error **));

typedef enum {
    /* a getter reads *v */
    OBJ_PROP_FLAG_READ = 1 << 0,
    /* a setter writes *v */
    OBJ_PROP_FLAG_WRITE = 1 << 1,
    OBJ_PROP_FLAG_READWRITE = (OBJ_PROP_FLAG_READ | OBJ_PROP_FLAG_WRITE),
} ObjectPropertyFlags;

/*
 * A "uint8" ... "uint64" property backed by the integer at @v, which must
 * outlive the property; a value written that does not fit is rejected
 * with "Parameter 'NAME' expects uint8_t" (uint16_t, uint32_t).
 */
ObjectProperty *object_property_add_uint8_ptr(Object *obj, const char *name,
                                              const uint8_t *v,
                                              ObjectPropertyFlags flags);
ObjectProperty *object_property_add_uint64_ptr(Object *obj, const char *name,
                                    const uint64_t *v,
                                    ObjectPropertyFlags flags);

#endif /* QEMU_OBJECT_H */
