//! Step 1 edge: cffi's unique ctype cache on top of [`ctype_intern::InternMap`].
//!
//! The backend calls these from `get_unique_type`, the ctype constructors and
//! `ctypedescr_dealloc` (patches 0008–0010), always on a thread attached to the
//! interpreter.
//!
//! ## Ownership
//! * The map owns one entry per key, never a strong reference to the ctype. An inserted
//!   ctype keeps its [`Token`] (one word, stored in its `ct_unique_entry` field) and
//!   hands it back to [`cffi_ft_unique_forget`], with its own address as the identity,
//!   as the first thing its dealloc does (before its memory can be reused).
//! * **Free-threaded builds**: the entry's handle is a strong reference to a **weakref
//!   object** of the ctype (`PyWeakref_NewRef(ctype, NULL)`). A reader pins it under
//!   the shard lock (`Py_IncRef` of the weakref, which cannot block or deallocate) and
//!   upgrades after unlocking with `PyWeakref_GetRef`, which never returns an object
//!   whose reference count already reached zero, so a dying ctype is never handed out
//!   (hazards A1–A3); 3.13 has no other public try-incref.
//! * **GIL builds**: the handle is a borrowed pointer and pinning is `Py_IncRef` of the
//!   ctype itself. This is sound because the GIL is held from the final decref through
//!   the removal of the entry at the top of the dealloc (nothing in between can release
//!   it), so an entry that a lookup finds always points to a live ctype. No weakref is
//!   allocated on a miss and no CPython call but an incref runs on a hit.
//!
//! ## Seam rules
//! Under a shard lock the map runs only [`WeakHandle::pin`], here a `Py_IncRef`, which
//! cannot block, detach or deallocate. Every other CPython call (`PyWeakref_GetRef`,
//! `PyWeakref_NewRef`, `Py_DecRef`) happens with no Rust lock held (R2), and released
//! references are dropped after unlocking (R3).

use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use ctype_intern::{InternMap, Interned, Token, WeakHandle};
use pyo3_ffi as ffi;

use crate::panic_guard::catch_panic;

/// Free-threaded builds: a strong reference to a weakref object of the ctype.
/// GIL builds: a borrowed pointer to the ctype (see the module docs).
struct PyWeakRef(NonNull<ffi::PyObject>);

// SAFETY: the pointer is only used through CPython calls (`Py_IncRef`,
// `PyWeakref_GetRef`, `Py_DecRef`), which are made on attached threads: every path into
// this module comes from the backend's C code running attached. The weakref object
// itself is thread-safe on both GIL and free-threaded builds.
unsafe impl Send for PyWeakRef {}
// SAFETY: as above; `&PyWeakRef` only allows `pin`, a `Py_IncRef`.
unsafe impl Sync for PyWeakRef {}

impl WeakHandle for PyWeakRef {
    /// A new (owned) reference to the ctype.
    type Strong = NonNull<ffi::PyObject>;

    #[cfg(not(Py_GIL_DISABLED))]
    type Pinned = NonNull<ffi::PyObject>;

    /// Free-threaded builds: another owned reference to the entry's weakref, so it
    /// outlives a concurrent removal of the entry until we have upgraded it.
    #[cfg(Py_GIL_DISABLED)]
    type Pinned = PyWeakRef;

    #[cfg(not(Py_GIL_DISABLED))]
    fn pin(&self) -> NonNull<ffi::PyObject> {
        // SAFETY: GIL builds only, GIL held by the caller: an entry found in the map
        // points to a live ctype (its dealloc removes the entry before anything can
        // release the GIL), so taking a new reference is sound. An incref cannot block
        // or deallocate, so it may run under the shard lock.
        unsafe { ffi::Py_IncRef(self.0.as_ptr()) };
        self.0
    }

    #[cfg(not(Py_GIL_DISABLED))]
    fn upgrade(ctype: NonNull<ffi::PyObject>) -> Option<NonNull<ffi::PyObject>> {
        Some(ctype)
    }

    #[cfg(Py_GIL_DISABLED)]
    fn pin(&self) -> PyWeakRef {
        // SAFETY: attached thread; the entry owns a reference to this weakref, and the
        // shard lock held by our caller keeps the entry (so the weakref) alive. An
        // incref cannot block or deallocate.
        unsafe { ffi::Py_IncRef(self.0.as_ptr()) };
        PyWeakRef(self.0)
    }

    #[cfg(Py_GIL_DISABLED)]
    fn upgrade(weakref: PyWeakRef) -> Option<NonNull<ffi::PyObject>> {
        let mut obj = ptr::null_mut();
        // SAFETY: attached thread, no lock held; `weakref` is a live weakref object we
        // own a reference to. Returns 1 with a new reference, 0 if the referent is
        // dead; -1 only for a non-weakref argument, which cannot happen.
        let rc = unsafe { ffi::PyWeakref_GetRef(weakref.0.as_ptr(), &mut obj) };
        drop(weakref);
        if rc == 1 {
            NonNull::new(obj)
        } else {
            None
        }
    }
}

#[cfg(Py_GIL_DISABLED)]
impl Drop for PyWeakRef {
    fn drop(&mut self) {
        // SAFETY: we own this reference; drops happen on attached threads, outside any
        // shard lock (InternMap's contract).
        unsafe { ffi::Py_DecRef(self.0.as_ptr()) };
    }
}

