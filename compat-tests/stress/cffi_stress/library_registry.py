"""library-registry scenarios (hazards B1-B5): research notes section 5, scenarios 7-13.

Scenarios 7-10 use libstressclose.so, which nothing else in the process loads: when the
last handle is closed it is unmapped, and /proc/self/maps shows whether dlclose() ran the
right number of times.
"""
import gc
import random
import threading
import time

from . import scenario
from ._support import (JITTER, Racer, backend, check, getrefcount, is_mapped, same_object,
                       settled)


def _int_fn_types():
    B = backend()
    INT = B.new_primitive_type("int")
    return INT, B.new_function_type((INT,), INT)


@scenario(7, "s07_close_lib_once", ["B1"], rounds=600)
def s07(threads, rounds, fx):
    """T threads call close_lib() on one load_library(path) handle while a second,
    independent handle to the same .so is held. Invariant: the library stays mapped (one
    dlclose, not T), calls through the second handle keep working, and closing the second
    handle unmaps it."""
    B = backend()
    INT, FN = _int_fn_types()
    path = fx.close
    check(not is_mapped(path), "libstressclose.so is mapped before the scenario")
    with Racer(threads) as r:
        for rnd in range(rounds):
            keeper = B.load_library(path)
            victim = B.load_library(path)
            r.run(lambda tid: victim.close_lib(), jitter=JITTER)
            check(is_mapped(path), "round %d: closing one of two handles (from %d threads) "
                  "unmapped the library: dlclose ran more than once", rnd, threads)
            f = keeper.load_function(FN, "close_fn3")
            check(f(10) == 13, "round %d: call through the second handle gave %r", rnd, f(10))
            check(keeper.read_variable(INT, "close_var") == 4242, "bad close_var")
            del f
            keeper.close_lib()
            check(not is_mapped(path), "round %d: library still mapped after closing both "
                  "handles", rnd)
            try:
                victim.load_function(FN, "close_fn3")
            except ValueError as e:
                check("already been closed" in str(e), "unexpected error %r", e)
            else:
                raise AssertionError("load_function on a closed library did not raise")


