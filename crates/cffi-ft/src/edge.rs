//! The CPython edge of step 0: the only code in this crate that calls the C API.
//!
//! Both entries are called by `_cffi_backend` on an attached thread during module
//! initialisation. They return 0 on success and -1 with a Python exception set.

use std::ffi::{c_char, c_int, CStr, CString};


use pyo3_ffi as ffi;

use crate::kit::{check_abi, Abi, ENABLED_STEPS, KIT_VERSION};
use crate::panic_guard::catch_panic;

/// Runs an entry that must not raise (deallocs, and calls from C with no exception
/// channel): a panic is reported on stderr and `fallback` returned; whatever the body
/// owned is leaked, never freed twice. Inlined: the entries that use it are small and
/// hot (a pin's release from every function-pointer cdata's dealloc).
#[inline(always)]
pub(crate) fn quiet_entry<R>(what: &str, fallback: R, body: impl FnOnce() -> R) -> R {
    catch_panic(body).unwrap_or_else(|message| {
        eprintln!("cffi-ft: {what}: {message}");
        fallback
    })
}

/// Runs an entry body under the panic guard; a panic becomes `SystemError`. Inlined
/// into each entry (no frame of its own: the library registry's entries are called
/// once per attribute built).
#[inline(always)]
pub(crate) fn entry(body: impl FnOnce() -> c_int) -> c_int {
    match catch_panic(body) {
        Ok(rc) => rc,
        Err(message) => {
            raise(unsafe { ffi::PyExc_SystemError }, &message);
            -1
        }
    }
}

pub(crate) fn raise(exc_type: *mut ffi::PyObject, message: &str) {
    let text = CString::new(message.replace('\0', " ")).expect("NULs were replaced");
    // SAFETY: called on an attached thread (entry contract); both pointers are valid:
    // `exc_type` is one of CPython's static exception types and `text` outlives the call.
    unsafe { ffi::PyErr_SetString(exc_type, text.as_ptr()) };
}

/// Owned strong reference, released on drop (always on the attached calling thread).
struct Owned(*mut ffi::PyObject);

impl Owned {
    /// Takes a new reference returned by the C API; `None` if it is NULL (error set).
    fn new(obj: *mut ffi::PyObject) -> Option<Owned> {
        (!obj.is_null()).then_some(Owned(obj))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a strong reference we own, and edge code only runs attached.
        unsafe { ffi::Py_DECREF(self.0) };
    }
}

/// Builds the `__cffi_ft__` dict: kit version, cffi version, enabled steps, ABI.
fn build_report(cffi_version: &CStr, abi: Abi) -> Option<Owned> {
    // SAFETY (whole block): attached thread; each call gets valid arguments; every new
    // reference is wrapped in `Owned` at once, so early returns release what was built.
    unsafe {
        let dict = Owned::new(ffi::PyDict_New())?;
        let set = |key: &CStr, value: Owned| -> Option<()> {
            (ffi::PyDict_SetItemString(dict.0, key.as_ptr(), value.0) == 0).then_some(())
        };
        let kit = CString::new(KIT_VERSION).expect("crate version has no NUL");
        set(c"kit_version", Owned::new(ffi::PyUnicode_FromString(kit.as_ptr()))?)?;
        set(c"cffi_version", Owned::new(ffi::PyUnicode_FromString(cffi_version.as_ptr()))?)?;
        let steps = Owned::new(ffi::PyTuple_New(ENABLED_STEPS.len() as ffi::Py_ssize_t))?;
        for (i, step) in ENABLED_STEPS.iter().enumerate() {
            let item = ffi::PyLong_FromLong(i64::from(*step) as _);
            if item.is_null() {
                return None;
            }
            // PyTuple_SetItem steals `item`; filling a fresh tuple before it is shared.
            if ffi::PyTuple_SetItem(steps.0, i as ffi::Py_ssize_t, item) != 0 {
                return None;
            }
        }
        set(c"steps", steps)?;
        set(c"free_threaded", Owned::new(ffi::PyBool_FromLong(abi.free_threaded.into()))?)?;
        let python = CString::new(format!("{}.{}", abi.major, abi.minor)).expect("no NUL");
        set(c"python", Owned::new(ffi::PyUnicode_FromString(python.as_ptr()))?)?;
        Some(dict)
    }
}

