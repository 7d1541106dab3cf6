//! Model checks of the realization protocol with loom (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p realize-once --release --test loom`, or
//! `cargo xtask loom`).
//!
//! The object's contents are a relaxed atomic that the builder writes: a reader that
//! sees `DONE` must also see it, which only the `Release`/`Acquire` pair guarantees.
//! The raw lock of the model fails the run if a thread would block on it while still
//! attached, so "waiting detached" is checked in every model.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use realize_once::{force, Attachment, Forced, OnceState, RawLock, ReentrantLock, ThreadToken};
use std::cell::Cell;

loom::thread_local! {
    /// Whether this model thread is attached to its (modelled) runtime.
    static ATTACHED: Cell<bool> = Cell::new(true);
}

/// The model's runtime attachment: flips the thread's `ATTACHED` flag.
struct ModelRuntime;

impl Attachment for ModelRuntime {
    type Detached = ();
    fn detach(&self) {
        ATTACHED.with(|a| a.set(false));
    }
    fn reattach(&self, _: ()) {
        ATTACHED.with(|a| a.set(true));
    }
}

/// A blocking lock (loom's mutex and condvar, so the model never spins) that refuses
/// to block an attached thread: a stop-the-world collection would wait for that
/// thread forever.
struct ModelRawLock {
    locked: Mutex<bool>,
    freed: Condvar,
}

impl ModelRawLock {
    fn new() -> ModelRawLock {
        ModelRawLock { locked: Mutex::new(false), freed: Condvar::new() }
    }
}

unsafe impl RawLock for ModelRawLock {
    fn try_lock(&self) -> bool {
        let mut locked = self.locked.lock().unwrap();
        !std::mem::replace(&mut *locked, true)
    }
    fn lock(&self) {
        assert!(!ATTACHED.with(|a| a.get()), "a thread blocked on the realization lock while attached");
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

struct Object {
    lock: ReentrantLock<ModelRawLock>,
    state: OnceState,
    payload: AtomicUsize,
    builds: AtomicUsize,
}

impl Object {
    fn new_lazy() -> Arc<Object> {
        let object = Object {
            lock: ReentrantLock::new(ModelRawLock::new()),
            state: OnceState::new(),
            payload: AtomicUsize::new(0),
            builds: AtomicUsize::new(0),
        };
        object.state.arm().unwrap();
        Arc::new(object)
    }

    /// Builds the object: the attempt with number `failing_attempt` fails.
    fn build(&self, failing_attempt: usize) -> Result<(), &'static str> {
        let attempt = self.builds.fetch_add(1, Ordering::Relaxed);
        if attempt == failing_attempt {
            return Err("layout mismatch");
        }
        self.payload.store(42, Ordering::Relaxed);
        Ok(())
    }

    fn force(&self, me: ThreadToken, failing_attempt: usize) -> Forced<&'static str> {
        let forced = force(&self.lock, &self.state, me, &ModelRuntime, || self.build(failing_attempt)).unwrap();
        if forced == Forced::Done {
            assert_eq!(self.payload.load(Ordering::Relaxed), 42, "DONE seen before the contents");
        }
        assert!(!self.lock.is_held_by(me));
        forced
    }

}

/// [`Object::force`] in a new model thread.
fn force_in_other_thread(
    object: &Arc<Object>,
    me: ThreadToken,
    failing_attempt: usize,
) -> thread::JoinHandle<Forced<&'static str>> {
    let object = Arc::clone(object);
    thread::spawn(move || object.force(me, failing_attempt))
}

fn token(n: usize) -> ThreadToken {
    ThreadToken::new(0x1000 * (n + 1)).unwrap()
}

const NEVER: usize = usize::MAX;

#[test]
fn one_builder_wins_and_every_reader_sees_the_complete_object() {
    loom::model(|| {
        let object = Object::new_lazy();
        let other = force_in_other_thread(&object, token(1), NEVER);
        assert_eq!(object.force(token(0), NEVER), Forced::Done);
        assert_eq!(other.join().unwrap(), Forced::Done);
        assert_eq!(object.builds.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn recursion_by_the_owner_is_reported_while_another_thread_waits() {
    loom::model(|| {
        let object = Object::new_lazy();
        let other = force_in_other_thread(&object, token(1), NEVER);
        let me = token(0);
        let mut inner = None;
        let outer = force(&object.lock, &object.state, me, &ModelRuntime, || {
            inner = Some(force(&object.lock, &object.state, me, &ModelRuntime, || object.build(NEVER)).unwrap());
            object.build(NEVER)
        })
        .unwrap();
        assert_eq!(outer, Forced::Done);
        // Either this thread built it (and saw its own recursion) or the other one did.
        assert!(matches!(inner, None | Some(Forced::Recursive)));
        assert_eq!(other.join().unwrap(), Forced::Done);
        assert_eq!(object.builds.load(Ordering::Relaxed), 1);
        assert!(!object.lock.is_held_by(me));
    });
}

#[test]
fn a_failed_build_rolls_back_and_a_waiting_thread_builds_it() {
    loom::model(|| {
        let object = Object::new_lazy();
        let other = force_in_other_thread(&object, token(1), 0);
        let mine = object.force(token(0), 0);
        let theirs = other.join().unwrap();
        // The first attempt fails, whoever makes it; the other thread then builds.
        let mut outcomes = [mine, theirs];
        outcomes.sort_by_key(|f| matches!(f, Forced::Done));
        assert_eq!(outcomes, [Forced::Failed("layout mismatch"), Forced::Done]);
        assert_eq!(object.builds.load(Ordering::Relaxed), 2);
        assert!(object.state.is_done());
    });
}
