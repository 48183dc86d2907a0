/*
 * QOM properties on the listener and its channels, as QEMU code and QEMU's
 * unit tests use them: object_property_add() with get/set/release, the
 * visitor-based accessors, object_property_get/set_uint/int/bool/str, the
 * str/bool/uint*_ptr helpers, object_property_del(), and the release of
 * every remaining property when the object is finalized.
 *
 * The release of a property is the hook a QEMU user has into an object's
 * end of life, so these tests pin down that it runs exactly once: at
 * object_property_del(), or at the last object_unref() (also when the
 * listener outlives its caller's last reference while a callback is set)
 * and, as in QEMU, before the object's own finalizer.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/sockets.h"
#include "qom/object.h"
#include "io/channel-socket.h"
#include "io/net-listener.h"
#include "socket-helpers.h"
#include "test-util.h"

/* The opaque of a custom property: a value and what happened to it. */
typedef struct {
    uint64_t value;
    int gets;
    int sets;
    int releases;
    Object *released_obj;
    char *released_name;
    QIONetListener *listener;    /* if set: its nsioc at release time */
    size_t nsioc_at_release;
} Counter;

static void counter_get(Object *obj G_GNUC_UNUSED, Visitor *v,
                        const char *name, void *opaque, Error **errp)
{
    Counter *c = opaque;
    uint64_t value = c->value;

    c->gets++;
    visit_type_uint64(v, name, &value, errp);
}

static void counter_set(Object *obj G_GNUC_UNUSED, Visitor *v,
                        const char *name, void *opaque, Error **errp)
{
    Counter *c = opaque;
    uint64_t value;

    if (!visit_type_uint64(v, name, &value, errp)) {
        return;
    }
    if (value == 13) {
        error_setg(errp, "13 is not allowed for '%s'", name);
        return;
    }
    c->sets++;
    c->value = value;
}

static void counter_release(Object *obj, const char *name, void *opaque)
{
    Counter *c = opaque;

    c->releases++;
    c->released_obj = obj;
    g_free(c->released_name);
    c->released_name = g_strdup(name);
    if (c->listener) {
        /* The listener is not finalized yet: its channels are there. */
        c->nsioc_at_release = qio_net_listener_nsioc(c->listener);
    }
}

static ObjectProperty *add_counter(Object *obj, const char *name, Counter *c)
{
    return object_property_add(obj, name, "uint64", counter_get, counter_set,
                               counter_release, c);
}

static void counter_clear(Counter *c)
{
    g_free(c->released_name);
    c->released_name = NULL;
}

/* Asserts that *@err is set to exactly @msg, and frees it. */
static void assert_error_is(Error **err, const char *msg)
{
    g_assert_nonnull(*err);
    g_assert_cmpstr(error_get_pretty(*err), ==, msg);
    error_free(*err);
    *err = NULL;
}

/* A custom property: get/set through visitors, errors passed on. */
static void test_custom_accessors(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    Counter c = { .value = 5 };
    ObjectProperty *prop;
    Error *err = NULL;

    prop = add_counter(obj, "test-counter", &c);
    g_assert_nonnull(prop);
    g_assert_true(object_property_find(obj, "test-counter") == prop);
    g_assert_true(object_property_find_err(obj, "test-counter",
                                           &error_abort) == prop);
    g_assert_cmpstr(prop->name, ==, "test-counter");
    g_assert_cmpstr(prop->type, ==, "uint64");
    g_assert_true(prop->opaque == &c);
    g_assert_cmpstr(object_property_get_type(obj, "test-counter", &err),
                    ==, "uint64");

    g_assert_cmpuint(object_property_get_uint(obj, "test-counter", &err),
                     ==, 5);
    g_assert_null(err);
    g_assert_cmpint(c.gets, ==, 1);
    g_assert_true(object_property_set_uint(obj, "test-counter", 42, &err));
    g_assert_cmpuint(c.value, ==, 42);
    g_assert_cmpint(object_property_get_int(obj, "test-counter", &err), ==,
                    42);
    g_assert_true(object_property_set_int(obj, "test-counter", 7, &err));
    g_assert_cmpuint(c.value, ==, 7);
    g_assert_null(err);

    /* The setter's own error reaches the caller; nothing changed. */
    g_assert_false(object_property_set_uint(obj, "test-counter", 13, &err));
    assert_error_is(&err, "13 is not allowed for 'test-counter'");
    g_assert_cmpuint(c.value, ==, 7);

    /* A value of the wrong type is refused by the visitor. */
    g_assert_false(object_property_set_bool(obj, "test-counter", true, &err));
    assert_error_is(&err, "Parameter 'test-counter' expects uint64");
    g_assert_false(object_property_get_bool(obj, "test-counter", &err));
    assert_error_is(&err,
                    "Invalid parameter type for 'test-counter', "
                    "expected: boolean");
    g_assert_null(object_property_get_str(obj, "test-counter", &err));
    assert_error_is(&err,
                    "Invalid parameter type for 'test-counter', "
                    "expected: string");
    g_assert_cmpuint(c.value, ==, 7);
    g_assert_cmpint(c.sets, ==, 2);

    g_assert_cmpint(c.releases, ==, 0);
    object_unref(obj);
    g_assert_cmpint(c.releases, ==, 1);
    counter_clear(&c);
}

