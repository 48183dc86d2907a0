//! The listener's state machine: its sockets, the current client callback,
//! the watches that dispatch it, and the transitions between them.  It is
//! written against the [`Host`] interface only (QEMU's C API in production,
//! a simulated host in tests) and knows nothing of the C ABI.
//!
//! # Lifetimes: the rule
//!
//! **Whatever a dispatch uses stays alive until that dispatch returns,
//! whatever the callback does.**  A dispatch is a call of an accept watch,
//! a back-off timer or a wait_client watch.  It uses its handler, the
//! listener, the listening channel and (for accept) the registration.  The
//! callback may make any API call on the listener, drop the listener's last
//! reference, and run nested loops on its own or another context
//! (`aio_poll`, `AIO_WAIT_WHILE`, `g_main_context_iteration`), in which
//! bottom halves that release removed watches do run.  This holds by
//! construction, not by timing:
//! - every handler owns strong references to what it uses (an `Owner` of
//!   the listener, the channel, a weak registration that the dispatch
//!   upgrades to a strong one before calling out);
//! - the host keeps a handler alive for the whole of each call into it,
//!   and releases it only once no call can still run (see
//!   [`crate::host`]): GLib does so for GSource data, the QEMU host takes a
//!   reference per AioContext dispatch, the simulated host checks it;
//! - the listener itself is only reached through such an `Owner`, so it
//!   cannot be finalized while a dispatch runs; finalize happens when the
//!   last dispatch's handler goes.
//!
//! # Disconnect is final: the rule
//!
//! **Once `disconnect()` (or finalize) returns, no accept, poll or other
//! use of the listener's fds runs or can start in any thread, and no fd
//! number is released while a use of it may still be in flight.**
//! Otherwise a dispatch in another thread, between its "still serving?"
//! check and its `accept()`, would accept on whatever socket the kernel
//! gave the freed number next, and hand a client of another service to
//! our callback.  It holds by construction:
//! - every use of a listening fd by the listener (the accepts and the
//!   "client still queued?" poll of an accept watch's dispatch or of
//!   wait_client's private watch) happens inside that socket's
//!   [`FdGate`], which refuses new uses once it is closing;
//! - `disconnect()` closes the gates first (no use starts after that),
//!   wakes what could block (a blocking socket's accept by `shutdown()`),
//!   destroys every watch of the fds (the async ones and wait_client's
//!   private ones, whichever thread runs them), waits for the uses in
//!   flight to end, and only then closes the channels, so the port is
//!   free when it returns.  A use is one or two system calls and runs no
//!   user code, so the wait is short and cannot deadlock: a callback that
//!   disconnects, a nested loop inside it and wait_client's loop are all
//!   outside any use;
//! - the hosts' own polls of a watch's fd end with the watch: dropping it
//!   stops its dispatch, and a poll already under way is discarded (see
//!   the host contract in [`crate::host`]).
//!
//! # Other rules that keep every sequence of calls balanced
//! - All state is behind one mutex; user code (the client callback, the
//!   user's notify) and anything that may drop the last reference to the
//!   listener (destroying a GSource watch) run only after the lock is
//!   released.  AioContext handlers are removed under the lock (see
//!   `disarm`); what they hold is released later by a bottom half.
//! - A socket is watched at most once: watches are only ever created for
//!   sockets that have none, so re-arming is idempotent.
//! - Closed sockets (after disconnect) are never watched again.
//! - Each watch holds a reference to the listener (`Owner`), released when
//!   the host releases the watch's handler.  While a callback is set the
//!   watches therefore keep the listener alive, as in QEMU.
//! - The (func, data, notify) registration is reference counted; notify
//!   runs when the last clone goes, i.e. once it is replaced and no
//!   callback that uses it is still running in any thread.
//! - A wake-up accepts up to ACCEPT_BATCH clients, re-checking before each
//!   that its registration is still the current one.  It looks for a
//!   second client only when a burst is likely (see `BatchHint`), so one
//!   client per wake-up costs no system call more than upstream.  When accept fails
//!   with a client still queued (out of fds or memory) the socket's watch
//!   is replaced by a back-off timer in the same context, which re-arms it;
//!   wait_client backs off the same way in its private loop.
//!
//! # Threads
//! Every method may be called from any thread and from inside the client
//! callback.  Dispatches run in the thread that runs the context.

