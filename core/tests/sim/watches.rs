//! The watch handles the listener holds (`GSource` watches, `AioContext` fd
//! handlers), the checks on what is watched, and `wait_client`'s private
//! loop.

use super::*;

impl World {
    /// The listener's watches (not `wait_client`'s) on `chan`, live ones
    /// only (a destroyed source still dispatching does not count).
    pub fn async_watches(&self, chan: u64) -> Vec<Ctx> {
        let mut v = Vec::new();
        for (g, r) in &self.gctxs {
            if r.private {
                continue;
            }
            for s in r.sources.values() {
                if !s.destroyed && matches!(s.kind, SrcKind::Watch { chan: c, .. } if c == chan) {
                    v.push(Ctx::G(*g));
                }
            }
        }
        for (a, r) in &self.actxs {
            if r.handlers.contains_key(&chan) {
                v.push(Ctx::A(*a));
            }
        }
        v
    }

    /// `wait_client`'s watches on any socket (live ones).
    pub fn private_watch_count(&self) -> usize {
        self.gctxs
            .values()
            .filter(|r| r.private)
            .flat_map(|r| r.sources.values())
            .filter(|s| !s.destroyed && matches!(s.kind, SrcKind::Watch { .. }))
            .count()
    }

    pub(super) fn private_watches(&self, chan: u64) -> usize {
        self.gctxs
            .values()
            .filter(|r| r.private)
            .flat_map(|r| r.sources.values())
            .filter(|s| {
                !s.destroyed && matches!(s.kind, SrcKind::Watch { chan: c, .. } if c == chan)
            })
            .count()
    }

    /// A new watch on `chan`; returns the fd number it polls.  Two of the
    /// listener's `GSource` watches may exist for a moment (the old one is
    /// destroyed after the listener unlocks, see the host contract); a
    /// second fd handler in the same `AioContext` is caught when it is
    /// installed.  Watching a closed socket is a use of a closed number
    /// (`wait_client`'s private watches included: a disconnect must not
    /// close a socket that a `wait_client` may still start to watch).
    pub(super) fn check_watchable(&mut self, chan: u64, private: bool) -> i32 {
        let what = if private {
            "wait_client's watch"
        } else {
            "watch"
        };
        let fd = self.on_own_fd(chan, what).map_or(-1, |_| self.fd(chan));
        let asyncs = self.async_watches(chan).len();
        if (private && asyncs > 0) || (!private && self.private_watches(chan) > 0) {
            self.violation(format!(
                "socket {chan} watched by wait_client and by an async watch at once"
            ));
        }
        fd
    }
}

/// A `GSource` watch: dropping it destroys the source.
pub struct SourceWatch {
    pub(super) ctx: GCtx,
    pub(super) sid: u64,
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        let (g, sid) = (self.ctx, self.sid);
        on_drop(move || {
            let h = try_world(|w| {
                // A watch that removed itself (G_SOURCE_REMOVE) is gone
                // already; destroying it again is fine (QEMU holds a
                // reference to the GSource).
                let removed = w.gctxs.get_mut(&g).is_some_and(|r| r.removed.remove(&sid));
                if !removed
                    && w.gctxs
                        .get(&g)
                        .is_some_and(|r| !r.sources.contains_key(&sid))
                {
                    w.violation(format!("watch {sid} dropped twice"));
                }
                w.destroy_source(g, sid)
            });
            drop(h);
        });
    }
}

/// An `AioContext` fd handler: dropping it removes the handler and
/// releases it in a BH of that context.
pub struct AioWatch {
    pub(super) ctx: ACtx,
    pub(super) chan: u64,
    pub(super) watch: u64,
}

impl Drop for AioWatch {
    fn drop(&mut self) {
        let (a, chan, watch) = (self.ctx, self.chan, self.watch);
        on_drop(move || {
            try_world(|w| {
                let r = w.actx(a);
                match r.handlers.get(&chan) {
                    Some(h) if h.watch == watch => {
                        let handler = r.handlers.remove(&chan).expect("handler").handler;
                        let id = handler.id;
                        r.bhs.push_back(Box::new(move || {
                            try_world(|inner| inner.host_release(id));
                            drop(handler);
                        }));
                    }
                    Some(_) => {
                        // QEMU would remove the other watch's handler.
                        r.handlers.remove(&chan);
                        w.violation(format!(
                            "fd handler of socket {chan} removed by a watch that did not \
                             install it"
                        ));
                    }
                    None => w.violation(format!("fd handler of socket {chan} removed twice")),
                }
            });
        });
    }
}

/// `wait_client`'s private loop.
pub struct SimLoop {
    pub(super) ctx: GCtx,
}

/// How many rounds a private loop may run before it counts as spinning.
pub const WAIT_ROUNDS: u32 = 10_000;

impl WaitLoop<Sim> for SimLoop {
    fn new() -> Self {
        bump(&STATS.wait_loops);
        world(|w| {
            let g = GCtx(w.next_gctx);
            w.next_gctx += 1;
            w.gctxs.insert(g, new_grec(true));
            SimLoop { ctx: g }
        })
    }

    fn context(&self) -> GCtx {
        self.ctx
    }

    fn run(&self) {
        let g = self.ctx;
        for _ in 0..WAIT_ROUNDS {
            if world(|w| std::mem::take(&mut w.gctx(g).quit)) {
                return;
            }
            if iterate(g) {
                continue;
            }
            // Nothing ready: time passes until this context's next timer
            // or the next scheduled event, else nothing can happen.
            let next = world(|w| {
                let s = w.sched.keys().next().map(|k| k.0);
                match (w.next_deadline_glib(g), s) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            });
            match next {
                Some(t) => advance_to(t),
                None => block_until("wait_client", move |w| {
                    w.gctxs.get(&g).is_none_or(|r| r.quit)
                        || w.glib_has_work(g)
                        || w.next_deadline_glib(g).is_some()
                }),
            }
        }
        world(|w| w.violation(format!("wait_client's loop spun {WAIT_ROUNDS} rounds")));
    }

    fn quit(&self) {
        world(|w| w.gctx(self.ctx).quit = true);
    }
}

impl Drop for SimLoop {
    fn drop(&mut self) {
        let g = self.ctx;
        on_drop(move || {
            try_world(|w| match w.gctxs.remove(&g) {
                Some(r) if !r.sources.is_empty() => {
                    w.violation(format!("private context {g:?} freed with sources attached"))
                }
                Some(_) => {}
                None => w.violation(format!("private context {g:?} freed twice")),
            });
        });
    }
}
