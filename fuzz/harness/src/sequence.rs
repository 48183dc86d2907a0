//! Target `api_sequence`: sequences of calls through the C ABI on the
//! compat host, with real loopback and unix clients and the loops driven
//! without blocking (`g_main_context_iteration(ctx, FALSE)`,
//! `aio_poll(ctx, false)`): new, ref/unref, `set_name`, `open_sync`, add,
//! `set_client_func`(_full) and `set_client_aio_func` on the default and a
//! private `GMainContext`, the main and a private `AioContext`, with
//! callbacks that clear, re-set, replace, toggle, disconnect, unref or
//! nest loops from inside; `wait_client` only with a client queued (or on a
//! listener that is not connected, where it must return at once);
//! disconnect, `is_connected`, nsioc, sioc, `get_local_address` with any
//! index; and the NULL listener everywhere.
//!
//! Checked: results against a model (connected, channel count, index
//! ranges, errors); every `notify` exactly once per registration, never
//! while its callback runs, and no callback after it; callbacks only for
//! live listeners; finalize (seen through a QOM property's release) only
//! when the harness holds no reference, and for every listener by the end
//! of the input; no descriptor left open.
//!
//! At the end every listener the harness still holds gets a last `GLib`
//! registration, is disconnected and dropped; listeners that the harness
//! dropped while they served a callback (kept alive by their watches, as
//! in QEMU) get a client each, whose callback re-registers and
//! disconnects them, as QEMU callers do.

use std::{
    cell::{Cell, RefCell},
    ffi::{c_char, c_void},
    ptr,
    time::{Duration, Instant},
};

use arbitrary::{Arbitrary, Unstructured};
use qemucompat::sys;
use qio_net_listener::{ffi::*, qemu::QIOChannelSocket as Sioc};

use crate::{
    address::{check_bound, Addr, Bound, Client, Expect, Target},
    support::{g_strdup_bytes, process, take_error, FdCheck},
};