/// Declares `module` as not needing the GIL. A no-op on GIL builds.
fn declare_gil_free(module: *mut ffi::PyObject) -> c_int {
    #[cfg(Py_GIL_DISABLED)]
    {
        // SAFETY: `module` is the module object under initialisation (caller contract).
        unsafe { ffi::PyUnstable_Module_SetGIL(module, ffi::Py_MOD_GIL_NOT_USED) }
    }
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let _ = module;
        0
    }
}

/// Called once from `PyInit__cffi_backend` (through `shim-c`).
///
/// `c_free_threaded` and `c_py_version_hex` are what the C compiler saw
/// (`Py_GIL_DISABLED`, `PY_VERSION_HEX`) when it compiled the backend.
///
/// # Safety
/// Attached thread; `module` is the `_cffi_backend` module under initialisation;
/// `cffi_version` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_backend_init(
    module: *mut ffi::PyObject,
    cffi_version: *const c_char,
    c_free_threaded: c_int,
    c_py_version_hex: u32,
) -> c_int {
    entry(|| {
        let backend = Abi::from_c(c_py_version_hex, c_free_threaded != 0);
        if let Err(message) = check_abi(Abi::of_this_build(), backend) {
            raise(unsafe { ffi::PyExc_ImportError }, &message);
            return -1;
        }
        if module.is_null() || cffi_version.is_null() {
            raise(unsafe { ffi::PyExc_SystemError }, "cffi_ft_backend_init: NULL argument");
            return -1;
        }
        if declare_gil_free(module) != 0 {
            return -1;
        }
        // SAFETY: non-NULL and NUL-terminated per the caller contract.
        let cffi_version = unsafe { CStr::from_ptr(cffi_version) };
        let Some(report) = build_report(cffi_version, backend) else {
            return -1;
        };
        // SAFETY: attached; `module` and `report` are valid; AddObjectRef does not steal.
        if unsafe { ffi::PyModule_AddObjectRef(module, c"__cffi_ft__".as_ptr(), report.0) } < 0 {
            return -1;
        }
        add_diagnostic_functions(module)
    })
}

/// Module functions that let tests observe the kit's state (one per enabled step).
fn add_diagnostic_functions(module: *mut ffi::PyObject) -> c_int {
    #[cfg(feature = "ctype-intern")]
    {
        /// A method table CPython may read at any time: immutable after creation.
        struct MethodTable([ffi::PyMethodDef; 2]);
        // SAFETY: the table is never mutated; its raw pointers are to 'static data.
        unsafe impl Sync for MethodTable {}
        static METHODS: MethodTable = MethodTable([
            ffi::PyMethodDef {
                ml_name: c"__cffi_ft_unique_cache_len__".as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunction: crate::unique_cache::py_unique_cache_len,
                },
                ml_flags: ffi::METH_NOARGS,
                ml_doc: c"Number of entries in the kit's unique ctype cache.".as_ptr(),
            },
            ffi::PyMethodDef::zeroed(),
        ]);
        let table = &METHODS;
        // SAFETY: attached; the table is 'static and NULL-terminated. CPython takes a
        // *mut but does not write to method tables passed to PyModule_AddFunctions.
        return unsafe { ffi::PyModule_AddFunctions(module, table.0.as_ptr() as *mut _) };
    }
    #[allow(unreachable_code)]
    {
        let _ = module;
        0
    }
}

/// Called for each API-mode module that `_cffi_backend` creates (`cffi1_module.c`).
///
/// # Safety
/// Attached thread; `module` is a module object under initialisation (or NULL, in which
/// case the caller's error is left in place).
#[no_mangle]
pub unsafe extern "C" fn cffi_ft_module_declare_gil_free(module: *mut ffi::PyObject) -> c_int {
    entry(|| if module.is_null() { -1 } else { declare_gil_free(module) })
}

