//! Model checking of the cross-thread paths with shuttle
//! (`cargo test --features shuttle --test concurrency`): a dispatch thread
//! (an `IOThread` running `aio_poll` on its `AioContext`, a thread iterating a
//! `GMainContext`, or a `wait_client` in its own thread) against clear /
//! replace / disconnect / the last unref / `wait_client` from another
//! thread, on the simulated host (tests/sim).  With the feature the state
//! machine's locks and atomics are shuttle's (src/sync.rs) and so is the
//! simulated world's lock, so shuttle decides every interleaving.  Each
//! scenario asserts what tests/model.rs does: notify exactly once and
//! never during a call of its registration, finalize exactly once (and
//! when expected), no client accepted and dropped, no handle used after
//! its release, nothing left at the end (the sim checks the last three on
//! every handle); and the sim's fd model checks every one of them for a
//! use of a closed or reused fd number.
//!
//! Disconnect is final (DESIGN.md 3.9), `shuttle_end_vs_inflight_accept`:
//! for each of the three dispatch threads, with clients queued, the main
//! thread disconnects (or clears the callback and drops the last
//! reference, so that finalize disconnects, in whichever thread lets go
//! last: for `wait_client` that is its own thread once it returns) and at
//! once opens an unrelated listening socket with a client queued: another
//! service, which gets the lowest free fd number, the one just released
//! (in every disconnect schedule; after the last unref, the one opened
//! once finalize has run does).  No accept, poll or watch may act on a
//! closed or reused number, no client of the unrelated socket may reach a
//! callback or `wait_client`, and it must still have its client queued.
//! Two more runs disconnect a socket left blocking (`set_nonblocking`
//! failed), against the `IOThread` and against `wait_client`: the disconnect
//! then shuts the socket down when a use is in flight (about 5% and 2% of
//! the schedules), and the sim's accept on it fails at once.
//!
//! Stale `GSource` watches, `shuttle_glib_replace_while_dispatching`: a
//! `GSource` callback replaced twice while another thread iterates its
//! context.  The old watch stays attached and ready between the
//! listener's unlock and the `g_source_destroy` that follows; its dispatch
//! meanwhile sees that it no longer serves and returns `G_SOURCE_REMOVE`
//! (`ReadyHandler::ready` returns false), so each stale watch is
//! dispatched at most once, which the test asserts, under PCT too.  (When
//! it returned `G_SOURCE_CONTINUE` the iterating thread dispatched it again
//! and again, forever under PCT, which can starve the replacing thread:
//! the sim used to yield after a dispatch that did nothing to hide that.)
//!
//! Each scenario runs under shuttle's random scheduler and PCT (depth 3)
//! with fixed seeds and 1000 iterations each (`QIO_SHUTTLE_ITERS=N`), on
//! the fine world (every access to the simulated host is a scheduling
//! point; accept and the "still queued?" poll are two: reading the fd
//! number, then acting on it).  The small ones also run under DFS on the
//! coarse world (host accesses atomic; the scheduling points are the
//! state machine's own locks and atomics, thread spawn/join and the sim's
//! blocking waits), where DFS exhausts the "one dispatch against one
//! operation" cases in 1 to 42,025 schedules (the disconnect ones are the
//! large ones: the disconnect waits for the fd uses in flight), and the
//! `wait_client` vs last unref one in 929; the other accept-in-flight cases
//! pass 30,000 DFS schedules without finishing, so they run random and
//! PCT only.
//! `-- --nocapture` prints the counts.
//!
//! Measured (2 shared cores, debug build): 24 scenarios, 48,000
//! random/PCT schedules, 20,000 bounded DFS schedules (disconnect vs
//! `wait_client`, not exhaustive) and 83,913 exhaustive ones: 151,913
//! schedules in 141 s (89 s of CPU; the 2 cores were shared, load 5),
//! of which the accept-in-flight and stale-watch scenarios take 54 s and
//! the two exhaustive one-dispatch vs disconnect DFS runs 68 s.  DFS on
//! the fine world (`QIO_SHUTTLE_DFS_FINE`, measured before the fd gate)
//! exhausts only "one dispatch vs unref" (89,547 schedules via `aio_poll`,
//! 17,909 via `GLib`); the other one-dispatch cases pass 100,000 schedules
//! without finishing (about 100 s each), so CI does not run that.
//!
//! Checked that it fails: notify on replace (instead of when the last
//! user goes) is caught in three scenarios ("notify of registration 3
//! while 1 call(s) of it run", the call in the `IOThread`, the replace in
//! the main thread); splitting `wait_client`'s start into two critical
//! sections (the race fixed in 8c73580) is caught as a deadlock, a
//! `wait_client` blocked on a listener disconnected in between.  The
//! listener of 517929a (before the fd gate; `ready` adapted to return
//! true, `G_SOURCE_CONTINUE`) fails the disconnect cases and the stale-watch
//! test; with `QIO_SHUTTLE_COUNT_FAILURES=1`, failing schedules of 1000
//! random ones: accept in flight vs disconnect 16 (`IOThread`), 9 (`GLib`
//! thread), 92 (`wait_client`), on a blocking socket 22 and 106, with
//! "accept on fd 3 of socket 2, closed meanwhile", "... which was closed
//! and now belongs to socket N" (the unrelated one), "accept on socket N, already closed", and for
//! `wait_client` "`wait_client`'s watch on socket N, already closed" and
//! "watch of socket N dispatched for fd 3, which now belongs to socket M";
//! PCT finds each within 30 schedules.  Stale watch: 204 of 1000 ("a
//! stale `GSource` watch was dispatched N times"); the last-unref cases
//! pass (a dispatch or `wait_client` holds the listener, so finalize cannot
//! race with its accept) except that PCT starves the `GLib` one into the
//! busy loop ("exceeded `max_steps`", schedule 84).  Of the older scenarios,
//! disconnect vs `wait_client` (68 of 1000), replace + disconnect + unref
//! (27) and one dispatch vs disconnect (34 via `aio_poll`, 7 via `GLib`) fail
//! the same way, and PCT starves "glib: dispatch vs clear + last unref"
//! into the busy loop.
//!
//! Why shuttle and not loom: the state machine holds its registration
//! through `std::sync::Weak` (`Arc::downgrade` in `arm`), and loom's `Arc`
//! has no `Weak` nor `downgrade` (loom 0.7's `Arc` offers `new`, `pin`,
//! `try_unwrap`, `from_std`, ...; tokio-rs/loom issue 156, "Missing
//! `std::sync::Weak`", is open), so it cannot be swapped in.  And loom
//! searches every interleaving of every atomic and lock access
//! exhaustively: even the smallest race here (one `aio_poll` against one
//! clear) has more than 100,000 schedules when every host access is a
//! scheduling point (shuttle's DFS above), so an exhaustive search cannot
//! be the main tool, whereas shuttle's randomized schedulers scale and its
//! DFS still exhausts the coarse model.  Shuttle too re-exports std's
//! `Arc` and `Weak`: reference counts are not scheduling points, which is
//! why every release in the simulated host goes through its lock.

