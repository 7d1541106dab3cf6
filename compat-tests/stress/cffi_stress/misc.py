"""misc scenarios (hazards F1-F13): research notes section 5, scenarios 1 and 36-42."""
import collections
import gc
import json
import os
import shutil
import tempfile
import threading

from . import scenario
from ._support import JITTER, Racer, check, getrefcount, run_python


_S01_CODE = r"""
import json, sys, sysconfig, threading, warnings
fixtures, helper, in_thread = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
out = {"ft": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
       "before": sys._is_gil_enabled()}

def work():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import _cffi_backend
        sys.path.insert(0, fixtures)
        import _stress_api_bad                  # a generated API-mode module
        ns = {"__name__": "_stress_abi"}
        with open(fixtures + "/_stress_abi.py") as f:
            exec(f.read(), ns)                  # an out-of-line ABI module
        lib = ns["ffi"].dlopen(helper)
        out["call"] = lib.stress_fn1(2) + _stress_api_bad.ffi.sizeof("int")
    out["warnings"] = [str(x.message) for x in w]
    out["after"] = sys._is_gil_enabled()

if in_thread:
    t = threading.Thread(target=work); t.start(); t.join()
else:
    work()
print(json.dumps(out))
"""


@scenario(1, "s01_gil_stays_off", ["F1"], rounds=2)
def s01(threads, rounds, fx):
    """In a fresh process (one per round; odd rounds import from a non-main thread), 1
    thread imports _cffi_backend and a generated API-mode module and execs an out-of-line
    ABI module, without PYTHON_GIL. Invariant: sys._is_gil_enabled() is unchanged by the
    imports (so False on a free-threaded build) and no warning was issued."""
    for rnd in range(rounds):
        out = json.loads(run_python(_S01_CODE, [fx.dir, fx.helper, rnd % 2])
                         .strip().splitlines()[-1])
        check(out["call"] == 2 * 4 + 1 + 4, "calls gave %r", out["call"])
        if out["ft"]:
            check(out["before"] is False, "the GIL was on before importing anything")
        check(out["after"] == out["before"], "importing cffi modules changed "
              "sys._is_gil_enabled() from %r to %r (warnings: %s)", out["before"],
              out["after"], out["warnings"])
        check(not out["warnings"], "warnings at import: %s", out["warnings"])


@scenario(36, "s36_gc_release_once", ["F3"], rounds=300)
def s36(threads, rounds, fx):
    """T threads release the same ffi.gc objects (64 per round) together (barrier per
    object), half with ffi.release(g), half by leaving ``with g:``. Even rounds use a C
    destructor that counts atomically, odd rounds a Python destructor recording which
    object it got.
    Invariant: every destructor runs exactly once, no crash."""
    ffi, lib = fx.warm_lib(["stress_count_free", "stress_free_count"], ["void(*)(void *)"])
    K = 64
    with Racer(threads) as r:
        for rnd in range(rounds):
            calls = []
            if rnd % 2 == 0:
                destructor = lib.stress_count_free
            else:
                destructor = lambda p: calls.append(int(ffi.cast("intptr_t", p)))
            objs = [ffi.gc(ffi.cast("void *", 0x10000 + k), destructor) for k in range(K)]
            before = lib.stress_free_count()

            def body(tid):
                for g in objs:
                    r.sync(JITTER)
                    if tid % 2 == 0:
                        ffi.release(g)
                    else:
                        with g:
                            pass
                return None

            r.run(body)
            if rnd % 2 == 0:
                n = lib.stress_free_count() - before
                check(n == K, "round %d: C destructor ran %d times for %d objects", rnd, n, K)
            else:
                cnt = collections.Counter(calls)
                bad = {hex(a): c for a, c in cnt.items() if c != 1}
                check(len(calls) == K and not bad, "round %d: Python destructor ran %d times "
                      "for %d objects; not once: %s", rnd, len(calls), K, list(bad.items())[:5])
            del objs
            gc.collect()
            if rnd % 2 == 0:
                n = lib.stress_free_count() - before
                check(n == K, "round %d: destructor ran again at dealloc (%d)", rnd, n)
            else:
                check(len(calls) == K, "round %d: destructor ran again at dealloc", rnd)


