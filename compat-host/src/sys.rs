//! The compat host's C headers as bindgen sees them (generated; never
//! edited), with `GLib`'s part from glib-sys.  Functions declared here are the ones this crate itself
//! exports; declaring them lets one module call another's export by its C
//! name, exactly as C code does.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

// GLib's types and functions, which bindgen leaves out (build.rs).
pub use glib_sys::*;

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