@scenario(8, "s08_load_vs_close", ["B2"], rounds=150)
def s08(threads, rounds, fx):
    """T/2 threads loop read_variable()/load_function() on a fresh load_library() handle
    while 1 thread closes it. Invariant: each call gives the right value or raises
    "already been closed", never anything else, no crash; the library is unmapped after."""
    B = backend()
    INT, FN = _int_fn_types()
    path = fx.close
    readers = max(1, threads // 2)
    with Racer(readers + 1) as r:
        for rnd in range(rounds):
            lib = B.load_library(path)
            delay = random.Random(rnd).randrange(400)
            deadline = time.monotonic() + 30

            def body(tid):
                if tid == readers:
                    for _ in range(delay):
                        pass
                    lib.close_lib()
                    return None
                n_ok = 0
                while True:
                    try:
                        v = lib.read_variable(INT, "close_var")
                        f = lib.load_function(FN, "close_fn%d" % (n_ok % 40))
                    except ValueError as e:
                        if "already been closed" not in str(e):
                            raise
                        return n_ok
                    if v != 4242:
                        raise AssertionError("read_variable gave %r, expected 4242" % (v,))
                    if f is None:
                        raise AssertionError("load_function gave None")
                    n_ok += 1
                    if n_ok % 4096 == 0 and time.monotonic() > deadline:
                        raise AssertionError("library never reported closed (30 s)")

            r.run(body)
            check(not is_mapped(path), "round %d: library still mapped after close_lib()", rnd)


@scenario(9, "s09_dlclose_once", ["B3"], rounds=800)
def s09(threads, rounds, fx):
    """T threads call ffi.dlclose(lib) on one fresh ffi.dlopen() Lib while a second handle
    (load_library) is held. Invariant: one effective close (the library stays mapped, the
    second handle works), and the closed Lib raises "has been closed"."""
    B = backend()
    INT, FN = _int_fn_types()
    path = fx.close
    with Racer(threads) as r:
        for rnd in range(rounds):
            keeper = B.load_library(path)
            ffi = fx.abi()
            lib = ffi.dlopen(path)
            check(lib.close_fn1(1) == 2, "bad close_fn1")
            r.run(lambda tid: ffi.dlclose(lib), jitter=JITTER)
            check(is_mapped(path), "round %d: ffi.dlclose() from %d threads unmapped the "
                  "library although another handle is open: dlclose ran more than once",
                  rnd, threads)
            f = keeper.load_function(FN, "close_fn5")
            check(f(1) == 6, "call through the second handle failed")
            del f
            try:
                lib.close_fn2
            except ffi.error as e:
                check("has been closed" in str(e), "unexpected error %r", e)
            else:
                raise AssertionError("attribute of a closed Lib did not raise")
            keeper.close_lib()
            check(not is_mapped(path), "round %d: library still mapped after all closes", rnd)


@scenario(10, "s10_lib_attr_vs_dlclose", ["B3"], rounds=150)
def s10(threads, rounds, fx):
    """3/4 of the threads read lib.close_fn<i> and lib.close_var on a fresh ffi.dlopen()
    Lib while the other 1/4 call ffi.dlclose(lib). Invariant: every access gives the right
    value or raises "has been closed"; an access that starts after a dlclose() returned
    must raise (no stale cdata); no crash; the library is unmapped at the end."""
    path = fx.close
    closers = max(1, threads // 4)
    readers = max(1, threads - closers)
    names = ["close_var"] + ["close_fn%d" % i for i in range(fx.counts.N_CLOSE_FN)]
    with Racer(readers + closers) as r:
        for rnd in range(rounds):
            ffi = fx.abi()
            lib = ffi.dlopen(path)
            fntype = ffi.typeof("int(*)(int)")
            closed = threading.Event()
            delay = random.Random(rnd).randrange(300)
            deadline = time.monotonic() + 30

            def body(tid):
                if tid >= readers:
                    for _ in range(delay):
                        pass
                    ffi.dlclose(lib)
                    closed.set()
                    return None
                k = tid
                errors_after = 0
                while errors_after < 20:
                    name = names[k % len(names)]
                    k += 1
                    after = closed.is_set()
                    try:
                        v = getattr(lib, name)
                    except ffi.error as e:
                        if "has been closed" not in str(e):
                            raise
                        if after:
                            errors_after += 1
                        continue
                    if after:
                        raise AssertionError("lib.%s returned %r after ffi.dlclose() had "
                                             "returned (stale)" % (name, v))
                    if name == "close_var":
                        if v != 4242:
                            raise AssertionError("lib.close_var gave %r" % (v,))
                    elif ffi.typeof(v) is not fntype:
                        raise AssertionError("lib.%s gave %r" % (name, v))
                    if k % 4096 == 0 and time.monotonic() > deadline:
                        raise AssertionError("library never reported closed (30 s)")
                return None

            r.run(body)
            del lib, ffi
            # From step 3 on, the attributes that the readers fetched keep the library
            # mapped until they die (the real dlclose runs after the last of them); on
            # 3.13t some die only once their owner threads' queued reference counts are
            # merged, so let that happen first.
            settled(lambda: not is_mapped(path))
            check(not is_mapped(path), "round %d: library still mapped after dlclose", rnd)


def _abi_attr_names(c):
    names = []
    names += [("fn", "stress_fn%d" % i, i) for i in range(c.N_FN)]
    names += [("gv", "stress_gv%d" % i, i) for i in range(c.N_GV)]
    names += [("k", "STRESS_K%d" % i, i) for i in range(c.N_K)]
    names += [("dc", "stress_dc%d" % i, i) for i in range(c.N_DC)]
    return names


def _api11_names(c, b):
    names = []
    for kind, n in sorted(c.B11.items()):
        for j in range(n):
            fmt = {"f": "a%d_f%d", "k": "A%d_K%d", "d": "a%d_d%d", "g": "a%d_g%d",
                   "x": "a%d_x%d"}[kind]
            names.append((kind, fmt % (b, j), j))
    return names


@scenario(11, "s11_lib_first_access", ["B4"], rounds=96)
def s11(threads, rounds, fx):
    """T threads first-access the same 200 attributes (functions, global variables, int
    and double constants) of a fresh ffi.dlopen() Lib every round, plus a batch of API-mode
    names never accessed before (functions, globals, int/double constants and extern
    "Python" items of _stress_api_lib, one batch per round); a spinning barrier every few
    names keeps the threads on the same names. Invariant: no crash, every
    value is right, and cached attributes are one object across threads
    (``lib.x is lib.x``)."""
    from ._build import s_value
    c = fx.counts
    api = fx.api("_stress_api_lib")
    abi_names = _abi_attr_names(c)
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi, lib = fx.abi_lib()
            b = rnd % c.NB11
            api_names = _api11_names(c, b)

            def body(tid):
                out = []
                for k, (_, name, _) in enumerate(abi_names):
                    if k % 4 == 0:
                        r.sync(JITTER)
                    out.append(getattr(lib, name))
                for _, name, _ in api_names:
                    r.sync(JITTER)
                    out.append(getattr(api.lib, name))
                return out

            res = r.run(body)
            for idx, (kind, name, i) in enumerate(abi_names):
                vals = [x[idx] for x in res]
                v = s_value(i)
                if kind in ("fn", "k", "dc"):
                    same_object(vals, "lib.%s (fresh ABI Lib)" % name)
                if kind == "fn":
                    check(vals[0](3) == 3 * v["fn_mul"] + v["fn_add"], "lib.%s(3) wrong", name)
                elif kind == "gv":
                    check(all(x == v["gv"] for x in vals), "lib.%s: %s", name, vals)
                elif kind == "k":
                    check(vals[0] == v["k"], "lib.%s == %r", name, vals[0])
                else:
                    check(vals[0] == v["dc"], "lib.%s == %r", name, vals[0])
            off = len(abi_names)
            for idx, (kind, name, j) in enumerate(api_names):
                vals = [x[off + idx] for x in res]
                if kind != "g":
                    same_object(vals, "lib.%s (API mode, first access)" % name)
                if kind == "f":
                    check(vals[0](3) == 3 * (j + 2) + b, "lib.%s(3) wrong", name)
                elif kind == "k":
                    check(vals[0] == 200000 + 100 * b + j, "lib.%s == %r", name, vals[0])
                elif kind == "d":
                    check(vals[0] == b + 0.5 + j, "lib.%s == %r", name, vals[0])
                elif kind == "g":
                    check(all(x == 10 * b + j for x in vals), "lib.%s: %s", name, vals)
                else:
                    check(api.ffi.typeof(vals[0]).cname == "int(*)(int)",
                          "lib.%s is %r", name, vals[0])
            del res, lib, ffi


@scenario(12, "s12_lib_addressof_first", ["B4"], rounds=200)
def s12(threads, rounds, fx):
    """T threads call ffi.addressof(lib, name) for the same function and global-variable
    names of a fresh ffi.dlopen() Lib. Invariant: functions give one object across threads
    (the cached one, also ``lib.f``); globals give pointers of one ctype, to one address,
    reading the right value."""
    from ._build import s_value
    c = fx.counts
    names = ([("fn", "stress_fn%d" % i, i) for i in range(c.N_FN)]
             + [("gv", "stress_gv%d" % i, i) for i in range(c.N_GV)])
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi, lib = fx.abi_lib()

            def body(tid):
                out = [None] * len(names)
                for k in range(len(names)):
                    if k % 2 == 0:
                        r.sync(JITTER)
                    out[k] = ffi.addressof(lib, names[k][1])
                return out

            res = r.run(body)
            for k, (kind, name, i) in enumerate(names):
                vals = [x[k] for x in res]
                if kind == "fn":
                    f = same_object(vals + [getattr(lib, name)], "ffi.addressof(lib, %r)" % name)
                    check(f(2) == 2 * s_value(i)["fn_mul"] + s_value(i)["fn_add"], "bad call")
                else:
                    same_object([ffi.typeof(p) for p in vals], "ctype of addressof(lib, %r)"
                                % name)
                    addrs = {int(ffi.cast("intptr_t", p)) for p in vals}
                    check(len(addrs) == 1, "addressof(lib, %r): %d addresses", name, len(addrs))
                    check(vals[0][0] == s_value(i)["gv"], "addressof(lib, %r)[0] == %r",
                          name, vals[0][0])
            del res, lib, ffi


@scenario(13, "s13_direct_fn_cdata", ["B5"], rounds=48)
def s13(threads, rounds, fx):
    """T threads call ffi.addressof(lib, 'b_f<n>') for the first time on API-mode
    functions of _stress_api_lib (a fresh batch of 20 names per round). Invariant: one cdata
    per function across threads, it calls the right function, and its reference count is
    the same as that of a control function whose cdata was made single-threaded (a lost
    race leaks or double-counts)."""
    c = fx.counts
    api = fx.api("_stress_api_lib")
    ffi, lib = api.ffi, api.lib
    ctrl_name = "b_f%d" % (c.N13 - 1)
    ctrl = ffi.addressof(lib, ctrl_name)
    check(ffi.addressof(lib, ctrl_name) is ctrl, "direct-call cdata is not cached")
    del ctrl
    per_round = 20
    usable = c.N13 - 1
    with Racer(threads) as r:
        for rnd in range(rounds):
            start = (rnd * per_round) % usable
            batch = [(start + j) % usable for j in range(per_round)]

            def body(tid):
                out = []
                for n in batch:
                    r.sync(JITTER)
                    out.append(ffi.addressof(lib, "b_f%d" % n))
                return out

            res = r.run(body)
            for k, n in enumerate(batch):
                p = same_object([x[k] for x in res], "ffi.addressof(lib, 'b_f%d')" % n)
                check(p(4) == 4 + n, "b_f%d(4) gave %r", n, p(4))
            del res, p

            def counts_agree():
                rc = getrefcount(ffi.addressof(lib, ctrl_name))
                return all(getrefcount(ffi.addressof(lib, "b_f%d" % n)) == rc for n in batch)
            # The worker threads own the cdata they made; the decrements of other threads
            # are queued for them and merged by a collection, which on 3.13t may still be
            # freeing what it merged when gc.collect() returns: wait for it.
            settled(counts_agree)
            rc_ctrl = getrefcount(ffi.addressof(lib, ctrl_name))
            for n in batch:
                rc = getrefcount(ffi.addressof(lib, "b_f%d" % n))
                check(rc == rc_ctrl, "refcount of the direct-call cdata of b_f%d is %d, "
                      "control %d", n, rc, rc_ctrl)


@scenario(43, "s43_calls_vs_dlclose", ["B2", "B3"], rounds=150)
def s43(threads, rounds, fx):
    """T threads call lib.close_fn<k>(k) in a loop on a fresh ffi.dlopen() Lib while one
    more thread calls ffi.dlclose(lib) once, after a random delay; every other round a
    second, independent handle to the library (load_library) is held. Invariant: no
    crash; every call returns its right value and every attribute access either does
    too or raises "has been closed"; a thread keeps calling the function it fetched
    last before the close, and the library stays mapped while it holds it; once every
    thread has dropped its functions the library is unmapped -- unless the second handle
    is held, which then still works (one dlclose, not two) until it is closed too."""
    B = backend()
    INT, FN = _int_fn_types()
    path = fx.close
    n_fn = fx.counts.N_CLOSE_FN
    closer = threads
    with Racer(threads + 1) as r:
        for rnd in range(rounds):
            keeper = B.load_library(path) if rnd % 2 else None
            ffi = fx.abi()
            lib = ffi.dlopen(path)
            delay = random.Random(rnd).randrange(3000)
            deadline = time.monotonic() + 30

            def body(tid):
                if tid == closer:
                    for _ in range(delay):
                        pass
                    ffi.dlclose(lib)
                    return None
                f, i, k = None, 0, tid
                while True:
                    i = k % n_fn
                    try:
                        f = getattr(lib, "close_fn%d" % i)
                    except ffi.error as e:
                        if "has been closed" not in str(e):
                            raise
                        break
                    v = f(k)
                    if v != k + i:
                        raise AssertionError("lib.close_fn%d(%d) gave %r" % (i, k, v))
                    k += 1
                    if k % 4096 == 0 and time.monotonic() > deadline:
                        raise AssertionError("library never reported closed (30 s)")
                if f is None:
                    return 0
                # The Lib is closed now; the function fetched before stays callable.
                i = (k - 1) % n_fn
                for j in range(200):
                    v = f(j)
                    if v != j + i:
                        raise AssertionError("close_fn%d(%d) gave %r after ffi.dlclose()"
                                             % (i, j, v))
                if not is_mapped(path):
                    raise AssertionError("the library was unmapped while this thread still "
                                         "held lib.close_fn%d" % i)
                return 1

            r.run(body)
            del lib, ffi
            if keeper is None:
                settled(lambda: not is_mapped(path))
                check(not is_mapped(path), "round %d: library still mapped after dlclose "
                      "and after every function of it died", rnd)
                continue
            check(is_mapped(path), "round %d: ffi.dlclose() unmapped the library although "
                  "another handle is open: dlclose ran more than once", rnd)
            f = keeper.load_function(FN, "close_fn7")
            check(f(1) == 8, "round %d: call through the second handle failed", rnd)
            del f
            keeper.close_lib()
            settled(lambda: not is_mapped(path))
            check(not is_mapped(path), "round %d: library still mapped after both handles "
                  "were closed", rnd)
