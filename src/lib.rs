//! qio-net-listener: QEMU's `QIONetListener` (io/net-listener.c) in Rust.
//!
//! Layout:
//! - [`ffi`]: the C ABI (QEMU 10.2's `qio_net_listener_*` prototypes, the
//!   `"qio-net-listener"` QOM type); cbindgen generates the C header from it.
//! - [`listener`]: the state machine: sockets, callback registration,
//!   watches, their lifetimes; generic over the host interface.
//! - [`host`]: the host boundary: the [`host::Host`] interface, and
//!   [`host::qemu`], its implementation over QEMU's C API (declared by
//!   bindgen from the host's headers: real QEMU, or the standalone compat
//!   host in `compat-host/`).  Tests add a simulated host (`tests/sim/`).

pub mod ffi;
pub mod host;
pub mod listener;
pub mod sync;

// The Rust tests link the standalone compat host as the host API.
#[cfg(test)]
extern crate qemucompat as _;

#[cfg(test)]
mod tests {
    /// CI fails when the committed header is not what cbindgen generates
    /// from the current exports (regenerate: `QIO_UPDATE_HEADER=1 cargo build`).
    #[test]
    fn header_is_fresh() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/net-listener.h"));
        let committed = include_str!("../include/io/net-listener.h");
        assert!(
            generated == committed,
            "include/io/net-listener.h is stale; run QIO_UPDATE_HEADER=1 cargo build"
        );
    }
}
