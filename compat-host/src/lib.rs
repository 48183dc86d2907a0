//! qemu-compat-host: a standalone, working implementation of the slice of
//! QEMU's C API that qio-net-listener calls and that C programs written for
//! QEMU's API need: QOM objects and their properties (with the scalar
//! visitors property accessors use), `Error`, QAPI `SocketAddress`, the DNS
//! resolver, `QIOChannelSocket`, and the AioContext/main-loop event loop.
//!
//! Every export has the C name and signature of QEMU 10.2 as declared in
//! `include/compat/`.  The crate builds as `libqemucompat.so`; the listener
//! library does not contain it, so the same listener binary can run on top
//! of real QEMU instead.

pub mod sys;

mod util;

pub mod error;
mod property;
mod qom;
mod visitor;

mod address;
mod channel;

mod aio;
mod main_loop;
