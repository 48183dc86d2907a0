#!/bin/sh
# Installs what building and testing need on a Debian machine, if missing:
# meson, ninja, pkg-config, GLib and libclang (for bindgen) headers, and
# valgrind.  The Rust toolchain (cargo, rustc >= 1.88) must already be there.
set -eu

need=""
for pkg in meson ninja-build pkg-config gcc libc6-dev libglib2.0-dev libclang-dev valgrind; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    echo "bootstrap: installing$need"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        echo "bootstrap: cargo not found; install a Rust toolchain (rustup) first" >&2
        exit 1
    }
fi
