//! Reading and writing (io/channel.h): one `recv()/send()` or all of a
//! buffer, blocking mode and close.

use std::{
    ffi::{c_int, c_void},
    os::fd::RawFd,
    ptr,
};

use super::{close_socket, socket_of, Result};
use crate::{
    error::{errno, ok_or_set, ErrorImpl},
    sys,
};

/// Waits until `fd` is ready for `events`, for `qio_channel_write_all` on
/// a non-blocking channel.
fn wait_fd(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd array of length 1; EINTR just returns
    // early and the caller retries the I/O.
    unsafe {
        libc::poll(&mut p, 1, -1);
    }
}

/// One `recv()/send()`: count, 0 at EOF, or `QIO_CHANNEL_ERR_BLOCK`.
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

/// Writes all of `buf`, waiting for room on a non-blocking channel.
///
/// # Safety
/// `ioc` is a live channel; `buf` readable for `len` bytes.
unsafe fn write_all(ioc: *mut sys::QIOChannel, buf: *const c_void, len: usize) -> Result<()> {
    let mut done = 0;
    while done < len {
        // SAFETY: buf + done is within the caller's buffer; a write only
        // reads it.
        let n = unsafe {
            io_once(
                ioc,
                buf.cast::<u8>().add(done).cast_mut().cast(),
                len - done,
                true,
            )?
        };
        if n == sys::QIO_CHANNEL_ERR_BLOCK as isize {
            // SAFETY: caller's contract; socket_of succeeded in io_once.
            let fd = unsafe { (*socket_of(ioc)?).fd };
            wait_fd(fd, libc::POLLOUT);
            continue;
        }
        done += n as usize;
    }
    Ok(())
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
    unsafe { ok_or_set(write_all(ioc, buf, buflen), errp) }.map_or(-1, |()| 0)
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
        if unsafe { crate::address::qemu_set_blocking(fd, enabled, &mut e) } {
            // SAFETY: as above.
            unsafe {
                (*s).blocking = enabled;
            }
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

/// `shutdown(2)` of the channel's socket (QEMU's `qio_channel_shutdown`).
///
/// # Safety
/// `ioc` is a live socket channel; `errp` follows QEMU's Error convention.
#[no_mangle]
pub unsafe extern "C" fn qio_channel_shutdown(
    ioc: *mut sys::QIOChannel,
    how: sys::QIOChannelShutdown,
    errp: *mut *mut sys::Error,
) -> c_int {
    let how = match how {
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_READ => libc::SHUT_RD,
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_WRITE => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: caller's contract.
    let r = unsafe { socket_of(ioc) }.and_then(|s| {
        // SAFETY: s is the live channel; shutdown(2) takes any fd.
        let fd = unsafe { (*s).fd };
        // SAFETY: plain system call on an int.
        match unsafe { libc::shutdown(fd, how) } {
            0 => Ok(()),
            _ => Err(ErrorImpl::with_errno(errno(), "Unable to shutdown socket")),
        }
    });
    // SAFETY: caller's contract.
    unsafe { ok_or_set(r, errp) }.map_or(-1, |()| 0)
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::{
        address,
        channel::{testing::*, *},
    };

    /// What disconnect relies on for a listening socket left blocking: a
    /// shutdown wakes an accept blocked on it, and keeps the fd.
    #[test]
    fn shutdown_wakes_a_blocked_accept() {
        for addr in ["127.0.0.1:0", "unix:"] {
            let path = std::env::temp_dir().join(format!("qio-shut-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let (l, _) = if addr == "unix:" {
                listener_on(&format!("unix:{}", path.display()))
            } else {
                listener_on(addr)
            };
            // SAFETY: l is a live channel until the unref below.
            assert!(unsafe { (*l).blocking });
            let lp = l as usize;
            let t = std::thread::spawn(move || {
                let mut err = ptr::null_mut();
                // SAFETY: l stays live until after the join below.
                let c = unsafe {
                    qio_channel_socket_accept(lp as *mut sys::QIOChannelSocket, &mut err)
                };
                (c.is_null(), !err.is_null())
            });
            // Give the thread time to block (the result does not depend on
            // it: an accept after the shutdown fails at once too).
            std::thread::sleep(std::time::Duration::from_millis(50));
            // SAFETY: l is live; errp is a local Error *.
            unsafe {
                let mut err = ptr::null_mut();
                let rc = qio_channel_shutdown(
                    l.cast(),
                    sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_BOTH,
                    &mut err,
                );
                assert_eq!(check(rc, &mut err), 0, "{addr}");
                assert_eq!(t.join().unwrap(), (true, true), "{addr}");
                assert!((*l).fd >= 0, "{addr}: shutdown keeps the fd");
                assert_eq!(check(qio_channel_close(l.cast(), &mut err), &mut err), 0);
                sys::object_unref(l.cast());
            }
            let _ = std::fs::remove_file(&path);
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
            let mut got = 0;
            while got < buf.len() {
                let n = qio_channel_read(
                    s.cast(),
                    buf[got..].as_mut_ptr().cast(),
                    buf.len() - got,
                    &mut err,
                );
                assert!(check(n, &mut err) > 0);
                got += n as usize;
            }
            assert_eq!(&buf, msg);

            // Non-blocking with nothing to read.
            assert!(qio_channel_set_blocking(s.cast(), false, &mut err));
            assert!(!(*s).blocking);
            let n = qio_channel_read(s.cast(), buf.as_mut_ptr().cast(), buf.len(), &mut err);
            assert_eq!(n, sys::QIO_CHANNEL_ERR_BLOCK as isize);
            assert!(err.is_null());

            // EOF reads 0 bytes.
            assert!(qio_channel_set_blocking(s.cast(), true, &mut err));
            assert_eq!(qio_channel_close(c.cast(), &mut err), 0);
            assert_eq!(
                qio_channel_read(s.cast(), buf.as_mut_ptr().cast(), buf.len(), &mut err),
                0
            );

            // Close twice; I/O afterwards fails.
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
}
