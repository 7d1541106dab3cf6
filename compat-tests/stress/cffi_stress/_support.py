"""Helpers shared by the scenarios: fixtures, the thread racer, checks, sub-processes.

Nothing here imports cffi at module level (see the package docstring).
"""
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import types


class CrashInSubprocess(Exception):
    """A sub-process started by a scenario died from a signal or hung: the child reports
    it as a crash of the scenario, not as a broken invariant."""


def check(cond, msg, *args):
    if not cond:
        raise AssertionError(msg % args if args else msg)


def same_object(items, what):
    """All items are one object (identity)."""
    first = items[0]
    distinct = {id(x) for x in items}
    if len(distinct) != 1 or any(x is not first for x in items):
        raise AssertionError("%s: %d distinct objects across %d results (expected one): %s"
                             % (what, len(distinct), len(items),
                                ", ".join(sorted({repr(x)[:60] for x in items}))[:300]))
    return first


def all_equal(items, expected, what):
    for i, x in enumerate(items):
        if x != expected:
            raise AssertionError("%s: result %d is %r, expected %r"
                                 % (what, i, _short(x), _short(expected)))


def _short(x, n=300):
    r = repr(x)
    return r if len(r) <= n else r[:n] + "..."


# ---- fixtures ----------------------------------------------------------------------------

class Fixtures:
    """The session's fixture dir (built by _build.build_all)."""

    def __init__(self, path):
        self.dir = os.path.abspath(path)
        with open(os.path.join(self.dir, "fixtures.json")) as f:
            self.manifest = json.load(f)
        self.counts = types.SimpleNamespace(**self.manifest["counts"])
        self.helper = self.manifest["helper"]
        self.close = self.manifest["close"]
        self._code = {}
        if self.dir not in sys.path:
            sys.path.insert(0, self.dir)

    def code(self, name):
        """The compiled code of the generated ABI module ``name`` (compiled once)."""
        c = self._code.get(name)
        if c is None:
            path = os.path.join(self.dir, name + ".py")
            with open(path) as f:
                c = compile(f.read(), path, "exec")
            self._code[name] = c
        return c

    def abi(self, name="_stress_abi"):
        """A fresh FFI: executes the generated out-of-line ABI module again."""
        ns = {"__name__": name}
        exec(self.code(name), ns)
        return ns["ffi"]

    def abi_lib(self, name="_stress_abi", path=None):
        """A fresh (ffi, lib) pair: fresh FFI and a fresh ``ffi.dlopen`` Lib."""
        ffi = self.abi(name)
        return ffi, ffi.dlopen(path or self.helper)

    def abi_included(self):
        """Fresh (ffi1, ffi2) where the fresh ffi2 includes the fresh ffi1."""
        ffi1 = self.abi("_stress_inc1")
        mod = types.ModuleType("_stress_inc1")
        mod.ffi = ffi1
        saved = sys.modules.get("_stress_inc1")
        sys.modules["_stress_inc1"] = mod
        try:
            ffi2 = self.abi("_stress_inc2")
        finally:
            if saved is None:
                sys.modules.pop("_stress_inc1", None)
            else:
                sys.modules["_stress_inc1"] = saved
        return ffi1, ffi2

    def warm_lib(self, names=(), callback_types=()):
        """A fresh (ffi, lib) pair whose listed attributes and callback types are already
        realized (single-threaded), so that a scenario about something else does not also
        race on their first access."""
        ffi, lib = self.abi_lib()
        for n in names:
            getattr(lib, n)
        for t in callback_types:
            ffi.callback(t, lambda *a: 0)
        return ffi, lib

    def api(self, name):
        """The API-mode module ``name`` (compiled once per session; one per process)."""
        import importlib
        return importlib.import_module(name)


def backend():
    import _cffi_backend
    return _cffi_backend


def bare_ffi():
    """A fresh, empty cffi1 FFI (own types_dict, own init_once cache)."""
    return backend().FFI()


# ---- the racer -----------------------------------------------------------------------------

# Racer.sync(JITTER) / Racer.run(body, jitter=JITTER): alternate the two kinds of start
JITTER = True

class SpinBarrier:
    """A reusable barrier whose waiters spin (yielding the CPU) instead of sleeping, so
    that the threads on a CPU leave it at the same instant."""

    def __init__(self, n):
        self.n = n
        self._lock = threading.Lock()
        self._count = 0
        self._gen = 0
        self._aborted = False

    def wait(self):
        with self._lock:
            gen = self._gen
            self._count += 1
            last = self._count == self.n
            if last:
                self._count = 0
                self._gen = gen + 1
        if not last:
            while self._gen == gen:
                if self._aborted:
                    raise threading.BrokenBarrierError
                os.sched_yield()

    def abort(self):
        self._aborted = True

    def reset(self):
        """Only while nobody waits."""
        self._aborted = False
        self._count = 0


