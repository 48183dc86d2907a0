#!/bin/sh
# The listener library must export exactly QEMU's 13 qio_net_listener_*
# functions (and nothing of the compat host, which is its own library, nor
# of the Rust standard library inside), each at version QIO_NET_LISTENER_0.1,
# and carry the SONAME libqio_net_listener.so.0.
set -eu
lib=$1
expected="qio_net_listener_add
qio_net_listener_disconnect
qio_net_listener_get_local_address
qio_net_listener_is_connected
qio_net_listener_new
qio_net_listener_nsioc
qio_net_listener_open_sync
qio_net_listener_set_client_aio_func
qio_net_listener_set_client_func
qio_net_listener_set_client_func_full
qio_net_listener_set_name
qio_net_listener_sioc
qio_net_listener_wait_client"
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != libqio_net_listener.so.0 ]; then
    echo "SONAME of $lib is '$soname', expected libqio_net_listener.so.0"
    exit 1
fi
# Every exported function, with its version (name@@VERSION).
actual=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' | sort)
unversioned=$(printf '%s\n' "$actual" | grep -v '@@QIO_NET_LISTENER_0\.1$' || true)
if [ -n "$unversioned" ]; then
    echo "exports of $lib without version QIO_NET_LISTENER_0.1:"
    printf '%s\n' "$unversioned"
    exit 1
fi
actual=$(printf '%s\n' "$actual" | sed 's/@@.*//')
if [ "$actual" != "$expected" ]; then
    echo "unexpected exports of $lib:"
    printf '%s\n' "$actual" | diff -u - /dev/fd/3 3<<EOF2 || true
$expected
EOF2
    exit 1
fi
echo "ok: $lib ($soname) exports exactly the 13 qio_net_listener_* functions @QIO_NET_LISTENER_0.1"
