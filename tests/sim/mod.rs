//! A deterministic simulated host for the listener's state machine
//! (`Listener<Sim>`), for `tests/model.rs` (seeded sequences against a
//! reference model) and `tests/concurrency.rs` (shuttle).
//!
//! It models, in safe Rust and on a virtual clock:
//! - GMainContexts (the default one, others, and wait_client's private
//!   ones) with GSource semantics: a source's callback data is held for
//!   each dispatch (the dispatch calls through its own `Arc` clone); a
//!   source destroyed during its dispatch is released when that dispatch
//!   returns, otherwise at once in the destroying thread; a source being
//!   dispatched is blocked (not re-entered by nested iterations); sources
//!   found ready when an iteration starts are dispatched unless destroyed
//!   meanwhile (readiness is not re-checked, as GLib's poll).  Iterating
//!   the default context also dispatches the main AioContext, as QEMU's
//!   main loop attaches it there as a (recursive) GSource.
//! - AioContexts: fd handlers keyed by (context, socket), one-shot bottom
//!   halves, `aio_poll` running BHs, then the handlers that were ready at
//!   its start (and still installed), then expired timers.  Nested
//!   `aio_poll` from inside a handler runs BHs and may re-enter the same
//!   handler, as QEMU's does.  Removing a handler stops new dispatches at
//!   once; its registered reference is released by a BH in that context
//!   (what `QemuHost` does), so a nested `aio_poll` inside a dispatch runs
//!   that release while the dispatch still holds its own reference.
//! - Timers (GLib timeout sources and QEMUTimers), fired by iteration or
//!   `aio_poll` once the virtual clock reaches their deadline.
//! - Listening sockets with a backlog-bounded accept queue, clients that
//!   connect (queued) or reset (dropped from the queue), `accept` that pops
//!   the oldest or fails, fd exhaustion on demand (accept fails, the client
//!   stays queued, `pending()` stays true) and recovery, spurious accept
//!   failures, `close`, `set_name`, `set_nonblocking` (and its failure).
//! - wait_client's private loop: `run()` iterates its context; when
//!   nothing is ready the clock jumps to its next timer or scheduled event;
//!   if nothing at all can make progress it records "would block forever"
//!   (single-threaded) or waits for another (shuttle) thread.
//!
//! Every handle is tracked, and a broken rule panics with a clear message
//! (a "violation"): listener references (`Owner`, finalize exactly once
//! when the count reaches zero, no use after), channel references (no use
//! after the last; an accepted client released without having been
//! delivered to a callback or claimed by the test is "accepted and
//! dropped"), handlers (released once, after no dispatch of them runs),
//! watches (a socket watched twice, a handler installed over another for
//! the same fd or removed by a watch that did not install it, watching or
//! closing a watched socket), registrations (called after their notify,
//! notified twice or while a call of them runs), accepting on a blocking
//! socket with nothing queued, and, at `finish`, anything left over.
//!
//! What it does NOT model:
//! - real file descriptors: fd numbers and their reuse after close, errno,
//!   `poll` semantics beyond "a client is queued", POLLHUP/POLLERR, and
//!   connections that fail accept with ECONNABORTED (a reset client just
//!   leaves the queue; a client reset after accept changes nothing);
//! - memory: safe Rust cannot free what is still referenced, so "use after
//!   free" is modelled as use of a released handle, and a host that did not
//!   keep a handler alive during its dispatch cannot be expressed (the sim
//!   keeps it, as GLib and QemuHost do, and counts the releases that happen
//!   while a dispatch runs);
//! - QOM beyond reference counts (no properties, no type system, no
//!   `object_unref` from C), `Error` beyond a message, DNS (an address is
//!   a port or a failure), listen backlogs beyond a queue bound;
//! - GLib: priorities, `g_main_context_acquire` (which thread may iterate
//!   a context), wakeups and poll timeouts, GSource ready/check/prepare
//!   beyond "readable when iteration starts", sources' own refcounts;
//! - AioContext: its internal locking and list_lock, polling mode,
//!   `aio_notify` other than an explicit kick, BHs other than one-shot, and
//!   which thread owns a context (any thread may poll any context);
//! - time: one virtual millisecond clock, only advanced by the test or by a
//!   loop with nothing else to do;
//! - threads outside shuttle: without the `shuttle` feature a world is run
//!   by one thread, so cross-thread races are only explored in
//!   tests/concurrency.rs, where every world access is a scheduling point
//!   but atomic itself (a host call made of several accesses can be
//!   interleaved between them; with `begin_coarse`, host accesses are not
//!   scheduling points at all).

#![allow(dead_code)] // each test binary uses a part of it

use std::{
    any::Any,
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    ffi::{CStr, CString},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

#[allow(unused_imports)] // not every test binary uses both
pub use qio_net_listener::listener::{Target, ACCEPT_BATCH, BACKOFF_MS};
use qio_net_listener::{
    host::{ClientCallback, Host, HostError, ReadyHandler, SocketChannel, TimerHandler, WaitLoop},
    listener::{Listener, ListenerHost},
    sync::{Arc, Mutex, Weak},
};

#[cfg(feature = "shuttle")]
use shuttle::thread_local as per_thread;
#[cfg(not(feature = "shuttle"))]
use std::thread_local as per_thread;

// ---------------------------------------------------------------------
// Identifiers

/// A GMainContext: 0 is GLib's default context.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GCtx(pub u32);
impl GCtx {
    pub const DEFAULT: GCtx = GCtx(0);
}

/// An AioContext: 0 is the main loop's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ACtx(pub u32);
impl ACtx {
    pub const MAIN: ACtx = ACtx(0);
}

/// Either kind of context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ctx {
    G(GCtx),
    A(ACtx),
}

impl Ctx {
    pub fn of(t: Target<Sim>) -> Ctx {
        match t {
            Target::Glib(g) => Ctx::G(g),
            Target::Aio(a) => Ctx::A(a),
        }
    }
}

/// A client connection (the peer of an accepted channel).
pub type ConnId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Will connect at a scheduled time.
    Scheduled,
    /// In the accept queue of this listening channel.
    Queued(u64),
    /// Accepted as this channel, not yet handed to anyone.
    Accepted(u64),
    /// Handed to a callback or returned by wait_client.
    Delivered(u64),
    /// Reset by the client while queued.
    Reset,
    /// Nobody listening or the backlog was full.
    Refused,
    /// Queued on a socket that was closed.
    Lost,
    /// A scheduled connection that was cancelled.
    Cancelled,
}

// ---------------------------------------------------------------------
// Global statistics (for the test reports)

#[derive(Default)]
pub struct Stats {
    pub dispatches: AtomicU64,
    pub nested_dispatches: AtomicU64,
    pub accepts: AtomicU64,
    pub accept_failures: AtomicU64,
    pub calls: AtomicU64,
    pub notifies: AtomicU64,
    pub finalizes: AtomicU64,
    pub bhs: AtomicU64,
    pub timer_fires: AtomicU64,
    pub backoff_timers: AtomicU64,
    pub wait_loops: AtomicU64,
    /// The host released a handler (a removed AioContext watch or timer,
    /// by its BH in a nested aio_poll) while a dispatch of it still ran:
    /// the hazard of issue 6, survived thanks to the dispatch's own
    /// reference.
    pub released_in_dispatch: AtomicU64,
    /// wait_client watched a socket already closed by a concurrent
    /// disconnect (benign, see check_watchable).
    pub private_watch_on_closed: AtomicU64,
    /// Watch dispatches that did nothing (see `dispatch`).
    pub idle_dispatches: AtomicU64,
}

