//! The binding of one `extern "Python"` function: an atomically swapped immutable value.

use crate::{Arc, AtomicPtr, Ordering};
use std::ffi::c_void;

/// One binding at a time, read lock-free, replaced by one swap. See the crate doc.
pub struct BindingSlot<T> {
    current: Cell<T>,
}

impl<T> BindingSlot<T> {
    pub fn new() -> BindingSlot<T> {
        BindingSlot { current: Cell::empty() }
    }

    /// The slot behind `field`, a pointer field that is null until the first binding
    /// (at the edge: `struct _cffi_externpy_s.reserved1`). The first caller allocates a
    /// slot and publishes it with a compare-and-swap from null; a caller that loses
    /// frees its own and uses the winner's. The slot is never freed.
    ///
    /// # Safety
    /// `field` is null or holds a pointer that an earlier `install::<T>` on the same
    /// field stored, and no other code writes it.
    pub unsafe fn install(field: &AtomicPtr<c_void>) -> &'static BindingSlot<T> {
        // SAFETY: the caller's contract: a non-null value came from `publish`.
        if let Some(slot) = unsafe { Self::published(field) } {
            return slot;
        }
        let mine = Box::into_raw(Box::new(BindingSlot::new()));
        match field.compare_exchange(std::ptr::null_mut(), mine.cast(), Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: `mine` is leaked on purpose: it now lives as long as the field.
            Ok(_) => unsafe { &*mine },
            Err(theirs) => {
                // SAFETY: `mine` was never published; we are its only owner.
                drop(unsafe { Box::from_raw(mine) });
                // SAFETY: `theirs` came from a winning `install::<T>` (caller's contract).
                unsafe { &*theirs.cast::<BindingSlot<T>>() }
            }
        }
    }

    /// The slot behind `field` if one was installed.
    ///
    /// # Safety
    /// As for [`BindingSlot::install`].
    pub unsafe fn published(field: &AtomicPtr<c_void>) -> Option<&'static BindingSlot<T>> {
        let ptr = field.load(Ordering::Acquire).cast::<BindingSlot<T>>();
        // SAFETY: non-null only as stored by `install`, which leaked a `BindingSlot<T>`.
        unsafe { ptr.as_ref() }
    }

    /// Runs `f` on the current binding, kept alive for the length of `f` even if it is
    /// replaced meanwhile; `None` if nothing is bound.
    pub fn find<R>(&self, f: impl FnOnce(&T) -> Option<R>) -> Option<R> {
        self.current.with(|value| value.and_then(f))
    }

    /// Makes `value` the binding; returns the previous one, for the caller to drop when
    /// it may (readers that still hold it keep it alive until they are done).
    pub fn bind(&self, value: T) -> Option<Arc<T>> {
        self.current.swap(Some(Arc::new(value)))
    }
}

impl<T> Default for BindingSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `arc_swap::ArcSwapOption` in builds; a loom mutex over the same contract under loom.
#[cfg(not(loom))]
struct Cell<T>(arc_swap::ArcSwapOption<T>);

#[cfg(not(loom))]
impl<T> Cell<T> {
    fn empty() -> Cell<T> {
        Cell(arc_swap::ArcSwapOption::empty())
    }

    /// The guard normally lives in this thread's debt slots and bumps no shared
    /// counter; a concurrent swap turns it into a counted reference first.
    fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let guard = self.0.load();
        f(guard.as_deref())
    }

    fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        self.0.swap(value)
    }
}

#[cfg(loom)]
struct Cell<T>(crate::Mutex<Option<Arc<T>>>);

#[cfg(loom)]
impl<T> Cell<T> {
    fn empty() -> Cell<T> {
        Cell(crate::Mutex::new(None))
    }

    /// The model of a guard: a counted reference held for the length of `f`.
    fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let held = self.0.lock().unwrap().clone();
        f(held.as_deref())
    }

    fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        std::mem::replace(&mut *self.0.lock().unwrap(), value)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A binding that counts its releases.
    struct Counted<'a> {
        id: u32,
        released: &'a AtomicUsize,
    }

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn install_once_then_find_what_was_bound() {
        static RELEASED: AtomicUsize = AtomicUsize::new(0);
        let released = &RELEASED;
        let field = AtomicPtr::new(std::ptr::null_mut());
        // SAFETY: `field` is only ever written by `install::<Counted>`.
        let slot = unsafe { BindingSlot::<Counted>::install(&field) };
        // SAFETY: as above.
        let again = unsafe { BindingSlot::<Counted>::install(&field) };
        assert!(std::ptr::eq(slot, again));
        assert_eq!(field.load(Ordering::SeqCst), slot as *const _ as *mut c_void);
        assert_eq!(slot.find(|b| Some(b.id)), None);
        assert!(slot.bind(Counted { id: 1, released }).is_none());
        assert_eq!(slot.find(|b| Some(b.id)), Some(1));
        assert_eq!(slot.find(|b| (b.id == 2).then_some(())), None, "a key that does not match");
    }

    #[test]
    fn a_rebind_releases_the_old_binding_only_after_its_last_reader() {
        let released = AtomicUsize::new(0);
        let slot = BindingSlot::new();
        drop(slot.bind(Counted { id: 1, released: &released }));
        slot.find(|old| {
            let retired = slot.bind(Counted { id: 2, released: &released });
            drop(retired);
            assert_eq!(released.load(Ordering::SeqCst), 0, "still read here");
            assert_eq!(old.id, 1);
            Some(())
        });
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert_eq!(slot.find(|b| Some(b.id)), Some(2));
    }
}
