//! Generates the compat host's view of its own C headers, so that every
//! struct it shares with C (Object, `TypeInfo`, `SocketAddress`, `QIOChannelSocket`)
//! has exactly the layout the C compiler gives it, and compiles the
//! variadic functions (`varargs.c`), which Rust cannot define, into the
//! crate's archive.

use std::{env, path::PathBuf};

/// `GLib`'s scalar typedefs that glib-sys defines; the others (guint,
/// gsize...) glib-sys spells as the C types, so bindgen's stay.
const GLIB_SCALARS: &str = "g(boolean|pointer|constpointer)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let include = manifest.join("../include/compat");
    let glib = pkg_config::Config::new()
        .atleast_version("2.66")
        .probe("glib-2.0")
        .expect("glib-2.0 development files (apt-get install libglib2.0-dev)");

    let mut builder = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_str().unwrap())
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_file(format!("{}/.*", include.display()))
        .blocklist_item("_?IO_.*")
        // GLib comes from glib-sys, as in QEMU's own Rust bindings and the
        // listener's: the compat host's types then use GLib's own.
        .blocklist_type("_?G[A-Z].*")
        .blocklist_type(GLIB_SCALARS)
        .blocklist_function("g_.*")
        .blocklist_item("G_.*")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &glib.include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }
    let bindings = builder.generate().expect("bindgen over the compat headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut cc = cc::Build::new();
    cc.file(manifest.join("src/varargs.c"))
        .include(&include)
        .warnings(true)
        .extra_warnings(true);
    for p in &glib.include_paths {
        cc.include(p);
    }
    cc.compile("compat_varargs");
    println!("cargo:rerun-if-changed=src/varargs.c");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=../include/compat");
}
