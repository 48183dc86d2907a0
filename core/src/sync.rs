//! The synchronisation primitives of the state machine.  With the
//! `shuttle` feature (tests only: `tests/concurrency.rs`) they are
//! shuttle's, so that its scheduler controls and explores every
//! interleaving at each lock and atomic; otherwise std's.  `Arc`/`Weak`
//! are std's in both (shuttle schedules at the locks and atomics).

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(feature = "shuttle"))]
pub use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
pub use std::sync::{Arc, Weak};

/// Locks `m`, ignoring poisoning: a panic never leaves the listener's
/// state half-updated in a way that matters more than refusing service
/// forever would.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
