//! Step 3 edge: the `dlopen` handles of cffi's `CLibrary` and `Lib` objects, owned by
//! [`lib_registry`].
//!
//! The backend calls these from `_cffi_backend.c`, `cdlopen.c`, `lib_obj.c` and
//! `cglob.c` (patches 0015–0017), on threads attached to the interpreter.
//!
//! ## Ownership
//! * A `CLibrary` (`DynLibObject.dl_lib`) or a dlopen'd `Lib` (`LibObject.l_lib`) owns
//!   one boxed [`Library`] (`cffi_ft_lib *`), freed by its `tp_dealloc`
//!   (`cffi_ft_lib_free`). Exactly one close wins; the OS `dlclose` runs when the last
//!   pin goes.
//! * A `cffi_ft_lib_pin *` is one [`Pin`] as a raw `Arc` pointer ([`Pin::into_raw`],
//!   no allocation; the generation travels separately): owned by the C code that took it
//!   until it unpins it or hands it on: to a global-variable object (`gs_lib_pin`,
//!   released by its dealloc) or, with [`cffi_ft_lib_pin_attach`], to a
//!   function-pointer cdata made from a `dlsym` result (released by
//!   [`cffi_ft_lib_pin_detach`] from `cdata_dealloc`). So the code behind `lib.f` and
//!   the data behind `lib.var` stay mapped while those objects live, even after
//!   `ffi.dlclose()`.
//! * No Python object crosses this seam; nothing here calls CPython except
//!   `PyErr_SetString` when a panic is caught. A deferred close can run in any
//!   thread's unpin (an attached thread: unpins come from deallocs and C code that
//!   holds the GIL or is attached); it calls only `dlclose`.
//!
//! ## Locks
//! None, except the mutex of [`PinTable`]'s overflow map (only when a slot group is
//! full), held for one hash-map operation and never across a CPython call or a
//! `dlclose` (seam rules R2/R3). Attaching and detaching a pin are otherwise lock-free.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use lib_registry::{Close, Closing, Library, Loader, OpenHandle, Pin, PinTable};
use pyo3_ffi as ffi;

use crate::edge::{entry, quiet_entry, raise};

use crate::kit::{LIB_CLOSED, LIB_NOT_FOUND};

/// The raw `void *` of `dlopen`. The loader only passes it to `dlsym`/`dlclose`, which
/// may be called from any thread.
pub struct RawHandle(*mut c_void);

// SAFETY: a dlopen handle is an opaque token; glibc's dlsym/dlclose are thread-safe.
unsafe impl Send for RawHandle {}
// SAFETY: as above; the handle is never dereferenced by Rust.
unsafe impl Sync for RawHandle {}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlclose(handle: *mut c_void) -> c_int;
    fn dlerror() -> *mut c_char;
}

/// The OS loader: `dlsym`, `dlclose`, and `dlerror`'s per-thread message.
pub struct DlLoader;

fn take_dlerror() -> Option<String> {
    // SAFETY: dlerror() returns NULL or a NUL-terminated string owned by the loader,
    // valid until the next dl* call of this thread; copied at once.
    let msg = unsafe { dlerror() };
    (!msg.is_null()).then(|| unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned())
}

impl Loader for DlLoader {
    type Raw = RawHandle;

    fn symbol(&self, raw: &RawHandle, name: &CStr) -> Result<*mut c_void, String> {
        take_dlerror(); // clear the error condition, as cffi does before dlsym
        // SAFETY: `raw` is a handle from dlopen that the registry has not closed (the
        // caller holds a pin); `name` is NUL-terminated.
        let address = unsafe { dlsym(raw.0, name.as_ptr()) };
        if address.is_null() {
            if let Some(error) = take_dlerror() {
                return Err(error);
            }
        }
        Ok(address)
    }

    fn close(&self, raw: &RawHandle) -> Result<(), String> {
        // SAFETY: called once per handle by the registry, after its last pin.
        if unsafe { dlclose(raw.0) } != 0 {
            return Err(take_dlerror().unwrap_or_else(|| "dlclose() failed".to_string()));
        }
        Ok(())
    }

    fn deferred_close_failed(&self, name: &str, error: String) {
        // Nobody waits for this result any more (the Python call that closed the
        // library returned); cffi reported dlclose errors, so say it on stderr.
        eprintln!("cffi-ft: closing library '{name}' (deferred to its last user): {error}");
    }
}

