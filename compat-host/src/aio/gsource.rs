//! The context as a `GSource`: `GLib`'s prepare/check/dispatch/finalize run
//! the same `aio_poll` pass from a `GMainContext`, and the C entry points
//! that create and reference a context.

use std::{
    ffi::{c_int, CString},
    io,
    os::fd::AsRawFd,
    ptr,
    sync::Arc,
};

use super::{inner_arc, inner_ref, timer::monotonic_ns, AioContext, Inner};
use crate::{sys, util::new_fd_source};

unsafe extern "C" fn ctx_prepare(source: *mut sys::GSource, timeout: *mut c_int) -> sys::gboolean {
    // SAFETY: GLib calls this with our live source and a valid out-pointer.
    let t = unsafe { inner_ref(source.cast()) }
        .lock()
        .timeout_ms(monotonic_ns);
    // SAFETY: as above.
    unsafe {
        *timeout = t;
    }
    sys::gboolean::from(t == 0)
}

unsafe extern "C" fn ctx_check(source: *mut sys::GSource) -> sys::gboolean {
    let ctx = source.cast::<AioContext>();
    // SAFETY: GLib calls this with our live source, whose tag was set at
    // creation.
    let cond = unsafe { sys::g_source_query_unix_fd(source, (*ctx).tag) };
    // SAFETY: as above.
    let inner = unsafe { inner_ref(source.cast()) };
    sys::gboolean::from(cond & sys::G_IO_IN != 0 || inner.ready())
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
    let ctx = source.cast::<AioContext>();
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
pub fn context_new() -> io::Result<*mut sys::AioContext> {
    let inner = Inner::new()?;
    let epfd = inner.epoll.0.as_raw_fd();
    // SAFETY: AioContext is repr(C) with the GSource first and valid
    // zero-filled (NULL state until set below); FUNCS are its callbacks.
    let (ctx, tag) =
        unsafe { new_fd_source::<AioContext>(&FUNCS, c"aio-context", epfd, sys::G_IO_IN) };
    // SAFETY: a fresh context that no one else sees yet.
    unsafe {
        (*ctx).inner = Arc::into_raw(Arc::new(inner));
        (*ctx).tag = tag;
    }
    Ok(ctx.cast())
}

/// # Safety
/// `errp` is NULL or a valid `Error **` (QEMU's conventions).
pub unsafe fn aio_context_new(errp: *mut *mut sys::Error) -> *mut sys::AioContext {
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
                );
            }
            ptr::null_mut()
        }
    }
}

/// # Safety
/// `ctx` is a live context and the caller owns the reference it drops.
pub unsafe fn aio_context_unref(ctx: *mut sys::AioContext) {
    // SAFETY: as above.
    unsafe {
        sys::g_source_unref(ctx.cast());
    }
}

/// # Safety
/// `ctx` is a live context (its owner may be any thread).
pub unsafe fn aio_get_g_source(ctx: *mut sys::AioContext) -> *mut sys::GSource {
    // SAFETY: as above.
    unsafe { sys::g_source_ref(ctx.cast()) }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::c_void,
        sync::atomic::{AtomicBool, Ordering::SeqCst},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::aio::{testing::*, *};

    unsafe extern "C" fn set_flag(flag: sys::gpointer) -> sys::gboolean {
        // SAFETY: the test's AtomicBool outlives the source.
        unsafe {
            (*flag.cast::<AtomicBool>()).store(true, SeqCst);
        }
        0
    }

    /// Runs blocking iterations of `gctx` until `done`; false if 5 s
    /// passed first (a `GLib` timeout wakes the iteration then, so a context
    /// that never wakes up fails the test instead of hanging it).
    ///
    /// # Safety
    /// `gctx` is a live `GMainContext` that this thread may iterate.
    unsafe fn iterate_until(gctx: *mut sys::GMainContext, done: impl Fn() -> bool) -> bool {
        let expired = AtomicBool::new(false);
        // SAFETY: `expired` outlives the source, destroyed below.
        let watchdog = unsafe {
            let w = sys::g_timeout_source_new(5000);
            sys::g_source_set_callback(
                w,
                Some(set_flag),
                (&expired as *const AtomicBool).cast_mut().cast::<c_void>(),
                None,
            );
            sys::g_source_attach(w, gctx);
            w
        };
        while !done() && !expired.load(SeqCst) {
            // SAFETY: caller's contract.
            unsafe {
                sys::g_main_context_iteration(gctx, 1);
            }
        }
        // SAFETY: our source.
        unsafe {
            sys::g_source_destroy(watchdog);
            sys::g_source_unref(watchdog);
        }
        done()
    }

    /// A `GMainContext` alone runs the context: its timers (the iteration
    /// sleeps until the timer's deadline) and its BHs (scheduling one
    /// wakes the iteration).
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
            let start = Instant::now();
            timer_mod(
                ts,
                qemu_clock_get_ns(sys::QEMUClockType_QEMU_CLOCK_REALTIME) / 1000 + 10_000,
            );
            assert!(iterate_until(gctx, || p.calls.load(SeqCst) == 1));
            assert!(start.elapsed() >= Duration::from_millis(10), "timer early");
            aio_bh_schedule_oneshot_full(ctx, Some(count), opaque(&p), ptr::null());
            assert!(iterate_until(gctx, || p.calls.load(SeqCst) == 2));
            // Nothing left to run: a non-blocking iteration dispatches
            // nothing of ours.
            sys::g_main_context_iteration(gctx, 0);
            assert_eq!(p.calls.load(SeqCst), 2);
            timer_free(ts);
            sys::g_source_destroy(src);
            sys::g_source_unref(src);
            sys::g_main_context_unref(gctx);
            aio_context_unref(ctx);
        }
    }
}
