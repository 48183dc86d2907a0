//! Watches and timers on QEMU's event loops, and wait_client's private
//! loop: the monomorphised C trampolines and the release of what they use.
//!
//! The host contract (see `crate::host`): a handler stays alive for the
//! whole of every call into it, and is released once after no call can
//! still run.
//! - GSource (watches and GLib timers): GLib holds the callback data for
//!   each dispatch and runs its destroy notify only after the source is
//!   destroyed and no dispatch of it is running, nested ones included.
//! - AioContext fd handlers and QEMUTimers: AioContext has no such notify.
//!   The handler data is an `Arc`; the registration owns one count, which a
//!   one-shot bottom half in the same AioContext releases after the handler
//!   is removed, and **every dispatch takes its own count first**.  A BH
//!   never runs concurrently with a handler of its context, but it does run
//!   in a nested `aio_poll` that the handler makes (`AIO_WAIT_WHILE`): the
//!   dispatch's own count keeps the data, and so the listener, alive until
//!   the dispatch returns.  The C tests `test-nested` prove it under
//!   valgrind and ASan.

use std::{
    ffi::c_void,
    panic::{catch_unwind, AssertUnwindSafe},
    ptr::{self, NonNull},
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
};

use super::{
    bindings as sys, gpointer, report, AioCtx, Channel, GMainContext, GlibContext, QemuHost,
};
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

/// GSource callback (QIOChannelFunc).
unsafe extern "C" fn source_ready<R: ReadyHandler<QemuHost>>(
    _ioc: *mut sys::QIOChannel,
    _cond: sys::GIOCondition,
    opaque: gpointer,
) -> sys::gboolean {
    // SAFETY: opaque is the WatchData<R> we registered; GLib holds it for
    // this dispatch and frees it (free_box) only after the source is
    // destroyed and no dispatch of it is running.
    let serving = run_handler(unsafe { &*(opaque as *const WatchData<R>) });
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
/// is still held: its release (a BH in the same AioContext as this
/// dispatch) cannot have run, since a BH of the context does not run
/// between the start of a dispatch and this call.
unsafe fn dispatch_ref<T>(opaque: *mut c_void) -> Arc<T> {
    let p = opaque as *const T;
    // SAFETY: per the contract the registered count is alive, so adding
    // one and taking it over as an owned Arc is sound.
    unsafe {
        Arc::increment_strong_count(p);
        Arc::from_raw(p)
    }
}

/// AioContext fd handler (IOHandler).
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

/// GDestroyNotify that frees a boxed T.
unsafe extern "C" fn free_box<T>(opaque: *mut c_void) {
    // SAFETY: opaque came from Box::into_raw(Box<T>) and this is its single
    // release (GSource destroy notify).
    drop(unsafe { Box::from_raw(opaque as *mut T) });
}

/// QEMUBHFunc that releases the registration's count of an `Arc<T>`.
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

/// A GSource watch on a channel; destroyed (and its handler released once
/// no dispatch of it runs) when dropped.  Not `Clone`: it is destroyed once.
pub struct SourceWatch(NonNull<sys::GSource>);

// SAFETY: g_source_destroy and g_source_unref are thread-safe.
unsafe impl Send for SourceWatch {}

impl SourceWatch {
    /// Watches `channel` for incoming clients, dispatched from `ctx`
    /// (NULL: GLib's default context).
    pub fn new<R: ReadyHandler<QemuHost>>(
        channel: &Channel,
        ctx: GlibContext,
        handler: R,
    ) -> SourceWatch {
        let data = Box::into_raw(Box::new(WatchData {
            handler,
            channel: channel.clone(),
        }));
        // SAFETY: the channel is live; data stays valid until GLib calls
        // free_box::<WatchData<R>>, exactly once; ctx is NULL or a live
        // context (the caller of set_client_func_full guarantees it).
        let src = unsafe {
            sys::qio_channel_add_watch_source(
                channel.ioc(),
                sys::G_IO_IN,
                Some(source_ready::<R>),
                data.cast(),
                Some(free_box::<WatchData<R>>),
                ctx.0,
            )
        };
        SourceWatch(NonNull::new(src).expect("qio_channel_add_watch_source"))
    }
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        destroy_source(self.0)
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

/// An AioContext fd handler on a channel.  Dropping it removes the handler
/// and releases the registration's count of the handler data in a one-shot
/// bottom half of the same AioContext, whichever thread drops it (see the
/// module doc).  This is what lets any AioContext, in any thread, drive a
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
            )
        };
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

/// GSourceFunc of a GLib one-shot timer.
unsafe extern "C" fn glib_timer_fired<T: TimerHandler>(opaque: gpointer) -> sys::gboolean {
    // SAFETY: opaque is the Box<T> we registered; GLib holds it for this
    // dispatch and frees it (free_box) only once the source is destroyed.
    run_timer(unsafe { &*(opaque as *const T) });
    0 // G_SOURCE_REMOVE: one-shot
}

/// What an AioContext timer's callback and release share: the QEMUTimer
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

/// QEMUTimerCB of an AioContext one-shot timer.
unsafe extern "C" fn aio_timer_fired<T: TimerHandler>(opaque: *mut c_void) {
    // SAFETY: opaque is the registered Arc<AioTimerData<T>> of a timer that
    // is firing now, so its release BH has not run (dispatch_ref).
    let data = unsafe { dispatch_ref::<AioTimerData<T>>(opaque) };
    run_timer(&data.handler);
}

/// A one-shot timer in the listener's dispatch context: a GLib timeout
/// source on a GMainContext, or a QEMUTimer on an AioContext (so that it
/// also fires inside nested aio_poll loops).  Dropping it cancels it; what
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

/// A private GMainContext iterated until `quit`, for `wait_client`.
///
/// Not a GMainLoop: g_main_loop_run() forgets a g_main_loop_quit() that
/// came before it, so a disconnect racing with the start of wait_client
/// would leave it blocked.  The flag cannot be missed (`run` consumes it),
/// and g_main_context_wakeup() interrupts (or pre-empts) a blocking
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
            unsafe { sys::g_main_context_iteration(self.ctx.as_ptr(), 1) };
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
