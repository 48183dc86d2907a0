// SPDX-License-Identifier: GPL-2.0-or-later

//! Declarations of the slice of QEMU's C API that the Rust net listener
//! (`rust/io/net-listener`) calls: QOM, `Error`, `QIOChannelSocket`, the
//! DNS resolver, AioContext handlers, bottom halves and timers, and the
//! listener's C helpers.  bindgen generates them from `wrapper.h` with the
//! allowlist in `meson.build`.
//!
//! The crate uses no other QEMU bindings crate: the listener is also built
//! when QEMU builds no system emulator (`--disable-system --enable-tools`),
//! where the rest of `rust/` is not built.

#![allow(
    dead_code,
    improper_ctypes_definitions,
    improper_ctypes,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unnecessary_transmutes,
    unused_imports,
    unsafe_op_in_unsafe_fn,
    clippy::pedantic,
    clippy::restriction,
    clippy::style,
    clippy::missing_const_for_fn,
    clippy::ptr_offset_with_cast,
    clippy::useless_transmute,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

use glib_sys::*;

#[cfg(MESON)]
include!("bindings.inc.rs");

#[cfg(not(MESON))]
include!(concat!(env!("OUT_DIR"), "/bindings.inc.rs"));

// SAFETY: the channel functions the net listener calls on a shared channel
// (accept, close, shutdown, set_blocking, watches) are called from any
// thread by QEMU itself; the one field it reads, `fd`, is read only where
// no close can run (see rust/io/net-listener/src/listener/gate.rs).
unsafe impl Sync for QIOChannelSocket {}
