//! QIOChannel and QIOChannelSocket (io/channel.h, io/channel-socket.h),
//! and GLib watches on a channel's fd like QEMU's io/channel-watch.c.
//!
//! The compat host has one concrete channel, so the QIOChannel entry
//! points cast to QIOChannelSocket instead of going through a class
//! vtable.  Channels are shared with C and may be used from several
//! threads, so they are only ever reached through raw pointers.

use std::{
    ffi::{c_char, c_int, c_void},
    mem::size_of,
    os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd},
    ptr,
};

use crate::{
    address::{self, SockAddr},
    error::{errno, ok_or_set, ErrorImpl, QError},
    qom::CachedType,
    sys,
};

type Result<T> = std::result::Result<T, QError>;

const TYPE_QIO_CHANNEL: &std::ffi::CStr = c"qio-channel";
const TYPE_QIO_CHANNEL_SOCKET: &std::ffi::CStr = c"qio-channel-socket";

/// Every accepted client is one: looked up once.
static SOCKET_TYPE: CachedType = CachedType::new(TYPE_QIO_CHANNEL_SOCKET);

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
    unsafe { (*obj.cast::<sys::QIOChannelSocket>()).fd = -1 };
}

unsafe extern "C" fn socket_finalize(obj: *mut sys::Object) {
    // SAFETY: the last reference is gone, nobody else uses the channel.
    unsafe { close_socket(obj.cast()) }.ok();
}

const CHANNEL_INFO: sys::TypeInfo = sys::TypeInfo {
    name: TYPE_QIO_CHANNEL.as_ptr(),
    parent: c"object".as_ptr(),
    instance_size: size_of::<sys::QIOChannel>(),
    instance_align: 0,
    instance_init: None,
    instance_post_init: None,
    instance_finalize: Some(channel_finalize),
    abstract_: true,
    class_size: size_of::<sys::QIOChannelClass>(),
    class_init: None,
    class_base_init: None,
    class_data: ptr::null(),
    interfaces: ptr::null(),
};

const SOCKET_INFO: sys::TypeInfo = sys::TypeInfo {
    name: TYPE_QIO_CHANNEL_SOCKET.as_ptr(),
    parent: TYPE_QIO_CHANNEL.as_ptr(),
    instance_size: size_of::<sys::QIOChannelSocket>(),
    instance_init: Some(socket_init),
    instance_finalize: Some(socket_finalize),
    abstract_: false,
    class_size: 0,
    ..CHANNEL_INFO
};

/// The QOM types this module implements, registered by the type registry
/// itself.
pub(crate) fn type_infos() -> Vec<sys::TypeInfo> {
    vec![CHANNEL_INFO, SOCKET_INFO]
}

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
// Socket channel internals

/// Removes the socket file of a unix listener, as QEMU's
/// socket_listen_cleanup() does when a listening channel closes.
fn listen_cleanup(fd: RawFd) {
    let Ok(sa) = address::local_sockaddr(fd) else {
        return;
    };
    if sa.storage.ss_family as c_int != libc::AF_UNIX {
        return;
    }
    let Ok(a) = sa.to_address() else { return };
    // SAFETY: a fresh unix address that we own.
    let (path, abstract_) = unsafe { ((*a.0).u.q_unix.path, (*a.0).u.q_unix.abstract_) };
    // SAFETY: path is NULL or NUL-terminated.
    if !abstract_ && !path.is_null() && unsafe { *path } != 0 {
        // SAFETY: as above.
        unsafe { libc::unlink(path) };
    }
}

/// Closes the channel's socket once; later calls do nothing.
///
/// # Safety
/// `sioc` is a live socket channel not used concurrently for I/O.
unsafe fn close_socket(sioc: *mut sys::QIOChannelSocket) -> Result<()> {
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
    // SAFETY: the channel owned fd; it is forgotten above.
    if unsafe { libc::close(fd) } < 0 {
        return Err(ErrorImpl::with_errno(errno(), "Unable to close socket"));
    }
    Ok(())
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
    // SAFETY: plain fcntl on a descriptor we hold.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
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
        if local.storage.ss_family as c_int == libc::AF_UNIX {
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
        )
    };
    *len = src.len;
}

