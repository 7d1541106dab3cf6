//! The slot that holds a library's open handle: `arc_swap::ArcSwapOption` in builds,
//! a loom-checkable model of the same contract under `--cfg loom` (see the crate doc).

use crate::Arc;

#[cfg(not(loom))]
pub(crate) struct Slot<T>(arc_swap::ArcSwapOption<T>);

#[cfg(not(loom))]
impl<T> Slot<T> {
    pub(crate) fn new(value: Arc<T>) -> Slot<T> {
        Slot(arc_swap::ArcSwapOption::from(Some(value)))
    }

    /// A strong reference to the current value (bumps its reference count).
    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        self.0.load_full()
    }

    /// Runs `f` on the current value while a guard keeps it alive. The guard normally
    /// lives in this thread's debt slots and bumps no shared counter; a concurrent
    /// `take` converts it into a counted reference, so the value outlives `f` even if
    /// the slot is emptied meanwhile.
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let guard = self.0.load();
        f(guard.as_deref())
    }

    /// Empties the slot; exactly one caller gets the value.
    pub(crate) fn take(&self) -> Option<Arc<T>> {
        self.0.swap(None)
    }
}

#[cfg(loom)]
pub(crate) struct Slot<T>(crate::Mutex<Option<Arc<T>>>);

#[cfg(loom)]
impl<T> Slot<T> {
    pub(crate) fn new(value: Arc<T>) -> Slot<T> {
        Slot(crate::Mutex::new(Some(value)))
    }

    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        self.0.lock().unwrap().clone()
    }

    /// The model of a guard is a counted reference held for the length of `f`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let guard = self.load_full();
        f(guard.as_deref())
    }

    pub(crate) fn take(&self) -> Option<Arc<T>> {
        self.0.lock().unwrap().take()
    }
}
