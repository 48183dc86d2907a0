//! Reading and writing (io/channel.h): one recv()/send() or all of a
//! buffer, blocking mode, close and shutdown.

use std::{
    ffi::{c_int, c_void},
    os::fd::RawFd,
    ptr,
};

use nix::sys::socket::{shutdown, Shutdown};

use super::{close_socket, socket_of, Result};
use crate::{
    error::{errno, ok_or_set, ErrorImpl},
    sys,
};

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
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_READ => Shutdown::Read,
        sys::QIOChannelShutdown_QIO_CHANNEL_SHUTDOWN_WRITE => Shutdown::Write,
        _ => Shutdown::Both,
    };
    // SAFETY: caller's contract.
    let r = unsafe { socket_of(ioc) }.and_then(|s| {
        // SAFETY: s is the live channel.
        let fd = unsafe { (*s).fd };
        shutdown(fd, sockhow)
            .map_err(|e| ErrorImpl::with_errno(e as c_int, "Unable to shutdown socket"))
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
}