fn address_of(
    storage: &sys::sockaddr_storage,
    len: sys::socklen_t,
) -> Result<*mut sys::SocketAddress> {
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
        )
    };
    s.to_address().map(address::AddrBox::into_raw)
}

/// Waits until `fd` is ready for `events`, for the `_all` functions on a
/// non-blocking channel.
fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd array of length 1; EINTR just returns
    // early and the caller retries the I/O.
    unsafe { libc::poll(&mut p, 1, -1) };
}

// ---------------------------------------------------------------------------
// QIOChannelSocket API

#[no_mangle]
pub extern "C" fn qio_channel_socket_new() -> *mut sys::QIOChannelSocket {
    let sioc = SOCKET_TYPE.object_new().cast::<sys::QIOChannelSocket>();
    // SAFETY: a fresh channel nobody else has.
    unsafe { (*sioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_SHUTDOWN };
    sioc
}

/// # Safety
/// `fd` is a descriptor the caller hands over (kept by the caller on
/// failure); `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_new_fd(
    fd: c_int,
    errp: *mut *mut sys::Error,
) -> *mut sys::QIOChannelSocket {
    if fd < 0 {
        // SAFETY: caller's contract.
        unsafe {
            ErrorImpl::with_errno(libc::EBADF, "Unable to query local socket address")
                .propagate(errp)
        };
        return ptr::null_mut();
    }
    let sioc = qio_channel_socket_new();
    // SAFETY: the caller hands fd over; on failure we give it back
    // (into_raw_fd) so the caller still owns it, as in QEMU.
    match unsafe { set_fd(sioc, std::os::fd::FromRawFd::from_raw_fd(fd)) } {
        Ok(()) => sioc,
        Err((e, fd)) => {
            let _ = fd.into_raw_fd();
            // SAFETY: our channel reference; errp is the caller's.
            unsafe {
                sys::object_unref(sioc.cast());
                e.propagate(errp);
            }
            ptr::null_mut()
        }
    }
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
/// `ioc` is a live socket channel, `addr` a valid SocketAddress, `errp`
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
        unsafe { (*ioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_LISTEN };
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
    let r = unsafe { address_of(&(*ioc).localAddr, (*ioc).localAddrLen) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.unwrap_or(ptr::null_mut())
}

/// # Safety
/// `ioc` is a live socket channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_socket_get_remote_address(
    ioc: *mut sys::QIOChannelSocket,
    errp: *mut *mut sys::Error,
) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract.
    let r = unsafe { address_of(&(*ioc).remoteAddr, (*ioc).remoteAddrLen) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.unwrap_or(ptr::null_mut())
}

/// As QEMU's: a new channel for the next client, with its remote and
/// local addresses, or NULL and an error.  The channel is only created
/// once accept4 has succeeded (QEMU creates it first and drops it on
/// failure): the failed accept that ends every batch of the listener then
/// costs the system call alone, and with a NULL `errp` no error is built,
/// as QEMU's error_setg_errno() builds none.
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
                unsafe { ErrorImpl::with_errno(e, msg).propagate(errp) };
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
        unsafe { sys::object_unref(cioc.cast()) };
        return Err((e, "Unable to query local socket address"));
    }
    // SAFETY: cioc is ours.
    unsafe {
        if (*cioc).localAddr.ss_family as c_int == libc::AF_UNIX {
            (*cioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_FD_PASS;
        }
        (*cioc).parent.features |= 1 << sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_READ_MSG_PEEK;
    }
    Ok(cioc)
}

// ---------------------------------------------------------------------------
// QIOChannel API

/// # Safety
/// `ioc` is a live channel.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_has_feature(
    ioc: *mut sys::QIOChannel,
    feature: sys::QIOChannelFeature,
) -> bool {
    // SAFETY: caller's contract.
    unsafe { (*ioc).features & (1 << feature) != 0 }
}

/// # Safety
/// `ioc` is a live channel, not being modified concurrently.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_set_feature(
    ioc: *mut sys::QIOChannel,
    feature: sys::QIOChannelFeature,
) {
    // SAFETY: caller's contract.
    unsafe { (*ioc).features |= 1 << feature };
}

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

