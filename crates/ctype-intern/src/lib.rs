//! # ctype-intern: a concurrent interning map of weak handles
//!
//! cffi promises that equal ctypes are the *same object*. This crate holds the
//! bookkeeping for that promise without knowing anything about Python: a map from a
//! small key (a few machine words: the addresses of component ctypes, a length, an ABI
//! word) to an **entry** that owns a *weak* handle to the canonical value.
//!
//! ## Operations
//! * [`InternMap::lookup`]: the hit path. Finds the entry and upgrades its weak handle.
//!   No allocation.
//! * [`InternMap::intern`]: get-or-insert. Among threads interning equal keys at the
//!   same time exactly one candidate is inserted; every other thread gets that winner
//!   (or, if the winner already died, retries).
//! * [`InternMap::forget`]: called when a value dies; removes its entry **only if the
//!   map still holds that very entry** (pointer identity), so a dying value never
//!   removes the entry of its replacement.
//!
//! ## Concurrency contract
//! * **Ownership.** The map owns one `Arc<Entry>` per key; each inserted value owns
//!   another clone of its entry (the caller stores it with the value and gives it back
//!   to [`InternMap::forget`] when the value dies). An entry owns its weak handle `W`;
//!   `W`'s `Drop` releases it. The map never owns a strong reference to a value, so
//!   values die normally and a dead value is simply a miss.
//! * **Locks.** The map is split into shards, each a `RwLock<HashMap>`. A lock is held
//!   only around plain hash-map operations and `Arc` clones: **no [`WeakHandle`] method
//!   and no `W` drop ever runs under a shard lock.** At the Python edge `upgrade` and
//!   `drop` call into CPython (which may block or detach the thread), so this is what
//!   keeps the seam rules R2/R3: no Rust lock held across a CPython call, references
//!   released only after unlocking.
//! * **Orderings.** All cross-thread publication goes through the shard locks (the
//!   `RwLock` release/acquire pairs) and `Arc`'s own reference counting; the crate has
//!   no atomics of its own.
//! * **Never a dead value.** A hit is only ever produced by [`WeakHandle::upgrade`]
//!   succeeding, i.e. by the handle's owner confirming the value is alive and taking a
//!   strong reference atomically (CPython's `PyWeakref_GetRef`). A value whose last
//!   reference is gone but whose destructor has not run yet is already dead to it.
//! * **No ABA.** Keys contain addresses of component objects. A live value keeps its
//!   components alive, so while an entry's value is alive its key cannot be reused by
//!   other components; a stale entry whose value died is a miss (upgrade fails) and is
//!   replaced by the next insert, never returned.
//!
//! ## Model checking
//! With `RUSTFLAGS="--cfg loom"` the shard locks and `Arc` come from `loom`, and
//! `tests/loom.rs` explores the interleavings of get-or-insert races, insert racing
//! with the death of the previous value, and removal racing with re-insertion.

use std::hash::{BuildHasher, BuildHasherDefault};

use hashbrown::HashTable;
use rustc_hash::FxHasher;

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, RwLock};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, RwLock};

/// A weak reference to a value: it can be upgraded to a strong one while the value is
/// alive. Dropping the handle releases it.
pub trait WeakHandle {
    /// A strong reference, returned by a successful upgrade.
    type Strong;

    /// A strong reference if the value is still alive; `None` once it is dead (even if
    /// its destructor has not run yet). Must never resurrect a dead value.
    fn upgrade(&self) -> Option<Self::Strong>;
}

type Hasher = BuildHasherDefault<FxHasher>;

/// Keys of up to this many words are stored inline in their entry (pointer, array and
/// short function types); longer ones on the heap.
const INLINE_WORDS: usize = 4;

enum Key {
    Inline(u8, [usize; INLINE_WORDS]),
    Heap(Box<[usize]>),
}

impl Key {
    fn new(words: &[usize]) -> Key {
        if words.len() <= INLINE_WORDS {
            let mut inline = [0; INLINE_WORDS];
            inline[..words.len()].copy_from_slice(words);
            Key::Inline(words.len() as u8, inline)
        } else {
            Key::Heap(words.into())
        }
    }

    fn words(&self) -> &[usize] {
        match self {
            Key::Inline(len, words) => &words[..usize::from(*len)],
            Key::Heap(words) => words,
        }
    }
}

/// One interned key and the weak handle of its canonical value: one allocation (the
/// `Arc`) per entry, shared by the map and the value that owns the entry.
pub struct Entry<W> {
    key: Key,
    weak: W,
}

impl<W> Entry<W> {
    pub fn key(&self) -> &[usize] {
        self.key.words()
    }

    pub fn weak(&self) -> &W {
        &self.weak
    }
}

