//! The listener's state machine: its sockets, the current client callback,
//! the watches that dispatch it, and the transitions between them.
//!
//! Rules that keep every sequence of calls balanced:
//! - All state is behind one mutex; user code (the client callback, the
//!   user's notify) and anything that may drop the last reference to the
//!   listener (destroying a GSource watch) run only after the lock is
//!   released.  AioContext handlers are removed under the lock (see
//!   `disarm`); what they hold is released later by a bottom half.
//! - A socket is watched at most once: watches are only ever created for
//!   sockets that have none, so re-arming is idempotent.
//! - Closed sockets (after disconnect) are never watched again.
//! - Each watch holds a reference to the listener (`Owner`), released when
//!   GLib finalizes the source or, for AioContext watches, by a bottom half
//!   in that AioContext.  While a callback is set the watches therefore
//!   keep the listener alive, as in QEMU.
//! - The (func, data, notify) registration is reference counted; notify
//!   runs when the last clone goes, i.e. once it is replaced and no
//!   callback that uses it is still running in any thread.
//! - A wake-up accepts up to ACCEPT_BATCH clients, re-checking before each
//!   that its registration is still the current one.  When accept fails
//!   with a client still queued (out of fds or memory) the socket's watch
//!   is replaced by a back-off timer in the same context, which re-arms it.

use std::{
    ffi::{c_int, CStr, CString},
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use crate::{
    ffi::{ClientSpec, Owner},
    host::{
        Address, AioCtx, AioWatch, Channel, GlibContext, LocalError, OneShotTimer, PrivateLoop,
        ReadyHandler, SourceWatch, TimerHandler,
    },
};

/// Where client callbacks are dispatched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Glib(GlibContext),
    Aio(AioCtx),
}

/// The user's registration; dropping the last clone calls its notify.
struct Registration {
    spec: ClientSpec,
    target: Target,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.spec.notify();
    }
}

enum Watch {
    Source(SourceWatch),
    // Held only for its Drop, which removes the handler.
    Aio(#[allow(dead_code)] AioWatch),
}

struct Socket {
    channel: Channel,
    closed: bool,
    watch: Option<Watch>,
    /// Paused after accept failed with a client still queued (out of file
    /// descriptors or memory): the timer re-arms the watch.  The id tells
    /// a current back-off from a cancelled one whose timer still fires.
    backoff: Option<(u64, OneShotTimer)>,
}

/// What `disarm` took out of the state, to drop after unlocking.
#[must_use]
struct Disarmed {
    _sources: Vec<SourceWatch>,
    _timers: Vec<OneShotTimer>,
}

/// A `wait_client` in progress.
struct Waiter {
    main_loop: PrivateLoop,
    client: Mutex<Option<Channel>>,
}

struct State {
    name: Option<CString>,
    sockets: Vec<Socket>,
    connected: bool,
    client: Option<Arc<Registration>>,
    /// Calls of wait_client in progress; async watches stay off meanwhile.
    waiters: Vec<Arc<Waiter>>,
    last_backoff_id: u64,
}

pub struct Listener {
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never leaves the state half-updated in a way that matters
    // more than refusing service forever would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handler behind every async watch: it serves the registration it
/// was created for, and only while that registration is current.
struct AcceptHandler {
    owner: Owner,
    registration: Weak<Registration>,
}

impl ReadyHandler for AcceptHandler {
    fn ready(&self, channel: &Channel) {
        self.owner.listener().accept_batch(self, channel);
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
struct BackoffHandler {
    owner: Owner,
    id: u64,
}

impl TimerHandler for BackoffHandler {
    fn fire(&self) {
        self.owner.listener().end_backoff(&self.owner, self.id);
    }
}

/// The handler of the private watches of wait_client.
struct WaitHandler(Arc<Waiter>);

impl ReadyHandler for WaitHandler {
    fn ready(&self, channel: &Channel) {
        let mut slot = lock(&self.0.client);
        // Exactly one client: once we have it, others stay in the backlog.
        if slot.is_none() {
            if let Some(client) = channel.accept() {
                *slot = Some(client);
                self.0.main_loop.quit();
            }
        }
    }
}

impl Listener {
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
        }
    }