#![cfg(feature = "shuttle")]

mod sim;

use std::{
    sync::{atomic::Ordering::Relaxed, Arc as StdArc, Mutex as StdMutex},
    time::Instant,
};

use qio_net_listener_core::host::ClientCallback;
use shuttle::{
    scheduler::{DfsScheduler, PctScheduler, RandomScheduler},
    thread, Config, Runner,
};
use sim::*;

const SEED: u64 = 0x5157_4e4c; // fixed: the same schedules on every run

fn iters() -> usize {
    std::env::var("QIO_SHUTTLE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> Config {
    let mut c = Config::new();
    // Debug builds of the listener and the sim nest deeply (nested polls).
    c.stack_size = 1 << 20;
    c
}

/// Runs `f` under random and PCT (fine world) and, if `dfs` gives a
/// bound, DFS on the coarse world; prints the number of schedules.
fn explore(name: &str, f: impl Fn(bool) + Clone + Send + Sync + 'static, dfs: Option<usize>) {
    if std::env::var_os("QIO_SHUTTLE_COUNT_FAILURES").is_some() {
        return count_failures(name, f);
    }
    let n = iters();
    let t = Instant::now();
    let mut line = Vec::new();
    if std::env::var_os("QIO_SHUTTLE_DFS_ONLY").is_none() {
        let f_random = f.clone();
        let random = Runner::new(RandomScheduler::new_from_seed(SEED, n), config())
            .run(move || f_random(false));
        let f_pct = f.clone();
        let pct = Runner::new(PctScheduler::new_from_seed(SEED, 3, n), config())
            .run(move || f_pct(false));
        line.push(format!("random {random}, pct {pct}"));
    }
    if let Some(max) = dfs {
        let coarse = std::env::var_os("QIO_SHUTTLE_DFS_FINE").is_none();
        let d = Runner::new(DfsScheduler::new(Some(max), false), config()).run(move || f(coarse));
        let how = if d < max {
            "all of them"
        } else {
            "bound reached"
        };
        let world = if coarse { "coarse" } else { "fine" };
        line.push(format!("dfs on the {world} world {d} ({how})"));
    }
    eprintln!(
        "{name}: {} schedules; {:.1} s (idle dispatches so far: {})",
        line.join(", "),
        t.elapsed().as_secs_f64(),
        STATS
            .idle_dispatches
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// `QIO_SHUTTLE_COUNT_FAILURES=1`: for checking that a scenario catches a
/// broken listener, runs each of the random and PCT schedules on its own
/// (seeds SEED, SEED+1, ...) and prints how many fail, the first failing
/// one and each distinct message, instead of stopping at the first.
fn count_failures(name: &str, f: impl Fn(bool) + Clone + Send + Sync + 'static) {
    use std::sync::atomic::AtomicU64;
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let n = iters() as u64;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let message = |e: Box<dyn std::any::Any + Send>| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        // The numbers (sockets, fds, handlers) vary by schedule.
        let first = msg.lines().next().unwrap_or("");
        first
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect::<String>()
    };
    // Random, each schedule on its own: how many fail.
    let mut failed = 0;
    let mut messages = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..n {
        let g = f.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Runner::new(RandomScheduler::new_from_seed(SEED + i, 1), config()).run(move || g(false))
        }));
        if let Err(e) = r {
            failed += 1;
            *messages.entry(message(e)).or_default() += 1;
        }
    }
    eprintln!("{name}: random: {failed} of {n} schedules fail");
    // The usual runs (which stop at the first failure): where it comes.
    for pct in [false, true] {
        let g = f.clone();
        RUNS.store(0, Relaxed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let body = move || {
                RUNS.fetch_add(1, Relaxed);
                g(false)
            };
            if pct {
                Runner::new(PctScheduler::new_from_seed(SEED, 3, n as usize), config()).run(body)
            } else {
                Runner::new(RandomScheduler::new_from_seed(SEED, n as usize), config()).run(body)
            }
        }));
        let how = if pct { "pct" } else { "random" };
        match r {
            Ok(_) => eprintln!("  {how} run: passes {n} schedules"),
            Err(e) => {
                let m = message(e);
                eprintln!(
                    "  {how} run: fails at schedule {} of {n}: {m}",
                    RUNS.load(Relaxed)
                );
                messages.entry(m).or_default();
            }
        }
    }
    for (m, k) in messages {
        eprintln!("    {k} x {m}");
    }
    std::panic::set_hook(hook);
}

