//! Watches and timers on QEMU's event loops, and `wait_client`'s private
//! loop: the monomorphised C trampolines and the release of what they use.
//!
//! The host contract (see `crate::host`): a handler stays alive for the
//! whole of every call into it, and is released once after no call can
//! still run.
//! - `GSource` (watches and `GLib` timers): `GLib` holds the callback data for
//!   each dispatch and runs its destroy notify only after the source is
//!   destroyed and no dispatch of it is running, nested ones included.
//!   A watch's sources share one `Arc` of the handler (see below); each
//!   source's callback data is a count of it, released by `GLib`'s notify.
//! - `AioContext` fd handlers and `QEMUTimer`s: `AioContext` has no such notify.
//!   The handler data is an `Arc`; the registration owns one count, which a
//!   one-shot bottom half in the same `AioContext` releases after the handler
//!   is removed, and **every dispatch takes its own count first**.  A BH
//!   never runs concurrently with a handler of its context, but it does run
//!   in a nested `aio_poll` that the handler makes (`AIO_WAIT_WHILE`): the
//!   dispatch's own count keeps the data, and so the listener, alive until
//!   the dispatch returns.  The C tests `test-nested` prove it under
//!   valgrind and `ASan`.

use std::{
    ffi::c_void,
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::{self, NonNull},
    sync::{
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
        Arc, Mutex,
    },
};

use super::{gpointer, report, sys, AioCtx, Channel, GMainContext, GlibContext, QemuHost};
use crate::host::{ReadyHandler, TimerHandler, WaitLoop};

struct WatchData<R> {
    handler: R,
    channel: Channel,
}

/// Runs the handler; returns whether the watch still serves.
fn run_handler<R: ReadyHandler<QemuHost>>(data: &WatchData<R>) -> bool {
    // Nothing may unwind into the C event loop.
    catch_unwind(AssertUnwindSafe(|| data.handler.ready(&data.channel))).unwrap_or_else(|_| {
        report("internal error in the accept handler; continuing");
        true
    })
}

/// `GSource` callback (`QIOChannelFunc`).  See [`SourceWatch`] for why a
/// nested dispatch parks the watch instead of running the handler.
unsafe extern "C" fn source_ready<R: ReadyHandler<QemuHost>>(
    _ioc: *mut sys::QIOChannel,
    _cond: sys::GIOCondition,
    opaque: gpointer,
) -> sys::gboolean {
    // SAFETY: opaque is a count of the Arc<SourceData<R>> we registered as
    // this source's callback data; GLib holds it for this dispatch and
    // releases it (release_arc) only after the source is destroyed and no
    // dispatch of it is running.
    let data = unsafe { &*(opaque as *const SourceData<R>) };
    if data.depth.fetch_add(1, Relaxed) > 0 {
        // A loop nested in our own callback found the socket readable:
        // take the fd out of its poll set (destroying this source) rather
        // than re-enter the callback or be dispatched on every round.
        data.parked.store(true, Relaxed);
        data.depth.fetch_sub(1, Relaxed);
        return 0; // G_SOURCE_REMOVE
    }
    let serving = run_handler(&data.watch);
    data.depth.fetch_sub(1, Relaxed);
    if data.parked.swap(false, Relaxed) {
        if serving {
            // SAFETY: as above; the new source takes a count of its own.
            rewatch(unsafe { dispatch_ref::<SourceData<R>>(opaque) });
        }
        return 0; // this source is destroyed already
    }
    // A watch that no longer serves (replaced, cleared or disconnected by
    // another thread, which destroys it after unlocking) goes now instead
    // of staying ready meanwhile: G_SOURCE_REMOVE.  Whoever holds its
    // SourceWatch still destroys and unrefs it, which GLib allows.
    serving.into()
}