const MAX_OPS: usize = 64;
const MAX_LISTENERS: usize = 8;
const MAX_CONNECTS: usize = 24;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum GlibCtx {
    Default,
    Private,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum AioCtx {
    /// NULL: the main-loop `AioContext`.
    Null,
    Main,
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Glib(GlibCtx),
    Aio(AioCtx),
}

/// What a callback does from inside.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Action {
    Count,
    /// Keeps the client (a reference of its own).
    Keep,
    ClearSelf,
    /// Sets the identical callback again (a no-op).
    SetSame,
    /// A new registration of the same kind.
    Replace,
    /// A new registration of the other kind (`GLib` <-> `AioContext`).
    Toggle,
    Disconnect,
    /// Drops one of the harness's references to the listener.
    Unref,
    DisconnectUnref,
    /// Iterates every loop once (nested up to two levels).
    Nested,
    /// Queries everything and checks it against the model.
    Query,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Loop {
    Default,
    Private,
    MainAio,
    PrivateAio,
    All,
}

/// After a client connects.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Then {
    Nothing,
    /// `wait_client()`, if the listener is held and the client queued.
    Wait,
    /// Iterates a loop 1 to 4 times (callbacks run).
    Iterate(Loop, u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Index {
    Small(u8),
    Huge(usize),
}

impl Index {
    fn get(self) -> usize {
        match self {
            Index::Small(n) => usize::from(n % 4),
            Index::Huge(n) => n,
        }
    }
}

/// A listening channel to adopt with `qio_net_listener_add()`.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum AddKind {
    Tcp4,
    Tcp6,
    Unix,
    Abstract,
    /// `qio_channel_socket_new_fd()` of a listening socket made here.
    Fd,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    New,
    Ref(u8),
    Unref(u8),
    SetName(u8, Option<String>),
    Open {
        l: u8,
        addr: Addr,
        num: i8,
    },
    Add {
        l: u8,
        kind: AddKind,
    },
    SetFunc {
        l: u8,
        action: Action,
        ctx: GlibCtx,
        notify: bool,
    },
    SetAioFunc {
        l: u8,
        action: Action,
        ctx: AioCtx,
    },
    SetSame(u8),
    Clear {
        l: u8,
        aio: bool,
    },
    /// A client to the nth channel of any listener still alive, then
    /// what `then` says.
    Connect {
        l: u8,
        n: u8,
        then: Then,
    },
    /// `wait_client()` on a listener that is not connected: NULL at once.
    WaitIdle(u8),
    Disconnect(u8),
    IsConnected(u8),
    Nsioc(u8),
    Sioc(u8, Index),
    LocalAddress(u8, Index),
    Iterate {
        which: Loop,
        times: u8,
    },
    DropClients,
    NullListener,
}

/// One registration's data: what the callback does, and what happened.
struct Reg {
    action: Action,
    notify: bool,
    running: Cell<u32>,
    calls: Cell<u32>,
    notified: Cell<u32>,
}

#[derive(Clone, Copy, PartialEq)]
struct Current {
    reg: *const Reg,
    kind: Kind,
}

/// The model of one listener.
struct Lst {
    ptr: usize,
    /// References the harness holds.
    refs: u32,
    finalized: bool,
    connected: bool,
    nsioc: usize,
    current: Option<Current>,
    /// Where clients reach its channels.
    targets: Vec<Target>,
}

#[derive(Default)]
struct State {
    listeners: Vec<Lst>,
    /// Boxed: callbacks hold pointers to them while the vector grows.
    #[allow(clippy::vec_box)]
    regs: Vec<Box<Reg>>,
    kept: Vec<usize>,
    clients: Vec<Client>,
    connects: usize,
    bound: Bound,
    cleanup: bool,
    depth: u32,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Short borrows only: nothing that may call back into the harness runs
/// inside `f`.
fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

fn lp(i: usize) -> *mut QIONetListener {
    with(|s| s.listeners[i].ptr as *mut QIONetListener)
}

/// The index of the live listener at `l`.
fn find(l: *mut QIONetListener) -> Option<usize> {
    with(|s| {
        s.listeners
            .iter()
            .position(|x| x.ptr == l as usize && !x.finalized)
    })
}

/// The `n`th listener the harness holds a reference to.
fn held(n: u8) -> Option<usize> {
    with(|s| {
        let h: Vec<usize> = (0..s.listeners.len())
            .filter(|&i| s.listeners[i].refs > 0)
            .collect();
        (!h.is_empty()).then(|| h[usize::from(n) % h.len()])
    })
}

fn new_reg(action: Action, notify: bool) -> *const Reg {
    let r = Box::new(Reg {
        action,
        notify,
        running: Cell::new(0),
        calls: Cell::new(0),
        notified: Cell::new(0),
    });
    let p: *const Reg = &*r;
    with(|s| s.regs.push(r));
    p
}

unsafe extern "C" fn on_release(_obj: *mut sys::Object, _name: *const c_char, opaque: *mut c_void) {
    let i = opaque as usize;
    with(|s| {
        let x = &mut s.listeners[i];
        assert!(!x.finalized, "listener {i} finalized twice");
        assert_eq!(
            x.refs, 0,
            "listener {i} finalized while the harness holds {} references",
            x.refs
        );
        x.finalized = true;
    });
}

unsafe extern "C" fn on_notify(data: *mut c_void) {
    // SAFETY: data is a Reg of this input's arena, freed only at its end.
    let r = unsafe { &*(data as *const Reg) };
    assert!(r.notify, "notify for a registration without one");
    assert_eq!(r.running.get(), 0, "notify while its callback runs");
    assert_eq!(r.notified.get(), 0, "notify twice for one registration");
    r.notified.set(1);
}

unsafe extern "C" fn on_client(l: *mut QIONetListener, client: *mut Sioc, data: *mut c_void) {
    // SAFETY: data is a Reg of this input's arena, freed only at its end.
    let r = unsafe { &*(data as *const Reg) };
    assert_eq!(r.notified.get(), 0, "callback after its notify");
    assert!(!client.is_null(), "callback with a NULL client");
    // SAFETY: the client is live during the callback.
    assert!(unsafe { (*client.cast::<sys::QIOChannelSocket>()).fd } >= 0);
    let i = find(l).expect("callback for a listener that is finalized or unknown");
    r.running.set(r.running.get() + 1);
    r.calls.set(r.calls.get() + 1);
    if with(|s| s.cleanup) {
        last_registration_and_disconnect(i);
    } else {
        act(i, r.action, client);
    }
    r.running.set(r.running.get() - 1);
}

/// As a QEMU caller that is done with listener `i`: a last registration
/// (whose notify, at finalize, proves finalize), then disconnect.
fn last_registration_and_disconnect(i: usize) {
    set(
        i,
        Kind::Glib(GlibCtx::Default),
        Some(new_reg(Action::Count, true)),
    );
    disconnect(i);
}

fn act(i: usize, action: Action, client: *mut Sioc) {
    let cur = with(|s| s.listeners[i].current);
    let kind = cur.map_or(Kind::Glib(GlibCtx::Default), |c| c.kind);
    match action {
        Action::Count => {}
        Action::Keep => {
            // SAFETY: the client is live during the callback; the new
            // reference is dropped at the end of the input.
            unsafe {
                sys::object_ref(client.cast());
            }
            with(|s| s.kept.push(client as usize));
        }
        Action::ClearSelf => set(i, kind, None),
        Action::SetSame => {
            if let Some(c) = cur {
                set(i, c.kind, Some(c.reg));
            }
        }
        Action::Replace => set(i, kind, Some(new_reg(Action::Count, is_glib(kind)))),
        Action::Toggle => {
            let k = if is_glib(kind) {
                Kind::Aio(AioCtx::Main)
            } else {
                Kind::Glib(GlibCtx::Default)
            };
            set(i, k, Some(new_reg(Action::Count, is_glib(k))));
        }
        Action::Disconnect => disconnect(i),
        Action::Unref => unref(i),
        Action::DisconnectUnref => {
            disconnect(i);
            unref(i);
        }
        Action::Nested => {
            let depth = with(|s| s.depth);
            if depth < 2 {
                with(|s| s.depth += 1);
                iterate(Loop::All, 1);
                with(|s| s.depth -= 1);
            }
        }
        Action::Query => query(i),
    }
}

fn is_glib(k: Kind) -> bool {
    matches!(k, Kind::Glib(_))
}

fn glib_ctx(c: GlibCtx) -> *mut sys::GMainContext {
    match c {
        GlibCtx::Default => ptr::null_mut(),
        GlibCtx::Private => process().glib(),
    }
}

fn aio_ctx(c: AioCtx) -> *mut sys::AioContext {
    match c {
        AioCtx::Null => ptr::null_mut(),
        // SAFETY: the main loop is initialized (process()).
        AioCtx::Main => unsafe { sys::qemu_get_aio_context() },
        AioCtx::Private => process().aio(),
    }
}

/// Sets (or with None clears) listener `i`'s callback, and the model.
fn set(i: usize, kind: Kind, reg: Option<*const Reg>) {
    let l = lp(i);
    let func: QIONetListenerClientFunc =
        reg.map(|_| on_client as unsafe extern "C" fn(*mut QIONetListener, *mut Sioc, *mut c_void));
    let data = reg.map_or(ptr::null_mut(), |r| r as *mut c_void);
    // SAFETY: a live listener (held, or inside its callback); the data
    // outlives the input, which outlives every listener.
    unsafe {
        match kind {
            Kind::Glib(c) => {
                let notify = reg.and_then(|r| {
                    (*r).notify
                        .then_some(on_notify as unsafe extern "C" fn(*mut c_void))
                });
                qio_net_listener_set_client_func_full(l, func, data, notify, glib_ctx(c));
            }
            Kind::Aio(c) => {
                qio_net_listener_set_client_aio_func(l, func, data, aio_ctx(c).cast());
            }
        }
    }
    with(|s| s.listeners[i].current = reg.map(|reg| Current { reg, kind }));
}

fn disconnect(i: usize) {
    // SAFETY: a live listener.
    unsafe {
        qio_net_listener_disconnect(lp(i));
    }
    with(|s| s.listeners[i].connected = false);
}

/// Drops one of the harness's references, if it has one.
fn unref(i: usize) {
    let l = lp(i);
    let had = with(|s| {
        let x = &mut s.listeners[i];
        let had = x.refs > 0;
        if had {
            x.refs -= 1;
        }
        had
    });
    if had {
        // SAFETY: drops a reference the harness held.
        unsafe {
            sys::object_unref(l.cast());
        }
    }
}

/// Checks everything the API says about listener `i` against the model.
fn query(i: usize) {
    let l = lp(i);
    let (connected, nsioc) = with(|s| (s.listeners[i].connected, s.listeners[i].nsioc));
    // SAFETY: a live listener.
    unsafe {
        assert_eq!(qio_net_listener_is_connected(l), connected, "is_connected");
        assert_eq!(qio_net_listener_nsioc(l), nsioc, "nsioc");
    }
    for n in 0..=nsioc {
        check_sioc(i, n);
        check_local_address(i, n);
    }
}

fn check_sioc(i: usize, n: usize) {
    let nsioc = with(|s| s.listeners[i].nsioc);
    // SAFETY: a live listener.
    let c = unsafe { qio_net_listener_sioc(lp(i), n) };
    assert_eq!(c.is_null(), n >= nsioc, "sioc({n}) of {nsioc}");
}

fn check_local_address(i: usize, n: usize) {
    let nsioc = with(|s| s.listeners[i].nsioc);
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: a live listener, an unset error; the address is ours.
    unsafe {
        let a = qio_net_listener_get_local_address(lp(i), n, ptr::from_mut(&mut err).cast())
            .cast::<sys::SocketAddress>();
        let msg = take_error(&mut err);
        assert!(
            a.is_null() != msg.is_none(),
            "get_local_address({n}): address XOR error"
        );
        if n >= nsioc {
            assert!(a.is_null(), "get_local_address({n}) of {nsioc} channels");
        } else if !a.is_null() {
            check_bound(a, &Expect::Any);
        }
        sys::qapi_free_SocketAddress(a);
    }
}

/// After an open or add: the model takes the new channels, and where
/// clients reach them.
fn adopt_new_channels(i: usize) {
    let l = lp(i);
    let old = with(|s| s.listeners[i].nsioc);
    // SAFETY: a live listener.
    let n = unsafe { qio_net_listener_nsioc(l) };
    assert!(n >= old, "nsioc went down");
    for k in old..n {
        let mut err: *mut sys::Error = ptr::null_mut();
        // SAFETY: a live listener, an unset error; the address is ours.
        unsafe {
            let a = qio_net_listener_get_local_address(l, k, ptr::from_mut(&mut err).cast())
                .cast::<sys::SocketAddress>();
            let msg = take_error(&mut err);
            assert!(!a.is_null(), "new channel {k}: no local address: {msg:?}");
            let t = check_bound(a, &Expect::Any);
            with(|s| {
                // SAFETY: a valid address.
                s.bound.record(a);
                s.listeners[i].targets.extend(t);
            });
            sys::qapi_free_SocketAddress(a);
        }
    }
    with(|s| {
        let x = &mut s.listeners[i];
        x.nsioc = n;
        if n > old {
            x.connected = true;
        }
    });
}

fn iterate(which: Loop, times: u8) {
    let p = process();
    for _ in 0..times {
        // SAFETY: the contexts live for the whole process; this thread
        // is the main-loop thread.
        unsafe {
            if matches!(which, Loop::Default | Loop::All) {
                sys::g_main_context_iteration(ptr::null_mut(), 0);
            }
            if matches!(which, Loop::Private | Loop::All) {
                sys::g_main_context_iteration(p.glib(), 0);
            }
            if matches!(which, Loop::MainAio | Loop::All) {
                sys::aio_poll(sys::qemu_get_aio_context(), false);
            }
            if matches!(which, Loop::PrivateAio | Loop::All) {
                sys::aio_poll(p.aio(), false);
            }
        }
    }
}

fn new_listener() {
    if with(|s| s.listeners.len()) >= MAX_LISTENERS {
        return;
    }
    let l = qio_net_listener_new();
    assert!(!l.is_null());
    let i = with(|s| {
        s.listeners.push(Lst {
            ptr: l as usize,
            refs: 1,
            finalized: false,
            connected: false,
            nsioc: 0,
            current: None,
            targets: Vec::new(),
        });
        s.listeners.len() - 1
    });
    // SAFETY: a live object; the release callback runs at finalize.
    unsafe {
        sys::object_property_add(
            l.cast(),
            c"fuzz-finalize".as_ptr(),
            c"fuzz".as_ptr(),
            None,
            None,
            Some(on_release),
            i as *mut c_void,
        );
    }
}

fn open(i: usize, addr: &Addr, num: i8) {
    // A vsock address is never bound here: no client could reach it.
    let addr = addr.clone().without_vsock();
    let (c, expect) = with(|s| addr.build(&mut s.bound));
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: a live listener, a valid address, an unset error.
    let rc = unsafe {
        qio_net_listener_open_sync(
            lp(i),
            c.0.cast(),
            i32::from(num),
            ptr::from_mut(&mut err).cast(),
        )
    };
    let msg = take_error(&mut err);
    let before = with(|s| s.listeners[i].nsioc);
    match rc {
        0 => {
            assert!(msg.is_none(), "open_sync = 0 with an error");
            assert!(expect != Expect::Fail, "open_sync = 0 for a bad address");
            adopt_new_channels(i);
            let after = with(|s| s.listeners[i].nsioc);
            assert!(after > before, "open_sync = 0 without a new channel");
            // The channels of this open only: the address asked for.
            for k in before..after {
                check_expected(i, k, &expect);
            }
        }
        -1 => {
            assert!(msg.is_some(), "open_sync = -1 without an error");
            query(i);
        }
        rc => panic!("open_sync = {rc}"),
    }
}

fn check_expected(i: usize, k: usize, expect: &Expect) {
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: a live listener, an unset error; the address is ours.
    unsafe {
        let a = qio_net_listener_get_local_address(lp(i), k, ptr::from_mut(&mut err).cast())
            .cast::<sys::SocketAddress>();
        take_error(&mut err);
        assert!(!a.is_null());
        check_bound(a, expect);
        sys::qapi_free_SocketAddress(a);
    }
}

/// A listening channel of `kind`, adopted by listener `i`.
fn add(i: usize, kind: AddKind) {
    let p = process();
    let spec: Vec<u8> = match kind {
        AddKind::Tcp4 => b"127.0.0.1:0".to_vec(),
        AddKind::Tcp6 => b"[::1]:0".to_vec(),
        AddKind::Unix => {
            let n = with(|s| s.bound.paths.len());
            let mut v = b"unix:".to_vec();
            v.extend_from_slice(
                p.tmp
                    .join(format!("add-{n}"))
                    .as_os_str()
                    .as_encoded_bytes(),
            );
            v
        }
        AddKind::Abstract => {
            let n = with(|s| s.bound.paths.len() + s.listeners.len());
            format!("unix:{}add-{n},abstract=on", p.abstract_prefix).into_bytes()
        }
        AddKind::Fd => {
            let fd: std::os::fd::OwnedFd =
                std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                    .expect("127.0.0.1:0")
                    .into();
            format!("fd:{}", std::os::fd::IntoRawFd::into_raw_fd(fd)).into_bytes()
        }
    };
    let spec = g_strdup_bytes(&spec);
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: C strings and objects we own; the listener takes its own
    // reference to the channel.
    unsafe {
        let a = sys::socket_parse(spec, &mut err);
        sys::g_free(spec.cast());
        let parse_msg = take_error(&mut err);
        assert!(!a.is_null(), "socket_parse: {parse_msg:?}");
        let sioc = sys::qio_channel_socket_new();
        let rc = sys::qio_channel_socket_listen_sync(sioc, a, 4, &mut err);
        sys::qapi_free_SocketAddress(a);
        let msg = take_error(&mut err);
        if rc == 0 {
            qio_net_listener_add(lp(i), sioc.cast());
            adopt_new_channels(i);
        } else {
            // IPv6 may be missing.
            assert!(msg.is_some(), "listen_sync = {rc} without an error");
        }
        sys::object_unref(sioc.cast());
    }
}

/// Whether one of listener `i`'s open channels has a client queued.
fn client_queued(i: usize) -> bool {
    let l = lp(i);
    let nsioc = with(|s| s.listeners[i].nsioc);
    let mut fds: Vec<libc::pollfd> = (0..nsioc)
        .map(|n| {
            // SAFETY: a live listener; the channel is borrowed.
            let c = unsafe { qio_net_listener_sioc(l, n) }.cast::<sys::QIOChannelSocket>();
            libc::pollfd {
                // SAFETY: a live channel.
                fd: unsafe { (*c).fd },
                events: libc::POLLIN,
                revents: 0,
            }
        })
        .collect();
    // SAFETY: a valid array of pollfds; negative fds are ignored.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    n > 0 && fds.iter().any(|f| f.revents & libc::POLLIN != 0)
}

fn connect(l: u8, n: u8, then: Then) {
    let pick = with(|s| {
        if s.connects >= MAX_CONNECTS {
            return None;
        }
        let live: Vec<usize> = (0..s.listeners.len())
            .filter(|&i| !s.listeners[i].finalized && !s.listeners[i].targets.is_empty())
            .collect();
        if live.is_empty() {
            return None;
        }
        let i = live[usize::from(l) % live.len()];
        let t = &s.listeners[i].targets;
        s.connects += 1;
        Some((i, t[usize::from(n) % t.len()].clone()))
    });
    let Some((i, target)) = pick else { return };
    let Some(client) = target.connect() else {
        return;
    };
    with(|s| s.clients.push(client));
    let (refs, connected) = with(|s| (s.listeners[i].refs, s.listeners[i].connected));
    if let Then::Iterate(which, times) = then {
        iterate(which, times % 4 + 1);
        return;
    }
    if matches!(then, Then::Wait) && refs > 0 && connected && client_queued(i) {
        // SAFETY: a live listener with a client queued: returns at once.
        let c = unsafe { qio_net_listener_wait_client(lp(i)) };
        assert!(
            !c.is_null(),
            "wait_client with a client queued returned NULL"
        );
        // SAFETY: wait_client gave us a reference.
        unsafe {
            sys::object_unref(c.cast());
        }
    }
}

fn null_listener() {
    let l: *mut QIONetListener = ptr::null_mut();
    let mut err: *mut sys::Error = ptr::null_mut();
    // SAFETY: the API accepts a NULL listener everywhere.
    unsafe {
        qio_net_listener_set_name(l, c"x".as_ptr());
        let a = sys::socket_parse(c"127.0.0.1:0".as_ptr(), ptr::null_mut());
        assert_eq!(
            qio_net_listener_open_sync(l, a.cast(), 1, ptr::from_mut(&mut err).cast()),
            -1
        );
        sys::qapi_free_SocketAddress(a);
        assert!(
            take_error(&mut err).is_some(),
            "open_sync(NULL) without an error"
        );
        qio_net_listener_add(l, ptr::null_mut());
        qio_net_listener_set_client_func(l, Some(on_client), ptr::null_mut(), None);
        qio_net_listener_set_client_aio_func(l, Some(on_client), ptr::null_mut(), ptr::null_mut());
        assert!(qio_net_listener_wait_client(l).is_null());
        qio_net_listener_disconnect(l);
        assert!(!qio_net_listener_is_connected(l));
        assert_eq!(qio_net_listener_nsioc(l), 0);
        assert!(qio_net_listener_sioc(l, 0).is_null());
        let local = qio_net_listener_get_local_address(l, 0, ptr::from_mut(&mut err).cast());
        assert!(local.is_null());
        assert!(
            take_error(&mut err).is_some(),
            "get_local_address(NULL) without an error"
        );
    }
}

fn step(op: &Op) {
    match *op {
        Op::New => new_listener(),
        Op::Ref(l) => {
            if let Some(i) = held(l) {
                // SAFETY: a live listener; the reference is counted.
                unsafe {
                    sys::object_ref(lp(i).cast());
                }
                with(|s| s.listeners[i].refs += 1);
            }
        }
        Op::Unref(l) => {
            if let Some(i) = held(l) {
                unref(i);
            }
        }
        Op::SetName(l, ref name) => {
            if let Some(i) = held(l) {
                let n = name.as_ref().map(|n| g_strdup_bytes(n.as_bytes()));
                // SAFETY: a live listener; the name is copied.
                unsafe {
                    qio_net_listener_set_name(lp(i), n.unwrap_or(ptr::null_mut()));
                    sys::g_free(n.unwrap_or(ptr::null_mut()).cast());
                }
            }
        }
        Op::Open { l, ref addr, num } => {
            if let Some(i) = held(l) {
                open(i, addr, num);
            }
        }
        Op::Add { l, kind } => {
            if let Some(i) = held(l) {
                add(i, kind);
            }
        }
        Op::SetFunc {
            l,
            action,
            ctx,
            notify,
        } => {
            if let Some(i) = held(l) {
                set(i, Kind::Glib(ctx), Some(new_reg(action, notify)));
            }
        }
        Op::SetAioFunc { l, action, ctx } => {
            if let Some(i) = held(l) {
                set(i, Kind::Aio(ctx), Some(new_reg(action, false)));
            }
        }
        Op::SetSame(l) => {
            if let Some(i) = held(l) {
                if let Some(c) = with(|s| s.listeners[i].current) {
                    set(i, c.kind, Some(c.reg));
                    // SAFETY: the Reg lives in this input's arena.
                    let notified = unsafe { (*c.reg).notified.get() };
                    assert_eq!(notified, 0, "identical set notified");
                }
            }
        }
        Op::Clear { l, aio } => {
            if let Some(i) = held(l) {
                let k = if aio {
                    Kind::Aio(AioCtx::Null)
                } else {
                    Kind::Glib(GlibCtx::Default)
                };
                set(i, k, None);
            }
        }
        Op::Connect { l, n, then } => connect(l, n, then),
        Op::WaitIdle(l) => {
            if let Some(i) = held(l) {
                if !with(|s| s.listeners[i].connected) {
                    // SAFETY: a live listener that is not connected.
                    let c = unsafe { qio_net_listener_wait_client(lp(i)) };
                    assert!(
                        c.is_null(),
                        "wait_client on a listener that is not connected"
                    );
                }
            }
        }
        Op::Disconnect(l) => {
            if let Some(i) = held(l) {
                disconnect(i);
            }
        }
        Op::IsConnected(l) | Op::Nsioc(l) => {
            if let Some(i) = held(l) {
                query(i);
            }
        }
        Op::Sioc(l, n) => {
            if let Some(i) = held(l) {
                check_sioc(i, n.get());
            }
        }
        Op::LocalAddress(l, n) => {
            if let Some(i) = held(l) {
                check_local_address(i, n.get());
            }
        }
        Op::Iterate { which, times } => iterate(which, times % 8 + 1),
        Op::DropClients => drop_clients(),
        Op::NullListener => null_listener(),
    }
}

fn drop_clients() {
    let (kept, clients) = with(|s| (std::mem::take(&mut s.kept), std::mem::take(&mut s.clients)));
    for c in kept {
        // SAFETY: the reference taken by a Keep callback.
        unsafe {
            sys::object_unref(c as *mut c_void);
        }
    }
    drop(clients);
}

/// Ends the input: every listener finalized, every registration notified
/// as it must be, no descriptor left.
fn finish() {
    with(|s| s.cleanup = true);
    let n = with(|s| s.listeners.len());
    for i in 0..n {
        let refs = with(|s| s.listeners[i].refs);
        if refs > 0 {
            last_registration_and_disconnect(i);
            for _ in 0..refs {
                unref(i);
            }
        }
        iterate(Loop::All, 2);
    }
    // Listeners kept alive by their watches: a client each, then the
    // loops, until all are finalized (bounded: a slow machine gets more
    // rounds, a listener that never goes away fails below).
    let deadline = Instant::now() + Duration::from_secs(2);
    for round in 0.. {
        if with(|s| s.listeners.iter().all(|x| x.finalized)) || Instant::now() > deadline {
            break;
        }
        if round % 8 == 0 {
            let targets: Vec<Target> = with(|s| {
                s.listeners
                    .iter()
                    .filter(|x| !x.finalized)
                    .flat_map(|x| x.targets.clone())
                    .collect()
            });
            for t in targets {
                if let Some(c) = t.connect() {
                    with(|s| s.clients.push(c));
                }
            }
        }
        iterate(Loop::All, 2);
        if round >= 8 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    iterate(Loop::All, 4);
    drop_clients();
    iterate(Loop::All, 2);
    with(|s| {
        for (i, x) in s.listeners.iter().enumerate() {
            assert!(x.finalized, "listener {i} never finalized");
        }
        for (k, r) in s.regs.iter().enumerate() {
            assert_eq!(
                r.notified.get(),
                u32::from(r.notify),
                "registration {k} ({:?}, notify {}, {} calls) notified {} times",
                r.action,
                r.notify,
                r.calls.get(),
                r.notified.get()
            );
        }
    });
}

pub fn run(data: &[u8]) {
    let p = process();
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    crate::support::trace_input(&ops);
    let fds = FdCheck::start();
    with(|s| *s = State::default());
    new_listener();
    for op in ops.iter().take(MAX_OPS) {
        step(op);
    }
    finish();
    let st = with(std::mem::take);
    drop(st);
    p.clean_tmp();
    fds.finish();
}