/// A listener with one open socket, in a fresh world.
struct Setup {
    guard: SimGuard,
    owner: Owner,
    lid: u64,
    sock: u64,
    port: u16,
}

fn setup(coarse: bool) -> Setup {
    setup_with(coarse, false)
}

/// The same; `blocking`: `set_nonblocking` fails, so the socket stays
/// blocking (one accept per wake-up, and a disconnect shuts it down to
/// wake an accept in flight).
fn setup_with(coarse: bool, blocking: bool) -> Setup {
    let guard = if coarse { begin_coarse() } else { begin() };
    if blocking {
        fail_nonblocking(1);
    }
    let (owner, sock, port) = listener_with_socket();
    let lid = owner.id();
    Setup {
        guard,
        owner,
        lid,
        sock,
        port,
    }
}

/// An `IOThread`: `aio_poll(ctx`, true) until told to stop, then what is left
/// (release BHs) without blocking.
fn io_thread(ctx: ACtx) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !world(|w| w.flag("stop")) {
            aio_poll(ctx, true);
        }
        while aio_poll(ctx, false) {}
    })
}

/// A thread iterating a `GMainContext` until told to stop.
fn glib_thread(ctx: GCtx) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !world(|w| w.flag("stop")) {
            iterate_blocking(ctx);
        }
        while iterate(ctx) {}
    })
}

