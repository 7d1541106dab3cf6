//! The re-entrant realization lock over a raw lock that parks, waiting detached.

use crate::{AtomicUsize, Ordering, ProtocolError, ThreadToken};

/// A non-recursive mutual-exclusion lock without a guard (the unlock may happen in
/// another stack frame: at the edge, C code locks and unlocks).
///
/// # Safety
/// Implementations must provide mutual exclusion: between a successful `try_lock` or
/// `lock` and the matching `unlock`, no other `try_lock` succeeds and no other `lock`
/// returns; an unlock must *release* what the critical section wrote and a successful
/// lock must *acquire* it.
pub unsafe trait RawLock {
    /// Takes the lock if it is free, without blocking.
    fn try_lock(&self) -> bool;
    /// Takes the lock, blocking until it is free. Called only while detached.
    fn lock(&self);
    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread holds the lock.
    unsafe fn unlock(&self);
}

/// How a thread leaves and re-enters its runtime around a blocking wait.
///
/// At the CPython edge `detach` is `PyEval_SaveThread` (the thread stops counting for
/// stop-the-world collections and, on GIL builds, releases the GIL) and `reattach` is
/// `PyEval_RestoreThread`.
pub trait Attachment {
    /// What `detach` hands back to `reattach` (at the edge: the thread state).
    type Detached;
    fn detach(&self) -> Self::Detached;
    fn reattach(&self, detached: Self::Detached);
}

/// For callers with no runtime to leave (unit tests, plain Rust users).
pub struct NoAttachment;

impl Attachment for NoAttachment {
    type Detached = ();
    fn detach(&self) {}
    fn reattach(&self, _: ()) {}
}

/// What [`ReentrantLock::lock`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The thread took the raw lock (it was not holding it).
    First,
    /// The thread already held it; the depth went up by one.
    Reentered,
}

/// What [`ReentrantLock::unlock`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The outermost unlock: the raw lock is free again.
    Last,
    /// An inner unlock: the thread still holds the lock.
    Inner,
}

/// A re-entrant lock whose waiters wait detached. See the crate doc for the contract.
pub struct ReentrantLock<R> {
    raw: R,
    /// Token of the holding thread, 0 when free. Written only by the holder.
    owner: AtomicUsize,
    /// Re-entrancy depth; read and written only by the holder.
    depth: AtomicUsize,
}

impl<R: RawLock> ReentrantLock<R> {
    /// A free lock over `raw` (usable in a `static`).
    #[cfg(not(loom))]
    pub const fn new(raw: R) -> Self {
        ReentrantLock { raw, owner: AtomicUsize::new(0), depth: AtomicUsize::new(0) }
    }

    /// A free lock over `raw`.
    #[cfg(loom)]
    pub fn new(raw: R) -> Self {
        ReentrantLock { raw, owner: AtomicUsize::new(0), depth: AtomicUsize::new(0) }
    }

    /// Takes the lock for `me`. If another thread holds it, `me` detaches through
    /// `attachment`, blocks on the raw lock, and reattaches once it holds it.
    pub fn lock<A: Attachment>(&self, me: ThreadToken, attachment: &A) -> Acquired {
        if self.is_held_by(me) {
            let depth = self.depth.load(Ordering::Relaxed);
            self.depth.store(depth + 1, Ordering::Relaxed);
            return Acquired::Reentered;
        }
        if !self.raw.try_lock() {
            let detached = attachment.detach();
            self.raw.lock();
            attachment.reattach(detached);
        }
        self.owner.store(me.get(), Ordering::Relaxed);
        self.depth.store(1, Ordering::Relaxed);
        Acquired::First
    }

    /// Undoes one [`lock`](Self::lock) by `me`.
    pub fn unlock(&self, me: ThreadToken) -> Result<Released, ProtocolError> {
        if !self.is_held_by(me) {
            return Err(ProtocolError::LockNotHeld);
        }
        let depth = self.depth.load(Ordering::Relaxed) - 1;
        self.depth.store(depth, Ordering::Relaxed);
        if depth > 0 {
            return Ok(Released::Inner);
        }
        self.owner.store(0, Ordering::Relaxed);
        // SAFETY: `me` holds the raw lock: it took it in `lock` (owner == me proves it,
        // see the crate doc on orderings) and this is its outermost unlock.
        unsafe { self.raw.unlock() };
        Ok(Released::Last)
    }

    /// Whether `me` holds the lock (at any depth).
    pub fn is_held_by(&self, me: ThreadToken) -> bool {
        self.owner.load(Ordering::Relaxed) == me.get()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_support::BlockingLock;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn token(n: usize) -> ThreadToken {
        ThreadToken::new(0x1000 + n).unwrap()
    }

    #[test]
    fn reentry_counts_depth_and_only_the_last_unlock_releases() {
        let lock = ReentrantLock::new(BlockingLock::default());
        assert_eq!(lock.lock(token(1), &NoAttachment), Acquired::First);
        assert_eq!(lock.lock(token(1), &NoAttachment), Acquired::Reentered);
        assert_eq!(lock.unlock(token(1)), Ok(Released::Inner));
        assert!(lock.is_held_by(token(1)));
        assert_eq!(lock.unlock(token(1)), Ok(Released::Last));
        assert!(!lock.is_held_by(token(1)));
        assert_eq!(lock.unlock(token(1)), Err(ProtocolError::LockNotHeld));
    }

    #[test]
    fn unlock_by_a_thread_that_does_not_hold_it_is_refused() {
        let lock = ReentrantLock::new(BlockingLock::default());
        lock.lock(token(1), &NoAttachment);
        assert_eq!(lock.unlock(token(2)), Err(ProtocolError::LockNotHeld));
        assert_eq!(lock.unlock(token(1)), Ok(Released::Last));
    }

    /// Counts detaches; records whether the thread was detached while blocked.
    struct CountingAttachment {
        detached: AtomicBool,
        detaches: AtomicUsize,
    }

    impl Attachment for CountingAttachment {
        type Detached = ();
        fn detach(&self) {
            self.detached.store(true, Ordering::SeqCst);
            self.detaches.fetch_add(1, Ordering::SeqCst);
        }
        fn reattach(&self, _: ()) {
            self.detached.store(false, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_contended_lock_detaches_the_waiter_and_an_uncontended_one_does_not() {
        let lock = Arc::new(ReentrantLock::new(BlockingLock::default()));
        let free = CountingAttachment { detached: AtomicBool::new(false), detaches: AtomicUsize::new(0) };
        lock.lock(ThreadToken::current(), &free);
        assert_eq!(free.detaches.load(Ordering::SeqCst), 0);

        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let att = CountingAttachment { detached: AtomicBool::new(false), detaches: AtomicUsize::new(0) };
                lock.lock(ThreadToken::current(), &att);
                assert!(!att.detached.load(Ordering::SeqCst), "reattached once it holds the lock");
                lock.unlock(ThreadToken::current()).unwrap();
                att.detaches.load(Ordering::SeqCst)
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        lock.unlock(ThreadToken::current()).unwrap();
        assert_eq!(waiter.join().unwrap(), 1, "the waiter blocked, so it detached once");
    }

    #[test]
    fn threads_get_distinct_tokens() {
        let here = ThreadToken::current();
        let there = std::thread::spawn(ThreadToken::current).join().unwrap();
        assert_ne!(here, there);
        assert_eq!(here, ThreadToken::current());
    }
}
