"""callbacks scenarios (hazards C1-C7, and E3/E4 through scenario 16): research notes
section 5, scenarios 14-20, and s44 (a call through a freed callback's pointer)."""
import gc
import json
import os
import random
import threading
import time

from . import scenario
from ._support import (JITTER, Racer, check, getrefcount, interp_dict,
                       rss_bytes, run_python, rwx_anon_bytes)


def _mk(tag):
    def f(x):
        return (x * 3 + tag) & 0x3fffffff
    return f


@scenario(14, "s14_callback_create_call_drop", ["C1"], rounds=120)
def s14(threads, rounds, fx):
    """T threads loop: create 4 ffi.callback("int(int)", f_i) with thread- and
    iteration-specific f_i, call each through the cdata and through a C helper, drop them.
    Invariant: every call returns its own f_i's result; no crash."""
    ffi, lib = fx.warm_lib(["stress_call_int"], ["int(int)"])
    ITER = 300
    with Racer(threads) as r:
        for rnd in range(rounds):
            def body(tid):
                for it in range(ITER):
                    cbs = []
                    for k in range(4):
                        f = _mk(tid * 100003 + it * 4 + k)
                        cbs.append((ffi.callback("int(int)", f), f))
                    for cb, f in cbs:
                        exp = f(5)
                        got1, got2 = cb(5), lib.stress_call_int(cb, 5)
                        if got1 != exp or got2 != exp:
                            raise AssertionError("callback of thread %d called %r/%r via "
                                                 "cdata/C, expected %r" % (tid, got1, got2, exp))
                    del cbs
                return None
            r.run(body)


