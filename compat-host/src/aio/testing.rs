//! Test helpers shared by the `AioContext` tests.

use std::{
    ffi::{c_int, c_void},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    ptr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use super::{
    aio_context_new, aio_poll, aio_set_fd_handler, aio_timer_new, qemu_clock_get_ms, timer_free,
    timer_mod,
};
use crate::sys;

pub(super) fn new_ctx() -> *mut sys::AioContext {
    // SAFETY: NULL errp is allowed.
    let ctx = unsafe { aio_context_new(ptr::null_mut()) };
    assert!(!ctx.is_null());
    ctx
}

pub(super) fn socketpair() -> (OwnedFd, OwnedFd) {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

pub(super) fn send_byte(fd: &OwnedFd) {
    assert_eq!(nix::unistd::write(fd, b"x"), Ok(1));
}

/// Sets `fd`'s handlers, with `p` as their opaque.
///
/// # Safety
/// `ctx` is live; `p` outlives the registration.
pub(super) unsafe fn watch(
    ctx: *mut sys::AioContext,
    fd: RawFd,
    read: sys::IOHandler,
    write: sys::IOHandler,
    p: &Probe,
) {
    // SAFETY: per the contract.
    unsafe {
        aio_set_fd_handler(ctx, fd, read, write, None, None, opaque(p));
    }
}

/// Removes `fd`'s handlers.
///
/// # Safety
/// `ctx` is live.
pub(super) unsafe fn unwatch(ctx: *mut sys::AioContext, fd: RawFd) {
    // SAFETY: per the contract.
    unsafe {
        aio_set_fd_handler(ctx, fd, None, None, None, None, ptr::null_mut());
    }
}

/// A socketpair whose first end (stored in `p.fd`) `ctx` watches with
/// the read handler `read`; a byte sent on the second end wakes it.
///
/// # Safety
/// As [`watch`].
pub(super) unsafe fn watched_pair(
    ctx: *mut sys::AioContext,
    read: unsafe extern "C" fn(*mut c_void),
    p: &Probe,
) -> (OwnedFd, OwnedFd) {
    let (a, b) = socketpair();
    p.fd.store(a.as_raw_fd() as usize, SeqCst);
    // SAFETY: per the contract.
    unsafe {
        watch(ctx, a.as_raw_fd(), Some(read), None, p);
    }
    (a, b)
}

pub(super) fn drain(fd: RawFd) -> isize {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid buffer; the fd is non-blocking.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Polls until `cond` holds, failing after 5 s.
pub(super) fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out");
        thread::sleep(Duration::from_millis(1));
    }
}

unsafe extern "C" fn expire(flag: *mut c_void) {
    // SAFETY: poll_until's AtomicBool outlives the timer.
    unsafe {
        (*flag.cast::<AtomicBool>()).store(true, SeqCst);
    }
}

/// Runs blocking `aio_poll(ctx)` until `cond` holds, failing after 5 s: a
/// timer then wakes the poll, so a context that never wakes up fails the
/// test instead of hanging it.
///
/// # Safety
/// `ctx` is live and this thread may poll it.
pub(super) unsafe fn poll_until(ctx: *mut sys::AioContext, cond: impl Fn() -> bool) {
    let expired = AtomicBool::new(false);
    // SAFETY: `expired` outlives the timer, freed below.
    let watchdog = unsafe {
        aio_timer_new(
            ctx,
            sys::QEMUClockType_QEMU_CLOCK_REALTIME,
            sys::SCALE_MS as c_int,
            Some(expire),
            (&expired as *const AtomicBool).cast_mut().cast(),
        )
    };
    // SAFETY: a fresh timer of a live context.
    unsafe {
        timer_mod(
            watchdog,
            qemu_clock_get_ms(sys::QEMUClockType_QEMU_CLOCK_REALTIME) + 5000,
        );
    }
    while !cond() && !expired.load(SeqCst) {
        // SAFETY: caller's contract.
        unsafe {
            aio_poll(ctx, true);
        }
    }
    // SAFETY: our timer.
    unsafe {
        timer_free(watchdog);
    }
    assert!(cond(), "timed out");
}

/// Shared by a test and its C callbacks through `opaque`.
#[derive(Default)]
pub(super) struct Probe {
    pub(super) fd: AtomicUsize,
    pub(super) calls: AtomicUsize,
    pub(super) running: AtomicBool,
    pub(super) finished: AtomicBool,
    pub(super) observed: AtomicUsize,
    pub(super) ctx: AtomicUsize,
}

pub(super) fn opaque(p: &Probe) -> *mut c_void {
    p as *const Probe as *mut c_void
}

/// # Safety
/// `o` points at a live Probe.
pub(super) unsafe fn probe<'a>(o: *mut c_void) -> &'a Probe {
    // SAFETY: per the contract.
    unsafe { &*(o as *const Probe) }
}

pub(super) unsafe extern "C" fn count(o: *mut c_void) {
    // SAFETY: as above.
    unsafe { probe(o) }.calls.fetch_add(1, SeqCst);
}

pub(super) unsafe extern "C" fn observe_bh(o: *mut c_void) {
    // SAFETY: as above.
    let p = unsafe { probe(o) };
    p.observed
        .store(1 + usize::from(p.finished.load(SeqCst)), SeqCst);
}