/// One `CLibrary`/`Lib` handle.
pub type Lib = Library<DlLoader>;

/// What C holds as a `cffi_ft_lib_pin *`.
pub type RawPin = *const OpenHandle<DlLoader>;

/// Takes back a pin that C hands over. The generation only matters to builders,
/// which got it when they pinned.
///
/// # Safety
/// `raw` came from [`cffi_ft_lib_pin_new`] and is not used by C afterwards.
unsafe fn take_pin(raw: RawPin) -> Pin<DlLoader> {
    // SAFETY: per the contract.
    unsafe { Pin::from_raw(raw, 0) }
}

/// Pins attached to function-pointer cdata, keyed by the cdata's address.
fn attached_pins() -> &'static PinTable<Pin<DlLoader>> {
    static TABLE: OnceLock<PinTable<Pin<DlLoader>>> = OnceLock::new();
    TABLE.get_or_init(PinTable::new)
}

/// Copies `message` into the caller's buffer (truncated, NUL-terminated).
fn write_message(buf: *mut c_char, len: usize, message: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = message.len().min(len - 1);
    // SAFETY: the caller passes a writable buffer of `len` bytes; n < len.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr().cast::<c_char>(), buf, n);
        *buf.add(n) = 0;
    }
}

/// Takes ownership of `os_handle` (from `dlopen`) into a new registry entry.
///
/// # Safety
/// `name` is NUL-terminated; `out` is writable; the caller never uses `os_handle`
/// directly afterwards.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_new(
    os_handle: *mut c_void,
    auto_close: c_int,
    name: *const c_char,
    out: *mut *mut Lib,
) -> c_int {
    entry(|| {
        // SAFETY: per the contract above.
        let name = unsafe { CStr::from_ptr(name) };
        let lib = Box::new(Library::new(DlLoader, RawHandle(os_handle), auto_close != 0, name));
        // SAFETY: `out` is writable.
        unsafe { *out = Box::into_raw(lib) };
        0
    })
}

/// Frees the owner's entry: an `auto_close` handle is closed after its last pin.
///
/// # Safety
/// `lib` came from [`cffi_ft_lib_new`] and is not used afterwards (NULL: no-op).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_free(lib: *mut Lib) {
    if lib.is_null() {
        return;
    }
    // SAFETY: per the contract, we own the box.
    quiet_entry("freeing a library entry", (), || drop(unsafe { Box::from_raw(lib) }));
}

/// Starts a close: 1 and `*out` set (this call won), 0 (already closed), -1 (panic,
/// exception set).
///
/// # Safety
/// `lib` is a live entry; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_close(lib: *const Lib, out: *mut *mut Closing<DlLoader>) -> c_int {
    entry(|| {
        // SAFETY: per the contract.
        match unsafe { &*lib }.close() {
            Some(closing) => {
                // SAFETY: `out` is writable.
                unsafe { *out = Box::into_raw(Box::new(closing)) };
                1
            }
            None => 0,
        }
    })
}

/// Ends a close that [`cffi_ft_lib_close`] started: 0 closed now, 1 deferred to the
/// last pin, 2 closed now and `dlclose` failed (its message in `err`), -1 (panic,
/// exception set).
///
/// # Safety
/// `closing` came from [`cffi_ft_lib_close`] and is not used afterwards; `err` is a
/// writable buffer of `errlen` bytes (or NULL).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_close_finish(
    closing: *mut Closing<DlLoader>,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    entry(|| {
        // SAFETY: per the contract, we own the box.
        match unsafe { Box::from_raw(closing) }.finish() {
            Close::Closed => 0,
            Close::Deferred => 1,
            Close::Failed(message) => {
                write_message(err, errlen, &message);
                2
            }
        }
    })
}

/// The entry's generation (bumped by its close).
///
/// # Safety
/// `lib` is a live entry.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_generation(lib: *const Lib) -> u64 {
    // SAFETY: per the contract. (An atomic load: cannot panic.)
    unsafe { &*lib }.generation()
}

/// Pins the open handle: 1 and `*out`, `*generation` set; 0 if closed; -1 (panic,
/// exception set).
///
/// # Safety
/// `lib` is a live entry; `out` and `generation` are writable.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_pin_new(
    lib: *const Lib,
    out: *mut RawPin,
    generation: *mut u64,
) -> c_int {
    entry(|| {
        // SAFETY: per the contract.
        match unsafe { &*lib }.pin() {
            Some(pin) => {
                // SAFETY: both out-pointers are writable.
                unsafe {
                    *generation = pin.generation();
                    *out = pin.into_raw();
                }
                1
            }
            None => 0,
        }
    })
}

