//! [`PinTable`]: values (pins) owned by foreign objects, keyed by the object's address.
//!
//! A fixed array of slot groups, lock-free: an object's address picks one group (a
//! multiplicative hash); [`PinTable::attach`] claims a free slot of that group with one
//! compare-and-swap of its key, [`PinTable::detach`] finds the key by scanning the group
//! (one cache line of keys) and frees the slot with plain stores. Only when all slots of
//! the group are taken does an entry go to the overflow map behind a mutex. So the
//! common attach costs one atomic read-modify-write, a detach none, and neither
//! allocates, locks or bumps a counter shared by all threads.
//!
//! ## Concurrency contract
//! * **Keys** are addresses of live objects: at most one entry per key. The caller
//!   attaches when the object is made and detaches from its destructor, before its
//!   memory can be reused, and the attach *happens before* the detach (the object was
//!   published to whoever destroys it). That is what makes a slot's key a claim: from
//!   the attach's successful CAS (0 → key) until the detach's store of 0, only the
//!   object's own detach touches the slot.
//! * **Orderings.** The CAS that claims a slot is `Acquire`: it reads the 0 that the
//!   slot's previous detach stored with `Release` after taking the previous value out,
//!   so that taking happens before this attach overwrites the value. The value is
//!   stored with `Release` and loaded with `Acquire`; the key scan is `Acquire` too.
//!   A detach that finds no key in its group looks in the overflow map only if the
//!   overflow count (changed under the map's mutex) is not zero; the attach that put
//!   an entry there happened before its detach, so the count it raised is visible.
//! * **Blocking.** Only the overflow map's mutex, held for one hash-map operation. A
//!   detached value is handed to the caller, who drops it (a pin's drop can run the
//!   deferred close) outside any lock of this table.
//! * **Memory.** `GROUPS` × `SLOTS` keys and values (64 KiB), allocated with the
//!   table; the overflow map only when a group is full.

use crate::{AtomicPtr, AtomicUsize, Mutex, Ordering};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

/// Slots per group: one 64-byte cache line of keys. (Two under loom: fewer steps to
/// explore, and a full group is reached with three entries.)
#[cfg(not(loom))]
const SLOTS: usize = 8;
#[cfg(loom)]
const SLOTS: usize = 2;

/// Groups of a table made by [`PinTable::new`].
const GROUPS: usize = 512;

/// A value the table holds in one pointer-sized word: [`OneWord::into_word`] gives up
/// ownership of the value, [`OneWord::from_word`] takes it back.
///
/// # Safety
/// `from_word(into_word(v))` must give back `v` (ownership included), and the word of
/// a live value must stay valid until it is taken back.
pub unsafe trait OneWord: Sized {
    fn into_word(self) -> NonNull<()>;

    /// # Safety
    /// `word` came from [`OneWord::into_word`] of this type and is taken back at most
    /// once.
    unsafe fn from_word(word: NonNull<()>) -> Self;
}

// SAFETY: Box::into_raw/from_raw round-trip the allocation and its ownership.
unsafe impl<T> OneWord for Box<T> {
    fn into_word(self) -> NonNull<()> {
        // SAFETY: Box::into_raw never returns null.
        unsafe { NonNull::new_unchecked(Box::into_raw(self).cast()) }
    }

    unsafe fn from_word(word: NonNull<()>) -> Self {
        // SAFETY: per the contract, `word` is an unreturned Box::into_raw of a T.
        unsafe { Box::from_raw(word.as_ptr().cast()) }
    }
}

/// Keys of the overflow map are object addresses: distinct, 16-byte aligned, not
/// chosen by an adversary; a multiply is hash enough (SipHash cost as much as the rest
/// of an attach).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        // hashbrown takes the top 7 bits as its tag and the low bits as the bucket
        self.0 ^ (self.0 >> 29)
    }
}

/// Where entries go when their group is full (values as words).
type OverflowMap = HashMap<usize, NonNull<()>, BuildHasherDefault<AddressHasher>>;

/// A group's keys (0: free), one cache line.
#[repr(align(64))]
struct Keys([AtomicUsize; SLOTS]);

struct Group {
    keys: Keys,
    values: [AtomicPtr<()>; SLOTS],
}

