// SPDX-License-Identifier: GPL-2.0-or-later

//! Declarations of the slice of QEMU's C API that the net listener calls:
//! QOM, `Error`, `QIOChannelSocket`, the DNS resolver, AioContext handlers,
//! bottom halves and timers, and the listener's C helpers (`shim.h`).
//! bindgen generates them from `wrapper.h` against the host's own headers:
//! the compat host's (`include/compat`) in a standalone build, QEMU's in
//! QEMU mode (`build.rs`, which lists the functions), or QEMU's
//! `rust.bindgen` inside QEMU's tree (`MESON`).  GLib's types come from
//! glib-sys, as in QEMU's own bindings crates.

#![allow(
    dead_code,
    improper_ctypes_definitions,
    improper_ctypes,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unknown_lints,
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
    clippy::too_many_arguments,
    clippy::undocumented_unsafe_blocks
)]

use glib_sys::*;

#[cfg(MESON)]
include!("bindings.inc.rs");

#[cfg(not(MESON))]
include!(concat!(env!("OUT_DIR"), "/bindings.inc.rs"));
