//! `QIOChannelSocket` (io/channel-socket.h): a channel's socket and its
//! addresses, connect, listen and accept.

use std::{
    ffi::c_int,
    mem::size_of,
    os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd},
    ptr,
};

use nix::fcntl::{fcntl, FcntlArg};

use super::{Result, TYPE_QIO_CHANNEL_SOCKET};
use crate::{
    address::{self, SockAddr},
    error::{errno, ok_or_set, ErrorImpl, QError},
    qom::CachedType,
    sys,
};

/// Every accepted client is one: looked up once.
static SOCKET_TYPE: CachedType = CachedType::new(TYPE_QIO_CHANNEL_SOCKET);

// ---------------------------------------------------------------------------
// Socket channel internals

/// Removes the socket file of a unix listener, as QEMU's
/// `socket_listen_cleanup()` does when a listening channel closes.
fn listen_cleanup(fd: RawFd) {
    let Ok(sa) = address::local_sockaddr(fd) else {
        return;
    };
    if c_int::from(sa.storage.ss_family) != libc::AF_UNIX {
        return;
    }
    let Ok(a) = sa.to_address() else { return };
    // SAFETY: a fresh unix address that we own.
    let (path, abstract_) = unsafe { ((*a.0).u.q_unix.path, (*a.0).u.q_unix.abstract_) };
    // SAFETY: path is NULL or NUL-terminated.
    if !abstract_ && !path.is_null() && unsafe { *path } != 0 {
        // SAFETY: as above.
        unsafe {
            libc::unlink(path);
        }
    }
}

/// Closes the channel's socket once; later calls do nothing.
///
/// # Safety
/// `sioc` is a live socket channel not used concurrently for I/O.
pub(super) unsafe fn close_socket(sioc: *mut sys::QIOChannelSocket) -> Result<()> {
    // SAFETY: caller's contract.
    let fd = unsafe { std::mem::replace(&mut (*sioc).fd, -1) };
    if fd < 0 {
        return Ok(());
    }
    // SAFETY: caller's contract.
    let listening = unsafe { (*sioc).parent.features }
        & (1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_LISTEN)
        != 0;
    if listening {
        listen_cleanup(fd);
    }
    // The channel owned fd; it is forgotten above.
    nix::unistd::close(fd).map_err(|e| ErrorImpl::with_errno(e as c_int, "Unable to close socket"))
}

/// Gives the channel its socket and records the addresses.  On failure
/// the channel stays without a socket and `fd` is returned to the caller.
///
/// # Safety
/// `sioc` is a live socket channel.
unsafe fn set_fd(
    sioc: *mut sys::QIOChannelSocket,
    fd: OwnedFd,
) -> std::result::Result<(), (QError, OwnedFd)> {
    // SAFETY: caller's contract.
    if unsafe { (*sioc).fd } != -1 {
        return Err((ErrorImpl::new("Socket is already open"), fd));
    }
    let raw = fd.as_raw_fd();
    let local = match address::local_sockaddr(raw) {
        Ok(s) => s,
        Err(e) => {
            return Err((
                ErrorImpl::with_errno(e, "Unable to query local socket address"),
                fd,
            ))
        }
    };
    let remote = match address::remote_sockaddr(raw) {
        Ok(s) => Some(s),
        Err(libc::ENOTCONN) => None,
        Err(e) => {
            return Err((
                ErrorImpl::with_errno(e, "Unable to query remote socket address"),
                fd,
            ))
        }
    };
    let flags = fcntl(&fd, FcntlArg::F_GETFL).unwrap_or(-1);
    // SAFETY: caller's contract; we are the only writer during setup.
    unsafe {
        store_addr(&mut (*sioc).localAddr, &mut (*sioc).localAddrLen, &local);
        match remote {
            Some(r) => store_addr(&mut (*sioc).remoteAddr, &mut (*sioc).remoteAddrLen, &r),
            None => {
                (*sioc).remoteAddr = std::mem::zeroed();
                (*sioc).remoteAddrLen = size_of::<sys::sockaddr_storage>() as sys::socklen_t;
            }
        }
        (*sioc).blocking = flags >= 0 && flags & libc::O_NONBLOCK == 0;
        if c_int::from(local.storage.ss_family) == libc::AF_UNIX {
            (*sioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_FD_PASS;
        }
        (*sioc).fd = fd.into_raw_fd();
    }
    Ok(())
}

fn store_addr(dst: &mut sys::sockaddr_storage, len: &mut sys::socklen_t, src: &SockAddr) {
    // SAFETY: both are sockaddr_storage (the C and the libc view).
    unsafe {
        ptr::copy_nonoverlapping(
            ptr::addr_of!(src.storage).cast::<u8>(),
            (dst as *mut sys::sockaddr_storage).cast::<u8>(),
            size_of::<sys::sockaddr_storage>(),
        );
    }
    *len = src.len;
}

/// A new `SocketAddress` for a recorded address, or NULL and an error: the
/// C result of the `get_local/remote_address` functions.
///
/// # Safety
/// `errp` is a valid `Error **` or NULL.
unsafe fn address_of(
    storage: &sys::sockaddr_storage,
    len: sys::socklen_t,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    let mut s = SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        storage: unsafe { std::mem::zeroed() },
        len,
    };
    // SAFETY: both are sockaddr_storage (the C and the libc view).
    unsafe {
        ptr::copy_nonoverlapping(
            (storage as *const sys::sockaddr_storage).cast::<u8>(),
            ptr::addr_of_mut!(s.storage).cast::<u8>(),
            size_of::<sys::sockaddr_storage>(),
        );
    }
    let r = s.to_address().map(address::AddrBox::into_raw);
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.unwrap_or(ptr::null_mut())
}

