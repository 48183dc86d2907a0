#!/bin/sh
# Every check CI runs: formatting, clippy, the Rust tests (the stale-header
# check, the simulated host's model-based sequences, shuttle), the C harness
# under meson, the packaging check, and the C harness again under valgrind
# and under ASan/UBSan.  Exits non-zero on the first failure.
set -eu
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && PATH="$HOME/.cargo/bin:$PATH"
sh scripts/bootstrap.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings (QEMU's lint set: Cargo.toml, clippy.toml)"
# fuzz/harness cannot inherit the workspace's lints (cargo-fuzz's
# workspace is fuzz/), so it carries a copy: it must stay the same.
python3 -c 'import sys, tomllib
ws = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["lints"]
h = tomllib.load(open("fuzz/harness/Cargo.toml", "rb"))["lints"]
sys.exit(0 if ws == h else "fuzz/harness/Cargo.toml [lints] differ from [workspace.lints]")'
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p qio-net-listener-core --all-targets --locked --features shuttle -- -D warnings
echo "== the core crate (state machine, simulated host) depends on std alone"
deps=$(cargo tree --locked -p qio-net-listener-core --edges normal,build --prefix none)
if [ "$(printf '%s\n' "$deps" | wc -l)" -ne 1 ]; then
    echo "qio-net-listener-core has dependencies:"; printf '%s\n' "$deps"; exit 1
fi
echo "== rustc 1.83 (QEMU's minimum): the workspace builds, the core's tests pass"
sh scripts/check-msrv.sh
echo "== cargo doc (QEMU's rustdoc lints)"
cargo doc --workspace --no-deps --locked
echo "== cargo test (incl. the simulated host's model-based sequences)"
cargo test --workspace --locked
echo "== shuttle: the cross-thread paths model-checked on the simulated host"
cargo test --locked -p qio-net-listener-core --features shuttle --test concurrency

echo "== meson test"
[ -d build ] || meson setup build
meson compile -C build
meson test -C build --print-errorlogs
echo "== packaging: meson install, then a pkg-config build against it"
sh scripts/check-install.sh build
echo "== meson test --setup valgrind (C harness under memcheck)"
meson test -C build --setup valgrind --suite c-tests --print-errorlogs

echo "== meson test, C harness built with ASan/UBSan"
[ -d build-asan ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
meson compile -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --suite c-tests --suite examples --print-errorlogs
