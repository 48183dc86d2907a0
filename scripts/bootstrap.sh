#!/bin/sh
# Installs what building and testing need on a Debian machine, if missing:
# meson, ninja, pkg-config, GLib and libclang (for bindgen) headers,
# valgrind and strace (the C harness under memcheck; benchmarks/measure.py
# counts instructions and system calls with them), and libuv's headers
# (the benchmark's libuv server, built only if found).  The Rust toolchain
# (cargo, rustc >= 1.83) must already be there.
#
#   bootstrap.sh [--plot]   --plot: also matplotlib, for benchmarks/plot.py
set -eu

pkgs="meson ninja-build pkg-config gcc libc6-dev libglib2.0-dev libclang-dev valgrind strace libuv1-dev"
[ "${1:-}" = "--plot" ] && pkgs="$pkgs python3-matplotlib"
need=""
for pkg in $pkgs; do
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
