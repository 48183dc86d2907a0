//! Timers and QEMU's clocks (`qemu/timer.h`): armed timers ordered by
//! monotonic deadline, run by every `aio_poll` pass.

use std::{
    ffi::{c_int, c_void},
    sync::{Arc, Weak},
};

use super::{arc_clone, inner_arc, Callback, Inner, Opaque, State};
use crate::sys;

/// A timer (`QEMUTimer *` is `Arc::into_raw` of this).
pub struct Timer {
    ctx: Weak<Inner>,
    clock: sys::QEMUClockType,
    scale: i64,
    cb: Callback,
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; these clocks always exist.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    // time_t and c_long are i64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    sec * 1_000_000_000 + nsec
}

pub(super) fn monotonic_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

impl State {
    fn disarm(&mut self, t: &Arc<Timer>) {
        if let Some(key) = self.timer_keys.remove(&(Arc::as_ptr(t) as usize)) {
            self.timers.remove(&key);
        }
    }
}

impl Inner {
    /// Runs expired timers in deadline order; timers re-armed during the
    /// pass wait for the next one.
    pub(super) fn run_timers(&self) -> bool {
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
        scale: i64::from(scale),
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
    // SAFETY: per the contract the C side still owns one strong count.
    unsafe { arc_clone(ts as *const Timer) }
}

fn clock_id(clock: sys::QEMUClockType) -> libc::clockid_t {
    if clock == sys::QEMUClockType_QEMU_CLOCK_HOST {
        libc::CLOCK_REALTIME
    } else {
        libc::CLOCK_MONOTONIC
    }
}

pub fn qemu_clock_get_ns(type_: sys::QEMUClockType) -> i64 {
    clock_ns(clock_id(type_))
}

#[no_mangle]
pub extern "C" fn qemu_clock_get_ms(type_: sys::QEMUClockType) -> i64 {
    qemu_clock_get_ns(type_) / 1_000_000
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

#[cfg(test)]
mod tests {
    use std::{ffi::c_int, ptr, sync::Mutex};

    use super::*;
    use crate::aio::{testing::*, *};

    /// Whether `ts` is armed (QEMU's `timer_pending()`).
    fn pending(ts: *mut sys::QEMUTimer) -> bool {
        // SAFETY: the tests pass live timers.
        let t = unsafe { timer_arc(ts) };
        t.ctx.upgrade().is_some_and(|inner| {
            inner
                .lock()
                .timer_keys
                .contains_key(&(Arc::as_ptr(&t) as usize))
        })
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
                unsafe {
                    timer_mod(ts, now + d);
                }
                ts
            })
            .collect();
        // SAFETY: the timers and ctx are live until freed below.
        unsafe {
            assert!(pending(timers[3]));
            timer_del(timers[3]);
            assert!(!pending(timers[3]));
            poll_until(ctx, || order.seen.lock().unwrap().len() == 3);
            assert!(!pending(timers[0]));
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
        assert!(
            qemu_clock_get_ns(sys::QEMUClockType_QEMU_CLOCK_REALTIME) >= (now + 30) * 1_000_000
        );
        assert_eq!(*order.seen.lock().unwrap(), [1, 2, 0, 3]);
    }
}