@scenario(15, "s15_callback_churn_vs_c_calls", ["C1", "C7"], rounds=10)
def s15(threads, rounds, fx):
    """T threads create and drop 10^4 callbacks per round, 10^5 at the defaults (at most 8
    alive per thread), while T other threads call 32 long-lived callbacks from C in loops.
    Invariants: every C call reaches its own callback (exact sums), every new callback
    calls its own function, and the read-write-execute closure memory does not grow by
    more than 256 KiB (the pool was warmed up to the peak number of live closures)."""
    ffi, lib = fx.warm_lib(["stress_call_int", "stress_call_n"], ["int(int)"])
    LIVE = 32
    per_thread_round = max(1, 10000 // threads)     # 10^4 per round, 10^5 at the defaults
    live_fs = [_mk(1000 + k) for k in range(LIVE)]
    live = [ffi.callback("int(int)", f) for f in live_fs]
    warm = [ffi.callback("int(int)", _mk(0)) for _ in range(threads * 8 + 64)]
    del warm
    gc.collect()
    rwx0 = rwx_anon_bytes()
    with Racer(2 * threads) as r:
        for rnd in range(rounds):
            done = [0]
            lock = threading.Lock()

            def body(tid):
                if tid < threads:
                    rng = random.Random(rnd * 100 + tid)
                    alive = []
                    try:
                        for it in range(per_thread_round):
                            f = _mk(tid * 1000003 + it)
                            cb = ffi.callback("int(int)", f)
                            got = lib.stress_call_int(cb, 7)
                            if got != f(7):
                                raise AssertionError("new callback reached another function: "
                                                     "%r, expected %r" % (got, f(7)))
                            alive.append(cb)
                            if len(alive) > 8 or rng.random() < 0.5:
                                alive.pop(rng.randrange(len(alive)))
                        del alive
                    finally:
                        with lock:
                            done[0] += 1
                    return None
                rng = random.Random(rnd * 100 + tid)
                calls = 0
                while done[0] < threads or calls < 20:
                    k = rng.randrange(LIVE)
                    x = rng.randrange(1000)
                    got = lib.stress_call_n(live[k], x, 20)
                    exp = sum(live_fs[k](x + i) for i in range(20))
                    if got != exp:
                        raise AssertionError("C calls of live callback %d summed to %r, "
                                             "expected %r" % (k, got, exp))
                    calls += 1
                return calls

            r.run(body)
    gc.collect()
    rwx1 = rwx_anon_bytes()
    check(rwx1 - rwx0 <= 256 * 1024, "closure memory grew from %d to %d bytes (pool "
          "warmed up to the peak of live closures; lost free-list entries?)", rwx0, rwx1)


@scenario(16, "s16_foreign_pthread_callbacks", ["C2", "E3", "E4"], rounds=5)
def s16(threads, rounds, fx):
    """A C helper spawns 200 short-lived pthreads per round, 1000 at the defaults (16
    alive at a time), each invoking a callback once (each gets a new Python thread state,
    left as a zombie when the thread ends and reaped later from another thread). The callback allocates a list
    (owned by that short-lived thread state) and hands it to T/2 Python threads, which
    check it, share it and drop it, while allocating and sharing objects of their own.
    Invariants: the exact sum of the callback results, every handed-over list intact and
    consumed once, no crash, memory bounded (RSS growth after the first round under
    64 MiB; needs 2 rounds or more), and the process exits (a hang at exit is reported by
    the parent). On free-threaded builds also: once a round's foreign threads have been
    joined, the interpreter has exactly as many thread states as before the round (E3:
    a state left for another thread to reap owns the dead thread's refcount queue and
    heaps; 1.17.1 kept the last ones until a later foreign callback). GIL builds keep
    1.17.1's zombie list by design (reaping from another thread is harmless there), so
    the count is not checked on them."""
    import collections
    import sysconfig
    ffi, lib = fx.warm_lib(["stress_spawn_calls"], ["int(int)"])
    count_states = None
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        count_states = fx.api("_stress_api_xp").lib.xp_thread_states
    box = collections.deque()

    def callback(x):
        box.append([x, x * 2, "item-%d" % x])
        return x * 3 + 1

    cb = ffi.callback("int(int)", callback)
    pythreads = max(1, threads // 2)
    per_round = 200                      # 1000 foreign threads at the default 5 rounds
    rss_after_first = None
    with Racer(pythreads + 1) as r:
        for rnd in range(rounds):
            base = rnd * per_round
            stop = threading.Event()
            shared = []

            def consume(seen):
                try:
                    item = box.popleft()
                except IndexError:
                    return False
                x = item[0]
                if item != [x, x * 2, "item-%d" % x] or not base <= x < base + per_round:
                    raise AssertionError("object made by a foreign thread is damaged: %r"
                                         % (item,))
                seen.append(x)
                return True

            states_before = []

            def body(tid):
                if tid == pythreads:
                    try:
                        if count_states is not None:   # every Racer thread is alive now
                            states_before.append(count_states())
                        return lib.stress_spawn_calls(cb, per_round, 16, base)
                    finally:
                        stop.set()
                rng = random.Random(tid + rnd * 31)
                seen = []
                n = 0
                while not stop.is_set() or n < 100:
                    consume(seen)
                    obj = {"tid": tid, "n": n, "payload": [n] * rng.randrange(1, 20)}
                    shared.append(obj)
                    if len(shared) > 64:
                        try:
                            other = shared.pop(0)
                        except IndexError:
                            other = None
                        if other is not None:
                            other["seen"] = tid
                    n += 1
                return seen

            res = r.run(body)
            if count_states is not None:
                after = count_states()
                check(after == states_before[0], "round %d: %d thread states after %d "
                      "foreign threads ended, %d before them (states of ended threads "
                      "left for another thread to reap)", rnd, after, per_round,
                      states_before[0])
            exp = sum(3 * (base + k) + 1 for k in range(per_round))
            check(res[pythreads] == exp, "round %d: sum of callback results from C threads "
                  "is %r, expected %r", rnd, res[pythreads], exp)
            seen = [x for lst in res[:pythreads] for x in lst]
            while box:
                seen.append(box.popleft()[0])
            check(sorted(seen) == list(range(base, base + per_round)), "round %d: objects "
                  "handed over by the callbacks: %d, expected %d (duplicates or losses)",
                  rnd, len(seen), per_round)
            del shared, res, seen
            gc.collect()
            if rnd == 0:
                rss_after_first = rss_bytes()
    growth = rss_bytes() - rss_after_first
    check(growth < 64 * 2 ** 20, "RSS grew by %d MiB over %d foreign threads",
          growth // 2 ** 20, per_round * (rounds - 1))


def _xp(which):
    def f(x):
        return x * 5 + which
    return f


@scenario(17, "s17_extern_python_first_call", ["C3"], rounds=180)
def s17(threads, rounds, fx):
    """Per round, for 4 fresh extern "Python" functions of _stress_api_xp: @ffi.def_extern,
    then 2*T C threads (released by a pthread barrier; for every other function they have
    already called another extern "Python" function, so they hold a Python thread state
    and race without creating one) make the first call simultaneously. Invariants: every
    call returns the right value; the reference counts of the info tuple and of
    PyInterpreterState_GetDict() change exactly as for a control function whose first call
    was made by one C thread."""
    c = fx.counts
    api = fx.api("_stress_api_xp")
    ffi, lib = api.ffi, api.lib
    nC = 2 * threads
    idict = interp_dict()
    results = ffi.new("int[]", nC)

    def register(n):
        before = set(idict.get("__cffi_backend_extern_py", {}))
        ffi.def_extern(name="xp%d" % n)(_xp(n))
        ext = idict["__cffi_backend_extern_py"]
        new = [k for k in ext if k not in before]
        check(len(new) == 1, "def_extern added %d entries", len(new))
        return ext[new[0]]

    def first_call(n, nthreads, warm):
        info = register(n)
        gc.collect()
        rc_i, rc_t = getrefcount(idict), getrefcount(info)
        err = lib.xp_race(n, warm, nthreads, 100, results)
        check(err == 0, "xp_race failed: %d", err)
        for i in range(nthreads):
            check(results[i] == _xp(n)(100 + i), "xp%d(%d) from C thread %d gave %r",
                  n, 100 + i, i, results[i])
        gc.collect()
        return getrefcount(idict) - rc_i, getrefcount(info) - rc_t

    warm = c.NXP - 3
    ffi.def_extern(name="xp%d" % warm)(_xp(warm))
    check(lib.xp_call(warm, 1) == _xp(warm)(1), "warm-up call")   # fills its cache
    ctrl = c.NXP - 1
    d_ctrl = first_call(ctrl, 1, warm)
    per_round = 4
    usable = c.NXP - 20
    for rnd in range(rounds):
        for j in range(per_round):
            n = (rnd * per_round + j) % usable
            d = first_call(n, nC, warm if j % 2 == 0 else -1)
            check(d == d_ctrl, "xp%d: first calls from %d C threads changed the refcounts of "
                  "(interp dict, info tuple) by %s; one C thread changes them by %s",
                  n, nC, d, d_ctrl)


@scenario(18, "s18_extern_python_reregister", ["C3", "C4"], rounds=8)
def s18(threads, rounds, fx):
    """T C threads call one extern "Python" function in a loop while 1 Python thread
    re-registers it with @ffi.def_extern, alternating two functions (2500 times per round,
    2*10^4 per run at the defaults; after each it sleeps 50 us so that C threads race each
    other on the cache update). Invariants: every result comes from one of the two functions (the C side counts the
    others), no crash, and the reference counts of the interp dict, the extern-Python dict
    and the current info tuple are the same after every round."""
    c = fx.counts
    api = fx.api("_stress_api_xp")
    ffi, lib = api.ffi, api.lib
    which = c.NXP - 2
    name = "xp%d" % which
    f1 = lambda x: 2 * x + 1
    f2 = lambda x: 3 * x + 2
    idict = interp_dict()
    REG = 2500

    def settle():
        ffi.def_extern(name=name)(f1)
        check(lib.xp_call(which, 10) == 21, "xp_call after def_extern")
        gc.collect()
        ext = idict["__cffi_backend_extern_py"]
        infos = [v for v in ext.values() if v is not None]
        return getrefcount(idict), getrefcount(ext), sorted(getrefcount(v) for v in infos)

    start = settle()
    with Racer(2) as r:
        for rnd in range(rounds):
            stop = threading.Event()

            def body(tid):
                if tid == 0:
                    bad = 0
                    while not stop.is_set():
                        bad += lib.xp_loop(which, threads, 200, 2, 1, 3, 2)
                    return bad
                try:
                    for k in range(REG):
                        ffi.def_extern(name=name)(f2 if k % 2 else f1)
                        time.sleep(0.00005)     # leave both CPUs to the C threads
                finally:
                    stop.set()
                return None

            res = r.run(body)
            check(res[0] == 0, "round %d: %d calls from C threads returned a value of neither "
                  "registered function", rnd, res[0])
            now = settle()
            check(now == start, "round %d: refcounts (interp dict, extern dict, info tuples) "
                  "went from %s to %s", rnd, start, now)


_S19_CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from cffi_stress._support import Fixtures, spawn_threads, interp_dict
fx = Fixtures(sys.argv[2])
T, first, inner = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
api = fx.api("_stress_api_xp")
ffi, lib = api.ffi, api.lib
idict = interp_dict()
out = []
for rnd in range(inner):
    if rnd:
        # back to the state of a fresh interpreter: no extern-Python dict yet
        del idict["__cffi_backend_extern_py"]

    def work(tid, rnd=rnd):
        n = first + tid
        ffi.def_extern(name="xp%d" % n)(lambda x: x * 7 + n + 1000 * rnd)

    spawn_threads(T, work)
    ext = idict.get("__cffi_backend_extern_py", {})
    out.append({"results": [lib.xp_call(first + t, 5) for t in range(T)],
                "entries": len(ext)})
print(json.dumps(out))
"""


@scenario(19, "s19_def_extern_fresh_process", ["C5"], rounds=8)
def s19(threads, rounds, fx):
    """Each round is a fresh process in which T threads run @ffi.def_extern on T
    different extern "Python" functions simultaneously (the per-interpreter dict is created
    lazily by the first one). Inside each process this is repeated 40 times, deleting the
    dict from PyInterpreterState_GetDict() in between (the state of a fresh interpreter).
    Invariant: all T are callable from C afterwards with the right result, and the dict
    holds T entries."""
    c = fx.counts
    first = c.NXP - 20 + 2
    T = min(threads, 16)
    inner = 40
    stress_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rnd in range(rounds):
        outs = json.loads(run_python(_S19_CODE, [stress_dir, fx.dir, T, first, inner])
                          .strip().splitlines()[-1])
        for k, out in enumerate(outs):
            exp = [5 * 7 + first + t + 1000 * k for t in range(T)]
            check(out["results"] == exp, "process %d, repetition %d: calls after concurrent "
                  "def_extern gave %s, expected %s", rnd, k, out["results"], exp)
            check(out["entries"] == T, "process %d, repetition %d: extern-Python dict has %d "
                  "entries, expected %d", rnd, k, out["entries"], T)


@scenario(20, "s20_shared_callback_decorator", ["C6"], rounds=40)
def s20(threads, rounds, fx):
    """T threads use one ``ffi.callback("int(int)")`` decorator object (fresh each round)
    on thread-specific functions. Invariant: each resulting callback calls its own
    function, through the cdata and from C. All threads decorate at the same instant
    (spinning barrier per decoration)."""
    ffi, lib = fx.warm_lib(["stress_call_int"], ["int(int)"])
    ITER = 400
    with Racer(threads) as r:
        for rnd in range(rounds):
            dec = ffi.callback("int(int)")

            def body(tid):
                for it in range(ITER):
                    f = _mk(tid * 100003 + it)
                    r.sync(JITTER)
                    cb = dec(f)
                    a, b = cb(4), lib.stress_call_int(cb, 4)
                    if a != f(4) or b != f(4):
                        raise AssertionError("callback made by the shared decorator in thread "
                                             "%d calls another function: %r/%r, expected %r"
                                             % (tid, a, b, f(4)))
                return None

            r.run(body)


@scenario(44, "s44_freed_callback_pointer", ["C7"], rounds=20)
def s44(threads, rounds, fx):
    """T threads loop: create ``ffi.callback("int(int)")`` with a thread- and
    iteration-specific function, call it through a function pointer cast from its
    address, drop it (the last reference: it is freed at once), then call the stale
    address again, 200 times per round. Invariants: the live call returns its own
    function's result; every call through a freed callback's pointer returns 0 and
    reports exactly one "callback called after it was freed" error to
    ``sys.unraisablehook`` in the calling thread, instead of running another thread's
    function or crashing (in 1.17.1 the freed block's first word becomes the free-list
    link)."""
    import sys
    ffi, lib = fx.warm_lib([], ["int(int)"])
    fnptr = ffi.typeof("int(*)(int)")
    reports = {}
    lock = threading.Lock()

    def hook(unraisable):
        with lock:
            reports.setdefault(threading.get_ident(), []).append(str(unraisable.exc_value))

    def body(tid):
        me = threading.get_ident()
        for k in range(200):
            tag = (tid << 12) | k
            cb = ffi.callback("int(int)", _mk(tag))
            address = int(ffi.cast("intptr_t", cb))
            live = ffi.cast(fnptr, address)(k)
            check(live == _mk(tag)(k), "thread %d: live callback gave %r, expected %r",
                  tid, live, _mk(tag)(k))
            del cb
            with lock:
                before = len(reports.get(me, ()))
            stale = ffi.cast(fnptr, address)(k)
            with lock:
                new = reports.get(me, [])[before:]
            check(stale == 0, "thread %d: the freed callback's pointer returned %r (another "
                  "callback's result?), expected 0", tid, stale)
            check(len(new) == 1 and "called after it was freed" in new[0], "thread %d: the "
                  "call through a freed callback reported %r to sys.unraisablehook", tid, new)

    saved = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        with Racer(threads) as r:
            for _ in range(rounds):
                r.run(body)
    finally:
        sys.unraisablehook = saved