/// Takes a dispatch's own count of an `Arc` registered with a C callback.
///
/// # Safety
/// `opaque` came from `Arc::into_raw` of an `Arc<T>` whose registered count
/// is still held: its release (a BH in the same `AioContext` as this
/// dispatch) cannot have run, since a BH of the context does not run
/// between the start of a dispatch and this call; or `GLib` holds it as the
/// callback data of the `GSource` that is dispatching.
unsafe fn dispatch_ref<T>(opaque: *mut c_void) -> Arc<T> {
    let p = opaque as *const T;
    // SAFETY: per the contract the registered count is alive, so adding
    // one and taking it over as an owned Arc is sound.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// `AioContext` fd handler (`IOHandler`).
unsafe extern "C" fn aio_ready<R: ReadyHandler<QemuHost>>(opaque: *mut c_void) {
    // SAFETY: opaque is the registered Arc<WatchData<R>> of a handler that
    // is dispatching now, so its release BH has not run (dispatch_ref).
    let data = unsafe { dispatch_ref::<WatchData<R>>(opaque) };
    // Whether it still serves does not matter: a watch that no longer does
    // had its handler removed under the listener's lock.
    run_handler(&data);
    // `data` drops here: if the watch was released during the callback,
    // this is the last count and frees the data (and may finalize the
    // listener) now that nothing uses it.
}

/// `GDestroyNotify` that frees a boxed T.
unsafe extern "C" fn free_box<T>(opaque: *mut c_void) {
    // SAFETY: opaque came from Box::into_raw(Box<T>) and this is its single
    // release (GSource destroy notify).
    drop(unsafe { Box::from_raw(opaque.cast::<T>()) });
}

/// `QEMUBHFunc` that releases the registration's count of an `Arc<T>`.
unsafe extern "C" fn release_arc<T>(opaque: *mut c_void) {
    // SAFETY: opaque came from Arc::into_raw and the registration's count is
    // released here, once (the one-shot BH scheduled by a Drop).
    drop(unsafe { Arc::from_raw(opaque as *const T) });
}

/// Schedules `release(data)` as a one-shot BH in `ctx`.
///
/// # Safety
/// `release(data)` is safe to run once in `ctx`'s thread.
unsafe fn schedule_release(
    ctx: AioCtx,
    release: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
) {
    // SAFETY: ctx is live (the registration's contract); per ours, the BH.
    unsafe {
        sys::aio_bh_schedule_oneshot_full(
            ctx.0.as_ptr(),
            Some(release),
            data,
            c"qio_net_listener_release".as_ptr(),
        )
    }
}

/// A `GSource` watch on a channel: QEMU's own channel watch
/// (`qio_channel_create_watch`), whose callback never re-enters itself and
/// whose fd leaves the context's poll set only when a loop nested in the
/// callback would otherwise spin on it.  Destroyed (and its handler
/// released once no dispatch of it runs) when dropped.  Not `Clone`: it
/// is destroyed once.
///
/// # Why not `GLib`'s own blocking, and why this is equivalent
///
/// `GLib` keeps a source that may not recurse from being dispatched inside
/// its own dispatch by blocking it: it removes the source's fds from the
/// context's poll set for the length of every dispatch and adds them back
/// afterwards, and each change wakes the context (eventfd writes, a read
/// and extra polls: 5 system calls and 2,000 to 3,400 instructions per
/// wake-up, measured on the compat host and in QEMU, when one client per
/// wake-up is the common case).  Our sources
/// may recurse, so nothing is paid per wake-up, and we keep `GLib`'s
/// guarantees ourselves:
/// - *The callback is never re-entered.*  `GLib` only dispatches a source in
///   the thread that owns its context, so a dispatch that starts while
///   another one of the same watch runs (`depth` > 0) is one made by a
///   loop nested in our callback.  It does not call the handler.
/// - *The nested loop does not spin.*  That nested dispatch returns
///   `G_SOURCE_REMOVE`: `GLib` destroys the source, which takes its fd out
///   of the poll set (`GLib`'s block, paid only now).  The fd stays
///   readable, so leaving the source in would make every round of the
///   nested loop return at once.
/// - *No client is lost.*  The nested dispatch accepts nothing; when the
///   outer dispatch returns it attaches a new source for the same socket
///   with the same handler (`rewatch`) if the watch still serves, so the
///   clients still queued are served on the next round, as after `GLib`'s
///   unblock.
/// - *Whatever a dispatch uses stays alive* (the host contract): each
///   source's callback data is a count of one `Arc<SourceData>`, which
///   `GLib` holds for each dispatch and releases after the source is
///   destroyed; the handler goes with the last count.
/// - *Dropping the watch stops its dispatches at once*, also while an
///   outer dispatch is about to re-attach: the current source and the
///   `dropped` flag are under one lock, so either the drop destroys the
///   re-attached source or the re-attach sees `dropped` and does nothing.
pub struct SourceWatch(Arc<SourceCell>);

/// The current `GSource` of a watch (one reference), None once dropped.
struct SourceCell(Mutex<CellState>);

struct CellState {
    source: Option<NonNull<sys::GSource>>,
    dropped: bool,
}

// SAFETY: the GSource pointer is only destroyed and unreferenced, which is
// thread-safe, and only under the mutex or once taken out of it.
unsafe impl Send for CellState {}

/// What every `GSource` of one watch points to (its callback data).
struct SourceData<R> {
    watch: WatchData<R>,
    ctx: GlibContext,
    cell: Arc<SourceCell>,
    /// Dispatches of this watch under way in the context's thread: more
    /// than one means a loop nested in the callback dispatched it.
    depth: AtomicUsize,
    /// A nested dispatch removed the source: the outer one re-attaches.
    parked: AtomicBool,
}

impl SourceCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, CellState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A new source of `data`'s watch, holding a count of it; not attached.
fn new_source<R: ReadyHandler<QemuHost>>(data: Arc<SourceData<R>>) -> NonNull<sys::GSource> {
    let ioc = data.watch.channel.ioc();
    let func: sys::QIOChannelFunc = Some(source_ready::<R>);
    // SAFETY: the channel is live; GLib passes the callback data back to
    // source_ready::<R> (a QIOChannelFunc stored as a GSourceFunc, as
    // qio_channel_add_watch_source does) and releases it with
    // release_arc::<SourceData<R>>, once.
    unsafe {
        let src = sys::qio_channel_create_watch(ioc, sys::G_IO_IN);
        let src = NonNull::new(src).expect("qio_channel_create_watch");
        let cb = std::mem::transmute::<sys::QIOChannelFunc, sys::GSourceFunc>(func);
        sys::g_source_set_callback(
            src.as_ptr(),
            cb,
            Arc::into_raw(data) as gpointer,
            Some(release_arc::<SourceData<R>>),
        );
        sys::g_source_set_can_recurse(src.as_ptr(), 1);
        src
    }
}

/// Attaches a new source for a watch whose source a nested loop removed,
/// unless the watch was dropped meanwhile.
fn rewatch<R: ReadyHandler<QemuHost>>(data: Arc<SourceData<R>>) {
    let (ctx, cell) = (data.ctx, data.cell.clone());
    let src = new_source(data);
    let old = {
        let mut st = cell.lock();
        if st.dropped {
            Err(src)
        } else {
            // SAFETY: a new source; ctx is live (we are dispatching in it).
            unsafe {
                sys::g_source_attach(src.as_ptr(), ctx.0);
            }
            Ok(st.source.replace(src))
        }
    };
    match old {
        Ok(Some(old)) => destroy_source(old),
        Ok(None) => {}
        // SAFETY: never attached; this drops its only reference (and so
        // its count of the data).
        Err(unattached) => unsafe { sys::g_source_unref(unattached.as_ptr()) },
    }
}

impl SourceWatch {
    /// Watches `channel` for incoming clients, dispatched from `ctx`
    /// (NULL: `GLib`'s default context).
    pub fn new<R: ReadyHandler<QemuHost>>(
        channel: &Channel,
        ctx: GlibContext,
        handler: R,
    ) -> SourceWatch {
        let cell = Arc::new(SourceCell(Mutex::new(CellState {
            source: None,
            dropped: false,
        })));
        let src = new_source(Arc::new(SourceData {
            watch: WatchData {
                handler,
                channel: channel.clone(),
            },
            ctx,
            cell: cell.clone(),
            depth: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        }));
        // SAFETY: a new source; ctx is NULL or a live context (the caller
        // of set_client_func_full guarantees it).
        unsafe {
            sys::g_source_attach(src.as_ptr(), ctx.0);
        }
        cell.lock().source = Some(src);
        SourceWatch(cell)
    }
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        let src = {
            let mut st = self.0.lock();
            st.dropped = true;
            st.source.take()
        };
        // After unlocking: destroying may release the data at once.
        if let Some(src) = src {
            destroy_source(src);
        }
    }
}

