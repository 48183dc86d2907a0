//! Accepting: the handler behind every async watch, batch accept and its
//! hint, and the back-off when accept fails for lack of resources.

use std::{
    ffi::CStr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use super::{
    Counters, FdGate, Listener, ListenerHost, Registration, State, Target, Trace, Watch,
    ACCEPT_BATCH, BACKOFF_MS, BURST_GAP_NS,
};
use crate::{
    host::{ClientCallback, ReadyHandler, SocketChannel, TimerHandler},
    sync::{lock, Arc, Ordering::SeqCst, Weak},
};

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
/// it pays for itself many times over (up to `ACCEPT_BATCH` clients per
/// wake-up instead of one); with one client per wake-up, the common case,
/// it is a system call more than upstream on every wake-up.  So a wake-up
/// looks only when a burst is likely, learnt from the previous wake-ups:
/// - after a wake-up that found a second client (or started the watch),
///   it looks: bursts come in runs;
/// - once a look found nothing after one client, the socket is in *single*
///   mode: it stops looking, and only looks again when a wake-up comes
///   less than `BURST_GAP_NS` after the previous one (the loop came straight
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

/// What the first accept of a wake-up gave.
pub(super) enum Accepted<C> {
    Client(C),
    /// Nothing queued (the client went away first).
    Empty,
    /// Out of file descriptors or memory, the client still queued.
    Shortage,
}

/// The first accept of a wake-up.  Only after a failure is the socket
/// polled (keeping that syscall off the usual path): a client still queued
/// is either one that arrived just now (retried once) or a shortage.
pub(super) fn accept_first<C: SocketChannel>(channel: &C) -> Accepted<C> {
    match channel.accept() {
        Some(client) => Accepted::Client(client),
        None if !channel.pending() => Accepted::Empty,
        None => channel
            .accept()
            .map_or(Accepted::Shortage, Accepted::Client),
    }
}

impl<H: ListenerHost> Listener<H> {
    /// Creates the missing watches if a callback is set and no `wait_client`
    /// runs.  Called with the lock held; creating a watch never calls back.
    pub(super) fn arm(&self, st: &mut State<H>, owner: &H::Owner, by: &'static CStr) {
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

    /// Pauses `channel`'s watch for `BACKOFF_MS`: accept failed while a
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
            let watch = match s.watch.take() {
                Some(Watch::Source(w)) => Some(w),
                Some(Watch::Aio(w)) => {
                    drop(w);
                    None
                }
                None => None,
            };
            drop(st);
            watch
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
            drop(st);
            timer
        };
        drop(timer);
    }

    /// Whether `handler` still serves: its registration is the current one,
    /// the listener was not disconnected since it was armed, and no
    /// `wait_client` has suspended the async watches.  Two atomic loads, no
    /// lock.
    fn serving(&self, handler: &AcceptHandler<H>) -> bool {
        self.epoch.load(SeqCst) == handler.epoch && self.waiting.load(SeqCst) == 0
    }

    /// The watch callback: accepts up to `ACCEPT_BATCH` pending clients (the
    /// listening sockets are non-blocking), handing each to the callback.
    /// The registration is checked before every accept, so a callback that
    /// clears or replaces itself, a `wait_client` or a disconnect (from any
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
