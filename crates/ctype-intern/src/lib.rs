//! # ctype-intern: a concurrent interning map of weak handles
//!
//! cffi promises that equal ctypes are the *same object*. This crate holds the
//! bookkeeping for that promise without knowing anything about Python: a map from a
//! small key (a few machine words: the addresses of component ctypes, a length, an ABI
//! word) to an **entry** that holds a *weak* handle to the canonical value.
//!
//! ## Operations
//! * [`InternMap::lookup`]: the hit path. Finds the entry, [pins](WeakHandle::pin) its
//!   handle under the shard's read lock and [upgrades](WeakHandle::upgrade) it after
//!   unlocking. No allocation.
//! * [`InternMap::intern`]: get-or-insert. Among threads interning equal keys at the
//!   same time exactly one candidate is inserted; every other thread gets that winner
//!   (or, if the winner already died, retries). The winner gets a [`Token`].
//! * [`InternMap::forget`]: called when a value dies, with its token and its identity
//!   (the `id` it was interned with, at the edge the object's address). It removes the
//!   entry **only if the map still holds that value's entry**, so a dying value never
//!   removes the entry of its replacement.
//!
//! ## Concurrency contract
//! * **Ownership.** The map owns its entries; an entry owns its key and its weak
//!   handle `W`, whose `Drop` releases it. The map never owns a strong reference to a
//!   value, so values die normally and a dead value is simply a miss. An inserted
//!   value keeps only its [`Token`] (a word: the key's hash, never zero) and its id.
//! * **Locks.** The map is split into shards, each an `RwLock` over a hash table. A
//!   lock is held only around plain table operations and [`WeakHandle::pin`], whose
//!   contract is "cannot block, detach, deallocate or re-enter the map" (at the edge:
//!   one `Py_IncRef`). **[`WeakHandle::upgrade`] and every `W` drop run unlocked.** At
//!   the Python edge those call into CPython (which may block, detach or run a
//!   deallocator), so this is what keeps the seam rules R2/R3: no Rust lock held
//!   across a CPython call that can block or deallocate, references released only
//!   after unlocking.
//! * **Orderings.** All cross-thread publication goes through the shard locks (the
//!   `RwLock` release/acquire pairs); the crate has no atomics of its own.
//! * **Never a dead value.** A hit is only ever produced by [`WeakHandle::upgrade`]
//!   succeeding, i.e. by the handle's owner confirming the value is alive and taking a
//!   strong reference atomically (CPython's `PyWeakref_GetRef`). A value whose last
//!   reference is gone but whose destructor has not run yet is already dead to it.
//! * **No ABA.** Two identities are in play. *Ids* (value addresses) decide what
//!   [`forget`](InternMap::forget) removes: a value calls it before its memory is
//!   freed, so while its entry exists no other value can have the same id. *Serials*
//!   (a per-shard counter, bumped under the write lock at each insert) decide whether
//!   the slot an inserter saw holding a dead value is still the same slot when it
//!   comes back with the write lock; an address could be reused by then, a serial
//!   cannot.
//!
//! ## Model checking
//! With `RUSTFLAGS="--cfg loom"` the shard locks come from `loom`, and `tests/loom.rs`
//! explores the interleavings of get-or-insert races, insert racing with the death of
//! the previous value, and removal racing with re-insertion.

use std::hash::{BuildHasher, BuildHasherDefault};
use std::num::NonZeroUsize;

use hashbrown::hash_table::Entry as Slot;
use hashbrown::HashTable;
use rustc_hash::FxHasher;

#[cfg(loom)]
pub(crate) use loom::sync::RwLock;
// std's RwLock, annotated for ThreadSanitizer in the kit's TSan builds (tsan-sync)
#[cfg(not(loom))]
pub(crate) use tsan_sync::RwLock;

/// A weak reference to a value: it can be upgraded to a strong one while the value is
/// alive. Dropping the handle releases it.
pub trait WeakHandle {
    /// A strong reference, returned by a successful upgrade.
    type Strong;

