//! QEMU's AioContext event loop (`qemu/aio.h`, `qemu/timer.h`): fd
//! handlers, bottom halves (BHs) and timers, run by `aio_poll()` in the
//! context's home thread or, through the context's GSource, by a GLib main
//! loop.
//!
//! As in QEMU, an `AioContext` *is* a `GSource`: the C pointer points at a
//! `GSource` allocated by `g_source_new`, followed by a pointer to the Rust
//! state ([`Inner`]).  `aio_context_ref`/`unref` are `g_source_ref`/`unref`
//! and the GSource's `finalize` frees the Rust state, closing its fds.
//!
//! The state is an epoll fd holding every handler's fd (level-triggered)
//! plus an eventfd that `aio_notify` writes, the handler table, the queue
//! of scheduled BHs and the armed timers, all under one mutex that is never
//! held while user code runs, so every callback may call any function here,
//! including a nested `aio_poll` of the same context (`AIO_WAIT_WHILE`).
//!
//! # The bottom-half-after-removal guarantee
//!
//! The listener releases what an fd handler uses by removing the handler
//! and then scheduling a one-shot BH in the handler's context (DESIGN 3.1).
//! That is safe because of three properties:
//!
//! 1. A dispatch looks the handler up (under the lock) immediately before
//!    calling it, so once `aio_set_fd_handler(.., NULL, NULL, ..)` returns,
//!    no dispatch *starts* calling the removed handler, in any thread.  A
//!    replaced handler likewise gets the new callback and opaque.
//! 2. BHs run only inside `aio_poll`/the GSource dispatch of their context,
//!    and only one thread at a time runs a given context (a second thread
//!    waits until the first leaves; see [`Inner::enter`]).
//! 3. Therefore a handler call that was already in progress when the
//!    handler was removed is on the stack of the one thread running the
//!    context, and a BH scheduled after the removal can only run once that
//!    call has returned.  The one exception is a handler that itself runs
//!    a nested `aio_poll` of its context: the nested poll runs BHs, as in
//!    QEMU.
//!
//! # Differences from QEMU
//!
//! - No userspace polling: `io_poll`/`io_poll_ready` are accepted and
//!   ignored.
//! - A one-shot BH still pending when the context is finalized runs then,
//!   in the thread dropping the last reference (QEMU aborts); this frees
//!   whatever the BH owns instead of leaking it.  Reusable BHs are dropped
//!   unrun; scheduling one after its context is gone does nothing.
//! - fds that epoll cannot watch (regular files) are reported with
//!   `error_report` and not registered, instead of spinning forever.
//! - All clocks but `QEMU_CLOCK_HOST` are the monotonic clock; a HOST
//!   timer's deadline is converted to the monotonic clock when armed, so
//!   it does not follow later wall-clock jumps.
//! - The home thread (for `in_aio_context_home_thread`) is the thread that
//!   created the context or last ran it with `aio_poll`/GLib.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap, VecDeque},
    ffi::{c_char, c_int, c_void, CString},
    hash::{BuildHasherDefault, Hasher},
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak,
    },
};

use crate::sys;

/// What C's `AioContext *` points at: the GSource GLib allocated, then our
/// state.  `g_source_new` zero-fills the bytes after the `GSource`.
#[repr(C)]
struct AioContext {
    source: sys::GSource,
    /// From `Arc::into_raw`; released by [`ctx_finalize`].
    inner: *const Inner,
    /// `g_source_add_unix_fd`'s tag for the epoll fd.
    tag: sys::gpointer,
}

