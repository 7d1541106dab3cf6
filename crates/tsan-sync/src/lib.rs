//! # tsan-sync: locks that ThreadSanitizer can see, in an uninstrumented staticlib
//!
//! The kit's crates are compiled by stable Rust, which cannot instrument code for
//! ThreadSanitizer. Linked into an instrumented `_cffi_backend` (`cargo xtask tsan`),
//! their locks are invisible to TSan, while the memory accesses around them are not:
//! CPython calls made under a lock (`Py_IncRef`, `PyWeakref_NewRef`) and libc calls TSan
//! intercepts (`malloc`, `memcmp`, `mmap`). Two threads ordered by a kit lock then look
//! unordered, and TSan reports a race that cannot happen.
//!
//! This crate gives the kit's crates [`Mutex`] and [`RwLock`] with std's API (ctype-intern's
//! shards, lib-registry's pin table, callback-dispatch's closure pool). Built with
//! `--cfg cffi_ft_tsan` (the kit's TSan cells set it), each one tells TSan what it does:
//! after the lock is taken, `__tsan_acquire(lock)`; before it is released,
//! `__tsan_release(lock)`, the address of the lock being TSan's synchronisation object.
//! The runtime that defines those two functions is the TSan interpreter's own. With
//! `CFFI_FT_TSAN_SEAMS=off` in the environment the annotations do nothing, like the C
//! shim's (`cargo xtask tsan --seams off` shows what TSan reports without them). Built
//! without the cfg, the types *are* std's (`pub use`): no code, no cost.
//!
//! ## Concurrency contract
//! Exactly std's: the annotations only describe the order the lock already imposes (an
//! unlock happens before the next lock), so they cannot hide a race that the lock does
//! not prevent. A reader of an [`RwLock`] also releases on unlock, which orders readers
//! among themselves for TSan; readers do not write, so no race between them is hidden.

#[cfg(not(cffi_ft_tsan))]
pub use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// For a lock the kit implements itself (the realization lock's `PyMutex` fast path):
/// call after taking it. A no-op without `--cfg cffi_ft_tsan`.
#[inline]
pub fn acquired<T: ?Sized>(_lock: &T) {
    #[cfg(cffi_ft_tsan)]
    annotated::acquire(_lock);
}

/// Call before releasing a lock the kit implements itself. A no-op without
/// `--cfg cffi_ft_tsan`.
#[inline]
pub fn releasing<T: ?Sized>(_lock: &T) {
    #[cfg(cffi_ft_tsan)]
    annotated::release(_lock);
}

#[cfg(cffi_ft_tsan)]
pub use annotated::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(cffi_ft_tsan)]
mod annotated {
    use std::ffi::c_void;
    use std::ops::{Deref, DerefMut};
    use std::sync::{LockResult, PoisonError};

    extern "C" {
        fn __tsan_acquire(addr: *mut c_void);
        fn __tsan_release(addr: *mut c_void);
    }

    /// False with CFFI_FT_TSAN_SEAMS=off (read once).
    fn enabled() -> bool {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENABLED.get_or_init(|| std::env::var_os("CFFI_FT_TSAN_SEAMS").is_none_or(|v| v != "off"))
    }

    pub(crate) fn acquire<T: ?Sized>(lock: &T) {
        if enabled() {
            // SAFETY: the TSan runtime only records the address as a synchronisation
            // object; it never dereferences it.
            unsafe { __tsan_acquire(lock as *const T as *const c_void as *mut c_void) }
        }
    }

    pub(crate) fn release<T: ?Sized>(lock: &T) {
        if enabled() {
            // SAFETY: as in `acquire`.
            unsafe { __tsan_release(lock as *const T as *const c_void as *mut c_void) }
        }
    }

    /// Maps std's result for a guard into ours, annotating the acquisition either way.
    fn annotate<G, H>(lock: &impl Sized, result: LockResult<G>, wrap: impl FnOnce(G) -> H) -> LockResult<H> {
        acquire(lock);
        match result {
            Ok(g) => Ok(wrap(g)),
            Err(poisoned) => Err(PoisonError::new(wrap(poisoned.into_inner()))),
        }
    }

    pub struct Mutex<T>(std::sync::Mutex<T>);

    pub struct MutexGuard<'a, T> {
        lock: &'a std::sync::Mutex<T>,
        guard: std::sync::MutexGuard<'a, T>,
    }

    impl<T> Mutex<T> {
        pub const fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
            let lock = &self.0;
            annotate(lock, lock.lock(), |guard| MutexGuard { lock, guard })
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            // runs before the field `guard` unlocks
            release(self.lock);
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }

    pub struct RwLock<T>(std::sync::RwLock<T>);

    pub struct RwLockReadGuard<'a, T> {
        lock: &'a std::sync::RwLock<T>,
        guard: std::sync::RwLockReadGuard<'a, T>,
    }

    pub struct RwLockWriteGuard<'a, T> {
        lock: &'a std::sync::RwLock<T>,
        guard: std::sync::RwLockWriteGuard<'a, T>,
    }

    impl<T> RwLock<T> {
        pub const fn new(value: T) -> Self {
            RwLock(std::sync::RwLock::new(value))
        }

        pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
            let lock = &self.0;
            annotate(lock, lock.read(), |guard| RwLockReadGuard { lock, guard })
        }

        pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
            let lock = &self.0;
            annotate(lock, lock.write(), |guard| RwLockWriteGuard { lock, guard })
        }
    }

    impl<T> Drop for RwLockReadGuard<'_, T> {
        fn drop(&mut self) {
            release(self.lock);
        }
    }

    impl<T> Drop for RwLockWriteGuard<'_, T> {
        fn drop(&mut self) {
            release(self.lock);
        }
    }

    impl<T> Deref for RwLockReadGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> Deref for RwLockWriteGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.guard
        }
    }

    impl<T> DerefMut for RwLockWriteGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.guard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn they_lock_like_std() {
        let m = Mutex::new(1);
        *m.lock().unwrap() += 1;
        assert_eq!(*m.lock().unwrap(), 2);
        let rw = RwLock::new(vec![1]);
        rw.write().unwrap().push(2);
        assert_eq!(rw.read().unwrap().len(), 2);
        // a poisoned lock still hands out its guard through the error
        let p = std::sync::Arc::new(Mutex::new(0));
        let q = p.clone();
        let _ = std::thread::spawn(move || {
            let _g = q.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert_eq!(*p.lock().unwrap_or_else(|e| e.into_inner()), 0);
    }
}
