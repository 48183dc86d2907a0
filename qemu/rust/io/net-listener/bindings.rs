//! The host API: QEMU's C API as bindgen declares it in the `io-sys`
//! crate (`rust/bindings/io-sys`), with the declarations of `GLib` from
//! `glib-sys`.  Nothing but `src/host/` uses them directly.

pub use glib_sys::*;
pub use io_sys::*;
