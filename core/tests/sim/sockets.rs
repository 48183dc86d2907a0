//! Sockets: channels (unbound, listening with an accept queue, accepted
//! clients), connections, accept and its failures, close.

use super::*;

pub(super) enum ChanKind {
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

pub(super) struct ChanRec {
    pub(super) refs: usize,
    pub(super) kind: ChanKind,
    pub(super) closed: bool,
    pub(super) nonblocking: bool,
    pub(super) name: Option<CString>,
    /// Its fd number, -1 once closed.
    pub(super) fd: i32,
    /// shutdown(2) was called: accept fails at once, nothing is readable.
    pub(super) shut: bool,
    /// Another service's socket (see `open_unrelated`).
    pub(super) unrelated: bool,
}

impl World {
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

    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    pub(super) fn new_chan(&mut self, kind: ChanKind) -> u64 {
        let id = self.id();
        self.chans.insert(
            id,
            ChanRec {
                refs: 1,
                kind,
                closed: false,
                nonblocking: false,
                name: None,
                fd: -1,
                shut: false,
                unrelated: false,
            },
        );
        let fd = self.alloc_fd(id);
        if let Some(c) = self.chans.get_mut(&id) {
            c.fd = fd;
        }
        id
    }

    pub(super) fn chan(&mut self, id: u64, what: &str) -> Option<&mut ChanRec> {
        match self.chans.get(&id) {
            Some(c) if c.refs > 0 => self.chans.get_mut(&id),
            _ => {
                self.violation(format!("{what} on channel {id} after its last reference"));
                None
            }
        }
    }

    pub(super) fn chan_ref(&mut self, id: u64) {
        if let Some(c) = self.chan(id, "clone") {
            c.refs += 1;
        }
    }

    pub(super) fn chan_unref(&mut self, id: u64) {
        let Some(c) = self.chan(id, "release") else {
            return;
        };
        c.refs -= 1;
        if c.refs > 0 {
            return;
        }
        let mut undelivered = None;
        let mut lost = Vec::new();
        // QEMU's channel finalize closes the fd.
        let close = !std::mem::replace(&mut c.closed, true);
        match &mut c.kind {
            ChanKind::Accepted {
                conn,
                from,
                delivered: false,
            } => undelivered = Some((*conn, *from)),
            ChanKind::Listening { port, queue, .. } if close => {
                lost.extend(queue.drain(..));
                let port = *port;
                if self.ports.get(&port) == Some(&id) {
                    self.ports.remove(&port);
                }
            }
            _ => {}
        }
        if close {
            self.release_fd(id);
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

    pub(super) fn listen(&mut self, id: u64, addr: &Addr, backlog: i32) -> Result<(), String> {
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

    pub(super) fn readable(&self, chan: u64) -> bool {
        match self.chans.get(&chan) {
            Some(ChanRec {
                closed: false,
                shut: false,
                kind: ChanKind::Listening { queue, .. },
                ..
            }) => !queue.is_empty(),
            _ => false,
        }
    }

    pub(super) fn accept(&mut self, id: u64) -> Option<u64> {
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
            // After shutdown(2) accept fails at once, even if blocking.
            _ if c.closed || c.shut => Err(Fail::Nothing),
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

    pub(super) fn close(&mut self, id: u64) {
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
        // The number is free for the next socket at once.
        self.release_fd(id);
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
                    shut: false,
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

    pub(super) fn claim(&mut self, id: u64) -> ConnId {
        match self.chans.get_mut(&id).map(|c| &mut c.kind) {
            Some(ChanKind::Accepted {
                conn,
                delivered,
                from,
            }) => {
                let (conn, from) = (*conn, *from);
                let twice = std::mem::replace(delivered, true);
                if twice {
                    self.violation(format!("client {conn} delivered twice"));
                }
                self.conns.insert(conn, ConnState::Delivered(id));
                if self.chans.get(&from).is_some_and(|c| c.unrelated) {
                    self.violation(format!(
                        "client {conn} of unrelated socket {from} reached the listener's user"
                    ));
                }
                conn
            }
            _ => {
                self.violation(format!("channel {id} is not an accepted client"));
                0
            }
        }
    }
}

/// A channel listening on `port` (0: any), blocking as QEMU's
/// `listen_sync` and socket activation give them.
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

/// The next `n` `set_nonblocking` calls fail.
pub fn fail_nonblocking(n: u32) {
    world(|w| w.fail_nonblocking = n);
}

/// Marks the client of `ch` as handed to the test (`wait_client`'s result).
pub fn claim(ch: &Channel) -> ConnId {
    world(|w| w.claim(ch.id))
}

/// A resolved address: a port (0: any), or one that fails to listen.
#[derive(Clone, Copy, Debug)]
pub struct Addr {
    pub port: u16,
    pub fail: bool,
}

/// A channel reference (`QIOChannelSocket`).
pub struct Channel {
    pub(super) id: u64,
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

    /// Reads the fd number, then accepts on whatever socket has it by then
    /// (two world accesses: a scheduling point between them in shuttle).
    fn accept(&self) -> Option<Self> {
        let fd = world(|w| w.fd_of(self.id, "accept"))?;
        world(|w| {
            let sock = w.on_fd(fd, self.id, "accept")?;
            w.accept(sock)
        })
        .map(|id| Channel { id })
    }

    /// Reads the fd number, then polls it (as accept).  A poll after the
    /// dispatch accepted a client is its look for a second one: recorded
    /// in the frame (`Frame::look`).
    fn pending(&self) -> bool {
        let Some(fd) = world(|w| w.fd_of(self.id, "poll")) else {
            return false;
        };
        world(|w| {
            let found = w.on_fd(fd, self.id, "poll").is_some_and(|s| w.readable(s));
            let look = w.innermost().filter(|f| f.accepts > 0).map(|f| {
                f.look = Some(found);
                (f.id, f.handler)
            });
            if let Some((frame, handler)) = look {
                w.emit(Event::Look {
                    frame,
                    handler,
                    found,
                });
            }
            found
        })
    }

    fn close(&self) {
        world(|w| w.close(self.id));
    }

    fn shutdown(&self) {
        bump(&STATS.shutdowns);
        world(|w| {
            if let Some(c) = w
                .on_own_fd(self.id, "shutdown")
                .and_then(|s| w.chans.get_mut(&s))
            {
                c.shut = true;
            }
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
            let sock = w.on_own_fd(self.id, "set_nonblocking");
            match sock.and_then(|s| w.chans.get_mut(&s)) {
                Some(c) => {
                    c.nonblocking = true;
                    true
                }
                None => false,
            }
        })
    }
}
