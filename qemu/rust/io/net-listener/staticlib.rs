// SPDX-License-Identifier: GPL-2.0-or-later

//! The Rust net listener as a C static library, for the binaries that the
//! C compiler links (qemu-nbd, qemu-storage-daemon, unit tests): the
//! library carries the listener's `qio_net_listener_*` functions and the
//! Rust standard library, which those binaries then hold once.  rustc
//! links the system emulators instead, and they take the listener's rlib
//! through `rust_devices_ss`, never this library.

extern crate qio_net_listener;
