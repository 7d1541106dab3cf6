"""unique-cache scenarios (hazards A1-A9): research notes section 5, scenarios 2-6."""
import json
import os
import random
import weakref

from . import scenario
from ._support import (SETTLE_S, JITTER, Racer, backend, bare_ffi, check, run_python,
                       same_object, settled)


@scenario(2, "s02_array_type_churn", ["A1", "A2", "A3", "A5"], rounds=100)
def s02(threads, rounds, fx):
    """T threads loop new_array_type(char *, n) over a small shared range of n, creating
    and dropping the types (8 keys are only churned, 8 are also held for a while). Every
    round shifts the range (64 ranges in a cycle), so no key is alive when a round starts.
    Invariant: no crash, every result has the
    right length and name, and the live results for one n are one object across threads."""
    B = backend()
    P = B.new_pointer_type(B.new_primitive_type("char"))
    ITER = 600
    with Racer(threads) as r:
        for rnd in range(rounds):
            base = 1000 + 16 * (rnd % 64)

            def body(tid):
                rng = random.Random(rnd * 7919 + tid)
                held = {}
                for it in range(ITER):
                    for n in range(base, base + 8):
                        t = B.new_array_type(P, n)
                        if t.length != n:
                            raise AssertionError("new_array_type(char *, %d) has length %r"
                                                 % (n, t.length))
                        del t
                    n = base + 8 + rng.randrange(8)
                    if rng.random() < 0.35:
                        held.pop(n, None)
                    else:
                        held[n] = B.new_array_type(P, n)
                return held

            res = r.run(body)
            for n in range(base + 8, base + 16):
                objs = [h[n] for h in res if n in h]
                if objs:
                    objs.append(B.new_array_type(P, n))
                    t = same_object(objs, "live new_array_type(char *, %d)" % n)
                    check(t.cname == "char[%d]" % n, "bad cname %r for n=%d", t.cname, n)
            del res


@scenario(3, "s03_addressof_pointer_churn", ["A1", "A5"], rounds=60)
def s03(threads, rounds, fx):
    """T threads loop ffi.addressof(x) on struct cdata x (the field 'leaf' of a
    'struct wrap<i>'; nothing else keeps the type 'struct leaf<i> *' alive, so it is
    created and destroyed all the time) while T other threads drop and recreate the
    'struct wrap<i>' objects. Fresh ABI FFI every round. Invariant: two addressof() of one
    x have one ctype, its item is typeof(x), and kept pointers of one struct type share
    one ctype across threads."""
    N = fx.counts.N_S
    ITER = 1500
    with Racer(2 * threads) as r:
        for rnd in range(rounds):
            ffi = fx.abi()
            shared = [ffi.new("struct wrap%d *" % i) for i in range(N)]

            def body(tid):
                if tid >= threads:
                    for it in range(ITER):
                        i = (it + tid) % N
                        shared[i] = ffi.new("struct wrap%d *" % i, {"leaf": {"v": it}})
                    return None
                keep = []
                for it in range(ITER):
                    i = (it + tid) % N
                    w = shared[i]
                    x = w.leaf
                    a = ffi.addressof(x)
                    b = ffi.addressof(x)
                    ta, tb = ffi.typeof(a), ffi.typeof(b)
                    if ta is not tb:
                        raise AssertionError("typeof(addressof(x)) is not typeof(addressof(x)):"
                                             " %r vs %r" % (ta, tb))
                    if ta.item is not ffi.typeof(x):
                        raise AssertionError("addressof(x) has item type %r, x is %r"
                                             % (ta.item, ffi.typeof(x)))
                    if ta.cname != "struct leaf%d *" % i:
                        raise AssertionError("addressof gave ctype %r" % (ta.cname,))
                    if it % 50 == tid % 50:
                        keep.append((i, a, w))
                    del a, b, ta, tb, x, w
                return keep

            res = r.run(body)
            by_i = {}
            for lst in res:
                for i, a, w in lst or ():
                    by_i.setdefault(i, []).append(ffi.typeof(a))
            for i, types in by_i.items():
                same_object(types, "ctype of kept addressof(struct leaf%d)" % i)
            del res, by_i, shared


