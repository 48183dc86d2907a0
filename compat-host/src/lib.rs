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
mod qom;
mod visitor;

mod address;
mod channel;

mod aio;
mod main_loop;

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
