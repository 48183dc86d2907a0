//! The host API: QEMU's C API as bindgen declares it in the `io-sys`
//! crate (`rust/bindings/io-sys`), and GLib's from glib-sys.  Nothing but
//! `src/host/` uses these declarations directly.

pub use glib_sys::*;
pub use io_sys::*;
