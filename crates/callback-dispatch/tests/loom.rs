//! Model checks of the closure pool and the binding slot with loom (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p callback-dispatch --release --test loom`, or
//! `cargo xtask loom`).
//!
//! The pool runs unchanged over loom's mutex. The binding cell is the loom model of
//! `ArcSwapOption`'s load/swap contract (see the crate doc).
#![cfg(loom)]

use callback_dispatch::{BindingSlot, ClosurePool, FreeError, PageSource, PoolConfig};
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::ptr::NonNull;

/// Heap pages, leaked (the pool never gives memory back either).
struct LeakedPages;

impl PageSource for LeakedPages {
    fn map(&self, len: usize) -> Option<NonNull<u8>> {
        let mem: &'static mut [u128] = Box::leak(vec![0u128; len / 16].into_boxed_slice());
        NonNull::new(mem.as_mut_ptr().cast())
    }
}

/// Two blocks per page, so that the models also cross a growth.
fn pool(quarantine: usize) -> Arc<ClosurePool<LeakedPages>> {
    Arc::new(ClosurePool::new(LeakedPages, PoolConfig { block_size: 64, page_size: 128, quarantine }))
}

fn addr(b: NonNull<u8>) -> usize {
    b.as_ptr() as usize
}

/// Two threads allocate while a third frees a block it owns: nobody gets a block
/// that another owner holds, and the freed block is not handed out while it is
/// quarantined (quarantine 1: one freed block waits).
#[test]
fn no_block_is_handed_out_twice() {
    loom::model(|| {
        let p = pool(1);
        let kept = p.alloc().unwrap();
        let freed = p.alloc().unwrap();
        let allocators: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                thread::spawn(move || addr(p.alloc().unwrap()))
            })
            .collect();
        let freer = {
            let p = p.clone();
            let freed = addr(freed);
            thread::spawn(move || p.free(NonNull::new(freed as *mut u8).unwrap(), |_| {}).unwrap())
        };
        let got: Vec<usize> = allocators.into_iter().map(|t| t.join().unwrap()).collect();
        freer.join().unwrap();
        assert_ne!(got[0], got[1]);
        for g in &got {
            assert_ne!(*g, addr(kept), "a live block was handed out again");
            assert_ne!(*g, addr(freed), "a block left quarantine before its time");
        }
        let stats = p.stats();
        assert_eq!((stats.live, stats.quarantined), (3, 1));
    });
}

/// Quarantine order under concurrency: with quarantine 1, after two frees (in
/// either order between two threads) the next allocation is the block freed first,
/// whichever that was.
#[test]
fn quarantined_blocks_come_back_oldest_first() {
    loom::model(|| {
        let p = pool(1);
        let blocks = [addr(p.alloc().unwrap()), addr(p.alloc().unwrap())];
        let order = Arc::new(loom::sync::Mutex::new(Vec::new()));
        let freers: Vec<_> = blocks
            .iter()
            .map(|&b| {
                let (p, order) = (p.clone(), order.clone());
                thread::spawn(move || {
                    p.free(NonNull::new(b as *mut u8).unwrap(), |_| order.lock().unwrap().push(b)).unwrap()
                })
            })
            .collect();
        for f in freers {
            f.join().unwrap();
        }
        let first_freed = order.lock().unwrap()[0];
        assert_eq!(addr(p.alloc().unwrap()), first_freed);
    });
}

/// Two threads free the same block: one wins, the other learns "double free", and
/// the kill callback ran once.
#[test]
fn a_racing_double_free_is_caught() {
    loom::model(|| {
        let p = pool(4);
        let b = addr(p.alloc().unwrap());
        let kills = Arc::new(AtomicUsize::new(0));
        let freers: Vec<_> = (0..2)
            .map(|_| {
                let (p, kills) = (p.clone(), kills.clone());
                thread::spawn(move || {
                    p.free(NonNull::new(b as *mut u8).unwrap(), |_| {
                        kills.fetch_add(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        let mut results: Vec<_> = freers.into_iter().map(|t| t.join().unwrap()).collect();
        results.sort_by_key(|r| r.is_err());
        assert_eq!(results, vec![Ok(()), Err(FreeError::DoubleFree)]);
        assert_eq!(kills.load(Ordering::SeqCst), 1);
    });
}

/// A binding that records its release and fails the model if it is read after it.
struct Binding {
    id: u32,
    released: Arc<AtomicUsize>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        assert_eq!(self.released.fetch_add(1, Ordering::SeqCst), 0, "binding {} released twice", self.id);
    }
}

/// Two threads make the first `install` on one field: both get the same slot.
#[test]
fn two_installers_agree_on_one_slot() {
    loom::model(|| {
        let field: &'static AtomicPtr<std::ffi::c_void> = Box::leak(Box::new(AtomicPtr::new(std::ptr::null_mut())));
        let installers: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    // SAFETY: this field is only written by `install::<Binding>`.
                    let slot = unsafe { BindingSlot::<Binding>::install(field) };
                    slot as *const _ as usize
                })
            })
            .collect();
        let slots: Vec<usize> = installers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(slots[0], slots[1]);
        assert_eq!(field.load(Ordering::SeqCst) as usize, slots[0]);
    });
}

/// A reader racing a rebind sees the old or the new binding, never a released one;
/// each binding is released exactly once, the old one by whoever held it last.
#[test]
fn a_rebind_racing_a_lookup_never_frees_under_the_reader() {
    loom::model(|| {
        let released = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let slot = Arc::new(BindingSlot::new());
        drop(slot.bind(Binding { id: 1, released: released[0].clone() }));
        let reader = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.find(|b| {
                    assert_eq!(b.released.load(Ordering::SeqCst), 0, "read binding {} after its release", b.id);
                    Some(b.id)
                })
            })
        };
        let retired = slot.bind(Binding { id: 2, released: released[1].clone() });
        drop(retired);
        let seen = reader.join().unwrap();
        assert!(matches!(seen, Some(1) | Some(2)));
        assert_eq!(released[0].load(Ordering::SeqCst), 1, "the old binding was not released");
        assert_eq!(released[1].load(Ordering::SeqCst), 0);
        drop(slot);
        assert_eq!(released[1].load(Ordering::SeqCst), 1);
    });
}
