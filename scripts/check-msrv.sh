#!/bin/sh
# The crates build with rustc 1.83, QEMU's minimum Rust version (the
# workspace's rust-version): compiles the workspace with that very
# toolchain (rustup fetches it once), which also catches language
# features that clippy's incompatible_msrv does not see, and runs the core
# crate's tests with it.  Shuttle's own dependencies need a newer rustc:
# the model checking runs on the default toolchain only.
# QIO_SKIP_MSRV=1 skips it, saying so (for a machine that cannot fetch).
set -eu
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if [ "${QIO_SKIP_MSRV:-}" = 1 ]; then
    echo "SKIPPED: the check with rustc $msrv (QIO_SKIP_MSRV=1)"
    exit 0
fi
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$msrv" --profile minimal --no-self-update >/dev/null ||
        { echo "rustup cannot install rustc $msrv (set QIO_SKIP_MSRV=1 to skip)" >&2; exit 1; }
fi
echo "rustc $msrv: $(rustup run "$msrv" rustc --version)"
cargo "+$msrv" check --locked --workspace --all-targets --target-dir target/msrv
cargo "+$msrv" test --locked -p qio-net-listener-core --target-dir target/msrv
