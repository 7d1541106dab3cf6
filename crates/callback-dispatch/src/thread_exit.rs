//! A hook that runs once when the current thread ends, on that thread.
//!
//! Rust thread-local destructors run when a thread ends, on that thread; with glibc
//! they run (`__call_tls_dtors`) *before* the destructors of `pthread_key_create`
//! keys, which also clears the values of every key. At the edge the hook gives back a
//! foreign thread's pinned Python thread state, which needs CPython's per-thread key
//! to still say which state belongs to the thread: a pthread key destructor of
//! cffi's own would run after that value is gone.

use std::cell::Cell;

/// What [`at_thread_exit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtThreadExit {
    /// The hook will run when this thread ends.
    Registered,
    /// This thread already has a hook; nothing changed.
    AlreadyRegistered,
    /// The thread is already ending (its thread-locals are being destroyed).
    TooLate,
}

struct Hook(Cell<Option<unsafe extern "C" fn()>>);

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            // SAFETY: `at_thread_exit`'s contract: the hook may run on this thread at its end.
            unsafe { hook() }
        }
    }
}

thread_local! {
    static HOOK: Hook = const { Hook(Cell::new(None)) };
}

/// Arranges for `hook` to run once, on this thread, when it ends (not if the process
/// exits first). One hook per thread: a second call changes nothing.
///
/// # Safety
/// `hook` must be safe to call on this thread while it ends, after its other Rust
/// thread-locals may have been destroyed.
pub unsafe fn at_thread_exit(hook: unsafe extern "C" fn()) -> AtThreadExit {
    HOOK.try_with(|h| {
        if h.0.get().is_some() {
            AtThreadExit::AlreadyRegistered
        } else {
            h.0.set(Some(hook));
            AtThreadExit::Registered
        }
    })
    .unwrap_or(AtThreadExit::TooLate)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    static RAN_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn record() {
        RUNS.fetch_add(1, Ordering::SeqCst);
        let name = std::thread::current().name().unwrap_or("?").to_string();
        RAN_ON.lock().unwrap().push(name);
    }

    #[test]
    fn the_hook_runs_once_on_the_ending_thread_before_join_returns() {
        let t = std::thread::Builder::new()
            .name("hooked".into())
            .spawn(|| {
                // SAFETY: `record` only touches statics.
                let first = unsafe { at_thread_exit(record) };
                // SAFETY: as above.
                let second = unsafe { at_thread_exit(record) };
                (first, second)
            })
            .unwrap();
        let (first, second) = t.join().unwrap();
        assert_eq!((first, second), (AtThreadExit::Registered, AtThreadExit::AlreadyRegistered));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
        assert_eq!(*RAN_ON.lock().unwrap(), vec!["hooked".to_string()]);
    }
}
