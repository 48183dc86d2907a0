//! The listener's state machine: its sockets, the current client callback,
//! the watches that dispatch it, and the transitions between them.  It is
//! written against the [`Host`] interface only (QEMU's C API in production,
//! a simulated host in tests) and knows nothing of the C ABI.
//!
//! # Lifetimes: the rule
//!
//! **Whatever a dispatch uses stays alive until that dispatch returns,
//! whatever the callback does.**  A dispatch is a call of an accept watch,
//! a back-off timer or a `wait_client` watch.  It uses its handler, the
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
//!   [`crate::host`]): `GLib` does so for `GSource` data, the QEMU host takes a
//!   reference per `AioContext` dispatch, the simulated host checks it;
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
//!   `wait_client`'s private watch) happens inside that socket's
//!   [`FdGate`], which refuses new uses once it is closing;
//! - `disconnect()` closes the gates first (no use starts after that),
//!   wakes what could block (a blocking socket's accept by `shutdown()`),
//!   destroys every watch of the fds (the async ones and `wait_client`'s
//!   private ones, whichever thread runs them), waits for the uses in
//!   flight to end, and only then closes the channels, so the port is
//!   free when it returns.  A use is one or two system calls and runs no
//!   user code, so the wait is short and cannot deadlock: a callback that
//!   disconnects, a nested loop inside it and `wait_client`'s loop are all
//!   outside any use;
//! - the hosts' own polls of a watch's fd end with the watch: dropping it
//!   stops its dispatch, and a poll already under way is discarded (see
//!   the host contract in [`crate::host`]).
//!
//! # Other rules that keep every sequence of calls balanced
//! - All state is behind one mutex; user code (the client callback, the
//!   user's notify) and anything that may drop the last reference to the
//!   listener (destroying a `GSource` watch) run only after the lock is
//!   released.  `AioContext` handlers are removed under the lock (see
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
//! - A wake-up accepts up to `ACCEPT_BATCH` clients, re-checking before each
//!   that its registration is still the current one.  It looks for a
//!   second client only when a burst is likely (see `BatchHint`), so one
//!   client per wake-up costs no system call more than upstream.  When accept fails
//!   with a client still queued (out of fds or memory) the socket's watch
//!   is replaced by a back-off timer in the same context, which re-arms it;
//!   `wait_client` backs off the same way in its private loop.
//!
//! # Threads
//! Every method may be called from any thread and from inside the client
//! callback.  Dispatches run in the thread that runs the context.

