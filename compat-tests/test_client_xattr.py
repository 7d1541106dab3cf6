"""A real cffi client under threads: xattr 1.3.0 (API mode, built from its sdist against
the patched cffi of this venv by `cargo xtask test-upstream --suites client-xattr`).

8 threads released together set, read, list and remove extended attributes on their
own files and on one shared file, many rounds; every value read back must be the one
written, and importing xattr must leave the GIL as it was.
"""
import os
import sys

import pytest

from client_threads import run_in_threads

xattr = pytest.importorskip("xattr")

THREADS = 8
ROUNDS = 300


def _supports_user_xattrs(path):
    try:
        os.setxattr(path, "user.cffi_ft_probe", b"1")
        os.removexattr(path, "user.cffi_ft_probe")
        return True
    except OSError:
        return False


def test_import_keeps_gil_state(free_threaded):
    assert sys._is_gil_enabled() is (not free_threaded)


def test_xattr_from_8_threads(tmp_path):
    shared = tmp_path / "shared"
    shared.write_bytes(b"")
    if not _supports_user_xattrs(str(shared)):
        pytest.skip("filesystem of %s has no user xattrs" % tmp_path)
    own = []
    for t in range(THREADS):
        f = tmp_path / ("own%d" % t)
        f.write_bytes(b"")
        own.append(str(f))

    def work(t, start):
        mine = xattr.xattr(own[t])
        everyone = xattr.xattr(str(shared))
        start()
        for r in range(ROUNDS):
            value = ("%d:%d" % (t, r)).encode()
            mine["user.round"] = value
            assert mine["user.round"] == value
            assert "user.round" in mine.list()
            key = "user.t%d" % t
            everyone[key] = value
            assert everyone[key] == value
            assert xattr.getxattr(own[t], "user.round") == value
            del mine["user.round"]
            assert "user.round" not in mine.list()

    errors = run_in_threads(THREADS, work)
    assert not errors, errors[:3]
    final = xattr.xattr(str(shared))
    for t in range(THREADS):
        assert final["user.t%d" % t] == ("%d:%d" % (t, ROUNDS - 1)).encode()