impl Group {
    fn new() -> Group {
        Group {
            keys: Keys(std::array::from_fn(|_| AtomicUsize::new(0))),
            values: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }
}

/// Values attached to foreign objects that have no field to hold them, keyed by the
/// object's address: [`PinTable::attach`] when the object is made,
/// [`PinTable::detach`] from its destructor. See the module doc for the contract.
pub struct PinTable<P: OneWord> {
    groups: Box<[Group]>,
    /// `groups.len() - 1` (a power of two minus one).
    group_mask: usize,
    overflow: Mutex<OverflowMap>,
    /// Entries in `overflow`; changed under its mutex.
    overflowed: AtomicUsize,
    _values: PhantomData<P>,
}

// SAFETY: the table owns the values behind its words (a `P` each) and hands each one
// to exactly one thread, so it is `Send`/`Sync` when `P` is `Send`; the raw words are
// only ever turned back into a `P` by the one detach that finds them.
unsafe impl<P: OneWord + Send> Send for PinTable<P> {}
// SAFETY: as above; every shared field is an atomic or behind the mutex.
unsafe impl<P: OneWord + Send> Sync for PinTable<P> {}

impl<P: OneWord> Default for PinTable<P> {
    fn default() -> Self {
        PinTable::new()
    }
}

impl<P: OneWord> PinTable<P> {
    pub fn new() -> PinTable<P> {
        PinTable::with_groups(GROUPS)
    }

    /// A table of `groups` groups (rounded up to a power of two): small ones let tests
    /// and models reach the overflow map.
    pub fn with_groups(groups: usize) -> PinTable<P> {
        let groups = groups.max(1).next_power_of_two();
        PinTable {
            groups: (0..groups).map(|_| Group::new()).collect(),
            group_mask: groups - 1,
            overflow: Mutex::new(HashMap::default()),
            overflowed: AtomicUsize::new(0),
            _values: PhantomData,
        }
    }