    /// What a reader takes out of the map so that it can upgrade after unlocking (it
    /// must keep whatever `upgrade` needs alive even if the entry is dropped meanwhile).
    type Pinned;

    /// Runs **under a shard lock**: must not block, detach, deallocate anything or use
    /// the map.
    fn pin(&self) -> Self::Pinned;

    /// Runs unlocked. A strong reference if the value is still alive; `None` once it
    /// is dead (even if its destructor has not run yet). Must never resurrect a dead
    /// value. Releases the pin either way.
    fn upgrade(pinned: Self::Pinned) -> Option<Self::Strong>;
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

/// What an inserted value keeps to find its entry again: the key's hash, never zero,
/// so it fits a pointer-sized field where null means "not interned".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(NonZeroUsize);

impl Token {
    /// The token as a word, for storage outside Rust.
    pub fn into_raw(self) -> usize {
        self.0.get()
    }

    /// A token back from [`into_raw`](Self::into_raw); `None` for zero.
    pub fn from_raw(raw: usize) -> Option<Token> {
        NonZeroUsize::new(raw).map(Token)
    }

    fn hash(self) -> u64 {
        self.0.get() as u64
    }
}

/// One interned key, the weak handle of its value, the value's id and the serial of
/// the insert that put it there.
struct Entry<W> {
    key: Key,
    weak: W,
    id: usize,
    serial: u64,
}

/// The result of [`InternMap::intern`].
pub enum Interned<S> {
    /// An equal, live value already existed: here is a strong reference to it. The
    /// candidate was not used (its weak handle has been released).
    Existing(S),
    /// The candidate was inserted. The caller keeps the token with the value and
    /// passes it, with the same id, to [`InternMap::forget`] when the value dies.
    Inserted(Token),
}

struct Table<W> {
    /// Entries hashed by their token (the hash of their key).
    entries: HashTable<Entry<W>>,
    /// Serial of the next insert into this shard.
    next_serial: u64,
}

/// The interning map. See the crate documentation for the protocol.
pub struct InternMap<W> {
    shards: Box<[RwLock<Table<W>>]>,
    hasher: Hasher,
}

/// What an inserter saw in the slot before taking the write lock.
enum Seen {
    Nothing,
    DeadEntry(u64),
}

impl<W: WeakHandle> InternMap<W> {
    /// A map with `shards` shards (rounded up to a power of two, at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        let shards = (0..n)
            .map(|_| RwLock::new(Table { entries: HashTable::new(), next_serial: 0 }))
            .collect();
        InternMap { shards, hasher: Hasher::default() }
    }

    fn token(&self, key: &[usize]) -> Token {
        let hash = self.hasher.hash_one(key) as usize | 1;
        Token(NonZeroUsize::new(hash).expect("low bit set"))
    }

