//! A thread that runs a new `AioContext` until stopped: what QEMU's
//! `IOThread` is (`main_loop.rs` gives it the C API of `iothread.h`), and
//! what the tests here run a context in another thread with.

use std::{
    ffi::c_void,
    ptr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use super::{
    aio_bh_schedule_oneshot_full, aio_context_unref, aio_poll, context_new, set_current_context,
};
use crate::sys;

pub struct PollThread {
    ctx: *mut sys::AioContext,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Carries the new context's pointer out of the thread.
struct SendCtx(*mut sys::AioContext);
// SAFETY: an AioContext may be used from any thread (its state is under
// locks); only aio_poll is restricted, and the receiver does not call it.
unsafe impl Send for SendCtx {}

unsafe extern "C" fn stop_bh(opaque: *mut c_void) {
    // SAFETY: `opaque` is the thread's `stopping` flag, alive until the
    // thread that runs this BH was joined.
    unsafe {
        (*(opaque as *const AtomicBool)).store(true, Ordering::Release);
    }
}

impl PollThread {
    /// Starts the thread, whose new context is its current context and
    /// which runs `aio_poll(ctx, true)` until [`PollThread::join`].
    pub(crate) fn spawn() -> Result<PollThread, String> {
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("iothread".into())
            .spawn(move || {
                let ctx = match context_new() {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot create AioContext: {e}")));
                        return;
                    }
                };
                set_current_context(ctx);
                let _ = tx.send(Ok(SendCtx(ctx)));
                while !flag.load(Ordering::Acquire) {
                    // SAFETY: the PollThread holds a reference until it was
                    // joined, and this is the context's home thread.
                    unsafe {
                        aio_poll(ctx, true);
                    }
                }
                set_current_context(ptr::null_mut());
            })
            .map_err(|e| format!("cannot start thread: {e}"))?;
        let ctx = rx
            .recv()
            .unwrap_or_else(|_| Err("thread exited early".into()))?
            .0;
        Ok(PollThread {
            ctx,
            stopping,
            thread: Some(thread),
        })
    }

    pub(crate) fn ctx(&self) -> *mut sys::AioContext {
        self.ctx
    }

    /// Stops the loop with a BH (so BHs scheduled before run first), joins
    /// the thread and drops its context reference.  One-shot BHs scheduled
    /// later still run, in this thread, when that was the last reference.
    /// Not to be called from the thread itself.
    pub(crate) fn join(mut self) {
        // SAFETY: the context is live (our reference); the flag outlives
        // the BH because we join the thread that runs it below.
        unsafe {
            aio_bh_schedule_oneshot_full(
                self.ctx,
                Some(stop_bh),
                Arc::as_ptr(&self.stopping) as *mut c_void,
                c"iothread_stop_bh".as_ptr(),
            );
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: drops the reference context_new gave the thread.
        unsafe {
            aio_context_unref(self.ctx);
        }
    }
}