@scenario(37, "s37_allocator_with_once", ["F3"], rounds=100)
def s37(threads, rounds, fx):
    """T threads leave ``with p:`` on the same objects of ffi.new_allocator(alloc, free)
    ("struct inner *", 100 per round; barrier per object). Invariant: free is called
    exactly once per object and with the pointer alloc returned."""
    ffi = fx.abi()
    K = 100
    with Racer(threads) as r:
        for rnd in range(rounds):
            live = {}
            freed = []
            lock = threading.Lock()

            def alloc(size):
                buf = ffi.new("char[]", size)
                p = ffi.cast("void *", buf)
                with lock:
                    live[int(ffi.cast("intptr_t", p))] = buf
                return p

            def free(p):
                freed.append(int(ffi.cast("intptr_t", p)))

            new = ffi.new_allocator(alloc, free)
            objs = [new("struct inner *") for _ in range(K)]
            addrs = [int(ffi.cast("intptr_t", p)) for p in objs]

            def body(tid):
                for p in objs:
                    r.sync(JITTER)
                    with p:
                        pass
                return None

            r.run(body)
            cnt = collections.Counter(freed)
            check(sorted(cnt) == sorted(addrs) and all(c == 1 for c in cnt.values()),
                  "round %d: free() calls per object: %s", rnd,
                  sorted(collections.Counter(cnt.get(a, 0) for a in addrs).items()))
            del objs
            gc.collect()
            check(len(freed) == K, "round %d: free() ran again at dealloc", rnd)


@scenario(38, "s38_from_buffer_release_once", ["F4"], rounds=200)
def s38(threads, rounds, fx):
    """T threads ffi.release() the same ffi.from_buffer(bytearray) cdata (50 per round) at
    the same instant (barrier per object). Invariants: no crash; the bytearray's export count drops exactly once (a new
    memoryview locks it again, and after that it can be resized), and its reference count
    is back to what it was before from_buffer()."""
    ffi = fx.abi()
    K = 50
    with Racer(threads) as r:
        for rnd in range(rounds):
            bufs = [bytearray(b"x" * (16 + k)) for k in range(K)]
            rcs = [getrefcount(bufs[k]) for k in range(K)]
            cds = [ffi.from_buffer(bufs[k]) for k in range(K)]
            for k in range(3):
                try:
                    bufs[k].append(0)
                except BufferError:
                    pass
                else:
                    raise AssertionError("bytearray resizable while exported")

            def body(tid):
                for c in cds:
                    r.sync(JITTER)
                    ffi.release(c)
                return None

            r.run(body)
            del cds
            gc.collect()
            for k in range(K):
                rc = getrefcount(bufs[k])
                check(rc == rcs[k], "round %d: bytearray refcount %d, was %d before from_buffer",
                      rnd, rc, rcs[k])
                m = memoryview(bufs[k])
                try:
                    bufs[k].append(0)
                except BufferError:
                    pass
                else:
                    raise AssertionError("round %d: bytearray resizable while a memoryview "
                                         "exists: its export count was released twice" % rnd)
                m.release()
                bufs[k].append(0)


@scenario(39, "s39_init_once", ["F5"], rounds=300)
def s39(threads, rounds, fx):
    """T threads call ffi.init_once(func, tag) on a fresh FFI at the same instant. Rounds
    cycle through: func returns at once (late callers race with the replacement of the
    (False, lock) entry); func sleeps 2 ms (the others wait on its lock); func sleeps 2 ms
    and raises on its first call. Invariants: func runs once (twice when the first call raises: exactly one caller gets the
    exception), every other caller gets the same result object, no abort."""
    import time
    from ._support import bare_ffi
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = bare_ffi()
            runs = []
            failing = rnd % 3 == 2
            delay = 0.002 if rnd % 3 else 0

            def func():
                runs.append(threading.get_ident())
                if delay:
                    time.sleep(delay)
                if failing and len(runs) == 1:
                    raise ValueError("first call fails")
                return object()

            def body(tid):
                try:
                    return ("ok", ffi.init_once(func, "tag"))
                except ValueError as e:
                    return ("err", str(e))

            res = r.run(body, jitter=JITTER)
            oks = [v for k, v in res if k == "ok"]
            errs = [v for k, v in res if k == "err"]
            if failing:
                check(len(runs) == 2 and len(errs) == 1, "round %d: func ran %d times, %d "
                      "callers got its exception (expected 2 and 1)", rnd, len(runs), len(errs))
            else:
                check(len(runs) == 1 and not errs, "round %d: func ran %d times (expected 1), "
                      "%d errors", rnd, len(runs), len(errs))
            check(len({id(v) for v in oks}) == 1, "round %d: init_once returned %d different "
                  "objects", rnd, len({id(v) for v in oks}))
            check(ffi.init_once(func, "tag") is oks[0], "later init_once gave another result")


