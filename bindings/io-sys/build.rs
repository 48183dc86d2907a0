//! Build script of io-sys under cargo, which builds against the compat
//! host (against real QEMU, meson's `rust.bindgen` generates the same file
//! from the same allowlist: our QEMU mode and QEMU's tree).
//!
//! bindgen declares the host API (the slice of QEMU's C API the listener
//! calls) from the host's own headers, so struct layouts such as `Object`
//! and `TypeInfo` always come from the host that is linked: here the
//! compat host's (`include/compat`).  The C helpers over QEMU's static
//! inline functions (`shim.c`) are compiled against the same headers.

use std::{env, path::PathBuf};

/// Functions of the host API the listener may call; nothing else is declared
/// (`GLib`'s own come from glib-sys).
const HOST_FUNCTIONS: &[&str] = &[
    "register_module_init",
    "type_register_static",
    "object_new",
    "object_ref",
    "object_unref",
    "object_property_add",
    "visit_type_uint64",
    "error_setg_internal",
    "error_propagate",
    "error_free",
    "error_report",
    "qapi_free_SocketAddress",
    "qio_dns_resolver_get_instance",
    "qio_dns_resolver_lookup_sync",
    "qio_channel_socket_new",
    "qio_channel_socket_listen_sync",
    "qio_channel_socket_accept",
    "qio_channel_socket_get_local_address",
    "qio_channel_set_name",
    "qio_channel_close",
    "qio_channel_shutdown",
    "qio_channel_set_blocking",
    "qio_channel_create_watch",
    "qio_channel_add_watch_source",
    "qio_channel_set_aio_fd_handler",
    "timer_mod",
    "timer_del",
    "qio_nl_aio_timer_new_ms",
    "qio_nl_clock_ms",
    "qio_nl_timer_free",
    "qio_nl_trace_release",
    "qio_nl_trace_backoff",
    "qio_nl_trace_batch",
    "qio_nl_trace_callback",
    "qio_nl_trace_watch",
    "qemu_get_aio_context",
    "aio_bh_schedule_oneshot_full",
];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    generate_host_bindings(&root, &out);
}

fn generate_host_bindings(root: &std::path::Path, out: &std::path::Path) {
    let glib = pkg_config::Config::new()
        .atleast_version("2.66")
        .probe("glib-2.0")
        .expect("glib-2.0 development files (apt-get install libglib2.0-dev)");
    let host_include = root.join("../../include/compat");
    println!("cargo:rerun-if-changed={}", host_include.display());

    let mut builder = bindgen::Builder::default()
        .header(root.join("wrapper.h").to_str().unwrap())
        .allowlist_var("error_abort")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in HOST_FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    builder = builder
        .allowlist_type("TypeInfo")
        .allowlist_type("QIOChannelSocket")
        .allowlist_type("module_init_type")
        .allowlist_type("QIOChannelFunc")
        // GLib comes from glib-sys, as in QEMU's own Rust bindings: the
        // host's declarations then share GLib's types with it.
        .blocklist_type("_?G[A-Z].*")
        .blocklist_type("g(pointer|constpointer|boolean|char|uchar|int|uint|short|ushort|long|ulong|int8|uint8|int16|uint16|int32|uint32|int64|uint64|size|ssize|offset|float|double|intptr|uintptr|unichar|unichar2)")
        .blocklist_function("g_.*")
        .blocklist_item("G_.*");
    for dir in std::iter::once(&host_include).chain(&glib.include_paths) {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    builder
        .generate()
        .expect("bindgen over the host API headers")
        .write_to_file(out.join("bindings.inc.rs"))
        .expect("write bindings.inc.rs");

    // The wrappers of QEMU's static inline functions (see shim.h).
    let mut cc = cc::Build::new();
    cc.file(root.join("shim.c")).warnings(true);
    for dir in std::iter::once(&host_include).chain(&glib.include_paths) {
        cc.include(dir);
    }
    cc.compile("qio_net_listener_host_shim");
}
