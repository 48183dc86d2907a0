//! `QIOChannel` and `QIOChannelSocket` (io/channel.h, io/channel-socket.h),
//! and `GLib` watches on a channel's fd like QEMU's io/channel-watch.c.
//!
//! The compat host has one concrete channel, so the `QIOChannel` entry
//! points cast to `QIOChannelSocket` instead of going through a class
//! vtable.  Channels are shared with C and may be used from several
//! threads, so they are only ever reached through raw pointers.
//!
//! # Files
//!
//! This file holds the QOM types and the name accessor;
//! [`socket`] the socket channel's own API (new, connect, listen,
//! accept, addresses), [`io`] reading, writing, blocking mode and close,
//! [`watch`] `GSource` watches and `AioContext` fd handlers.

mod io;
mod socket;
#[cfg(test)]
mod testing;
mod watch;

use self::socket::close_socket;
#[cfg(test)]
use self::{
    io::qio_channel_set_blocking,
    socket::{
        qio_channel_socket_accept, qio_channel_socket_connect_sync,
        qio_channel_socket_get_local_address, qio_channel_socket_get_remote_address,
        qio_channel_socket_listen_sync, qio_channel_socket_new,
    },
};

use std::{ffi::c_char, mem::size_of, ptr};

use crate::{
    error::{ErrorImpl, QError},
    qom::{type_info, type_init},
    sys,
};

type Result<T> = std::result::Result<T, QError>;

const TYPE_QIO_CHANNEL: &std::ffi::CStr = c"qio-channel";
const TYPE_QIO_CHANNEL_SOCKET: &std::ffi::CStr = c"qio-channel-socket";

// ---------------------------------------------------------------------------
// QOM types

unsafe extern "C" fn channel_finalize(obj: *mut sys::Object) {
    let ioc = obj.cast::<sys::QIOChannel>();
    // SAFETY: obj is a QIOChannel being finalized; name is NULL or ours.
    unsafe {
        sys::g_free((*ioc).name.cast());
        (*ioc).name = ptr::null_mut();
    }
}

unsafe extern "C" fn socket_init(obj: *mut sys::Object) {
    // SAFETY: obj is a fresh, zeroed QIOChannelSocket.
    unsafe {
        (*obj.cast::<sys::QIOChannelSocket>()).fd = -1;
    }
}

unsafe extern "C" fn socket_finalize(obj: *mut sys::Object) {
    // SAFETY: the last reference is gone, nobody else uses the channel.
    unsafe { close_socket(obj.cast()) }.ok();
}

const CHANNEL_INFO: sys::TypeInfo = sys::TypeInfo {
    instance_finalize: Some(channel_finalize),
    abstract_: true,
    class_size: size_of::<sys::ObjectClass>(),
    ..type_info(
        TYPE_QIO_CHANNEL,
        Some(c"object"),
        size_of::<sys::QIOChannel>(),
    )
};

const SOCKET_INFO: sys::TypeInfo = sys::TypeInfo {
    instance_init: Some(socket_init),
    instance_finalize: Some(socket_finalize),
    ..type_info(
        TYPE_QIO_CHANNEL_SOCKET,
        Some(TYPE_QIO_CHANNEL),
        size_of::<sys::QIOChannelSocket>(),
    )
};

unsafe extern "C" fn register_types() {
    // SAFETY: constant TypeInfos with static strings and callbacks.
    unsafe {
        sys::type_register_static(&CHANNEL_INFO);
        sys::type_register_static(&SOCKET_INFO);
    }
}
type_init!(register_types);

/// The socket channel behind `ioc`, or an error for other channel types.
///
/// # Safety
/// `ioc` is a live channel.
unsafe fn socket_of(ioc: *mut sys::QIOChannel) -> Result<*mut sys::QIOChannelSocket> {
    // SAFETY: caller's contract.
    let o = unsafe { sys::object_dynamic_cast(ioc.cast(), TYPE_QIO_CHANNEL_SOCKET.as_ptr()) };
    if o.is_null() {
        Err(ErrorImpl::new("Channel is not a socket channel"))
    } else {
        Ok(o.cast())
    }
}

// ---------------------------------------------------------------------------
// QIOChannel API

/// # Safety
/// `ioc` is a live channel; `name` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_set_name(ioc: *mut sys::QIOChannel, name: *const c_char) {
    // SAFETY: caller's contract; the old name is ours to free.
    unsafe {
        sys::g_free((*ioc).name.cast());
        (*ioc).name = sys::g_strdup(name);
    }
}
#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::{testing::has_feature, *};

    #[test]
    fn channel_cast_and_type() {
        let c = qio_channel_socket_new();
        // SAFETY: a live channel.
        unsafe {
            assert_eq!((*c).fd, -1);
            let o = c.cast::<sys::Object>();
            assert_eq!(
                CStr::from_ptr(sys::object_get_typename(o))
                    .to_str()
                    .unwrap(),
                "qio-channel-socket"
            );
            assert_eq!(sys::object_dynamic_cast(o, c"qio-channel".as_ptr()), o);
            assert!(sys::object_dynamic_cast(o, c"qio-dns-resolver".as_ptr()).is_null());
            assert!(has_feature(
                c,
                sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_SHUTDOWN
            ));
            sys::object_unref(c.cast());
        }
    }
}
