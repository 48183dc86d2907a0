//! The fd gate: the uses of a listening fd in flight, and the end of them
//! (the disconnect rule in the parent module's doc).

use crate::sync::{lock, AtomicUsize, Condvar, Mutex, Ordering::SeqCst};

/// The uses of one listening socket's fd that are in flight, and the end
/// of them: every use of the fd by the listener happens inside the gate
/// ([`FdGate::enter`]), and `disconnect()` closes the fd only once the
/// gate is closed ([`FdGate::close`]) and empty ([`FdGate::wait_idle`]).  Entering and
/// leaving cost one atomic add each; the mutex and condition variable are
/// only touched while a disconnect waits.
pub struct FdGate {
    /// `CLOSING` bit, plus `USE` for each use in flight.
    state: AtomicUsize,
    idle: Mutex<()>,
    idle_cv: Condvar,
}

const CLOSING: usize = 1;
const USE: usize = 2;

/// One use of a listening fd in flight; leaves the gate when dropped.
#[must_use]
pub struct FdUse<'a>(&'a FdGate);

impl FdGate {
    pub fn new() -> Self {
        FdGate {
            state: AtomicUsize::new(0),
            idle: Mutex::new(()),
            idle_cv: Condvar::new(),
        }
    }

    /// Starts a use of the fd, or None once the socket is closing.
    #[inline]
    pub fn enter(&self) -> Option<FdUse<'_>> {
        let prev = self.state.fetch_add(USE, SeqCst);
        let use_ = FdUse(self);
        (prev & CLOSING == 0).then_some(use_)
    }

    /// Runs `f`, one use of the fd, unless the socket is closing.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _use = self.enter()?;
        Some(f())
    }

    /// Refuses new uses from now on; returns whether uses are in flight.
    pub fn close(&self) -> bool {
        self.state.fetch_or(CLOSING, SeqCst) != 0
    }

    /// Waits until no use is in flight any more (after `close`).
    pub fn wait_idle(&self) {
        let mut idle = lock(&self.idle);
        while self.state.load(SeqCst) != CLOSING {
            idle = self
                .idle_cv
                .wait(idle)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(idle);
    }

    pub fn is_closing(&self) -> bool {
        self.state.load(SeqCst) & CLOSING != 0
    }

    /// The slow path of leaving: the waiter checks the state under the
    /// same mutex, so the wake-up cannot fall between its check and its
    /// wait.
    #[cold]
    #[inline(never)]
    fn wake_closer(&self) {
        let _idle = lock(&self.idle);
        self.idle_cv.notify_all();
    }
}

impl Default for FdGate {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FdUse<'_> {
    #[inline]
    fn drop(&mut self) {
        // The last use of a closing gate wakes the disconnect that waits.
        if self.0.state.fetch_sub(USE, SeqCst) == CLOSING | USE {
            self.0.wake_closer();
        }
    }
}