use std::{
    ffi::{CStr, CString},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::{
    host::{ClientCallback, Host, HostError, ReadyHandler, SocketChannel, TimerHandler, WaitLoop},
    sync::{
        AtomicBool, AtomicUsize, Condvar,
        Ordering::SeqCst,
        {Arc, Mutex, MutexGuard, Weak},
    },
};

/// What the state machine needs of a host beyond the primitives of
/// [`Host`]: the way from an owner reference to the listener, and its
/// trace output.
pub trait ListenerHost: Host {
    /// The listener behind a reference.
    fn listener(owner: &Self::Owner) -> &Listener<Self>;
    /// Emits a trace event (QEMU's trace backends, or GLib logging).
    fn trace(_listener: &Listener<Self>, _event: Trace<'_, Self>) {}
}

/// A trace event of the listener: QEMU 10.2's `io/trace-events` (watch,
/// unwatch, callback; same arguments and firing points as upstream's
/// net-listener.c) and ours where we do more.
pub enum Trace<'a, H: Host> {
    /// Watches armed for `client` (upstream's `qio_net_listener_watch`);
    /// `by` names the caller as upstream does ("add", "set_client_func",
    /// "wait_client"), or "backoff-end".
    Watch {
        client: &'a H::Client,
        target: Target<H>,
        by: &'static CStr,
    },
    /// Watches removed (`qio_net_listener_unwatch`): "set_client_func",
    /// "wait_client", "disconnect".
    Unwatch {
        client: &'a H::Client,
        target: Target<H>,
        by: &'static CStr,
    },
    /// A client handed to the callback (`qio_net_listener_callback`).
    Callback {
        client: &'a H::Client,
        target: Target<H>,
    },
    /// Ours: one wake-up ended having accepted `accepted` clients.
    Batch { accepted: usize },
    /// Ours: accept failed with clients queued; the socket pauses.
    Backoff { ms: u32 },
    /// Ours: the host released an accept watch's handler.
    Release,
}

/// Where client callbacks are dispatched.
pub enum Target<H: Host> {
    Glib(H::GlibCtx),
    Aio(H::AioCtx),
}

// Derives would require H itself to be Copy/Eq.
impl<H: Host> Clone for Target<H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H: Host> Copy for Target<H> {}
impl<H: Host> PartialEq for Target<H> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Target::Glib(a), Target::Glib(b)) => a == b,
            (Target::Aio(a), Target::Aio(b)) => a == b,
            _ => false,
        }
    }
}
impl<H: Host> std::fmt::Debug for Target<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Glib(c) => write!(f, "Glib({c:?})"),
            Target::Aio(c) => write!(f, "Aio({c:?})"),
        }
    }
}

/// The user's registration; dropping the last clone calls its notify.
struct Registration<H: Host> {
    client: H::Client,
    target: Target<H>,
}

impl<H: Host> Drop for Registration<H> {
    fn drop(&mut self) {
        self.client.notify();
    }
}

enum Watch<H: Host> {
    Source(H::SourceWatch),
    // Held only for its Drop, which removes the handler.
    Aio(#[allow(dead_code)] H::AioWatch),
}

struct Socket<H: Host> {
    channel: H::Channel,
    closed: bool,
    watch: Option<Watch<H>>,
    /// Paused after accept failed with a client still queued (out of file
    /// descriptors or memory): the timer re-arms the watch.  The id tells
    /// a current back-off from a cancelled one whose timer still fires.
    backoff: Option<(u64, H::Timer)>,
    /// set_nonblocking succeeded: batch accept is safe.
    nonblocking: bool,
    /// The fd's uses in flight (see the disconnect rule).
    gate: Arc<FdGate>,
}

/// The uses of one listening socket's fd that are in flight, and the end
/// of them: every use of the fd by the listener happens inside the gate
/// ([`FdGate::enter`]), and `disconnect()` closes the fd only once the
/// gate is closed and empty ([`FdGate::close_and_wait`]).  Entering and
/// leaving cost one atomic add each; the mutex and condition variable are
/// only touched while a disconnect waits.
pub struct FdGate {
    /// `CLOSING` bit, plus `USE` for each use in flight.
    state: AtomicUsize,
    idle: Mutex<()>,
    idle_cv: Condvar,
}

const CLOSING: usize = 1;
const USE: usize = 2;

/// One use of a listening fd in flight; leaves the gate when dropped.
#[must_use]
pub struct FdUse<'a>(&'a FdGate);

impl FdGate {
    pub fn new() -> Self {
        FdGate {
            state: AtomicUsize::new(0),
            idle: Mutex::new(()),
            idle_cv: Condvar::new(),
        }
    }