/* The uint64_ptr helper, read-write and read-only. */
static void test_uint64_ptr(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    uint64_t rw = 17, ro = UINT64_MAX;
    uint8_t small = 1;
    Error *err = NULL;

    g_assert_nonnull(object_property_add_uint64_ptr(obj, "rw", &rw,
                                                    OBJ_PROP_FLAG_READWRITE));
    g_assert_nonnull(object_property_add_uint64_ptr(obj, "ro", &ro,
                                                    OBJ_PROP_FLAG_READ));
    g_assert_nonnull(object_property_add_uint8_ptr(obj, "small", &small,
                                                   OBJ_PROP_FLAG_READWRITE));
    g_assert_cmpstr(object_property_get_type(obj, "rw", &err), ==, "uint64");

    g_assert_cmpuint(object_property_get_uint(obj, "rw", &err), ==, 17);
    g_assert_true(object_property_set_uint(obj, "rw", 1000, &err));
    g_assert_cmpuint(rw, ==, 1000);
    rw = 3;
    g_assert_cmpuint(object_property_get_uint(obj, "rw", &err), ==, 3);

    g_assert_cmpuint(object_property_get_uint(obj, "ro", &err), ==,
                     UINT64_MAX);
    /* Too big for int64. */
    g_assert_cmpint(object_property_get_int(obj, "ro", &err), ==, -1);
    assert_error_is(&err, "Invalid parameter type for 'ro', expected: int");
    g_assert_false(object_property_set_uint(obj, "ro", 1, &err));
    assert_error_is(&err, "Property 'qio-net-listener.ro' is not writable");
    g_assert_cmpuint(ro, ==, UINT64_MAX);

    g_assert_false(object_property_set_uint(obj, "small", 300, &err));
    assert_error_is(&err, "Parameter 'small' expects uint8_t");
    g_assert_cmpuint(small, ==, 1);
    g_assert_true(object_property_set_uint(obj, "small", 255, &err));
    g_assert_cmpuint(small, ==, 255);
    g_assert_null(err);

    object_unref(obj);
}

static bool flag_value;

static bool flag_get(Object *obj G_GNUC_UNUSED,
                     Error **errp G_GNUC_UNUSED)
{
    return flag_value;
}

static void flag_set(Object *obj G_GNUC_UNUSED, bool value,
                     Error **errp G_GNUC_UNUSED)
{
    flag_value = value;
}

static char *label_get(Object *obj, Error **errp)
{
    /* Accessors may read other properties of the same object. */
    uint64_t n = object_property_get_uint(obj, "n", errp);

    return g_strdup_printf("%s-%" PRIu64, object_get_typename(obj), n);
}

