//! The host boundary: the small interface the listener's state machine is
//! written against.
//!
//! Production uses one implementation, `QemuHost` (the `qio-net-listener`
//! crate, `src/qemu/`): QEMU's C API
//! (QOM, `QIOChannelSocket`, `GSource` watches, `AioContext` fd handlers, bottom
//! halves and timers, `Error`), provided either by real QEMU or by the
//! standalone compat host, chosen at link time.  Tests also run the state
//! machine on a deterministic simulated host (`tests/sim/`), which models
//! `GSource` and `AioContext` dispatch, nested polls, bottom halves, timers on a
//! virtual clock, accept queues and fd exhaustion, and fd numbers (reused
//! lowest first, as the kernel does: any use of a closed or reused number
//! is a violation), and checks every handle it gives out.
//!
//! # The contract a host keeps
//!
//! - **Dispatch keeps its handler alive.**  A watch's or timer's handler
//!   stays alive for the whole of every call into it, even if the watch is
//!   dropped during that call, the listener's last reference goes, or the
//!   handler runs a nested loop (`aio_poll`, `AIO_WAIT_WHILE`,
//!   `g_main_context_iteration`) in which the host's own release of the
//!   handler would otherwise run.  It is released once, after no call of it
//!   can still be running.  (`GLib` gives this for `GSource` callback data; for
//!   `AioContext` fd handlers and timers, `QemuHost` takes a reference for each
//!   dispatch.)
//! - **Dropping a watch stops new dispatches at once** for that socket; an
//!   `AioContext` watch must be dropped before a new handler for the same fd
//!   is installed (handlers are keyed by fd), which the state machine does
//!   under its lock.  Dropping an `AioContext` watch or timer never calls
//!   back synchronously; dropping a `GSource` watch or timer may release its
//!   handler at once, so the state machine drops those after unlocking.
//! - **A `GSource` watch's handler is never re-entered**, as with `GLib`'s
//!   default: a loop nested in its dispatch (on the same context) does
//!   not call it again and does not spin on its still-readable socket,
//!   and the watch serves the socket again once the dispatch returns.
//!   (`GLib` gives this by blocking the source during every dispatch;
//!   `QemuHost`'s `GSource` watches pay for it only when a nested loop
//!   finds the socket readable, see its `SourceWatch`.)  An `AioContext`
//!   fd handler may be re-entered by a nested `aio_poll`, as in QEMU.
//! - **The handler owns what it uses**: every handler holds strong
//!   references (the listener [`Host::Owner`], the registration, the
//!   channel) so that "alive during dispatch" covers all of them.
//! - **A destroyed watch's fd is not the host's to use.**  Once dropping a
//!   watch has returned, the host neither dispatches it nor acts on what a
//!   poll of its fd that was already under way reports (`GLib` and QEMU's
//!   `AioContext` discard such results when their poll set changed), so the
//!   listener may close the fd and the kernel may reuse its number.
//!
//! This module knows nothing of the listener: the state machine
//! (`crate::listener`) adds what it needs of a host on top of [`Host`].

use std::{ffi::CStr, fmt::Debug};

/// What a watch calls when its listening socket is readable.
pub trait ReadyHandler<H: Host>: Send + Sync + 'static {
    /// Returns whether the watch still serves.  A `GSource` watch that no
    /// longer does removes itself at once (`G_SOURCE_REMOVE`) rather than
    /// stay ready, and dispatched in vain, until whoever replaced it gets
    /// to destroy it; an `AioContext` watch ignores it (its handler is
    /// removed under the listener's lock).
    fn ready(&self, channel: &H::Channel) -> bool;
}

/// What a one-shot timer calls when it expires.
pub trait TimerHandler: Send + Sync + 'static {
    fn fire(&self);
}

/// A socket channel (`QIOChannelSocket`): a strong reference.
pub trait SocketChannel: Clone + Send + Sync + 'static {
    /// Same underlying channel object.
    fn same(&self, other: &Self) -> bool;
    /// Accepts one pending client, or None (any error discarded, as QEMU's
    /// `qio_channel_socket_accept` returns NULL on every failure).
    fn accept(&self) -> Option<Self>;
    /// Whether a client is queued (the socket is readable now): tells a
    /// shortage of fds or memory (client still queued) from an empty queue.
    fn pending(&self) -> bool;
    fn close(&self);
    /// Shuts the socket down (`shutdown(2)`, both directions) without
    /// releasing its fd: an `accept()` blocked on it returns.
    fn shutdown(&self);
    fn set_name(&self, name: &CStr);
    /// Makes `accept()` return at once when nothing is pending.
    fn set_nonblocking(&self) -> bool;
}

