//! The once-state machine of a lazily completed object, and [`force`].

use crate::{Attachment, AtomicUsize, Ordering, ProtocolError, RawLock, ReentrantLock, ThreadToken};

/// Nothing to complete: not a lazy object (or opaque for good). Objects start here.
pub const NOT_LAZY: usize = 0;
/// Published, not complete yet: the first reader that needs it completes it.
pub const LAZY: usize = 1;
/// Complete: everything the builder wrote is visible to a reader that loads this.
pub const DONE: usize = 2;
// Any other word is BUILDING(owner): the token of the thread completing the object.

/// One object's state word. At the edge it is a `uintptr_t` field of the object, so it
/// is used through [`OnceState::from_ptr`]; the C side only ever stores
/// `NOT_LAZY`/`LAZY` into it before the object is shared, and loads it with acquire.
#[repr(transparent)]
pub struct OnceState(AtomicUsize);

/// What [`OnceState::begin`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Already complete.
    Done,
    /// Claimed: the caller is now the builder and must call [`OnceState::finish`].
    Build,
    /// The caller is already building this object (it recursed into it).
    Recursive,
    /// Not a lazy object: nothing to build.
    NotLazy,
}

/// What [`force`] ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced<E> {
    /// Complete (now or before).
    Done,
    /// Nothing to complete.
    NotLazy,
    /// The calling thread is itself building the object further up its stack.
    Recursive,
    /// This call's build failed with `E`; the object is `LAZY` again.
    Failed(E),
}

impl OnceState {
    /// A fresh state ([`NOT_LAZY`]).
    #[cfg(not(loom))]
    pub const fn new() -> OnceState {
        OnceState(AtomicUsize::new(NOT_LAZY))
    }

    /// A fresh state ([`NOT_LAZY`]).
    #[cfg(loom)]
    pub fn new() -> OnceState {
        OnceState(AtomicUsize::new(NOT_LAZY))
    }

    /// Views a C `uintptr_t` state field as a `OnceState`.
    ///
    /// # Safety
    /// `word` is valid and aligned for the lifetime `'a`, and every concurrent access
    /// to it is atomic.
    #[cfg(not(loom))]
    pub unsafe fn from_ptr<'a>(word: *mut usize) -> &'a OnceState {
        // SAFETY: OnceState is repr(transparent) over AtomicUsize, which has the size
        // and alignment of usize; validity and atomic access are the caller's contract.
        unsafe { &*(word as *const OnceState) }
    }

    /// Whether the object is complete (`Acquire`: its contents are then visible).
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == DONE
    }

    /// The raw word (for diagnostics).
    pub fn word(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// `NOT_LAZY → LAZY`, before the object is shared.
    pub fn arm(&self) -> Result<(), ProtocolError> {
        self.0
            .compare_exchange(NOT_LAZY, LAZY, Ordering::Release, Ordering::Relaxed)
            .map(drop)
            .map_err(|state| ProtocolError::NotFresh { state })
    }

    /// `NOT_LAZY → DONE`, for an object completed directly (not through a build), e.g.
    /// a struct that user code completes explicitly. `Release`, after its contents.
    pub fn complete_eagerly(&self) -> Result<(), ProtocolError> {
        self.0
            .compare_exchange(NOT_LAZY, DONE, Ordering::Release, Ordering::Relaxed)
            .map(drop)
            .map_err(|state| ProtocolError::NotFresh { state })
    }

    /// Claims a `LAZY` object for `me`. `me` must hold `lock` (which is what makes
    /// `BUILDING(other)` impossible here).
    pub fn begin<R: RawLock>(&self, lock: &ReentrantLock<R>, me: ThreadToken) -> Result<Begin, ProtocolError> {
        if !lock.is_held_by(me) {
            return Err(ProtocolError::LockNotHeld);
        }
        match self.0.compare_exchange(LAZY, me.get(), Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => Ok(Begin::Build),
            Err(DONE) => Ok(Begin::Done),
            Err(NOT_LAZY) => Ok(Begin::NotLazy),
            Err(owner) if owner == me.get() => Ok(Begin::Recursive),
            Err(owner) => Err(ProtocolError::BuiltElsewhere { owner }),
        }
    }

    /// Ends `me`'s build: `DONE` if it succeeded, back to `LAZY` if not (`Release`).
    pub fn finish<R: RawLock>(
        &self,
        lock: &ReentrantLock<R>,
        me: ThreadToken,
        succeeded: bool,
    ) -> Result<(), ProtocolError> {
        if !lock.is_held_by(me) {
            return Err(ProtocolError::LockNotHeld);
        }
        let next = if succeeded { DONE } else { LAZY };
        self.0
            .compare_exchange(me.get(), next, Ordering::Release, Ordering::Relaxed)
            .map(drop)
            .map_err(|state| ProtocolError::NotTheBuilder { state })
    }
}

impl Default for OnceState {
    fn default() -> Self {
        OnceState::new()
    }
}