/* The str and bool helpers, and the "type" property every object has. */
static void test_str_and_bool(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    uint64_t n = 4;
    g_autofree char *type = NULL;
    g_autofree char *label = NULL;
    Error *err = NULL;

    object_property_add_uint64_ptr(obj, "n", &n, OBJ_PROP_FLAG_READ);
    g_assert_nonnull(object_property_add_bool(obj, "flag", flag_get,
                                              flag_set));
    g_assert_nonnull(object_property_add_str(obj, "label", label_get, NULL));
    g_assert_cmpstr(object_property_get_type(obj, "flag", &err), ==, "bool");
    g_assert_cmpstr(object_property_get_type(obj, "label", &err), ==,
                    "string");

    flag_value = false;
    g_assert_true(object_property_set_bool(obj, "flag", true, &err));
    g_assert_true(flag_value);
    g_assert_true(object_property_get_bool(obj, "flag", &err));

    label = object_property_get_str(obj, "label", &err);
    g_assert_cmpstr(label, ==, "qio-net-listener-4");
    g_assert_false(object_property_set_str(obj, "label", "x", &err));
    assert_error_is(&err,
                    "Property 'qio-net-listener.label' is not writable");

    type = object_property_get_str(obj, "type", &err);
    g_assert_cmpstr(type, ==, TYPE_QIO_NET_LISTENER);
    g_assert_null(err);
    object_unref(obj);
}

/*
 * Release runs once, at the last unref, with the listener still whole
 * (QEMU releases properties before running instance_finalize).
 */
static void test_release_at_finalize(void)
{
    QIONetListener *listener = tu_new_inet_listener();
    Object *obj = OBJECT(listener);
    Counter a = { .listener = listener };
    Counter b = { 0 };

    add_counter(obj, "a", &a);
    add_counter(obj, "b", &b);
    object_ref(obj);
    object_unref(obj);
    g_assert_cmpint(a.releases, ==, 0);

    object_unref(obj);
    g_assert_cmpint(a.releases, ==, 1);
    g_assert_cmpint(b.releases, ==, 1);
    g_assert_true(a.released_obj == obj);
    g_assert_cmpstr(a.released_name, ==, "a");
    g_assert_cmpstr(b.released_name, ==, "b");
    g_assert_cmpuint(a.nsioc_at_release, ==, 1);
    counter_clear(&a);
    counter_clear(&b);
}

typedef struct {
    Counter counter;
    int accepted;
    TuMode mode;
} LastRef;

static void clear_on_accept(QIONetListener *listener,
                            QIOChannelSocket *sioc G_GNUC_UNUSED,
                            gpointer data)
{
    LastRef *lr = data;

    lr->accepted++;
    tu_set_cb(listener, lr->mode, NULL, NULL);
    /* The dispatch still holds the listener: not finalized in here. */
    g_assert_cmpint(lr->counter.releases, ==, 0);
}

/*
 * The caller drops its last reference while a callback is set: the
 * listener lives on (its watches hold it), and its properties are released
 * once, when the callback clears itself and the listener is finalized.
 */
static void check_release_after_callback(TuMode mode)
{
    QIONetListener *listener = tu_new_inet_listener();
    LastRef lr = { .counter = { .listener = listener }, .mode = mode };
    QIOChannelSocket *client;

    add_counter(OBJECT(listener), "last", &lr.counter);
    tu_set_cb(listener, mode, clear_on_accept, &lr);
    client = tu_connect_listener(listener, 0);
    object_unref(OBJECT(listener));
    g_assert_cmpint(lr.counter.releases, ==, 0);

    TU_WAIT_UNTIL(lr.counter.releases > 0, tu_iterate(mode));
    g_assert_cmpint(lr.accepted, ==, 1);
    tu_spin(mode, 5);
    g_assert_cmpint(lr.counter.releases, ==, 1);
    g_assert_cmpstr(lr.counter.released_name, ==, "last");
    g_assert_cmpuint(lr.counter.nsioc_at_release, ==, 1);
    object_unref(OBJECT(client));
    counter_clear(&lr.counter);
}

static void test_release_after_callback_glib(void)
{
    check_release_after_callback(TU_MODE_GLIB);
}

static void test_release_after_callback_aio(void)
{
    check_release_after_callback(TU_MODE_AIO);
}

