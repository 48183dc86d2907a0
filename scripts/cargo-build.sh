#!/bin/sh
# Builds the Rust libraries for meson and copies the ones meson links
# against next to the custom target's outputs.  Cargo does its own
# dependency tracking, so meson runs this on every build (build_always_stale).
#
# usage: cargo-build.sh SOURCE_ROOT TARGET_DIR PROFILE OUTDIR compat|qemu
#   compat: the listener and the compat host (the default build);
#   qemu:   the listener only, against the QEMU headers named by the
#           QIO_HOST_INCLUDE / QIO_HOST_CFLAGS environment (see build.rs).
set -eu
src=$1 target=$2 profile=$3 out=$4 mode=$5
cargo=${CARGO:-cargo}
if [ "$profile" = release ]; then flag=--release; else flag=; fi
if [ "$mode" = qemu ]; then
    packages="-p qio-net-listener"
    libs="libqio_net_listener.a"
else
    packages="-p qio-net-listener -p qemu-compat-host"
    libs="libqio_net_listener.a libqemucompat.a"
fi
# shellcheck disable=SC2086
"$cargo" build --quiet --locked --manifest-path "$src/Cargo.toml" \
    $packages --lib --target-dir "$target" $flag
for f in $libs; do
    # Copy only when changed so meson's relinks follow real changes.
    if ! cmp -s "$target/$profile/$f" "$out/$f"; then
        cp "$target/$profile/$f" "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
    fi
done
