//! qio-net-listener: QEMU's `QIONetListener` (io/net-listener.c) in Rust,
//! with QEMU 10.2's C ABI.  This crate is the listener as C sees it:
//!
//! - [`ffi`]: the C ABI (QEMU 10.2's `qio_net_listener_*` prototypes, the
//!   `"qio-net-listener"` QOM type); cbindgen generates the C header from it.
//! - [`qemu`]: the production host, the `Host` interface implemented over
//!   QEMU's C API (declared by the `io-sys` bindings crate from the host's
//!   headers: real QEMU, or the standalone compat host in `compat-host/`).
//!
//! The state machine and the `Host` interface are the
//! `qio-net-listener-core` crate (`core/`, std only), re-exported here as
//! [`host`] and [`listener`].

pub mod ffi;
pub mod qemu;

pub use qio_net_listener_core::{host, listener};

// The Rust tests link the standalone compat host as the host API (not in
// QEMU's tree, where meson builds no tests of this crate).
#[cfg(all(test, not(MESON)))]
extern crate qemucompat as _;
