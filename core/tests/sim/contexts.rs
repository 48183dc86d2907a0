//! `GMainContext`s and `AioContext`s: sources, fd handlers, bottom halves,
//! dispatch (nested included) and the loops that run them.

use super::*;

pub(super) enum SrcKind {
    /// A watch of `chan`, polling `fd` (its number when the watch was made).
    Watch {
        chan: u64,
        fd: i32,
    },
    Timer {
        deadline: u64,
        hint: Option<u64>,
    },
}

pub(super) struct Source {
    pub(super) kind: SrcKind,
    pub(super) handler: Option<HArc>,
    pub(super) handler_id: u64,
    pub(super) dispatching: bool,
    pub(super) destroyed: bool,
    /// Dispatches of it that did nothing (see `dispatch`).
    pub(super) idle: u64,
}

pub(super) struct GRec {
    pub(super) private: bool,
    pub(super) quit: bool,
    pub(super) kicked: bool,
    pub(super) sources: BTreeMap<u64, Source>,
    /// Watches that removed themselves (`G_SOURCE_REMOVE`) and whose handle
    /// the listener has not dropped yet (destroying them again is fine).
    pub(super) removed: BTreeSet<u64>,
}

pub(super) struct AioH {
    pub(super) watch: u64,
    /// The fd number it polls (the socket's when it was installed).
    pub(super) fd: i32,
    pub(super) handler: HArc,
}

#[derive(Default)]
pub(super) struct ARec {
    pub(super) handlers: BTreeMap<u64, AioH>,
    pub(super) bhs: VecDeque<Bh>,
    pub(super) timers: BTreeMap<u64, ATimer>,
    pub(super) kicked: bool,
}

pub(super) fn new_grec(private: bool) -> GRec {
    GRec {
        private,
        quit: false,
        kicked: false,
        sources: BTreeMap::new(),
        removed: BTreeSet::new(),
    }
}

impl World {
    pub fn pending_bhs(&self) -> usize {
        self.actxs.values().map(|a| a.bhs.len()).sum()
    }

    pub fn private_contexts(&self) -> usize {
        self.gctxs.values().filter(|g| g.private).count()
    }

    pub(super) fn gctx(&mut self, g: GCtx) -> &mut GRec {
        if !self.gctxs.contains_key(&g) {
            self.violation(format!("GMainContext {g:?} used after it was freed"));
            self.gctxs.insert(g, new_grec(true));
        }
        self.gctxs.get_mut(&g).expect("context")
    }

    pub(super) fn actx(&mut self, a: ACtx) -> &mut ARec {
        if !self.actxs.contains_key(&a) {
            self.violation(format!("unknown AioContext {a:?}"));
            self.actxs.insert(a, ARec::default());
        }
        self.actxs.get_mut(&a).expect("context")
    }

    pub(super) fn add_source(&mut self, g: GCtx, kind: SrcKind, h: HArc) -> u64 {
        let sid = self.id();
        let handler_id = h.id;
        self.gctx(g).sources.insert(
            sid,
            Source {
                kind,
                handler: Some(h),
                handler_id,
                dispatching: false,
                destroyed: false,
                idle: 0,
            },
        );
        sid
    }

    /// `g_source_destroy`: releases the handler now unless it is being
    /// dispatched (then when that dispatch returns).
    pub(super) fn destroy_source(&mut self, g: GCtx, sid: u64) -> Option<HArc> {
        let r = self.gctxs.get_mut(&g)?;
        let s = r.sources.get_mut(&sid)?; // fired timers are gone already
        if s.destroyed {
            self.violation(format!("source {sid} destroyed twice"));
            return None;
        }
        s.destroyed = true;
        if s.dispatching {
            return None;
        }
        let removed = r.sources.remove(&sid).expect("source");
        self.host_release(removed.handler_id);
        removed.handler
    }