/// epoll token of the eventfd (handler fds use their fd number).
const NOTIFY_TOKEN: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`; more stay pending
/// (level-triggered) for the next pass.
const MAX_EVENTS: usize = 64;

/// A C `void *` handed back to C callbacks.  The C caller that registered
/// it promises that the callback may use it in the context's thread; Rust
/// never dereferences it, so moving it between threads is up to C.
#[derive(Clone, Copy)]
struct Opaque(*mut c_void);
// SAFETY: see the type's doc: the pointer is only ever passed back to C.
unsafe impl Send for Opaque {}
// SAFETY: as above; Rust never reads through it.
unsafe impl Sync for Opaque {}

/// A C callback taking its opaque pointer (BHs, fd handlers, timers all
/// share this shape).
#[derive(Clone, Copy)]
struct Callback {
    func: Option<unsafe extern "C" fn(*mut c_void)>,
    opaque: Opaque,
}

impl Callback {
    /// Calls the C function (nothing for NULL).  No lock may be held.
    fn call(self) {
        if let Some(f) = self.func {
            // SAFETY: the C caller registered `f` with this opaque and
            // promised it is valid until the registration is removed
            // (handlers), the BH/timer is freed, or the one-shot BH ran.
            unsafe { f(self.opaque.0) }
        }
    }
}

#[derive(Clone, Copy)]
struct Handler {
    io_read: sys::IOHandler,
    io_write: sys::IOHandler,
    opaque: Opaque,
}

/// A reusable BH (`QEMUBH *` is `Arc::into_raw` of this).
pub struct Bh {
    ctx: Weak<Inner>,
    cb: Callback,
    /// Whether it is in its context's queue; changed only under the
    /// context's state lock.
    scheduled: AtomicBool,
}

/// A timer (`QEMUTimer *` is `Arc::into_raw` of this).
pub struct Timer {
    ctx: Weak<Inner>,
    clock: sys::QEMUClockType,
    scale: i64,
    cb: Callback,
}

enum Job {
    Oneshot(Callback),
    Reusable(Arc<Bh>),
}

/// Hashes an fd as itself: every dispatch looks its handler up, and the
/// default SipHash costs more than the rest of that lookup.
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_i32(&mut self, fd: i32) {
        // Spread small integers over the whole word (Fibonacci hashing):
        // hashbrown takes its control bits from the top.
        self.0 = (fd as u32 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Default)]
struct State {
    handlers: HashMap<RawFd, Handler, BuildHasherDefault<FdHasher>>,
    /// Scheduled BHs in FIFO order, each with its sequence number so that
    /// a pass runs only what was scheduled before it started.
    bhs: VecDeque<(u64, Job)>,
    bh_seq: u64,
    /// Armed timers by (monotonic deadline, arming sequence number).
    timers: BTreeMap<(i64, u64), Arc<Timer>>,
    /// Key in `timers` of each armed timer, by `Arc::as_ptr`.
    timer_keys: HashMap<usize, (i64, u64)>,
    timer_seq: u64,
}

impl State {
    /// The `epoll_wait`/GLib timeout in ms: 0 if a BH or timer is ready.
    /// The clock is only read if a timer is armed.
    fn timeout_ms(&self, now: impl FnOnce() -> i64) -> c_int {
        if !self.bhs.is_empty() {
            return 0;
        }
        let Some(&(deadline, _)) = self.timers.keys().next() else {
            return -1;
        };
        let now = now();
        match deadline {
            deadline if deadline <= now => 0,
            deadline => {
                let ms = (deadline as i128 - now as i128 + 999_999) / 1_000_000;
                ms.min(c_int::MAX as i128) as c_int
            }
        }
    }

    fn disarm(&mut self, t: &Arc<Timer>) {
        if let Some(key) = self.timer_keys.remove(&(Arc::as_ptr(t) as usize)) {
            self.timers.remove(&key);
        }
    }

    fn unschedule(&mut self, bh: &Arc<Bh>) {
        if bh.scheduled.swap(false, Ordering::SeqCst) {
            self.bhs
                .retain(|(_, j)| !matches!(j, Job::Reusable(b) if Arc::ptr_eq(b, bh)));
        }
    }
}

/// Which thread runs a context right now, and how deeply (nested polls).
#[derive(Default)]
struct Owner {
    thread: u64,
    depth: u32,
    /// Threads waiting in `enter` for the context: only then does leaving
    /// it wake them (a condvar notify is a system call even with no one
    /// to wake, and it would be one per aio_poll).
    waiters: u32,
}

/// The Rust state of one AioContext.
pub struct Inner {
    epfd: OwnedFd,
    eventfd: OwnedFd,
    /// Set while the eventfd holds an unconsumed notification, so that a
    /// burst of `aio_notify` calls costs one write.
    notified: AtomicBool,
    /// [`thread_id`] of the home thread.
    home: AtomicU64,
    state: Mutex<State>,
    owner: Mutex<Owner>,
    owner_cv: Condvar,
}

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
    /// The IOThread's context in an IOThread, else NULL.
    static CURRENT: Cell<*mut sys::AioContext> = const { Cell::new(ptr::null_mut()) };
}

/// A small non-zero id of the calling thread.
pub(crate) fn thread_id() -> u64 {
    THREAD_ID.with(|id| *id)
}

/// Makes `ctx` the calling thread's current context (IOThreads).
pub(crate) fn set_current_context(ctx: *mut sys::AioContext) {
    CURRENT.with(|c| c.set(ctx));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under our locks, so poisoning only follows a bug
    // in this file; the data is still consistent enough to go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; these clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    // time_t and c_long are i64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    sec * 1_000_000_000 + nsec
}

fn monotonic_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn epoll_ctl(epfd: RawFd, op: c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event; bad fds just fail.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn report(msg: &str) {
    let msg = CString::new(msg.replace('\0', "")).unwrap_or_default();
    // SAFETY: "%s" with one valid NUL-terminated string.
    unsafe { sys::error_report(c"%s".as_ptr(), msg.as_ptr()) };
}

/// Leaves the context's ownership when dropped.
struct Entered<'a>(&'a Inner);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut o = lock(&self.0.owner);
        o.depth -= 1;
        if o.depth == 0 {
            o.thread = 0;
            if o.waiters > 0 {
                self.0.owner_cv.notify_all();
            }
        }
    }
}

impl Inner {
    fn new() -> io::Result<Inner> {
        // SAFETY: plain syscall.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        epoll_ctl(
            epfd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            eventfd.as_raw_fd(),
            libc::EPOLLIN as u32,
            NOTIFY_TOKEN,
        )?;
        Ok(Inner {
            epfd,
            eventfd,
            notified: AtomicBool::new(false),
            home: AtomicU64::new(thread_id()),
            state: Mutex::default(),
            owner: Mutex::default(),
            owner_cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Makes the calling thread the one running this context until the
    /// guard drops (re-entrant).  Another thread running it is woken and
    /// waited for: handlers and BHs of one context never run concurrently,
    /// which the BH-after-removal guarantee needs.
    fn enter(&self) -> Entered<'_> {
        let me = thread_id();
        let mut o = lock(&self.owner);
        while o.thread != 0 && o.thread != me {
            self.notify();
            o.waiters += 1;
            o = self
                .owner_cv
                .wait(o)
                .unwrap_or_else(PoisonError::into_inner);
            o.waiters -= 1;
        }
        o.thread = me;
        o.depth += 1;
        drop(o);
        self.home.store(me, Ordering::Relaxed);
        Entered(self)
    }

    fn notify(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.  It
            // cannot fail short of 2^64 - 1 pending wake-ups.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    size_of::<u64>(),
                )
            };
        }
    }

    /// Consumes a notification.  The eventfd is drained *before* the flag
    /// is cleared: a notifier racing with us either sees the flag still set
    /// (and its work, queued before it notified, is picked up by the BH and
    /// timer passes that follow) or writes again.
    fn accept_notify(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; non-blocking.
        unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&mut buf as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
        self.notified.store(false, Ordering::SeqCst);
    }

    fn set_handler(&self, fd: RawFd, handler: Option<Handler>) {
        let epfd = self.epfd.as_raw_fd();
        let mut st = self.lock();
        let failure = match handler {
            None => {
                if st.handlers.remove(&fd).is_some() {
                    // Fails only if the fd was already closed, which also
                    // removed it from the epoll set.
                    let _ = epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
                }
                None
            }
            Some(h) => {
                let mut events = 0;
                if h.io_read.is_some() {
                    events |= libc::EPOLLIN as u32;
                }
                if h.io_write.is_some() {
                    events |= libc::EPOLLOUT as u32;
                }
                let token = fd as u64;
                let (first, second) = if st.handlers.contains_key(&fd) {
                    (libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_ADD)
                } else {
                    (libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD)
                };
                // The table and the epoll set disagree when the fd was
                // closed and its number reused without removing the
                // handler: retry with the other operation.
                let r =
                    epoll_ctl(epfd, first, fd, events, token).or_else(|e| match e.raw_os_error() {
                        Some(libc::ENOENT) | Some(libc::EEXIST) => {
                            epoll_ctl(epfd, second, fd, events, token)
                        }
                        _ => Err(e),
                    });
                match r {
                    Ok(()) => {
                        st.handlers.insert(fd, h);
                        None
                    }
                    Err(e) => {
                        if st.handlers.remove(&fd).is_some() {
                            let _ = epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, 0);
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

    fn schedule(&self, job: Job) {
        let mut st = self.lock();
        let seq = st.bh_seq;
        st.bh_seq += 1;
        st.bhs.push_back((seq, job));
        drop(st);
        self.notify();
    }

    /// Runs the BHs scheduled before this call, in order.  BHs they
    /// schedule wait for the next pass, so a BH rescheduling itself cannot
    /// starve the loop.  Popping one at a time (instead of taking the
    /// batch) lets a nested `aio_poll` inside a BH run the rest of the
    /// batch, which a nested `AIO_WAIT_WHILE` may be waiting for.
    fn run_bhs(&self) -> bool {
        let mut st = self.lock();
        let limit = st.bh_seq;
        let mut ran = false;
        loop {
            match st.bhs.front() {
                Some(&(seq, _)) if seq < limit => {}
                _ => break,
            }
            let (cb, keep) = match st.bhs.pop_front().map(|(_, j)| j) {
                Some(Job::Oneshot(cb)) => (cb, None),
                Some(Job::Reusable(bh)) => {
                    // Cleared before the call so the BH can reschedule
                    // itself; cancel/delete remove it from the queue.
                    bh.scheduled.store(false, Ordering::SeqCst);
                    (bh.cb, Some(bh))
                }
                None => break,
            };
            drop(st);
            // `keep` keeps a reusable BH alive if it deletes itself.
            cb.call();
            drop(keep);
            ran = true;
            st = self.lock();
        }
        ran
    }

    /// Runs expired timers in deadline order; timers re-armed during the
    /// pass wait for the next one.
    fn run_timers(&self) -> bool {
        let limit = {
            let st = self.lock();
            if st.timers.is_empty() {
                return false;
            }
            st.timer_seq
        };
        let now = monotonic_ns();
        let mut ran = false;
        loop {
            let timer = {
                let mut st = self.lock();
                let key = st
                    .timers
                    .range(..=(now, u64::MAX))
                    .map(|(k, _)| *k)
                    .find(|&(_, seq)| seq < limit);
                let Some(key) = key else { break };
                let Some(t) = st.timers.remove(&key) else {
                    break;
                };
                st.timer_keys.remove(&(Arc::as_ptr(&t) as usize));
                t
            };
            timer.cb.call();
            ran = true;
        }
        ran
    }

    /// The handler of `fd` as registered right now.
    fn current(&self, fd: RawFd, pick: fn(&Handler) -> sys::IOHandler) -> Option<Callback> {
        let st = self.lock();
        let h = st.handlers.get(&fd)?;
        pick(h).map(|f| Callback {
            func: Some(f),
            opaque: h.opaque,
        })
    }

    fn dispatch_fd(&self, fd: RawFd, events: u32) -> bool {
        let mut ran = false;
        let (rd, wr) = (
            (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32,
            (libc::EPOLLOUT | libc::EPOLLERR) as u32,
        );
        if events & rd != 0 {
            if let Some(cb) = self.current(fd, |h| h.io_read) {
                cb.call();
                ran = true;
            }
        }
        // Looked up again: the read handler may have removed or replaced
        // the registration.
        if events & wr != 0 {
            if let Some(cb) = self.current(fd, |h| h.io_write) {
                cb.call();
                ran = true;
            }
        }
        ran
    }

    /// One `aio_poll` pass.
    fn poll(&self, blocking: bool) -> bool {
        let _entered = self.enter();
        let mut progress = self.run_bhs();
        let timeout = if !blocking || progress {
            0
        } else {
            self.lock().timeout_ms(monotonic_ns)
        };
        // Not initialized: epoll_wait fills the first n (zeroing all 64
        // would cost more than the rest of a wake-up's bookkeeping).
        let mut events = [const { MaybeUninit::<libc::epoll_event>::uninit() }; MAX_EVENTS];
        // SAFETY: `events` has room for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr().cast(),
                MAX_EVENTS as c_int,
                timeout,
            )
        };
        // n < 0 is EINTR (the fds are ours): nothing ready this time.
        for ev in &events[..n.max(0) as usize] {
            // SAFETY: epoll_wait wrote the first n entries.
            let ev = unsafe { ev.assume_init_ref() };
            let (flags, token) = (ev.events, ev.u64);
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

    /// At finalize: runs the one-shot BHs nobody will run otherwise.
    fn run_leftover_oneshots(&self) {
        loop {
            let job = self.lock().bhs.pop_front();
            match job {
                None => break,
                Some((_, Job::Oneshot(cb))) => cb.call(),
                Some((_, Job::Reusable(bh))) => bh.scheduled.store(false, Ordering::SeqCst),
            }
        }
    }

    /// Whether a BH or timer is ready to run.
    fn ready(&self) -> bool {
        self.lock().timeout_ms(monotonic_ns) == 0
    }
}

/// # Safety
/// `ctx` is a live AioContext made by [`aio_context_new`].
unsafe fn inner_ref<'a>(ctx: *mut sys::AioContext) -> &'a Inner {
    // SAFETY: per the contract, `inner` was set at creation and stays
    // valid until finalize, which needs the caller's reference gone.
    unsafe { &*(*(ctx as *mut AioContext)).inner }
}

/// A strong reference to the state, for callers that run user code that
/// might drop the last reference to the context.
///
/// # Safety
/// As [`inner_ref`].
unsafe fn inner_arc(ctx: *mut sys::AioContext) -> Arc<Inner> {
    // SAFETY: `inner` came from `Arc::into_raw` and is alive (see above).
    unsafe {
        let p = (*(ctx as *mut AioContext)).inner;
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

unsafe extern "C" fn ctx_prepare(source: *mut sys::GSource, timeout: *mut c_int) -> sys::gboolean {
    // SAFETY: GLib calls this with our live source and a valid out-pointer.
    let t = unsafe { inner_ref(source.cast()) }
        .lock()
        .timeout_ms(monotonic_ns);
    // SAFETY: as above.
    unsafe { *timeout = t };
    (t == 0) as sys::gboolean
}

unsafe extern "C" fn ctx_check(source: *mut sys::GSource) -> sys::gboolean {
    let ctx = source as *mut AioContext;
    // SAFETY: GLib calls this with our live source, whose tag was set at
    // creation.
    let cond = unsafe { sys::g_source_query_unix_fd(source, (*ctx).tag) };
    // SAFETY: as above.
    let inner = unsafe { inner_ref(source.cast()) };
    (cond & sys::GIOCondition_G_IO_IN != 0 || inner.ready()) as sys::gboolean
}

unsafe extern "C" fn ctx_dispatch(
    source: *mut sys::GSource,
    _callback: sys::GSourceFunc,
    _data: sys::gpointer,
) -> sys::gboolean {
    // SAFETY: GLib calls this with our live source.
    let inner = unsafe { inner_arc(source.cast()) };
    inner.poll(false);
    1 // G_SOURCE_CONTINUE
}

unsafe extern "C" fn ctx_finalize(source: *mut sys::GSource) {
    let ctx = source as *mut AioContext;
    // SAFETY: GLib finalizes once; `inner` came from Arc::into_raw.  A
    // poll still running holds its own Arc, so the state outlives it.
    let inner = unsafe { Arc::from_raw((*ctx).inner) };
    inner.run_leftover_oneshots();
}

static FUNCS: sys::GSourceFuncs = sys::GSourceFuncs {
    prepare: Some(ctx_prepare),
    check: Some(ctx_check),
    dispatch: Some(ctx_dispatch),
    finalize: Some(ctx_finalize),
    closure_callback: None,
    closure_marshal: None,
};

/// A new context with one reference, for Rust callers.
pub(crate) fn context_new() -> io::Result<*mut sys::AioContext> {
    let inner = Inner::new()?;
    let epfd = inner.epfd.as_raw_fd();
    // SAFETY: FUNCS lives forever and GLib only reads it (the pointer is
    // `*mut` for historical reasons); the size covers our struct.
    let source = unsafe {
        sys::g_source_new(
            ptr::addr_of!(FUNCS).cast_mut(),
            size_of::<AioContext>() as sys::guint,
        )
    };
    let ctx = source as *mut AioContext;
    // SAFETY: `source` is a fresh, zero-filled allocation of our size that
    // no one else sees yet.
    unsafe {
        (*ctx).inner = Arc::into_raw(Arc::new(inner));
        (*ctx).tag = sys::g_source_add_unix_fd(source, epfd, sys::GIOCondition_G_IO_IN);
        sys::g_source_set_name(source, c"aio-context".as_ptr());
    }
    Ok(ctx.cast())
}

/// # Safety
/// `errp` is NULL or a valid `Error **` (QEMU's conventions).
#[no_mangle]
pub unsafe extern "C" fn aio_context_new(errp: *mut *mut sys::Error) -> *mut sys::AioContext {
    match context_new() {
        Ok(ctx) => ctx,
        Err(e) => {
            let msg = CString::new(format!("Failed to create AioContext: {e}")).unwrap_or_default();
            // SAFETY: valid errp per the contract; "%s" with one string.
            unsafe {
                sys::error_setg_internal(
                    errp,
                    c"compat-host/src/aio.rs".as_ptr(),
                    line!() as c_int,
                    c"aio_context_new".as_ptr(),
                    c"%s".as_ptr(),
                    msg.as_ptr(),
                )
            };
            ptr::null_mut()
        }
    }
}

/// # Safety
/// `ctx` is a live context.
#[no_mangle]
pub unsafe extern "C" fn aio_context_ref(ctx: *mut sys::AioContext) {
    // SAFETY: a live context is a live GSource.
    unsafe { sys::g_source_ref(ctx.cast()) };
}

/// # Safety
/// `ctx` is a live context and the caller owns the reference it drops.
#[no_mangle]
pub unsafe extern "C" fn aio_context_unref(ctx: *mut sys::AioContext) {
    // SAFETY: as above.
    unsafe { sys::g_source_unref(ctx.cast()) };
}

/// # Safety
/// `ctx` is a live context (its owner may be any thread).
#[no_mangle]
pub unsafe extern "C" fn aio_get_g_source(ctx: *mut sys::AioContext) -> *mut sys::GSource {
    // SAFETY: as above.
    unsafe { sys::g_source_ref(ctx.cast()) }
}

/// # Safety
/// `ctx` is a live context; `cb(opaque)` may run in its thread.
#[no_mangle]
pub unsafe extern "C" fn aio_bh_schedule_oneshot_full(
    ctx: *mut sys::AioContext,
    cb: sys::QEMUBHFunc,
    opaque: *mut c_void,
    _name: *const c_char,
) {
    // SAFETY: live context per the contract.
    unsafe { inner_ref(ctx) }.schedule(Job::Oneshot(Callback {
        func: cb,
        opaque: Opaque(opaque),
    }));
}

/// # Safety
/// `ctx` is a live context that outlives the BH's last schedule.
#[no_mangle]
pub unsafe extern "C" fn aio_bh_new_full(
    ctx: *mut sys::AioContext,
    cb: sys::QEMUBHFunc,
    opaque: *mut c_void,
    _name: *const c_char,
    _reentrancy_guard: *mut sys::MemReentrancyGuard,
) -> *mut sys::QEMUBH {
    // SAFETY: live context per the contract.
    let inner = unsafe { inner_arc(ctx) };
    let bh = Arc::new(Bh {
        ctx: Arc::downgrade(&inner),
        cb: Callback {
            func: cb,
            opaque: Opaque(opaque),
        },
        scheduled: AtomicBool::new(false),
    });
    Arc::into_raw(bh) as *mut sys::QEMUBH
}

/// # Safety
/// `bh` came from [`aio_bh_new_full`] and was not deleted.
unsafe fn bh_arc(bh: *mut sys::QEMUBH) -> Arc<Bh> {
    let p = bh as *const Bh;
    // SAFETY: per the contract the C side still owns one strong count.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// # Safety
/// `bh` came from [`aio_bh_new_full`] and was not deleted.
#[no_mangle]
pub unsafe extern "C" fn qemu_bh_schedule(bh: *mut sys::QEMUBH) {
    // SAFETY: per the contract.
    let bh = unsafe { bh_arc(bh) };
    let Some(inner) = bh.ctx.upgrade() else {
        return;
    };
    let mut st = inner.lock();
    if bh.scheduled.swap(true, Ordering::SeqCst) {
        return;
    }
    let seq = st.bh_seq;
    st.bh_seq += 1;
    st.bhs.push_back((seq, Job::Reusable(bh)));
    drop(st);
    inner.notify();
}

/// # Safety
/// `bh` came from [`aio_bh_new_full`] and was not deleted.
#[no_mangle]
pub unsafe extern "C" fn qemu_bh_cancel(bh: *mut sys::QEMUBH) {
    // SAFETY: per the contract.
    let bh = unsafe { bh_arc(bh) };
    if let Some(inner) = bh.ctx.upgrade() {
        inner.lock().unschedule(&bh);
    }
}

/// Cancels and frees the BH; allowed from its own callback.
///
/// # Safety
/// `bh` came from [`aio_bh_new_full`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn qemu_bh_delete(bh: *mut sys::QEMUBH) {
    if bh.is_null() {
        return;
    }
    // SAFETY: takes back the C side's reference; a running pass holds its
    // own, so a BH deleting itself stays alive until its callback returns.
    let bh = unsafe { Arc::from_raw(bh as *const Bh) };
    if let Some(inner) = bh.ctx.upgrade() {
        inner.lock().unschedule(&bh);
    }
}

/// # Safety
/// `ctx` is a live context.
#[no_mangle]
pub unsafe extern "C" fn aio_notify(ctx: *mut sys::AioContext) {
    // SAFETY: per the contract.
    unsafe { inner_ref(ctx) }.notify();
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

/// # Safety
/// `ctx` is a live context that outlives the timer's last `timer_mod`.
#[no_mangle]
pub unsafe extern "C" fn aio_timer_new(
    ctx: *mut sys::AioContext,
    type_: sys::QEMUClockType,
    scale: c_int,
    cb: sys::QEMUTimerCB,
    opaque: *mut c_void,
) -> *mut sys::QEMUTimer {
    // SAFETY: per the contract.
    let inner = unsafe { inner_arc(ctx) };
    let t = Arc::new(Timer {
        ctx: Arc::downgrade(&inner),
        clock: type_,
        scale: scale as i64,
        cb: Callback {
            func: cb,
            opaque: Opaque(opaque),
        },
    });
    Arc::into_raw(t) as *mut sys::QEMUTimer
}

/// # Safety
/// `ts` came from [`aio_timer_new`] and was not freed.
unsafe fn timer_arc(ts: *mut sys::QEMUTimer) -> Arc<Timer> {
    let p = ts as *const Timer;
    // SAFETY: per the contract the C side still owns one strong count.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

fn clock_id(clock: sys::QEMUClockType) -> libc::clockid_t {
    if clock == sys::QEMUClockType_QEMU_CLOCK_HOST {
        libc::CLOCK_REALTIME
    } else {
        libc::CLOCK_MONOTONIC
    }
}

#[no_mangle]
pub extern "C" fn qemu_clock_get_ns(type_: sys::QEMUClockType) -> i64 {
    clock_ns(clock_id(type_))
}

#[no_mangle]
pub extern "C" fn qemu_clock_get_ms(type_: sys::QEMUClockType) -> i64 {
    qemu_clock_get_ns(type_) / 1_000_000
}

#[no_mangle]
pub extern "C" fn qemu_clock_get_us(type_: sys::QEMUClockType) -> i64 {
    qemu_clock_get_ns(type_) / 1_000
}

/// # Safety
/// `ts` came from [`aio_timer_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn timer_mod(ts: *mut sys::QEMUTimer, expire_time: i64) {
    // SAFETY: per the contract.
    let t = unsafe { timer_arc(ts) };
    let Some(inner) = t.ctx.upgrade() else {
        return;
    };
    let ns = expire_time.saturating_mul(t.scale);
    let deadline = if t.clock == sys::QEMUClockType_QEMU_CLOCK_HOST {
        monotonic_ns().saturating_add(ns.saturating_sub(clock_ns(libc::CLOCK_REALTIME)))
    } else {
        ns
    };
    let mut st = inner.lock();
    st.disarm(&t);
    let key = (deadline, st.timer_seq);
    st.timer_seq += 1;
    st.timer_keys.insert(Arc::as_ptr(&t) as usize, key);
    st.timers.insert(key, t);
    drop(st);
    inner.notify();
}

