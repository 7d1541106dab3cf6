"""Step-3 promises about dlopen'd libraries (skipped on backends without step 3).

One thread; the races themselves are the stress suite's (s07-s13, s43). What is checked
here is the contract a user sees:

- after ``ffi.dlclose(lib)`` / ``close_lib()`` every access raises cffi's error, integer
  constants included, and closing again is a no-op;
- a function fetched before the close stays callable, and the library stays mapped
  until the last such function dies (the deferred ``dlclose``); then it is unmapped;
- ``lib.f is lib.f``; a global variable read and written through ``lib.var``.
"""
import gc
import os
import subprocess
import sys
import textwrap

import pytest

import _cffi_backend as B
# the stress suite's /proc/self/maps check and its wait for 3.13t's deferred frees
from stress.cffi_stress._support import is_mapped, settled

STEP3 = 3 in getattr(B, "__cffi_ft__", {}).get("steps", ())
pytestmark = pytest.mark.skipif(not STEP3, reason="backend without step 3 (lib-registry)")

C_SOURCE = """
int regvar = 41;
int twice(int x) { return 2 * x; }
int add3(int x) { return x + 3; }
"""
CDEF = """
extern int regvar;
int twice(int);
int add3(int);
enum { REG_K = 42 };
"""


@pytest.fixture(scope="module")
def libpath(tmp_path_factory):
    d = tmp_path_factory.mktemp("libreg")
    src = d / "libregtest.c"
    src.write_text(C_SOURCE)
    so = d / "libregtest.so"
    subprocess.run([os.environ.get("CC", "gcc"), "-shared", "-fPIC", "-O1", "-o", str(so),
                    str(src)], check=True)
    return str(so)


@pytest.fixture(scope="module")
def outofline_ffi(tmp_path_factory, libpath):
    """An out-of-line ABI module (the cffi1 Lib of ffi.dlopen), imported from its file."""
    import cffi
    d = tmp_path_factory.mktemp("libreg_ool")
    builder = cffi.FFI()
    builder.cdef(CDEF)
    builder.set_source("_libreg_abi", None)
    builder.emit_python_code(str(d / "_libreg_abi.py"))
    sys.path.insert(0, str(d))
    try:
        import _libreg_abi
    finally:
        sys.path.remove(str(d))
    return _libreg_abi.ffi


def wait_unmapped(path):
    """The last function died; on 3.13t queued reference counts may need a collection."""
    settled(lambda: not is_mapped(path))
    return not is_mapped(path)


def test_lib_closed_then_every_access_raises(outofline_ffi, libpath):
    ffi = outofline_ffi
    lib = ffi.dlopen(libpath)
    assert lib.twice(21) == 42
    assert lib.REG_K == 42
    assert lib.regvar == 41
    ffi.dlclose(lib)
    for name in ("twice", "add3", "regvar", "REG_K"):
        with pytest.raises(ffi.error) as e:
            getattr(lib, name)
        assert str(e.value) == "library '%s' has been closed" % libpath
    with pytest.raises(ffi.error):
        ffi.addressof(lib, "twice")
    ffi.dlclose(lib)   # does not raise
    assert wait_unmapped(libpath)


def test_function_fetched_before_dlclose_stays_callable(outofline_ffi, libpath):
    ffi = outofline_ffi
    lib = ffi.dlopen(libpath)
    f = lib.twice
    assert f is lib.twice
    g = ffi.addressof(lib, "add3")
    assert g is lib.add3
    ffi.dlclose(lib)
    del lib
    assert is_mapped(libpath), "unmapped while functions of it were alive"
    assert f(5) == 10 and g(5) == 8
    del f
    gc.collect()
    assert is_mapped(libpath), "unmapped while lib.add3 was alive"
    assert g(1) == 4
    del g
    assert wait_unmapped(libpath), "still mapped after its last function died"


def test_global_variable_keeps_its_library(outofline_ffi, libpath):
    ffi = outofline_ffi
    lib = ffi.dlopen(libpath)
    lib.regvar = 7
    assert lib.regvar == 7
    lib.regvar = 41
    ffi.dlclose(lib)
    assert wait_unmapped(libpath)


def test_clibrary_close_lib_is_deferred_past_its_functions(libpath):
    INT = B.new_primitive_type("int")
    FN = B.new_function_type((INT,), INT)
    dl = B.load_library(libpath)
    f = dl.load_function(FN, "twice")
    assert dl.read_variable(INT, "regvar") == 41
    dl.write_variable(INT, "regvar", 5)
    assert dl.read_variable(INT, "regvar") == 5
    dl.write_variable(INT, "regvar", 41)
    dl.close_lib()
    dl.close_lib()   # does not raise
    for call in (lambda: dl.load_function(FN, "twice"),
                 lambda: dl.read_variable(INT, "regvar"),
                 lambda: dl.write_variable(INT, "regvar", 1)):
        with pytest.raises(ValueError) as e:
            call()
        assert "has already been closed" in str(e.value)
    assert is_mapped(libpath)
    assert f(4) == 8
    del f
    assert wait_unmapped(libpath)


def test_inline_ffi_dlclose(libpath):
    """cffi's in-line ABI mode (cffi0's FFILibrary over CLibrary)."""
    import cffi
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    lib = ffi.dlopen(libpath)
    f = lib.twice
    assert f(3) == 6 and lib.regvar == 41
    ffi.dlclose(lib)
    with pytest.raises(ValueError):
        lib.add3
    assert f(3) == 6
    del f, lib
    assert wait_unmapped(libpath)


def test_no_crash_in_a_fresh_process_that_closes_under_its_threads(libpath, tmp_path):
    """8 threads call lib.twice in a loop while the main thread closes the Lib; run in
    its own process so that a crash fails this test only."""
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, cffi
        ffi = cffi.FFI()
        ffi.cdef("int twice(int);")
        path = sys.argv[1]
        for rnd in range(30):
            lib = ffi.dlopen(path)
            start = threading.Barrier(9)
            bad = []
            def body():
                start.wait()
                for i in range(2000):
                    try:
                        f = lib.twice
                    except ValueError:
                        return
                    if f(i) != 2 * i:
                        bad.append(i)
            ts = [threading.Thread(target=body) for _ in range(8)]
            for t in ts:
                t.start()
            start.wait()
            ffi.dlclose(lib)
            for t in ts:
                t.join()
            assert not bad, bad
        print("ok")
    """))
    env = dict(os.environ)
    out = subprocess.run([sys.executable, str(script), libpath], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])
