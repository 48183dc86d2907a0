//! One-shot bottom halves, queued in FIFO order and run by every
//! `aio_poll` pass.

use std::ffi::{c_char, c_void};

use super::{inner_ref, Callback, Inner, Opaque};
use crate::sys;

impl Inner {
    fn schedule(&self, cb: Callback) {
        let mut st = self.lock();
        let seq = st.bh_seq;
        st.bh_seq += 1;
        st.bhs.push_back((seq, cb));
        drop(st);
        self.notify();
    }

    /// Runs the BHs scheduled before this call, in order.  BHs they
    /// schedule wait for the next pass, so a BH rescheduling itself cannot
    /// starve the loop.  Popping one at a time (instead of taking the
    /// batch) lets a nested `aio_poll` inside a BH run the rest of the
    /// batch, which a nested `AIO_WAIT_WHILE` may be waiting for.
    pub(super) fn run_bhs(&self) -> bool {
        let mut st = self.lock();
        let limit = st.bh_seq;
        let mut ran = false;
        loop {
            match st.bhs.front() {
                Some(&(seq, _)) if seq < limit => {}
                _ => break,
            }
            let Some((_, cb)) = st.bhs.pop_front() else {
                break;
            };
            drop(st);
            cb.call();
            ran = true;
            st = self.lock();
        }
        ran
    }

    /// At finalize: runs the one-shot BHs nobody will run otherwise.
    pub(super) fn run_leftover_oneshots(&self) {
        loop {
            let next = self.lock().bhs.pop_front();
            match next {
                None => break,
                Some((_, cb)) => cb.call(),
            }
        }
    }
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
    unsafe { inner_ref(ctx) }.schedule(Callback {
        func: cb,
        opaque: Opaque(opaque),
    });
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, ptr, sync::atomic::Ordering::SeqCst, thread, time::Duration};

    use super::*;
    use crate::aio::{testing::*, *};

    unsafe extern "C" fn slow_handler(o: *mut c_void) {
        // SAFETY: the test's Probe outlives the handler and the BH.
        let p = unsafe { probe(o) };
        p.calls.fetch_add(1, SeqCst);
        p.running.store(true, SeqCst);
        thread::sleep(Duration::from_millis(200));
        drain(p.fd.load(SeqCst) as RawFd);
        p.finished.store(true, SeqCst);
    }

    /// DESIGN 3.1: a BH scheduled after removing a handler runs only after
    /// the in-progress call of that handler returned.
    #[test]
    fn aio_bh_after_removal_waits_for_running_handler() {
        let it = PollThread::spawn().unwrap();
        let ctx = it.ctx();
        let p = Probe::default();
        // SAFETY: live ctx; `p` outlives the handler, the BH and the join.
        let (a, b) = unsafe { watched_pair(ctx, slow_handler, &p) };
        send_byte(&b);
        wait_for(|| p.running.load(SeqCst));
        // SAFETY: as above.
        unsafe {
            unwatch(ctx, a.as_raw_fd());
            aio_bh_schedule_oneshot_full(ctx, Some(observe_bh), opaque(&p), ptr::null());
        }
        wait_for(|| p.observed.load(SeqCst) != 0);
        assert_eq!(p.observed.load(SeqCst), 2, "BH ran while the handler ran");
        assert_eq!(p.calls.load(SeqCst), 1);
        it.join();
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
                aio_bh_schedule_oneshot_full(sp.0, Some(count), sp.1 as *mut c_void, ptr::null());
            }
        });
        // SAFETY: live ctx, polled from its home thread.
        unsafe {
            poll_until(ctx, || p.calls.load(SeqCst) == 1);
        }
        t.join().unwrap();
        // SAFETY: our reference.
        unsafe {
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
}