/// Releases a pin; the last one of a closed library runs the deferred `dlclose`.
///
/// # Safety
/// `pin` came from [`cffi_ft_lib_pin_new`] and is not used afterwards (NULL: no-op).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_unpin(pin: RawPin) {
    if pin.is_null() {
        return;
    }
    // SAFETY: per the contract, C gives the pin back.
    quiet_entry("releasing a library pin", (), || drop(unsafe { take_pin(pin) }));
}

/// `dlsym` on a pinned handle: 0 and `*address` (possibly NULL), 1 if not found (the
/// loader's message in `err`), -1 (panic, exception set).
///
/// # Safety
/// `pin` is a live pin; `name` is NUL-terminated; `address` is writable; `err` is a
/// writable buffer of `errlen` bytes (or NULL).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_symbol(
    pin: RawPin,
    name: *const c_char,
    address: *mut *mut c_void,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    entry(|| {
        // SAFETY: per the contract.
        let name = unsafe { CStr::from_ptr(name) };
        // SAFETY: `pin` is live per the contract; it stays C's.
        match unsafe { Pin::with_raw(pin, |open| open.symbol(name)) } {
            Ok(found) => {
                // SAFETY: writable.
                unsafe { *address = found };
                0
            }
            Err(message) => {
                write_message(err, errlen, &message);
                1
            }
        }
    })
}

/// Looks `name` up and calls `use_address(address, ctx)` with the handle pinned for
/// that call only (an arc-swap guard: no shared counter is bumped). Returns what
/// `use_address` returned (0, or -1 with an exception), [`LIB_CLOSED`] (no exception),
/// [`LIB_NOT_FOUND`] (the loader's message in `err`, no exception), or -1 (panic,
/// exception set).
///
/// # Safety
/// `lib` is a live entry; `name` is NUL-terminated; `use_address` is a valid function
/// that does not unwind; `err` is a writable buffer of `errlen` bytes (or NULL).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_with_symbol(
    lib: *const Lib,
    name: *const c_char,
    use_address: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    ctx: *mut c_void,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    entry(|| {
        // SAFETY: per the contract.
        let (lib, name) = unsafe { (&*lib, CStr::from_ptr(name)) };
        let outcome = lib.with_pinned(|open| match open.symbol(name) {
            // SAFETY: a C function per the contract; the handle stays pinned for the call.
            Ok(address) => unsafe { use_address(address, ctx) },
            Err(message) => {
                write_message(err, errlen, &message);
                LIB_NOT_FOUND
            }
        });
        outcome.unwrap_or(LIB_CLOSED)
    })
}

/// Hands `pin` to the object at `owner` (a function-pointer cdata): it is released by
/// [`cffi_ft_lib_pin_detach`] when that object dies. 0, or -1 (panic, or the object
/// already holds a pin: a bug) with an exception set; the pin is consumed either way.
///
/// # Safety
/// `pin` came from [`cffi_ft_lib_pin_new`] and is not used by the caller afterwards;
/// `owner` is a live object whose dealloc calls [`cffi_ft_lib_pin_detach`].
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_pin_attach(owner: *const c_void, pin: RawPin) -> c_int {
    entry(|| {
        // SAFETY: per the contract, C hands the pin over.
        let pin = unsafe { take_pin(pin) };
        match attached_pins().attach(owner as usize, pin) {
            Ok(()) => 0,
            Err(pin) => {
                drop(pin);
                // SAFETY: PyExc_SystemError is a static exception type.
                raise(unsafe { ffi::PyExc_SystemError }, "cffi-ft: an object got a second library pin");
                -1
            }
        }
    })
}

/// From the dealloc of an object that may hold an attached pin: releases it (after
/// the table's shard is unlocked; the last pin of a closed library runs `dlclose`).
/// Cheap: no lock, no allocation, no shared counter.
///
/// # Safety
/// `owner` is the dying object's address (its memory not yet reused).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_lib_pin_detach(owner: *const c_void) {
    quiet_entry("releasing an attached library pin", (), || {
        // Lock-free: a scan of one slot group (one cache line of keys); the pin, if
        // any, is dropped after the table let go of it.
        drop(attached_pins().detach(owner as usize));
    });
}
