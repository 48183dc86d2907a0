//! The virtual clock: scheduled events (connections, recovery, actions),
//! `GLib` timeout sources and `QEMUTimer`s, and the host's monotonic clock
//! (`Host::clock_ns`).
//!
//! Time is kept in nanoseconds; timers, scheduled events and `now()` count
//! whole milliseconds (QEMU's and `GLib`'s timer unit), the host clock reads
//! the nanoseconds, so a test can let less than a millisecond pass between
//! two wake-ups (`advance_ns`), as the listener's burst guess needs.

use super::*;

/// Something that happens at a virtual time.
pub enum Sched {
    Connect(ConnId, u16),
    Recover,
    Action(Box<dyn FnOnce() + Send>),
}

pub(super) struct ATimer {
    pub(super) deadline: u64,
    pub(super) handler: HArc,
    pub(super) fired: bool,
    pub(super) hint: Option<u64>,
}

impl World {
    /// A timer's handler, deadline and hint (the socket whose dispatch is
    /// creating it: a back-off).
    pub(super) fn new_timer<T: TimerHandler>(
        &mut self,
        ms: u32,
        handler: T,
    ) -> (HArc, u64, Option<u64>) {
        let hint = self.frame_hint();
        if hint.is_some() {
            bump(&STATS.backoff_timers);
        }
        let h = self.new_handler(Box::new(move || {
            handler.fire();
            true
        }));
        (h, self.now + u64::from(ms), hint)
    }

    /// Timers created by a dispatch of `chan`'s watch that have neither
    /// fired nor been cancelled.
    pub fn backoff_timers(&self, chan: u64) -> Vec<Ctx> {
        let mut v = Vec::new();
        for (g, r) in &self.gctxs {
            for s in r.sources.values() {
                if !s.destroyed
                    && !r.private
                    && matches!(s.kind, SrcKind::Timer { hint: Some(c), .. } if c == chan)
                {
                    v.push(Ctx::G(*g));
                }
            }
        }
        for (a, r) in &self.actxs {
            for t in r.timers.values() {
                if !t.fired && t.hint == Some(chan) {
                    v.push(Ctx::A(*a));
                }
            }
        }
        v
    }

    pub(super) fn aio_due(&mut self, a: ACtx) -> Option<(HArc, Option<u64>)> {
        let now = self.now;
        let r = self.actxs.get_mut(&a)?;
        let t = r
            .timers
            .values_mut()
            .filter(|t| !t.fired && t.deadline <= now)
            .min_by_key(|t| t.deadline)?;
        t.fired = true;
        bump(&STATS.timer_fires);
        Some((t.handler.clone(), t.hint))
    }

    pub(super) fn next_deadline_aio(&self, a: ACtx) -> Option<u64> {
        self.actxs
            .get(&a)?
            .timers
            .values()
            .filter(|t| !t.fired)
            .map(|t| t.deadline)
            .min()
    }

    pub(super) fn next_deadline_glib(&self, g: GCtx) -> Option<u64> {
        self.gctxs
            .get(&g)?
            .sources
            .values()
            .filter_map(|s| match s.kind {
                SrcKind::Timer { deadline, .. } if !s.destroyed => Some(deadline),
                _ => None,
            })
            .min()
    }

    pub(super) fn frame_hint(&mut self) -> Option<u64> {
        match self.innermost()?.kind {
            FrameKind::Watch {
                chan,
                private: false,
            } => Some(chan),
            _ => None,
        }
    }
}

/// Nanoseconds in a millisecond of the virtual clock.
pub const NS_PER_MS: u64 = 1_000_000;

impl World {
    /// Moves the clock forward to `ns` (never back).
    fn set_ns(&mut self, ns: u64) {
        self.ns = self.ns.max(ns);
        self.now = self.ns / NS_PER_MS;
    }

    /// The virtual time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.ns
    }

    /// What `Host::clock_ns` reads: the virtual time in nanoseconds, plus
    /// one so that it is never 0 (the listener takes 0 for "no time").
    pub fn clock_ns(&mut self) -> u64 {
        self.clock_reads += 1;
        self.ns + 1
    }

    /// How many times the listener read the clock.
    pub fn clock_reads(&self) -> u64 {
        self.clock_reads
    }
}