@scenario(4, "s04_function_type_from_scratch", ["A5"], rounds=600)
def s04(threads, rounds, fx):
    """T threads build the same function types simultaneously, from scratch each round:
    new_function_type((int, long), int) (dropped by everybody at the end of each round)
    and 24 signatures that use argument types created fresh for the round. Invariant: for
    each signature the T results are one object."""
    B = backend()
    INT, LONG = B.new_primitive_type("int"), B.new_primitive_type("long")
    PINT = B.new_pointer_type(INT)
    with Racer(threads) as r:
        for rnd in range(rounds):
            sigs = [((INT, LONG), INT, 0), ((INT, LONG), INT, 1)]
            for j in range(8):
                fresh = B.new_pointer_type(B.new_array_type(PINT, 1 + rnd * 8 + j))
                sigs.append(((INT, LONG, fresh), INT, 0))
                sigs.append(((fresh,), fresh, 0))
                sigs.append(((fresh, fresh, INT), LONG, 1))

            def body(tid):
                order = list(range(len(sigs)))
                if tid % 2:
                    order.reverse()
                out = [None] * len(sigs)
                for k in order:
                    a, res, ell = sigs[k]
                    out[k] = B.new_function_type(a, res, ell)
                return out

            res = r.run(body, jitter=JITTER)
            for k in range(len(sigs)):
                same_object([x[k] for x in res], "new_function_type #%d (%s)"
                            % (k, res[0][k].cname))
            del res, sigs


# ---- scenario 5: fresh processes --------------------------------------------------------

_S05_CODE = r"""
import gc, json, sys, threading
sys.path.insert(0, sys.argv[1])
from cffi_stress._support import Fixtures, spawn_threads, getrefcount
fx = Fixtures(sys.argv[2])
T = int(sys.argv[3])
names = json.loads(sys.argv[4])
import _cffi_backend as B
pairs = [fx.abi_lib() for _ in range(T)]     # fresh FFI + Lib per thread; nothing realized yet

def work(tid):
    ffi, lib = pairs[tid]
    k = len(names)
    got = [ffi.typeof(names[(i + tid * 7) % k]) for i in range(k)]
    got = [got[(j - tid * 7) % k] for j in range(k)]     # back in name order
    f = ffi.typeof("FILE *")
    # variadic call with small ints: uses the lazy static ct_int (A7)
    s = lib.stress_vsum(3, ffi.cast("short", 1), ffi.cast("char", 2), ffi.cast("signed char", 3))
    return got, f, s

if sys.argv[5] == "threads":
    res = spawn_threads(T, work)
else:                                        # the same work, one item after the other
    res = [work(tid) for tid in range(T)]
out = {"identity": [], "file": None, "vsum": [r[2] for r in res]}
for j, n in enumerate(names):
    ids = {id(r[0][j]) for r in res}
    if len(ids) != 1:
        out["identity"].append(n)
if len({id(r[1]) for r in res}) != 1 or len({id(r[1].item) for r in res}) != 1:
    out["file"] = "%d distinct 'FILE *' ctypes" % len({id(r[1]) for r in res})
del res, pairs, work
gc.collect()
ref = B.FFI()
out["refcounts"] = {n: getrefcount(ref.typeof(n)) for n in names + ["FILE *"]}
print(json.dumps(out))
"""


