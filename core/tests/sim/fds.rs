//! File descriptor numbers, as the kernel hands them out: every open
//! channel (unbound, listening, accepted) holds one, allocated lowest free
//! first and released by close (or by the channel's finalize), free for
//! the next socket at once.
//!
//! An operation of the listener on a channel acts on the number the
//! channel had when the operation started (QEMU reads `ioc->fd`, then
//! enters the kernel): `Channel::accept` and `Channel::pending` read the
//! number in one world access and act on whatever socket holds it in the
//! next, so in the fine (shuttle) world a close can fall in between, as
//! it can for real.  Using a closed number, or one that now belongs to
//! another socket, is a violation; the operation then acts on that other
//! socket, so the damage (a client of another service accepted) shows
//! too.  Watches poll the number they were created with.
//!
//! "Unrelated" sockets (`open_unrelated`) stand for another service in
//! the same process: the listener must never touch them, none of their
//! clients may reach a callback or `wait_client`, and at the end of the
//! test their clients must still be queued.

use super::*;

/// The lowest number a socket gets (0-2 are stdio).
pub const FIRST_FD: i32 = 3;

impl World {
    /// The fd number of `chan`, -1 if closed (QEMU's `sioc->fd`).
    pub fn fd(&self, chan: u64) -> i32 {
        self.chans.get(&chan).map_or(-1, |c| c.fd)
    }

    /// The socket holding `fd` now.
    pub fn fd_owner(&self, fd: i32) -> Option<u64> {
        self.fds.get(&fd).copied()
    }

    pub(super) fn alloc_fd(&mut self, chan: u64) -> i32 {
        let mut fd = FIRST_FD;
        for used in self.fds.keys() {
            if *used != fd {
                break;
            }
            fd += 1;
        }
        self.fds.insert(fd, chan);
        fd
    }

    /// Closes `chan`'s number: the next socket may get it at once.
    pub(super) fn release_fd(&mut self, chan: u64) {
        let Some(c) = self.chans.get_mut(&chan) else {
            return;
        };
        let fd = std::mem::replace(&mut c.fd, -1);
        if self.fds.get(&fd) == Some(&chan) {
            self.fds.remove(&fd);
            self.last_holder.insert(fd, chan);
        }
    }

    /// The first half of an operation on `chan`: reads its number.  None
    /// (a violation) if the channel is closed.
    pub(super) fn fd_of(&mut self, chan: u64, what: &str) -> Option<i32> {
        let fd = self.chan(chan, what)?.fd;
        if fd < 0 {
            self.fd_violation(format!("{what} on socket {chan}, already closed"));
            return None;
        }
        Some(fd)
    }

    /// The second half: the socket that holds `fd` now, which should still
    /// be `chan`.  A violation otherwise; the operation then acts on the
    /// socket that holds the number now, if any.
    pub(super) fn on_fd(&mut self, fd: i32, chan: u64, what: &str) -> Option<u64> {
        match self.fd_owner(fd) {
            Some(s) if s == chan => Some(s),
            Some(s) => {
                self.fd_violation(format!(
                    "{what} on fd {fd} of socket {chan}, which was closed and now belongs to \
                     socket {s}"
                ));
                Some(s)
            }
            None => {
                self.fd_violation(format!(
                    "{what} on fd {fd} of socket {chan}, closed meanwhile"
                ));
                None
            }
        }
    }

    /// Both halves at once (operations that are one world access).
    pub(super) fn on_own_fd(&mut self, chan: u64, what: &str) -> Option<u64> {
        let fd = self.fd_of(chan, what)?;
        self.on_fd(fd, chan, what)
    }

    fn fd_violation(&mut self, msg: String) {
        bump(&STATS.fd_violations);
        self.violation(msg);
    }

    /// A watch of `chan` created on `fd` is being dispatched: it polled
    /// `fd`, which must still be `chan`'s.
    pub(super) fn check_watch_fd(&mut self, chan: u64, fd: i32) {
        match self.fd_owner(fd) {
            Some(s) if s == chan => {}
            Some(s) => self.fd_violation(format!(
                "watch of socket {chan} dispatched for fd {fd}, which now belongs to socket {s}"
            )),
            None => self.fd_violation(format!(
                "watch of socket {chan} dispatched for fd {fd}, closed"
            )),
        }
    }

    /// Whether a poll of `fd` finds a client queued (on whichever socket
    /// holds the number now).
    pub(super) fn fd_readable(&self, fd: i32) -> bool {
        self.fd_owner(fd).is_some_and(|s| self.readable(s))
    }

    /// Checks the unrelated sockets (untouched, every client still
    /// queued), then closes them.
    pub(super) fn close_unrelated(&mut self) {
        for (chan, fd, conns) in std::mem::take(&mut self.unrelated) {
            let queue = self.queue(chan);
            if self.fd(chan) != fd || self.closed(chan) {
                self.violation(format!("unrelated socket {chan} (fd {fd}) was closed"));
            } else if queue != conns {
                self.violation(format!(
                    "unrelated socket {chan} (fd {fd}) lost clients: {conns:?} connected, \
                     {queue:?} queued"
                ));
            }
            // Its finalize closes it (no event: the listener never had it).
            self.chan_unref(chan);
        }
    }
}

/// Another service's listening socket in the same process, with `clients`
/// clients queued: it takes the lowest free fd number (one the listener
/// just released, say).  Returns (socket, port, fd, clients).  The sim
/// keeps it until the end of the test and then checks that it was not
/// touched.
pub fn open_unrelated(clients: usize) -> (u64, u16, i32, Vec<ConnId>) {
    world(|w| {
        let chan = w.new_chan(ChanKind::Unbound);
        let addr = Addr {
            port: 0,
            fail: false,
        };
        w.listen(chan, &addr, 16).expect("listen");
        if let Some(c) = w.chans.get_mut(&chan) {
            c.unrelated = true;
        }
        let port = w.port(chan).expect("port");
        let conns: Vec<ConnId> = (0..clients)
            .filter_map(|_| {
                let c = w.id();
                w.connect_as(c, port).then_some(c)
            })
            .collect();
        let fd = w.fd(chan);
        let reused = w.last_holder.get(&fd).and_then(|c| w.chans.get(c));
        if reused.is_some_and(|c| matches!(c.kind, ChanKind::Listening { .. }) && !c.unrelated) {
            bump(&STATS.unrelated_on_reused);
        }
        bump(&STATS.unrelated);
        w.unrelated.push((chan, fd, conns.clone()));
        (chan, port, fd, conns)
    })
}
