#!/bin/sh
# Keeps the compat host's C API to its contract (compat-host/libqemucompat.map):
# 1. libqemucompat.so exports exactly the symbols the map lists;
# 2. each of them is declared by the listener's bindings (HOST_FUNCTIONS in io-sys's
#    build.rs), referenced by the listener's archive (its C shims call
#    static inlines' callees), or referenced by a C test, the example or a
#    benchmark built in BUILD_DIR (undefined or copy-relocated dynamic
#    symbols, so that macros such as OBJECT_CHECK and &error_fatal count).
# An export nothing here uses fails: remove it with its tests, or add the
# program that needs it.
# usage: check-compat-exports.sh LIBQEMUCOMPAT MAP BUILD_RS LISTENER_A BUILD_DIR
set -eu
lib=$1 map=$2 build_rs=$3 listener_a=$4 build=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sed -n 's/^ *\([A-Za-z_][A-Za-z0-9_]*\);$/\1/p' "$map" | sort > "$tmp/map"
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' | sed 's/@.*//' |
    sort > "$tmp/exports"
if ! cmp -s "$tmp/map" "$tmp/exports"; then
    echo "$lib does not export exactly what $map lists (-map +library):"
    diff -u "$tmp/map" "$tmp/exports" | sed -n 's/^\([-+][^-+]\)/\1/p'
    exit 1
fi

{
    sed -n '/^const HOST_FUNCTIONS/,/^];/s/^ *"\([A-Za-z0-9_]*\)",$/\1/p' "$build_rs"
    nm -u "$listener_a" 2>/dev/null | awk '{ print $NF }'
    find "$build/c-tests" "$build/examples" "$build/benchmarks" -maxdepth 1 \
        -type f -perm -u+x 2>/dev/null |
    while read -r exe; do
        nm -D "$exe" | awk '{ print $NF }'
    done
} | sed 's/@.*//' | sort -u > "$tmp/used"
unused=$(comm -23 "$tmp/map" "$tmp/used")
if [ -n "$unused" ]; then
    echo "exports of $lib that neither the listener nor a C test, example or benchmark uses:"
    printf '%s\n' "$unused"
    exit 1
fi
echo "ok: $lib exports the $(wc -l < "$tmp/map") functions and variables of $map, each used"