    fn shard(&self, token: Token) -> &RwLock<Table<W>> {
        // high bits pick the shard (the table inside uses the low ones); on 32-bit
        // targets the middle bits do
        let h = token.hash();
        let index = ((h >> 32) ^ (h >> 16)) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The entry for `key` as (serial, pinned handle), read under the shard's read lock.
    fn find_pinned(&self, token: Token, key: &[usize]) -> Option<(u64, W::Pinned)> {
        let table = self.shard(token).read().expect("shard lock poisoned");
        let entry = table.entries.find(token.hash(), |e| e.key.words() == key)?;
        Some((entry.serial, entry.weak.pin()))
    }

    /// The hit path: a strong reference to the live value interned under `key`.
    pub fn lookup(&self, key: &[usize]) -> Option<W::Strong> {
        let (_, pinned) = self.find_pinned(self.token(key), key)?;
        // lock released: upgrading may call into the runtime
        W::upgrade(pinned)
    }

    /// Get-or-insert. `make_weak` creates the weak handle of the caller's candidate,
    /// whose identity is `id`; it is called at most once, outside any lock, and only
    /// when no live value was found.
    pub fn intern<E>(
        &self,
        key: &[usize],
        id: usize,
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong>, E> {
        let token = self.token(key);
        let seen = match self.find_pinned(token, key) {
            None => Seen::Nothing,
            Some((serial, pinned)) => match W::upgrade(pinned) {
                Some(live) => return Ok(Interned::Existing(live)),
                None => Seen::DeadEntry(serial),
            },
        };
        self.insert_or_adopt(token, key, id, seen, make_weak)
    }

    /// [`intern`](Self::intern) for a caller that has just missed with
    /// [`lookup`](Self::lookup): skips the initial read. Equally correct whatever
    /// happened since the miss (the insert loop re-checks the slot under the lock).
    pub fn intern_after_miss<E>(
        &self,
        key: &[usize],
        id: usize,
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong>, E> {
        self.insert_or_adopt(self.token(key), key, id, Seen::Nothing, make_weak)
    }

    /// The insert loop. The candidate goes in if the slot is empty (no entry means no
    /// live value: entries leave only when their value dies) or still holds the dead
    /// entry the caller saw; otherwise the slot's value is upgraded, unlocked.
    fn insert_or_adopt<E>(
        &self,
        token: Token,
        key: &[usize],
        id: usize,
        mut seen: Seen,
        make_weak: impl FnOnce() -> Result<W, E>,
    ) -> Result<Interned<W::Strong>, E> {
        let shard = self.shard(token);
        let hash = token.hash();
        let mut weak = Some(make_weak()?);
        loop {
            let mut table = shard.write().expect("shard lock poisoned");
            let serial = table.next_serial;
            let slot = table.entries.entry(hash, |e| e.key.words() == key, |e| self.hasher_of(e));
            let pinned = match slot {
                Slot::Vacant(vacant) => {
                    let weak = weak.take().expect("inserted once");
                    vacant.insert(Entry { key: Key::new(key), weak, id, serial });
                    table.next_serial += 1;
                    return Ok(Interned::Inserted(token));
                }
                Slot::Occupied(mut occupied) => {
                    let current = occupied.get_mut();
                    if matches!(seen, Seen::DeadEntry(s) if s == current.serial) {
                        // still the dead entry we saw: the candidate replaces it
                        let weak = weak.take().expect("inserted once");
                        let dead = std::mem::replace(
                            current,
                            Entry { key: Key::new(key), weak, id, serial },
                        );
                        table.next_serial += 1;
                        drop(table);
                        drop(dead); // released after unlocking
                        return Ok(Interned::Inserted(token));
                    }
                    (current.serial, current.weak.pin())
                }
            };
            drop(table);
            // Another thread filled the slot meanwhile; is its value alive?
            let (serial, pinned) = pinned;
            if let Some(live) = W::upgrade(pinned) {
                drop(weak); // releases the unused weak handle, unlocked
                return Ok(Interned::Existing(live));
            }
            seen = Seen::DeadEntry(serial);
        }
    }

    fn hasher_of(&self, entry: &Entry<W>) -> u64 {
        self.token(entry.key.words()).hash()
    }

    /// Removes the entry of the value `id` interned with `token`, if the map still
    /// holds it (a replacement with the same key stays). Call it when the value has
    /// died, before its identity can be reused.
    pub fn forget(&self, token: Token, id: usize) {
        let removed = {
            let mut table = self.shard(token).write().expect("shard lock poisoned");
            match table.entries.find_entry(token.hash(), |e| e.id == id) {
                Ok(occupied) => Some(occupied.remove().0),
                Err(_) => None,
            }
        };
        // Released after unlocking: dropping the entry drops its weak handle.
        drop(removed);
    }

    /// Number of entries (live or not yet forgotten), for tests and diagnostics.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().expect("shard lock poisoned").entries.len()).sum()
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
        type Pinned = std::sync::Arc<Value>;
        fn pin(&self) -> std::sync::Arc<Value> {
            self.0.clone()
        }
        fn upgrade(value: std::sync::Arc<Value>) -> Option<usize> {
            let mut n = value.strong.load(Ordering::SeqCst);
            while n > 0 {
                match value.strong.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Some(value.id),
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
        let Ok(Interned::Inserted(token)) = map.intern(&[1, 2], 7, made) else { panic!("insert") };
        assert_eq!(Token::from_raw(token.into_raw()), Some(token));
        assert_eq!(map.lookup(&[1, 2]), Some(7));
        assert_eq!(map.lookup(&[1, 3]), None);
        assert_eq!(map.len(), 1);
        v.strong.store(0, Ordering::SeqCst); // the value dies
        assert_eq!(map.lookup(&[1, 2]), None, "a dead value is a miss");
        map.forget(token, 8); // another value's id removes nothing
        assert_eq!(map.len(), 1);
        map.forget(token, 7);
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
        let Ok(Interned::Inserted(ea)) = map.intern(&[9], 1, mk(a.clone())) else { panic!() };
        a.strong.store(0, Ordering::SeqCst); // dies, destructor not run yet
        let b = value(2);
        let Ok(Interned::Inserted(eb)) = map.intern(&[9], 2, mk(b.clone())) else {
            panic!("a dead value must never be returned")
        };
        map.forget(ea, 1); // the late destructor of the old value
        assert_eq!(map.lookup(&[9]), Some(2), "forget removed the replacement");
        map.forget(eb, 2);
        assert!(map.is_empty());
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reused_id_in_the_slot_is_not_mistaken_for_the_dead_entry_seen() {
        // `intern` sees a dead entry (id 1), then, while it makes its handle (outside
        // the lock), that entry is forgotten and a live value with the *same id* (a
        // reused address) is interned under the same key. The candidate must adopt
        // it, not replace it: the slot's serial changed even though the id did not.
        let live = std::sync::Arc::new(AtomicUsize::new(0));
        let map = InternMap::new(1);
        let mk = |v: std::sync::Arc<Value>, live: std::sync::Arc<AtomicUsize>| {
            move || -> Result<Weak, ()> {
                live.fetch_add(1, Ordering::SeqCst);
                Ok(Weak(v, live))
            }
        };
        let old = value(1);
        let Ok(Interned::Inserted(t_old)) = map.intern(&[4, 4], 1, mk(old.clone(), live.clone())) else {
            panic!()
        };
        old.strong.store(0, Ordering::SeqCst);
        let reused = value(1); // same id, new value
        let late = value(3);
        let interloper = {
            let (map, reused, late, live) = (&map, reused.clone(), late.clone(), live.clone());
            move || -> Result<Weak, ()> {
                map.forget(t_old, 1);
                let Ok(Interned::Inserted(_)) = map.intern(&[4, 4], 1, mk(reused, live.clone())) else {
                    panic!("the slot was empty")
                };
                live.fetch_add(1, Ordering::SeqCst);
                Ok(Weak(late, live))
            }
        };
        match map.intern(&[4, 4], 3, interloper) {
            Ok(Interned::Existing(id)) => assert_eq!(id, 1),
            _ => panic!("replaced a live entry whose id matched the dead one"),
        }
        assert_eq!(map.len(), 1);
        assert_eq!(live.load(Ordering::SeqCst), 1, "the unused candidate handle was released");
    }

    #[test]
    fn make_weak_error_inserts_nothing() {
        let map: InternMap<Weak> = InternMap::new(2);
        let r = map.intern(&[5], 5, || Err::<Weak, &str>("no memory"));
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
                            match map.intern(&[round, 42], t, made).unwrap() {
                                Interned::Existing(id) => (id, false),
                                Interned::Inserted(_token) => (t, true),
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