// ---------------------------------------------------------------------------
// QIOChannelSocket API

#[no_mangle]
pub extern "C" fn qio_channel_socket_new() -> *mut sys::QIOChannelSocket {
    let sioc = SOCKET_TYPE.object_new().cast::<sys::QIOChannelSocket>();
    // SAFETY: a fresh channel nobody else has.
    unsafe {
        (*sioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_SHUTDOWN;
    }
    sioc
}

/// Installs a freshly opened socket, closing it (and removing its socket
/// file for a listener) if the channel cannot take it.
///
/// # Safety
/// `sioc` is a live socket channel.
unsafe fn install(sioc: *mut sys::QIOChannelSocket, fd: OwnedFd, listening: bool) -> Result<()> {
    // SAFETY: caller's contract.
    unsafe { set_fd(sioc, fd) }.map_err(|(e, fd)| {
        if listening {
            listen_cleanup(fd.as_raw_fd());
        }
        e
    })
}

/// # Safety
/// `ioc` is a live socket channel, `addr` a valid `SocketAddress`, `errp`
/// a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_connect_sync(
    ioc: *mut sys::QIOChannelSocket,
    addr: *mut sys::SocketAddress,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    let r = unsafe { address::connect(addr).and_then(|fd| install(ioc, fd, false)) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.map_or(-1, |()| 0)
}

/// # Safety
/// As [`qio_channel_socket_connect_sync`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_listen_sync(
    ioc: *mut sys::QIOChannelSocket,
    addr: *mut sys::SocketAddress,
    num: c_int,
    errp: *mut *mut sys::Error,
) -> c_int {
    let num = if num <= 0 { libc::SOMAXCONN } else { num };
    // SAFETY: caller's contract.
    let r = unsafe { address::listen(addr, num).and_then(|fd| install(ioc, fd, true)) };
    // SAFETY: caller's contract.
    let ok = unsafe { ok_or_set(r, errp) }.is_some();
    if ok {
        // SAFETY: caller's contract.
        unsafe {
            (*ioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_LISTEN;
        }
    }
    if ok {
        0
    } else {
        -1
    }
}

/// # Safety
/// `ioc` is a live socket channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_get_local_address(
    ioc: *mut sys::QIOChannelSocket,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract.
    unsafe { address_of(&(*ioc).localAddr, (*ioc).localAddrLen, errp) }
}

/// # Safety
/// `ioc` is a live socket channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_get_remote_address(
    ioc: *mut sys::QIOChannelSocket,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract.
    unsafe { address_of(&(*ioc).remoteAddr, (*ioc).remoteAddrLen, errp) }
}

/// As QEMU's: a new channel for the next client, with its remote and
/// local addresses, or NULL and an error.  The channel is only created
/// once accept4 has succeeded (QEMU creates it first and drops it on
/// failure): the failed accept that ends every batch of the listener then
/// costs the system call alone, and with a NULL `errp` no error is built,
/// as QEMU's `error_setg_errno()` builds none.
///
/// # Safety
/// `ioc` is a live socket channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_accept(
    ioc: *mut sys::QIOChannelSocket,
    errp: *mut *mut sys::Error,
) -> *mut sys::QIOChannelSocket {
    // SAFETY: caller's contract.
    match unsafe { accept_client(ioc) } {
        Ok(cioc) => cioc,
        Err((e, msg)) => {
            if !errp.is_null() {
                // SAFETY: caller's contract.
                unsafe {
                    ErrorImpl::with_errno(e, msg).propagate(errp);
                }
            }
            ptr::null_mut()
        }
    }
}

