/* cffi-ft C shim: glue only.
 *
 * This file is compiled into _cffi_backend by cffi's (patched) setup.py, with the same
 * compiler flags and Python headers as the backend itself.  That is its reason to exist:
 * it captures what the C side was compiled for (Py_GIL_DISABLED, PY_VERSION_HEX) and
 * hands it to the Rust staticlib, which refuses to run against a backend built for a
 * different interpreter ABI.  No decision is made here.  Under ThreadSanitizer it also
 * holds the two words of the seam annotations (cffi_ft.h, CFFI_FT_TSAN).
 */
#include <stdlib.h>
#include <string.h>

#include "cffi_ft.h"

#ifdef CFFI_FT_TSAN
int cffi_ft_tsan_seams = 1;
char cffi_ft_tsan_realize_lock_sync;
#endif

int cffi_ft_shim_backend_init(PyObject *module, const char *cffi_version)
{
#ifdef Py_GIL_DISABLED
    const int c_free_threaded = 1;
#else
    const int c_free_threaded = 0;
#endif
#ifdef CFFI_FT_TSAN
    /* read before any other thread can use the backend */
    const char *seams = getenv("CFFI_FT_TSAN_SEAMS");
    cffi_ft_tsan_seams = !(seams != NULL && strcmp(seams, "off") == 0);
#endif
    return cffi_ft_backend_init(module, cffi_version, c_free_threaded,
                                (unsigned int)PY_VERSION_HEX);
}