pub static STATS: Stats = Stats {
    dispatches: AtomicU64::new(0),
    nested_dispatches: AtomicU64::new(0),
    accepts: AtomicU64::new(0),
    accept_failures: AtomicU64::new(0),
    calls: AtomicU64::new(0),
    notifies: AtomicU64::new(0),
    finalizes: AtomicU64::new(0),
    bhs: AtomicU64::new(0),
    timer_fires: AtomicU64::new(0),
    backoff_timers: AtomicU64::new(0),
    wait_loops: AtomicU64::new(0),
    released_in_dispatch: AtomicU64::new(0),
    private_watch_on_closed: AtomicU64::new(0),
    idle_dispatches: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

// ---------------------------------------------------------------------
// Events, for a checker (the reference model of tests/model.rs)

/// What a dispatch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A watch on a listening socket (private: one of wait_client's).
    Watch { chan: u64, private: bool },
    /// A timer; `hint` is the socket whose dispatch created it, if any.
    Timer { hint: Option<u64>, private: bool },
}

#[derive(Clone, Debug)]
pub enum Event {
    FrameStart {
        frame: u64,
        kind: FrameKind,
        ctx: Ctx,
    },
    /// `fails` has one entry per failed accept: whether a client was still
    /// queued after it.
    FrameEnd {
        frame: u64,
        kind: FrameKind,
        ctx: Ctx,
        accepts: u32,
        fails: Vec<bool>,
    },
    Accepted {
        chan: u64,
        conn: ConnId,
    },
    Call {
        reg: u64,
        conn: ConnId,
        from: u64,
        ctx: Option<Ctx>,
    },
    CallEnd {
        reg: u64,
    },
    Notify {
        reg: u64,
    },
    FinalizeBegin {
        listener: u64,
    },
    FinalizeEnd {
        listener: u64,
    },
    Closed {
        chan: u64,
    },
    Report(String),
}

/// Sees every event, in order, with the world as it is at that point.
pub trait Checker: Any + Send {
    fn event(&mut self, ev: &Event, w: &World) -> Result<(), String>;
}

// ---------------------------------------------------------------------
// The world

type Bh = Box<dyn FnOnce() + Send>;

/// A handler given to the host (watch or timer): what the listener's
/// handler and the channel it watches become, called through an `Arc`.
struct Tracked {
    id: u64,
    f: Box<dyn Fn() + Send + Sync>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.id;
        on_drop(move || {
            try_world(|w| w.handler_dropped(id));
        });
    }
}

type HArc = Arc<Tracked>;

struct HRec {
    calls: u32,
    host_released: bool,
}

enum ChanKind {
    Unbound,
    Listening {
        port: u16,
        backlog: usize,
        queue: VecDeque<ConnId>,
    },
    Accepted {
        conn: ConnId,
        from: u64,
        delivered: bool,
    },
}

struct ChanRec {
    refs: usize,
    kind: ChanKind,
    closed: bool,
    nonblocking: bool,
    name: Option<CString>,
}

enum SrcKind {
    Watch { chan: u64 },
    Timer { deadline: u64, hint: Option<u64> },
}

struct Source {
    kind: SrcKind,
    handler: Option<HArc>,
    handler_id: u64,
    dispatching: bool,
    destroyed: bool,
}

struct GRec {
    private: bool,
    quit: bool,
    kicked: bool,
    sources: BTreeMap<u64, Source>,
}

struct AioH {
    watch: u64,
    handler: HArc,
}

struct ATimer {
    deadline: u64,
    handler: HArc,
    fired: bool,
    hint: Option<u64>,
}

#[derive(Default)]
struct ARec {
    handlers: BTreeMap<u64, AioH>,
    bhs: VecDeque<Bh>,
    timers: BTreeMap<u64, ATimer>,
    kicked: bool,
}

struct LRec {
    refs: usize,
    finalizing: bool,
    finalized: u32,
    obj: Weak<LObj>,
}

#[derive(Default)]
struct RegRec {
    running: u32,
    calls: u64,
    notified: u32,
}

/// A dispatch in progress.
pub struct Frame {
    pub id: u64,
    thread: u64,
    pub kind: FrameKind,
    pub ctx: Ctx,
    handler: u64,
    pub accepts: u32,
    pub fails: Vec<bool>,
}

/// Something that happens at a virtual time.
pub enum Sched {
    Connect(ConnId, u16),
    Recover,
    Action(Box<dyn FnOnce() + Send>),
}

pub struct World {
    now: u64,
    next: u64,
    next_port: u16,
    next_gctx: u32,
    next_actx: u32,
    pending_panic: Option<String>,
    violations: Vec<String>,
    listeners: BTreeMap<u64, LRec>,
    chans: BTreeMap<u64, ChanRec>,
    ports: BTreeMap<u16, u64>,
    conns: BTreeMap<ConnId, ConnState>,
    gctxs: BTreeMap<GCtx, GRec>,
    actxs: BTreeMap<ACtx, ARec>,
    handlers: BTreeMap<u64, HRec>,
    regs: BTreeMap<u64, RegRec>,
    frames: Vec<Frame>,
    sched: BTreeMap<(u64, u64), Sched>,
    exhausted: bool,
    fail_accepts: u32,
    fail_nonblocking: u32,
    checker: Option<Box<dyn Checker>>,
    tearing_down: bool,
    released_in_dispatch: u64,
    flags: std::collections::BTreeSet<String>,
    /// Threads waiting in block_until, with what they wait for.
    sleepers: Vec<(u64, Pred)>,
}

fn new_grec(private: bool) -> GRec {
    GRec {
        private,
        quit: false,
        kicked: false,
        sources: BTreeMap::new(),
    }
}

impl World {
    fn new() -> World {
        let mut gctxs = BTreeMap::new();
        gctxs.insert(GCtx::DEFAULT, new_grec(false));
        let mut actxs = BTreeMap::new();
        actxs.insert(ACtx::MAIN, ARec::default());
        World {
            now: 0,
            next: 0,
            next_port: 1000,
            next_gctx: 1,
            next_actx: 1,
            pending_panic: None,
            violations: Vec::new(),
            listeners: BTreeMap::new(),
            chans: BTreeMap::new(),
            ports: BTreeMap::new(),
            conns: BTreeMap::new(),
            gctxs,
            actxs,
            handlers: BTreeMap::new(),
            regs: BTreeMap::new(),
            frames: Vec::new(),
            sched: BTreeMap::new(),
            exhausted: false,
            fail_accepts: 0,
            fail_nonblocking: 0,
            checker: None,
            tearing_down: false,
            released_in_dispatch: 0,
            flags: Default::default(),
            sleepers: Vec::new(),
        }
    }

    /// Records a broken rule; the world access that found it panics with
    /// `msg` once the world is unlocked.
    pub fn violation(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.pending_panic.is_none() {
            self.pending_panic = Some(format!("sim: violation: {msg}"));
        }
        self.violations.push(msg);
    }

    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn emit(&mut self, ev: Event) {
        if let Some(mut c) = self.checker.take() {
            let r = c.event(&ev, self);
            self.checker = Some(c);
            if let Err(msg) = r {
                self.violation(format!("model: {msg} (at {ev:?})"));
            }
        }
    }

    // --- queries for checkers and tests ---

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn tearing_down(&self) -> bool {
        self.tearing_down
    }

