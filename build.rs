//! Build script of the listener's C ABI crate: cbindgen generates
//! `net-listener.h` from the exports in `src/ffi.rs` (and the callback type
//! in `src/qemu/object.rs`) into `OUT_DIR`.  No build step writes into the
//! source tree: `tests/header.rs` fails when the committed
//! `include/io/net-listener.h` differs, and
//! `QIO_UPDATE_HEADER=1 cargo test --test header` rewrites it.

use std::{env, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=src/qemu/object.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");

    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_src(root.join("src/qemu/object.rs"))
        .with_src(root.join("src/ffi.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen over src/ffi.rs")
        .write_to_file(out.join("net-listener.h"));
}