fn destroy_source(src: NonNull<sys::GSource>) {
    // SAFETY: the caller owns one reference to the source; destroy detaches
    // it (GLib defers the data's notify until a running dispatch ends).
    unsafe {
        sys::g_source_destroy(src.as_ptr());
        sys::g_source_unref(src.as_ptr());
    }
}

/// An `AioContext` fd handler on a channel.  Dropping it removes the handler
/// and releases the registration's count of the handler data in a one-shot
/// bottom half of the same `AioContext`, whichever thread drops it (see the
/// module doc).  This is what lets any `AioContext`, in any thread, drive a
/// listener.
pub struct AioWatch {
    ctx: AioCtx,
    channel: Channel,
    data: *mut c_void,
    release: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: the data is an Arc of Send + Sync parts; the raw pointer is only
// carried to the release BH.
unsafe impl Send for AioWatch {}

impl AioWatch {
    pub fn new<R: ReadyHandler<QemuHost>>(channel: &Channel, ctx: AioCtx, handler: R) -> AioWatch {
        let data = Arc::into_raw(Arc::new(WatchData {
            handler,
            channel: channel.clone(),
        })) as *mut c_void;
        // SAFETY: the channel and context are live; the registered count
        // stays valid until the release BH scheduled by Drop.
        unsafe {
            sys::qio_channel_set_aio_fd_handler(
                channel.ioc(),
                ctx.0.as_ptr(),
                Some(aio_ready::<R>),
                ptr::null_mut(),
                None,
                data,
            );
        }
        AioWatch {
            ctx,
            channel: channel.clone(),
            data,
            release: release_arc::<WatchData<R>>,
        }
    }
}

impl Drop for AioWatch {
    fn drop(&mut self) {
        // SAFETY: removes the handler installed in new() (no dispatch starts
        // after this); then the BH releases the registered count, once.
        unsafe {
            sys::qio_channel_set_aio_fd_handler(
                self.channel.ioc(),
                self.ctx.0.as_ptr(),
                None,
                ptr::null_mut(),
                None,
                ptr::null_mut(),
            );
            schedule_release(self.ctx, self.release, self.data);
        }
    }
}

fn run_timer<T: TimerHandler>(handler: &T) {
    if catch_unwind(AssertUnwindSafe(|| handler.fire())).is_err() {
        report("internal error in a timer; continuing");
    }
}

/// `GSourceFunc` of a `GLib` one-shot timer.
unsafe extern "C" fn glib_timer_fired<T: TimerHandler>(opaque: gpointer) -> sys::gboolean {
    // SAFETY: opaque is the Box<T> we registered; GLib holds it for this
    // dispatch and frees it (free_box) only once the source is destroyed.
    run_timer(unsafe { &*(opaque as *const T) });
    0 // G_SOURCE_REMOVE: one-shot
}

/// What an `AioContext` timer's callback and release share: the `QEMUTimer`
/// is freed with the last count, after it was deleted.
struct AioTimerData<T> {
    handler: T,
    timer: std::sync::atomic::AtomicPtr<sys::QEMUTimer>,
}

impl<T> Drop for AioTimerData<T> {
    fn drop(&mut self) {
        let timer = *self.timer.get_mut();
        if !timer.is_null() {
            // SAFETY: the timer was deleted before the release BH ran (Drop
            // of OneShotTimer) and no callback of it runs any more.
            unsafe { sys::qio_nl_timer_free(timer) }
        }
    }
}

/// `QEMUTimerCB` of an `AioContext` one-shot timer.
unsafe extern "C" fn aio_timer_fired<T: TimerHandler>(opaque: *mut c_void) {
    // SAFETY: opaque is the registered Arc<AioTimerData<T>> of a timer that
    // is firing now, so its release BH has not run (dispatch_ref).
    let data = unsafe { dispatch_ref::<AioTimerData<T>>(opaque) };
    run_timer(&data.handler);
}

/// A one-shot timer in the listener's dispatch context: a `GLib` timeout
/// source on a `GMainContext`, or a `QEMUTimer` on an `AioContext` (so that it
/// also fires inside nested `aio_poll` loops).  Dropping it cancels it; what
/// it holds is released once no call of it can still be running, exactly
/// like the watches.
pub struct OneShotTimer(TimerInner);

enum TimerInner {
    Glib(NonNull<sys::GSource>),
    Aio {
        ctx: AioCtx,
        timer: *mut sys::QEMUTimer,
        data: *mut c_void,
        release: unsafe extern "C" fn(*mut c_void),
    },
}

// SAFETY: cancelling (g_source_destroy, timer_del, scheduling a BH) is
// thread-safe; the data is only touched in the context's own thread.
unsafe impl Send for OneShotTimer {}

impl OneShotTimer {
    pub fn glib<T: TimerHandler>(ctx: GlibContext, ms: u32, handler: T) -> OneShotTimer {
        let data = Box::into_raw(Box::new(handler));
        // SAFETY: a new source; data stays valid until GLib calls
        // free_box::<T> once; ctx is NULL or a live context.
        unsafe {
            let src = sys::g_timeout_source_new(ms);
            let func: unsafe extern "C" fn(gpointer) -> sys::gboolean = glib_timer_fired::<T>;
            sys::g_source_set_callback(src, Some(func), data.cast(), Some(free_box::<T>));
            sys::g_source_attach(src, ctx.0);
            OneShotTimer(TimerInner::Glib(
                NonNull::new(src).expect("g_timeout_source_new"),
            ))
        }
    }