/// The accepted client's new channel, or the errno and what failed.
///
/// # Safety
/// `ioc` is a live listening channel.
unsafe fn accept_client(
    ioc: *mut sys::QIOChannelSocket,
) -> std::result::Result<*mut sys::QIOChannelSocket, (c_int, &'static str)> {
    // SAFETY: caller's contract.
    let lfd = unsafe { (*ioc).fd };
    // Written by accept4 (remote_len bytes), then copied into the zeroed
    // channel: zeroing it first would cost as much as the copy.
    let mut remote = std::mem::MaybeUninit::<sys::sockaddr_storage>::uninit();
    let mut remote_len = size_of::<sys::sockaddr_storage>() as sys::socklen_t;
    let fd = loop {
        // SAFETY: remote/remote_len are valid out parameters.
        let fd = unsafe {
            libc::accept4(
                lfd,
                remote.as_mut_ptr().cast(),
                &mut remote_len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            break fd;
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err((e, "Unable to accept connection")),
        }
    };
    let cioc = qio_channel_socket_new();
    // SAFETY: cioc is ours; the descriptor is new.  From here on the
    // channel owns it, so dropping the channel on an error closes it.
    unsafe {
        (*cioc).fd = fd;
        (*cioc).blocking = true;
        // accept4 wrote remote_len bytes (at most the storage's size).
        ptr::copy_nonoverlapping(
            remote.as_ptr().cast::<u8>(),
            ptr::addr_of_mut!((*cioc).remoteAddr).cast::<u8>(),
            (remote_len as usize).min(size_of::<sys::sockaddr_storage>()),
        );
        (*cioc).remoteAddrLen = remote_len;
        (*cioc).localAddrLen = size_of::<sys::sockaddr_storage>() as sys::socklen_t;
    }
    // SAFETY: localAddr/localAddrLen are valid out parameters.
    if unsafe {
        libc::getsockname(
            fd,
            ptr::addr_of_mut!((*cioc).localAddr).cast(),
            ptr::addr_of_mut!((*cioc).localAddrLen),
        )
    } < 0
    {
        let e = errno();
        // SAFETY: our only reference; finalize closes the descriptor.
        unsafe {
            sys::object_unref(cioc.cast());
        }
        return Err((e, "Unable to query local socket address"));
    }
    // SAFETY: cioc is ours.
    unsafe {
        if c_int::from((*cioc).localAddr.ss_family) == libc::AF_UNIX {
            (*cioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_FD_PASS;
        }
        (*cioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_READ_MSG_PEEK;
    }
    Ok(cioc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        address::{self, testing::*},
        channel::{testing::*, *},
        util::testing::isolated,
    };

    #[test]
    fn accept_and_listen_errors() {
        if !isolated("channel::socket::tests::accept_and_listen_errors") {
            return;
        }
        let before = open_fds();
        let (l, addr) = listener();
        let mut err = ptr::null_mut();
        // SAFETY: live channels for the whole block.
        unsafe {
            assert!(qio_channel_set_blocking(l.cast(), false, &mut err));
            assert!(qio_channel_socket_accept(l, &mut err).is_null());
            let e = crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert_eq!(
                e.message(),
                "Unable to accept connection: Resource temporarily unavailable"
            );
            // With no errp, as QEMU: just NULL (no channel, no fd left).
            assert!(qio_channel_socket_accept(l, ptr::null_mut()).is_null());

            // Listening on a port in use fails without leaking.
            let l2 = qio_channel_socket_new();
            assert_eq!(qio_channel_socket_listen_sync(l2, addr, 1, &mut err), -1);
            let in_use =
                crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert!(
                in_use.message().ends_with("Address already in use"),
                "{}",
                in_use.message()
            );
            for o in [l, l2] {
                sys::object_unref(o.cast());
            }
            address::qapi_free_SocketAddress(addr);
        }
        assert_eq!(open_fds(), before);
    }

    #[test]
    fn unix_listener_removes_its_socket_file() {
        let d = std::env::temp_dir().join(format!("qemucompat-chan-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("l.sock");
        let (l, local) = listener_on(&format!("unix:{}", p.display()));
        // SAFETY: live channel and address.
        unsafe {
            assert!(has_feature(
                l,
                sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_FD_PASS
            ));
            assert!(p.exists());
            address::qapi_free_SocketAddress(local);
            sys::object_unref(l.cast());
        }
        assert!(!p.exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}
