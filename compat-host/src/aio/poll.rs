//! The poll loop: fd handlers in the epoll set, the eventfd that
//! `aio_notify` writes, and one `aio_poll` pass (BHs, ready fds, timers,
//! BHs again).

use std::{
    ffi::{c_int, c_void},
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Condvar, Mutex,
    },
};

use nix::sys::{
    epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollOp},
    eventfd::{EfdFlags, EventFd},
};

use super::{
    inner_arc, inner_ref, report, thread_id, timer::monotonic_ns, Callback, Inner, Opaque,
};
use crate::sys;

/// epoll token of the eventfd (handler fds use their fd number).
const NOTIFY_TOKEN: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`; more stay pending
/// (level-triggered) for the next pass.
const MAX_EVENTS: usize = 64;

#[derive(Clone, Copy)]
pub(super) struct Handler {
    io_read: sys::IOHandler,
    io_write: sys::IOHandler,
    opaque: Opaque,
}

/// `epoll_ctl` on an fd that C names by number.
fn epoll_ctl(
    epoll: &Epoll,
    op: EpollOp,
    fd: RawFd,
    events: EpollFlags,
    token: u64,
) -> io::Result<()> {
    // SAFETY: the borrow ends with this call, which only hands the number
    // to the kernel: if C already closed the fd, epoll_ctl fails (EBADF,
    // or ENOENT/EEXIST for a reused number, handled by the caller).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut ev = EpollEvent::new(events, token);
    match op {
        EpollOp::EpollCtlAdd => epoll.add(fd, ev),
        EpollOp::EpollCtlDel => epoll.delete(fd),
        _ => epoll.modify(fd, &mut ev),
    }
    .map_err(io::Error::from)
}

impl Inner {
    pub(super) fn new() -> io::Result<Inner> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let eventfd =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&eventfd, EpollEvent::new(EpollFlags::EPOLLIN, NOTIFY_TOKEN))?;
        Ok(Inner {
            epoll,
            eventfd,
            notified: AtomicBool::new(false),
            home: AtomicU64::new(thread_id()),
            state: Mutex::default(),
            owner: Mutex::default(),
            owner_cv: Condvar::new(),
        })
    }

    pub(super) fn notify(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            // Cannot fail short of 2^64 - 1 pending wake-ups.
            let _ = self.eventfd.write(1);
        }
    }

    /// Consumes a notification.  The eventfd is drained *before* the flag
    /// is cleared: a notifier racing with us either sees the flag still set
    /// (and its work, queued before it notified, is picked up by the BH and
    /// timer passes that follow) or writes again.
    fn accept_notify(&self) {
        // Non-blocking: EAGAIN if a racing pass consumed it first.
        let _ = self.eventfd.read();
        self.notified.store(false, Ordering::SeqCst);
    }

    fn set_handler(&self, fd: RawFd, handler: Option<Handler>) {
        let epoll = &self.epoll;
        let mut st = self.lock();
        let failure = match handler {
            None => {
                if st.handlers.remove(&fd).is_some() {
                    // Fails only if the fd was already closed, which also
                    // removed it from the epoll set.
                    let _ = epoll_ctl(epoll, EpollOp::EpollCtlDel, fd, EpollFlags::empty(), 0);
                }
                None
            }
            Some(h) => {
                let mut events = EpollFlags::empty();
                if h.io_read.is_some() {
                    events |= EpollFlags::EPOLLIN;
                }
                if h.io_write.is_some() {
                    events |= EpollFlags::EPOLLOUT;
                }
                let token = fd as u64;
                let (first, second) = if st.handlers.contains_key(&fd) {
                    (EpollOp::EpollCtlMod, EpollOp::EpollCtlAdd)
                } else {
                    (EpollOp::EpollCtlAdd, EpollOp::EpollCtlMod)
                };
                // The table and the epoll set disagree when the fd was
                // closed and its number reused without removing the
                // handler: retry with the other operation.
                let r = epoll_ctl(epoll, first, fd, events, token).or_else(|e| {
                    match e.raw_os_error() {
                        Some(libc::ENOENT) | Some(libc::EEXIST) => {
                            epoll_ctl(epoll, second, fd, events, token)
                        }
                        _ => Err(e),
                    }
                });
                match r {
                    Ok(()) => {
                        st.handlers.insert(fd, h);
                        None
                    }
                    Err(e) => {
                        if st.handlers.remove(&fd).is_some() {
                            let _ =
                                epoll_ctl(epoll, EpollOp::EpollCtlDel, fd, EpollFlags::empty(), 0);
                        }
                        Some(e)
                    }
                }
            }
        };
        drop(st);
        if let Some(e) = failure {
            report(&format!("aio_set_fd_handler: cannot watch fd {fd}: {e}"));
        }
        self.notify();
    }

    /// The handler of `fd` as registered right now.
    fn current(&self, fd: RawFd, pick: fn(&Handler) -> sys::IOHandler) -> Option<Callback> {
        let st = self.lock();
        let h = st.handlers.get(&fd)?;
        let cb = pick(h).map(|f| Callback {
            func: Some(f),
            opaque: h.opaque,
        });
        drop(st);
        cb
    }

    fn dispatch_fd(&self, fd: RawFd, events: EpollFlags) -> bool {
        let mut ran = false;
        let rd = EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
        let wr = EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR;
        if events.intersects(rd) {
            if let Some(cb) = self.current(fd, |h| h.io_read) {
                cb.call();
                ran = true;
            }
        }
        // Looked up again: the read handler may have removed or replaced
        // the registration.
        if events.intersects(wr) {
            if let Some(cb) = self.current(fd, |h| h.io_write) {
                cb.call();
                ran = true;
            }
        }
        ran
    }

    /// One `aio_poll` pass.
    pub(super) fn poll(&self, blocking: bool) -> bool {
        let _entered = self.enter();
        let mut progress = self.run_bhs();
        let timeout = if !blocking || progress {
            0
        } else {
            self.lock().timeout_ms(monotonic_ns)
        };
        // Not initialized: epoll_wait fills the first n (zeroing all 64
        // would cost more than the rest of a wake-up's bookkeeping).  Not
        // nix's Epoll::wait, which needs an initialized [EpollEvent] buffer.
        let mut events = [const { MaybeUninit::<libc::epoll_event>::uninit() }; MAX_EVENTS];
        // SAFETY: `events` has room for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.0.as_raw_fd(),
                events.as_mut_ptr().cast(),
                MAX_EVENTS as c_int,
                timeout,
            )
        };
        // n < 0 is EINTR (the fds are ours): nothing ready this time.
        for ev in &events[..n.max(0) as usize] {
            // SAFETY: epoll_wait wrote the first n entries.
            let ev = unsafe { ev.assume_init_ref() };
            let (flags, token) = (EpollFlags::from_bits_retain(ev.events as c_int), ev.u64);
            if token == NOTIFY_TOKEN {
                self.accept_notify();
            } else {
                progress |= self.dispatch_fd(token as RawFd, flags);
            }
        }
        progress |= self.run_timers();
        progress |= self.run_bhs();
        progress
    }

    /// Whether a BH or timer is ready to run.
    pub(super) fn ready(&self) -> bool {
        self.lock().timeout_ms(monotonic_ns) == 0
    }
}

/// # Safety
/// `ctx` is a live context; the caller is its home thread (another
/// thread running it is waited for).
#[no_mangle]
pub unsafe extern "C" fn aio_poll(ctx: *mut sys::AioContext, blocking: bool) -> bool {
    // SAFETY: per the contract; the Arc keeps the state alive even if a
    // callback drops the last reference to the context.
    let inner = unsafe { inner_arc(ctx) };
    inner.poll(blocking)
}

/// # Safety
/// `ctx` is a live context; the handlers may be called with `opaque` in
/// its thread until removal returns (see the module docs).
#[no_mangle]
pub unsafe extern "C" fn aio_set_fd_handler(
    ctx: *mut sys::AioContext,
    fd: c_int,
    io_read: sys::IOHandler,
    io_write: sys::IOHandler,
    _io_poll: sys::AioPollFn,
    _io_poll_ready: sys::IOHandler,
    opaque: *mut c_void,
) {
    if ctx.is_null() || fd < 0 {
        return;
    }
    let handler = (io_read.is_some() || io_write.is_some()).then_some(Handler {
        io_read,
        io_write,
        opaque: Opaque(opaque),
    });
    // SAFETY: per the contract.
    unsafe { inner_ref(ctx) }.set_handler(fd, handler);
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, ptr, sync::atomic::Ordering::SeqCst, thread, time::Duration};

    use super::*;
    use crate::aio::{testing::*, *};

    unsafe extern "C" fn read_and_count(o: *mut c_void) {
        // SAFETY: the tests pass a Probe that outlives the registration.
        let p = unsafe { probe(o) };
        drain(p.fd.load(SeqCst) as RawFd);
        p.calls.fetch_add(1, SeqCst);
    }

    #[test]
    fn aio_fd_handler_fires_and_is_removed() {
        let ctx = new_ctx();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives the registration.
        unsafe {
            let (a, b) = watched_pair(ctx, read_and_count, &p);
            assert!(!aio_poll(ctx, false));
            send_byte(&b);
            assert!(aio_poll(ctx, true));
            assert_eq!(p.calls.load(SeqCst), 1);
            assert!(!aio_poll(ctx, false));
            unwatch(ctx, a.as_raw_fd());
            send_byte(&b);
            assert!(!aio_poll(ctx, false));
            assert_eq!(p.calls.load(SeqCst), 1);
            aio_context_unref(ctx);
        }
    }

    #[test]
    fn aio_write_handler_and_replacement() {
        let ctx = new_ctx();
        let (a, _b) = socketpair();
        let (p1, p2) = (Probe::default(), Probe::default());
        // SAFETY: live ctx; the probes outlive the registrations.
        unsafe {
            watch(ctx, a.as_raw_fd(), None, Some(count), &p1);
            assert!(aio_poll(ctx, false));
            watch(ctx, a.as_raw_fd(), None, Some(count), &p2);
            assert!(aio_poll(ctx, false));
            unwatch(ctx, a.as_raw_fd());
            assert!(!aio_poll(ctx, false));
            aio_context_unref(ctx);
        }
        assert_eq!((p1.calls.load(SeqCst), p2.calls.load(SeqCst)), (1, 1));
    }

    #[test]
    fn aio_regular_file_is_reported_not_fatal() {
        let ctx = new_ctx();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives the (refused) registration.
        unsafe {
            watch(ctx, f.as_raw_fd(), Some(count), None, &p);
            assert!(!aio_poll(ctx, false));
            aio_context_unref(ctx);
        }
        assert_eq!(p.calls.load(SeqCst), 0);
    }

    #[test]
    fn aio_removal_from_another_thread_while_iothread_runs() {
        let it = PollThread::spawn().unwrap();
        let ctx = it.ctx();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives the registration and the join.
        let (a, b) = unsafe { watched_pair(ctx, read_and_count, &p) };
        for i in 1..=3 {
            send_byte(&b);
            wait_for(|| p.calls.load(SeqCst) == i);
        }
        // SAFETY: as above.
        unsafe {
            unwatch(ctx, a.as_raw_fd());
        }
        send_byte(&b);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(p.calls.load(SeqCst), 3);
        it.join();
    }

    unsafe extern "C" fn nested_handler(o: *mut c_void) {
        // SAFETY: the test's Probe outlives the registration.
        let p = unsafe { probe(o) };
        drain(p.fd.load(SeqCst) as RawFd);
        p.calls.fetch_add(1, SeqCst);
        let ctx = p.ctx.load(SeqCst) as *mut sys::AioContext;
        // SAFETY: the ctx is live while the test polls it.  Like
        // AIO_WAIT_WHILE: a nested blocking poll until the BH ran.
        unsafe {
            aio_bh_schedule_oneshot_full(ctx, Some(observe_bh), o, ptr::null());
            poll_until(ctx, || p.observed.load(SeqCst) != 0);
        }
        p.finished.store(true, SeqCst);
    }

    #[test]
    fn aio_nested_poll_from_handler() {
        let ctx = new_ctx();
        let p = Probe::default();
        p.ctx.store(ctx as usize, SeqCst);
        // SAFETY: live ctx; `p` outlives the registration.
        unsafe {
            let (a, b) = watched_pair(ctx, nested_handler, &p);
            send_byte(&b);
            assert!(aio_poll(ctx, true));
            assert!(p.finished.load(SeqCst));
            assert_eq!(p.calls.load(SeqCst), 1);
            assert!(in_aio_context_home_thread(ctx));
            unwatch(ctx, a.as_raw_fd());
            aio_context_unref(ctx);
        }
    }
}
