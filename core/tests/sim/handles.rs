//! Handle tracking: the handlers given to the host (released once, after
//! no dispatch of them runs), listener references (`Owner`, finalize
//! exactly once) and registrations (`Client`: no call after notify, notify
//! once and never during a call).

use super::*;

/// A handler given to the host (watch or timer): what the listener's
/// handler and the channel it watches become, called through an `Arc`.
pub(super) struct Tracked {
    pub(super) id: u64,
    /// Returns whether a watch still serves (timers: ignored).
    pub(super) f: HFn,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.id;
        on_drop(move || {
            try_world(|w| w.handler_dropped(id));
        });
    }
}

pub(super) type HArc = Arc<Tracked>;

pub(super) type HFn = Box<dyn Fn() -> bool + Send + Sync>;

pub(super) struct HRec {
    pub(super) calls: u32,
    pub(super) host_released: bool,
}

pub(super) struct LRec {
    pub(super) refs: usize,
    pub(super) finalizing: bool,
    pub(super) finalized: u32,
    pub(super) obj: Weak<LObj>,
}

#[derive(Default)]
pub(super) struct RegRec {
    pub(super) running: u32,
    pub(super) calls: u64,
    pub(super) notified: u32,
}

impl World {
    pub fn listener_refs(&self, id: u64) -> usize {
        self.listeners.get(&id).map_or(0, |l| l.refs)
    }

    pub fn finalized(&self, id: u64) -> u32 {
        self.listeners.get(&id).map_or(0, |l| l.finalized)
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

    /// How often the host released a handler while a dispatch of it ran.
    pub fn released_in_dispatch(&self) -> u64 {
        self.released_in_dispatch
    }

    pub(super) fn new_handler(&mut self, f: HFn) -> HArc {
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

    pub(super) fn handler_dropped(&mut self, id: u64) {
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

    pub(super) fn host_release(&mut self, id: u64) {
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

    pub(super) fn owner_ref(&mut self, id: u64) {
        match self.listeners.get_mut(&id) {
            Some(l) if l.refs > 0 && !l.finalizing => l.refs += 1,
            _ => self.violation(format!("reference taken on listener {id} after finalize")),
        }
    }

    /// Drops a reference; true if it was the last (finalize starts).
    pub(super) fn owner_unref(&mut self, id: u64) -> bool {
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

    pub(super) fn owner_use(&mut self, id: u64) {
        match self.listeners.get(&id) {
            Some(l) if l.refs > 0 && !l.finalizing => {}
            _ => self.violation(format!("listener {id} used after finalize")),
        }
    }

    pub(super) fn finalized_now(&mut self, id: u64) {
        if let Some(l) = self.listeners.get_mut(&id) {
            l.finalized += 1;
            if l.finalized > 1 {
                self.violation(format!("listener {id} finalized twice"));
            }
        }
        bump(&STATS.finalizes);
        self.emit(Event::FinalizeEnd { listener: id });
    }

    pub(super) fn reg(&mut self, id: u64) -> &mut RegRec {
        self.regs.entry(id).or_default()
    }
}

/// A new listener object with one reference (the caller's).
pub fn new_listener() -> Owner {
    let id = world(super::World::id);
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

/// The listener object: what QOM's instance is.
pub struct LObj {
    pub(super) id: u64,
    pub(super) listener: Listener<Sim>,
}

/// A counted reference to a listener object (QOM reference).  The last
/// one finalizes it (drops the `Listener<Sim>`).
pub struct Owner {
    pub(super) id: u64,
    pub(super) obj: Option<Arc<LObj>>,
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
    pub(super) id: u64,
    pub(super) func: Option<Func>,
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
            // A watch hands out clients of its own socket only (one
            // accepted on a reused fd number would be another's).
            if let Some(FrameKind::Watch { chan, .. }) = w.innermost().map(|f| f.kind) {
                if chan != from {
                    w.violation(format!(
                        "client {conn} of socket {from} handed to a callback by the watch of \
                         socket {chan}"
                    ));
                }
            }
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
