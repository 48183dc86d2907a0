//! Test helpers shared by the address tests and the channel tests.

use super::{listen, parse::parse, AddrBox};

/// How many descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

pub fn parse_ok(s: &str) -> AddrBox {
    parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {}", e.message()))
}

pub fn listen_err(s: &str) -> String {
    let a = parse_ok(s);
    // SAFETY: a valid address.
    match unsafe { listen(a.0, 5) } {
        Ok(_) => panic!("listening on {s} worked"),
        Err(e) => e.message().to_owned(),
    }
}
