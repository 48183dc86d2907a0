#!/bin/sh
# The main job: build everything and run the example echo server on the
# compat host.  Arguments go to qio-echo-server (default: 127.0.0.1:0,
# GMainContext dispatch; --aio for AioContext dispatch).
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
sh scripts/bootstrap.sh
[ -d build ] || meson setup build >/dev/null
meson compile -C build >/dev/null
exec build/examples/qio-echo-server "$@"