    pub(super) fn glib_ready(&self, g: GCtx) -> Vec<u64> {
        let Some(r) = self.gctxs.get(&g) else {
            return Vec::new();
        };
        r.sources
            .iter()
            .filter(|(_, s)| !s.destroyed && !s.dispatching)
            .filter(|(_, s)| match s.kind {
                SrcKind::Watch { fd, .. } => self.fd_readable(fd),
                SrcKind::Timer { deadline, .. } => deadline <= self.now,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn source_begin(&mut self, g: GCtx, sid: u64) -> Option<(HArc, FrameKind)> {
        let private = self.gctxs.get(&g)?.private;
        let s = self.gctxs.get_mut(&g)?.sources.get_mut(&sid)?;
        if s.destroyed || s.dispatching {
            return None;
        }
        s.dispatching = true;
        let (kind, polled) = match s.kind {
            SrcKind::Watch { chan, fd } => (FrameKind::Watch { chan, private }, Some((chan, fd))),
            SrcKind::Timer { hint, .. } => {
                bump(&STATS.timer_fires);
                (FrameKind::Timer { hint, private }, None)
            }
        };
        let h = s.handler.clone().expect("handler");
        if let Some((chan, fd)) = polled {
            self.check_watch_fd(chan, fd);
        }
        Some((h, kind))
    }

    /// A dispatch of source `sid` returned `keep` (false: `G_SOURCE_REMOVE`,
    /// as a timer always does); `idle`: it did nothing.
    pub(super) fn source_end(&mut self, g: GCtx, sid: u64, keep: bool, idle: bool) -> Option<HArc> {
        let r = self.gctxs.get_mut(&g)?;
        let s = r.sources.get_mut(&sid)?;
        s.dispatching = false;
        if idle {
            s.idle += 1;
            STATS.max_idle_per_source.fetch_max(s.idle, Relaxed);
            if !r.private {
                self.max_stale_dispatches = self.max_stale_dispatches.max(s.idle);
            }
        }
        let timer = matches!(s.kind, SrcKind::Timer { .. });
        if (timer || !keep) && !s.destroyed {
            s.destroyed = true;
            if !timer {
                r.removed.insert(sid);
                bump(&STATS.self_removed);
            }
        }
        if !s.destroyed {
            return None;
        }
        let removed = r.sources.remove(&sid).expect("source");
        self.host_release(removed.handler_id);
        removed.handler
    }

    pub(super) fn frame_start(&mut self, h: &HArc, kind: FrameKind, ctx: Ctx) -> u64 {
        let id = self.id();
        if let Some(r) = self.handlers.get_mut(&h.id) {
            r.calls += 1;
        } else {
            self.violation(format!("dispatch of released handler {}", h.id));
        }
        let thread = thread_key();
        if self.frames.iter().any(|f| f.thread == thread) {
            bump(&STATS.nested_dispatches);
        }
        bump(&STATS.dispatches);
        self.frames.push(Frame {
            id,
            thread,
            kind,
            ctx,
            handler: h.id,
            accepts: 0,
            fails: Vec::new(),
            look: None,
        });
        self.emit(Event::FrameStart {
            frame: id,
            kind,
            ctx,
        });
        id
    }

    /// Ends a dispatch whose handler returned `keep`; true if it was a
    /// watch's and did nothing at all.
    pub(super) fn frame_end(&mut self, id: u64, keep: bool) -> bool {
        let Some(pos) = self.frames.iter().position(|f| f.id == id) else {
            self.violation(format!("sim: frame {id} lost"));
            return false;
        };
        let f = self.frames.remove(pos);
        let idle =
            matches!(f.kind, FrameKind::Watch { .. }) && f.accepts == 0 && f.fails.is_empty();
        if let Some(r) = self.handlers.get_mut(&f.handler) {
            r.calls -= 1;
        }
        self.emit(Event::FrameEnd {
            frame: id,
            kind: f.kind,
            ctx: f.ctx,
            accepts: f.accepts,
            fails: f.fails,
            look: f.look,
            keep,
            handler: f.handler,
        });
        idle
    }

    pub(super) fn aio_ready(&self, a: ACtx) -> Vec<(u64, u64)> {
        self.actxs.get(&a).map_or(Vec::new(), |r| {
            r.handlers
                .iter()
                .filter(|(_, h)| self.fd_readable(h.fd))
                .map(|(chan, h)| (*chan, h.watch))
                .collect()
        })
    }

    pub(super) fn aio_has_work(&self, a: ACtx) -> bool {
        let Some(r) = self.actxs.get(&a) else {
            return false;
        };
        !r.bhs.is_empty()
            || r.handlers.values().any(|h| self.fd_readable(h.fd))
            || r.timers
                .values()
                .any(|t| !t.fired && t.deadline <= self.now)
    }

    pub(super) fn glib_has_work(&self, g: GCtx) -> bool {
        !self.glib_ready(g).is_empty()
    }
}

pub fn glib_context_new() -> GCtx {
    world(|w| {
        let g = GCtx(w.next_gctx);
        w.next_gctx += 1;
        w.gctxs.insert(g, new_grec(false));
        g
    })
}

pub fn aio_context_new() -> ACtx {
    world(|w| {
        let a = ACtx(w.next_actx);
        w.next_actx += 1;
        w.actxs.insert(a, ARec::default());
        a
    })
}

/// A dispatch: the host calls the handler through its own reference.
/// Returns what the handler returned (whether a watch still serves) and
/// whether the dispatch did nothing at all: a watch whose registration is
/// no longer current, still ready until the thread that replaced it
/// destroys it.  A `GSource` watch then removes itself (the handler returns
/// false), so each has at most one such dispatch (`max_idle_per_source`,
/// a regression test in tests/concurrency.rs): no busy loop, and no
/// yield is needed to keep PCT from starving the replacing thread.
pub(super) fn dispatch(h: HArc, kind: FrameKind, ctx: Ctx) -> (bool, bool) {
    let fid = world(|w| w.frame_start(&h, kind, ctx));
    let keep = (h.f)();
    let idle = world(|w| w.frame_end(fid, keep));
    drop(h);
    if idle {
        bump(&STATS.idle_dispatches);
    }
    (keep, idle)
}

/// One non-blocking iteration of a `GMainContext`; true if anything ran.
pub fn iterate(g: GCtx) -> bool {
    let ready = world(|w| w.glib_ready(g));
    let mut progress = false;
    for sid in ready {
        let Some((h, kind)) = world(|w| w.source_begin(g, sid)) else {
            continue;
        };
        progress = true;
        let (keep, idle) = dispatch(h, kind, Ctx::G(g));
        let released = world(|w| w.source_end(g, sid, keep, idle));
        drop(released);
    }
    if g == GCtx::DEFAULT {
        progress |= aio_dispatch(ACtx::MAIN);
    }
    progress
}

/// A blocking iteration (shuttle): waits until something is ready or the
/// context is kicked.
pub fn iterate_blocking(g: GCtx) -> bool {
    loop {
        if iterate(g) {
            return true;
        }
        if world(|w| std::mem::take(&mut w.gctx(g).kicked)) {
            return false;
        }
        match world(|w| w.next_deadline_glib(g)) {
            Some(t) => advance_to(t),
            None => block_until("g_main_context_iteration(may_block)", move |w| {
                w.glib_has_work(g)
                    || w.gctxs.get(&g).is_some_and(|r| r.kicked)
                    || (g == GCtx::DEFAULT && w.aio_has_work(ACtx::MAIN))
            }),
        }
    }
}

/// Makes a blocking iteration of `g` return (`g_main_context_wakeup`).
pub fn glib_kick(g: GCtx) {
    world(|w| w.gctx(g).kicked = true);
}

pub(super) fn aio_dispatch(a: ACtx) -> bool {
    let mut progress = false;
    let bhs = world(|w| std::mem::take(&mut w.actx(a).bhs));
    for bh in bhs {
        progress = true;
        bump(&STATS.bhs);
        bh();
    }
    let ready = world(|w| w.aio_ready(a));
    for (chan, watch) in ready {
        let h = world(|w| {
            w.actx(a)
                .handlers
                .get(&chan)
                .filter(|h| h.watch == watch)
                .map(|h| (h.handler.clone(), h.fd))
                .map(|(h, fd)| {
                    w.check_watch_fd(chan, fd);
                    h
                })
        });
        if let Some(h) = h {
            progress = true;
            // An fd handler stays until removed: the return is ignored.
            dispatch(
                h,
                FrameKind::Watch {
                    chan,
                    private: false,
                },
                Ctx::A(a),
            );
        }
    }
    while let Some((h, hint)) = world(|w| w.aio_due(a)) {
        progress = true;
        dispatch(
            h,
            FrameKind::Timer {
                hint,
                private: false,
            },
            Ctx::A(a),
        );
    }
    progress
}

/// `aio_poll(ctx, blocking)`: BHs, ready fd handlers, expired timers.
pub fn aio_poll(a: ACtx, blocking: bool) -> bool {
    loop {
        if aio_dispatch(a) {
            return true;
        }
        if !blocking || world(|w| std::mem::take(&mut w.actx(a).kicked)) {
            return false;
        }
        match world(|w| w.next_deadline_aio(a)) {
            Some(t) => advance_to(t),
            None => block_until("aio_poll(blocking)", move |w| {
                w.aio_has_work(a) || w.actxs.get(&a).is_some_and(|r| r.kicked)
            }),
        }
    }
}

/// Makes a blocking `aio_poll` of `a` return (`aio_notify`).
pub fn aio_kick(a: ACtx) {
    world(|w| w.actx(a).kicked = true);
}

/// Runs every `AioContext` and (non-private) `GMainContext` until nothing
/// makes progress; a violation after `rounds` rounds (something spins).
pub fn drain_all(rounds: u32) {
    for _ in 0..rounds {
        let (actxs, gctxs): (Vec<ACtx>, Vec<GCtx>) = world(|w| {
            (
                w.actxs.keys().copied().collect(),
                w.gctxs
                    .iter()
                    .filter(|(_, r)| !r.private)
                    .map(|(g, _)| *g)
                    .collect(),
            )
        });
        let mut progress = false;
        for a in actxs {
            progress |= aio_poll(a, false);
        }
        for g in gctxs {
            progress |= iterate(g);
        }
        if !progress {
            return;
        }
    }
    world(|w| {
        w.violation(format!(
            "no quiescence after {rounds} rounds of every context"
        ))
    });
}
