//! Access to the world: its lock (fine or coarse), the per-thread
//! installation, deferred handle drops, blocking waits, and the test's
//! guard (`begin`, `finish`).

use super::*;

// ---------------------------------------------------------------------
// World access

pub(super) enum WorldLock {
    /// The state machine's lock type: with shuttle, every world access
    /// (host call) is a scheduling point.
    Fine(Mutex<World>),
    /// A plain lock (shuttle only): host calls are atomic and the only
    /// scheduling points are the state machine's own locks and atomics
    /// (and thread spawn/join/park), so DFS can exhaust small cases.  No
    /// shuttle operation ever runs while it is held.
    #[cfg(feature = "shuttle")]
    Coarse(std::sync::Mutex<World>),
}

pub(super) struct Shared {
    pub(super) lock: WorldLock,
    /// Where threads wait for the world to change (shuttle): a condvar,
    /// which unlike `park` never wakes spuriously, so all threads waiting
    /// is a deadlock that shuttle reports, and DFS schedules are finite.
    #[cfg(feature = "shuttle")]
    pub(super) gate: (shuttle::sync::Mutex<()>, shuttle::sync::Condvar),
}

// The world of the test running on this OS thread.  Shuttle runs all of
// an execution's threads as coroutines on the thread that called
// shuttle::check_*, so they share it.
std::thread_local! {
    pub(super) static CURRENT: RefCell<Slot> = const { RefCell::new(Slot(None)) };
}

/// A world still installed when its thread exits belongs to a failed run
/// (with shuttle, dropping it outside an execution would panic): leaked.
pub(super) struct Slot(Option<Arc<Shared>>);

impl Drop for Slot {
    fn drop(&mut self) {
        std::mem::forget(self.0.take());
    }
}

per_thread! {
    // Per (shuttle) thread: inside a world access, and what handle drops
    // inside one must do once it ends.
    pub(super) static IN_WORLD: Cell<bool> = const { Cell::new(false) };
    pub(super) static DEFERRED: RefCell<VecDeque<Box<dyn FnOnce()>>> = const { RefCell::new(VecDeque::new()) };
}

pub(super) fn shared() -> Option<Arc<Shared>> {
    CURRENT.with(|c| c.borrow().0.clone())
}

#[cfg(feature = "shuttle")]
pub(super) fn thread_key() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shuttle::thread::current().id().hash(&mut h);
    h.finish()
}

#[cfg(not(feature = "shuttle"))]
pub(super) fn thread_key() -> u64 {
    0
}

/// Runs `f` on the world (None if no world is installed, e.g. while a
/// failed test's world is being discarded).  A violation found by `f`
/// panics once the world is unlocked.
pub fn try_world<R>(f: impl FnOnce(&mut World) -> R) -> Option<R> {
    access(true, f)
}

pub(super) fn access<R>(wake: bool, f: impl FnOnce(&mut World) -> R) -> Option<R> {
    assert!(
        !IN_WORLD.with(Cell::get),
        "sim bug: world accessed re-entrantly"
    );
    let sh = shared()?;
    let run = |w: &mut World| {
        IN_WORLD.with(|c| c.set(true));
        let r = f(w);
        IN_WORLD.with(|c| c.set(false));
        // Wake the waiters only when one of them can go on: a scheduling
        // point only where it matters (keeps DFS small).
        let notify = wake && !w.sleepers.is_empty() && {
            let sleepers = std::mem::take(&mut w.sleepers);
            let any = sleepers.iter().any(|(_, p)| p(w));
            w.sleepers = sleepers;
            any
        };
        (r, w.pending_panic.take(), notify)
    };
    let (r, msg, notify) = match &sh.lock {
        WorldLock::Fine(m) => run(&mut m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)),
        #[cfg(feature = "shuttle")]
        WorldLock::Coarse(m) => {
            run(&mut m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
        }
    };
    #[cfg(feature = "shuttle")]
    if notify {
        let _g = sh
            .gate
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sh.gate.1.notify_all();
    }
    #[cfg(not(feature = "shuttle"))]
    let _ = notify;
    if let Some(m) = msg {
        if !std::thread::panicking() {
            // The first violation wins: the world is discarded anyway.
            DEFERRED.with(|d| d.borrow_mut().clear());
            panic!("{m}");
        }
    }
    run_deferred();
    Some(r)
}

/// Runs `f` on the world; panics if none is installed.
pub fn world<R>(f: impl FnOnce(&mut World) -> R) -> R {
    try_world(f).expect("no simulated world installed (sim::begin)")
}

pub(super) fn run_deferred() {
    while let Some(f) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
        f();
    }
}

/// What a handle's Drop does: now, or after the world access in progress
/// (a handle dropped by the sim's own bookkeeping).
pub(super) fn on_drop(f: impl FnOnce() + 'static) {
    if IN_WORLD.with(Cell::get) {
        DEFERRED.with(|d| d.borrow_mut().push_back(Box::new(f)));
    } else {
        f();
    }
}

/// A condition a thread waits for.
pub(super) type Pred = Arc<dyn Fn(&mut World) -> bool + Send + Sync>;

