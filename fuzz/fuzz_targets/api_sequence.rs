//! Call sequences through the C ABI, with loopback clients and loops.
//! The harness, and what it checks: qio_fuzz_harness::sequence.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qio_fuzz_harness::sequence::run(data));