/// The result of [`InternMap::intern`].
pub enum Interned<S, W> {
    /// An equal, live value already existed: here is a strong reference to it. The
    /// candidate was not used.
    Existing(S),
    /// The candidate was inserted. The caller stores this entry with the value and
    /// passes it to [`InternMap::forget`] when the value dies.
    Inserted(Arc<Entry<W>>),
}

struct Shard<W> {
    /// Entries hashed by their key (the hash is recomputed from `Entry::key`).
    map: RwLock<HashTable<Arc<Entry<W>>>>,
}

impl<W> Shard<W> {
    fn find<'a>(table: &'a HashTable<Arc<Entry<W>>>, hash: u64, key: &[usize]) -> Option<&'a Arc<Entry<W>>> {
        table.find(hash, |e| e.key() == key)
    }
}

/// The interning map. See the crate documentation for the protocol.
pub struct InternMap<W> {
    shards: Box<[Shard<W>]>,
    hasher: Hasher,
}

impl<W: WeakHandle> InternMap<W> {
    /// A map with `shards` shards (rounded up to a power of two, at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let shards = (0..n).map(|_| Shard { map: RwLock::new(HashTable::new()) }).collect();
        InternMap { shards, hasher: Hasher::default() }
    }

    fn hash(&self, key: &[usize]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Shard<W> {
        // high bits pick the shard; the table inside uses the whole hash
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The entry currently stored for `key`, cloned under the read lock.
    fn current(shard: &Shard<W>, hash: u64, key: &[usize]) -> Option<Arc<Entry<W>>> {
        let table = shard.map.read().expect("shard lock poisoned");
        Shard::find(&table, hash, key).cloned()
    }

    /// The hit path: a strong reference to the live value interned under `key`.
    pub fn lookup(&self, key: &[usize]) -> Option<W::Strong> {
        let hash = self.hash(key);
        let entry = Self::current(self.shard(hash), hash, key)?;
        // lock released: upgrading may call into the runtime
        entry.weak.upgrade()
    }

    /// Get-or-insert. `make_weak` creates the weak handle of the caller's candidate; it
    /// is called at most once, outside any lock, and only when no live value exists.
    pub fn intern<E>(
        &self,
        key: &[usize],
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong, W>, E> {
        let hash = self.hash(key);
        let observed = Self::current(self.shard(hash), hash, key);
        if let Some(live) = observed.as_ref().and_then(|e| e.weak.upgrade()) {
            return Ok(Interned::Existing(live));
        }
        self.insert_or_adopt(hash, key, observed, make_weak)
    }

    /// [`intern`](Self::intern) for a caller that has just missed with
    /// [`lookup`](Self::lookup): skips the initial read. Equally correct whatever
    /// happened since the miss (the insert loop re-checks the slot under the lock).
    pub fn intern_after_miss<E>(
        &self,
        key: &[usize],
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong, W>, E> {
        self.insert_or_adopt(self.hash(key), key, None, make_weak)
    }

    /// The insert loop: `observed` is what the caller last saw in the slot (absent or
    /// dead). The candidate goes in only if the slot still holds exactly that.
    fn insert_or_adopt<E>(
        &self,
        hash: u64,
        key: &[usize],
        mut observed: Option<Arc<Entry<W>>>,
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong, W>, E> {
        let shard = self.shard(hash);
        let candidate = Arc::new(Entry { key: Key::new(key), weak: make_weak()? });
        loop {
            let mut map = shard.map.write().expect("shard lock poisoned");
            let current = Shard::find(&map, hash, key).cloned();
            let unchanged = match (&current, &observed) {
                (None, None) => true,
                (Some(c), Some(o)) => Arc::ptr_eq(c, o),
                _ => false,
            };
            if unchanged {
                // The slot still holds what we saw absent or dead: the candidate wins.
                let replaced = match map.find_entry(hash, |e| e.key() == key) {
                    Ok(occupied) => Some(std::mem::replace(occupied.into_mut(), candidate.clone())),
                    Err(_absent) => {
                        map.insert_unique(hash, candidate.clone(), |e| self.hash(e.key()));
                        None
                    }
                };
                drop(map);
                // Entries are released only now, after unlocking.
                drop(replaced);
                drop(current);
                drop(observed);
                return Ok(Interned::Inserted(candidate));
            }
            drop(map);
            // Another thread changed the slot meanwhile; is its value alive?
            if let Some(live) = current.as_ref().and_then(|e| e.weak.upgrade()) {
                drop(candidate); // releases the unused weak handle, unlocked
                return Ok(Interned::Existing(live));
            }
            observed = current;
        }
    }

    /// Removes `entry` from the map if the map still holds exactly this entry, then
    /// releases the caller's reference to it. Call it when the value has died.
    pub fn forget(&self, entry: Arc<Entry<W>>) {
        let hash = self.hash(entry.key());
        let shard = self.shard(hash);
        let removed = {
            let mut map = shard.map.write().expect("shard lock poisoned");
            // only the very entry: a replacement with the same key stays
            match map.find_entry(hash, |e| Arc::ptr_eq(e, &entry)) {
                Ok(occupied) => Some(occupied.remove().0),
                Err(_) => None,
            }
        };
        // Released after unlocking: dropping the last entry drops its weak handle.
        drop(removed);
        drop(entry);
    }

    /// Number of entries (live or not yet forgotten), for tests and diagnostics.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.read().expect("shard lock poisoned").len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    /// A value with a strong count, and a weak handle to it that upgrades like
    /// `std::sync::Weak` (never from zero). Counts how many handles are alive.
    struct Value {
        id: usize,
        strong: AtomicUsize,
    }

    struct Weak(std::sync::Arc<Value>, std::sync::Arc<AtomicUsize>);

    impl Drop for Weak {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl WeakHandle for Weak {
        type Strong = usize;
        fn upgrade(&self) -> Option<usize> {
            let mut n = self.0.strong.load(Ordering::SeqCst);
            while n > 0 {
                match self.0.strong.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Some(self.0.id),
                    Err(actual) => n = actual,
                }
            }
            None
        }
    }

    fn value(id: usize) -> std::sync::Arc<Value> {
        std::sync::Arc::new(Value { id, strong: AtomicUsize::new(1) })
    }

    #[test]
    fn insert_then_hit_then_forget() {
        let live = std::sync::Arc::new(AtomicUsize::new(0));
        let map = InternMap::new(4);
        let v = value(7);
        let made = {
            let live = live.clone();
            let v = v.clone();
            move || -> Result<Weak, ()> {
                live.fetch_add(1, Ordering::SeqCst);
                Ok(Weak(v, live))
            }
        };
        let Ok(Interned::Inserted(entry)) = map.intern(&[1, 2], made) else { panic!("insert") };
        assert_eq!(entry.key(), &[1, 2]);
        assert_eq!(map.lookup(&[1, 2]), Some(7));
        assert_eq!(map.lookup(&[1, 3]), None);
        assert_eq!(map.len(), 1);
        v.strong.store(0, Ordering::SeqCst); // the value dies
        assert_eq!(map.lookup(&[1, 2]), None, "a dead value is a miss");
        map.forget(entry);
        assert!(map.is_empty());
        assert_eq!(live.load(Ordering::SeqCst), 0, "the weak handle was released");
    }

    #[test]
    fn dead_entry_is_replaced_and_old_forget_keeps_the_new_one() {
        let live = std::sync::Arc::new(AtomicUsize::new(0));
        let map = InternMap::new(1);
        let mk = |v: std::sync::Arc<Value>| {
            let live = live.clone();
            move || -> Result<Weak, ()> {
                live.fetch_add(1, Ordering::SeqCst);
                Ok(Weak(v, live))
            }
        };
        let a = value(1);
        let Ok(Interned::Inserted(ea)) = map.intern(&[9], mk(a.clone())) else { panic!() };
        a.strong.store(0, Ordering::SeqCst); // dies, destructor not run yet
        let b = value(2);
        let Ok(Interned::Inserted(eb)) = map.intern(&[9], mk(b.clone())) else {
            panic!("a dead value must never be returned")
        };
        map.forget(ea); // the late destructor of the old value
        assert_eq!(map.lookup(&[9]), Some(2), "forget removed the replacement");
        map.forget(eb);
        assert!(map.is_empty());
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn make_weak_error_inserts_nothing() {
        let map: InternMap<Weak> = InternMap::new(2);
        let r = map.intern(&[5], || Err::<Weak, &str>("no memory"));
        assert!(matches!(r, Err("no memory")));
        assert!(map.is_empty());
    }

    #[test]
    fn threads_interning_one_key_agree_on_one_winner() {
        const THREADS: usize = 8;
        for round in 0..200 {
            let live = std::sync::Arc::new(AtomicUsize::new(0));
            let map = InternMap::new(8);
            let barrier = Barrier::new(THREADS);
            let winners: Vec<(usize, bool)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (map, barrier, live) = (&map, &barrier, live.clone());
                        s.spawn(move || {
                            let mine = value(t);
                            barrier.wait();
                            let made = move || -> Result<Weak, ()> {
                                live.fetch_add(1, Ordering::SeqCst);
                                Ok(Weak(mine, live))
                            };
                            match map.intern(&[round, 42], made).unwrap() {
                                Interned::Existing(id) => (id, false),
                                Interned::Inserted(e) => {
                                    // keep the entry alive for the test's duration
                                    std::mem::forget(e);
                                    (t, true)
                                }
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let inserted = winners.iter().filter(|(_, ins)| *ins).count();
            assert_eq!(inserted, 1, "exactly one inserter");
            let first = winners[0].0;
            assert!(winners.iter().all(|(id, _)| *id == first), "{winners:?}");
            assert_eq!(map.len(), 1);
        }
    }
}
