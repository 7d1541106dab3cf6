//! # realize-once: the realization protocol of cffi's lazy types, without Python
//!
//! cffi builds its types lazily. A type slot of a module (`_cffi_types[i]`) holds an
//! opcode until the first use replaces it by the realized ctype; a struct is published
//! with its size but without its field list, which the first reader completes. Both are
//! "build once, then read without locking" objects, and building one recurses: a type
//! needs its item types, a struct its field types, which may need other structs, also
//! across FFIs joined by `ffi.include()`. This crate holds the two pieces of that
//! protocol that need care, as plain Rust over opaque words:
//!
//! * [`ReentrantLock`]: the **realization lock**. One per process at the edge. It is
//!   re-entrant (the builder recurses through it) and a thread that has to wait for it
//!   **waits detached** from its runtime ([`Attachment::detach`] before blocking,
//!   [`Attachment::reattach`] after). At the CPython edge that is
//!   `PyEval_SaveThread`/`PyEval_RestoreThread` around a `PyMutex` park, so a waiting
//!   thread never blocks a stop-the-world collection and, on GIL builds, never holds
//!   the GIL while it waits.
//! * [`OnceState`]: a **once-state machine** per lazily completed object, one word:
//!   `NOT_LAZY` (nothing to do: complete, or opaque for good), `LAZY`, `BUILDING(owner)`
//!   and `DONE`. [`force`] composes the two: an acquire load of `DONE` is the lock-free
//!   fast path; otherwise it takes the lock, claims the object, runs the builder, and
//!   publishes `DONE` with a release store (or rolls back to `LAZY` on failure).
//!
//! ## Concurrency contract
//! * **Ownership.** The lock and the states own nothing but their words. Whatever a
//!   builder writes (the object's fields) belongs to the object; the builder writes it
//!   only while it holds the lock and the object's state is `BUILDING(itself)`.
//! * **Orderings.** [`OnceState::finish`] stores `DONE` with `Release` after the
//!   builder's writes; [`OnceState::is_done`] loads with `Acquire`. A reader that sees
//!   `DONE` therefore sees every write of the build (the fast path needs no lock).
//!   Claiming (`LAZY → BUILDING`) is an `Acquire` compare-exchange, so a retrying builder
//!   after a rollback sees what the failed one left. The lock's own publication is the
//!   raw lock's acquire/release; its `owner` and `depth` words are `Relaxed`: a thread
//!   reads `owner == itself` only if it stored that value and has not cleared it since
//!   (coherence, and tokens are unique among live threads), exactly like `std`'s
//!   re-entrant lock.
//! * **Re-entrancy.** The lock counts depth; only the outermost unlock releases it. A
//!   builder that reaches its own object again is told [`Begin::Recursive`] instead of
//!   deadlocking (cffi reports such a struct as opaque, as it always did).
//! * **Illegal transitions are errors, never silent.** Claiming or finishing without
//!   holding the lock, finishing an object one does not build, unlocking a lock one
//!   does not hold, or finding an object `BUILDING` by another thread while holding the
//!   lock: each returns a [`ProtocolError`].
//! * **What may run under the lock.** A builder may call anything that waits
//!   *detached* (at the edge: dict and weakref operations, `PyMutex`, the unique-ctype
//!   cache, deallocation). It must not wait, attached, for something that a thread
//!   waiting for this lock holds. That is why the lock is never a critical section
//!   (3.13 suspends those on re-entry and whenever the body blocks) and never a lock an
//!   attached thread blocks on.
//!
//! ## Model checking
//! With `RUSTFLAGS="--cfg loom"` the atomics come from `loom`; `tests/loom.rs` checks
//! that one builder wins and every reader sees the complete object, recursion by the
//! owner, failure and rollback while another thread waits, and that no thread ever
//! waits for the lock while attached (the model's raw lock fails the run if it must
//! block an attached thread).

mod lock;
mod once;

pub use lock::{Acquired, Attachment, NoAttachment, RawLock, Released, ReentrantLock};
pub use once::{force, Begin, Forced, OnceState, DONE, LAZY, NOT_LAZY};

use std::fmt;
use std::num::NonZeroUsize;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};

/// Identifies a live thread: a word above every reserved state value ([`DONE`]).
/// Two live threads never have the same token; a token may be reused after its thread
/// has exited (it then holds no lock and builds nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadToken(NonZeroUsize);

impl ThreadToken {
    /// A token from a raw word, or `None` if the word is a reserved state value.
    pub fn new(word: usize) -> Option<ThreadToken> {
        (word > DONE).then(|| ThreadToken(NonZeroUsize::new(word).expect("word > DONE")))
    }

    /// The calling thread's token: the address of a thread-local byte.
    #[cfg(not(loom))]
    pub fn current() -> ThreadToken {
        thread_local! {
            static ANCHOR: u8 = const { 0 };
        }
        let address = ANCHOR.with(|anchor| anchor as *const u8 as usize);
        ThreadToken::new(address).expect("a thread-local's address is above the reserved words")
    }

    /// The word this token is stored as in a lock's owner or a `BUILDING` state.
    pub fn get(self) -> usize {
        self.0.get()
    }
}

/// A broken rule of the protocol: a bug in the caller, reported rather than ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// Unlocking, claiming or finishing without holding the realization lock.
    LockNotHeld,
    /// Finishing an object that this thread is not building (its state is attached).
    NotTheBuilder { state: usize },
    /// An object is `BUILDING` by another thread although this thread holds the lock:
    /// a builder left it claimed (a leak of the claim, never a legal state).
    BuiltElsewhere { owner: usize },
    /// Arming (`NOT_LAZY → LAZY`) or eager completion of an object in another state.
    NotFresh { state: usize },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::LockNotHeld => write!(f, "the realization lock is not held by this thread"),
            ProtocolError::NotTheBuilder { state } => {
                write!(f, "finishing an object this thread does not build (state {state:#x})")
            }
            ProtocolError::BuiltElsewhere { owner } => {
                write!(f, "object claimed by thread {owner:#x} while this thread holds the lock")
            }
            ProtocolError::NotFresh { state } => {
                write!(f, "object is not in its initial state (state {state:#x})")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(all(test, not(loom)))]
mod test_support {
    use std::sync::{Condvar, Mutex};

    /// A blocking raw lock from std parts, for unit tests.
    #[derive(Default)]
    pub struct BlockingLock {
        locked: Mutex<bool>,
        freed: Condvar,
    }

    // SAFETY: `locked` is only flipped under the std mutex, whose lock/unlock give the
    // acquire/release ordering; `lock` waits until it can flip false → true.
    unsafe impl crate::RawLock for BlockingLock {
        fn try_lock(&self) -> bool {
            let mut locked = self.locked.lock().unwrap();
            !std::mem::replace(&mut *locked, true)
        }
        fn lock(&self) {
            let mut locked = self.locked.lock().unwrap();
            while *locked {
                locked = self.freed.wait(locked).unwrap();
            }
            *locked = true;
        }
        unsafe fn unlock(&self) {
            *self.locked.lock().unwrap() = false;
            self.freed.notify_one();
        }
    }
}