/// One recv()/send(): count, 0 at EOF, or `QIO_CHANNEL_ERR_BLOCK`.
///
/// # Safety
/// `ioc` is a live channel; `buf` valid for `len` bytes.
unsafe fn io_once(
    ioc: *mut sys::QIOChannel,
    buf: *mut c_void,
    len: usize,
    write: bool,
) -> Result<isize> {
    // SAFETY: caller's contract.
    let fd = unsafe { (*socket_of(ioc)?).fd };
    loop {
        // SAFETY: buf is valid for len bytes (caller's contract); send()
        // only reads it.  MSG_NOSIGNAL: a closed peer gives EPIPE rather
        // than killing a C program that did not ignore SIGPIPE.
        let n = unsafe {
            if write {
                libc::send(fd, buf, len, libc::MSG_NOSIGNAL)
            } else {
                libc::recv(fd, buf, len, 0)
            }
        };
        if n >= 0 {
            return Ok(n);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(sys::QIO_CHANNEL_ERR_BLOCK as isize),
            e => {
                let what = if write {
                    "Unable to write to socket"
                } else {
                    "Unable to read from socket"
                };
                return Err(ErrorImpl::with_errno(e, what));
            }
        }
    }
}

/// # Safety
/// `ioc` is a live channel; `buf` writable for `buflen` bytes; `errp` a
/// valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_read(
    ioc: *mut sys::QIOChannel,
    buf: *mut c_void,
    buflen: usize,
    errp: *mut *mut sys::Error,
) -> isize {
    // SAFETY: caller's contract.
    unsafe { ok_or_set(io_once(ioc, buf, buflen, false), errp) }.unwrap_or(-1)
}

/// # Safety
/// `ioc` is a live channel; `buf` readable for `buflen` bytes; `errp` a
/// valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_write(
    ioc: *mut sys::QIOChannel,
    buf: *const c_void,
    buflen: usize,
    errp: *mut *mut sys::Error,
) -> isize {
    // SAFETY: caller's contract; a write only reads buf.
    unsafe { ok_or_set(io_once(ioc, buf.cast_mut(), buflen, true), errp) }.unwrap_or(-1)
}

/// Transfers all of `buf`; Ok(false) if EOF came before any byte.
///
/// # Safety
/// As [`io_once`].
unsafe fn io_all(
    ioc: *mut sys::QIOChannel,
    buf: *mut c_void,
    len: usize,
    write: bool,
) -> Result<bool> {
    let mut done = 0;
    while done < len {
        // SAFETY: buf + done is within the caller's buffer.
        let n = unsafe { io_once(ioc, buf.cast::<u8>().add(done).cast(), len - done, write)? };
        if n == sys::QIO_CHANNEL_ERR_BLOCK as isize {
            // SAFETY: caller's contract; socket_of succeeded in io_once.
            let fd = unsafe { (*socket_of(ioc)?).fd };
            wait_fd(fd, if write { libc::POLLOUT } else { libc::POLLIN });
            continue;
        }
        if n == 0 && !write {
            if done == 0 {
                return Ok(false);
            }
            return Err(ErrorImpl::new(
                "Unexpected end-of-file before all data were read",
            ));
        }
        done += n as usize;
    }
    Ok(true)
}

/// # Safety
/// As [`qio_channel_read`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_read_all_eof(
    ioc: *mut sys::QIOChannel,
    buf: *mut c_void,
    buflen: usize,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    match unsafe { ok_or_set(io_all(ioc, buf, buflen, false), errp) } {
        Some(true) => 1,
        Some(false) => 0,
        None => -1,
    }
}

/// # Safety
/// As [`qio_channel_read`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_read_all(
    ioc: *mut sys::QIOChannel,
    buf: *mut c_void,
    buflen: usize,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    let r = unsafe { io_all(ioc, buf, buflen, false) }.and_then(|full| {
        if full {
            Ok(())
        } else {
            Err(ErrorImpl::new(
                "Unexpected end-of-file before all data were read",
            ))
        }
    });
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.map_or(-1, |()| 0)
}

/// # Safety
/// As [`qio_channel_write`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_write_all(
    ioc: *mut sys::QIOChannel,
    buf: *const c_void,
    buflen: usize,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract; a write only reads buf.
    unsafe { ok_or_set(io_all(ioc, buf.cast_mut(), buflen, true), errp) }.map_or(-1, |_| 0)
}

