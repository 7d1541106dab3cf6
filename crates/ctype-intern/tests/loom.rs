//! Model checks of the interning protocol with loom (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ctype-intern --release --test loom`, or
//! `cargo xtask loom`).
//!
//! The model value has an atomic strong count; its weak handle upgrades only from a
//! non-zero count (like `PyWeakref_GetRef`), and "death" is the last strong reference
//! going away followed, later, by the destructor calling `forget`.
#![cfg(loom)]

use ctype_intern::{InternMap, Interned, Token, WeakHandle};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

struct Value {
    id: usize,
    strong: AtomicUsize,
}

impl Value {
    fn new(id: usize) -> Arc<Value> {
        Arc::new(Value { id, strong: AtomicUsize::new(1) })
    }

    /// Drops one strong reference; true if it was the last one (the value is dead).
    fn release(&self) -> bool {
        self.strong.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

struct Weak(Arc<Value>);

impl WeakHandle for Weak {
    type Strong = Arc<Value>;
    type Pinned = Arc<Value>;
    fn pin(&self) -> Arc<Value> {
        self.0.clone()
    }
    fn upgrade(value: Arc<Value>) -> Option<Arc<Value>> {
        let mut n = value.strong.load(Ordering::Acquire);
        while n > 0 {
            match value.strong.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(value),
                Err(actual) => n = actual,
            }
        }
        None
    }
}

/// What one thread ended up holding: the value and, if it inserted it, its token.
struct Held {
    value: Arc<Value>,
    entry: Option<Token>,
}

fn intern(map: &InternMap<Weak>, key: &[usize], id: usize) -> Held {
    let candidate = Value::new(id);
    let for_weak = candidate.clone();
    let make_weak = move || Ok::<_, ()>(Weak(for_weak));
    // odd ids take the path the backend uses after a lookup miss
    let result =
        if id % 2 == 1 { map.intern_after_miss(key, id, make_weak) } else { map.intern(key, id, make_weak) };
    match result.unwrap() {
        Interned::Existing(value) => Held { value, entry: None },
        Interned::Inserted(token) => Held { value: candidate, entry: Some(token) },
    }
}

/// Drops a held reference; runs the "destructor" (forget) if it was the last one.
fn release(map: &InternMap<Weak>, held: Held, owner_entry: Option<Token>) {
    if held.value.release() {
        if let Some(token) = held.entry.or(owner_entry) {
            map.forget(token, held.value.id);
        }
    }
}

#[test]
fn concurrent_get_or_insert_of_one_key_has_one_winner() {
    // Three threads: bound preemptions to keep the state space tractable (loom's
    // guidance; races of this protocol need at most two preemptions to show).
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let map = Arc::new(InternMap::<Weak>::new(1));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let map = map.clone();
                thread::spawn(move || {
                    let held = intern(&map, &[1, 2], t);
                    (held.value.id, held.entry.is_some())
                })
            })
            .collect();
        let mine = intern(&map, &[1, 2], 9);
        let mut results: Vec<(usize, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.push((mine.value.id, mine.entry.is_some()));
        assert_eq!(results.iter().filter(|(_, inserted)| *inserted).count(), 1);
        assert!(results.iter().all(|(id, _)| *id == results[0].0), "split identity");
        assert_eq!(map.len(), 1);
    });
}

#[test]
fn insert_racing_with_death_of_the_previous_value() {
    loom::model(|| {
        let map = Arc::new(InternMap::<Weak>::new(1));
        // The old value is interned and held by one reference.
        let old = intern(&map, &[7], 1);
        assert!(old.entry.is_some());

        let dropper = {
            let map = map.clone();
            thread::spawn(move || release(&map, old, None))
        };
        let new = intern(&map, &[7], 2);
        dropper.join().unwrap();

        // We either got the old value while it was still alive (then it is alive now,
        // held by us) or our own candidate; never a dead value.
        assert!(new.value.strong.load(Ordering::Acquire) >= 1, "handed out a dead value");
        if new.value.id == 1 {
            assert!(new.entry.is_none());
        } else {
            assert!(new.entry.is_some(), "a fresh value must come with its entry");
            // The old destructor must not have removed the new entry.
            assert_eq!(map.lookup(&[7]).map(|v| v.id), Some(2));
        }
    });
}

#[test]
fn removal_racing_with_reinsertion() {
    loom::model(|| {
        let map = Arc::new(InternMap::<Weak>::new(1));
        let first = intern(&map, &[3, 3], 1);
        let first_entry = first.entry;
        // The value dies; its destructor (forget) runs on another thread while this
        // thread interns the same key again.
        assert!(first.value.release());
        let destructor = {
            let map = map.clone();
            thread::spawn(move || map.forget(first_entry.unwrap(), 1))
        };
        let second = intern(&map, &[3, 3], 2);
        destructor.join().unwrap();
        assert_eq!(second.value.id, 2, "the dead value was handed out");
        assert!(second.entry.is_some());
        assert_eq!(map.len(), 1, "the new entry was removed by the old destructor");
        assert_eq!(map.lookup(&[3, 3]).map(|v| v.id), Some(2));
    });
}
