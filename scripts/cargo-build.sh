#!/bin/sh
# Builds the Rust libraries of the default (compat host) build for meson,
# the listener and the compat host, and copies their static archives next
# to the custom target's outputs.  Cargo does its own dependency tracking,
# so meson runs this on every build (build_always_stale).  QEMU mode
# (-Dqemu_build) does not use cargo: meson builds the crates with rustc.
#
# usage: cargo-build.sh SOURCE_ROOT TARGET_DIR PROFILE OUTDIR
set -eu
src=$1 target=$2 profile=$3 out=$4
cargo=${CARGO:-cargo}
if [ "$profile" = release ]; then flag=--release; else flag=; fi
packages="-p qio-net-listener -p qemu-compat-host"
libs="libqio_net_listener.a libqemucompat.a"
# shellcheck disable=SC2086
"$cargo" build --quiet --locked --manifest-path "$src/Cargo.toml" \
    $packages --lib --target-dir "$target" $flag
for f in $libs; do
    # Copy only when changed so meson's relinks follow real changes.
    if ! cmp -s "$target/$profile/$f" "$out/$f"; then
        cp "$target/$profile/$f" "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
    fi
done
