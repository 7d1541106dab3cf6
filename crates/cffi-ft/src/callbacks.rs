//! Step 4 edge: the closure pool behind `ffi.callback()` and the bindings of
//! `extern "Python"` functions, over [`callback_dispatch`].
//!
//! The backend calls these from `malloc_closure.h`, `_cffi_backend.c` and
//! `call_python.c` (patches 0018 and 0019).
//!
//! ## Closure pool
//! One process-wide [`ClosurePool`] over anonymous `mmap` pages (read, write and,
//! unless the C side found PaX's EMUTRAMP, execute), sized by the backend at module
//! init (`sizeof(ffi_closure)`). [`cffi_ft_closure_alloc`] and
//! [`cffi_ft_closure_free`] may be called from any thread, attached or not; they call
//! no CPython API. The `kill` callback that `free` runs under the pool's lock is C code
//! that only rewrites the block's trampoline (libffi's `ffi_prep_closure`), never
//! Python (seam rule R2).
//!
//! ## Foreign threads
//! [`cffi_ft_thread_at_exit`] registers the C function that gives back the Python
//! thread state a callback created in a foreign thread; it runs on that thread when it
//! ends, from a Rust thread-local destructor (which glibc runs before clearing the
//! thread's `pthread` keys, CPython's "which state is mine" key among them). Rust
//! holds no Python object for it (rule R4): only the C function pointer.
//!
//! ## `extern "Python"` bindings
//! `struct _cffi_externpy_s` lives in each generated module; its layout comes from
//! cffi's `parse_c_type.h` through bindgen (`build.rs`) and is checked against the C
//! compiler's at module init ([`cffi_ft_xpy_check_layout`]). Its `reserved1` field is
//! null until the first `@ffi.def_extern()`, then points to a leaked [`BindingSlot`]
//! installed by CAS (so the C test "`reserved1 == NULL`: nothing attached yet" stays
//! true); `reserved2` is no longer used. A [`Binding`] owns a strong reference to the
//! interpreter key and one to the info tuple; it is dropped, and they are released with
//! `Py_DecRef`, by whoever holds it last: a caller leaving [`cffi_ft_xpy_call`] or the
//! binder's [`cffi_ft_xpy_release`], all on attached threads (rule R4). Rust holds no
//! lock here; the C side serialises binders with a `PyMutex` and releases the old
//! binding after unlocking (rule R3).

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::AtomicPtr;
use std::sync::OnceLock;

use callback_dispatch::{at_thread_exit, AtThreadExit, BindingSlot, ClosurePool, FreeError, PageSource, PoolConfig};
use pyo3_ffi as ffi;

use crate::edge::{entry, quiet_entry};
use crate::kit::{CLOSURE_DOUBLE_FREE, CLOSURE_FOREIGN};

use crate::externpy::_cffi_externpy_s;

/// Freed callbacks that wait before their block is reused: a stale C pointer to a
/// freed callback reaches the "dead callback" target until this many more callbacks
/// have been freed. 1024 blocks of `sizeof(ffi_closure)` (56 bytes on x86-64, which
/// the pool rounds up to 64) hold back 64 KiB.
const QUARANTINE: usize = 1024;

/// Anonymous private pages, never unmapped (as in cffi's `malloc_closure.h`).
struct MmapPages {
    prot: c_int,
}

