"""Why upstream's testing/cffi1/test_ffi_obj.py::test_ffi_type_not_immortal failed on
3.13t after the cffi0 tests: CPython 3.13t makes module dicts immortal once a thread
has started, and cffi0's FFI kept its type caches in module dicts (hazard F14, found
here; fixed in cffi's api.py by step 5's patch 0029).

CPython 3.13 free-threaded (gh-117783, Python/pystate.c, new_threadstate): as soon as
a second thread state is created, every object that would use deferred reference
counting becomes IMMORTAL (_PyGC_ImmortalizeDeferredObjects), and so is every such
object created later (_PyObject_SetDeferredRefcount): module objects, module
__dict__s, functions, code objects, heap types, descriptors. The free-threaded GC
untracks immortal objects (update_refs), so gc.get_referrers() cannot see them.

cffi 1.17.1's cffi0 FFI (src/cffi/api.py, FFI.__init__) keeps its type caches in
module dicts:
    self._parsed_types = types.ModuleType('parsed_types').__dict__
    self._new_types = types.ModuleType('new_types').__dict__
so every FFI created after the first thread leaks the (ctype, is_func) tuples it
cached, and the ctypes with them. In the suite, test_ctypes.py's
test_init_once_multithread starts the first threads; then test_ffi_backend.py's
test_pointer_init (ffi.new("int *[10]")), test_repr, test_unique_types ('int *[17]',
'int ***'), ... leave 'int *[10]', 'int *[17]', ... alive for good, and each of them
holds 'int **' (its pointer type; also a key of cffi.model._typecache_cffi_backend):
the 'int **' that test_ffi_type_not_immortal expects gc.collect() to free.

Run with any backend (the kit's, or vanilla 1.17.1 with PYTHON_GIL=0):
    python immortal_module_dict.py          # no thread first: PASS everywhere
    python immortal_module_dict.py thread   # a thread first: on 3.13t, check 1 (CPython
                                            # alone) fails everywhere; checks 2 and 3
                                            # fail up to step 4 and with vanilla 1.17.1
                                            # and pass from step 5 on
"""
import gc
import sys
import threading
import types
import weakref

import _cffi_backend
from cffi import FFI

thread_first = "thread" in sys.argv[1:]
if thread_first:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()

gil = getattr(sys, "_is_gil_enabled", lambda: True)()
print("python", sys.version.split()[0], "| GIL enabled:", gil,
      "| thread started first:", thread_first)

# 1. CPython alone: a module dict made after a thread started is immortal, untracked.
class Obj:
    pass
d = types.ModuleType("m").__dict__
d["x"] = Obj()
w = weakref.ref(d["x"])
print("module dict: refcount", sys.getrefcount(d), end=" ")
del d
gc.collect()
print("| freed with its object after del + gc.collect():", w() is None)

# 2. What cffi0's backend_tests.py::test_pointer_init leaves behind.
def earlier_test():
    ffi = FFI(backend=_cffi_backend)
    a = ffi.new("int *[10]")
    return weakref.ref(ffi), weakref.ref(ffi.typeof(a))
wffi, warr = earlier_test()
gc.collect()
print("cffi0 FFI freed:", wffi() is None, "| its ctype 'int *[10]' freed:", warr() is None)
if warr() is not None:
    print("  'int *[10]': refcount", sys.getrefcount(warr()) - 1,
          "| GC-visible referrers:", [type(r).__name__ for r in gc.get_referrers(warr())],
          "(a (ctype, False) tuple whose holder, the immortal dict, is untracked)")

# 3. The first half of upstream's test_ffi_type_not_immortal, unchanged.
ffi = _cffi_backend.FFI()
t1 = ffi.typeof("int **")
w1 = weakref.ref(t1)
del t1, ffi
gc.collect()
print("test_ffi_type_not_immortal: 'int **' freed:", w1() is None, "->",
      "PASS" if w1() is None else "FAIL")