/// # Safety
/// `ts` came from [`aio_timer_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn timer_del(ts: *mut sys::QEMUTimer) {
    // SAFETY: per the contract.
    let t = unsafe { timer_arc(ts) };
    if let Some(inner) = t.ctx.upgrade() {
        inner.lock().disarm(&t);
    }
}

/// # Safety
/// `ts` came from [`aio_timer_new`] and was not freed.
#[no_mangle]
pub unsafe extern "C" fn timer_pending(ts: *mut sys::QEMUTimer) -> bool {
    // SAFETY: per the contract.
    let t = unsafe { timer_arc(ts) };
    t.ctx.upgrade().is_some_and(|inner| {
        inner
            .lock()
            .timer_keys
            .contains_key(&(Arc::as_ptr(&t) as usize))
    })
}

/// # Safety
/// `ts` is NULL or came from [`aio_timer_new`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn timer_free(ts: *mut sys::QEMUTimer) {
    if ts.is_null() {
        return;
    }
    // SAFETY: takes back the C side's reference (see the contract); a
    // running timer pass holds its own while calling the callback.
    let t = unsafe { Arc::from_raw(ts as *const Timer) };
    if let Some(inner) = t.ctx.upgrade() {
        inner.lock().disarm(&t);
    }
}

#[no_mangle]
pub extern "C" fn qemu_get_current_aio_context() -> *mut sys::AioContext {
    let ctx = CURRENT.with(Cell::get);
    if !ctx.is_null() {
        return ctx;
    }
    if crate::main_loop::in_main_thread() {
        crate::main_loop::main_context()
    } else {
        ptr::null_mut()
    }
}