impl PageSource for MmapPages {
    fn map(&self, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: an anonymous private mapping with no address hint; no memory of ours
        // is touched, and the result is checked against MAP_FAILED.
        let mem = unsafe {
            libc::mmap(std::ptr::null_mut(), len, self.prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if mem == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(mem.cast())
    }
}

static POOL: OnceLock<ClosurePool<MmapPages>> = OnceLock::new();

/// Sets the pool up: blocks of `block_size` bytes (`sizeof(ffi_closure)`), pages
/// executable unless `executable` is 0. 0, or -1 with an exception if the pool was
/// already set up differently (a second backend build in one process).
#[no_mangle]
pub extern "C" fn cffi_ft_closure_pool_init(block_size: usize, executable: c_int) -> c_int {
    entry(|| {
        let prot = libc::PROT_READ | libc::PROT_WRITE | if executable != 0 { libc::PROT_EXEC } else { 0 };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let config = PoolConfig { block_size, page_size: if page > 0 { page as usize } else { 4096 }, quarantine: QUARANTINE };
        let pool = POOL.get_or_init(|| ClosurePool::new(MmapPages { prot }, config));
        if pool.config() != config.normalized() {
            crate::edge::raise(
                // SAFETY: a static exception type of CPython.
                unsafe { ffi::PyExc_SystemError },
                "cffi-ft: closure pool already set up with another block size",
            );
            return -1;
        }
        0
    })
}

fn pool() -> Option<&'static ClosurePool<MmapPages>> {
    POOL.get()
}

/// A block of the pool for one new callback, or NULL (no memory; no exception set, the
/// caller raises). The block may be a reused one that still holds the dead-callback
/// trampoline until the caller prepares it.
#[no_mangle]
pub extern "C" fn cffi_ft_closure_alloc() -> *mut c_void {
    quiet_entry("closure alloc", std::ptr::null_mut(), || {
        pool().and_then(|p| p.alloc()).map_or(std::ptr::null_mut(), |b| b.as_ptr().cast())
    })
}

/// Gives a block back: `kill(block)` runs first, under the pool's lock (it must only
/// rewrite the trampoline), then the block is quarantined. 0, `CFFI_FT_CLOSURE_DOUBLE_FREE`,
/// `CFFI_FT_CLOSURE_FOREIGN` (nothing done), or -1 (a kit bug, reported on stderr).
/// Never raises: called from deallocs.
///
/// # Safety
/// `kill` is safe to call with a block of this pool.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_closure_free(block: *mut c_void, kill: unsafe extern "C" fn(*mut c_void)) -> c_int {
    quiet_entry("closure free", -1, || {
        let (Some(pool), Some(block)) = (pool(), NonNull::new(block.cast::<u8>())) else {
            return CLOSURE_FOREIGN;
        };
        // SAFETY: the caller's contract; `b` is a block of this pool, live until now.
        match pool.free(block, |b| unsafe { kill(b.as_ptr().cast()) }) {
            Ok(()) => 0,
            Err(FreeError::DoubleFree) => CLOSURE_DOUBLE_FREE,
            Err(FreeError::Foreign) => CLOSURE_FOREIGN,
        }
    })
}

/// What one `extern "Python"` function is bound to in one interpreter.
pub struct Binding {
    /// Strong reference: the key of the interpreter that bound it.
    interp_key: *mut ffi::PyObject,
    /// Strong reference: the `(ctype, callable, raw error, onerror)` tuple.
    infotuple: *mut ffi::PyObject,
}

// SAFETY: the two pointers are strong references that only this value releases, on
// whichever attached thread drops it last (see the module doc); Python objects may be
// referenced from any thread.
unsafe impl Send for Binding {}
// SAFETY: shared access only reads the two pointers.
unsafe impl Sync for Binding {}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: we own one reference to each; every drop happens on an attached
        // thread (call, release), as the module doc says.
        unsafe {
            ffi::Py_DecRef(self.infotuple);
            ffi::Py_DecRef(self.interp_key);
        }
    }
}

/// `reserved1` of `xp`, as the atomic the slot protocol needs.
///
/// # Safety
/// `xp` points to a live `struct _cffi_externpy_s` whose `reserved1` only this module
/// (and C's acquire load of it against NULL) touches.
unsafe fn binding_field<'a>(xp: *mut _cffi_externpy_s) -> &'a AtomicPtr<c_void> {
    // SAFETY: the field is pointer-aligned (bindgen's layout, checked at init) and
    // lives as long as the generated module, i.e. the process.
    unsafe { AtomicPtr::from_ptr(std::ptr::addr_of_mut!((*xp).reserved1)) }
}

/// The hot path of every `extern "Python"` call, on an attached thread: if `xp` is
/// bound for `interp_key`, calls `invoke(infotuple, ctx)` and returns 1; else returns
/// 0 (never bound, or bound in another interpreter; no exception). The binding is held
/// by an arc-swap guard for the length of the call: no lock, no reference count
/// bumped on the shared tuple, and a concurrent rebind cannot release it under the
/// call (the rebinder pays the guard's debt instead; writers never wait for readers).
///
/// # Safety
/// `xp` as for [`binding_field`]; `interp_key` is a live object; `invoke` may be
/// called with the bound tuple (borrowed for the call) and `ctx`.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_xpy_call(
    xp: *mut _cffi_externpy_s,
    interp_key: *mut ffi::PyObject,
    invoke: unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void),
    ctx: *mut c_void,
) -> c_int {
    quiet_entry("extern \"Python\" call", 0, || {
        // SAFETY: per the contract; reserved1 is only written by `install`.
        let Some(slot) = (unsafe { BindingSlot::<Binding>::published(binding_field(xp)) }) else {
            return 0;
        };
        let called = slot.find(|b| {
            (b.interp_key == interp_key).then(|| {
                // SAFETY: the guard keeps `b`, and so its tuple, alive for the call.
                unsafe { invoke(b.infotuple, ctx) }
            })
        });
        c_int::from(called.is_some())
    })
}