    pub fn aio<T: TimerHandler>(ctx: AioCtx, ms: i64, handler: T) -> OneShotTimer {
        let data = Arc::new(AioTimerData {
            handler,
            timer: std::sync::atomic::AtomicPtr::new(ptr::null_mut()),
        });
        let raw = Arc::as_ptr(&data) as *mut c_void;
        // SAFETY: the context is live; the registered count (into_raw below)
        // stays valid until the release BH scheduled by Drop.
        unsafe {
            let timer =
                sys::qio_nl_aio_timer_new_ms(ctx.0.as_ptr(), Some(aio_timer_fired::<T>), raw);
            data.timer.store(timer, SeqCst);
            sys::timer_mod(timer, sys::qio_nl_clock_ms() + ms);
            OneShotTimer(TimerInner::Aio {
                ctx,
                timer,
                data: Arc::into_raw(data) as *mut c_void,
                release: release_arc::<AioTimerData<T>>,
            })
        }
    }
}

impl Drop for OneShotTimer {
    fn drop(&mut self) {
        match self.0 {
            TimerInner::Glib(src) => destroy_source(src),
            TimerInner::Aio {
                ctx,
                timer,
                data,
                release,
            } => {
                // SAFETY: timer_del is thread-safe and stops new calls; the
                // BH releases the registered count once, and the last count
                // frees the timer (AioTimerData's Drop).
                unsafe {
                    sys::timer_del(timer);
                    schedule_release(ctx, release, data);
                }
            }
        }
    }
}

/// A private `GMainContext` iterated until `quit`, for `wait_client`.
///
/// Not a `GMainLoop`: `g_main_loop_run()` forgets a `g_main_loop_quit()` that
/// came before it, so a disconnect racing with the start of `wait_client`
/// would leave it blocked.  The flag cannot be missed (`run` consumes it),
/// and `g_main_context_wakeup()` interrupts (or pre-empts) a blocking
/// iteration.
pub struct PrivateLoop {
    ctx: NonNull<GMainContext>,
    done: AtomicBool,
}

// SAFETY: quit() only touches an atomic and calls the thread-safe
// g_main_context_wakeup; run() is called by the one thread that waits.
unsafe impl Send for PrivateLoop {}
// SAFETY: as above.
unsafe impl Sync for PrivateLoop {}

impl WaitLoop<QemuHost> for PrivateLoop {
    fn new() -> PrivateLoop {
        // SAFETY: a constructor without preconditions; GLib aborts on OOM.
        let ctx = unsafe { sys::g_main_context_new() };
        PrivateLoop {
            ctx: NonNull::new(ctx).expect("g_main_context_new"),
            done: AtomicBool::new(false),
        }
    }

    fn context(&self) -> GlibContext {
        GlibContext(self.ctx.as_ptr())
    }

    fn run(&self) {
        while !self.done.swap(false, SeqCst) {
            // SAFETY: the context is live for as long as self; only this
            // thread iterates it.
            unsafe {
                sys::g_main_context_iteration(self.ctx.as_ptr(), 1);
            }
        }
    }

    fn quit(&self) {
        self.done.store(true, SeqCst);
        // SAFETY: the context is live; waking it is thread-safe.
        unsafe { sys::g_main_context_wakeup(self.ctx.as_ptr()) }
    }
}

impl Drop for PrivateLoop {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in new().
        unsafe { sys::g_main_context_unref(self.ctx.as_ptr()) }
    }
}
