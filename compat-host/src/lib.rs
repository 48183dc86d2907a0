//! qemu-compat-host: a standalone, working implementation of the slice of
//! QEMU 10.2's C API that qio-net-listener needs, so that the listener
//! runs, and is tested, without QEMU.
//!
//! # The contract
//!
//! The compat host implements exactly two things, and keeps nothing else:
//!
//! 1. the QEMU C API the listener calls: the functions its bindings
//!    declare (`HOST_FUNCTIONS` in the listener's `build.rs`) and those its
//!    C shims reach through QEMU's static inlines;
//! 2. what a QEMU-style C program that uses the listener calls, as the C
//!    tests, the example and the benchmarks here do: the main loop and
//!    `AioContext` (`qemu_init_main_loop`, `aio_poll`, fd handlers, one-shot
//!    BHs, timers), `IOThread` (the helper of QEMU's unit tests), channels'
//!    read and write, `Error` and `error_report`, `SocketAddress` parsing,
//!    QOM references, casts and properties as the listener's tests use
//!    them.
//!
//! Each function has QEMU's name and signature, and QEMU's behaviour for
//! what those callers do, real sockets, real `GLib` sources and a real
//! `AioContext` loop included: it is not a mock.  `libqemucompat.map` lists
//! the exports (75); `scripts/check-compat-exports.sh` (meson test
//! `compat-exports`) fails when the library exports anything else or when
//! an export has no user among the above, and
//! `tests::headers_declare_exactly_the_exports` when the headers in
//! `include/compat/` declare anything that is not exported.  A function
//! that only this crate's own unit tests would call does not belong here.
//!
//! # Modules, bottom up
//!
//! [`sys`] (bindgen's view of the compat headers) and `util`; [`error`];
//! `visitor` (the scalar visits property accessors make); `qom` (types,
//! properties, instances); `aio` (the `AioContext`, its BHs, timers and
//! threads); `address` (`SocketAddress`, resolver, sockets); `channel`
//! (`QIOChannelSocket`, its `GSource` watches and `AioContext` handlers);
//! `main_loop` (the main context, `IOThread`).  A module uses only modules
//! before it in this list, by Rust path or by C name through [`sys`]; each
//! QOM type registers itself (`type_init!`), so the object model knows
//! nothing of the types above it.
//!
//! The crate is a static archive that meson links into
//! `libqemucompat.so.0`, together with the variadic functions written in C
//! (`varargs.c`); the listener's library does not contain it, so the same
//! listener binary runs on top of real QEMU instead.

pub mod sys;

mod util;

pub mod error;
mod qom;
mod visitor;

mod address;
mod channel;

mod aio;
mod main_loop;

/// A new `AioContext` of its own, for Rust programs that link the host as a
/// crate (the fuzz harness polls one without blocking).  Not a C export:
/// no C program of the contract makes an `AioContext` other than through an
/// `IOThread`.
///
/// # Safety
/// `errp` is NULL or a valid `Error **` (QEMU's conventions).
pub unsafe fn aio_context_new(errp: *mut *mut sys::Error) -> *mut sys::AioContext {
    // SAFETY: the caller's contract is the callee's.
    unsafe { aio::aio_context_new(errp) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The C headers declare exactly what the library exports
    /// (`libqemucompat.map`, which `scripts/check-compat-exports.sh`
    /// checks against the library and its users): a declaration without
    /// an export would compile in a C program and fail at link time.
    #[test]
    fn headers_declare_exactly_the_exports() {
        let bindings = include_str!(concat!(env!("OUT_DIR"), "/bindings.rs"));
        let declared: BTreeSet<&str> = bindings
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                l.strip_prefix("pub fn ")
                    .or_else(|| l.strip_prefix("pub static mut "))
            })
            .map(|rest| rest.split(['(', ':']).next().unwrap_or_default())
            .collect();
        let map = include_str!("../libqemucompat.map");
        let exported: BTreeSet<&str> = map
            .lines()
            .filter_map(|l| l.trim().strip_suffix(';'))
            .filter(|name| name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()))
            .collect();
        assert_eq!(declared, exported);
    }
}