fn stop(aio: &[ACtx], glib: &[GCtx]) {
    world(|w| w.set_flag("stop"));
    for a in aio {
        aio_kick(*a);
    }
    for g in glib {
        glib_kick(*g);
    }
}

/// A callback that does nothing but may run nested loops on `nest`.
fn client(nest: Option<ACtx>) -> Client {
    Client::new(Some(StdArc::new(move |_: &Owner, _: &Channel| {
        if let Some(ctx) = nest {
            // AIO_WAIT_WHILE inside the callback: BHs run in here.
            aio_poll(ctx, false);
            aio_poll(ctx, false);
        }
    })))
}

fn conns_settled(conns: &[ConnId]) {
    world(|w| {
        for c in conns {
            let s = w.conn_state(*c);
            assert!(
                matches!(
                    s,
                    ConnState::Delivered(_) | ConnState::Queued(_) | ConnState::Lost
                ),
                "client {c} in state {s:?}"
            );
        }
    });
}

// ---------------------------------------------------------------------
// Scenarios

/// A dispatch thread (an `IOThread` whose callback runs nested `aio_poll`,
/// or a `GMainContext` thread) serves while the main thread clears the
/// callback and drops the last reference.  `AioContext`: the release BHs run
/// in the `IOThread`, possibly inside the nested polls.  `GSource`: destroyed
/// from another thread during its dispatch, released when it returns.
/// Either way finalize happens once, after the last dispatch; notify once.
fn clear_and_unref(glib: bool, coarse: bool) {
    let s = setup(coarse);
    let (io, g) = (aio_context_new(), glib_context_new());
    let (c, target) = if glib {
        (client(None), Target::Glib(g))
    } else {
        (client(Some(io)), Target::Aio(io))
    };
    let reg = c.id();
    s.owner.listener().set_client(&s.owner, c, target);
    let conns: Vec<ConnId> = (0..2).filter_map(|_| connect(s.port)).collect();
    let t = if glib { glib_thread(g) } else { io_thread(io) };
    s.owner
        .listener()
        .set_client(&s.owner, Client::none(), target);
    drop(s.owner);
    block_until("finalize", move |w| w.finalized(s.lid) == 1);
    stop(&[io], &[g]);
    t.join().unwrap();
    world(|w| {
        assert_eq!(w.notified(reg), 1);
        assert!(w.calls(reg) <= 2);
    });
    conns_settled(&conns);
    s.guard.finish();
}

/// The same with replace (another registration, same `IOThread`) and with
/// disconnect, then the last unref from the main thread.
fn aio_replace_disconnect_unref(coarse: bool) {
    let s = setup(coarse);
    let io = aio_context_new();
    let c1 = client(Some(io));
    let (r1, c2) = (c1.id(), client(None));
    let r2 = c2.id();
    s.owner.listener().set_client(&s.owner, c1, Target::Aio(io));
    let conns: Vec<ConnId> = (0..3).filter_map(|_| connect(s.port)).collect();
    let t = io_thread(io);
    s.owner.listener().set_client(&s.owner, c2, Target::Aio(io));
    s.owner.listener().disconnect();
    drop(s.owner);
    block_until("finalize", move |w| w.finalized(s.lid) == 1);
    stop(&[io], &[]);
    t.join().unwrap();
    world(|w| {
        assert_eq!((w.notified(r1), w.notified(r2)), (1, 1));
        assert_eq!(w.calls(r1) + w.calls(r2), {
            let delivered = conns
                .iter()
                .filter(|c| matches!(w.conn_state(**c), ConnState::Delivered(_)))
                .count();
            delivered as u64
        });
    });
    conns_settled(&conns);
    s.guard.finish();
}