@scenario(40, "s40_file_object_as_FILE", ["F6"], rounds=300)
def s40(threads, rounds, fx):
    """T threads pass the same, fresh Python file object to a C function taking 'FILE *'
    at the same instant (first use: cffi makes a FILE and caches it on the object), 3
    writes each; 4 fresh file objects per round. Invariant: every call succeeds and every
    line lands in its file exactly once (none goes to a closed FILE)."""
    ffi, lib = fx.warm_lib(["stress_fputs"])
    FILES = 4
    tmp = tempfile.mkdtemp(prefix="cffi-stress-files-")
    try:
        with Racer(threads) as r:
            for rnd in range(rounds):
                paths = [os.path.join(tmp, "f%d-%d.txt" % (rnd, k)) for k in range(FILES)]
                files = [open(p, "ab") for p in paths]

                def body(tid):
                    rcs = []
                    for k, f in enumerate(files):
                        r.sync(JITTER)
                        for j in range(3):
                            rcs.append(lib.stress_fputs(b"r%d-f%d-t%d-l%d\n"
                                                        % (rnd, k, tid, j), f))
                    return rcs

                res = r.run(body)
                for f in files:
                    f.close()
                del files
                gc.collect()
                bad = [(t, x) for t, x in enumerate(res) if x != [0] * (3 * FILES)]
                check(not bad, "round %d: fputs/fflush to the FILE failed: %s", rnd, bad[:4])
                for k, p in enumerate(paths):
                    with open(p, "rb") as g:
                        lines = g.read().splitlines()
                    exp = sorted(b"r%d-f%d-t%d-l%d" % (rnd, k, t, j) for t in range(threads)
                                 for j in range(3))
                    check(sorted(lines) == exp, "round %d: file %d holds %d lines, %d "
                          "expected (missing %s)", rnd, k, len(lines), len(exp),
                          sorted(set(exp) - set(lines))[:4])
                    os.unlink(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@scenario(41, "s41_from_handle_lifetime", ["F7"], rounds=200)
def s41(threads, rounds, fx):
    """T/2 threads ffi.from_handle(p) on 20 handles while the owner keeps the handles and
    drops them only after joining them (correct usage). Invariant: from_handle always
    returns the original object; reference counts are back to normal afterwards."""
    ffi = fx.abi()
    K, ITER = 20, 100
    n = max(1, threads // 2)
    with Racer(n) as r:
        for rnd in range(rounds):
            objs = [object() for _ in range(K)]
            rcs = [getrefcount(objs[k]) for k in range(K)]
            handles = [ffi.new_handle(o) for o in objs]
            ptrs = [ffi.cast("void *", h) for h in handles]

            def body(tid):
                for it in range(ITER):
                    k = (it + tid) % K
                    if ffi.from_handle(ptrs[k]) is not objs[k]:
                        raise AssertionError("from_handle returned another object")
                return None

            r.run(body)
            del handles, ptrs
            gc.collect()
            for k in range(K):
                rc = getrefcount(objs[k])
                check(rc == rcs[k], "round %d: refcount %d, was %d", rnd, rc, rcs[k])


@scenario(42, "s42_shared_array_iterator", ["F9"], rounds=300)
def s42(threads, rounds, fx):
    """T threads iterate one shared iterator over a cdata array (of 2000 ints, followed in
    memory by sentinels). Invariants: every item is one of the array's values (never a
    sentinel: no out-of-bounds read), and between them the threads get each item exactly
    once (none taken twice, none skipped)."""
    ffi = fx.abi()
    N = 2000
    with Racer(threads) as r:
        for rnd in range(rounds):
            big = ffi.new("int[%d]" % (N + 16), list(range(1, N + 1)) + [-7] * 16)
            arr = ffi.cast("int(*)[%d]" % N, big)[0]
            it = iter(arr)

            def body(tid):
                return [x for x in it]

            res = r.run(body)
            got = collections.Counter()
            for lst in res:
                got.update(lst)
            bad = sorted(x for x in got if not 1 <= x <= N)
            check(not bad, "round %d: iterator produced values outside the array: %s", rnd, bad[:5])
            twice = sorted(x for x, c in got.items() if c > 1)
            missing = N - len(got)
            check(not twice and not missing, "round %d: the shared iterator gave %d items "
                  "more than once (e.g. %s) and skipped %d", rnd, len(twice), twice[:5], missing)
