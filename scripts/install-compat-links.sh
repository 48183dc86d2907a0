#!/bin/sh
# meson install: gives the compat host its distributors' file names,
# libqemucompat.so.0.1.0 with the links libqemucompat.so.0 (its SONAME) and
# libqemucompat.so (for -lqemucompat).  Argument: the libdir.
set -eu
case $1 in
/*) dir=${DESTDIR:-}$1 ;;
*) dir=${DESTDIR:-}$MESON_INSTALL_PREFIX/$1 ;;
esac
cd "$dir"
if [ -f libqemucompat.so ] && [ ! -L libqemucompat.so ]; then
    mv -f libqemucompat.so libqemucompat.so.0.1.0
fi
ln -sf libqemucompat.so.0.1.0 libqemucompat.so.0
ln -sf libqemucompat.so.0 libqemucompat.so