/// The last unref from the main thread while the `IOThread` serves: the
/// listener keeps serving (its watches hold it) until the callback clears
/// itself on its second client, inside the `IOThread`; then it is finalized
/// there, after that dispatch.
fn aio_unref_then_self_clear(coarse: bool) {
    let s = setup(coarse);
    let io = aio_context_new();
    let seen = StdArc::new(StdMutex::new(0u32));
    let c = {
        Client::new(Some(StdArc::new(move |o: &Owner, _: &Channel| {
            let n = {
                let mut n = seen.lock().unwrap();
                *n += 1;
                *n
            };
            if n == 2 {
                o.listener().set_client(o, Client::none(), Target::Aio(io));
                aio_poll(io, false);
            }
        })))
    };
    let reg = c.id();
    s.owner.listener().set_client(&s.owner, c, Target::Aio(io));
    let conns: Vec<ConnId> = (0..2).filter_map(|_| connect(s.port)).collect();
    let t = io_thread(io);
    drop(s.owner);
    block_until("finalize", move |w| w.finalized(s.lid) == 1);
    stop(&[io], &[]);
    t.join().unwrap();
    world(|w| {
        assert_eq!(w.notified(reg), 1);
        assert_eq!(w.calls(reg), 2, "both clients served after the unref");
    });
    conns_settled(&conns);
    s.guard.finish();
}

/// Replace across contexts: from an `IOThread`'s `AioContext` to a `GMainContext`
/// thread, while both run.
fn replace_across_contexts(coarse: bool) {
    let s = setup(coarse);
    let (io, g) = (aio_context_new(), glib_context_new());
    let c1 = client(Some(io));
    let (r1, c2) = (c1.id(), client(None));
    let r2 = c2.id();
    s.owner.listener().set_client(&s.owner, c1, Target::Aio(io));
    let conns: Vec<ConnId> = (0..3).filter_map(|_| connect(s.port)).collect();
    let (ta, tg) = (io_thread(io), glib_thread(g));
    s.owner.listener().set_client(&s.owner, c2, Target::Glib(g));
    // Every client is served by one registration or the other.
    block_until("all served", move |w| {
        conns
            .iter()
            .all(|c| matches!(w.conn_state(*c), ConnState::Delivered(_)))
    });
    drop(s.owner);
    stop(&[io], &[g]);
    ta.join().unwrap();
    tg.join().unwrap();
    world(|w| {
        // r1's notify ran once r2 replaced it and its dispatch ended.
        assert_eq!(w.notified(r1), 1);
        assert_eq!(
            w.notified(r2),
            0,
            "r2 still serves: the watches hold the listener"
        );
    });
    let guard = s.guard;
    guard.teardown();
    world(|w| assert_eq!(w.notified(r2), 1));
    guard.finish();
}

/// `wait_client` in the main thread while the `IOThread` serves the same
/// socket: the async watches are suspended, `wait_client` gets exactly one
/// client, every other one goes to the callback or stays queued, none is
/// accepted and dropped.  A client thread connects until `wait_client` has
/// its client (one connected after the suspension always reaches it).
fn wait_client_vs_aio_dispatch(coarse: bool) {
    let s = setup(coarse);
    let io = aio_context_new();
    let c = client(None);
    let reg = c.id();
    s.owner.listener().set_client(&s.owner, c, Target::Aio(io));
    let (port, sock) = (s.port, s.sock);
    let first = connect(port).expect("connect");
    let t = io_thread(io);
    let clients = thread::spawn(move || {
        let mut conns = Vec::new();
        loop {
            // Connect once wait_client has suspended the async watches
            // (its own are there) and nothing is queued: the IOThread can
            // then take at most one more (a batch between its check and
            // its accept), so this ends.
            block_until("connector", move |w| {
                w.flag("got") || (w.private_watch_count() > 0 && w.queue(sock).is_empty())
            });
            if world(|w| w.flag("got")) {
                return conns;
            }
            conns.extend(connect(port));
        }
    });
    let got = s.owner.listener().wait_client(&s.owner).expect("a client");
    let conn = claim(&got);
    drop(got);
    world(|w| w.set_flag("got"));
    let mut conns = clients.join().unwrap();
    conns.push(first);
    assert!(
        conns.contains(&conn),
        "wait_client returned a client never connected"
    );
    drop(s.owner);
    stop(&[io], &[]);
    t.join().unwrap();
    world(|w| assert_eq!(w.notified(reg), 0));
    let guard = s.guard;
    guard.teardown();
    world(|w| assert_eq!(w.notified(reg), 1));
    conns_settled(&conns);
    guard.finish();
}