    fn group(&self, owner: usize) -> &Group {
        // Fibonacci hashing: the top bits of the product mix every bit of the address
        // (objects of one size class sit at a fixed stride).
        let h = (owner as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.groups[h as usize & self.group_mask]
    }

    fn lock_overflow(&self) -> impl std::ops::DerefMut<Target = OverflowMap> + '_ {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches `value` to the object at `owner` (not 0). Attaching to an object that
    /// already holds a value is the caller's bug: it is caught (and `value` handed
    /// back) when the scan meets the earlier entry before a free slot, or finds it in
    /// the overflow map; debug builds check the whole group.
    pub fn attach(&self, owner: usize, value: P) -> Result<(), P> {
        debug_assert_ne!(owner, 0, "an object address is never 0");
        let group = self.group(owner);
        if cfg!(debug_assertions) && group.keys.0.iter().any(|k| k.load(Ordering::Relaxed) == owner) {
            return Err(value);
        }
        for (key, slot) in group.keys.0.iter().zip(&group.values) {
            let mut seen = key.load(Ordering::Relaxed);
            // Retry this slot while it stays free (another attach may take it first).
            while seen == 0 {
                match key.compare_exchange_weak(0, owner, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => {
                        tsan_sync::releasing(key);
                        slot.store(value.into_word().as_ptr(), Ordering::Release);
                        return Ok(());
                    }
                    Err(now) => seen = now,
                }
            }
            if seen == owner {
                return Err(value);
            }
        }
        let mut overflow = self.lock_overflow();
        if overflow.contains_key(&owner) {
            return Err(value);
        }
        overflow.insert(owner, value.into_word());
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes and returns what is attached to `owner`, if anything.
    pub fn detach(&self, owner: usize) -> Option<P> {
        let group = self.group(owner);
        for (key, slot) in group.keys.0.iter().zip(&group.values) {
            if key.load(Ordering::Acquire) == owner {
                tsan_sync::acquired(key);
                let word = slot.load(Ordering::Acquire);
                slot.store(ptr::null_mut(), Ordering::Relaxed);
                // Frees the slot for the next attach, after the value was taken.
                key.store(0, Ordering::Release);
                let word = NonNull::new(word).expect("an attached slot holds a value");
                // SAFETY: the word was stored by the attach of this key, whose entry
                // only this detach (the object's one destruction) takes back.
                return Some(unsafe { P::from_word(word) });
            }
        }
        if self.overflowed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let word = {
            let mut overflow = self.lock_overflow();
            let word = overflow.remove(&owner)?;
            self.overflowed.fetch_sub(1, Ordering::Relaxed);
            word
        };
        // SAFETY: as above: the overflow entry of this key, removed once.
        Some(unsafe { P::from_word(word) })
    }

    /// How many objects hold a value now. Scans the whole table: for tests and reports,
    /// not for hot paths.
    pub fn len(&self) -> usize {
        let in_groups: usize =
            self.groups.iter().map(|g| g.keys.0.iter().filter(|k| k.load(Ordering::Acquire) != 0).count()).sum();
        in_groups + self.overflowed.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<P: OneWord> Drop for PinTable<P> {
    fn drop(&mut self) {
        // Values still attached when the table goes (never, for the edge's static
        // table) are dropped with it.
        for group in self.groups.iter() {
            for (key, value) in group.keys.0.iter().zip(&group.values) {
                if key.load(Ordering::Relaxed) != 0 {
                    if let Some(word) = NonNull::new(value.load(Ordering::Relaxed)) {
                        // SAFETY: an attached, never detached value: ours to drop.
                        drop(unsafe { P::from_word(word) });
                    }
                }
            }
        }
        // taken out first: values are dropped (a pin's drop can close a library) after
        // the overflow map's lock is released, as everywhere else
        let overflowed = std::mem::take(&mut *self.lock_overflow());
        for (_, word) in overflowed {
            // SAFETY: as above.
            drop(unsafe { P::from_word(word) });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn attach_detach() {
        let t = PinTable::new();
        assert!(t.is_empty());
        t.attach(0x1000, Box::new("a")).unwrap();
        assert_eq!(t.attach(0x1000, Box::new("b")).map_err(|b| *b), Err("b"));
        t.attach(0x2010, Box::new("c")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.detach(0x1000).map(|b| *b), Some("a"));
        assert_eq!(t.detach(0x1000), None);
        assert_eq!(t.detach(0x3000), None, "never attached");
        assert_eq!(t.detach(0x2010).map(|b| *b), Some("c"));
        assert!(t.is_empty());
    }

    #[test]
    fn full_groups_overflow_and_come_back() {
        // One group: the first SLOTS entries take its slots, the rest overflow.
        let t = PinTable::with_groups(1);
        let owners: Vec<usize> = (1..=SLOTS * 3).map(|i| i << 6).collect();
        for &o in &owners {
            t.attach(o, Box::new(o)).unwrap();
        }
        assert_eq!(t.overflowed.load(Ordering::Relaxed), SLOTS * 2);
        assert_eq!(t.attach(owners[SLOTS + 1], Box::new(0)).map_err(|b| *b), Err(0), "a duplicate in the overflow map");
        assert_eq!(t.len(), owners.len());
        // Free a slot, and the next attach takes it instead of the overflow map.
        assert_eq!(t.detach(owners[0]).map(|b| *b), Some(owners[0]));
        t.attach(0x7_0000, Box::new(7)).unwrap();
        assert_eq!(t.overflowed.load(Ordering::Relaxed), SLOTS * 2);
        for &o in owners.iter().skip(1) {
            assert_eq!(t.detach(o).map(|b| *b), Some(o));
        }
        assert_eq!(t.detach(0x7_0000).map(|b| *b), Some(7));
        assert!(t.is_empty());
    }

    #[test]
    fn dropping_the_table_drops_what_is_attached() {
        let alive = std::sync::Arc::new(());
        let t = PinTable::with_groups(1);
        for i in 1..=SLOTS + 2 {
            t.attach(i << 6, Box::new(alive.clone())).unwrap();
        }
        assert_eq!(std::sync::Arc::strong_count(&alive), SLOTS + 3);
        drop(t);
        assert_eq!(std::sync::Arc::strong_count(&alive), 1);
    }

    #[test]
    fn threads_attach_and_detach_their_own() {
        // A small table, so that threads share groups and reach the overflow map.
        let t = PinTable::with_groups(4);
        std::thread::scope(|s| {
            for k in 0..4usize {
                let t = &t;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..20_000usize {
                        let owner = (i * 4 + k + 1) << 6;
                        t.attach(owner, Box::new(i)).unwrap();
                        held.push((owner, i));
                        if held.len() == 40 || i % 7 == 0 {
                            for (owner, i) in held.drain(..) {
                                assert_eq!(t.detach(owner).map(|b| *b), Some(i));
                            }
                        }
                    }
                    for (owner, i) in held {
                        assert_eq!(t.detach(owner).map(|b| *b), Some(i));
                    }
                });
            }
        });
        assert!(t.is_empty());
    }
}
