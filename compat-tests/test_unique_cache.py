"""Step-1 promises about the unique ctype cache (skipped on backends without step 1).

- entries die with their ctypes: creating and dropping 10**6 distinct array types
  leaves the cache's entry count where it was and RSS flat;
- equal ctypes are the same object, also after the previous one died;
- primitive types and FILE exist once, from import on.
"""
import gc
import os

import pytest

import _cffi_backend as B

STEP1 = 1 in getattr(B, "__cffi_ft__", {}).get("steps", ())
pytestmark = pytest.mark.skipif(not STEP1, reason="backend without step 1 (ctype-intern)")


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_entries_die_with_their_ctypes_and_rss_stays_flat():
    p = B.new_pointer_type(B.new_primitive_type("char"))
    baseline = B.__cffi_ft_unique_cache_len__()
    # warm up allocator pools, then measure over 10**6 distinct array types
    for n in range(50_000):
        B.new_array_type(p, n)
    gc.collect()
    rss_before = rss_kib()
    for n in range(1_000_000):
        B.new_array_type(p, 10_000_000 + n)
    gc.collect()
    assert B.__cffi_ft_unique_cache_len__() == baseline
    grown = rss_kib() - rss_before
    # 10**6 ctypes + weakrefs + entries would be hundreds of MiB if they leaked
    assert grown < 16 * 1024, "RSS grew by %d KiB" % grown


def test_equal_ctypes_are_identical_and_recreated_after_death():
    p = B.new_pointer_type(B.new_primitive_type("int"))
    a = B.new_array_type(p, 7)
    assert B.new_array_type(p, 7) is a
    before = B.__cffi_ft_unique_cache_len__()
    del a
    gc.collect()
    assert B.__cffi_ft_unique_cache_len__() == before - 1
    b = B.new_array_type(p, 7)
    assert B.new_array_type(p, 7) is b
    f1 = B.new_function_type((p, b), p, False)
    assert B.new_function_type((p, b), p, False) is f1


def test_primitives_and_file_exist_once():
    import cffi
    ffi1, ffi2 = cffi.FFI(), cffi.FFI()
    for name in ("int", "char", "double", "_Bool", "size_t", "wchar_t", "char32_t"):
        assert ffi1.typeof(name) is ffi2.typeof(name) is B.new_primitive_type(name)
    assert ffi1.typeof("FILE *") is ffi2.typeof("FILE *")