    pub fn set_name(&self, name: Option<&CStr>) {
        lock(&self.state).name = name.map(CStr::to_owned);
    }

    /// Creates the missing watches if a callback is set and no wait_client
    /// runs.  Called with the lock held; creating a watch never calls back.
    fn arm(st: &mut State, owner: &Owner) {
        let Some(reg) = st.client.as_ref() else {
            return;
        };
        if !reg.spec.has_func() || !st.waiters.is_empty() {
            return;
        }
        let target = reg.target;
        let registration = Arc::downgrade(reg);
        for s in st
            .sockets
            .iter_mut()
            .filter(|s| !s.closed && s.watch.is_none() && s.backoff.is_none())
        {
            let handler = AcceptHandler {
                owner: owner.clone(),
                registration: registration.clone(),
            };
            s.watch = Some(match target {
                Target::Glib(ctx) => Watch::Source(SourceWatch::new(&s.channel, ctx, handler)),
                Target::Aio(ctx) => Watch::Aio(AioWatch::new(&s.channel, ctx, handler)),
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
    fn disarm(st: &mut State) -> Disarmed {
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
    fn back_off(&self, handler: &AcceptHandler, channel: &Channel) {
        let watch = {
            let mut st = lock(&self.state);
            let Some(target) = Self::serving(&st, handler).map(|r| r.target) else {
                return;
            };
            st.last_backoff_id += 1;
            let id = st.last_backoff_id;
            let Some(s) = st
                .sockets
                .iter_mut()
                .find(|s| s.channel.as_ptr() == channel.as_ptr() && !s.closed)
            else {
                return;
            };
            let retry = BackoffHandler {
                owner: handler.owner.clone(),
                id,
            };
            s.backoff = Some((
                id,
                match target {
                    Target::Glib(ctx) => OneShotTimer::glib(ctx, BACKOFF_MS, retry),
                    Target::Aio(ctx) => OneShotTimer::aio(ctx, BACKOFF_MS.into(), retry),
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
    fn end_backoff(&self, owner: &Owner, id: u64) {
        let timer = {
            let mut st = lock(&self.state);
            let timer = st
                .sockets
                .iter_mut()
                .find(|s| s.backoff.as_ref().is_some_and(|(b, _)| *b == id))
                .and_then(|s| s.backoff.take());
            Self::arm(&mut st, owner);
            timer
        };
        drop(timer);
    }

    /// The registration `handler` serves, if it is still the current one
    /// and no wait_client has suspended the async watches.
    fn serving<'a>(st: &'a State, handler: &AcceptHandler) -> Option<&'a Arc<Registration>> {
        st.client.as_ref().filter(|r| {
            st.waiters.is_empty() && std::ptr::eq(Arc::as_ptr(r), handler.registration.as_ptr())
        })
    }

    /// Listens on every resolved address and adds those that worked.
    /// Succeeds if at least one did; otherwise returns the first error.
    pub fn open(&self, owner: &Owner, addrs: &[Address], num: c_int) -> Result<(), LocalError> {
        let mut first_err = LocalError::new();
        let mut listened = false;
        for a in addrs {
            let channel = Channel::new();
            // Keep the first error only; later ones are dropped, as QEMU.
            let err = (!first_err.is_set()).then_some(&mut first_err);
            if channel.listen(a, num, err) {
                listened = true;
                self.add(owner, channel);
            }
        }
        match (listened, first_err.is_set()) {
            (true, _) => Ok(()),
            (false, true) => Err(first_err),
            (false, false) => Err(LocalError::with_message(
                "The address resolved to no address to listen on",
            )),
        }
    }

    pub fn add(&self, owner: &Owner, channel: Channel) {
        // Batch accept needs accept() to return at once when nothing is
        // pending; sockets from listen_sync or socket activation are
        // blocking.  A failure leaves it blocking: level-triggered watches
        // only call accept when a client is pending, so the first accept
        // of a batch still never blocks (the loop then ends at the next).
        channel.set_nonblocking();
        let mut st = lock(&self.state);
        if let Some(name) = &st.name {
            channel.set_name(name);
        }
        st.sockets.push(Socket {
            channel,
            closed: false,
            watch: None,
            backoff: None,
        });
        st.connected = true;
        Self::arm(&mut st, owner);
    }

    pub fn set_client(&self, owner: &Owner, spec: ClientSpec, target: Target) {
        let (old_watches, old_client);
        {
            let mut st = lock(&self.state);
            let current = st.client.as_ref().map(|r| (r.spec, r.target));
            let unset = (
                ClientSpec::NONE,
                Target::Glib(GlibContext(std::ptr::null_mut())),
            );
            let (cur_spec, cur_target) = current.unwrap_or(unset);
            if cur_spec.same(&spec) && cur_target == target {
                return;
            }
            old_watches = Self::disarm(&mut st);
            old_client = st.client.take();
            if !spec.same(&ClientSpec::NONE) {
                st.client = Some(Arc::new(Registration { spec, target }));
            }
            Self::arm(&mut st, owner);
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
    fn accept_batch(&self, handler: &AcceptHandler, channel: &Channel) {
        for i in 0..ACCEPT_BATCH {
            let Some(reg) = Self::serving(&lock(&self.state), handler).cloned() else {
                return;
            };
            let client = match channel.accept() {
                Some(client) => client,
                // Usually the queue is just empty and the batch is done.
                // Only when the first accept of a wake-up fails is the
                // socket polled (keeping that syscall off the usual path):
                // a shortage that starts mid-batch shows up there on the
                // next wake-up.
                None if i > 0 || !channel.pending() => return,
                // Failed with a client still queued: one that arrived just
                // now, or a shortage of fds or memory.  Try once more.
                None => match channel.accept() {
                    Some(client) => client,
                    None => {
                        drop(reg);
                        self.back_off(handler, channel);
                        return;
                    }
                },
            };
            reg.spec.call(&handler.owner, &client);
            // `reg` drops here: if the callback was replaced meanwhile,
            // this was the last user and its notify runs now, after it.
        }
    }

    pub fn wait_client(&self, owner: &Owner) -> Option<Channel> {
        let waiter = Arc::new(Waiter {
            main_loop: PrivateLoop::new(),
            client: Mutex::new(None),
        });
        let (channels, suspended) = {
            let mut st = lock(&self.state);
            let channels: Vec<Channel> = st
                .sockets
                .iter()
                .filter(|s| !s.closed)
                .map(|s| s.channel.clone())
                .collect();
            // A dead listener would block forever in QEMU; return at once.
            if !st.connected || channels.is_empty() {
                return None;
            }
            st.waiters.push(waiter.clone());
            (channels, Self::disarm(&mut st))
        };
        drop(suspended);

        let watches: Vec<SourceWatch> = channels
            .iter()
            .map(|c| SourceWatch::new(c, waiter.main_loop.context(), WaitHandler(waiter.clone())))
            .collect();
        waiter.main_loop.run();
        drop(watches);

        {
            let mut st = lock(&self.state);
            st.waiters.retain(|w| !Arc::ptr_eq(w, &waiter));
            Self::arm(&mut st, owner);
        }
        let client = lock(&waiter.client).take();
        client
    }

    pub fn disconnect(&self) {
        let (watches, channels, waiters) = {
            let mut st = lock(&self.state);
            if !st.connected {
                return;
            }
            st.connected = false;
            let watches = Self::disarm(&mut st);
            let channels: Vec<Channel> = st
                .sockets
                .iter_mut()
                .filter(|s| !s.closed)
                .map(|s| {
                    s.closed = true;
                    s.channel.clone()
                })
                .collect();
            (watches, channels, st.waiters.clone())
        };
        // Watches go before their fds are closed (fd numbers get reused).
        drop(watches);
        for c in &channels {
            c.close();
        }
        for w in &waiters {
            w.main_loop.quit();
        }
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.state).connected
    }

    pub fn nsioc(&self) -> usize {
        lock(&self.state).sockets.len()
    }

    /// The nth channel; the caller borrows it (the listener keeps its
    /// reference until finalize).
    pub fn sioc(&self, n: usize) -> Option<Channel> {
        lock(&self.state).sockets.get(n).map(|s| s.channel.clone())
    }
}

impl Default for Listener {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Listener {
    /// Finalize: watches hold references, so none is left by now; close
    /// what is still open, then notify for the last registration.
    fn drop(&mut self) {
        self.disconnect();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        st.client = None;
    }
}