/// `wait_client` blocked in the main thread (nothing connects) while
/// another thread disconnects: it returns NULL, whichever comes first.
fn disconnect_vs_wait_client(coarse: bool) {
    let s = setup(coarse);
    let o2 = s.owner.clone();
    let t = thread::spawn(move || {
        o2.listener().disconnect();
        drop(o2);
    });
    assert!(s.owner.listener().wait_client(&s.owner).is_none());
    t.join().unwrap();
    assert!(!s.owner.listener().is_connected());
    drop(s.owner);
    world(|w| assert_eq!(w.finalized(s.lid), 1));
    s.guard.finish();
}

/// What the main thread does against one dispatch.
#[derive(Clone, Copy, Debug)]
enum MainOp {
    ClearUnref,
    Replace,
    DisconnectUnref,
    Unref,
}

/// The smallest races: one dispatch (a single non-blocking `aio_poll` of an
/// `IOThread`'s context whose callback runs nested `aio_poll`, or a single
/// iteration of a `GMainContext`) in one thread, one operation in the main
/// thread; one client queued.  Afterwards the contexts run what is left.
fn one_dispatch_vs(op: MainOp, glib: bool, coarse: bool) {
    let s = setup(coarse);
    let (io, g) = (aio_context_new(), glib_context_new());
    let (c1, target) = if glib {
        (client(None), Target::Glib(g))
    } else {
        (client(Some(io)), Target::Aio(io))
    };
    let (r1, c2) = (c1.id(), client(None));
    let r2 = c2.id();
    s.owner.listener().set_client(&s.owner, c1, target);
    let conns: Vec<ConnId> = connect(s.port).into_iter().collect();
    let t = thread::spawn(move || {
        if glib {
            iterate(g);
        } else {
            aio_poll(io, false);
        }
    });
    {
        let l = s.owner.listener();
        match op {
            MainOp::ClearUnref => l.set_client(&s.owner, Client::none(), target),
            MainOp::Replace => l.set_client(&s.owner, c2, target),
            MainOp::DisconnectUnref => l.disconnect(),
            MainOp::Unref => {}
        }
    }
    // After a replace the test keeps its reference until the checks.
    let kept = match op {
        MainOp::Replace => Some(s.owner),
        _ => {
            drop(s.owner);
            None
        }
    };
    t.join().unwrap();
    while aio_poll(io, false) | iterate(g) {}
    world(|w| {
        assert_eq!(w.notified(r1), u32::from(!matches!(op, MainOp::Unref)));
        assert_eq!(w.notified(r2), 0);
        let finalized = w.finalized(s.lid);
        match op {
            MainOp::ClearUnref | MainOp::DisconnectUnref => assert_eq!(finalized, 1),
            // The watches hold it: still serving.
            MainOp::Unref | MainOp::Replace => assert_eq!(finalized, 0),
        }
        assert!(w.calls(r1) <= 1);
    });
    drop(kept);
    let guard = s.guard;
    guard.teardown();
    world(|w| {
        assert_eq!(w.notified(r1), 1);
        assert_eq!(w.finalized(s.lid), 1);
        let delivered = u64::from(matches!(w.conn_state(conns[0]), ConnState::Delivered(_)));
        assert_eq!(w.calls(r1) + w.calls(r2), delivered);
    });
    conns_settled(&conns);
    guard.finish();
}

/// Which loop runs the accept that races with the end of the listener.
#[derive(Clone, Copy, Debug)]
enum Loop {
    /// An `IOThread`'s `aio_poll` (the callback nests `aio_poll`).
    Aio,
    /// A thread iterating a `GMainContext`.
    Glib,
    /// `wait_client`'s private loop, in its own thread.
    Wait,
}