    /// Starts a use of the fd, or None once the socket is closing.
    #[inline]
    pub fn enter(&self) -> Option<FdUse<'_>> {
        let prev = self.state.fetch_add(USE, SeqCst);
        let use_ = FdUse(self);
        (prev & CLOSING == 0).then_some(use_)
    }

    /// Runs `f`, one use of the fd, unless the socket is closing.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _use = self.enter()?;
        Some(f())
    }

    /// Refuses new uses from now on; returns whether uses are in flight.
    pub fn close(&self) -> bool {
        self.state.fetch_or(CLOSING, SeqCst) != 0
    }

    /// Waits until no use is in flight any more (after `close`).
    pub fn wait_idle(&self) {
        let mut idle = lock(&self.idle);
        while self.state.load(SeqCst) != CLOSING {
            idle = self.idle_cv.wait(idle).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn is_closing(&self) -> bool {
        self.state.load(SeqCst) & CLOSING != 0
    }

    /// The slow path of leaving: the waiter checks the state under the
    /// same mutex, so the wake-up cannot fall between its check and its
    /// wait.
    #[cold]
    #[inline(never)]
    fn wake_closer(&self) {
        let _idle = lock(&self.idle);
        self.idle_cv.notify_all();
    }
}

impl Default for FdGate {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FdUse<'_> {
    #[inline]
    fn drop(&mut self) {
        // The last use of a closing gate wakes the disconnect that waits.
        if self.0.state.fetch_sub(USE, SeqCst) == CLOSING | USE {
            self.0.wake_closer();
        }
    }
}

/// What `disarm` took out of the state, to drop after unlocking.
#[must_use]
struct Disarmed<H: Host> {
    _sources: Vec<H::SourceWatch>,
    _timers: Vec<H::Timer>,
}

/// A `wait_client` in progress.
struct Waiter<H: Host> {
    main_loop: H::WaitLoop,
    /// The private watches, while the loop waits for a client.
    watches: Mutex<Vec<H::SourceWatch>>,
    client: Mutex<Option<H::Channel>>,
    /// Accept failed with a client still queued: pause, then retry.
    backoff: AtomicBool,
}

struct State<H: ListenerHost> {
    name: Option<CString>,
    sockets: Vec<Socket<H>>,
    connected: bool,
    client: Option<Arc<Registration<H>>>,
    /// Calls of wait_client in progress; async watches stay off meanwhile.
    waiters: Vec<Arc<Waiter<H>>>,
    last_backoff_id: u64,
}

pub struct Listener<H: ListenerHost> {
    state: Mutex<State<H>>,
    /// Moves (under the lock) whenever what the armed watches serve
    /// changes: the registration, or a disconnect.  A dispatch checks it,
    /// and `waiting`, before each accept without taking the lock.
    epoch: crate::sync::AtomicU64,
    /// How many wait_client calls run (`State::waiters.len()`, kept under
    /// the lock): the async watches are suspended meanwhile.
    waiting: crate::sync::AtomicU64,
    /// Held for the whole of a disconnect (never with `state`, never
    /// while waiting for anything but fd uses and wait_client loops).
    disconnecting: Mutex<()>,
    counters: Counters,
}

/// What the listener counts (read-only QOM properties in C).  Relaxed
/// atomics outside the lock: each is exact, the set is not a snapshot.
#[derive(Default)]
pub struct Counters {
    /// Clients handed out (to a callback or by wait_client).
    pub accepted: AtomicU64,
    /// Accepts that failed with a client still queued: out of file
    /// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    pub accept_errors_resource: AtomicU64,
    /// Accepts that failed at the start of a wake-up with nothing queued
    /// (the client went away first: ECONNABORTED and the like).
    pub accept_errors_other: AtomicU64,
    /// Pauses after resource errors (async watches and wait_client).
    pub backoffs: AtomicU64,
    /// Dispatches of the accept watches.
    pub wakeups: AtomicU64,
    /// The most clients accepted in one wake-up.
    pub max_batch: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never leaves the state half-updated in a way that matters
    // more than refusing service forever would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handler behind every async watch: it serves the registration it
/// was created for, and only while that registration is current.  It owns
/// the listener reference that the dispatch uses (see the module doc).
struct AcceptHandler<H: ListenerHost> {
    owner: H::Owner,
    registration: Weak<Registration<H>>,
    /// The listener's `epoch` when this watch was armed: the watch serves
    /// while it has not moved.
    epoch: u64,
    /// The socket could be made non-blocking: else one accept per wake-up
    /// (a second one could block the whole event loop).
    batch: bool,
    /// The socket's fd uses (see the disconnect rule).
    gate: Arc<FdGate>,
    /// Whether the next wake-up should look for a second client.
    hint: BatchHint,
}

/// Whether a wake-up looks for a second client after the first one.
///
/// Looking costs a poll of the socket (an accept that finds nothing would
/// cost QEMU a channel object made and finalized for nothing).  In a burst
/// it pays for itself many times over (up to ACCEPT_BATCH clients per
/// wake-up instead of one); with one client per wake-up, the common case,
/// it is a system call more than upstream on every wake-up.  So a wake-up
/// looks only when a burst is likely, learnt from the previous wake-ups:
/// - after a wake-up that found a second client (or started the watch),
///   it looks: bursts come in runs;
/// - once a look found nothing after one client, the socket is in *single*
///   mode: it stops looking, and only looks again when a wake-up comes
///   less than BURST_GAP_NS after the previous one (the loop came straight
///   back: clients arrive faster than it serves them one at a time).  A
///   burst that starts in single mode thus costs one extra wake-up or two,
///   not one per client; a client that arrives while the loop sleeps costs
///   none.
///
/// The clock is the host's ([`Host::clock_ns`]); a host without one (the
/// simulated host) always looks, as before.  It is a hint, not
/// synchronisation: a wrong guess costs one system call or one wake-up,
/// never a client (the socket stays readable and its watch dispatches
/// again), so relaxed std atomics suffice, also under shuttle.
#[derive(Default)]
struct BatchHint {
    /// 0: look; else the host time (ns) of the last wake-up in single mode.
    single_since: AtomicU64,
}

/// How close two wake-ups of a socket in single mode must be for a burst
/// to be likely (the loop came straight back to it).  A one-client
/// wake-up and a loop round cost a few microseconds even in QEMU; clients
/// that connect one at a time rarely come closer than this, and if they
/// do, the look that follows costs one poll.  The gap runs from one
/// wake-up's start to the next, so it includes the callback: a callback
/// that takes longer keeps the socket in single mode (one client per
/// wake-up, as upstream), as does a slowed-down run (valgrind).
pub const BURST_GAP_NS: u64 = 20_000;

impl BatchHint {
    /// Whether to look for a second client now (after the first); `clock`
    /// is the host's, read only in single mode.
    fn burst_likely(&self, clock: impl FnOnce() -> Option<u64>) -> bool {
        let last = self.single_since.load(Relaxed);
        if last == 0 {
            return true;
        }
        let Some(now) = clock() else {
            return true;
        };
        self.single_since.store(now, Relaxed);
        now.wrapping_sub(last) < BURST_GAP_NS
    }

    /// What the look found: a second client (burst mode) or nothing.
    fn looked(&self, found: bool, clock: impl FnOnce() -> Option<u64>) {
        let single = if found { 0 } else { clock().unwrap_or(0) };
        self.single_since.store(single, Relaxed);
    }
}

impl<H: ListenerHost> Drop for AcceptHandler<H> {
    /// The host released the watch (after its last dispatch).
    fn drop(&mut self) {
        H::trace(H::listener(&self.owner), Trace::Release);
    }
}

impl<H: ListenerHost> ReadyHandler<H> for AcceptHandler<H> {
    fn ready(&self, channel: &H::Channel) -> bool {
        let listener = H::listener(&self.owner);
        listener.accept_batch(self, channel);
        listener.serving(self)
    }
}

/// How many clients one wake-up accepts at most before returning to the
/// event loop (so that a flood cannot starve the loop's other sources).
pub const ACCEPT_BATCH: usize = 32;

/// How long a socket pauses after accept failed for lack of resources
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) with clients still queued.  They stay
/// in the kernel backlog meanwhile; retrying at once would spin.
pub const BACKOFF_MS: u32 = 100;

/// The timer of a back-off: re-arms the socket's watch.
struct BackoffHandler<H: ListenerHost> {
    owner: H::Owner,
    id: u64,
}

impl<H: ListenerHost> TimerHandler for BackoffHandler<H> {
    fn fire(&self) {
        H::listener(&self.owner).end_backoff(&self.owner, self.id);
    }
}

/// The handler of the private watches of wait_client, one per socket.
struct WaitHandler<H: Host> {
    waiter: Arc<Waiter<H>>,
    gate: Arc<FdGate>,
}

impl<H: ListenerHost> ReadyHandler<H> for WaitHandler<H> {
    fn ready(&self, channel: &H::Channel) -> bool {
        let waiter = &self.waiter;
        let mut slot = lock(&waiter.client);
        // Exactly one client: once we have it, others stay in the backlog.
        if slot.is_some() || waiter.backoff.load(SeqCst) {
            return true;
        }
        // No client is accepted once a disconnect has begun.
        match self.gate.with(|| accept_first(channel)) {
            Some(Accepted::Client(client)) => *slot = Some(client),
            Some(Accepted::Empty) => return true,
            None => {}
            // The private loop would spin on the readable socket; pause
            // instead (see run_wait).
            Some(Accepted::Shortage) => waiter.backoff.store(true, SeqCst),
        }
        waiter.main_loop.quit();
        true
    }
}

/// What the first accept of a wake-up gave.
enum Accepted<C> {
    Client(C),
    /// Nothing queued (the client went away first).
    Empty,
    /// Out of file descriptors or memory, the client still queued.
    Shortage,
}

/// The first accept of a wake-up.  Only after a failure is the socket
/// polled (keeping that syscall off the usual path): a client still queued
/// is either one that arrived just now (retried once) or a shortage.
fn accept_first<C: SocketChannel>(channel: &C) -> Accepted<C> {
    match channel.accept() {
        Some(client) => Accepted::Client(client),
        None if !channel.pending() => Accepted::Empty,
        None => channel
            .accept()
            .map_or(Accepted::Shortage, Accepted::Client),
    }
}

impl<H: Host> Waiter<H> {
    /// The private watches, to drop (destroy) after unlocking.
    fn take_watches(&self) -> Vec<H::SourceWatch> {
        std::mem::take(&mut *lock(&self.watches))
    }
}

/// Ends a wait_client back-off: the private loop runs again.
struct WaitBackoffHandler<H: Host>(Arc<Waiter<H>>);

impl<H: ListenerHost> TimerHandler for WaitBackoffHandler<H> {
    fn fire(&self) {
        self.0.main_loop.quit();
    }
}

impl<H: ListenerHost> Listener<H> {
    pub fn new() -> Self {
        Listener {
            state: Mutex::new(State {
                name: None,
                sockets: Vec::new(),
                connected: false,
                client: None,
                waiters: Vec::new(),
                last_backoff_id: 0,
            }),
            epoch: crate::sync::AtomicU64::new(0),
            waiting: crate::sync::AtomicU64::new(0),
            disconnecting: Mutex::new(()),
            counters: Counters::default(),
        }
    }

    pub fn set_name(&self, name: Option<&CStr>) {
        lock(&self.state).name = name.map(CStr::to_owned);
    }

    /// Creates the missing watches if a callback is set and no wait_client
    /// runs.  Called with the lock held; creating a watch never calls back.
    fn arm(&self, st: &mut State<H>, owner: &H::Owner, by: &'static CStr) {
        let Some(reg) = st.client.as_ref() else {
            return;
        };
        if !reg.client.has_func() || !st.waiters.is_empty() {
            return;
        }
        H::trace(
            self,
            Trace::Watch {
                client: &reg.client,
                target: reg.target,
                by,
            },
        );
        let target = reg.target;
        let registration = Arc::downgrade(reg);
        for s in st
            .sockets
            .iter_mut()
            .filter(|s| !s.closed && s.watch.is_none() && s.backoff.is_none())
        {
            let handler = AcceptHandler::<H> {
                owner: owner.clone(),
                registration: registration.clone(),
                epoch: self.epoch.load(SeqCst),
                batch: s.nonblocking,
                gate: s.gate.clone(),
                hint: BatchHint::default(),
            };
            s.watch = Some(match target {
                Target::Glib(ctx) => Watch::Source(H::watch_source(&s.channel, ctx, handler)),
                Target::Aio(ctx) => Watch::Aio(H::watch_aio(&s.channel, ctx, handler)),
            });
        }
    }

    /// Removes every watch and cancels every back-off (a new registration
    /// may use another context; it backs off there if it must).
    /// AioContext handlers are removed right here, under the lock: they
    /// are keyed by fd, so removing one after the next registration
    /// installed its handler for the same fd would remove that one
    /// instead; their drop releases nothing synchronously (a BH does).
    /// GSource watches and timers are returned for the caller to drop
    /// after unlocking: destroying one may run its release at once.
    fn disarm(&self, st: &mut State<H>, by: &'static CStr) -> Disarmed<H> {
        if let Some(reg) = st.client.as_ref().filter(|r| r.client.has_func()) {
            if st.waiters.is_empty() {
                H::trace(
                    self,
                    Trace::Unwatch {
                        client: &reg.client,
                        target: reg.target,
                        by,
                    },
                );
            }
        }
        let mut sources = Vec::new();
        let mut timers = Vec::new();
        for s in &mut st.sockets {
            match s.watch.take() {
                Some(Watch::Source(w)) => sources.push(w),
                Some(Watch::Aio(w)) => drop(w),
                None => {}
            }
            timers.extend(s.backoff.take().map(|(_, t)| t));
        }
        Disarmed {
            _sources: sources,
            _timers: timers,
        }
    }

    /// Pauses `channel`'s watch for BACKOFF_MS: accept failed while a
    /// client is still queued, so the socket stays readable and retrying
    /// now would spin.  Runs inside the watch's own callback.
    fn back_off(&self, handler: &AcceptHandler<H>, channel: &H::Channel) {
        let watch = {
            let mut st = lock(&self.state);
            let Some(reg) = st.client.as_ref().filter(|_| self.serving(handler)) else {
                return;
            };
            let target = reg.target;
            H::trace(
                self,
                Trace::Unwatch {
                    client: &reg.client,
                    target,
                    by: c"backoff",
                },
            );
            H::trace(self, Trace::Backoff { ms: BACKOFF_MS });
            Counters::bump(&self.counters.backoffs);
            st.last_backoff_id += 1;
            let id = st.last_backoff_id;
            let Some(s) = st
                .sockets
                .iter_mut()
                .find(|s| s.channel.same(channel) && !s.closed)
            else {
                return;
            };
            let retry = BackoffHandler::<H> {
                owner: handler.owner.clone(),
                id,
            };
            s.backoff = Some((
                id,
                match target {
                    Target::Glib(ctx) => H::timer_glib(ctx, BACKOFF_MS, retry),
                    Target::Aio(ctx) => H::timer_aio(ctx, BACKOFF_MS, retry),
                },
            ));
            // As in disarm: AioContext handlers go under the lock.
            match s.watch.take() {
                Some(Watch::Source(w)) => Some(w),
                Some(Watch::Aio(w)) => {
                    drop(w);
                    None
                }
                None => None,
            }
        };
        drop(watch);
    }

    /// The back-off timer `id` expired: watch the socket again.
    fn end_backoff(&self, owner: &H::Owner, id: u64) {
        let timer = {
            let mut st = lock(&self.state);
            let timer = st
                .sockets
                .iter_mut()
                .find(|s| s.backoff.as_ref().is_some_and(|(b, _)| *b == id))
                .and_then(|s| s.backoff.take());
            self.arm(&mut st, owner, c"backoff-end");
            timer
        };
        drop(timer);
    }

    /// Whether `handler` still serves: its registration is the current one,
    /// the listener was not disconnected since it was armed, and no
    /// wait_client has suspended the async watches.  Two atomic loads, no
    /// lock.
    fn serving(&self, handler: &AcceptHandler<H>) -> bool {
        self.epoch.load(SeqCst) == handler.epoch && self.waiting.load(SeqCst) == 0
    }

    /// Invalidates every armed watch (see `epoch`).  Called with the lock
    /// held when the registration changes or the listener disconnects.
    fn new_epoch(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    /// Listens on every resolved address and adds those that worked.
    /// Succeeds if at least one did; otherwise returns the first error.
    pub fn open(&self, owner: &H::Owner, addrs: &[H::Address], num: i32) -> Result<(), H::Error> {
        let mut first_err = H::Error::new();
        let mut listened = false;
        for a in addrs {
            let channel = H::new_channel();
            // Keep the first error only; later ones are dropped, as QEMU.
            let err = (!first_err.is_set()).then_some(&mut first_err);
            if H::listen(&channel, a, num, err) {
                listened = true;
                self.add(owner, channel);
            }
        }
        match (listened, first_err.is_set()) {
            (true, _) => Ok(()),
            (false, true) => Err(first_err),
            (false, false) => Err(H::Error::with_message(
                "The address resolved to no address to listen on",
            )),
        }
    }

    pub fn add(&self, owner: &H::Owner, channel: H::Channel) {
        // Batch accept needs accept() to return at once when nothing is
        // pending; sockets from listen_sync or socket activation are
        // blocking.  If that fails the socket stays blocking and is served
        // one client per wake-up: level-triggered watches only dispatch
        // with a client pending, so that one accept does not block (unless
        // another thread takes the client first, as with upstream).
        let nonblocking = channel.set_nonblocking();
        let mut st = lock(&self.state);
        if let Some(name) = &st.name {
            channel.set_name(name);
        }
        st.sockets.push(Socket {
            channel,
            closed: false,
            watch: None,
            backoff: None,
            nonblocking,
            gate: Arc::new(FdGate::new()),
        });
        st.connected = true;
        self.arm(&mut st, owner, c"add");
    }

    pub fn set_client(&self, owner: &H::Owner, client: H::Client, target: Target<H>) {
        let (old_watches, old_client);
        {
            let mut st = lock(&self.state);
            let unchanged = match &st.client {
                Some(r) => r.client.same(&client) && r.target == target,
                None => client.same(&H::Client::none()),
            };
            if unchanged {
                return;
            }
            old_watches = self.disarm(&mut st, c"set_client_func");
            // Dispatches of the old registration stop before their next
            // accept.
            self.new_epoch();
            old_client = st.client.take();
            if !client.same(&H::Client::none()) {
                st.client = Some(Arc::new(Registration { client, target }));
            }
            self.arm(&mut st, owner, c"set_client_func");
        }
        // Unwatch before notify, as QEMU; notify itself waits for the last
        // in-flight callback (see Registration).
        drop(old_watches);
        drop(old_client);
    }

    /// The watch callback: accepts up to ACCEPT_BATCH pending clients (the
    /// listening sockets are non-blocking), handing each to the callback.
    /// The registration is checked before every accept, so a callback that
    /// clears or replaces itself, a wait_client or a disconnect (from any
    /// thread) stops the batch without accepting a client only to drop it:
    /// the rest stay queued in the kernel for whoever serves them next.
    fn accept_batch(&self, handler: &AcceptHandler<H>, channel: &H::Channel) {
        let accepted = self.accept_some(handler, channel);
        let c = &self.counters;
        Counters::bump(&c.wakeups);
        c.accepted.fetch_add(accepted as u64, Relaxed);
        c.max_batch.fetch_max(accepted as u64, Relaxed);
        H::trace(self, Trace::Batch { accepted });
    }

    /// The batch itself; returns how many clients it handed out.
    fn accept_some(&self, handler: &AcceptHandler<H>, channel: &H::Channel) -> usize {
        // A strong reference for the whole batch: its notify cannot run
        // before the last callback of the batch returns.
        let Some(reg) = handler.registration.upgrade() else {
            return 0;
        };
        for i in 0..ACCEPT_BATCH {
            if !self.serving(handler) {
                return i;
            }
            // Each accept (and poll) is a use of the fd: none starts once
            // a disconnect has begun, and the disconnect waits for this one
            // to end before it closes the fd.
            let gate = &handler.gate;
            let client = if i == 0 {
                match gate.with(|| accept_first(channel)) {
                    Some(Accepted::Client(client)) => client,
                    None => return 0,
                    Some(Accepted::Empty) => {
                        Counters::bump(&self.counters.accept_errors_other);
                        return 0;
                    }
                    Some(Accepted::Shortage) => {
                        Counters::bump(&self.counters.accept_errors_resource);
                        drop(reg);
                        self.back_off(handler, channel);
                        return 0;
                    }
                }
            } else {
                // After one client, look before accepting again if a burst
                // is likely (see BatchHint): a failed accept costs QEMU a
                // channel object made and finalized for nothing, a poll
                // much less (and a burst goes on unpolled).  A shortage
                // that starts mid-batch shows up at the next wake-up's
                // first accept.
                if i == 1 && !(handler.batch && handler.hint.burst_likely(H::clock_ns)) {
                    return 1;
                }
                let next = gate.with(|| {
                    if i == 1 {
                        let found = channel.pending();
                        handler.hint.looked(found, H::clock_ns);
                        if !found {
                            return None;
                        }
                    }
                    channel.accept()
                });
                match next.flatten() {
                    Some(client) => client,
                    None => return i,
                }
            };
            H::trace(
                self,
                Trace::Callback {
                    client: &reg.client,
                    target: reg.target,
                },
            );
            reg.client.call(&handler.owner, &client);
        }
        // `reg` drops here: if the callback was replaced meanwhile, this was
        // the last user and its notify runs now, after it (the check at the
        // top of the loop ends the batch right after such a callback).
        ACCEPT_BATCH
    }

    /// Blocks until one client connects and returns it; None at once on a
    /// listener without open sockets, None if disconnected meanwhile.
    pub fn wait_client(&self, owner: &H::Owner) -> Option<H::Channel> {
        let waiter = Arc::new(Waiter::<H> {
            main_loop: H::WaitLoop::new(),
            watches: Mutex::new(Vec::new()),
            client: Mutex::new(None),
            backoff: AtomicBool::new(false),
        });
        let (sockets, suspended) = {
            let mut st = lock(&self.state);
            let sockets: Vec<(H::Channel, Arc<FdGate>)> = st
                .sockets
                .iter()
                .filter(|s| !s.closed)
                .map(|s| (s.channel.clone(), s.gate.clone()))
                .collect();
            // A dead listener would block forever in QEMU; return at once.
            if !st.connected || sockets.is_empty() {
                return None;
            }
            let suspended = self.disarm(&mut st, c"wait_client");
            st.waiters.push(waiter.clone());
            self.waiting.store(st.waiters.len() as u64, SeqCst);
            (sockets, suspended)
        };
        drop(suspended);

        self.run_wait(&waiter, &sockets);

        {
            let mut st = lock(&self.state);
            st.waiters.retain(|w| !Arc::ptr_eq(w, &waiter));
            self.waiting.store(st.waiters.len() as u64, SeqCst);
            self.arm(&mut st, owner, c"wait_client");
        }
        let client = lock(&waiter.client).take();
        if client.is_some() {
            Counters::bump(&self.counters.accepted);
        }
        client
    }

    /// Iterates wait_client's private loop until a client is accepted or
    /// the listener is disconnected, pausing BACKOFF_MS (watches removed,
    /// a timer in the same private context) whenever accept fails with a
    /// client still queued instead of spinning on the readable socket.
    ///
    /// The private watches poll the fds: a disconnect destroys them itself
    /// (from whichever thread) before it closes the fds, rather than wait
    /// for this thread to do it.
    fn run_wait(&self, waiter: &Arc<Waiter<H>>, sockets: &[(H::Channel, Arc<FdGate>)]) {
        let ctx = waiter.main_loop.context();
        loop {
            {
                let mut watches = lock(&waiter.watches);
                // Watches are only made while no disconnect has begun, and
                // under the lock with which a disconnect takes them.
                if sockets.iter().any(|(_, gate)| gate.is_closing()) {
                    return;
                }
                *watches = sockets
                    .iter()
                    .map(|(c, gate)| {
                        let handler = WaitHandler {
                            waiter: waiter.clone(),
                            gate: gate.clone(),
                        };
                        H::watch_source(c, ctx, handler)
                    })
                    .collect();
            }
            waiter.main_loop.run();
            drop(waiter.take_watches());
            if !waiter.backoff.swap(false, SeqCst) || !self.is_connected() {
                return;
            }
            Counters::bump(&self.counters.accept_errors_resource);
            Counters::bump(&self.counters.backoffs);
            H::trace(self, Trace::Backoff { ms: BACKOFF_MS });
            let timer = H::timer_glib(ctx, BACKOFF_MS, WaitBackoffHandler(waiter.clone()));
            waiter.main_loop.run();
            drop(timer);
            if !self.is_connected() {
                return;
            }
        }
    }

    /// Removes every watch and closes every socket; synchronous: when it
    /// returns no use of the fds runs any more and the ports are free (see
    /// the disconnect rule).  Concurrent calls are serialized, so that
    /// each returns only once the sockets are closed.
    pub fn disconnect(&self) {
        let _serialized = lock(&self.disconnecting);
        let (watches, sockets, waiters) = {
            let mut st = lock(&self.state);
            if !st.connected {
                return;
            }
            st.connected = false;
            let watches = self.disarm(&mut st, c"disconnect");
            self.new_epoch();
            let sockets: Vec<(H::Channel, Arc<FdGate>, bool)> = st
                .sockets
                .iter_mut()
                .filter(|s| !s.closed)
                .map(|s| {
                    s.closed = true;
                    (s.channel.clone(), s.gate.clone(), s.nonblocking)
                })
                .collect();
            (watches, sockets, st.waiters.clone())
        };
        // No dispatch of a watch starts after this.
        drop(watches);
        // No use of the fds starts after this.  One in flight ends by
        // itself, as an accept on a non-blocking socket or a poll does;
        // an accept on a socket left blocking may wait for a client, so
        // shut such a socket down to wake it (only then: a socket handed
        // in by socket activation may be shared, and shutdown acts on the
        // socket, not on our fd).  wait_client's private watches go now,
        // from this thread, and its loop is told to stop.
        for (channel, gate, nonblocking) in &sockets {
            if gate.close() && !nonblocking {
                channel.shutdown();
            }
        }
        for w in &waiters {
            drop(w.take_watches());
            w.main_loop.quit();
        }
        // Only then may the numbers be released.
        for (channel, gate, _) in &sockets {
            gate.wait_idle();
            channel.close();
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.state).connected
    }

    pub fn nsioc(&self) -> usize {
        lock(&self.state).sockets.len()
    }

    /// The nth channel; the caller borrows it (the listener keeps its
    /// reference until finalize).
    pub fn sioc(&self, n: usize) -> Option<H::Channel> {
        lock(&self.state).sockets.get(n).map(|s| s.channel.clone())
    }
}

impl<H: ListenerHost> Default for Listener<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: ListenerHost> Drop for Listener<H> {
    /// Finalize: watches hold references, so none is left by now; close
    /// what is still open, then notify for the last registration.
    fn drop(&mut self) {
        self.disconnect();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchHint, Relaxed, BURST_GAP_NS};

    fn no_read() -> Option<u64> {
        panic!("the clock is read only in single mode")
    }

    #[test]
    fn batch_hint_learns_from_the_previous_wake_ups() {
        let h = BatchHint::default();
        // A new watch looks, without reading the clock.
        assert!(h.burst_likely(no_read));
        // The look found a second client: keep looking.
        h.looked(true, no_read);
        assert!(h.burst_likely(no_read));
        // It found none after one client: single mode from now on.
        h.looked(false, || Some(1_000));
        // A client long after the last one: do not look.
        let t = 1_000 + 10 * BURST_GAP_NS;
        assert!(!h.burst_likely(|| Some(t)));
        assert!(!h.burst_likely(|| Some(t + BURST_GAP_NS)));
        // The loop came straight back: a burst is likely, look.
        assert!(h.burst_likely(|| Some(t + BURST_GAP_NS + 1)));
        h.looked(true, no_read);
        assert!(h.burst_likely(no_read));
    }

    #[test]
    fn batch_hint_without_a_clock_always_looks() {
        let h = BatchHint::default();
        h.looked(false, || None);
        assert!(h.burst_likely(|| None));
        h.single_since.store(5, Relaxed);
        assert!(h.burst_likely(|| None));
    }
}
