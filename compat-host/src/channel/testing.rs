//! Test helpers shared by the channel tests.

use std::ptr;

use super::{
    qio_channel_socket_get_local_address, qio_channel_socket_listen_sync, qio_channel_socket_new,
};
use crate::{address::testing::parse_ok, sys};

pub(super) fn check<T>(r: T, err: &mut *mut sys::Error) -> T {
    if !err.is_null() {
        // SAFETY: a live error.
        let e = unsafe { crate::error::from_raw(std::mem::replace(err, ptr::null_mut())) }.unwrap();
        panic!("{}", e.message());
    }
    r
}

/// A listening channel on 127.0.0.1 and its address.
pub(super) fn listener() -> (*mut sys::QIOChannelSocket, *mut sys::SocketAddress) {
    listener_on("127.0.0.1:0")
}

/// A listening channel on `addr` (`socket_parse()` syntax) and its address.
pub(super) fn listener_on(addr: &str) -> (*mut sys::QIOChannelSocket, *mut sys::SocketAddress) {
    let a = parse_ok(addr);
    let l = qio_channel_socket_new();
    let mut err = ptr::null_mut();
    // SAFETY: valid channel, address and errp.
    unsafe {
        assert_eq!(
            check(
                qio_channel_socket_listen_sync(l, a.0, 0, &mut err),
                &mut err
            ),
            0
        );
        assert!(has_feature(
            l,
            sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_LISTEN
        ));
        let local = check(qio_channel_socket_get_local_address(l, &mut err), &mut err);
        (l, local)
    }
}

/// Whether `sioc` has `feature` (QEMU's `qio_channel_has_feature()`).
///
/// # Safety
/// `sioc` is a live channel.
pub(super) unsafe fn has_feature(
    sioc: *mut sys::QIOChannelSocket,
    feature: sys::QIOChannelFeature,
) -> bool {
    // SAFETY: caller's contract.
    unsafe { (*sioc).parent.features & (1 << feature) != 0 }
}
