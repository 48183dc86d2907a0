//! A deterministic simulated host for the listener's state machine
//! (`Listener<Sim>`), for `tests/model.rs` (seeded sequences against a
//! reference model) and `tests/concurrency.rs` (shuttle).
//!
//! It models, in safe Rust and on a virtual clock:
//! - `GMainContext`s (the default one, others, and `wait_client`'s private
//!   ones) with `GSource` semantics: a source's callback data is held for
//!   each dispatch (the dispatch calls through its own `Arc` clone); a
//!   source destroyed during its dispatch is released when that dispatch
//!   returns, otherwise at once in the destroying thread; a source being
//!   dispatched is blocked (not re-entered by nested iterations); sources
//!   found ready when an iteration starts are dispatched unless destroyed
//!   meanwhile (readiness is not re-checked, as `GLib`'s poll).  Iterating
//!   the default context also dispatches the main `AioContext`, as QEMU's
//!   main loop attaches it there as a (recursive) `GSource`.
//! - `AioContext`s: fd handlers keyed by (context, socket), one-shot bottom
//!   halves, `aio_poll` running BHs, then the handlers that were ready at
//!   its start (and still installed), then expired timers.  Nested
//!   `aio_poll` from inside a handler runs BHs and may re-enter the same
//!   handler, as QEMU's does.  Removing a handler stops new dispatches at
//!   once; its registered reference is released by a BH in that context
//!   (what `QemuHost` does), so a nested `aio_poll` inside a dispatch runs
//!   that release while the dispatch still holds its own reference.
//! - Timers (`GLib` timeout sources and `QEMUTimer`s), fired by iteration or
//!   `aio_poll` once the virtual clock reaches their deadline.
//! - Listening sockets with a backlog-bounded accept queue, clients that
//!   connect (queued) or reset (dropped from the queue), `accept` that pops
//!   the oldest or fails, fd exhaustion on demand (accept fails, the client
//!   stays queued, `pending()` stays true) and recovery, spurious accept
//!   failures, `close`, `shutdown` (accept fails at once, nothing is
//!   readable), `set_name`, `set_nonblocking` (and its failure).
//! - fd numbers (`fds`): every open channel holds one, lowest free first,
//!   released by close and reused at once; accept and the "still queued?"
//!   poll read the number and then act on whichever socket holds it (two
//!   world accesses, so in shuttle's fine world a close can come between);
//!   watches poll the number they were made with.  Using a closed or
//!   reused number is a violation; "unrelated" sockets (another service)
//!   must keep their clients and none may reach the listener's user.
//! - A `GSource` watch whose handler returns false removes itself
//!   (`G_SOURCE_REMOVE`); an `AioContext` fd handler ignores the return.
//! - `wait_client`'s private loop: `run()` iterates its context; when
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
//! socket with nothing queued (unless it was shut down), fd numbers (an
//! accept, poll, shutdown, `set_nonblocking` or watch on a closed number or
//! on one that now belongs to another socket; a watch dispatched for a
//! number that changed hands), unrelated sockets (touched, or a client of
//! theirs handed to the listener's user), and, at `finish`, anything left
//! over.  `STATS` counts what the tests report (fd violations, watches
//! that removed themselves, the most idle dispatches of one `GSource`, how
//! often an unrelated socket got a number a listener had held).
//!
//! What it does NOT model:
//! - real file descriptors beyond their numbers: errno, `poll` semantics
//!   beyond "a client is queued" (a shut-down socket is simply not
//!   readable; no POLLHUP/POLLERR), the kernel's own reference on a
//!   socket (an fd closed under a blocking accept), dup'ed or shared
//!   fds (socket activation), and connections that fail accept with
//!   ECONNABORTED (a reset client just leaves the queue; a client reset
//!   after accept changes nothing);
//! - memory: safe Rust cannot free what is still referenced, so "use after
//!   free" is modelled as use of a released handle, and a host that did not
//!   keep a handler alive during its dispatch cannot be expressed (the sim
//!   keeps it, as `GLib` and `QemuHost` do, and counts the releases that happen
//!   while a dispatch runs);
//! - QOM beyond reference counts (no properties, no type system, no
//!   `object_unref` from C), `Error` beyond a message, DNS (an address is
//!   a port or a failure), listen backlogs beyond a queue bound;
//! - `GLib`: priorities, `g_main_context_acquire` (which thread may iterate
//!   a context), wakeups and poll timeouts, `GSource` ready/check/prepare
//!   beyond "readable when iteration starts", sources' own refcounts;
//! - `AioContext`: its internal locking and `list_lock`, polling mode,
//!   `aio_notify` other than an explicit kick, BHs other than one-shot, and
//!   which thread owns a context (any thread may poll any context);
//! - time: one virtual clock (timers and scheduled events in milliseconds,
//!   the host clock `clock_ns` in nanoseconds, never 0), only advanced by
//!   the test or by a loop with nothing else to do: no time passes inside
//!   a dispatch or a callback unless the test lets it;
//! - threads outside shuttle: without the `shuttle` feature a world is run
//!   by one thread, so cross-thread races are only explored in
//!   tests/concurrency.rs, where every world access is a scheduling point
//!   but atomic itself (a host call made of several accesses can be
//!   interleaved between them; with `begin_coarse`, host accesses are not
//!   scheduling points at all).

