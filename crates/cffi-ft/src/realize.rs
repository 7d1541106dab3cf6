//! Step 2 edge: cffi's realization lock and lazy-struct completion on top of
//! [`realize_once`].
//!
//! The backend calls these from `realize_c_type.c` and `_cffi_backend.c` (patches
//! 0012–0014), always on a thread attached to the interpreter.
//!
//! ## The lock
//! One [`ReentrantLock`] for the process, over a `PyMutex` ([`PyMutexRaw`]). A thread
//! that finds it taken detaches first (`PyEval_SaveThread`: it stops counting for
//! stop-the-world and, on GIL builds, releases the GIL), parks on the `PyMutex`, and
//! reattaches (`PyEval_RestoreThread`) once it holds it. Its holder may therefore call
//! anything that waits detached, which is every CPython call that realization makes
//! (dict and weakref operations, the unique cache, allocation and deallocation): seam
//! rule R2 is about Rust locks that *attached* waiters block on, and no thread ever
//! blocks on this one attached. It is never a critical section (R7).
//!
//! ## Ownership
//! The lock owns two words and the `PyMutex` byte; a lazy object's state word is a
//! field of the ctype (`ct_lazy_state`), owned by the ctype. This module holds no
//! Python object, so R3/R4 hold trivially.
//!
//! ## Thread tokens
//! A thread is identified by the address of a Rust thread-local byte
//! ([`ThreadToken::current`]); it holds no Python object.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

use pyo3_ffi as ffi;
use realize_once::{force, Attachment, Forced, OnceState, ProtocolError, RawLock, ReentrantLock, ThreadToken};

use crate::edge::{entry, raise};

/// A `PyMutex` whose fast path we can try without blocking.
///
/// CPython declares `typedef struct PyMutex { uint8_t _bits; } PyMutex;` with bit 0
/// meaning "locked" (`_Py_LOCKED`). `try_lock` is the same compare-exchange 0 → 1 that
/// the inline `PyMutex_Lock` of `cpython/lock.h` does first; the blocking path and the
/// unlock are the exported `PyMutex_Lock`/`PyMutex_Unlock`, which handle parked waiters.
#[repr(transparent)]
pub struct PyMutexRaw(AtomicU8);

const PY_LOCKED: u8 = 1;

impl PyMutexRaw {
    fn as_py_mutex(&self) -> *mut ffi::PyMutex {
        // SAFETY (of later uses): ffi::PyMutex is repr(transparent) over AtomicU8, like
        // this type, so the pointer is valid and aligned for a PyMutex for as long as
        // `self` lives (a static here).
        &self.0 as *const AtomicU8 as *mut ffi::PyMutex
    }
}

// SAFETY: PyMutex provides mutual exclusion with acquire on lock and release on
// unlock; `try_lock` is its own fast path with Acquire ordering.
unsafe impl RawLock for PyMutexRaw {
    fn try_lock(&self) -> bool {
        let taken = self.0.compare_exchange(0, PY_LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if taken {
            // this CAS is invisible to ThreadSanitizer (TSan builds of the kit)
            tsan_sync::acquired(self);
        }
        taken
    }

    fn lock(&self) {
        // SAFETY: a valid PyMutex (see as_py_mutex). Called detached: PyMutex_Lock then
        // parks without a thread state to detach, which CPython supports.
        unsafe { ffi::PyMutex_Lock(self.as_py_mutex()) }
        tsan_sync::acquired(self);
    }

    unsafe fn unlock(&self) {
        tsan_sync::releasing(self);
        // SAFETY: a valid PyMutex, held by this thread (caller contract).
        unsafe { ffi::PyMutex_Unlock(self.as_py_mutex()) }
    }
}

/// Leaving the interpreter around a blocking wait: `PyEval_SaveThread`/`RestoreThread`.
struct Interpreter;

impl Attachment for Interpreter {
    type Detached = *mut ffi::PyThreadState;

    fn detach(&self) -> *mut ffi::PyThreadState {
        // SAFETY: every entry of this module runs attached (module contract).
        unsafe { ffi::PyEval_SaveThread() }
    }

    fn reattach(&self, detached: *mut ffi::PyThreadState) {
        // SAFETY: `detached` is what PyEval_SaveThread returned on this thread.
        unsafe { ffi::PyEval_RestoreThread(detached) }
    }
}

/// `CFFI_FT_LAZY_RECURSIVE` of `cffi_ft.h`.
const LAZY_RECURSIVE: c_int = -2;

static REALIZE_LOCK: ReentrantLock<PyMutexRaw> = ReentrantLock::new(PyMutexRaw(AtomicU8::new(0)));

fn protocol_error(error: ProtocolError) -> c_int {
    raise(
        // SAFETY: a CPython static exception type.
        unsafe { ffi::PyExc_SystemError },
        &format!("cffi-ft realization protocol: {error}"),
    );
    -1
}

/// Takes the realization lock (re-entrant; waits detached). 0, or -1 with an exception.
///
/// # Safety
/// Attached thread.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_realize_lock() -> c_int {
    entry(|| {
        REALIZE_LOCK.lock(ThreadToken::current(), &Interpreter);
        0
    })
}

/// Releases one level of the realization lock. 0, or -1 with a SystemError if this
/// thread does not hold it.
///
/// # Safety
/// Attached thread.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_realize_unlock() -> c_int {
    entry(|| match REALIZE_LOCK.unlock(ThreadToken::current()) {
        Ok(_) => 0,
        Err(error) => protocol_error(error),
    })
}

/// Completes the lazy object whose state word is `*state` (see `cffi_ft.h`).
///
/// # Safety
/// Attached thread; `state` points to the object's state word, valid for the call and
/// only ever accessed atomically; `build(ctx)` may be called once with the lock held.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lazy_force(
    state: *mut usize,
    build: unsafe extern "C" fn(*mut c_void) -> c_int,
    ctx: *mut c_void,
) -> c_int {
    entry(|| {
        // SAFETY: caller contract.
        let state = unsafe { OnceState::from_ptr(state) };
        // SAFETY: caller contract: `build` may run once here, with the lock held. It is
        // C code and cannot unwind.
        let run_build = || if unsafe { build(ctx) } == 0 { Ok(()) } else { Err(()) };
        match force(&REALIZE_LOCK, state, ThreadToken::current(), &Interpreter, run_build) {
            Ok(Forced::Done) => 1,
            Ok(Forced::NotLazy) => 0,
            Ok(Forced::Recursive) => LAZY_RECURSIVE,
            Ok(Forced::Failed(())) => -1,
            Err(error) => protocol_error(error),
        }
    })
}

/// `NOT_LAZY → DONE` for a struct that user code completed directly.
///
/// # Safety
/// Attached thread; `state` as for [`cffi_ft_lazy_force`].
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lazy_complete_eagerly(state: *mut usize) -> c_int {
    entry(|| {
        // SAFETY: caller contract.
        let state = unsafe { OnceState::from_ptr(state) };
        match state.complete_eagerly() {
            Ok(()) => 0,
            Err(error) => protocol_error(error),
        }
    })
}
