//! Model checks of the registry protocol and the pin table with loom (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p lib-registry --release --test loom`, or
//! `cargo xtask loom`).
//!
//! Under `--cfg loom` the crate's slot is a loom model of `ArcSwapOption`'s contract
//! (see the crate doc); everything built on it -- the close winner, the deferred close
//! by the last reference, the generation -- runs as in the real build. The fake loader
//! panics on a double close and on a symbol lookup after close, so every model also
//! checks those two in each interleaving.
#![cfg(loom)]

use lib_registry::fake::FakeLoader;
use lib_registry::{Close, Library};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::ffi::CString;

fn name(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn open(fake: &FakeLoader) -> Arc<Library<FakeLoader>> {
    Arc::new(Library::new(fake.clone(), fake.open(), true, c"libmodel.so"))
}

/// A reader pins and looks up a symbol (both the counted pin and the guard form)
/// while another thread closes: the lookup either runs on the open handle or learns
/// "closed"; the handle is closed exactly once, whoever ends up doing it.
#[test]
fn pin_races_with_close() {
    loom::model(|| {
        let fake = FakeLoader::new();
        let lib = open(&fake);
        let reader = {
            let lib = lib.clone();
            thread::spawn(move || {
                let a = lib.pin().map(|p| p.symbol(&name("f")).unwrap());
                let b = lib.with_pinned(|h| h.symbol(&name("g")).unwrap());
                (a.is_some(), b.is_some())
            })
        };
        let closing = lib.close().expect("the only closer wins");
        let outcome = closing.finish();
        let (pinned_f, pinned_g) = reader.join().unwrap();
        // A later pin cannot succeed after an earlier one failed.
        assert!(pinned_f || !pinned_g);
        assert!(matches!(outcome, Close::Closed | Close::Deferred));
        assert_eq!(fake.closes(), 1);
        assert!(lib.pin().is_none());
    });
}

/// Two closers: exactly one wins, exactly one OS close.
#[test]
fn two_closers() {
    loom::model(|| {
        let fake = FakeLoader::new();
        let lib = open(&fake);
        let winners = Arc::new(AtomicUsize::new(0));
        let closers: Vec<_> = (0..2)
            .map(|_| {
                let (lib, winners) = (lib.clone(), winners.clone());
                thread::spawn(move || {
                    if let Some(closing) = lib.close() {
                        winners.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(closing.finish(), Close::Closed);
                    }
                })
            })
            .collect();
        for c in closers {
            c.join().unwrap();
        }
        assert_eq!(winners.load(Ordering::Relaxed), 1);
        assert_eq!(fake.closes(), 1);
    });
}

/// A pin outlives the close: the close is deferred, the pinned handle still resolves
/// symbols, and the thread that drops the last pin performs the OS close -- after
/// its last lookup.
#[test]
fn last_unpin_closes() {
    loom::model(|| {
        let fake = FakeLoader::new();
        let lib = open(&fake);
        let pin = lib.pin().unwrap();
        let holder = {
            let fake = fake.clone();
            thread::spawn(move || {
                pin.symbol(&name("f")).unwrap();
                pin.symbol(&name("g")).unwrap();
                let closes_before = fake.closes();
                drop(pin);
                (closes_before, fake.closes())
            })
        };
        let outcome = lib.close().unwrap().finish();
        let (before, after) = holder.join().unwrap();
        assert_eq!(before, 0, "the handle was closed while a pin was alive");
        assert!(after <= 1);
        // Deferred: the winner saw the pin alive; the last reference dropped -- the
        // holder's pin, or the winner's own when the pin went first in the meantime --
        // did the close. Closed: the pin was gone before the winner finished.
        assert!(matches!(outcome, Close::Deferred | Close::Closed), "{outcome:?}");
        assert_eq!(fake.closes(), 1);
    });
}

/// A builder pins, builds, and caches its result only if the generation it pinned at
/// is still current, under the owner's lock; the closer closes under that lock and
/// forgets the cache after unlocking. Whatever the interleaving, the cache is empty
/// once the close has returned, and a builder that cached did so from an open handle.
#[test]
fn close_races_with_builder_generation_check() {
    loom::model(|| {
        let fake = FakeLoader::new();
        let lib = open(&fake);
        // The owner's lock (a PyMutex at the edge) and its cache (the Lib's dict).
        let cache: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
        let owner_lock = Arc::new(Mutex::new(()));
        let builder = {
            let (lib, cache, owner_lock) = (lib.clone(), cache.clone(), owner_lock.clone());
            thread::spawn(move || {
                let Some(pin) = lib.pin() else { return false };
                let built = pin.symbol(&name("f")).unwrap() as usize;
                let _held = owner_lock.lock().unwrap();
                if !lib.still_current(&pin) {
                    return false; // "library has been closed"
                }
                cache.lock().unwrap().push(built);
                true
            })
        };
        {
            let closing = {
                let _held = owner_lock.lock().unwrap();
                lib.close().unwrap()
            };
            cache.lock().unwrap().clear();
            let _ = closing.finish();
        }
        let cached = builder.join().unwrap();
        assert!(cache.lock().unwrap().is_empty(), "a builder re-inserted after the close (cached: {cached})");
        assert_eq!(fake.closes(), 1);
    });
}

// ---------------------------------------------------------------------------------------
// The pin table (a one-group table of two slots under loom: a third entry overflows).

use lib_registry::{OneWord, PinTable};
use loom::cell::UnsafeCell;
use std::ptr::NonNull;

/// A table value whose contents are written by the thread that attaches it and read
/// by the one that detaches it: loom reports the access pair as a race unless the
/// table orders them, and the tag tells whose value a detach got back.
struct Tagged(Box<UnsafeCell<usize>>);

impl Tagged {
    fn new(tag: usize) -> Tagged {
        Tagged(Box::new(UnsafeCell::new(tag)))
    }
    fn tag(&self) -> usize {
        self.0.with(|p| unsafe { *p })
    }
}

impl std::fmt::Debug for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagged")
    }
}

