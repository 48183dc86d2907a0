//! `wait_client`: a private loop watching every socket until one client is
//! accepted, or the listener is disconnected.

use super::{
    accept::{accept_first, Accepted},
    Counters, FdGate, Listener, ListenerHost, Trace, Waiter, BACKOFF_MS,
};
use crate::{
    host::{Host, ReadyHandler, TimerHandler, WaitLoop},
    sync::{lock, Arc, AtomicBool, Mutex, Ordering::SeqCst},
};

/// The handler of the private watches of `wait_client`, one per socket.
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
        drop(slot);
        waiter.main_loop.quit();
        true
    }
}

/// Ends a `wait_client` back-off: the private loop runs again.
struct WaitBackoffHandler<H: Host>(Arc<Waiter<H>>);

impl<H: ListenerHost> TimerHandler for WaitBackoffHandler<H> {
    fn fire(&self) {
        self.0.main_loop.quit();
    }
}

impl<H: ListenerHost> Listener<H> {
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
            drop(st);
            (sockets, suspended)
        };
        drop(suspended);

        self.run_wait(&waiter, &sockets);

        {
            let mut st = lock(&self.state);
            st.waiters.retain(|w| !Arc::ptr_eq(w, &waiter));
            self.waiting.store(st.waiters.len() as u64, SeqCst);
            self.arm(&mut st, owner, c"wait_client");
            drop(st);
        }
        let client = lock(&waiter.client).take();
        if client.is_some() {
            Counters::bump(&self.counters.accepted);
        }
        client
    }

    /// Iterates `wait_client`'s private loop until a client is accepted or
    /// the listener is disconnected, pausing `BACKOFF_MS` (watches removed,
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
}