/* object_property_del releases at once, and finalize does not again. */
static void test_del(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    Counter c = { .value = 9 };
    Error *err = NULL;

    add_counter(obj, "gone", &c);
    object_property_del(obj, "gone");
    g_assert_cmpint(c.releases, ==, 1);
    g_assert_true(c.released_obj == obj);
    g_assert_cmpstr(c.released_name, ==, "gone");
    g_assert_null(object_property_find(obj, "gone"));
    g_assert_cmpuint(object_property_get_uint(obj, "gone", &err), ==, 0);
    assert_error_is(&err, "Property 'qio-net-listener.gone' not found");

    /* The name is free again. */
    add_counter(obj, "gone", &c);
    g_assert_cmpuint(object_property_get_uint(obj, "gone", &error_abort),
                     ==, 9);
    object_unref(obj);
    g_assert_cmpint(c.releases, ==, 2);
    counter_clear(&c);
}

static void test_duplicate(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    Counter first = { .value = 1 }, second = { .value = 2 };
    Error *err = NULL;

    add_counter(obj, "dup", &first);
    g_assert_null(object_property_try_add(obj, "dup", "uint64", counter_get,
                                          counter_set, counter_release,
                                          &second, &err));
    assert_error_is(&err, "attempt to add duplicate property 'dup' to "
                    "object (type 'qio-net-listener')");
    /* The class property every object has counts too. */
    g_assert_null(object_property_try_add(obj, "type", "string", NULL, NULL,
                                          NULL, NULL, &err));
    assert_error_is(&err, "attempt to add duplicate property 'type' to "
                    "object (type 'qio-net-listener')");
    g_assert_cmpuint(object_property_get_uint(obj, "dup", &error_abort), ==,
                     1);
    object_unref(obj);
    g_assert_cmpint(first.releases, ==, 1);
    g_assert_cmpint(second.releases, ==, 0);
    counter_clear(&first);
}

/* object_property_add() is try_add with &error_abort. */
static void test_duplicate_aborts(void)
{
    if (g_test_subprocess()) {
        QIONetListener *listener = qio_net_listener_new();
        Counter c = { 0 };

        add_counter(OBJECT(listener), "dup", &c);
        add_counter(OBJECT(listener), "dup", &c);
        return;
    }
    g_test_trap_subprocess(NULL, 0, 0);
    g_test_trap_assert_failed();
    g_test_trap_assert_stderr("*attempt to add duplicate property 'dup' to "
                              "object (type 'qio-net-listener')*");
}