/// # Safety
/// `ioc` is a live channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_set_blocking(
    ioc: *mut sys::QIOChannel,
    enabled: bool,
    errp: *mut *mut sys::Error,
) -> bool {
    // SAFETY: caller's contract.
    let r = unsafe { socket_of(ioc) }.and_then(|s| {
        // SAFETY: s is the live channel.
        let fd = unsafe { (*s).fd };
        let mut e = ptr::null_mut();
        // SAFETY: e is a valid Error **.
        if unsafe { sys::qemu_set_blocking(fd, enabled, &mut e) } {
            // SAFETY: as above.
            unsafe { (*s).blocking = enabled };
            Ok(())
        } else {
            // SAFETY: e was set by qemu_set_blocking.
            Err(unsafe { crate::error::from_raw(e) }
                .unwrap_or_else(|| ErrorImpl::new("Unable to set blocking mode")))
        }
    });
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.is_some()
}

/// # Safety
/// `ioc` is a live channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_close(
    ioc: *mut sys::QIOChannel,
    errp: *mut *mut sys::Error,
) -> c_int {
    // SAFETY: caller's contract.
    let r = unsafe { socket_of(ioc).and_then(|s| close_socket(s)) };
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.map_or(-1, |()| 0)
}

/// # Safety
/// `ioc` is a live channel; `errp` a valid `Error **` or NULL.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_shutdown(
    ioc: *mut sys::QIOChannel,
    how: sys::QIOChannelShutdown,
    errp: *mut *mut sys::Error,
) -> c_int {
    let sockhow = match how {
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_READ => libc::SHUT_RD,
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_WRITE => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: caller's contract.
    let r = unsafe { socket_of(ioc) }.and_then(|s| {
        // SAFETY: s is the live channel; shutdown checks the fd itself.
        if unsafe { libc::shutdown((*s).fd, sockhow) } < 0 {
            Err(ErrorImpl::with_errno(errno(), "Unable to shutdown socket"))
        } else {
            Ok(())
        }
    });
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.map_or(-1, |()| 0)
}

// ---------------------------------------------------------------------------
// Watches

/// QEMU's QIOChannelFDSource, with the fd registered through
/// g_source_add_unix_fd().
#[repr(C)]
struct FdSource {
    parent: sys::GSource,
    tag: sys::gpointer,
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
}

unsafe extern "C" fn fd_source_prepare(
    _source: *mut sys::GSource,
    timeout: *mut sys::gint,
) -> sys::gboolean {
    // SAFETY: GLib passes a valid out pointer.
    unsafe { *timeout = -1 };
    0
}

unsafe extern "C" fn fd_source_check(source: *mut sys::GSource) -> sys::gboolean {
    let s = source.cast::<FdSource>();
    // SAFETY: source is one of our FdSources; tag is its fd's tag.
    let revents = unsafe { sys::g_source_query_unix_fd(source, (*s).tag) };
    // SAFETY: as above.
    sys::gboolean::from(revents & unsafe { (*s).condition } != 0)
}

unsafe extern "C" fn fd_source_dispatch(
    source: *mut sys::GSource,
    callback: sys::GSourceFunc,
    user_data: sys::gpointer,
) -> sys::gboolean {
    let s = source.cast::<FdSource>();
    // SAFETY: every callback set on our sources is a QIOChannelFunc
    // stored as a GSourceFunc (see add_watch_source); the two are
    // function pointers of the same size.
    let func: sys::QIOChannelFunc =
        unsafe { std::mem::transmute::<sys::GSourceFunc, sys::QIOChannelFunc>(callback) };
    let Some(func) = func else {
        return 0;
    };
    // SAFETY: the source holds a reference to ioc until finalize.
    unsafe {
        let revents = sys::g_source_query_unix_fd(source, (*s).tag);
        func((*s).ioc, revents & (*s).condition, user_data)
    }
}

unsafe extern "C" fn fd_source_finalize(source: *mut sys::GSource) {
    let s = source.cast::<FdSource>();
    // SAFETY: drops the reference taken in create_watch.
    unsafe {
        sys::object_unref((*s).ioc.cast());
        (*s).ioc = ptr::null_mut();
    }
}

static FD_SOURCE_FUNCS: sys::GSourceFuncs = sys::GSourceFuncs {
    prepare: Some(fd_source_prepare),
    check: Some(fd_source_check),
    dispatch: Some(fd_source_dispatch),
    finalize: Some(fd_source_finalize),
    closure_callback: None,
    closure_marshal: None,
};

/// # Safety
/// `ioc` is a live socket channel.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_create_watch(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
) -> *mut sys::GSource {
    // SAFETY: caller's contract.
    let sioc = match unsafe { socket_of(ioc) } {
        Ok(s) => s,
        Err(e) => {
            // SAFETY: &error_abort is a valid destination: a watch on a
            // channel type we cannot poll is a programming error.
            unsafe { e.propagate(ptr::addr_of_mut!(crate::error::error_abort)) };
            return ptr::null_mut();
        }
    };
    // SAFETY: GLib never writes through the funcs pointer; the struct
    // size includes the GSource header.
    let source = unsafe {
        sys::g_source_new(
            ptr::addr_of!(FD_SOURCE_FUNCS).cast_mut(),
            size_of::<FdSource>() as sys::guint,
        )
    };
    let s = source.cast::<FdSource>();
    // SAFETY: a fresh source of our size; the reference taken on ioc is
    // dropped in fd_source_finalize.
    unsafe {
        (*s).ioc = sys::object_ref(ioc.cast()).cast();
        (*s).condition = condition;
        (*s).tag = sys::g_source_add_unix_fd(source, (*sioc).fd, condition);
        sys::g_source_set_name(source, c"QIOChannelFDSource".as_ptr());
    }
    source
}