    pub fn queue(&self, chan: u64) -> Vec<ConnId> {
        match self.chans.get(&chan).map(|c| &c.kind) {
            Some(ChanKind::Listening { queue, .. }) => queue.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    pub fn port(&self, chan: u64) -> Option<u16> {
        match self.chans.get(&chan).map(|c| &c.kind) {
            Some(ChanKind::Listening { port, .. }) => Some(*port),
            _ => None,
        }
    }

    pub fn closed(&self, chan: u64) -> bool {
        self.chans.get(&chan).is_none_or(|c| c.closed)
    }

    pub fn chan_name(&self, chan: u64) -> Option<CString> {
        self.chans.get(&chan).and_then(|c| c.name.clone())
    }

    pub fn conn_state(&self, conn: ConnId) -> ConnState {
        self.conns.get(&conn).cloned().unwrap_or(ConnState::Refused)
    }

    /// The listener's watches (not wait_client's) on `chan`, live ones
    /// only (a destroyed source still dispatching does not count).
    pub fn async_watches(&self, chan: u64) -> Vec<Ctx> {
        let mut v = Vec::new();
        for (g, r) in &self.gctxs {
            if r.private {
                continue;
            }
            for s in r.sources.values() {
                if !s.destroyed && matches!(s.kind, SrcKind::Watch { chan: c } if c == chan) {
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

    /// wait_client's watches on any socket (live ones).
    pub fn private_watch_count(&self) -> usize {
        self.gctxs
            .values()
            .filter(|r| r.private)
            .flat_map(|r| r.sources.values())
            .filter(|s| !s.destroyed && matches!(s.kind, SrcKind::Watch { .. }))
            .count()
    }

    fn private_watches(&self, chan: u64) -> usize {
        self.gctxs
            .values()
            .filter(|r| r.private)
            .flat_map(|r| r.sources.values())
            .filter(|s| !s.destroyed && matches!(s.kind, SrcKind::Watch { chan: c } if c == chan))
            .count()
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

    pub fn pending_bhs(&self) -> usize {
        self.actxs.values().map(|a| a.bhs.len()).sum()
    }

    pub fn listener_refs(&self, id: u64) -> usize {
        self.listeners.get(&id).map_or(0, |l| l.refs)
    }

    pub fn finalized(&self, id: u64) -> u32 {
        self.listeners.get(&id).map_or(0, |l| l.finalized)
    }

    pub fn private_contexts(&self) -> usize {
        self.gctxs.values().filter(|g| g.private).count()
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn notified(&self, reg: u64) -> u32 {
        self.regs.get(&reg).map_or(0, |r| r.notified)
    }

    pub fn calls(&self, reg: u64) -> u64 {
        self.regs.get(&reg).map_or(0, |r| r.calls)
    }

    pub fn running(&self, reg: u64) -> u32 {
        self.regs.get(&reg).map_or(0, |r| r.running)
    }

    /// A test's own flag (threads of a shuttle test wait for them).
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    pub fn set_flag(&mut self, name: &str) {
        self.flags.insert(name.to_owned());
    }

    /// How often the host released a handler while a dispatch of it ran.
    pub fn released_in_dispatch(&self) -> u64 {
        self.released_in_dispatch
    }

    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    pub fn checker_mut<C: Checker>(&mut self) -> Option<&mut C> {
        let c: &mut dyn Any = self.checker.as_mut()?.as_mut();
        c.downcast_mut::<C>()
    }

    fn innermost(&mut self) -> Option<&mut Frame> {
        let t = thread_key();
        self.frames.iter_mut().rev().find(|f| f.thread == t)
    }

    // --- channels ---

    fn new_chan(&mut self, kind: ChanKind) -> u64 {
        let id = self.id();
        self.chans.insert(
            id,
            ChanRec {
                refs: 1,
                kind,
                closed: false,
                nonblocking: false,
                name: None,
            },
        );
        id
    }

    fn chan(&mut self, id: u64, what: &str) -> Option<&mut ChanRec> {
        match self.chans.get(&id) {
            Some(c) if c.refs > 0 => self.chans.get_mut(&id),
            _ => {
                self.violation(format!("{what} on channel {id} after its last reference"));
                None
            }
        }
    }

    fn chan_ref(&mut self, id: u64) {
        if let Some(c) = self.chan(id, "clone") {
            c.refs += 1;
        }
    }

    fn chan_unref(&mut self, id: u64) {
        let Some(c) = self.chan(id, "release") else {
            return;
        };
        c.refs -= 1;
        if c.refs > 0 {
            return;
        }
        let mut undelivered = None;
        let mut lost = Vec::new();
        match &mut c.kind {
            ChanKind::Accepted {
                conn,
                from,
                delivered: false,
            } => undelivered = Some((*conn, *from)),
            ChanKind::Listening { port, queue, .. } if !c.closed => {
                // QEMU's channel finalize closes the fd.
                c.closed = true;
                lost.extend(queue.drain(..));
                let port = *port;
                if self.ports.get(&port) == Some(&id) {
                    self.ports.remove(&port);
                }
            }
            _ => {}
        }
        for conn in lost {
            self.conns.insert(conn, ConnState::Lost);
        }
        if let Some((conn, from)) = undelivered {
            self.violation(format!(
                "client {conn} accepted on socket {from} and dropped without being handed \
                 to a callback or returned by wait_client"
            ));
        }
    }

    fn listen(&mut self, id: u64, addr: &Addr, backlog: i32) -> Result<(), String> {
        if addr.fail {
            return Err(format!("Failed to listen on port {}", addr.port));
        }
        let port = if addr.port == 0 {
            self.next_port += 1;
            self.next_port
        } else {
            addr.port
        };
        if self.ports.contains_key(&port) {
            return Err(format!("Address already in use: port {port}"));
        }
        let Some(c) = self.chan(id, "listen") else {
            return Err("released".into());
        };
        if !matches!(c.kind, ChanKind::Unbound) || c.closed {
            return Err("channel already used".into());
        }
        c.kind = ChanKind::Listening {
            port,
            backlog: backlog.max(1) as usize,
            queue: VecDeque::new(),
        };
        self.ports.insert(port, id);
        Ok(())
    }

    fn readable(&self, chan: u64) -> bool {
        match self.chans.get(&chan) {
            Some(ChanRec {
                closed: false,
                kind: ChanKind::Listening { queue, .. },
                ..
            }) => !queue.is_empty(),
            _ => false,
        }
    }

    fn accept(&mut self, id: u64) -> Option<u64> {
        enum Fail {
            Nothing,
            WouldBlock,
            NoFds,
            Spurious,
        }
        let exhausted = self.exhausted;
        let spurious = self.fail_accepts > 0;
        let c = self.chan(id, "accept")?;
        let blocking = !c.nonblocking;
        let result = match &mut c.kind {
            _ if c.closed => Err(Fail::Nothing),
            ChanKind::Listening { queue, .. } => match queue.front() {
                None if blocking => Err(Fail::WouldBlock),
                None => Err(Fail::Nothing),
                Some(_) if exhausted => Err(Fail::NoFds),
                Some(_) if spurious => Err(Fail::Spurious),
                Some(_) => Ok(queue.pop_front().expect("queued client")),
            },
            _ => Err(Fail::Nothing),
        };
        match result {
            Ok(conn) => {
                let ch = self.new_chan(ChanKind::Accepted {
                    conn,
                    from: id,
                    delivered: false,
                });
                self.conns.insert(conn, ConnState::Accepted(ch));
                if let Some(f) = self.innermost() {
                    f.accepts += 1;
                }
                bump(&STATS.accepts);
                self.emit(Event::Accepted { chan: id, conn });
                Some(ch)
            }
            Err(fail) => {
                match fail {
                    Fail::WouldBlock => self.violation(format!(
                        "accept() on blocking socket {id} with no client queued would block \
                         forever"
                    )),
                    Fail::Spurious => self.fail_accepts -= 1,
                    Fail::Nothing | Fail::NoFds => {}
                }
                let pending = self.readable(id);
                if let Some(f) = self.innermost() {
                    f.fails.push(pending);
                }
                bump(&STATS.accept_failures);
                None
            }
        }
    }

    fn close(&mut self, id: u64) {
        let Some(c) = self.chan(id, "close") else {
            return;
        };
        if c.closed {
            self.violation(format!("socket {id} closed twice"));
            return;
        }
        c.closed = true;
        let mut lost = Vec::new();
        let mut port = None;
        if let ChanKind::Listening { queue, port: p, .. } = &mut c.kind {
            lost.extend(queue.drain(..));
            port = Some(*p);
        }
        if let Some(p) = port {
            if self.ports.get(&p) == Some(&id) {
                self.ports.remove(&p);
            }
        }
        for conn in lost {
            self.conns.insert(conn, ConnState::Lost);
        }
        if !self.async_watches(id).is_empty() {
            self.violation(format!(
                "socket {id} closed while still watched (its fd number could be reused)"
            ));
        }
        self.emit(Event::Closed { chan: id });
    }

    pub fn connect_as(&mut self, conn: ConnId, port: u16) -> bool {
        let ok = match self.ports.get(&port).copied() {
            Some(chan) => match self.chans.get_mut(&chan) {
                Some(ChanRec {
                    closed: false,
                    kind: ChanKind::Listening { queue, backlog, .. },
                    ..
                }) if queue.len() < *backlog => {
                    queue.push_back(conn);
                    self.conns.insert(conn, ConnState::Queued(chan));
                    true
                }
                _ => false,
            },
            None => false,
        };
        if !ok {
            self.conns.insert(conn, ConnState::Refused);
        }
        ok
    }

    // --- handlers, sources, fd handlers, timers ---

    fn new_handler(&mut self, f: Box<dyn Fn() + Send + Sync>) -> HArc {
        let id = self.id();
        self.handlers.insert(
            id,
            HRec {
                calls: 0,
                host_released: false,
            },
        );
        Arc::new(Tracked { id, f })
    }

    fn handler_dropped(&mut self, id: u64) {
        match self.handlers.remove(&id) {
            None => self.violation(format!("handler {id} released twice")),
            Some(h) => {
                if h.calls > 0 {
                    self.violation(format!("handler {id} released while a dispatch runs it"));
                }
                if !h.host_released {
                    self.violation(format!("handler {id} released before the host let go"));
                }
            }
        }
    }

    fn host_release(&mut self, id: u64) {
        let (twice, running) = self.handlers.get_mut(&id).map_or((false, false), |h| {
            (std::mem::replace(&mut h.host_released, true), h.calls > 0)
        });
        if running {
            self.released_in_dispatch += 1;
            bump(&STATS.released_in_dispatch);
        }
        if twice {
            self.violation(format!("host released handler {id} twice"));
        }
    }

    /// A new watch on `chan`.  Two of the listener's GSource watches may
    /// exist for a moment (the old one is destroyed after the listener
    /// unlocks, see the host contract); a second fd handler in the same
    /// AioContext is caught when it is installed.
    ///
    /// The listener never watches a closed socket, except that a
    /// wait_client racing with a disconnect from another thread may create
    /// its private watches just after the close (it then returns NULL; in
    /// QEMU the closed channel's fd is -1, which poll ignores): counted.
    fn check_watchable(&mut self, chan: u64, private: bool) {
        let closed = self.chans.get(&chan).is_none_or(|c| c.closed);
        if closed && private {
            bump(&STATS.private_watch_on_closed);
        } else if closed {
            self.violation(format!("watching closed socket {chan}"));
        }
        let asyncs = self.async_watches(chan).len();
        if (private && asyncs > 0) || (!private && self.private_watches(chan) > 0) {
            self.violation(format!(
                "socket {chan} watched by wait_client and by an async watch at once"
            ));
        }
    }

    fn gctx(&mut self, g: GCtx) -> &mut GRec {
        if !self.gctxs.contains_key(&g) {
            self.violation(format!("GMainContext {g:?} used after it was freed"));
            self.gctxs.insert(g, new_grec(true));
        }
        self.gctxs.get_mut(&g).expect("context")
    }

    fn actx(&mut self, a: ACtx) -> &mut ARec {
        if !self.actxs.contains_key(&a) {
            self.violation(format!("unknown AioContext {a:?}"));
            self.actxs.insert(a, ARec::default());
        }
        self.actxs.get_mut(&a).expect("context")
    }

    fn add_source(&mut self, g: GCtx, kind: SrcKind, h: HArc) -> u64 {
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
            },
        );
        sid
    }

    /// g_source_destroy: releases the handler now unless it is being
    /// dispatched (then when that dispatch returns).
    fn destroy_source(&mut self, g: GCtx, sid: u64) -> Option<HArc> {
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
        let s = r.sources.remove(&sid).expect("source");
        self.host_release(s.handler_id);
        s.handler
    }

    fn glib_ready(&self, g: GCtx) -> Vec<u64> {
        let Some(r) = self.gctxs.get(&g) else {
            return Vec::new();
        };
        r.sources
            .iter()
            .filter(|(_, s)| !s.destroyed && !s.dispatching)
            .filter(|(_, s)| match s.kind {
                SrcKind::Watch { chan } => self.readable(chan),
                SrcKind::Timer { deadline, .. } => deadline <= self.now,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn source_begin(&mut self, g: GCtx, sid: u64) -> Option<(HArc, FrameKind)> {
        let private = self.gctxs.get(&g)?.private;
        let s = self.gctxs.get_mut(&g)?.sources.get_mut(&sid)?;
        if s.destroyed || s.dispatching {
            return None;
        }
        s.dispatching = true;
        let kind = match s.kind {
            SrcKind::Watch { chan } => FrameKind::Watch { chan, private },
            SrcKind::Timer { hint, .. } => {
                bump(&STATS.timer_fires);
                FrameKind::Timer { hint, private }
            }
        };
        Some((s.handler.clone().expect("handler"), kind))
    }

    fn source_end(&mut self, g: GCtx, sid: u64) -> Option<HArc> {
        let r = self.gctxs.get_mut(&g)?;
        let s = r.sources.get_mut(&sid)?;
        s.dispatching = false;
        if matches!(s.kind, SrcKind::Timer { .. }) {
            // One-shot: G_SOURCE_REMOVE.
            s.destroyed = true;
        }
        if !s.destroyed {
            return None;
        }
        let s = r.sources.remove(&sid).expect("source");
        self.host_release(s.handler_id);
        s.handler
    }

    fn frame_start(&mut self, h: &HArc, kind: FrameKind, ctx: Ctx) -> u64 {
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
        });
        self.emit(Event::FrameStart {
            frame: id,
            kind,
            ctx,
        });
        id
    }

    /// Ends a dispatch; true if it was a watch's and did nothing at all.
    fn frame_end(&mut self, id: u64) -> bool {
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
        });
        idle
    }

    fn aio_ready(&self, a: ACtx) -> Vec<(u64, u64)> {
        self.actxs.get(&a).map_or(Vec::new(), |r| {
            r.handlers
                .iter()
                .filter(|(chan, _)| self.readable(**chan))
                .map(|(chan, h)| (*chan, h.watch))
                .collect()
        })
    }

    fn aio_due(&mut self, a: ACtx) -> Option<(HArc, Option<u64>)> {
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

    fn aio_has_work(&self, a: ACtx) -> bool {
        let Some(r) = self.actxs.get(&a) else {
            return false;
        };
        !r.bhs.is_empty()
            || r.handlers.keys().any(|c| self.readable(*c))
            || r.timers
                .values()
                .any(|t| !t.fired && t.deadline <= self.now)
    }

    fn next_deadline_aio(&self, a: ACtx) -> Option<u64> {
        self.actxs
            .get(&a)?
            .timers
            .values()
            .filter(|t| !t.fired)
            .map(|t| t.deadline)
            .min()
    }

    fn next_deadline_glib(&self, g: GCtx) -> Option<u64> {
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

    fn glib_has_work(&self, g: GCtx) -> bool {
        !self.glib_ready(g).is_empty()
    }

    fn frame_hint(&mut self) -> Option<u64> {
        match self.innermost()?.kind {
            FrameKind::Watch {
                chan,
                private: false,
            } => Some(chan),
            _ => None,
        }
    }

    // --- listeners ---

    fn owner_ref(&mut self, id: u64) {
        match self.listeners.get_mut(&id) {
            Some(l) if l.refs > 0 && !l.finalizing => l.refs += 1,
            _ => self.violation(format!("reference taken on listener {id} after finalize")),
        }
    }

    /// Drops a reference; true if it was the last (finalize starts).
    fn owner_unref(&mut self, id: u64) -> bool {
        let Some(l) = self.listeners.get_mut(&id) else {
            return false;
        };
        if l.refs == 0 {
            self.violation(format!("listener {id} unreferenced after finalize"));
            return false;
        }
        l.refs -= 1;
        if l.refs > 0 {
            return false;
        }
        l.finalizing = true;
        self.emit(Event::FinalizeBegin { listener: id });
        true
    }

    fn owner_use(&mut self, id: u64) {
        match self.listeners.get(&id) {
            Some(l) if l.refs > 0 && !l.finalizing => {}
            _ => self.violation(format!("listener {id} used after finalize")),
        }
    }

    fn finalized_now(&mut self, id: u64) {
        if let Some(l) = self.listeners.get_mut(&id) {
            l.finalized += 1;
            if l.finalized > 1 {
                self.violation(format!("listener {id} finalized twice"));
            }
        }
        bump(&STATS.finalizes);
        self.emit(Event::FinalizeEnd { listener: id });
    }

    // --- registrations ---

    fn reg(&mut self, id: u64) -> &mut RegRec {
        self.regs.entry(id).or_default()
    }

    // --- leak check ---

    fn leaks(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (id, l) in &self.listeners {
            if l.refs > 0 {
                v.push(format!("listener {id} still has {} references", l.refs));
            } else if l.finalized != 1 {
                v.push(format!("listener {id} finalized {} times", l.finalized));
            }
        }
        for (id, c) in &self.chans {
            if c.refs > 0 {
                v.push(format!("channel {id} still has {} references", c.refs));
            }
        }
        if !self.handlers.is_empty() {
            v.push(format!("{} handlers never released", self.handlers.len()));
        }
        for (g, r) in &self.gctxs {
            if r.private {
                v.push(format!("private context {g:?} never freed"));
            }
            if !r.sources.is_empty() {
                v.push(format!("{} sources left on {g:?}", r.sources.len()));
            }
        }
        for (a, r) in &self.actxs {
            if !r.handlers.is_empty() || !r.bhs.is_empty() || !r.timers.is_empty() {
                v.push(format!(
                    "{a:?}: {} fd handlers, {} BHs, {} timers left",
                    r.handlers.len(),
                    r.bhs.len(),
                    r.timers.len()
                ));
            }
        }
        for (id, r) in &self.regs {
            if r.running > 0 {
                v.push(format!("registration {id} still running"));
            }
        }
        if !self.frames.is_empty() {
            v.push(format!("{} dispatches still running", self.frames.len()));
        }
        v
    }
}

// ---------------------------------------------------------------------
// World access

enum WorldLock {
    /// The state machine's lock type: with shuttle, every world access
    /// (host call) is a scheduling point.
    Fine(Mutex<World>),
    /// A plain lock (shuttle only): host calls are atomic and the only
    /// scheduling points are the state machine's own locks and atomics
    /// (and thread spawn/join/park), so DFS can exhaust small cases.  No
    /// shuttle operation ever runs while it is held.
    #[cfg(feature = "shuttle")]
    Coarse(std::sync::Mutex<World>),
}

struct Shared {
    lock: WorldLock,
    /// Where threads wait for the world to change (shuttle): a condvar,
    /// which unlike `park` never wakes spuriously, so all threads waiting
    /// is a deadlock that shuttle reports, and DFS schedules are finite.
    #[cfg(feature = "shuttle")]
    gate: (shuttle::sync::Mutex<()>, shuttle::sync::Condvar),
}

// The world of the test running on this OS thread.  Shuttle runs all of
// an execution's threads as coroutines on the thread that called
// shuttle::check_*, so they share it.
std::thread_local! {
    static CURRENT: RefCell<Slot> = const { RefCell::new(Slot(None)) };
}

/// A world still installed when its thread exits belongs to a failed run
/// (with shuttle, dropping it outside an execution would panic): leaked.
struct Slot(Option<Arc<Shared>>);

impl Drop for Slot {
    fn drop(&mut self) {
        std::mem::forget(self.0.take());
    }
}

per_thread! {
    // Per (shuttle) thread: inside a world access, and what handle drops
    // inside one must do once it ends.
    static IN_WORLD: Cell<bool> = const { Cell::new(false) };
    static DEFERRED: RefCell<VecDeque<Box<dyn FnOnce()>>> = const { RefCell::new(VecDeque::new()) };
}

fn shared() -> Option<Arc<Shared>> {
    CURRENT.with(|c| c.borrow().0.clone())
}

#[cfg(feature = "shuttle")]
fn thread_key() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shuttle::thread::current().id().hash(&mut h);
    h.finish()
}

#[cfg(not(feature = "shuttle"))]
fn thread_key() -> u64 {
    0
}

/// Runs `f` on the world (None if no world is installed, e.g. while a
/// failed test's world is being discarded).  A violation found by `f`
/// panics once the world is unlocked.
pub fn try_world<R>(f: impl FnOnce(&mut World) -> R) -> Option<R> {
    access(true, f)
}

fn access<R>(wake: bool, f: impl FnOnce(&mut World) -> R) -> Option<R> {
    assert!(
        !IN_WORLD.with(Cell::get),
        "sim bug: world accessed re-entrantly"
    );
    let sh = shared()?;
    let run = |w: &mut World| {
        IN_WORLD.with(|c| c.set(true));
        let r = f(w);
        IN_WORLD.with(|c| c.set(false));
        // Wake the waiters only when one of them can go on: a scheduling
        // point only where it matters (keeps DFS small).
        let notify = wake && !w.sleepers.is_empty() && {
            let sleepers = std::mem::take(&mut w.sleepers);
            let any = sleepers.iter().any(|(_, p)| p(w));
            w.sleepers = sleepers;
            any
        };
        (r, w.pending_panic.take(), notify)
    };
    let (r, msg, notify) = match &sh.lock {
        WorldLock::Fine(m) => run(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
        #[cfg(feature = "shuttle")]
        WorldLock::Coarse(m) => run(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
    };
    #[cfg(feature = "shuttle")]
    if notify {
        let _g = sh.gate.0.lock().unwrap_or_else(|e| e.into_inner());
        sh.gate.1.notify_all();
    }
    #[cfg(not(feature = "shuttle"))]
    let _ = notify;
    if let Some(m) = msg {
        if !std::thread::panicking() {
            // The first violation wins: the world is discarded anyway.
            DEFERRED.with(|d| d.borrow_mut().clear());
            panic!("{m}");
        }
    }
    run_deferred();
    Some(r)
}

/// Runs `f` on the world; panics if none is installed.
pub fn world<R>(f: impl FnOnce(&mut World) -> R) -> R {
    try_world(f).expect("no simulated world installed (sim::begin)")
}

fn run_deferred() {
    while let Some(f) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
        f();
    }
}

/// What a handle's Drop does: now, or after the world access in progress
/// (a handle dropped by the sim's own bookkeeping).
fn on_drop(f: impl FnOnce() + 'static) {
    if IN_WORLD.with(Cell::get) {
        DEFERRED.with(|d| d.borrow_mut().push_back(Box::new(f)));
    } else {
        f();
    }
}

/// A condition a thread waits for.
type Pred = Arc<dyn Fn(&mut World) -> bool + Send + Sync>;

/// Waits (shuttle) until `pred` holds; without shuttle nothing else can
/// change the world, so this is a hang: recorded as a violation.
pub fn block_until(what: &str, pred: impl Fn(&mut World) -> bool + Send + Sync + 'static) {
    #[cfg(feature = "shuttle")]
    {
        let _ = what;
        let sh = shared().expect("world");
        let pred: Pred = Arc::new(pred);
        let mut me = None;
        loop {
            // Checked with the gate held: a change made after the check
            // notifies only once this thread waits (no lost wakeup).
            let gate = sh.gate.0.lock().unwrap_or_else(|e| e.into_inner());
            let ok = access(false, |w| {
                if let Some(id) = me.take() {
                    w.sleepers.retain(|(s, _)| *s != id);
                }
                let ok = pred(w);
                if !ok {
                    let id = w.id();
                    w.sleepers.push((id, pred.clone()));
                    me = Some(id);
                }
                ok
            })
            .expect("world");
            if ok {
                return;
            }
            drop(sh.gate.1.wait(gate).unwrap_or_else(|e| e.into_inner()));
        }
    }
    #[cfg(not(feature = "shuttle"))]
    world(|w| {
        if !pred(w) {
            w.violation(format!(
                "{what} would block forever: nothing can make progress"
            ));
        }
    });
}

/// A fresh world for one test (or one shuttle execution), installed for
/// this thread until `finish` or drop.
pub fn begin() -> SimGuard {
    install(WorldLock::Fine(Mutex::new(World::new())))
}

/// A world whose host calls are atomic (see WorldLock::Coarse).
#[cfg(feature = "shuttle")]
pub fn begin_coarse() -> SimGuard {
    install(WorldLock::Coarse(std::sync::Mutex::new(World::new())))
}

fn install(lock: WorldLock) -> SimGuard {
    IN_WORLD.with(|c| c.set(false));
    DEFERRED.with(|d| d.borrow_mut().clear());
    // A failed run's world (e.g. a shuttle execution torn down without
    // unwinding): discard it without running what it holds.
    std::mem::forget(CURRENT.with(|c| c.borrow_mut().0.take()));
    let sh = Arc::new(Shared {
        lock,
        #[cfg(feature = "shuttle")]
        gate: (shuttle::sync::Mutex::new(()), shuttle::sync::Condvar::new()),
    });
    CURRENT.with(|c| c.borrow_mut().0 = Some(sh));
    SimGuard { done: false }
}

pub struct SimGuard {
    done: bool,
}

impl SimGuard {
    /// Tears down what is left (disconnects live listeners through a
    /// reference of the test harness's own, drains every context), then
    /// checks that every handle was released exactly once and nothing is
    /// left.  The caller must have dropped its own handles first.
    pub fn finish(mut self) {
        self.teardown();
        let leaks = world(|w| w.leaks());
        assert!(leaks.is_empty(), "sim: left at the end: {leaks:#?}");
        let v = world(|w| w.violations.clone());
        assert!(v.is_empty(), "sim: violations: {v:#?}");
        self.done = true;
        let sh = CURRENT.with(|c| c.borrow_mut().0.take());
        drop(sh);
    }

    /// The first half of `finish`: after it, checkers may look at the
    /// final state.  Idempotent.
    pub fn teardown(&mut self) {
        if world(|w| std::mem::replace(&mut w.tearing_down, true)) {
            return;
        }
        let sched = world(|w| std::mem::take(&mut w.sched));
        drop(sched);
        let live: Vec<u64> = world(|w| {
            w.listeners
                .iter()
                .filter(|(_, l)| l.refs > 0)
                .map(|(id, _)| *id)
                .collect()
        });
        for id in live {
            let obj = world(|w| w.listeners.get(&id).and_then(|l| l.obj.upgrade()));
            if let Some(obj) = obj {
                world(|w| w.owner_ref(id));
                let owner = Owner { id, obj: Some(obj) };
                owner.listener().disconnect();
                drop(owner);
            }
        }
        drain_all(1000);
    }
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A failed test: discard its world without running what it holds
        // (handles dropped later find no world and do nothing).
        let sh = CURRENT.with(|c| c.borrow_mut().0.take());
        std::mem::forget(sh);
        IN_WORLD.with(|c| c.set(false));
        DEFERRED.with(|d| d.borrow_mut().clear());
    }
}

/// Installs a checker that sees every event.
pub fn set_checker(c: Box<dyn Checker>) {
    world(|w| w.checker = Some(c));
}

/// Runs `f` on the installed checker of type C (with the world).
pub fn with_checker<C: Checker, R>(f: impl FnOnce(&mut C, &World) -> Result<R, String>) -> R {
    let r = world(|w| {
        let mut c = w.checker.take().expect("no checker");
        let r = {
            let any: &mut dyn Any = c.as_mut();
            f(any.downcast_mut::<C>().expect("checker type"), w)
        };
        w.checker = Some(c);
        match r {
            Ok(r) => Some(r),
            Err(msg) => {
                w.violation(format!("model: {msg}"));
                None
            }
        }
    });
    r.expect("checker failed")
}

// ---------------------------------------------------------------------
// Test-side operations

pub fn now() -> u64 {
    world(|w| w.now)
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

/// A new listener object with one reference (the caller's).
pub fn new_listener() -> Owner {
    let id = world(|w| w.id());
    let obj = Arc::new(LObj {
        id,
        listener: Listener::new(),
    });
    let weak = Arc::downgrade(&obj);
    world(|w| {
        w.listeners.insert(
            id,
            LRec {
                refs: 1,
                finalizing: false,
                finalized: 0,
                obj: weak,
            },
        )
    });
    Owner { id, obj: Some(obj) }
}

/// A new listener with one socket opened on any port: (its reference,
/// the socket's channel id, the port).
pub fn listener_with_socket() -> (Owner, u64, u16) {
    let owner = new_listener();
    let addr = Addr {
        port: 0,
        fail: false,
    };
    owner.listener().open(&owner, &[addr], 16).expect("open");
    let sock = owner.listener().sioc(0).expect("socket").id();
    let port = world(|w| w.port(sock)).expect("port");
    (owner, sock, port)
}

/// A channel listening on `port` (0: any), blocking as QEMU's
/// listen_sync and socket activation give them.
pub fn listening_channel(port: u16) -> Channel {
    let ch = Sim::new_channel();
    let r = world(|w| w.listen(ch.id, &Addr { port, fail: false }, 16));
    r.expect("listen");
    ch
}

/// A client connects to `port`; None if refused.
pub fn connect(port: u16) -> Option<ConnId> {
    world(|w| {
        let c = w.id();
        w.connect_as(c, port).then_some(c)
    })
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

/// The client resets while queued: it leaves the accept queue.
pub fn reset(conn: ConnId) -> bool {
    world(|w| {
        let Some(ConnState::Queued(chan)) = w.conns.get(&conn).cloned() else {
            return false;
        };
        if let Some(ChanRec {
            kind: ChanKind::Listening { queue, .. },
            ..
        }) = w.chans.get_mut(&chan)
        {
            queue.retain(|c| *c != conn);
        }
        w.conns.insert(conn, ConnState::Reset);
        true
    })
}

pub fn exhaust_fds() {
    world(|w| w.exhausted = true);
}

pub fn restore_fds() {
    world(|w| w.exhausted = false);
}

/// The next `n` accepts that would succeed fail (a client still queued).
pub fn fail_accepts(n: u32) {
    world(|w| w.fail_accepts = n);
}

/// The next `n` set_nonblocking calls fail.
pub fn fail_nonblocking(n: u32) {
    world(|w| w.fail_nonblocking = n);
}

/// Marks the client of `ch` as handed to the test (wait_client's result).
pub fn claim(ch: &Channel) -> ConnId {
    world(|w| w.claim(ch.id))
}

impl World {
    fn claim(&mut self, id: u64) -> ConnId {
        match self.chans.get_mut(&id).map(|c| &mut c.kind) {
            Some(ChanKind::Accepted {
                conn, delivered, ..
            }) => {
                let conn = *conn;
                let twice = std::mem::replace(delivered, true);
                if twice {
                    self.violation(format!("client {conn} delivered twice"));
                }
                self.conns.insert(conn, ConnState::Delivered(id));
                conn
            }
            _ => {
                self.violation(format!("channel {id} is not an accepted client"));
                0
            }
        }
    }
}

/// Advances the virtual clock to `t`, running the scheduled events due on
/// the way (in the calling thread).
pub fn advance_to(t: u64) {
    loop {
        let next = world(|w| {
            let k = w.sched.keys().next().copied().filter(|(at, _)| *at <= t);
            match k {
                Some(k) => {
                    w.now = w.now.max(k.0);
                    w.sched.remove(&k)
                }
                None => {
                    w.now = w.now.max(t);
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

pub fn advance(ms: u64) {
    advance_to(now() + ms);
}

/// A dispatch: the host calls the handler through its own reference.
fn dispatch(h: HArc, kind: FrameKind, ctx: Ctx) {
    let fid = world(|w| w.frame_start(&h, kind, ctx));
    (h.f)();
    let idle = world(|w| w.frame_end(fid));
    drop(h);
    if idle {
        // The handler did nothing (a watch whose registration is no longer
        // current, still ready until the thread that replaced it destroys
        // the source): the loop busy-waits on it.  An OS scheduler is fair
        // to the other thread; tell shuttle so (PCT would starve it).
        bump(&STATS.idle_dispatches);
        #[cfg(feature = "shuttle")]
        shuttle::thread::yield_now();
    }
}

/// One non-blocking iteration of a GMainContext; true if anything ran.
pub fn iterate(g: GCtx) -> bool {
    let ready = world(|w| w.glib_ready(g));
    let mut progress = false;
    for sid in ready {
        let Some((h, kind)) = world(|w| w.source_begin(g, sid)) else {
            continue;
        };
        progress = true;
        dispatch(h, kind, Ctx::G(g));
        let released = world(|w| w.source_end(g, sid));
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

/// Makes a blocking iteration of `g` return (g_main_context_wakeup).
pub fn glib_kick(g: GCtx) {
    world(|w| w.gctx(g).kicked = true);
}

fn aio_dispatch(a: ACtx) -> bool {
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
                .map(|h| h.handler.clone())
        });
        if let Some(h) = h {
            progress = true;
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

/// Makes a blocking aio_poll of `a` return (aio_notify).
pub fn aio_kick(a: ACtx) {
    world(|w| w.actx(a).kicked = true);
}

/// Runs every AioContext and (non-private) GMainContext until nothing
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

// ---------------------------------------------------------------------
// The Host implementation

pub struct Sim;

/// A resolved address: a port (0: any), or one that fails to listen.
#[derive(Clone, Copy, Debug)]
pub struct Addr {
    pub port: u16,
    pub fail: bool,
}

/// A channel reference (QIOChannelSocket).
pub struct Channel {
    id: u64,
}

impl Channel {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Clone for Channel {
    fn clone(&self) -> Self {
        world(|w| w.chan_ref(self.id));
        Channel { id: self.id }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let id = self.id;
        on_drop(move || {
            try_world(|w| w.chan_unref(id));
        });
    }
}

impl SocketChannel for Channel {
    fn same(&self, other: &Self) -> bool {
        self.id == other.id
    }

    fn accept(&self) -> Option<Self> {
        world(|w| w.accept(self.id)).map(|id| Channel { id })
    }

    fn pending(&self) -> bool {
        world(|w| {
            w.chan(self.id, "pending");
            w.readable(self.id)
        })
    }

    fn close(&self) {
        world(|w| w.close(self.id));
    }

    fn shutdown(&self) {
        world(|w| {
            w.chan(self.id, "shutdown");
        });
    }

    fn set_name(&self, name: &CStr) {
        world(|w| {
            if let Some(c) = w.chan(self.id, "set_name") {
                c.name = Some(name.to_owned());
            }
        });
    }

    fn set_nonblocking(&self) -> bool {
        world(|w| {
            if w.fail_nonblocking > 0 {
                w.fail_nonblocking -= 1;
                return false;
            }
            match w.chan(self.id, "set_nonblocking") {
                Some(c) => {
                    c.nonblocking = true;
                    true
                }
                None => false,
            }
        })
    }
}

/// The listener object: what QOM's instance is.
pub struct LObj {
    id: u64,
    listener: Listener<Sim>,
}

/// A counted reference to a listener object (QOM reference).  The last
/// one finalizes it (drops the `Listener<Sim>`).
pub struct Owner {
    id: u64,
    obj: Option<Arc<LObj>>,
}

impl Owner {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn listener(&self) -> &Listener<Sim> {
        world(|w| w.owner_use(self.id));
        &self.obj.as_ref().expect("owner used in its drop").listener
    }
}

impl Clone for Owner {
    fn clone(&self) -> Self {
        world(|w| w.owner_ref(self.id));
        Owner {
            id: self.id,
            obj: self.obj.clone(),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let id = self.id;
        let Some(obj) = self.obj.take() else {
            return;
        };
        on_drop(move || {
            // A reference that is not the last lets go of the object under
            // the world's lock, together with its count: otherwise the last
            // one, dropped meanwhile in another thread, would find the
            // object still held here.
            let mut obj = Some(obj);
            let last = try_world(|w| {
                let last = w.owner_unref(id);
                if !last {
                    obj = None;
                }
                last
            })
            .unwrap_or(false);
            let Some(obj) = obj.filter(|_| last) else {
                return;
            };
            if Arc::strong_count(&obj) != 1 {
                try_world(|w| {
                    w.violation(format!(
                        "listener {id}: last reference dropped while the object is held \
                         elsewhere"
                    ))
                });
            }
            drop(obj); // finalize: Listener::drop
            try_world(|w| w.finalized_now(id));
        });
    }
}

/// The user's registration (func, data, notify): `func` is what the test
/// wants done inside the callback.
pub type Func = Arc<dyn Fn(&Owner, &Channel) + Send + Sync>;

#[derive(Clone)]
pub struct Client {
    id: u64,
    func: Option<Func>,
}

impl Client {
    /// A registration; its id tells it apart (QEMU compares the triple by
    /// address: a clone is "the identical tuple").
    pub fn new(func: Option<Func>) -> Client {
        Client::new_with(|_| func)
    }

    /// A registration whose func is made knowing the registration's id.
    pub fn new_with(make: impl FnOnce(u64) -> Option<Func>) -> Client {
        let id = world(|w| {
            let id = w.id();
            w.regs.insert(id, RegRec::default());
            id
        });
        Client { id, func: make(id) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl ClientCallback<Sim> for Client {
    fn none() -> Self {
        Client { id: 0, func: None }
    }

    fn has_func(&self) -> bool {
        self.func.is_some()
    }

    fn same(&self, other: &Self) -> bool {
        self.id == other.id
    }

    fn call(&self, owner: &Owner, client: &Channel) {
        let reg = self.id;
        let has_func = self.func.is_some();
        world(|w| {
            if w.reg(reg).notified > 0 {
                w.violation(format!("registration {reg} called after its notify"));
            }
            if !has_func {
                w.violation(format!(
                    "registration {reg} without func called: its client is dropped"
                ));
            }
            let r = w.reg(reg);
            r.running += 1;
            r.calls += 1;
            let (conn, from) = match w.chans.get(&client.id).map(|c| &c.kind) {
                Some(ChanKind::Accepted { conn, from, .. }) => (*conn, *from),
                _ => (0, 0),
            };
            w.claim(client.id);
            let ctx = w.innermost().map(|f| f.ctx);
            bump(&STATS.calls);
            w.emit(Event::Call {
                reg,
                conn,
                from,
                ctx,
            });
        });
        if let Some(f) = &self.func {
            f(owner, client);
        }
        world(|w| {
            w.reg(reg).running -= 1;
            w.emit(Event::CallEnd { reg });
        });
    }

    fn notify(&self) {
        let reg = self.id;
        world(|w| {
            if reg == 0 {
                w.violation("notify of the empty registration");
            }
            let r = w.reg(reg);
            let running = r.running;
            r.notified += 1;
            let n = r.notified;
            if running > 0 {
                w.violation(format!(
                    "notify of registration {reg} while {running} call(s) of it run"
                ));
            }
            if n > 1 {
                w.violation(format!("notify of registration {reg} called {n} times"));
            }
            bump(&STATS.notifies);
            w.emit(Event::Notify { reg });
        });
    }
}

/// A GSource watch: dropping it destroys the source.
pub struct SourceWatch {
    ctx: GCtx,
    sid: u64,
}

impl Drop for SourceWatch {
    fn drop(&mut self) {
        let (g, sid) = (self.ctx, self.sid);
        on_drop(move || {
            let h = try_world(|w| {
                if w.gctxs
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

/// An AioContext fd handler: dropping it removes the handler and
/// releases it in a BH of that context.
pub struct AioWatch {
    ctx: ACtx,
    chan: u64,
    watch: u64,
}

impl Drop for AioWatch {
    fn drop(&mut self) {
        let (a, chan, watch) = (self.ctx, self.chan, self.watch);
        on_drop(move || {
            try_world(|w| {
                let r = w.actx(a);
                match r.handlers.get(&chan) {
                    Some(h) if h.watch == watch => {
                        let h = r.handlers.remove(&chan).expect("handler").handler;
                        let id = h.id;
                        r.bhs.push_back(Box::new(move || {
                            try_world(|w| w.host_release(id));
                            drop(h);
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
                            try_world(|w| w.host_release(hid));
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

/// wait_client's private loop.
pub struct SimLoop {
    ctx: GCtx,
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

/// A host error: the message, once set.
#[derive(Debug)]
pub struct SimError(pub Option<String>);

impl HostError for SimError {
    fn new() -> Self {
        SimError(None)
    }

    fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn with_message(msg: &str) -> Self {
        SimError(Some(msg.to_owned()))
    }
}

impl ListenerHost for Sim {
    fn listener(owner: &Owner) -> &Listener<Sim> {
        owner.listener()
    }
}

impl Host for Sim {
    type Channel = Channel;
    type Owner = Owner;
    type Client = Client;
    type GlibCtx = GCtx;
    type AioCtx = ACtx;
    type SourceWatch = SourceWatch;
    type AioWatch = AioWatch;
    type Timer = Timer;
    type WaitLoop = SimLoop;
    type Error = SimError;
    type Address = Addr;

    fn new_channel() -> Channel {
        Channel {
            id: world(|w| w.new_chan(ChanKind::Unbound)),
        }
    }

    fn listen(channel: &Channel, addr: &Addr, backlog: i32, err: Option<&mut SimError>) -> bool {
        match world(|w| w.listen(channel.id, addr, backlog)) {
            Ok(()) => true,
            Err(msg) => {
                if let Some(e) = err {
                    e.0 = Some(msg);
                }
                false
            }
        }
    }

    fn watch_source<R: ReadyHandler<Self>>(
        channel: &Channel,
        ctx: GCtx,
        handler: R,
    ) -> SourceWatch {
        let ch = channel.clone();
        let f: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            handler.ready(&ch);
        });
        let chan = channel.id;
        let sid = world(|w| {
            let private = w.gctx(ctx).private;
            w.check_watchable(chan, private);
            let h = w.new_handler(f);
            w.add_source(ctx, SrcKind::Watch { chan }, h)
        });
        SourceWatch { ctx, sid }
    }

    fn watch_aio<R: ReadyHandler<Self>>(channel: &Channel, ctx: ACtx, handler: R) -> AioWatch {
        let ch = channel.clone();
        let f: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            handler.ready(&ch);
        });
        let chan = channel.id;
        let watch = world(|w| {
            w.check_watchable(chan, false);
            let h = w.new_handler(f);
            let watch = w.id();
            if let Some(old) = w
                .actx(ctx)
                .handlers
                .insert(chan, AioH { watch, handler: h })
            {
                // QEMU replaces it; its release never comes.
                w.violation(format!(
                    "fd handler for socket {chan} installed over another one"
                ));
                drop(old);
            }
            watch
        });
        AioWatch { ctx, chan, watch }
    }

    fn timer_glib<T: TimerHandler>(ctx: GCtx, ms: u32, handler: T) -> Timer {
        let f: Box<dyn Fn() + Send + Sync> = Box::new(move || handler.fire());
        let sid = world(|w| {
            let hint = w.frame_hint();
            if hint.is_some() {
                bump(&STATS.backoff_timers);
            }
            let h = w.new_handler(f);
            let deadline = w.now + u64::from(ms);
            w.add_source(ctx, SrcKind::Timer { deadline, hint }, h)
        });
        Timer::Glib { ctx, sid }
    }

    fn timer_aio<T: TimerHandler>(ctx: ACtx, ms: u32, handler: T) -> Timer {
        let f: Box<dyn Fn() + Send + Sync> = Box::new(move || handler.fire());
        let tid = world(|w| {
            let hint = w.frame_hint();
            if hint.is_some() {
                bump(&STATS.backoff_timers);
            }
            let h = w.new_handler(f);
            let tid = w.id();
            let deadline = w.now + u64::from(ms);
            w.actx(ctx).timers.insert(
                tid,
                ATimer {
                    deadline,
                    handler: h,
                    fired: false,
                    hint,
                },
            );
            tid
        });
        Timer::Aio { ctx, tid }
    }

    fn report(msg: &str) {
        let msg = msg.to_owned();
        world(|w| {
            w.violation(format!("host report: {msg}"));
            w.emit(Event::Report(msg));
        });
    }
}
