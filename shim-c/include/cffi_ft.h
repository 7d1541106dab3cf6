/* cffi-ft: the C view of the kit, included by the patched _cffi_backend.c.
 *
 * Functions named cffi_ft_shim_* live in shim-c/src/cffi_ft_shim.c and are compiled
 * with the backend's own flags and headers; functions named cffi_ft_* without "shim"
 * are exported by the Rust umbrella staticlib (crates/cffi-ft).  All of them must be
 * called on a thread attached to the interpreter, and return 0 on success or -1 with
 * a Python exception set.
 */
#ifndef CFFI_FT_H
#define CFFI_FT_H

#include <Python.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nothing of the kit is exported from _cffi_backend: the shim's functions are hidden
   here, and the staticlib's symbols are made local at link time (--exclude-libs). */
#if defined(__GNUC__) || defined(__clang__)
#  define CFFI_FT_PRIVATE __attribute__((visibility("hidden")))
#else
#  define CFFI_FT_PRIVATE
#endif

/* Step 0, from PyInit__cffi_backend: ABI check between the backend and the staticlib,
   GIL-free declaration on free-threaded builds, and _cffi_backend.__cffi_ft__. */
CFFI_FT_PRIVATE int cffi_ft_shim_backend_init(PyObject *module, const char *cffi_version);

/* Step 0, for each API-mode module the backend creates: GIL-free declaration. */
CFFI_FT_PRIVATE int cffi_ft_module_declare_gil_free(PyObject *module);

/* Rust side of cffi_ft_shim_backend_init (crates/cffi-ft/src/edge.rs). */
CFFI_FT_PRIVATE int cffi_ft_backend_init(PyObject *module, const char *cffi_version,
                                         int c_free_threaded,
                                         unsigned int c_py_version_hex);

/* Step 1 (cargo feature ctype-intern): the unique ctype cache
   (crates/cffi-ft/src/unique_cache.rs over crates/ctype-intern).
   Keys are arrays of nwords machine words, as built by get_unique_type's callers. */

/* New reference to the live ctype cached under key, or NULL (no exception set). */
CFFI_FT_PRIVATE PyObject *cffi_ft_unique_lookup(const void *const *key, size_t nwords);

/* Steals 'candidate' (a fully built, unshared ctype). Returns a new reference to the
   canonical ctype: an equal live one (candidate released), or candidate itself after
   storing its token into *entry_slot (its ct_unique_entry field). NULL with an
   exception on failure. */
CFFI_FT_PRIVATE PyObject *cffi_ft_unique_intern(const void *const *key, size_t nwords,
                                                PyObject *candidate, void **entry_slot);

/* First thing in the ctype's dealloc, before PyObject_ClearWeakRefs: removes the
   entry of 'dying' (whose ct_unique_entry is 'entry'; NULL: none). Never raises. */
CFFI_FT_PRIVATE void cffi_ft_unique_forget(void *entry, PyObject *dying);

#ifdef __cplusplus
}
#endif

#endif /* CFFI_FT_H */