/// # Safety
/// As [`qio_channel_add_watch_full`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_add_watch(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
) -> sys::guint {
    // SAFETY: caller's contract.
    unsafe { qio_channel_add_watch_full(ioc, condition, func, user_data, notify, ptr::null_mut()) }
}

/// # Safety
/// `ioc` is a live socket channel; `func`/`user_data`/`notify` follow
/// GLib's callback rules; `context` NULL or a live GMainContext.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_add_watch_full(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
    context: *mut sys::GMainContext,
) -> sys::guint {
    // SAFETY: caller's contract.
    let source =
        unsafe { qio_channel_add_watch_source(ioc, condition, func, user_data, notify, context) };
    // SAFETY: the context holds its own reference once attached.
    unsafe {
        let id = sys::g_source_get_id(source);
        sys::g_source_unref(source);
        id
    }
}

/// # Safety
/// As [`qio_channel_add_watch_full`].
#[no_mangle]
pub unsafe extern "C" fn qio_channel_add_watch_source(
    ioc: *mut sys::QIOChannel,
    condition: sys::GIOCondition,
    func: sys::QIOChannelFunc,
    user_data: sys::gpointer,
    notify: sys::GDestroyNotify,
    context: *mut sys::GMainContext,
) -> *mut sys::GSource {
    // SAFETY: caller's contract.
    let source = unsafe { qio_channel_create_watch(ioc, condition) };
    // SAFETY: dispatch turns the callback back into a QIOChannelFunc;
    // GLib calls notify(user_data) once the source no longer needs it.
    // The reference from g_source_new goes to the caller.
    unsafe {
        let cb = std::mem::transmute::<sys::QIOChannelFunc, sys::GSourceFunc>(func);
        sys::g_source_set_callback(source, cb, user_data, notify);
        sys::g_source_attach(source, context);
    }
    source
}

