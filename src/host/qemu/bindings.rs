//! The host API as bindgen declares it from the host's headers (generated
//! at build time; see build.rs for the list of functions).  Nothing but
//! `src/host/` uses these declarations directly.
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

include!(concat!(env!("OUT_DIR"), "/host_bindings.rs"));
