#!/bin/sh
# Packaging check, as a distributor would: `meson install` into a scratch
# DESTDIR, then build and run a C program against the installed files only,
# through pkg-config (listener + compat host), and check file names, SONAMEs
# and that the listener's module does not pull the compat host in.
# usage: check-install.sh BUILD_DIR
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
DESTDIR=$tmp/root meson install -C "$build" --quiet >/dev/null
prefix=$(meson introspect "$build" --buildoptions |
    python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"][0])')
libdir=$(meson introspect "$build" --buildoptions |
    python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="libdir"][0])')
case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac
lib=$tmp/root$libdir
for f in libqio_net_listener.so.0.1.0 libqemucompat.so.0.1.0 libqio_net_listener.a; do
    [ -f "$lib/$f" ] || { echo "missing $lib/$f"; exit 1; }
done
for l in libqio_net_listener.so.0 libqio_net_listener.so libqemucompat.so.0 libqemucompat.so; do
    [ -L "$lib/$l" ] || { echo "missing link $lib/$l"; exit 1; }
done
readelf -d "$lib/libqemucompat.so.0.1.0" | grep -q 'Library soname: \[libqemucompat.so.0\]'
readelf -d "$lib/libqio_net_listener.so.0.1.0" | grep -q 'Library soname: \[libqio_net_listener.so.0\]'

# The installed .pc files, relocated to the scratch root.
mkdir "$tmp/pc"
for pc in "$lib"/pkgconfig/*.pc; do
    sed "s|^prefix=.*|prefix=$tmp/root$prefix|" "$pc" > "$tmp/pc/${pc##*/}"
done
export PKG_CONFIG_PATH=$tmp/pc
if pkg-config --libs qio-net-listener | grep -q qemucompat; then
    echo "the qio-net-listener module pulls in the compat host"; exit 1
fi
cat > "$tmp/prog.c" <<'PROG'
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/sockets.h"
#include "io/net-listener.h"

int main(void)
{
    qemu_init_main_loop(&error_fatal);
    g_autoptr(SocketAddress) addr = socket_parse("127.0.0.1:0", &error_fatal);
    g_autoptr(QIONetListener) l = qio_net_listener_new();
    if (qio_net_listener_open_sync(l, addr, 16, &error_fatal) < 0 ||
        !qio_net_listener_is_connected(l) || qio_net_listener_nsioc(l) != 1) {
        return 1;
    }
    qio_net_listener_disconnect(l);
    return 0;
}
PROG
# shellcheck disable=SC2046
cc -Wall -Werror -o "$tmp/prog" "$tmp/prog.c" \
    $(pkg-config --cflags --libs qio-net-listener qemu-compat-host) \
    -Wl,-rpath,"$lib"
"$tmp/prog"
ldd "$tmp/prog" | grep -q "libqio_net_listener.so.0 => $lib"
echo "ok: installed files, SONAMEs and a pkg-config build of a C program"