// SAFETY: the Box's round trip.
unsafe impl OneWord for Tagged {
    fn into_word(self) -> NonNull<()> {
        NonNull::new(Box::into_raw(self.0).cast()).unwrap()
    }
    unsafe fn from_word(word: NonNull<()>) -> Tagged {
        Tagged(unsafe { Box::from_raw(word.as_ptr().cast()) })
    }
}

/// A slot freed by one thread's detach is claimed by another thread's attach: the
/// detach gets back its own value (taken before the slot was freed), never the new
/// one, and the new owner's detach gets its own. Two further attaches fill the group
/// and overflow, and every owner still detaches exactly its own value.
#[test]
fn pin_table_slot_reuse_and_overflow() {
    loom::model(|| {
        let table = Arc::new(PinTable::<Tagged>::with_groups(1));
        table.attach(0x100, Tagged::new(1)).unwrap();
        table.attach(0x200, Tagged::new(2)).unwrap();
        let detacher = {
            let table = table.clone();
            thread::spawn(move || table.detach(0x100).map(|v| v.tag()))
        };
        let attacher = {
            let table = table.clone();
            thread::spawn(move || {
                // Either the slot 0x100 frees, or the overflow map.
                table.attach(0x300, Tagged::new(3)).unwrap();
                table.detach(0x300).map(|v| v.tag())
            })
        };
        assert_eq!(detacher.join().unwrap(), Some(1));
        assert_eq!(attacher.join().unwrap(), Some(3));
        assert_eq!(table.detach(0x100).map(|v| v.tag()), None, "detached twice");
        assert_eq!(table.detach(0x200).map(|v| v.tag()), Some(2));
        assert!(table.is_empty());
    });
}

/// An object attached in one thread and destroyed in another (published through a
/// release/acquire flag, as the edge's objects are through Python): the destroying
/// thread gets the value back with its contents, while a third thread attaches and
/// detaches its own object in the same group.
#[test]
fn pin_table_attach_here_detach_there() {
    loom::model(|| {
        let table = Arc::new(PinTable::<Tagged>::with_groups(1));
        let published = Arc::new(AtomicUsize::new(0));
        let maker = {
            let (table, published) = (table.clone(), published.clone());
            thread::spawn(move || {
                table.attach(0x100, Tagged::new(7)).unwrap();
                published.store(0x100, Ordering::Release);
            })
        };
        let other = {
            let table = table.clone();
            thread::spawn(move || {
                table.attach(0x200, Tagged::new(8)).unwrap();
                table.detach(0x200).map(|v| v.tag())
            })
        };
        let destroyer = {
            let (table, published) = (table.clone(), published.clone());
            thread::spawn(move || loop {
                match published.load(Ordering::Acquire) {
                    0 => thread::yield_now(),
                    owner => break table.detach(owner).map(|v| v.tag()),
                }
            })
        };
        maker.join().unwrap();
        assert_eq!(other.join().unwrap(), Some(8));
        assert_eq!(destroyer.join().unwrap(), Some(7));
        assert!(table.is_empty());
    });
}