@scenario(5, "s05_primitives_fresh_process", ["A6", "A7", "A8"], rounds=20)
def s05(threads, rounds, fx):
    """Each round is a fresh process in which T threads (own fresh FFI each) call
    ffi.typeof() on all primitive names plus 'FILE *', and make a variadic call with
    short/char cdata (the lazy 'int' ctype of A7). Invariants: identical objects across
    threads, and the reference counts of the primitive ctypes afterwards are exactly those
    of a process doing the same work items one after the other in one thread (a lost race
    leaks a reference)."""
    from cffi import model
    names = sorted(model.PrimitiveType.ALL_PRIMITIVE_TYPES)
    stress_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = lambda mode: [stress_dir, fx.dir, threads, json.dumps(names), mode]
    base = json.loads(run_python(_S05_CODE, args("sequential")).strip().splitlines()[-1])
    for rnd in range(rounds):
        out = json.loads(run_python(_S05_CODE, args("threads")).strip().splitlines()[-1])
        check(not out["identity"], "process %d: primitive ctypes differ across threads: %s",
              rnd, out["identity"][:10])
        check(out["file"] is None, "process %d: %s", rnd, out["file"])
        check(all(v == 6 for v in out["vsum"]), "process %d: variadic sums %s", rnd, out["vsum"])
        diff = {n: (base["refcounts"][n], c) for n, c in out["refcounts"].items()
                if c != base["refcounts"][n]}
        check(not diff, "process %d: refcounts (single-threaded, threaded) differ: %s",
              rnd, dict(list(diff.items())[:10]))


@scenario(6, "s06_weakrefs_vs_last_ref", ["A9", "F8"], rounds=300)
def s06(threads, rounds, fx):
    """Half the threads create weakrefs (with callbacks) to fresh ctypes, cdata and
    ffi.buffer objects while the other half drop the last strong references. Invariant:
    no crash; afterwards (once a collection still running in another thread has had
    time to finish, see SETTLE_S) every weakref is dead and its callback ran exactly
    once."""
    import collections
    B = backend()
    ffi = bare_ffi()
    P = B.new_pointer_type(B.new_primitive_type("char"))
    K = 90
    makers = max(1, threads // 2)
    droppers = max(1, threads - makers)
    with Racer(makers + droppers) as r:
        for rnd in range(rounds):
            objs = []
            for k in range(K):
                kind = k % 3
                if kind == 0:
                    objs.append(B.new_array_type(P, 100000 + rnd * K + k))
                elif kind == 1:
                    objs.append(ffi.new("int[4]"))
                else:
                    objs.append(ffi.buffer(ffi.new("char[8]")))
            fired = []

            def body(tid):
                mine = []
                if tid < makers:
                    for k in range(K):
                        o = objs[k]
                        if o is not None:
                            mine.append(weakref.ref(o, lambda w, k=k, t=tid: fired.append((k, t))))
                        del o
                else:
                    for k in range(tid - makers, K, droppers):
                        objs[k] = None
                return mine

            res = r.run(body)
            wrs = [(tid, w) for tid, lst in enumerate(res) for w in lst]
            check(all(o is None for o in objs), "objects left")
            # A collection still running in another thread frees what it merged (and
            # runs the weakref callbacks) only after restarting the world: give it time,
            # holding none of the objects (see SETTLE_S); a weakref that never dies fails.
            settled(lambda: all(w() is None for _, w in wrs) and len(fired) >= len(wrs))
            alive = [o for o in (w() for _, w in wrs) if o is not None]
            kinds = collections.Counter(type(o).__name__ for o in alive)
            check(not alive, "round %d: %d weakrefs still alive %.0f s after the last reference"
                  " went (to %s)", rnd, len(alive), SETTLE_S, dict(kinds))
            del alive
            counts = collections.Counter(fired)   # (k, maker tid) names one weakref
            check(len(fired) == len(wrs), "round %d: %d weakref callbacks for %d weakrefs",
                  rnd, len(fired), len(wrs))
            dup = [k for k, c in counts.items() if c > 1]
            check(not dup, "round %d: weakref callback ran more than once: %s", rnd, dup[:5])
            del res, wrs, objs
