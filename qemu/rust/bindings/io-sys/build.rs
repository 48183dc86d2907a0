// SPDX-License-Identifier: GPL-2.0-or-later

// The bindings that meson generated, as for the other bindings crates
// (a file rather than their symbolic link, so that it carries a license).
include!("../build.rs");
