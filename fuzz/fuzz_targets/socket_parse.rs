//! The compat host's socket_parse() on arbitrary bytes.
//! The harness, and what it checks: qio_fuzz_harness::parse.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qio_fuzz_harness::parse::run(data));
