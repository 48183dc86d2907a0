#!/bin/sh
# The listener library must export exactly the functions of the version
# script (src/qio-net-listener.map: QEMU's 13 qio_net_listener_*), and
# nothing of the compat host, which is its own library, nor of the Rust
# standard library inside, each at version QIO_NET_LISTENER_0.1, and carry
# the SONAME libqio_net_listener.so.0.
# usage: check-exports.sh LIBRARY MAP
set -eu
lib=$1 map=$2
# The one list of exported names: the version script's global section.
expected=$(sed -n '/global:/,/local:/s/^ *\([A-Za-z_][A-Za-z0-9_]*\);$/\1/p' "$map" | sort)
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
echo "ok: $lib ($soname) exports exactly the $(printf '%s\n' "$expected" | wc -l) functions of $map @QIO_NET_LISTENER_0.1"