/// Completes `state`'s object if it is lazy, running `build` at most once at a time
/// and never again after a success.
///
/// Fast path: an acquire load of `DONE`, no lock. Slow path: take `lock` for `me`
/// (waiting detached), [`begin`](OnceState::begin), run `build` if claimed,
/// [`finish`](OnceState::finish), unlock. `build` runs with the lock held, so it may
/// re-enter `force` for other objects (or this one: [`Forced::Recursive`]).
pub fn force<R, A, E>(
    lock: &ReentrantLock<R>,
    state: &OnceState,
    me: ThreadToken,
    attachment: &A,
    build: impl FnOnce() -> Result<(), E>,
) -> Result<Forced<E>, ProtocolError>
where
    R: RawLock,
    A: Attachment,
{
    if state.is_done() {
        return Ok(Forced::Done);
    }
    lock.lock(me, attachment);
    let outcome = match state.begin(lock, me) {
        Ok(Begin::Build) => {
            let built = build();
            state.finish(lock, me, built.is_ok()).map(|()| match built {
                Ok(()) => Forced::Done,
                Err(error) => Forced::Failed(error),
            })
        }
        Ok(Begin::Done) => Ok(Forced::Done),
        Ok(Begin::NotLazy) => Ok(Forced::NotLazy),
        Ok(Begin::Recursive) => Ok(Forced::Recursive),
        Err(error) => Err(error),
    };
    lock.unlock(me)?;
    outcome
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_support::BlockingLock;
    use crate::NoAttachment;
    use std::sync::atomic::AtomicUsize as StdAtomic;
    use std::sync::{Arc, Barrier};

    fn lock() -> ReentrantLock<BlockingLock> {
        ReentrantLock::new(BlockingLock::default())
    }

    #[test]
    fn a_lazy_object_is_built_once_and_then_done_without_the_lock() {
        let (lock, state) = (lock(), OnceState::new());
        state.arm().unwrap();
        let me = ThreadToken::current();
        let built = StdAtomic::new(0);
        let build = || {
            built.fetch_add(1, Ordering::Relaxed);
            Ok::<(), ()>(())
        };
        assert_eq!(force(&lock, &state, me, &NoAttachment, build), Ok(Forced::Done));
        assert_eq!(force(&lock, &state, me, &NoAttachment, || Err(())), Ok(Forced::Done));
        assert_eq!(built.load(Ordering::Relaxed), 1);
        assert!(state.is_done());
        assert!(!lock.is_held_by(me));
    }

    #[test]
    fn a_failed_build_rolls_back_and_the_next_caller_retries() {
        let (lock, state) = (lock(), OnceState::new());
        state.arm().unwrap();
        let me = ThreadToken::current();
        assert_eq!(force(&lock, &state, me, &NoAttachment, || Err("size mismatch")), Ok(Forced::Failed("size mismatch")));
        assert_eq!(state.word(), LAZY);
        assert_eq!(force(&lock, &state, me, &NoAttachment, || Ok::<(), &str>(())), Ok(Forced::Done));
    }

    #[test]
    fn recursion_by_the_builder_is_reported_not_deadlocked() {
        let (lock, state) = (lock(), OnceState::new());
        state.arm().unwrap();
        let me = ThreadToken::current();
        let mut inner = None;
        let outer = force(&lock, &state, me, &NoAttachment, || {
            inner = Some(force(&lock, &state, me, &NoAttachment, || Ok::<(), ()>(())));
            Ok::<(), ()>(())
        });
        assert_eq!(inner, Some(Ok(Forced::Recursive)));
        assert_eq!(outer, Ok(Forced::Done));
        assert!(!lock.is_held_by(me));
    }

    #[test]
    fn not_lazy_objects_are_left_alone() {
        let (lock, state) = (lock(), OnceState::new());
        let me = ThreadToken::current();
        assert_eq!(force(&lock, &state, me, &NoAttachment, || -> Result<(), ()> { panic!("no build") }), Ok(Forced::NotLazy));
        state.complete_eagerly().unwrap();
        assert!(state.is_done());
        assert_eq!(state.arm(), Err(ProtocolError::NotFresh { state: DONE }));
    }

    #[test]
    fn illegal_transitions_are_reported() {
        let (lock, state) = (lock(), OnceState::new());
        state.arm().unwrap();
        let me = ThreadToken::current();
        assert_eq!(state.begin(&lock, me), Err(ProtocolError::LockNotHeld));
        lock.lock(me, &NoAttachment);
        assert_eq!(state.finish(&lock, me, true), Err(ProtocolError::NotTheBuilder { state: LAZY }));
        let other = ThreadToken::new(me.get() + 8).unwrap();
        state.0.store(other.get(), Ordering::Relaxed); // a claim leaked by another thread
        assert_eq!(state.begin(&lock, me), Err(ProtocolError::BuiltElsewhere { owner: other.get() }));
        lock.unlock(me).unwrap();
    }

    #[test]
    fn eight_threads_race_one_object_and_all_see_it_complete() {
        for _ in 0..200 {
            let lock = Arc::new(lock());
            let state = Arc::new(OnceState::new());
            let payload = Arc::new(StdAtomic::new(0));
            let builds = Arc::new(StdAtomic::new(0));
            state.arm().unwrap();
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (lock, state, payload, builds, barrier) =
                        (lock.clone(), state.clone(), payload.clone(), builds.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let forced = force(&lock, &state, ThreadToken::current(), &NoAttachment, || {
                            builds.fetch_add(1, Ordering::Relaxed);
                            payload.store(42, Ordering::Relaxed);
                            Ok::<(), ()>(())
                        });
                        assert_eq!(forced, Ok(Forced::Done));
                        payload.load(Ordering::Relaxed)
                    })
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap(), 42);
            }
            assert_eq!(builds.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn state_constants_match_the_c_header() {
        let header = include_str!("../../../shim-c/include/cffi_ft.h");
        for (name, value) in [("NOT_LAZY", NOT_LAZY), ("LAZY", LAZY), ("DONE", DONE)] {
            let line = format!("#define CFFI_FT_LAZY_{name} {value}");
            assert!(header.contains(&line), "cffi_ft.h must say {line:?}");
        }
    }
}
