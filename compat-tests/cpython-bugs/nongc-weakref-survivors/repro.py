"""Reproducer, without cffi, for the s06 failures on CPython 3.13.5t (see README.md).

    python3.13t repro.py [ROUNDS]

Builds nongc.c (a static, non-GC C type with a weakref list and nothing else) into a
temporary directory, then runs the s06 loop with cffi's objects replaced: in every
round, 90 fresh objects (one in three a NonGC, the others GC-tracked Python objects);
4 threads make weakrefs with callbacks to all of them while 4 other threads drop the
last strong references; then gc.collect() and every weakref must be dead. The thread
harness is the stress suite's Racer (compat-tests/stress), which imports no cffi.

Exit status 0: no survivors; 1: some objects outlived their last reference (printed).
It fails in 2 to 4 runs of 10 here, in one round per failing run (the round where
CPython's automatic collection first runs in a worker thread), and only NonGC objects
survive. Run it several times.
"""
import collections
import gc
import os
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "stress"))
from cffi_stress._support import Racer, race_weakrefs_against_last_refs  # noqa: E402  (no cffi)


def build_module():
    out = tempfile.mkdtemp(prefix="nongc-")
    so = os.path.join(out, "nongc" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    subprocess.check_call(cc + ["-shared", "-fPIC", "-O2", "-I", sysconfig.get_paths()["include"],
                                os.path.join(HERE, "nongc.c"), "-o", so])
    sys.path.insert(0, out)
    import nongc
    return nongc


class GCObject:
    """A GC-tracked object that takes weakrefs (stands in for ctypes and buffers)."""
    __slots__ = ("v", "__weakref__")

    def __init__(self, v):
        self.v = v


def main(rounds):
    nongc = build_module()
    K, makers, droppers = 90, 4, 4
    bad = 0
    with Racer(makers + droppers) as r:
        for rnd in range(rounds):
            objs = [nongc.NonGC() if k % 3 == 1 else GCObject(k) for k in range(K)]
            wrs, _fired = race_weakrefs_against_last_refs(r, objs, makers)
            gc.collect()
            alive = [o for _, w in wrs for o in (w(),) if o is not None]
            if alive:
                bad += 1
                print("round %d: %d weakrefs still alive after the last reference went, to %s"
                      % (rnd, len(alive), dict(collections.Counter(type(o).__name__ for o in alive))))
            del alive, wrs, objs
    print("%d of %d rounds with survivors (Python %s, GIL %s)"
          % (bad, rounds, sys.version.split()[0],
             "on" if getattr(sys, "_is_gil_enabled", lambda: True)() else "off"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