/// How the listener ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// `disconnect()` from the main thread.
    Disconnect,
    /// The main thread lets go of the listener (clearing the callback
    /// first, or the watches would keep it): finalize disconnects, in the
    /// main thread or at the end of the dispatch (or of the `wait_client`)
    /// that still holds it.
    LastUnref,
}

/// Disconnect is final (DESIGN.md 3.9): an accept (or poll) in flight in
/// one thread against the end of the listener in another, which at once
/// opens an unrelated listening socket (another service of the process:
/// it gets the lowest free fd number, the one just freed) with a client
/// queued, and after finalize one more.  The sim flags any accept, poll or
/// watch on a closed or reused number and any client of an unrelated
/// socket that reaches a callback or `wait_client`; the unrelated sockets
/// must still have their clients queued at the end.
///
/// `blocking`: the socket could not be made non-blocking, so a disconnect
/// with an accept in flight shuts it down first (the sim's accept then
/// fails at once, as a blocked one returns).
fn end_vs_inflight_accept(kind: Loop, end: End, blocking: bool, coarse: bool) {
    let s = setup_with(coarse, blocking);
    let (io, g) = (aio_context_new(), glib_context_new());
    let conns: Vec<ConnId> = (0..2).filter_map(|_| connect(s.port)).collect();
    let (target, reg) = match kind {
        Loop::Aio => (Some(Target::Aio(io)), client(Some(io))),
        Loop::Glib => (Some(Target::Glib(g)), client(None)),
        Loop::Wait => (None, Client::none()),
    };
    let reg_id = reg.id();
    let t = match target {
        Some(target) => {
            s.owner.listener().set_client(&s.owner, reg, target);
            if matches!(kind, Loop::Aio) {
                io_thread(io)
            } else {
                glib_thread(g)
            }
        }
        None => {
            let o = s.owner.clone();
            thread::spawn(move || {
                if let Some(client) = o.listener().wait_client(&o) {
                    claim(&client);
                }
                drop(o);
            })
        }
    };
    let mut unrelated = Vec::new();
    let kept = match end {
        End::Disconnect => {
            s.owner.listener().disconnect();
            unrelated.push(open_unrelated(1));
            Some(s.owner)
        }
        End::LastUnref => {
            if let Some(target) = target {
                s.owner
                    .listener()
                    .set_client(&s.owner, Client::none(), target);
            }
            drop(s.owner);
            unrelated.push(open_unrelated(1));
            block_until("finalize", move |w| w.finalized(s.lid) == 1);
            unrelated.push(open_unrelated(1));
            None
        }
    };
    stop(&[io], &[g]);
    t.join().unwrap();
    world(|w| {
        for (sock, _, fd, queued) in &unrelated {
            assert_eq!(&w.queue(*sock), queued, "unrelated socket {sock} (fd {fd})");
        }
        if target.is_some() {
            assert!(w.calls(reg_id) <= 2);
        }
        assert!(w.closed(s.sock));
    });
    drop(kept);
    let guard = s.guard;
    guard.teardown();
    if target.is_some() {
        world(|w| assert_eq!(w.notified(reg_id), 1));
    }
    conns_settled(&conns);
    guard.finish();
}

/// A `GSource` callback replaced twice while a thread iterates its
/// `GMainContext`: each old watch stays attached and ready until the
/// replacing thread destroys it after unlocking.  Its dispatches meanwhile
/// find it no longer serves; the first returns `G_SOURCE_REMOVE`, so a stale
/// watch is dispatched at most once (before `ReadyHandler::ready` returned
/// whether it still serves, the iterating thread spun on it, forever under
/// PCT, which can starve the replacing thread).
fn glib_replace_while_dispatching(coarse: bool) {
    let s = setup(coarse);
    let g = glib_context_new();
    let regs: Vec<Client> = (0..3).map(|_| client(None)).collect();
    let ids: Vec<u64> = regs.iter().map(Client::id).collect();
    let conns: Vec<ConnId> = (0..3).filter_map(|_| connect(s.port)).collect();
    let t = glib_thread(g);
    for r in regs {
        s.owner.listener().set_client(&s.owner, r, Target::Glib(g));
    }
    block_until("all served", move |w| {
        conns
            .iter()
            .all(|c| matches!(w.conn_state(*c), ConnState::Delivered(_)))
    });
    stop(&[], &[g]);
    t.join().unwrap();
    world(|w| {
        assert!(
            w.max_stale_dispatches() <= 1,
            "a stale GSource watch was dispatched {} times",
            w.max_stale_dispatches()
        );
        assert_eq!((w.notified(ids[0]), w.notified(ids[1])), (1, 1));
    });
    drop(s.owner);
    s.guard.finish();
}