/// A host error (QEMU's `Error`), owned until propagated.
pub trait HostError: Sized {
    fn new() -> Self;
    fn is_set(&self) -> bool;
    fn with_message(msg: &str) -> Self;
}

/// The user's client callback registration: QEMU's (func, data, notify).
pub trait ClientCallback<H: Host>: Send + Sync + 'static {
    /// The "nothing registered" value: no func, data or notify.
    fn none() -> Self;
    fn has_func(&self) -> bool;
    /// The identical registration (QEMU compares by address).
    fn same(&self, other: &Self) -> bool;
    /// Hands `client` to the callback; the listener drops its reference
    /// after this returns.
    fn call(&self, owner: &H::Owner, client: &H::Channel);
    /// Releases the data (`notify(data)`): called once per registration,
    /// when no call of it can still be running.
    fn notify(&self);
}

/// A private main loop that `wait_client` iterates until `quit`.
pub trait WaitLoop<H: Host>: Send + Sync + 'static {
    fn new() -> Self;
    fn context(&self) -> H::GlibCtx;
    /// Dispatches the context until `quit` (which may come before `run`).
    fn run(&self);
    fn quit(&self);
}

/// The host API of the listener.
pub trait Host: Sized + 'static {
    type Channel: SocketChannel;
    /// A strong reference to the listener object (a QOM reference); see
    /// `crate::listener::ListenerHost` for the way to the listener.
    type Owner: Clone + Send + Sync + 'static;
    type Client: ClientCallback<Self>;
    /// A `GMainContext` (the host's "default" value included).
    type GlibCtx: Copy + Eq + Send + Sync + Debug + 'static;
    /// An `AioContext`.
    type AioCtx: Copy + Eq + Send + Sync + Debug + 'static;
    /// A `GSource` watch; dropping it destroys the source.
    type SourceWatch: Send;
    /// An `AioContext` fd handler; dropping it removes the handler.
    type AioWatch: Send;
    /// A one-shot timer; dropping it cancels the timer.
    type Timer: Send;
    type WaitLoop: WaitLoop<Self>;
    type Error: HostError;
    /// A resolved socket address to listen on.
    type Address;

    /// A new, unconnected socket channel.
    fn new_channel() -> Self::Channel;
    /// Listens on `addr`; a failure goes to `err` if given.
    fn listen(
        channel: &Self::Channel,
        addr: &Self::Address,
        backlog: i32,
        err: Option<&mut Self::Error>,
    ) -> bool;
    /// Watches `channel` for clients through a `GSource` on `ctx`.
    fn watch_source<R: ReadyHandler<Self>>(
        channel: &Self::Channel,
        ctx: Self::GlibCtx,
        handler: R,
    ) -> Self::SourceWatch;
    /// Watches `channel` for clients through an fd handler of `ctx`.
    fn watch_aio<R: ReadyHandler<Self>>(
        channel: &Self::Channel,
        ctx: Self::AioCtx,
        handler: R,
    ) -> Self::AioWatch;
    /// A one-shot timer on `ctx` (a `GLib` timeout source).
    fn timer_glib<T: TimerHandler>(ctx: Self::GlibCtx, ms: u32, handler: T) -> Self::Timer;
    /// A one-shot timer on `ctx` (a `QEMUTimer`, so it also fires inside
    /// nested `aio_poll` loops).
    fn timer_aio<T: TimerHandler>(ctx: Self::AioCtx, ms: u32, handler: T) -> Self::Timer;
    /// Reports an internal problem (QEMU's `error_report`).
    fn report(msg: &str);

    /// A monotonic clock in nanoseconds, never 0, for the listener's
    /// guess whether a burst of clients is under way; None (the default)
    /// if the host has none, and then the listener always assumes one may
    /// be.
    fn clock_ns() -> Option<u64> {
        None
    }
}
