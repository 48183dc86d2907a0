#!/bin/sh
# Every check CI runs: formatting, clippy, the Rust tests (including the
# stale-header check), the C harness under meson, and the C harness again
# under valgrind.  Exits non-zero on the first failure.
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
sh scripts/bootstrap.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked

echo "== meson test"
[ -d build ] || meson setup build
meson compile -C build
meson test -C build --print-errorlogs
echo "== meson test --setup valgrind (C harness under memcheck)"
meson test -C build --setup valgrind --suite c-tests --print-errorlogs