// ---------------------------------------------------------------------

#[test]
fn shuttle_aio_clear_and_unref() {
    explore(
        "aio: dispatch vs clear + last unref",
        |c| clear_and_unref(false, c),
        None,
    );
}

#[test]
fn shuttle_aio_replace_disconnect_unref() {
    explore(
        "aio: dispatch vs replace + disconnect + last unref",
        aio_replace_disconnect_unref,
        None,
    );
}

#[test]
fn shuttle_aio_unref_then_self_clear() {
    explore(
        "aio: last unref vs dispatch that clears itself",
        aio_unref_then_self_clear,
        None,
    );
}

#[test]
fn shuttle_glib_clear_and_unref() {
    explore(
        "glib: dispatch vs clear + last unref",
        |c| clear_and_unref(true, c),
        None,
    );
}

#[test]
fn shuttle_replace_across_contexts() {
    explore(
        "aio -> glib: replace while both dispatch",
        replace_across_contexts,
        None,
    );
}

#[test]
fn shuttle_wait_client_vs_aio_dispatch() {
    explore(
        "wait_client vs aio dispatch",
        wait_client_vs_aio_dispatch,
        None,
    );
}

#[test]
fn shuttle_disconnect_vs_wait_client() {
    explore(
        "disconnect vs wait_client",
        disconnect_vs_wait_client,
        Some(20_000),
    );
}

#[test]
fn shuttle_one_dispatch_vs_one_operation() {
    for glib in [false, true] {
        for op in [
            MainOp::ClearUnref,
            MainOp::Replace,
            MainOp::DisconnectUnref,
            MainOp::Unref,
        ] {
            let name = format!(
                "one {} vs {op:?}",
                if glib {
                    "GLib iteration"
                } else {
                    "aio_poll (nested inside)"
                }
            );
            explore(&name, move |c| one_dispatch_vs(op, glib, c), Some(100_000));
        }
    }
}

#[test]
fn shuttle_end_vs_inflight_accept() {
    let cases = [Loop::Aio, Loop::Glib, Loop::Wait]
        .into_iter()
        .flat_map(|k| [(k, End::Disconnect, false), (k, End::LastUnref, false)])
        .chain([
            (Loop::Aio, End::Disconnect, true),
            (Loop::Wait, End::Disconnect, true),
        ]);
    for (kind, end, blocking) in cases {
        let before = (
            STATS.unrelated.load(Relaxed),
            STATS.unrelated_on_reused.load(Relaxed),
            STATS.shutdowns.load(Relaxed),
        );
        explore(
            &format!(
                "{kind:?} accept in flight vs {end:?}{}, then an unrelated socket",
                if blocking { " (blocking socket)" } else { "" }
            ),
            move |c| end_vs_inflight_accept(kind, end, blocking, c),
            // DFS on the coarse world exhausts only this one (929
            // schedules); the others pass 30,000 without finishing.
            matches!((kind, end), (Loop::Wait, End::LastUnref)).then_some(5_000),
        );
        eprintln!(
            "  {} of {} unrelated sockets got a number the listener had held; {} \
             shutdowns",
            STATS.unrelated_on_reused.load(Relaxed) - before.1,
            STATS.unrelated.load(Relaxed) - before.0,
            STATS.shutdowns.load(Relaxed) - before.2,
        );
    }
}

#[test]
fn shuttle_glib_replace_while_dispatching() {
    explore(
        "glib: replace twice while dispatching (stale watches dispatched at most once)",
        glib_replace_while_dispatching,
        None,
    );
}
