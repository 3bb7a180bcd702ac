//! The lock discipline, checked. Every lock of the core has a level; a thread may only
//! take a lock of a level higher than every lock it holds (node states are one level,
//! taken parent before child and never the same node twice). No lock may be held while
//! calling the kernel (FUSE notifications), the network or the disk: those call sites
//! assert it. docs/ARCHITECTURE.md "Concurrency and locking" states the order.
//!
//! Debug builds (every test, and the daemon the mount tests run) track the locks each
//! thread holds and panic at the first violation, so a would-be deadlock fails the test
//! that reaches it instead of hanging it. Release builds compile all of this away.
//! A std `MutexGuard` is not `Send`, so no guard is ever held across an `.await`:
//! tracking per thread is exact.

/// Lock levels, lowest first: take them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// A node's state (`InodeTable` nodes; several, parent before child).
    Node = 1,
    /// The inode table's map.
    InodeMap = 2,
    /// The export queue's records.
    Records = 3,
    /// The export queue's schedule.
    Schedule = 4,
    /// The journal's log file (held across its append: the only lock held on the disk).
    Journal = 5,
}

#[cfg(debug_assertions)]
mod imp {
    use super::Level;
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<(Level, usize)>> = const { RefCell::new(Vec::new()) };
    }

    /// Proof that the current thread registered a lock; unregisters it on drop.
    #[derive(Debug)]
    pub struct Held {
        level: Level,
        id: usize,
    }

    pub fn acquire(level: Level, id: usize) -> Held {
        HELD.with(|held| {
            let held = held.borrow();
            for (l, i) in held.iter() {
                assert!(
                    !(*l == level && *i == id),
                    "lock order: {level:?} lock {id:#x} taken twice on one thread (re-entrant locking deadlocks)"
                );
                assert!(
                    *l <= level,
                    "lock order: {level:?} lock taken while holding a {l:?} lock (order is Node < InodeMap < Records < Schedule < Journal)"
                );
            }
        });
        HELD.with(|held| held.borrow_mut().push((level, id)));
        Held { level, id }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            HELD.with(|held| {
                let mut held = held.borrow_mut();
                if let Some(pos) = held
                    .iter()
                    .rposition(|(l, i)| *l == self.level && *i == self.id)
                {
                    held.remove(pos);
                }
            });
        }
    }

    /// Panics if the current thread holds any tracked lock other than one of level
    /// `allowed`. Called before kernel notifications, network requests and disk I/O.
    pub fn assert_unlocked(what: &str, allowed: Option<Level>) {
        HELD.with(|held| {
            let held = held.borrow();
            if let Some((l, _)) = held.iter().find(|(l, _)| Some(*l) != allowed) {
                panic!("lock order: {what} while holding a {l:?} lock");
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod imp {
    use super::Level;

    #[derive(Debug)]
    pub struct Held;

    #[inline(always)]
    pub fn acquire(_level: Level, _id: usize) -> Held {
        Held
    }

    #[inline(always)]
    pub fn assert_unlocked(_what: &str, _allowed: Option<Level>) {}
}

pub use imp::{acquire, Held};

/// Asserts (debug builds) that this thread holds no tracked lock: called before a
/// kernel notification, a network request or disk I/O.
#[inline(always)]
pub fn assert_unlocked(what: &str) {
    imp::assert_unlocked(what, None);
}

/// Like `assert_unlocked`, but the caller's own lock of `level` is allowed (the
/// journal appends under its own file lock).
#[inline(always)]
pub fn assert_only(what: &str, level: Level) {
    imp::assert_unlocked(what, Some(level));
}

/// A mutex whose lock registers with the checker: `lock()` panics (debug builds) on a
/// lock taken out of order instead of deadlocking. Poisoning is ignored: every
/// critical section of the core leaves its data consistent at each statement.
#[derive(Debug)]
pub struct OrderedMutex<T> {
    level: Level,
    inner: std::sync::Mutex<T>,
}

pub struct OrderedGuard<'a, T> {
    // Field order: the mutex is released before the registration is dropped.
    guard: std::sync::MutexGuard<'a, T>,
    _held: Held,
}

impl<T> OrderedMutex<T> {
    pub const fn new(level: Level, value: T) -> Self {
        OrderedMutex {
            level,
            inner: std::sync::Mutex::new(value),
        }
    }

    pub fn lock(&self) -> OrderedGuard<'_, T> {
        let held = acquire(self.level, self as *const Self as usize);
        OrderedGuard {
            guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            _held: held,
        }
    }
}

impl<T> std::ops::Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "taken twice")]
    fn reentrant_lock_panics_instead_of_deadlocking() {
        let m = OrderedMutex::new(Level::Node, 0);
        let _a = m.lock();
        let _b = m.lock();
    }

    #[test]
    #[should_panic(expected = "while holding a Schedule lock")]
    fn out_of_order_lock_panics() {
        let records = OrderedMutex::new(Level::Records, 0);
        let schedule = OrderedMutex::new(Level::Schedule, 0);
        let _s = schedule.lock();
        let _r = records.lock();
    }

    #[test]
    fn in_order_and_sequential_locks_pass() {
        let a = OrderedMutex::new(Level::Node, 0);
        let b = OrderedMutex::new(Level::Node, 0);
        let records = OrderedMutex::new(Level::Records, 0);
        {
            let _a = a.lock();
            let _b = b.lock();
            let _r = records.lock();
        }
        let _a = a.lock();
        drop(_a);
        assert_unlocked("a request");
    }

    #[test]
    #[should_panic(expected = "a network request while holding a Node lock")]
    fn io_under_a_lock_panics() {
        let a = OrderedMutex::new(Level::Node, 0);
        let _a = a.lock();
        assert_unlocked("a network request");
    }
}