/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn in_aio_context_home_thread(ctx: *mut sys::AioContext) -> bool {
    if ctx.is_null() {
        return false;
    }
    if ctx == qemu_get_current_aio_context() {
        return true;
    }
    // SAFETY: live context per the contract.
    unsafe { inner_ref(ctx) }.home.load(Ordering::Relaxed) == thread_id()
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering::SeqCst},
        thread,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::main_loop::{iothread_get_aio_context, iothread_join, iothread_new};

    fn new_ctx() -> *mut sys::AioContext {
        // SAFETY: NULL errp is allowed.
        let ctx = unsafe { aio_context_new(ptr::null_mut()) };
        assert!(!ctx.is_null());
        ctx
    }

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two fds.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh fds we own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn send_byte(fd: &OwnedFd) {
        // SAFETY: writes one byte from a valid buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }

    fn drain(fd: RawFd) -> isize {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a valid buffer; the fd is non-blocking.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    }

    /// Polls until `cond` holds, failing after 5 s.
    fn wait_for(mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Shared by a test and its C callbacks through `opaque`.
    #[derive(Default)]
    struct Probe {
        fd: AtomicUsize,
        calls: AtomicUsize,
        running: AtomicBool,
        finished: AtomicBool,
        observed: AtomicUsize,
        ctx: AtomicUsize,
    }

    fn opaque(p: &Probe) -> *mut c_void {
        p as *const Probe as *mut c_void
    }

    /// # Safety
    /// `o` points at a live Probe.
    unsafe fn probe<'a>(o: *mut c_void) -> &'a Probe {
        // SAFETY: per the contract.
        unsafe { &*(o as *const Probe) }
    }

    unsafe extern "C" fn read_and_count(o: *mut c_void) {
        // SAFETY: the tests pass a Probe that outlives the registration.
        let p = unsafe { probe(o) };
        drain(p.fd.load(SeqCst) as RawFd);
        p.calls.fetch_add(1, SeqCst);
    }

    unsafe extern "C" fn count(o: *mut c_void) {
        // SAFETY: as above.
        unsafe { probe(o) }.calls.fetch_add(1, SeqCst);
    }

    #[test]
    fn aio_fd_handler_fires_and_is_removed() {
        let ctx = new_ctx();
        let (a, b) = socketpair();
        let p = Probe::default();
        p.fd.store(a.as_raw_fd() as usize, SeqCst);
        // SAFETY: live ctx; `p` outlives the registration.
        unsafe {
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                Some(read_and_count),
                None,
                None,
                None,
                opaque(&p),
            );
            assert!(!aio_poll(ctx, false));
            send_byte(&b);
            assert!(aio_poll(ctx, true));
            assert_eq!(p.calls.load(SeqCst), 1);
            assert!(!aio_poll(ctx, false));
            aio_set_fd_handler(ctx, a.as_raw_fd(), None, None, None, None, ptr::null_mut());
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
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                None,
                Some(count),
                None,
                None,
                opaque(&p1),
            );
            assert!(aio_poll(ctx, false));
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                None,
                Some(count),
                None,
                None,
                opaque(&p2),
            );
            assert!(aio_poll(ctx, false));
            aio_set_fd_handler(ctx, a.as_raw_fd(), None, None, None, None, ptr::null_mut());
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
            aio_set_fd_handler(
                ctx,
                f.as_raw_fd(),
                Some(count),
                None,
                None,
                None,
                opaque(&p),
            );
            assert!(!aio_poll(ctx, false));
            aio_context_unref(ctx);
        }
        assert_eq!(p.calls.load(SeqCst), 0);
    }

    #[test]
    fn aio_removal_from_another_thread_while_iothread_runs() {
        let it = iothread_new();
        // SAFETY: `it` is live until joined below.
        let ctx = unsafe { iothread_get_aio_context(it) };
        let (a, b) = socketpair();
        let p = Probe::default();
        p.fd.store(a.as_raw_fd() as usize, SeqCst);
        // SAFETY: live ctx; `p` outlives the registration and the join.
        unsafe {
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                Some(read_and_count),
                None,
                None,
                None,
                opaque(&p),
            );
        }
        for i in 1..=3 {
            send_byte(&b);
            wait_for(|| p.calls.load(SeqCst) == i);
        }
        // SAFETY: as above.
        unsafe { aio_set_fd_handler(ctx, a.as_raw_fd(), None, None, None, None, ptr::null_mut()) };
        send_byte(&b);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(p.calls.load(SeqCst), 3);
        // SAFETY: joined once.
        unsafe { iothread_join(it) };
    }

    unsafe extern "C" fn slow_handler(o: *mut c_void) {
        // SAFETY: the test's Probe outlives the handler and the BH.
        let p = unsafe { probe(o) };
        p.calls.fetch_add(1, SeqCst);
        p.running.store(true, SeqCst);
        thread::sleep(Duration::from_millis(200));
        drain(p.fd.load(SeqCst) as RawFd);
        p.finished.store(true, SeqCst);
    }

    unsafe extern "C" fn observe_bh(o: *mut c_void) {
        // SAFETY: as above.
        let p = unsafe { probe(o) };
        p.observed
            .store(1 + p.finished.load(SeqCst) as usize, SeqCst);
    }

    /// DESIGN 3.1: a BH scheduled after removing a handler runs only after
    /// the in-progress call of that handler returned.
    #[test]
    fn aio_bh_after_removal_waits_for_running_handler() {
        let it = iothread_new();
        // SAFETY: `it` is live until joined below.
        let ctx = unsafe { iothread_get_aio_context(it) };
        let (a, b) = socketpair();
        let p = Probe::default();
        p.fd.store(a.as_raw_fd() as usize, SeqCst);
        // SAFETY: live ctx; `p` outlives the handler, the BH and the join.
        unsafe {
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                Some(slow_handler),
                None,
                None,
                None,
                opaque(&p),
            );
        }
        send_byte(&b);
        wait_for(|| p.running.load(SeqCst));
        // SAFETY: as above.
        unsafe {
            aio_set_fd_handler(ctx, a.as_raw_fd(), None, None, None, None, ptr::null_mut());
            aio_bh_schedule_oneshot_full(ctx, Some(observe_bh), opaque(&p), ptr::null());
        }
        wait_for(|| p.observed.load(SeqCst) != 0);
        assert_eq!(p.observed.load(SeqCst), 2, "BH ran while the handler ran");
        assert_eq!(p.calls.load(SeqCst), 1);
        // SAFETY: joined once.
        unsafe { iothread_join(it) };
    }

    /// Records its position in a shared order list.
    struct Order {
        seen: Mutex<Vec<usize>>,
    }

    struct Tagged<'a> {
        order: &'a Order,
        tag: usize,
    }

    unsafe extern "C" fn record(o: *mut c_void) {
        // SAFETY: the test's Tagged values outlive their timers.
        let t = unsafe { &*(o as *const Tagged) };
        t.order.seen.lock().unwrap().push(t.tag);
    }

    #[test]
    fn aio_timers_fire_in_order_and_del_cancels() {
        let ctx = new_ctx();
        let order = Order {
            seen: Mutex::new(Vec::new()),
        };
        let tags: Vec<Tagged> = (0..4).map(|tag| Tagged { order: &order, tag }).collect();
        let now = qemu_clock_get_ms(sys::QEMUClockType_QEMU_CLOCK_REALTIME);
        let delays = [30, 10, 20, 15];
        let timers: Vec<_> = tags
            .iter()
            .zip(delays)
            .map(|(t, d)| {
                // SAFETY: live ctx; `t` outlives the timer.
                let ts = unsafe {
                    aio_timer_new(
                        ctx,
                        sys::QEMUClockType_QEMU_CLOCK_REALTIME,
                        sys::SCALE_MS as c_int,
                        Some(record),
                        t as *const Tagged as *mut c_void,
                    )
                };
                // SAFETY: fresh timer.
                unsafe { timer_mod(ts, now + d) };
                ts
            })
            .collect();
        // SAFETY: the timers and ctx are live until freed below.
        unsafe {
            assert!(timer_pending(timers[3]));
            timer_del(timers[3]);
            assert!(!timer_pending(timers[3]));
            while order.seen.lock().unwrap().len() < 3 {
                aio_poll(ctx, true);
            }
            assert!(!timer_pending(timers[0]));
            // A HOST-clock timer in the past fires at once.
            let host = aio_timer_new(
                ctx,
                sys::QEMUClockType_QEMU_CLOCK_HOST,
                1,
                Some(record),
                &tags[3] as *const Tagged as *mut c_void,
            );
            timer_mod(
                host,
                qemu_clock_get_ns(sys::QEMUClockType_QEMU_CLOCK_HOST) - 1,
            );
            assert!(aio_poll(ctx, true));
            timer_free(host);
            for ts in timers {
                timer_free(ts);
            }
            timer_free(ptr::null_mut());
            aio_context_unref(ctx);
        }
        assert!(qemu_clock_get_us(sys::QEMUClockType_QEMU_CLOCK_REALTIME) >= (now + 30) * 1000);
        assert_eq!(*order.seen.lock().unwrap(), [1, 2, 0, 3]);
    }

    struct SendPtr(*mut sys::AioContext, *const Probe);
    // SAFETY: the context is thread-safe for scheduling, the Probe is Sync.
    unsafe impl Send for SendPtr {}

    #[test]
    fn aio_bh_from_another_thread_wakes_blocking_poll() {
        let ctx = new_ctx();
        let p = Probe::default();
        let sp = SendPtr(ctx, &p);
        let t = thread::spawn(move || {
            let sp = sp;
            thread::sleep(Duration::from_millis(50));
            // SAFETY: ctx is live until the test joins this thread; the
            // Probe outlives the BH (the test polls until it ran).
            unsafe {
                aio_bh_schedule_oneshot_full(sp.0, Some(count), sp.1 as *mut c_void, ptr::null())
            };
        });
        // SAFETY: live ctx, polled from its home thread.
        unsafe {
            while p.calls.load(SeqCst) == 0 {
                aio_poll(ctx, true);
            }
        }
        t.join().unwrap();
        // SAFETY: our reference.
        unsafe { aio_context_unref(ctx) };
    }

    #[test]
    fn aio_reusable_bh_schedule_cancel_delete() {
        let ctx = new_ctx();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives the BH.
        unsafe {
            let bh = aio_bh_new_full(ctx, Some(count), opaque(&p), ptr::null(), ptr::null_mut());
            qemu_bh_schedule(bh);
            qemu_bh_schedule(bh);
            assert!(aio_poll(ctx, false));
            assert!(!aio_poll(ctx, false));
            assert_eq!(p.calls.load(SeqCst), 1);
            qemu_bh_schedule(bh);
            qemu_bh_cancel(bh);
            assert!(!aio_poll(ctx, false));
            qemu_bh_schedule(bh);
            assert!(aio_poll(ctx, false));
            assert_eq!(p.calls.load(SeqCst), 2);
            qemu_bh_schedule(bh);
            qemu_bh_delete(bh);
            assert!(!aio_poll(ctx, false));
            assert_eq!(p.calls.load(SeqCst), 2);
            aio_context_unref(ctx);
        }
    }

    #[test]
    fn aio_finalize_runs_pending_oneshots() {
        let ctx = new_ctx();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives it.
        unsafe {
            aio_bh_schedule_oneshot_full(ctx, Some(count), opaque(&p), ptr::null());
            aio_context_unref(ctx);
        }
        assert_eq!(p.calls.load(SeqCst), 1);
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
            while p.observed.load(SeqCst) == 0 {
                aio_poll(ctx, true);
            }
        }
        p.finished.store(true, SeqCst);
    }

    #[test]
    fn aio_nested_poll_from_handler() {
        let ctx = new_ctx();
        let (a, b) = socketpair();
        let p = Probe::default();
        p.fd.store(a.as_raw_fd() as usize, SeqCst);
        p.ctx.store(ctx as usize, SeqCst);
        // SAFETY: live ctx; `p` outlives the registration.
        unsafe {
            aio_set_fd_handler(
                ctx,
                a.as_raw_fd(),
                Some(nested_handler),
                None,
                None,
                None,
                opaque(&p),
            );
            send_byte(&b);
            assert!(aio_poll(ctx, true));
            assert!(p.finished.load(SeqCst));
            assert_eq!(p.calls.load(SeqCst), 1);
            assert!(in_aio_context_home_thread(ctx));
            aio_set_fd_handler(ctx, a.as_raw_fd(), None, None, None, None, ptr::null_mut());
            aio_context_unref(ctx);
        }
    }

    #[test]
    fn aio_context_runs_as_gsource_of_private_gmaincontext() {
        let ctx = new_ctx();
        let p = Probe::default();
        // SAFETY: live ctx and GLib objects, released below; `p` outlives
        // the timer and the BH.
        unsafe {
            let gctx = sys::g_main_context_new();
            let src = aio_get_g_source(ctx);
            sys::g_source_attach(src, gctx);
            let ts = aio_timer_new(
                ctx,
                sys::QEMUClockType_QEMU_CLOCK_REALTIME,
                sys::SCALE_US as c_int,
                Some(count),
                opaque(&p),
            );
            timer_mod(
                ts,
                qemu_clock_get_us(sys::QEMUClockType_QEMU_CLOCK_REALTIME) + 10_000,
            );
            while p.calls.load(SeqCst) == 0 {
                sys::g_main_context_iteration(gctx, 1);
            }
            aio_bh_schedule_oneshot_full(ctx, Some(count), opaque(&p), ptr::null());
            while p.calls.load(SeqCst) == 1 {
                sys::g_main_context_iteration(gctx, 1);
            }
            timer_free(ts);
            sys::g_source_destroy(src);
            sys::g_source_unref(src);
            sys::g_main_context_unref(gctx);
            aio_context_unref(ctx);
        }
    }
}