/// Binds `xp` to `infotuple` for `interp_key` (both borrowed; the binding takes its
/// own references). Returns the previous binding as an opaque pointer for
/// [`cffi_ft_xpy_release`] (NULL if none): the caller releases it after unlocking.
/// Returns NULL as well if a kit bug was caught (reported on stderr; nothing bound).
///
/// # Safety
/// As for [`cffi_ft_xpy_call`], on an attached thread.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_xpy_bind(
    xp: *mut _cffi_externpy_s,
    interp_key: *mut ffi::PyObject,
    infotuple: *mut ffi::PyObject,
) -> *mut c_void {
    quiet_entry("extern \"Python\" bind", std::ptr::null_mut(), || {
        // SAFETY: both are live objects (contract); the binding owns these references.
        unsafe {
            ffi::Py_IncRef(interp_key);
            ffi::Py_IncRef(infotuple);
        }
        let binding = Binding { interp_key, infotuple };
        // SAFETY: per the contract.
        let slot = unsafe { BindingSlot::<Binding>::install(binding_field(xp)) };
        slot.bind(binding).map_or(std::ptr::null_mut(), |old| std::sync::Arc::into_raw(old).cast_mut().cast())
    })
}

/// Drops a binding that [`cffi_ft_xpy_bind`] returned (NULL: no-op). Its references
/// are released now if no reader still holds it, else by the last reader.
///
/// # Safety
/// `old` came from [`cffi_ft_xpy_bind`] and is released once, on an attached thread.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_xpy_release(old: *mut c_void) {
    if old.is_null() {
        return;
    }
    // SAFETY: per the contract, one reference made by `Arc::into_raw`.
    let old = unsafe { std::sync::Arc::from_raw(old.cast_const().cast::<Binding>()) };
    quiet_entry("extern \"Python\" release", (), move || drop(old));
}

/// The C compiler's view of `struct _cffi_externpy_s` against bindgen's: 0 if they
/// agree, else -1 with an `ImportError` naming both (the backend refuses to load).
#[no_mangle]
pub extern "C" fn cffi_ft_xpy_check_layout(size: usize, reserved1: usize, reserved2: usize) -> c_int {
    entry(|| {
        let ours = (
            std::mem::size_of::<_cffi_externpy_s>(),
            std::mem::offset_of!(_cffi_externpy_s, reserved1),
            std::mem::offset_of!(_cffi_externpy_s, reserved2),
        );
        if ours == (size, reserved1, reserved2) {
            return 0;
        }
        crate::edge::raise(
            // SAFETY: a static exception type of CPython.
            unsafe { ffi::PyExc_ImportError },
            &format!(
                "cffi-ft: struct _cffi_externpy_s is (size, reserved1, reserved2) = {:?} for the C \
                 compiler but {ours:?} in the staticlib's bindgen layout: rebuild the staticlib \
                 against this cffi tree's parse_c_type.h",
                (size, reserved1, reserved2)
            ),
        );
        -1
    })
}

/// Arranges for `release` to run on this thread when it ends (see the module doc):
/// 1 if registered now (the caller takes what `release` gives back), 0 if this thread
/// already has it, -1 if the thread is already ending. Calls no CPython API.
///
/// # Safety
/// `release` must be safe to call on this thread as it ends.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_thread_at_exit(release: unsafe extern "C" fn()) -> c_int {
    // SAFETY: the caller's contract is `at_thread_exit`'s.
    quiet_entry("thread exit hook", -1, || match unsafe { at_thread_exit(release) } {
        AtThreadExit::Registered => 1,
        AtThreadExit::AlreadyRegistered => 0,
        AtThreadExit::TooLate => -1,
    })
}
