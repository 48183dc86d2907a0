//! The fuzz targets' harnesses, one function per target taking the
//! fuzzer's raw bytes.  `fuzz/` (cargo-fuzz, nightly) calls them from its
//! `fuzz_target!`s; `tests/replay.rs` (stable `cargo test`) runs every file
//! of the committed corpus through the same functions, so a regression
//! fails CI without nightly.
//!
//! A harness panics on any finding: a crash or panic below it, a broken
//! `Error` convention (failure without a clear error, an error on
//! success), a wrong result, a registration notified twice or never, a
//! listener left unfinalized, a file descriptor left open.  Everything is
//! bounded: loops are iterated without blocking, connects have a timeout,
//! and `wait_client` only runs with a client already queued.
//!
//! **Network safety.**  Whatever the bytes say, nothing is bound or
//! connected except loopback, wildcard listening addresses, unix paths
//! under a private temporary directory and abstract names with a private
//! prefix, and no host name reaches DNS: [`address`] maps fuzzed hosts to
//! numeric loopback/wildcard addresses, `localhost` (from /etc/hosts, IPv4
//! only) or text that fails as a numeric address.  Bound addresses are
//! checked, and a connect refuses anything but loopback.

pub mod address;
pub mod open_sync;
pub mod parse;
pub mod sequence;
mod support;

/// A harness: runs one input, panics on a finding.
pub type Harness = fn(&[u8]);

/// The fuzz targets by name (the corpus directory names), with their
/// harnesses.
pub const TARGETS: [(&str, Harness); 3] = [
    ("socket_parse", parse::run),
    ("open_sync", open_sync::run),
    ("api_sequence", sequence::run),
];
