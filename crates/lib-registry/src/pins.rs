//! [`PinTable`]: pins owned by foreign objects, keyed by the object's address.

use crate::{AtomicUsize, Mutex, Ordering};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SHARDS: usize = 16;

/// Keys are object addresses: distinct, 16-byte aligned, not chosen by an adversary.
/// A multiplicative hash of the address is enough (SipHash cost as much as the rest
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

type AddressMap<P> = HashMap<usize, P, BuildHasherDefault<AddressHasher>>;

/// Values (pins) attached to foreign objects that have no field to hold them, keyed
/// by the object's address: [`PinTable::attach`] when the object is made,
/// [`PinTable::detach`] from its destructor (which must run before the address can be
/// reused). Sharded mutexes, each held for one hash-map operation; a detached value is
/// returned to the caller, which drops it after the shard is unlocked.
pub struct PinTable<P> {
    shards: [Mutex<AddressMap<P>>; SHARDS],
    attached: AtomicUsize,
}

impl<P> Default for PinTable<P> {
    fn default() -> Self {
        PinTable::new()
    }
}

impl<P> PinTable<P> {
    pub fn new() -> PinTable<P> {
        PinTable { shards: std::array::from_fn(|_| Mutex::new(AddressMap::default())), attached: AtomicUsize::new(0) }
    }

    fn shard(&self, owner: usize) -> &Mutex<AddressMap<P>> {
        // Objects are at least 16-byte aligned; mix the bits above that.
        let h = (owner >> 4) ^ (owner >> 12);
        &self.shards[h % SHARDS]
    }

    /// Attaches `pin` to the object at `owner`. An object already holding one keeps
    /// it, and `pin` is handed back.
    pub fn attach(&self, owner: usize, pin: P) -> Result<(), P> {
        let mut shard = self.shard(owner).lock().unwrap_or_else(|e| e.into_inner());
        if shard.contains_key(&owner) {
            return Err(pin);
        }
        shard.insert(owner, pin);
        self.attached.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes what is attached to `owner`, if anything.
    pub fn detach(&self, owner: usize) -> Option<P> {
        let mut shard = self.shard(owner).lock().unwrap_or_else(|e| e.into_inner());
        let pin = shard.remove(&owner)?;
        self.attached.fetch_sub(1, Ordering::Relaxed);
        Some(pin)
    }

    /// False only if nothing can be attached to an object whose attach happened
    /// before this call: a destructor may skip [`PinTable::detach`] then. (The count
    /// includes the object's own attach, which happened before it was shared, and
    /// only its own detach removes it.)
    pub fn maybe_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed) != 0
    }

    /// How many objects hold a pin now.
    pub fn len(&self) -> usize {
        self.attached.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn attach_detach() {
        let t = PinTable::new();
        assert!(!t.maybe_attached());
        t.attach(0x1000, "a").unwrap();
        assert_eq!(t.attach(0x1000, "b"), Err("b"));
        t.attach(0x2010, "c").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.detach(0x1000), Some("a"));
        assert_eq!(t.detach(0x1000), None);
        assert_eq!(t.detach(0x2010), Some("c"));
        assert!(!t.maybe_attached());
    }

    #[test]
    fn threads_attach_and_detach_their_own() {
        let t = PinTable::new();
        std::thread::scope(|s| {
            for k in 0..4usize {
                let t = &t;
                s.spawn(move || {
                    for i in 0..10_000usize {
                        let owner = (i * 4 + k) << 4;
                        t.attach(owner, i).unwrap();
                        assert_eq!(t.detach(owner), Some(i));
                    }
                });
            }
        });
        assert!(t.is_empty());
    }
}