use std::{
    ffi::{CStr, CString},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

mod accept;
mod gate;
mod wait;

pub use gate::{FdGate, FdUse};

use crate::{
    host::{ClientCallback, Host, HostError, SocketChannel, WaitLoop},
    sync::{lock, Arc, AtomicBool, Mutex, Ordering::SeqCst},
};

/// What the state machine needs of a host beyond the primitives of
/// [`Host`]: the way from an owner reference to the listener, and its
/// trace output.
pub trait ListenerHost: Host {
    /// The listener behind a reference.
    fn listener(owner: &Self::Owner) -> &Listener<Self>;
    /// Emits a trace event (QEMU's trace backends, or `GLib` logging).
    fn trace(_listener: &Listener<Self>, _event: Trace<'_, Self>) {}
}

/// A trace event of the listener: QEMU 10.2's `io/trace-events` (watch,
/// unwatch, callback; same arguments and firing points as upstream's
/// net-listener.c) and ours where we do more.
pub enum Trace<'a, H: Host> {
    /// Watches armed for `client` (upstream's `qio_net_listener_watch`);
    /// `by` names the caller as upstream does ("add", "`set_client_func`",
    /// "`wait_client`"), or "backoff-end".
    Watch {
        client: &'a H::Client,
        target: Target<H>,
        by: &'static CStr,
    },
    /// Watches removed (`qio_net_listener_unwatch`): "`set_client_func`",
    /// "`wait_client`", "disconnect".
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
    /// `set_nonblocking` succeeded: batch accept is safe.
    nonblocking: bool,
    /// The fd's uses in flight (see the disconnect rule).
    gate: Arc<FdGate>,
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

impl<H: Host> Waiter<H> {
    /// The private watches, to drop (destroy) after unlocking.
    fn take_watches(&self) -> Vec<H::SourceWatch> {
        std::mem::take(&mut *lock(&self.watches))
    }
}

struct State<H: ListenerHost> {
    name: Option<CString>,
    sockets: Vec<Socket<H>>,
    connected: bool,
    client: Option<Arc<Registration<H>>>,
    /// Calls of `wait_client` in progress; async watches stay off meanwhile.
    waiters: Vec<Arc<Waiter<H>>>,
    last_backoff_id: u64,
}

pub struct Listener<H: ListenerHost> {
    state: Mutex<State<H>>,
    /// Moves (under the lock) whenever what the armed watches serve
    /// changes: the registration, or a disconnect.  A dispatch checks it,
    /// and `waiting`, before each accept without taking the lock.
    epoch: crate::sync::AtomicU64,
    /// How many `wait_client` calls run (`State::waiters.len()`, kept under
    /// the lock): the async watches are suspended meanwhile.
    waiting: crate::sync::AtomicU64,
    /// Held for the whole of a disconnect (never with `state`, never
    /// while waiting for anything but fd uses and `wait_client` loops).
    disconnecting: Mutex<()>,
    counters: Counters,
}

/// What the listener counts (read-only QOM properties in C).  Relaxed
/// atomics outside the lock: each is exact, the set is not a snapshot.
#[derive(Default)]
pub struct Counters {
    /// Clients handed out (to a callback or by `wait_client`).
    pub accepted: AtomicU64,
    /// Accepts that failed with a client still queued: out of file
    /// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).
    pub accept_errors_resource: AtomicU64,
    /// Accepts that failed at the start of a wake-up with nothing queued
    /// (the client went away first: ECONNABORTED and the like).
    pub accept_errors_other: AtomicU64,
    /// Pauses after resource errors (async watches and `wait_client`).
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

/// How many clients one wake-up accepts at most before returning to the
/// event loop (so that a flood cannot starve the loop's other sources).
pub const ACCEPT_BATCH: usize = 32;

/// How long a socket pauses after accept failed for lack of resources
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) with clients still queued.  They stay
/// in the kernel backlog meanwhile; retrying at once would spin.
pub const BACKOFF_MS: u32 = 100;

/// How close two wake-ups of a socket in single mode must be for a burst
/// to be likely (the loop came straight back to it).  A one-client
/// wake-up and a loop round cost a few microseconds even in QEMU; clients
/// that connect one at a time rarely come closer than this, and if they
/// do, the look that follows costs one poll.  The gap runs from one
/// wake-up's start to the next, so it includes the callback: a callback
/// that takes longer keeps the socket in single mode (one client per
/// wake-up, as upstream), as does a slowed-down run (valgrind).
pub const BURST_GAP_NS: u64 = 20_000;

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

    /// Invalidates every armed watch (see `epoch`).  Called with the lock
    /// held when the registration changes or the listener disconnects.
    fn new_epoch(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    pub fn set_name(&self, name: Option<&CStr>) {
        lock(&self.state).name = name.map(CStr::to_owned);
    }

    /// Removes every watch and cancels every back-off (a new registration
    /// may use another context; it backs off there if it must).
    /// `AioContext` handlers are removed right here, under the lock: they
    /// are keyed by fd, so removing one after the next registration
    /// installed its handler for the same fd would remove that one
    /// instead; their drop releases nothing synchronously (a BH does).
    /// `GSource` watches and timers are returned for the caller to drop
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
        drop(st);
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
            drop(st);
        }
        // Unwatch before notify, as QEMU; notify itself waits for the last
        // in-flight callback (see Registration).
        drop(old_watches);
        drop(old_client);
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
