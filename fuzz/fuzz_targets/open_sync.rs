//! qio_net_listener_open_sync() with arbitrary SocketAddress values.
//! The harness, and what it checks: qio_fuzz_harness::open_sync.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qio_fuzz_harness::open_sync::run(data));
