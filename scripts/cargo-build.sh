#!/bin/sh
# Builds the Rust workspace for meson and copies the libraries meson links
# against next to the custom target's outputs.  Cargo does its own
# dependency tracking, so meson runs this on every build (build_always_stale).
#
# usage: cargo-build.sh SOURCE_ROOT TARGET_DIR PROFILE OUTDIR
set -eu
src=$1 target=$2 profile=$3 out=$4
cargo=${CARGO:-cargo}
if [ "$profile" = release ]; then flag=--release; else flag=; fi
"$cargo" build --quiet --locked --manifest-path "$src/Cargo.toml" \
    --workspace --lib --target-dir "$target" $flag
for f in libqio_net_listener.so libqio_net_listener.a libqemucompat.so; do
    # Copy only when changed so meson's relinks follow real changes.
    if ! cmp -s "$target/$profile/$f" "$out/$f"; then
        cp "$target/$profile/$f" "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
    fi
done
