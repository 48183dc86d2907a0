//! QAPI `SocketAddress` and the socket helpers of qemu/sockets.h, plus the
//! DNS resolver of io/dns-resolver.h.
//!
//! Every string a `SocketAddress` owns is `g_malloc`ed, so C code may free
//! or replace it.  Sockets are created close-on-exec and held as `OwnedFd`
//! until handed to the caller, so no error path can leak one.  Error
//! messages name the address and end with the errno text, as QEMU's do.

//!
//! # Files
//!
//! This file holds the allocation and freeing of QAPI addresses and the
//! small wrappers of the socket calls; [`parse`] the text syntax,
//! [`sockaddr`] the kernel's address format, [`listen`] and [`connect`]
//! opening sockets, [`resolver`] `getaddrinfo()` and the DNS resolver.

mod connect;
mod listen;
mod parse;
mod resolver;
mod sockaddr;
#[cfg(test)]
pub mod testing;

#[cfg(test)]
pub use self::parse::uri;
#[cfg(test)]
use self::resolver::{qio_dns_resolver_get_instance, qio_dns_resolver_lookup_sync};
pub use self::{
    connect::connect,
    listen::listen,
    sockaddr::{local_sockaddr, remote_sockaddr, SockAddr},
};

use std::{
    ffi::{c_char, c_int, CStr},
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, FdFlag, OFlag},
    sys::{
        socket::{setsockopt, sockopt},
        stat::fstat,
    },
    unistd,
};

use crate::{
    error::{errno, ok_or_set, ErrorImpl, QError},
    sys,
    util::cstr,
};

type Result<T> = std::result::Result<T, QError>;

// ---------------------------------------------------------------------------
// Allocation, copying and freeing

/// `g_strdup` of a C string that may be NULL.
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn dup(p: *const c_char) -> *mut c_char {
    // SAFETY: g_strdup accepts NULL and NUL-terminated strings.
    unsafe { sys::g_strdup(p) }
}

/// The text of a C string owned by an address (NULL reads as "").
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn text(p: *const c_char) -> String {
    // SAFETY: caller's contract.
    unsafe { cstr(p) }
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
}

/// The bytes of a C string owned by an address (NULL reads as empty):
/// paths and names are bytes, only messages show them as text.
///
/// # Safety
/// `p` is NULL or NUL-terminated, and outlives the result.
unsafe fn bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        b""
    } else {
        // SAFETY: caller's contract.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    }
}

/// A zeroed, `g_malloc`ed `SocketAddress` of type `ty`.
fn new_address(ty: sys::SocketAddressType) -> *mut sys::SocketAddress {
    // SAFETY: g_malloc0 aborts rather than returning NULL; all-zero is a
    // valid SocketAddress (NULL strings, false flags).
    let a = unsafe { sys::g_malloc0(size_of::<sys::SocketAddress>()) }.cast::<sys::SocketAddress>();
    // SAFETY: a is a fresh allocation.
    unsafe {
        (*a).type_ = ty;
    }
    a
}

/// A deep copy of `src` (every string duplicated).
///
/// # Safety
/// `src` is a valid `SocketAddress`.
pub unsafe fn clone_address(src: *const sys::SocketAddress) -> *mut sys::SocketAddress {
    // SAFETY: caller's contract; the union member read is the one the tag
    // selects, and the copy's strings are replaced by duplicates.
    unsafe {
        let dst = new_address((*src).type_);
        (*dst).u = (*src).u;
        match (*src).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                (*dst).u.inet.host = dup((*src).u.inet.host);
                (*dst).u.inet.port = dup((*src).u.inet.port);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                (*dst).u.q_unix.path = dup((*src).u.q_unix.path);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                (*dst).u.vsock.cid = dup((*src).u.vsock.cid);
                (*dst).u.vsock.port = dup((*src).u.vsock.port);
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => {
                (*dst).u.fd.str_ = dup((*src).u.fd.str_);
            }
            _ => {}
        }
        dst
    }
}

/// Frees the strings of an inet address (not the struct).
///
/// # Safety
/// The strings are NULL or `g_malloc`ed and not used afterwards.
unsafe fn free_inet_members(a: &mut sys::InetSocketAddress) {
    // SAFETY: caller's contract.
    unsafe {
        sys::g_free(a.host.cast());
        sys::g_free(a.port.cast());
    }
}