class Racer:
    """``n`` persistent worker threads. ``run(body)`` releases them together, each runs
    ``body(tid)``, and the results come back as a list (index = tid). An exception in any
    worker is re-raised in the caller, naming the thread.

    The start is two-stage: a blocking ``threading.Barrier``, then ``sync()``. Bodies call
    ``sync()`` themselves for a tight start per item (the same number of times in every
    worker). ``sync()`` is a spinning barrier (with sched_yield): the threads that are on
    a CPU leave it at the same instant, which is what two threads need to both miss a
    cache and both fill it. ``sync(True)`` (JITTER) alternates that with a blocking
    barrier, whose waiters wake up one after the other, microseconds apart, which is what
    a late thread needs to find an object another thread has published but not finished
    (measured on 2 cores: each kind catches failures the other misses).

    A broken backend can leave an exception set on a thread (for instance from a dealloc
    that runs when the thread merges queued reference counts); it then surfaces in any
    later call, also outside the body. A worker that dies that way is reported as the
    error of the round instead of leaving the caller waiting forever."""

    def __init__(self, n):
        self.n = n
        self._start = threading.Barrier(n + 1)
        self._spin = SpinBarrier(n)
        self._block = threading.Barrier(n)
        self._lock = threading.Lock()
        self._all_done = threading.Event()
        self._ndone = 0
        self._dead = None
        self._local = threading.local()
        self._jitter = False
        self._body = None
        self._stop = False
        self._results = [None] * n
        self._errors = [None] * n
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True,
                                          name="stress-%d" % i) for i in range(n)]
        for t in self._threads:
            t.start()

    def _loop(self, tid):
        try:
            while True:
                self._start.wait()
                if self._stop:
                    return
                self._local.tid = tid
                self._local.calls = 0
                try:
                    self.sync(self._jitter)
                    self._results[tid] = self._body(tid)
                except BaseException as e:
                    self._errors[tid] = (e, traceback.format_exc())
                    self._spin.abort()
                    self._block.abort()
                with self._lock:
                    self._ndone += 1
                    if self._ndone == self.n:
                        self._all_done.set()
        except BaseException as e:
            if self._stop and isinstance(e, threading.BrokenBarrierError):
                return
            if self._dead is None:
                self._dead = (tid, e, traceback.format_exc())
            self._spin.abort()
            self._block.abort()
            self._start.abort()
            self._all_done.set()

    def sync(self, jitter=False):
        """Barrier among the workers: spinning, or alternately blocking with ``jitter``."""
        k = self._local.calls
        self._local.calls = k + 1
        if jitter and k % 2:
            self._block.wait()
        else:
            self._spin.wait()

    @staticmethod
    def _error(tid, n, exc, tb, where=""):
        if isinstance(exc, CrashInSubprocess):
            return exc
        cls = AssertionError if isinstance(exc, AssertionError) else type(exc)
        msg = "thread %d of %d%s: %s: %s" % (tid, n, where, type(exc).__name__, exc)
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            # e.g. "SystemError: <f> returned a result with an exception set": the
            # exception an earlier call left behind
            msg += " (from %s: %s)" % (type(cause).__name__, cause)
        try:
            err = cls(msg)
        except Exception:
            err = AssertionError(msg)
        err.worker_traceback = tb
        return err

    def _raise_dead(self):
        tid, exc, tb = self._dead
        raise self._error(tid, self.n, exc, tb, " (outside the scenario body)")

    def run(self, body, jitter=False):
        if self._dead is not None:
            self._raise_dead()
        self._body = body
        self._jitter = jitter
        self._results = [None] * self.n
        self._errors = [None] * self.n
        self._spin.reset()
        self._block.reset()
        self._ndone = 0
        self._all_done.clear()
        try:
            self._start.wait()
        except threading.BrokenBarrierError:
            if self._dead is not None:
                self._raise_dead()
            raise
        self._all_done.wait()
        self._body = None
        errors = [(i, e) for i, e in enumerate(self._errors) if e is not None]
        self._errors = [None] * self.n
        if errors:
            # prefer a real error over the BrokenBarrierError of the others
            real = [x for x in errors if not isinstance(x[1][0], threading.BrokenBarrierError)]
            tid, (exc, tb) = (real or errors)[0]
            raise self._error(tid, self.n, exc, tb)
        if self._dead is not None:
            self._raise_dead()
        res = self._results
        self._results = [None] * self.n
        return res

    def close(self):
        self._stop = True
        try:
            self._start.wait()
        except threading.BrokenBarrierError:
            pass
        for t in self._threads:
            t.join()
        if self._dead is not None:
            self._raise_dead()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        # on an error, leave the daemon threads alone: the process is about to exit