/// Creates the entry's handle for `candidate` (see [`PyWeakRef`]).
///
/// # Safety
/// Attached thread; `candidate` is alive.
unsafe fn make_handle(candidate: *mut ffi::PyObject) -> Result<PyWeakRef, ()> {
    #[cfg(Py_GIL_DISABLED)]
    // SAFETY: caller contract. NULL with an exception set on failure.
    let handle = unsafe { ffi::PyWeakref_NewRef(candidate, ptr::null_mut()) };
    #[cfg(not(Py_GIL_DISABLED))]
    let handle = candidate; // borrowed, see the module docs
    NonNull::new(handle).map(PyWeakRef).ok_or(())
}

type Cache = InternMap<PyWeakRef>;

/// The process-wide cache. Never dropped: a static holding Python references must not
/// run destructors at exit (R4); entries die with their ctypes instead.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| InternMap::new(64))
}

/// Reads a key of `nwords` machine words.
///
/// # Safety
/// `key` points to `nwords` readable words.
unsafe fn key_words<'a>(key: *const *const c_void, nwords: usize) -> &'a [usize] {
    // SAFETY: caller contract; pointers and usize have the same size and alignment.
    unsafe { std::slice::from_raw_parts(key.cast::<usize>(), nwords) }
}

fn set_error(message: &str) {
    let text = std::ffi::CString::new(message.replace('\0', " ")).expect("NULs replaced");
    // SAFETY: attached thread; valid exception type and NUL-terminated message.
    unsafe { ffi::PyErr_SetString(ffi::PyExc_SystemError, text.as_ptr()) };
}

/// The hit path: a new reference to the live ctype interned under `key`, or NULL if
/// there is none. Never raises and never allocates.
///
/// # Safety
/// Attached thread; `key` points to `nwords` words.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_unique_lookup(
    key: *const *const c_void,
    nwords: usize,
) -> *mut ffi::PyObject {
    // SAFETY: caller contract.
    let key = unsafe { key_words(key, nwords) };
    catch_panic(|| cache().lookup(key))
        .ok()
        .flatten()
        .map_or(ptr::null_mut(), NonNull::as_ptr)
}

/// Replaces the fully built ctype `candidate` (a reference the caller gives away) by
/// the canonical one: returns a new reference to the live equal ctype if there is one
/// (and releases `candidate`), else inserts `candidate`, stores its entry into
/// its token into `*entry_slot` (the candidate's `ct_unique_entry` field) and returns it.
/// NULL with an exception on failure (`candidate` released).
///
/// # Safety
/// Attached thread; `key` points to `nwords` words; `candidate` is a strong reference
/// owned by the caller and not yet shared with other threads; `entry_slot` points into
/// `candidate` and holds NULL.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_unique_intern(
    key: *const *const c_void,
    nwords: usize,
    candidate: *mut ffi::PyObject,
    entry_slot: *mut *mut c_void,
) -> *mut ffi::PyObject {
    // SAFETY: caller contract.
    let key = unsafe { key_words(key, nwords) };
    // SAFETY: attached; `candidate` is alive (we hold its reference).
    let make_weak = || unsafe { make_handle(candidate) };
    // The backend's constructors call cffi_ft_unique_lookup() first, so start with the
    // insert loop (correct even if the caller did not look up: the loop re-checks).
    let id = candidate as usize;
    match catch_panic(|| cache().intern_after_miss(key, id, make_weak)) {
        Ok(Ok(Interned::Inserted(token))) => {
            // SAFETY: `entry_slot` points into `candidate`, which only this thread can
            // see until we return it; its dealloc (the only other reader) cannot run
            // while we hold the reference.
            unsafe { *entry_slot = token.into_raw() as *mut c_void };
            candidate
        }
        Ok(Ok(Interned::Existing(canonical))) => {
            // SAFETY: we own `candidate`'s reference; no lock is held here.
            unsafe { ffi::Py_DecRef(candidate) };
            canonical.as_ptr()
        }
        Ok(Err(())) => {
            // PyWeakref_NewRef failed and set the exception (free-threaded builds only).
            // SAFETY: as above.
            unsafe { ffi::Py_DecRef(candidate) };
            ptr::null_mut()
        }
        Err(panic) => {
            set_error(&panic);
            // SAFETY: as above.
            unsafe { ffi::Py_DecRef(candidate) };
            ptr::null_mut()
        }
    }
}

/// First thing in `ctypedescr_dealloc` (before `PyObject_ClearWeakRefs`, which may run
/// Python code, and before the ctype's memory can be reused): removes the entry of
/// `dying` if the cache still holds it. `entry` is the token that
/// [`cffi_ft_unique_intern`] stored in the ctype (NULL: never interned). Never raises.
///
/// # Safety
/// Attached thread; `dying` is the ctype being deallocated and `entry` its stored
/// token, passed once.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_unique_forget(entry: *mut c_void, dying: *mut ffi::PyObject) {
    let Some(token) = Token::from_raw(entry as usize) else {
        return;
    };
    // A panic here can only come from a poisoned lock; nothing sensible to report
    // from a dealloc, and unwinding into C must not happen.
    let _ = catch_panic(|| cache().forget(token, dying as usize));
}

/// Number of entries in the cache (diagnostics; backs
/// `_cffi_backend.__cffi_ft_unique_cache_len__()`).
pub fn entry_count() -> usize {
    catch_panic(|| cache().len()).unwrap_or(0)
}

/// `METH_NOARGS` implementation of `__cffi_ft_unique_cache_len__`.
///
/// # Safety
/// Called by CPython on an attached thread.
pub unsafe extern "C" fn py_unique_cache_len(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: attached; PyLong_FromSsize_t has no other precondition.
    unsafe { ffi::PyLong_FromSsize_t(entry_count() as ffi::Py_ssize_t) }
}