/// # Safety
/// `obj` is NULL or a `g_malloc`ed `SocketAddress` owning its strings.
#[no_mangle]
pub unsafe extern "C" fn qapi_free_SocketAddress(obj: *mut sys::SocketAddress) {
    if obj.is_null() {
        return;
    }
    // SAFETY: caller's contract; the tag selects the live union member.
    unsafe {
        match (*obj).type_ {
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_INET => {
                free_inet_members(&mut (*obj).u.inet)
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_UNIX => {
                sys::g_free((*obj).u.q_unix.path.cast())
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_VSOCK => {
                sys::g_free((*obj).u.vsock.cid.cast());
                sys::g_free((*obj).u.vsock.port.cast());
            }
            sys::SocketAddressType_SOCKET_ADDRESS_TYPE_FD => sys::g_free((*obj).u.fd.str_.cast()),
            _ => {}
        }
        sys::g_free(obj.cast());
    }
}

/// Owns a C `SocketAddress` until it is handed out, so error paths free it.
#[derive(Debug)]
pub struct AddrBox(pub(crate) *mut sys::SocketAddress);

impl AddrBox {
    pub(crate) fn into_raw(self) -> *mut sys::SocketAddress {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for AddrBox {
    fn drop(&mut self) {
        // SAFETY: we own the address.
        unsafe {
            qapi_free_SocketAddress(self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// Small safe wrappers of the socket calls

fn new_socket(family: c_int, ty: c_int, proto: c_int) -> std::result::Result<OwnedFd, c_int> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        Err(errno())
    } else {
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn bind_fd(fd: BorrowedFd<'_>, sa: &SockAddr) -> std::result::Result<(), c_int> {
    // SAFETY: sa is valid for sa.len bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), sa.as_ptr(), sa.len) } < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn listen_fd(fd: BorrowedFd<'_>, num: c_int) -> std::result::Result<(), c_int> {
    // SAFETY: plain syscall.
    if unsafe { libc::listen(fd.as_raw_fd(), num) } < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn connect_fd(fd: BorrowedFd<'_>, sa: &SockAddr) -> std::result::Result<(), c_int> {
    loop {
        // SAFETY: sa is valid for sa.len bytes.
        if unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr(), sa.len) } == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

fn set_keepalive(fd: BorrowedFd<'_>, a: &sys::InetSocketAddress, what: &str) -> Result<()> {
    if !(a.has_keep_alive && a.keep_alive) {
        return Ok(());
    }
    let fail = |e: Errno| {
        ErrorImpl::with_errno(
            e as c_int,
            format!("Unable to set keep-alive option on socket for {what}"),
        )
    };
    setsockopt(&fd, sockopt::KeepAlive, &true).map_err(fail)?;
    if a.has_keep_alive_count && a.keep_alive_count != 0 {
        setsockopt(&fd, sockopt::TcpKeepCount, &a.keep_alive_count).map_err(fail)?;
    }
    if a.has_keep_alive_idle && a.keep_alive_idle != 0 {
        setsockopt(&fd, sockopt::TcpKeepIdle, &a.keep_alive_idle).map_err(fail)?;
    }
    if a.has_keep_alive_interval && a.keep_alive_interval != 0 {
        setsockopt(&fd, sockopt::TcpKeepInterval, &a.keep_alive_interval).map_err(fail)?;
    }
    Ok(())
}

/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: the borrow ends with the fstat call, which only hands the
    // number to the kernel: an fd that is not open just fails (EBADF).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// QEMU's `socket_get_fd()`: the address owns the descriptor, so one that
/// turns out not to be a socket is closed, as QEMU does.
fn fd_from_str(s: &str) -> Result<OwnedFd> {
    let fd: RawFd = s.parse().map_err(|_| {
        ErrorImpl::with_errno(libc::EINVAL, format!("Unable to parse FD number {s}"))
    })?;
    if !is_socket(fd) {
        if fd >= 0 {
            // The descriptor was handed to us; closing a number that is
            // not open is harmless (EBADF).
            let _ = unistd::close(fd);
        }
        return Err(ErrorImpl::new(format!(
            "File descriptor '{s}' is not a socket"
        )));
    }
    // SAFETY: the caller hands the socket over to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: BorrowedFd<'_>) -> std::result::Result<(), c_int> {
    let flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).map_err(|e| e as c_int)?);
    fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC)).map_err(|e| e as c_int)?;
    Ok(())
}

fn set_blocking(fd: RawFd, block: bool) -> Result<()> {
    let fail = |e| {
        ErrorImpl::with_errno(
            e,
            format!(
                "Can't set file descriptor {fd} {}",
                if block { "blocking" } else { "non-blocking" }
            ),
        )
    };
    if fd < 0 {
        return Err(fail(libc::EBADF));
    }
    // SAFETY: the borrow ends with the fcntl calls, which only hand the
    // number to the kernel: an fd that is not open just fails (EBADF).
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags =
        OFlag::from_bits_retain(fcntl(bfd, FcntlArg::F_GETFL).map_err(|e| fail(e as c_int))?);
    let new = if block {
        flags - OFlag::O_NONBLOCK
    } else {
        flags | OFlag::O_NONBLOCK
    };
    if new != flags {
        fcntl(bfd, FcntlArg::F_SETFL(new)).map_err(|e| fail(e as c_int))?;
    }
    Ok(())
}

/// # Safety
/// `errp` is a valid `Error **` or NULL.
pub unsafe fn qemu_set_blocking(fd: c_int, block: bool, errp: *mut *mut sys::Error) -> bool {
    // SAFETY: caller's contract.
    unsafe { ok_or_set(set_blocking(fd, block), errp) }.is_some()
}

/// QEMU's `socket_init()`: nothing to set up outside Windows.
#[no_mangle]
pub extern "C" fn socket_init() -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_init_succeeds() {
        assert_eq!(socket_init(), 0);
    }
}
