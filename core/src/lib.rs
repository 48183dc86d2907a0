//! `QIONetListener`'s state machine, written against a host interface, on
//! `std` alone.
//!
//! - [`host`]: the host boundary, the [`host::Host`] interface and the
//!   contract a host keeps.  Production implements it over QEMU's C API
//!   (the `qio-net-listener` crate: real QEMU, or the standalone compat
//!   host); the tests of this crate implement it as a deterministic
//!   simulated host (`tests/sim/`).
//! - [`listener`]: the state machine: sockets, callback registration,
//!   watches, their lifetimes, and the two rules (lifetime, disconnect is
//!   final) with how each is enforced.
//! - [`sync`]: its locks and atomics (shuttle's under the `shuttle`
//!   feature, for model checking).
//!
//! Nothing here needs bindgen, `GLib` or a C host: `cargo test -p
//! qio-net-listener-core` runs the simulated host, the model test and
//! (with `--features shuttle`) shuttle on a machine that has only a Rust
//! toolchain.

pub mod host;
pub mod listener;
pub mod sync;