/// Waits (shuttle) until `pred` holds; without shuttle nothing else can
/// change the world, so this is a hang: recorded as a violation.
pub fn block_until(what: &str, pred: impl Fn(&mut World) -> bool + Send + Sync + 'static) {
    #[cfg(feature = "shuttle")]
    {
        let _ = what;
        let sh = shared().expect("world");
        let pred: Pred = Arc::new(pred);
        let mut me = None;
        loop {
            // Checked with the gate held: a change made after the check
            // notifies only once this thread waits (no lost wakeup).
            let gate = sh
                .gate
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ok = access(false, |w| {
                if let Some(id) = me.take() {
                    w.sleepers.retain(|(s, _)| *s != id);
                }
                let ok = pred(w);
                if !ok {
                    let id = w.id();
                    w.sleepers.push((id, pred.clone()));
                    me = Some(id);
                }
                ok
            })
            .expect("world");
            if ok {
                return;
            }
            drop(
                sh.gate
                    .1
                    .wait(gate)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }
    #[cfg(not(feature = "shuttle"))]
    world(|w| {
        if !pred(w) {
            w.violation(format!(
                "{what} would block forever: nothing can make progress"
            ));
        }
    });
}

/// A fresh world for one test (or one shuttle execution), installed for
/// this thread until `finish` or drop.
pub fn begin() -> SimGuard {
    install(WorldLock::Fine(Mutex::new(World::new())))
}

/// A world whose host calls are atomic (see `WorldLock::Coarse`).
#[cfg(feature = "shuttle")]
pub fn begin_coarse() -> SimGuard {
    install(WorldLock::Coarse(std::sync::Mutex::new(World::new())))
}

pub(super) fn install(lock: WorldLock) -> SimGuard {
    IN_WORLD.with(|c| c.set(false));
    DEFERRED.with(|d| d.borrow_mut().clear());
    // A failed run's world (e.g. a shuttle execution torn down without
    // unwinding): discard it without running what it holds.
    std::mem::forget(CURRENT.with(|c| c.borrow_mut().0.take()));
    let sh = Arc::new(Shared {
        lock,
        #[cfg(feature = "shuttle")]
        gate: (shuttle::sync::Mutex::new(()), shuttle::sync::Condvar::new()),
    });
    CURRENT.with(|c| c.borrow_mut().0 = Some(sh));
    SimGuard { done: false }
}

pub struct SimGuard {
    pub(super) done: bool,
}

impl SimGuard {
    /// Tears down what is left (disconnects live listeners through a
    /// reference of the test harness's own, drains every context), then
    /// checks that every handle was released exactly once and nothing is
    /// left.  The caller must have dropped its own handles first.
    pub fn finish(mut self) {
        self.teardown();
        let leaks = world(|w| w.leaks());
        assert!(leaks.is_empty(), "sim: left at the end: {leaks:#?}");
        let v = world(|w| w.violations.clone());
        assert!(v.is_empty(), "sim: violations: {v:#?}");
        self.done = true;
        let sh = CURRENT.with(|c| c.borrow_mut().0.take());
        drop(sh);
    }

    /// The first half of `finish`: after it, checkers may look at the
    /// final state.  Idempotent.
    pub fn teardown(&self) {
        if world(|w| std::mem::replace(&mut w.tearing_down, true)) {
            return;
        }
        let sched = world(|w| std::mem::take(&mut w.sched));
        drop(sched);
        let live: Vec<u64> = world(|w| {
            w.listeners
                .iter()
                .filter(|(_, l)| l.refs > 0)
                .map(|(id, _)| *id)
                .collect()
        });
        for id in live {
            let obj = world(|w| w.listeners.get(&id).and_then(|l| l.obj.upgrade()));
            if let Some(obj) = obj {
                world(|w| w.owner_ref(id));
                let owner = Owner { id, obj: Some(obj) };
                owner.listener().disconnect();
                drop(owner);
            }
        }
        drain_all(1000);
        world(super::World::close_unrelated);
    }
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A failed test: discard its world without running what it holds
        // (handles dropped later find no world and do nothing).
        let sh = CURRENT.with(|c| c.borrow_mut().0.take());
        std::mem::forget(sh);
        IN_WORLD.with(|c| c.set(false));
        DEFERRED.with(|d| d.borrow_mut().clear());
    }
}

/// Installs a checker that sees every event.
pub fn set_checker(c: Box<dyn Checker>) {
    world(|w| w.checker = Some(c));
}

/// Runs `f` on the installed checker of type C (with the world).
pub fn with_checker<C: Checker, R>(f: impl FnOnce(&mut C, &World) -> Result<R, String>) -> R {
    let r = world(|w| {
        let mut c = w.checker.take().expect("no checker");
        let r = f(c.as_any_mut().downcast_mut::<C>().expect("checker type"), w);
        w.checker = Some(c);
        match r {
            Ok(r) => Some(r),
            Err(msg) => {
                w.violation(format!("model: {msg}"));
                None
            }
        }
    });
    r.expect("checker failed")
}