/// # Safety
/// `ioc` is a live socket channel; the contexts are NULL or live; the
/// handlers follow aio_set_fd_handler()'s rules.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_set_aio_fd_handler(
    ioc: *mut sys::QIOChannel,
    read_ctx: *mut sys::AioContext,
    io_read: sys::IOHandler,
    write_ctx: *mut sys::AioContext,
    io_write: sys::IOHandler,
    opaque: *mut c_void,
) {
    // SAFETY: caller's contract.
    let Ok(sioc) = (unsafe { socket_of(ioc) }) else {
        return;
    };
    // SAFETY: caller's contract.
    let fd = unsafe { (*sioc).fd };
    // SAFETY: the contexts are live (caller's contract); the AioContext
    // implementation copies what it needs.
    unsafe {
        if read_ctx == write_ctx {
            if !read_ctx.is_null() {
                sys::aio_set_fd_handler(read_ctx, fd, io_read, io_write, None, None, opaque);
            }
        } else {
            if !read_ctx.is_null() {
                sys::aio_set_fd_handler(read_ctx, fd, io_read, None, None, None, opaque);
            }
            if !write_ctx.is_null() {
                sys::aio_set_fd_handler(write_ctx, fd, None, io_write, None, None, opaque);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::CStr, sync::atomic::AtomicUsize};

    use super::*;
    use crate::{
        address::testing::{open_fds, parse_ok},
        util::testing::isolated,
    };

    fn check<T>(r: T, err: &mut *mut sys::Error) -> T {
        if !err.is_null() {
            // SAFETY: a live error.
            let e =
                unsafe { crate::error::from_raw(std::mem::replace(err, ptr::null_mut())) }.unwrap();
            panic!("{}", e.message());
        }
        r
    }

    /// Writes `data` to `c` from another thread after a short delay.
    fn write_later(c: *mut sys::QIOChannel, data: &'static [u8]) -> std::thread::JoinHandle<c_int> {
        let c = c as usize;
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut err = ptr::null_mut();
            // SAFETY: the caller keeps the channel alive until it joins.
            unsafe {
                qio_channel_write_all(
                    c as *mut sys::QIOChannel,
                    data.as_ptr().cast(),
                    data.len(),
                    &mut err,
                )
            }
        })
    }

    /// A listening channel on 127.0.0.1 and its address.
    fn listener() -> (*mut sys::QIOChannelSocket, *mut sys::SocketAddress) {
        let a = parse_ok("127.0.0.1:0");
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
            assert!(qio_channel_has_feature(
                l.cast(),
                sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_LISTEN
            ));
            let local = check(qio_channel_socket_get_local_address(l, &mut err), &mut err);
            (l, local)
        }
    }

    #[test]
    fn connect_accept_read_write() {
        let (l, addr) = listener();
        let mut err = ptr::null_mut();
        // SAFETY: live channels and buffers for the whole block.
        unsafe {
            let c = qio_channel_socket_new();
            assert_eq!(
                check(qio_channel_socket_connect_sync(c, addr, &mut err), &mut err),
                0
            );
            let s = check(qio_channel_socket_accept(l, &mut err), &mut err);
            assert!(!s.is_null());
            assert!((*s).blocking);
            let flags = libc::fcntl((*s).fd, libc::F_GETFD);
            assert!(flags & libc::FD_CLOEXEC != 0);
            let remote = check(qio_channel_socket_get_remote_address(s, &mut err), &mut err);
            let clocal = check(qio_channel_socket_get_local_address(c, &mut err), &mut err);
            assert_eq!(address::uri(remote), address::uri(clocal));
            let local = check(qio_channel_socket_get_local_address(s, &mut err), &mut err);
            let cremote = check(qio_channel_socket_get_remote_address(c, &mut err), &mut err);
            assert_eq!(address::uri(local), address::uri(cremote));

            qio_channel_set_name(s.cast(), c"server-side".as_ptr());
            assert_eq!(
                CStr::from_ptr((*s).parent.name).to_str().unwrap(),
                "server-side"
            );

            let msg = b"hello, world";
            assert_eq!(
                check(
                    qio_channel_write_all(c.cast(), msg.as_ptr().cast(), msg.len(), &mut err),
                    &mut err
                ),
                0
            );
            let mut buf = [0u8; 12];
            assert_eq!(
                check(
                    qio_channel_read_all(s.cast(), buf.as_mut_ptr().cast(), buf.len(), &mut err),
                    &mut err
                ),
                0
            );
            assert_eq!(&buf, msg);

            // Non-blocking with nothing to read.
            assert!(qio_channel_set_blocking(s.cast(), false, &mut err));
            assert!(!(*s).blocking);
            let n = qio_channel_read(s.cast(), buf.as_mut_ptr().cast(), buf.len(), &mut err);
            assert_eq!(n, sys::QIO_CHANNEL_ERR_BLOCK as isize);
            assert!(err.is_null());

            // read_all on a non-blocking channel waits for the data.
            let writer = write_later(c.cast(), b"abc");
            let mut three = [0u8; 3];
            assert_eq!(
                check(
                    qio_channel_read_all(s.cast(), three.as_mut_ptr().cast(), 3, &mut err),
                    &mut err
                ),
                0
            );
            assert_eq!(&three, b"abc");
            assert_eq!(writer.join().unwrap(), 0);

            // EOF: nothing read gives 0, a partial read is an error.
            assert!(qio_channel_set_blocking(s.cast(), true, &mut err));
            assert_eq!(
                qio_channel_shutdown(
                    c.cast(),
                    sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_WRITE,
                    &mut err
                ),
                0
            );
            assert_eq!(
                qio_channel_read_all_eof(s.cast(), buf.as_mut_ptr().cast(), 4, &mut err),
                0
            );
            assert_eq!(
                qio_channel_read_all(s.cast(), buf.as_mut_ptr().cast(), 4, &mut err),
                -1
            );
            let e = crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert_eq!(
                e.message(),
                "Unexpected end-of-file before all data were read"
            );

            // Close twice; I/O afterwards fails.
            assert_eq!(qio_channel_close(c.cast(), &mut err), 0);
            assert_eq!(qio_channel_close(c.cast(), &mut err), 0);
            assert_eq!(
                qio_channel_write(c.cast(), b"x".as_ptr().cast(), 1, &mut err),
                -1
            );
            let e = crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert_eq!(
                e.message(),
                "Unable to write to socket: Bad file descriptor"
            );

            for p in [remote, clocal, local, cremote, addr] {
                address::qapi_free_SocketAddress(p);
            }
            for o in [c, s, l] {
                sys::object_unref(o.cast());
            }
        }
    }

    #[test]
    fn accept_errors_and_fd_channels() {
        if !isolated("channel::tests::accept_errors_and_fd_channels") {
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

            // Wrapping a non-socket fails and leaves the fd to us.
            let f = std::fs::File::open("/proc/self/stat").unwrap();
            assert!(qio_channel_socket_new_fd(f.as_raw_fd(), &mut err).is_null());
            let e = crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert!(
                e.message()
                    .starts_with("Unable to query local socket address"),
                "{}",
                e.message()
            );
            drop(f);

            // Wrapping a connected socket records both addresses.
            let cfd = address::connect(addr).unwrap();
            let c = check(
                qio_channel_socket_new_fd(cfd.into_raw_fd(), &mut err),
                &mut err,
            );
            let r = check(qio_channel_socket_get_remote_address(c, &mut err), &mut err);
            assert_eq!(address::uri(r), address::uri(addr));
            address::qapi_free_SocketAddress(r);

            // Listening on a port in use fails without leaking.
            let l2 = qio_channel_socket_new();
            assert_eq!(qio_channel_socket_listen_sync(l2, addr, 1, &mut err), -1);
            let e = crate::error::from_raw(std::mem::replace(&mut err, ptr::null_mut())).unwrap();
            assert!(
                e.message().ends_with("Address already in use"),
                "{}",
                e.message()
            );
            for o in [c, l, l2] {
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
        let a = parse_ok(&format!("unix:{}", p.display()));
        let l = qio_channel_socket_new();
        let mut err = ptr::null_mut();
        // SAFETY: live channel and address.
        unsafe {
            assert_eq!(
                check(
                    qio_channel_socket_listen_sync(l, a.0, 1, &mut err),
                    &mut err
                ),
                0
            );
            assert!(qio_channel_has_feature(
                l.cast(),
                sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_FD_PASS
            ));
            assert!(p.exists());
            sys::object_unref(l.cast());
        }
        assert!(!p.exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    static FIRED: AtomicUsize = AtomicUsize::new(0);
    static NOTIFIED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn on_incoming(
        ioc: *mut sys::QIOChannel,
        cond: sys::GIOCondition,
        data: sys::gpointer,
    ) -> sys::gboolean {
        assert_eq!(cond, sys::G_IO_IN);
        assert_eq!(data as usize, 0x1234);
        let mut err = ptr::null_mut();
        // SAFETY: ioc is the listening channel the watch holds.
        let s = unsafe { qio_channel_socket_accept(ioc.cast(), &mut err) };
        assert!(!s.is_null());
        // SAFETY: our new channel.
        unsafe { sys::object_unref(s.cast()) };
        FIRED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        0 // G_SOURCE_REMOVE
    }

    unsafe extern "C" fn on_destroy(data: sys::gpointer) {
        assert_eq!(data as usize, 0x1234);
        NOTIFIED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn watch_on_private_context() {
        use std::sync::atomic::Ordering::SeqCst;
        let (l, addr) = listener();
        // SAFETY: live channel, context and callbacks for the whole block.
        unsafe {
            let ctx = sys::g_main_context_new();
            let src = qio_channel_add_watch_source(
                l.cast(),
                sys::G_IO_IN,
                Some(on_incoming),
                0x1234 as sys::gpointer,
                Some(on_destroy),
                ctx,
            );
            assert_eq!((*l).parent.parent.ref_, 2, "the watch holds a reference");
            // Nothing pending: the watch does not fire.
            assert_eq!(sys::g_main_context_iteration(ctx, 0), 0);
            assert_eq!(FIRED.load(SeqCst), 0);

            let c = address::connect(addr).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while FIRED.load(SeqCst) == 0 && std::time::Instant::now() < deadline {
                sys::g_main_context_iteration(ctx, 1);
            }
            assert_eq!(FIRED.load(SeqCst), 1);
            assert_eq!(NOTIFIED.load(SeqCst), 1);
            assert!(sys::g_source_is_destroyed(src) != 0);
            sys::g_source_unref(src);
            assert_eq!(
                (*l).parent.parent.ref_,
                1,
                "finalizing the source dropped its reference"
            );
            drop(c);

            // add_watch_full returns an id that removes the watch.
            let id = qio_channel_add_watch_full(
                l.cast(),
                sys::G_IO_IN,
                Some(on_incoming),
                0x1234 as sys::gpointer,
                Some(on_destroy),
                ctx,
            );
            assert!(id > 0);
            let s = sys::g_main_context_find_source_by_id(ctx, id);
            sys::g_source_destroy(s);
            assert_eq!(NOTIFIED.load(SeqCst), 2);
            assert_eq!((*l).parent.parent.ref_, 1);

            sys::g_main_context_unref(ctx);
            sys::object_unref(l.cast());
            address::qapi_free_SocketAddress(addr);
        }
    }

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
            assert!(qio_channel_has_feature(
                c.cast(),
                sys::QIOChannelFeature_QIO_CHANNEL_FEATURE_SHUTDOWN
            ));
            sys::object_unref(c.cast());
        }
    }

    unsafe extern "C" fn aio_on_read(opaque: *mut c_void) {
        let l = opaque.cast::<sys::QIOChannelSocket>();
        let mut err = ptr::null_mut();
        // SAFETY: opaque is the live listener (see the test).
        unsafe {
            let s = qio_channel_socket_accept(l, &mut err);
            assert!(!s.is_null());
            sys::object_unref(s.cast());
        }
        AIO_FIRED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    static AIO_FIRED: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn aio_fd_handler_in_one_or_two_contexts() {
        use std::sync::atomic::Ordering::SeqCst;
        let (l, addr) = listener();
        let mut err = ptr::null_mut();
        // SAFETY: live channel and contexts for the whole block.
        unsafe {
            let ctx = check(sys::aio_context_new(&mut err), &mut err);
            let other = check(sys::aio_context_new(&mut err), &mut err);
            for (rctx, wctx) in [(ctx, ctx), (ctx, other)] {
                let before = AIO_FIRED.load(SeqCst);
                qio_channel_set_aio_fd_handler(
                    l.cast(),
                    rctx,
                    Some(aio_on_read),
                    wctx,
                    None,
                    l.cast(),
                );
                let c = address::connect(addr).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while AIO_FIRED.load(SeqCst) == before && std::time::Instant::now() < deadline {
                    sys::aio_poll(ctx, true);
                }
                assert_eq!(AIO_FIRED.load(SeqCst), before + 1);
                qio_channel_set_aio_fd_handler(l.cast(), rctx, None, wctx, None, ptr::null_mut());
                drop(c);
            }
            // Removed: a new connection no longer runs the handler.
            let c = address::connect(addr).unwrap();
            let n = AIO_FIRED.load(SeqCst);
            sys::aio_poll(ctx, false);
            assert_eq!(AIO_FIRED.load(SeqCst), n);
            drop(c);
            sys::aio_context_unref(other);
            sys::aio_context_unref(ctx);
            sys::object_unref(l.cast());
            address::qapi_free_SocketAddress(addr);
        }
    }
}
