//! QEMU's `AioContext` event loop (`qemu/aio.h`, `qemu/timer.h`): fd
//! handlers, bottom halves (BHs) and timers, run by `aio_poll()` in the
//! context's home thread or, through the context's `GSource`, by a `GLib` main
//! loop.
//!
//! As in QEMU, an `AioContext` *is* a `GSource`: the C pointer points at a
//! `GSource` allocated by `g_source_new`, followed by a pointer to the Rust
//! state ([`Inner`]).  `aio_context_ref`/`unref` are `g_source_ref`/`unref`
//! and the `GSource`'s `finalize` frees the Rust state, closing its fds.
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
//! 2. BHs run only inside `aio_poll`/the `GSource` dispatch of their context,
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
//!   whatever the BH owns instead of leaking it.
//! - fds that epoll cannot watch (regular files) are reported with
//!   `error_report` and not registered, instead of spinning forever.
//! - All clocks but `QEMU_CLOCK_HOST` are the monotonic clock; a HOST
//!   timer's deadline is converted to the monotonic clock when armed, so
//!   it does not follow later wall-clock jumps.
//! - The home thread (for `in_aio_context_home_thread`) is the thread that
//!   created the context or last ran it with `aio_poll`/`GLib`.
//!
//! # Files
//!
//! This file holds the shared state and the thread bookkeeping; [`poll`]
//! the epoll loop and fd handlers, [`gsource`] the `GSource` glue and the
//! context's creation, [`bh`] bottom halves, [`timer`] timers and clocks,
//! [`thread`] a thread running a context (QEMU's `IOThread`).

mod bh;
mod gsource;
mod poll;
#[cfg(test)]
mod testing;
mod thread;
mod timer;

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap, VecDeque},
    ffi::{c_int, c_void, CString},
    hash::{BuildHasherDefault, Hasher},
    os::fd::RawFd,
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
};

use nix::sys::{epoll::Epoll, eventfd::EventFd};

use crate::sys;

pub use self::gsource::context_new;
use self::poll::Handler;
pub use self::{
    bh::aio_bh_schedule_oneshot_full,
    gsource::{aio_context_new, aio_context_unref, aio_get_g_source},
    poll::aio_poll,
    thread::PollThread,
    timer::Timer,
};
#[cfg(test)]
pub use self::{
    poll::aio_set_fd_handler,
    timer::{aio_timer_new, qemu_clock_get_ms, qemu_clock_get_ns, timer_free, timer_mod},
};

/// What C's `AioContext *` points at: the `GSource` `GLib` allocated, then our
/// state.  `g_source_new` zero-fills the bytes after the `GSource`.
#[repr(C)]
struct AioContext {
    source: sys::GSource,
    /// From `Arc::into_raw`; released by [`gsource::ctx_finalize`].
    inner: *const Inner,
    /// `g_source_add_unix_fd`'s tag for the epoll fd.
    tag: sys::gpointer,
}

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

/// Hashes an fd as itself: every dispatch looks its handler up, and the
/// default `SipHash` costs more than the rest of that lookup.
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
        self.0 = u64::from(fd as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Default)]
struct State {
    handlers: HashMap<RawFd, Handler, BuildHasherDefault<FdHasher>>,
    /// Scheduled BHs in FIFO order, each with its sequence number so that
    /// a pass runs only what was scheduled before it started.
    bhs: VecDeque<(u64, Callback)>,
    bh_seq: u64,
    /// Armed timers by (monotonic deadline, arming sequence number).
    timers: BTreeMap<(i64, u64), Arc<Timer>>,
    /// Key in `timers` of each armed timer, by `Arc::as_ptr`.
    timer_keys: HashMap<usize, (i64, u64)>,
    timer_seq: u64,
}

impl State {
    /// The `epoll_wait`/`GLib` timeout in ms: 0 if a BH or timer is ready.
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
                let ms = (i128::from(deadline) - i128::from(now) + 999_999) / 1_000_000;
                ms.min(i128::from(c_int::MAX)) as c_int
            }
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
    /// to wake, and it would be one per `aio_poll`).
    waiters: u32,
}

/// The Rust state of one `AioContext`.
pub struct Inner {
    epoll: Epoll,
    eventfd: EventFd,
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
pub fn thread_id() -> u64 {
    THREAD_ID.with(|id| *id)
}

/// Makes `ctx` the calling thread's current context (`IOThread`s).
pub fn set_current_context(ctx: *mut sys::AioContext) {
    CURRENT.with(|c| c.set(ctx));
}

/// The main-loop `AioContext` (one reference kept forever), NULL until the
/// main loop (`main_loop.rs`) sets it up.
static MAIN_CTX: AtomicPtr<sys::AioContext> = AtomicPtr::new(ptr::null_mut());
/// [`thread_id`] of the main thread, 0 until then.
static MAIN_THREAD: AtomicU64 = AtomicU64::new(0);

/// Records `ctx` as the main-loop context and the calling thread as the
/// main thread, whose current context it is from then on.
pub fn set_main_context(ctx: *mut sys::AioContext) {
    MAIN_THREAD.store(thread_id(), Ordering::Release);
    MAIN_CTX.store(ctx, Ordering::Release);
}

pub fn main_context() -> *mut sys::AioContext {
    MAIN_CTX.load(Ordering::Acquire)
}

pub fn in_main_thread() -> bool {
    let main = MAIN_THREAD.load(Ordering::Acquire);
    main != 0 && main == thread_id()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under our locks, so poisoning only follows a bug
    // in this file; the data is still consistent enough to go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn report(msg: &str) {
    let msg = CString::new(msg.replace('\0', "")).unwrap_or_default();
    // SAFETY: "%s" with one valid NUL-terminated string.
    unsafe {
        sys::error_report(c"%s".as_ptr(), msg.as_ptr());
    }
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
}

/// # Safety
/// `ctx` is a live `AioContext` made by [`aio_context_new`].
unsafe fn inner_ref<'a>(ctx: *mut sys::AioContext) -> &'a Inner {
    // SAFETY: per the contract, `inner` was set at creation and stays
    // valid until finalize, which needs the caller's reference gone.
    unsafe { &*(*ctx.cast::<AioContext>()).inner }
}

/// A strong reference to the state, for callers that run user code that
/// might drop the last reference to the context.
///
/// # Safety
/// As [`inner_ref`].
unsafe fn inner_arc(ctx: *mut sys::AioContext) -> Arc<Inner> {
    // SAFETY: `inner` came from `Arc::into_raw` and is alive (see above).
    unsafe { arc_clone((*ctx.cast::<AioContext>()).inner) }
}

/// A new strong reference to what an `Arc::into_raw` pointer that C holds
/// (`AioContext`'s state, `QEMUBH *`, `QEMUTimer *`) points at.
///
/// # Safety
/// `p` came from `Arc::into_raw` and that strong count is still owned.
unsafe fn arc_clone<T>(p: *const T) -> Arc<T> {
    // SAFETY: per the contract the owned count keeps `p` alive meanwhile.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

#[no_mangle]
pub extern "C" fn qemu_get_current_aio_context() -> *mut sys::AioContext {
    let ctx = CURRENT.with(Cell::get);
    if !ctx.is_null() {
        return ctx;
    }
    if in_main_thread() {
        main_context()
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
