"""Step-0 promises, checked in a fresh interpreter each (so imports really happen):

- importing _cffi_backend, an API-mode module built by ffi.compile(), and a module
  built by the old ffi.verify() engine leaves the GIL disabled on a free-threaded build;
- _cffi_backend.__cffi_ft__ shows the Rust staticlib is linked and reports the steps;
- a GIL build is unaffected (the GIL is on, as always).

These tests fail on vanilla cffi 1.17.1: there is no __cffi_ft__, and on 3.13t the GIL
comes back at import.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest


def run_fresh(code, cwd):
    """Runs `code` in a new interpreter (PYTHON_GIL unset) and returns its JSON output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_backend_import_keeps_gil_state_and_reports_the_kit(tmp_path, free_threaded):
    out = run_fresh("""
        import json, sys, warnings
        warnings.simplefilter("error")   # the re-enable warning becomes an ImportError
        import _cffi_backend
        print(json.dumps({"gil": sys._is_gil_enabled(), "ft": _cffi_backend.__cffi_ft__,
                          "version": _cffi_backend.__version__}))
    """, tmp_path)
    assert out["gil"] is (not free_threaded)
    kit = out["ft"]
    assert kit["cffi_version"] == out["version"]
    assert kit["free_threaded"] is free_threaded
    assert kit["python"] == "%d.%d" % sys.version_info[:2]
    assert kit["steps"][0] == 0
    expected_step = int(os.environ.get("CFFI_FT_EXPECT_STEP", kit["steps"][-1]))
    assert kit["steps"][-1] == expected_step


def test_api_mode_module_keeps_gil_state(tmp_path, free_threaded):
    out = run_fresh("""
        import json, sys, warnings
        import cffi
        ffi = cffi.FFI()
        ffi.cdef("int add(int, int);")
        ffi.set_source("_cffi_ft_api_probe", "static int add(int a, int b) { return a + b; }")
        ffi.compile(tmpdir=".")
        sys.path.insert(0, ".")
        warnings.simplefilter("error")
        from _cffi_ft_api_probe import lib
        print(json.dumps({"gil": sys._is_gil_enabled(), "sum": lib.add(40, 2)}))
    """, tmp_path)
    assert out == {"gil": not free_threaded, "sum": 42}


def test_verify_engine_module_keeps_gil_state(tmp_path, free_threaded):
    out = run_fresh("""
        import json, sys, warnings
        import cffi
        warnings.simplefilter("error")
        ffi = cffi.FFI()
        ffi.cdef("int twice(int);")
        lib = ffi.verify("static int twice(int x) { return 2 * x; }", tmpdir=".")
        print(json.dumps({"gil": sys._is_gil_enabled(), "v": lib.twice(21)}))
    """, tmp_path)
    assert out == {"gil": not free_threaded, "v": 42}


def test_generated_modules_use_the_limited_api_only_with_the_gil(tmp_path, free_threaded):
    out = run_fresh("""
        import json, sys, cffi
        from cffi import setuptools_ext
        ffi = cffi.FFI()
        ffi.cdef("int is_limited(void);")
        ffi.set_source("_cffi_ft_abi_probe", '''
            #ifdef Py_LIMITED_API
            static int is_limited(void) { return 1; }
            #else
            static int is_limited(void) { return 0; }
            #endif
        ''')
        ffi.compile(tmpdir=".")
        sys.path.insert(0, ".")
        from _cffi_ft_abi_probe import lib
        kwds = setuptools_ext._set_py_limited_api(None, {})
        print(json.dumps({"c": lib.is_limited(), "setuptools": kwds.get("py_limited_api", False)}))
    """, tmp_path)
    # GIL builds keep 1.17.1's behaviour (limited API); free-threaded builds reject it
    assert out == {"c": int(not free_threaded), "setuptools": not free_threaded}