//!
//! Layout: this file holds the identifiers, statistics, events and the
//! `World` itself; `lock` the access to it (its lock, blocking waits, the
//! test's guard); `sockets` channels, connections and accept; `contexts`
//! `GMainContext`s, `AioContext`s and dispatch; `watches` the watch handles
//! and `wait_client`'s private loop; `timers` the virtual clock; `handles`
//! handler, listener and registration tracking; `host` the `Host` impl.

#![allow(dead_code)] // each test binary uses a part of it

mod contexts;
mod fds;
mod handles;
mod host;
mod lock;
mod sockets;
mod timers;
mod watches;

#[allow(unused_imports)] // not every test binary uses all of them
pub use self::{
    contexts::*, fds::*, handles::*, host::*, lock::*, sockets::*, timers::*, watches::*,
};

use std::{
    any::Any,
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet, VecDeque},
    ffi::{CStr, CString},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

#[allow(unused_imports)] // not every test binary uses both
pub use qio_net_listener_core::listener::{Target, ACCEPT_BATCH, BACKOFF_MS};
use qio_net_listener_core::{
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

/// A `GMainContext`: 0 is `GLib`'s default context.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GCtx(pub u32);
impl GCtx {
    pub const DEFAULT: GCtx = GCtx(0);
}

/// An `AioContext`: 0 is the main loop's.
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
    /// Handed to a callback or returned by `wait_client`.
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
    /// The host released a handler (a removed `AioContext` watch or timer,
    /// by its BH in a nested `aio_poll`) while a dispatch of it still ran:
    /// the hazard of issue 6, survived thanks to the dispatch's own
    /// reference.
    pub released_in_dispatch: AtomicU64,
    /// Watch dispatches that did nothing (see `dispatch`).
    pub idle_dispatches: AtomicU64,
    /// Uses of a closed or reused fd number (each also a violation).
    pub fd_violations: AtomicU64,
    /// `GSource` watches that removed themselves (their handler returned
    /// false: `G_SOURCE_REMOVE`).
    pub self_removed: AtomicU64,
    /// The most dispatches that did nothing one `GSource` watch had.
    pub max_idle_per_source: AtomicU64,
    /// Unrelated sockets opened (`open_unrelated`), and how many of them
    /// got a number that one of a listener's sockets had held.
    pub unrelated: AtomicU64,
    pub unrelated_on_reused: AtomicU64,
    /// `shutdown()` calls (on a blocking socket with a use in flight).
    pub shutdowns: AtomicU64,
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
    idle_dispatches: AtomicU64::new(0),
    fd_violations: AtomicU64::new(0),
    self_removed: AtomicU64::new(0),
    max_idle_per_source: AtomicU64::new(0),
    unrelated: AtomicU64::new(0),
    unrelated_on_reused: AtomicU64::new(0),
    shutdowns: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

// ---------------------------------------------------------------------
// Events, for a checker (the reference model of tests/model.rs)

/// What a dispatch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A watch on a listening socket (private: one of `wait_client`'s).
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
    /// `look`: what the poll for a second client found, if the dispatch
    /// made one (see `Frame::look`); `keep`: what the handler returned
    /// (false: a `GSource` watch removes itself); `handler`: the handler
    /// dispatched (the same for every dispatch of one watch).
    FrameEnd {
        frame: u64,
        kind: FrameKind,
        ctx: Ctx,
        accepts: u32,
        fails: Vec<bool>,
        look: Option<bool>,
        keep: bool,
        handler: u64,
    },
    Accepted {
        chan: u64,
        conn: ConnId,
    },
    /// A dispatch that accepted a client polled its socket (the look for
    /// a second client, see `Frame::look`): what it found.
    Look {
        frame: u64,
        handler: u64,
        found: bool,
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

    /// `self` as `Any`, for downcasting (trait upcasting needs rustc 1.86;
    /// the workspace's floor is QEMU's 1.83).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

// ---------------------------------------------------------------------
// The world

type Bh = Box<dyn FnOnce() + Send>;

/// A dispatch in progress.
pub struct Frame {
    pub id: u64,
    thread: u64,
    pub kind: FrameKind,
    pub ctx: Ctx,
    handler: u64,
    pub accepts: u32,
    pub fails: Vec<bool>,
    /// What the "another client queued?" poll (`pending()`) made after
    /// this dispatch accepted a client found, if it made one: the
    /// listener's look for a second client of the batch.
    pub look: Option<bool>,
}

pub struct World {
    /// The virtual time in whole milliseconds (`ns / NS_PER_MS`).
    now: u64,
    /// The virtual time in nanoseconds.
    ns: u64,
    /// Reads of the host clock (`Host::clock_ns`).
    clock_reads: u64,
    next: u64,
    next_port: u16,
    next_gctx: u32,
    next_actx: u32,
    pending_panic: Option<String>,
    violations: Vec<String>,
    listeners: BTreeMap<u64, LRec>,
    chans: BTreeMap<u64, ChanRec>,
    /// Open fd numbers and the socket holding each.
    fds: BTreeMap<i32, u64>,
    /// The most dispatches that did nothing one of the listener's
    /// `GSource` watches had (a stale watch, see `dispatch`).
    max_stale_dispatches: u64,
    /// The socket that last held each free number.
    last_holder: BTreeMap<i32, u64>,
    /// Unrelated sockets: (socket, its fd, the clients it must keep).
    unrelated: Vec<(u64, i32, Vec<ConnId>)>,
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
    /// Threads waiting in `block_until`, with what they wait for.
    sleepers: Vec<(u64, Pred)>,
}

impl World {
    fn new() -> World {
        let mut gctxs = BTreeMap::new();
        gctxs.insert(GCtx::DEFAULT, new_grec(false));
        let mut actxs = BTreeMap::new();
        actxs.insert(ACtx::MAIN, ARec::default());
        World {
            now: 0,
            ns: 0,
            clock_reads: 0,
            next: 0,
            next_port: 1000,
            next_gctx: 1,
            next_actx: 1,
            pending_panic: None,
            violations: Vec::new(),
            listeners: BTreeMap::new(),
            chans: BTreeMap::new(),
            fds: BTreeMap::new(),
            last_holder: BTreeMap::new(),
            max_stale_dispatches: 0,
            unrelated: Vec::new(),
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

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn tearing_down(&self) -> bool {
        self.tearing_down
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The most dispatches that did nothing (stale) one of the listener's
    /// `GSource` watches had.
    pub fn max_stale_dispatches(&self) -> u64 {
        self.max_stale_dispatches
    }

    /// A test's own flag (threads of a shuttle test wait for them).
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    pub fn set_flag(&mut self, name: &str) {
        self.flags.insert(name.to_owned());
    }

    pub fn checker_mut<C: Checker>(&mut self) -> Option<&mut C> {
        self.checker.as_mut()?.as_any_mut().downcast_mut::<C>()
    }

    fn innermost(&mut self) -> Option<&mut Frame> {
        let t = thread_key();
        self.frames.iter_mut().rev().find(|f| f.thread == t)
    }

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