/// The virtual time in whole milliseconds.
pub fn now() -> u64 {
    world(|w| w.now)
}

/// The virtual time in nanoseconds.
pub fn now_ns() -> u64 {
    world(|w| w.ns)
}

/// A client connects at virtual time `at`.
pub fn schedule_connect(at: u64, port: u16) -> (ConnId, u64) {
    world(|w| {
        let c = w.id();
        w.conns.insert(c, ConnState::Scheduled);
        let key = w.id();
        w.sched.insert((at, key), Sched::Connect(c, port));
        (c, key)
    })
}

/// Runs `f` at virtual time `at` (from whatever loop lets time pass).
pub fn schedule_action(at: u64, f: impl FnOnce() + Send + 'static) -> u64 {
    world(|w| {
        let key = w.id();
        w.sched.insert((at, key), Sched::Action(Box::new(f)));
        key
    })
}

/// Recovery from fd exhaustion at virtual time `at`.
pub fn schedule_recover(at: u64) -> u64 {
    world(|w| {
        let key = w.id();
        w.sched.insert((at, key), Sched::Recover);
        key
    })
}

/// Cancels a scheduled event that has not happened.
pub fn unschedule(key: u64) {
    let s = world(|w| {
        let k = w.sched.keys().find(|(_, k)| *k == key).copied()?;
        let s = w.sched.remove(&k)?;
        if let Sched::Connect(c, _) = &s {
            w.conns.insert(*c, ConnState::Cancelled);
        }
        Some(s)
    });
    drop(s);
}

pub fn scheduled() -> usize {
    world(|w| w.sched.len())
}

/// Advances the virtual clock to `t` ms, running the scheduled events due
/// on the way (in the calling thread).
pub fn advance_to(t: u64) {
    advance_to_ns(t.saturating_mul(NS_PER_MS));
}

/// Advances the virtual clock to `t` ns, running the scheduled events due
/// on the way (in the calling thread).
pub fn advance_to_ns(t: u64) {
    loop {
        let next = world(|w| {
            let k = w
                .sched
                .keys()
                .next()
                .copied()
                .filter(|(at, _)| at.saturating_mul(NS_PER_MS) <= t);
            match k {
                Some(k) => {
                    w.set_ns(k.0.saturating_mul(NS_PER_MS));
                    w.sched.remove(&k)
                }
                None => {
                    w.set_ns(t);
                    None
                }
            }
        });
        match next {
            None => return,
            Some(Sched::Connect(c, port)) => {
                world(|w| w.connect_as(c, port));
            }
            Some(Sched::Recover) => restore_fds(),
            Some(Sched::Action(f)) => f(),
        }
    }
}

/// Lets `ms` milliseconds pass.
pub fn advance(ms: u64) {
    advance_ns(ms.saturating_mul(NS_PER_MS));
}

/// Lets `ns` nanoseconds pass.
pub fn advance_ns(ns: u64) {
    advance_to_ns(now_ns().saturating_add(ns));
}

/// A one-shot timer: dropping it cancels it.
pub enum Timer {
    Glib { ctx: GCtx, sid: u64 },
    Aio { ctx: ACtx, tid: u64 },
}

impl Drop for Timer {
    fn drop(&mut self) {
        let (glib, ctx, id) = match *self {
            Timer::Glib { ctx, sid } => (true, ctx.0, sid),
            Timer::Aio { ctx, tid } => (false, ctx.0, tid),
        };
        on_drop(move || {
            let h = try_world(|w| {
                if glib {
                    return w.destroy_source(GCtx(ctx), id);
                }
                // timer_del, then the registered reference goes in a BH.
                let r = w.actx(ACtx(ctx));
                match r.timers.remove(&id) {
                    Some(t) => {
                        let h = t.handler;
                        let hid = h.id;
                        r.bhs.push_back(Box::new(move || {
                            try_world(|inner| inner.host_release(hid));
                            drop(h);
                        }));
                    }
                    None => w.violation(format!("timer {id} cancelled twice")),
                }
                None
            });
            drop(h);
        });
    }
}
