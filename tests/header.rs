//! The C header and the exports agree with the one list of exported names,
//! the version script `src/qio-net-listener.map` (which also drives the
//! shared library's exports and `scripts/check-exports.sh`):
//! - `include/io/net-listener.h` is what cbindgen generates from
//!   `src/ffi.rs` (rewrite it with `QIO_UPDATE_HEADER=1 cargo test --test
//!   header`: no build step writes into the source tree);
//! - the header declares exactly the listed functions, and `src/ffi.rs`
//!   exports exactly those.

use std::collections::BTreeSet;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/net-listener.h"));
const COMMITTED: &str = include_str!("../include/io/net-listener.h");
const MAP: &str = include_str!("../src/qio-net-listener.map");
const FFI: &str = include_str!("../src/ffi.rs");

fn listed() -> BTreeSet<&'static str> {
    MAP.lines()
        .skip_while(|l| !l.contains("global:"))
        .skip(1)
        .take_while(|l| !l.contains("local:"))
        .filter_map(|l| l.trim().strip_suffix(';'))
        .collect()
}

#[test]
fn header_is_fresh() {
    if GENERATED == COMMITTED {
        return;
    }
    if std::env::var_os("QIO_UPDATE_HEADER").is_some_and(|v| v == "1") {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/io/net-listener.h");
        std::fs::write(path, GENERATED).expect("rewrite include/io/net-listener.h");
        return;
    }
    panic!("include/io/net-listener.h is stale; run QIO_UPDATE_HEADER=1 cargo test --test header");
}

#[test]
fn the_header_declares_the_listed_functions() {
    let declared: BTreeSet<&str> = COMMITTED
        .split(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .filter(|w| w.starts_with("qio_net_listener_"))
        .filter(|w| COMMITTED.contains(&format!("{w}(")))
        .collect();
    assert_eq!(declared, listed());
    assert_eq!(
        listed().len(),
        13,
        "QEMU 10.2's include/io/net-listener.h has 13"
    );
}

#[test]
fn ffi_exports_the_listed_functions() {
    let mut exported = BTreeSet::new();
    let mut lines = FFI.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "#[no_mangle]" {
            continue;
        }
        let sig = lines.next().unwrap_or_default();
        let name = sig
            .split("fn ")
            .nth(1)
            .and_then(|s| s.split('(').next())
            .expect("a function after #[no_mangle]");
        exported.insert(name);
    }
    assert_eq!(exported, listed());
}