def spawn_threads(n, target):
    """Runs target(i) in n new threads (not persistent) released at a barrier; returns
    the results; re-raises the first exception."""
    bar = threading.Barrier(n)
    spin = SpinBarrier(n)
    results = [None] * n
    errors = []

    def main(i):
        try:
            bar.wait()
            spin.wait()
            results[i] = target(i)
        except BaseException as e:
            errors.append((i, e, traceback.format_exc()))
            bar.abort()
            spin.abort()

    ts = [threading.Thread(target=main, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        real = [x for x in errors if not isinstance(x[1], threading.BrokenBarrierError)]
        i, e, tb = (real or errors)[0]
        err = AssertionError("thread %d of %d: %s: %s" % (i, n, type(e).__name__, e))
        err.worker_traceback = tb
        raise err
    return results


# ---- process facts -----------------------------------------------------------------------

def mapped_paths():
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def is_mapped(path):
    return os.path.realpath(path) in mapped_paths()


def rwx_anon_bytes():
    """Bytes of anonymous read-write-execute mappings (cffi's closure pages)."""
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if parts[1].startswith("rwx") and len(parts) < 6:
                a, b = parts[0].split("-")
                total += int(b, 16) - int(a, 16)
    return total


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return "signal %d" % -rc


def python_env():
    """The environment for sub-processes: PYTHON_GIL removed (so a free-threaded build
    runs with the GIL off unless an import turns it on), no .pyc files written.

    With CFFI_FT_STRESS_PYTHON_GIL=V in the environment, PYTHON_GIL=V instead: how
    `xtask stress` runs vanilla cffi 1.17.1 on 3.13t (V=0), whose modules would
    otherwise turn the GIL on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    forced = os.environ.get("CFFI_FT_STRESS_PYTHON_GIL")
    if forced:
        env["PYTHON_GIL"] = forced
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_python(code, args=(), timeout=20, cwd=None):
    """Runs ``code`` in a fresh interpreter (PYTHON_GIL unset). Returns stdout. Raises
    CrashInSubprocess on a signal or a hang, AssertionError on another non-zero exit."""
    cmd = [sys.executable, "-X", "faulthandler", "-c", code] + [str(a) for a in args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=python_env(), cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise CrashInSubprocess("hang: sub-process gave no exit after %s s; stderr tail: %s"
                                % (timeout, _tail(e.stderr)))
    if proc.returncode < 0:
        raise CrashInSubprocess("sub-process crashed: %s; stderr tail: %s"
                                % (signal_name(proc.returncode), _tail(proc.stderr)))
    if proc.returncode != 0:
        raise AssertionError("sub-process exit status %d: %s"
                             % (proc.returncode, _tail(proc.stderr, 1500)))
    return proc.stdout


def _tail(s, n=800):
    if s is None:
        return ""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    s = s.strip()
    return s[-n:]


def getrefcount(x):
    return sys.getrefcount(x) - 1


# How long a collection running in another thread may take to free what it merged.
# gc.collect() returns at once while another thread's collection is running (on 3.13t,
# often a worker's automatic one). That collection merges the reference counts queued
# for the objects' owner thread, keeps the objects that reached zero on a work list and
# deallocates them only after restarting the world: until then they still hold their
# references (and their weakrefs still resolve).
SETTLE_S = 5.0


def settled(condition):
    """Collects, then waits up to SETTLE_S for `condition()` to hold (holding none of
    the objects it is about). It only waits: the caller still makes its own check, which
    a condition that never holds fails."""
    deadline = time.monotonic() + SETTLE_S
    gc.collect()
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
        gc.collect()


_interp_dict = []


def interp_dict():
    """PyInterpreterState_GetDict() of this interpreter (the key cffi's extern "Python"
    cache uses), via ctypes from the standard library. ctypes takes a py_object result as
    a new reference, but this one is borrowed: the reference ctypes steals is given back
    once (and the result cached) so the dict's count stays right."""
    if not _interp_dict:
        import ctypes
        get = ctypes.pythonapi.PyInterpreterState_Get
        get.restype = ctypes.c_void_p
        get.argtypes = []
        getdict = ctypes.pythonapi.PyInterpreterState_GetDict
        getdict.restype = ctypes.py_object
        getdict.argtypes = [ctypes.c_void_p]
        incref = ctypes.pythonapi.Py_IncRef
        incref.restype = None
        incref.argtypes = [ctypes.py_object]
        d = getdict(get())
        incref(d)
        _interp_dict.append(d)
    return _interp_dict[0]