static void test_missing(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    Error *err = NULL;

    g_assert_null(object_property_find(obj, "nope"));
    g_assert_null(object_property_find_err(obj, "nope", &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_cmpuint(object_property_get_uint(obj, "nope", &err), ==, 0);
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_cmpint(object_property_get_int(obj, "nope", &err), ==, -1);
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_false(object_property_get_bool(obj, "nope", &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_null(object_property_get_str(obj, "nope", &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_false(object_property_set_uint(obj, "nope", 1, &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_false(object_property_set_str(obj, "nope", "x", &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    g_assert_null(object_property_get_type(obj, "nope", &err));
    assert_error_is(&err, "Property 'qio-net-listener.nope' not found");
    /* A NULL errp is allowed. */
    g_assert_false(object_property_set_bool(obj, "nope", true, NULL));
    object_unref(obj);
}

/*
 * Properties on channels: a new QIOChannelSocket, and the listener's own
 * listening channel, released when the listener (its only owner) is
 * finalized.
 */
static void test_channel_socket(void)
{
    QIOChannelSocket *sioc = qio_channel_socket_new();
    QIONetListener *listener = tu_new_inet_listener();
    QIOChannelSocket *lsioc = qio_net_listener_sioc(listener, 0);
    Counter c = { .value = 3 }, lc = { .value = 4 };
    g_autofree char *type = NULL;

    add_counter(OBJECT(sioc), "bytes", &c);
    g_assert_cmpuint(object_property_get_uint(OBJECT(sioc), "bytes",
                                              &error_abort), ==, 3);
    type = object_property_get_str(OBJECT(sioc), "type", &error_abort);
    g_assert_cmpstr(type, ==, TYPE_QIO_CHANNEL_SOCKET);
    object_unref(OBJECT(sioc));
    g_assert_cmpint(c.releases, ==, 1);
    g_assert_cmpstr(c.released_name, ==, "bytes");

    add_counter(OBJECT(lsioc), "listening", &lc);
    g_assert_true(object_property_set_uint(OBJECT(lsioc), "listening", 8,
                                           &error_abort));
    g_assert_cmpuint(lc.value, ==, 8);
    qio_net_listener_disconnect(listener);
    object_unref(OBJECT(listener));
    g_assert_cmpint(lc.releases, ==, 1);
    g_assert_true(lc.released_obj == OBJECT(lsioc));
    counter_clear(&c);
    counter_clear(&lc);
}

static void int64_get(Object *obj G_GNUC_UNUSED, Visitor *v,
                      const char *name, void *opaque, Error **errp)
{
    int64_t value = *(int64_t *)opaque;

    visit_type_int64(v, name, &value, errp);
}

static void int64_set(Object *obj G_GNUC_UNUSED, Visitor *v,
                      const char *name, void *opaque, Error **errp)
{
    int64_t value;

    if (visit_type_int64(v, name, &value, errp)) {
        *(int64_t *)opaque = value;
    }
}

/* Conversions between what an accessor visits and what is asked for. */
static void test_int64_conversions(void)
{
    QIONetListener *listener = qio_net_listener_new();
    Object *obj = OBJECT(listener);
    int64_t value = -5;
    Error *err = NULL;

    object_property_add(obj, "signed", "int64", int64_get, int64_set, NULL,
                        &value);
    g_assert_cmpint(object_property_get_int(obj, "signed", &err), ==, -5);
    g_assert_cmpuint(object_property_get_uint(obj, "signed", &err), ==, 0);
    assert_error_is(&err,
                    "Invalid parameter type for 'signed', expected: uint");
    g_assert_true(object_property_set_uint(obj, "signed", 6, &err));
    g_assert_cmpint(value, ==, 6);
    g_assert_cmpuint(object_property_get_uint(obj, "signed", &err), ==, 6);
    g_assert_false(object_property_set_uint(obj, "signed", UINT64_MAX, &err));
    assert_error_is(&err,
                    "Invalid parameter type for 'signed', expected: integer");
    g_assert_false(object_property_set_str(obj, "signed", "7", &err));
    assert_error_is(&err,
                    "Invalid parameter type for 'signed', expected: integer");
    g_assert_cmpint(value, ==, 6);
    object_unref(obj);
}

int main(int argc, char **argv)
{
    bool has_ipv4, has_ipv6, has_afunix;

    tu_init(&argc, &argv);
    g_assert_cmpint(socket_init(), ==, 0);

    if (socket_check_protocol_support(&has_ipv4, &has_ipv6) < 0) {
        g_printerr("socket_check_protocol_support() failed\n");
        return 1;
    }
    socket_check_afunix_support(&has_afunix);
    g_assert_true(has_afunix);
    g_assert_true(has_ipv4);
    g_assert_true(has_ipv6 == tu_have_ipv6());

    g_test_add_func("/qom/listener/custom-accessors", test_custom_accessors);
    g_test_add_func("/qom/listener/uint64-ptr", test_uint64_ptr);
    g_test_add_func("/qom/listener/str-and-bool", test_str_and_bool);
    g_test_add_func("/qom/listener/int64-conversions",
                    test_int64_conversions);
    g_test_add_func("/qom/listener/release-at-finalize",
                    test_release_at_finalize);
    g_test_add_func("/qom/listener/release-after-callback/glib",
                    test_release_after_callback_glib);
    g_test_add_func("/qom/listener/release-after-callback/aio",
                    test_release_after_callback_aio);
    g_test_add_func("/qom/listener/del", test_del);
    g_test_add_func("/qom/listener/duplicate", test_duplicate);
    g_test_add_func("/qom/listener/duplicate-aborts", test_duplicate_aborts);
    g_test_add_func("/qom/listener/missing", test_missing);
    g_test_add_func("/qom/channel-socket", test_channel_socket);
    return g_test_run();
}
