"""type-realization scenarios (hazards D1-D10): research notes section 5, scenarios 21-34."""
import gc

from . import scenario
from ._support import (JITTER, Racer, backend, bare_ffi, check, getrefcount, same_object,
                       all_equal, settled)


@scenario(21, "s21_parse_fresh_strings", ["D1"], rounds=200)
def s21(threads, rounds, fx):
    """T threads ffi.typeof() strings never parsed before ("int[%d]",
    "long(*)(char(*)[%d], short)", "short[%d][3]", "unsigned long long *[%d]"); half the
    threads share one fresh FFI, the others have their own. Invariant: each result's cname is the expected normalization
    of its own string (the static parse buffer is shared by every FFI)."""
    M = 250
    forms = [("int[%d]", "int[%d]"),
             ("long(*)(char(*)[%d], short)", "long(*)(char(*)[%d], short)"),
             ("short[%d][3]", "short[%d][3]"),
             ("unsigned long long *[%d]", "unsigned long long *[%d]")]
    with Racer(threads) as r:
        for rnd in range(rounds):
            shared = bare_ffi()
            own = [bare_ffi() for _ in range(threads)]

            def body(tid):
                ffi = shared if tid % 2 == 0 else own[tid]
                for j in range(M):
                    n = 1 + ((rnd * threads + tid) * M + j) * 3
                    src, exp = forms[(j + tid) % len(forms)]
                    t = ffi.typeof(src % n)
                    if t.cname != exp % n:
                        raise AssertionError("ffi.typeof(%r) gave %r" % (src % n, t.cname))
                return None

            r.run(body)


@scenario(22, "s22_new_char_array_sizes", ["D1"], rounds=200)
def s22(threads, rounds, fx):
    """T threads ffi.new("char[%d]" % n) with fresh n (half on a shared fresh FFI).
    Invariant: len(ffi.buffer(p)) == ffi.sizeof(p) == n."""
    M = 250
    with Racer(threads) as r:
        for rnd in range(rounds):
            shared = bare_ffi()
            own = [bare_ffi() for _ in range(threads)]

            def body(tid):
                ffi = shared if tid % 2 == 0 else own[tid]
                for j in range(M):
                    n = 1 + ((rnd * threads + tid) * M + j) % 200000
                    p = ffi.new("char[%d]" % n)
                    if len(ffi.buffer(p)) != n or ffi.sizeof(p) != n:
                        raise AssertionError("ffi.new('char[%d]') has %d bytes"
                                             % (n, ffi.sizeof(p)))
                return None

            r.run(body)


@scenario(23, "s23_parse_error_caret", ["D1"], rounds=150)
def s23(threads, rounds, fx):
    """T threads parse invalid type strings whose error is at a thread-specific position,
    on one shared fresh FFI (the error position and message live in the FFI), all starting
    each parse at the same instant. Invariant: each error message quotes its own string
    and its caret points at its own error position."""
    M = 200
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = bare_ffi()

            def body(tid):
                for j in range(M):
                    k = (tid * 7 + j) % 40
                    if j % 2:
                        s = "int" + " " * k + "]"
                        pos = 3 + k
                    else:
                        s = "long(*)(char[%d], short" % (rnd * 1000 + tid * 100 + k)
                        pos = len(s)
                    r.sync(JITTER)
                    try:
                        ffi.typeof(s)
                    except ffi.error as e:
                        msg = str(e)
                    else:
                        raise AssertionError("ffi.typeof(%r) did not raise" % s)
                    lines = msg.split("\n")
                    if (len(lines) != 3 or lines[1] != s or lines[2] != " " * pos + "^"):
                        raise AssertionError("error for %r (position %d) reads %r"
                                             % (s, pos, msg))
                return None

            r.run(body)


@scenario(24, "s24_callback_type_first_use", ["D2"], rounds=300)
def s24(threads, rounds, fx):
    """T threads call ``ffi.callback(s)`` with type strings never seen by a fresh FFI (one
    per round), all threads on the same string at the same instant (barrier per string):
    the first parse of a function type string inserts a fresh 1-tuple into the FFI's
    types_dict, the path of hazard D2. ``ffi.callback(s)`` without a function returns a
    decorator and creates no closure, so the race stays on types_dict (creating
    callbacks from many threads at once is hazard C1, callbacks). Then, single-threaded,
    every thread's decorator makes a callback of a function of its own. Invariant: no
    crash, each callback calls its own function, and ffi.typeof of each string is one
    stable object, the type of every callback made from it."""
    sigs = [("int(int)", "int(*)(int)", (5,)),
            ("long(long, int)", "long(*)(long, int)", (5, 2)),
            ("short(*)(short)", "short(*)(short)", (5,)),
            ("double(double, double)", "double(*)(double, double)", (1.5, 2.0)),
            ("int(int *, long)", "int(*)(int *, long)", (None, 3)),
            ("unsigned char(unsigned char)", "unsigned char(*)(unsigned char)", (5,)),
            ("int(long, long, long)", "int(*)(long, long, long)", (1, 2, 3)),
            ("long long(*)(char *)", "long long(*)(char *)", (None,)),
            ("float(float)", "float(*)(float)", (1.0,)),
            ("int(void)", "int(*)(void)", ()),
            ("short(int, short, char *)", "short(*)(int, short, char *)", (1, 2, None)),
            ("unsigned int(*)(unsigned int, int *)", "unsigned int(*)(unsigned int, int *)",
             (4, None))]
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = bare_ffi()

            def body(tid):
                out = []
                for s, _, _ in sigs:
                    r.sync(JITTER)
                    out.append(ffi.callback(s))
                return out

            decorators = r.run(body)
            for j, (s, ptr, args) in enumerate(sigs):
                t = ffi.typeof(ptr)
                check(ffi.typeof(ptr) is t, "ffi.typeof(%r) not stable", ptr)
                a = [ffi.NULL if x is None else x for x in args]
                for tid, lst in enumerate(decorators):
                    cb = lst[j](lambda *_, tag=tid + 1: tag)
                    got = cb(*a)
                    check(got == tid + 1, "callback %r of thread %d returned %r", s, tid, got)
                    check(ffi.typeof(cb) is t, "callback of %r has type %r, not %r",
                          s, ffi.typeof(cb), t)
                    del cb
            del decorators


@scenario(25, "s25_api_func_first_call", ["D3"], rounds=50)
def s25(threads, rounds, fx):
    """T threads call the same never-called API-mode function (``lib.d_f<n>(x, NULL)``,
    each with its own argument type 'int(*)[n+2]', so its opcodes are realized now) and
    take ``ffi.typeof()`` of it (which realizes its function slot), 19 functions per round
    with a barrier before each; one more function per round is the single-threaded
    control. Invariants: the right result; one function ctype across threads; and the
    reference counts of the function ctype and of its argument type equal the control's
    (a slot realized by two threads keeps the loser's reference: hazard D3).
    ``lib.d_f<n>`` itself may be built twice (two distinct builtins): that is the lib
    attribute race B4 of the library registry, checked by s11, not here."""
    c = fx.counts
    api = fx.api("_stress_api_lib")
    ffi, lib = api.ffi, api.lib
    per_round = 19
    raced = c.N25 - rounds        # the last `rounds` functions are the controls

    def first_use(n):
        f = getattr(lib, "d_f%d" % n)
        got = f(5, ffi.NULL)
        if got != 5 * (n + 1) + 7:
            raise AssertionError("d_f%d(5, NULL) gave %r" % (n, got))
        return ffi.typeof(f)

    def refcounts(n):
        t = ffi.typeof(getattr(lib, "d_f%d" % n))
        return getrefcount(t) - 1, getrefcount(t.args[1])   # minus our own `t`

    with Racer(threads) as r:
        for rnd in range(rounds):
            batch = [(rnd * per_round + j) % raced for j in range(per_round)]
            control = raced + rnd % (c.N25 - raced)
            first_use(control)

            def body(tid):
                out = []
                for n in batch:
                    r.sync(JITTER)
                    out.append(first_use(n))
                return out

            res = r.run(body)
            for k, n in enumerate(batch):
                same_object([x[k] for x in res], "ffi.typeof(lib.d_f%d)" % n)
            del res

            def leaks():
                expected = refcounts(control)
                return [(n, rc, expected) for n, rc in ((n, refcounts(n)) for n in batch)
                        if rc != expected]

            # the workers' result lists may still be on another thread's collection
            # work list (see SETTLE_S): only a count that stays off is a leak
            settled(lambda: not leaks())
            for n, rc, expected in leaks():
                check(False, "round %d: d_f%d: refcounts (function type, argument type) %s,"
                      " control %s", rnd, n, rc, expected)


@scenario(26, "s26_struct_ctype_identity", ["D4"], rounds=300)
def s26(threads, rounds, fx):
    """On a fresh ABI FFI + Lib each round, T threads realize 'struct s<i>' for 16 structs,
    even threads through ffi.typeof/ffi.new, odd threads through the Lib function taking
    'struct s<i> *', all starting each struct together. Then each thread passes a pointer
    made by another thread to lib.stress_sum_s<i>. Invariants: one ctype per struct across threads, and the
    cross-thread calls accept the pointers and return the right sums."""
    N = fx.counts.N_S
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi, lib = fx.abi_lib()

            def realize(tid):
                out = []
                for i in range(N):
                    r.sync(JITTER)
                    if tid % 2 == 0:
                        t = ffi.typeof("struct s%d" % i)
                        p = ffi.new("struct s%d *" % i, {"a": tid, "b": i, "c": 1000})
                    else:
                        f = getattr(lib, "stress_sum_s%d" % i)
                        t = ffi.typeof(f).args[0].item
                        p = ffi.new("struct s%d *" % i, {"a": tid, "b": i, "c": 1000})
                    out.append((t, p))
                return out

            res = r.run(realize)
            for i in range(N):
                t = same_object([x[i][0] for x in res] + [ffi.typeof("struct s%d" % i)],
                                "struct s%d ctype" % i)
                for x in res:
                    check(ffi.typeof(x[i][1]).item is t, "pointer to another struct s%d", i)

            def cross(tid):
                other = (tid + 1) % threads
                for i in range(N):
                    p = res[other][i][1]
                    got = getattr(lib, "stress_sum_s%d" % i)(p)
                    if got != other + i + 1000:
                        raise AssertionError("stress_sum_s%d(p of thread %d) gave %r"
                                             % (i, other, got))
                return None

            r.run(cross)
            del res


@scenario(27, "s27_struct_sizeof_lazy", ["D4"], rounds=200)
def s27(threads, rounds, fx):
    """T threads ffi.sizeof/ffi.alignof the 37 lazy structs of a fresh ABI FFI (their size
    is -2 until completed), all on the same struct together, in three orders (sizeof then
    alignof, alignof then sizeof, typeof then both). Invariant: always the values a
    single-threaded fresh FFI gives; never "don't know the size" or a SystemError."""
    N = fx.counts.N_S
    names = (["struct s%d" % i for i in range(N)] + ["struct wrap%d" % i for i in range(N)]
             + ["struct outer", "struct inner", "struct bits", "struct vsa", "struct packd"])
    ref = fx.abi()
    expected = [(ref.sizeof(n), ref.alignof(n)) for n in names]
    del ref
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = fx.abi()

            def body(tid):
                out = [None] * len(names)
                for k in range(len(names)):
                    n = names[k]
                    r.sync(JITTER)
                    if tid % 3 == 0:
                        out[k] = (ffi.sizeof(n), ffi.alignof(n))
                    elif tid % 3 == 1:
                        a = ffi.alignof(n)
                        out[k] = (ffi.sizeof(n), a)
                    else:
                        t = ffi.typeof(n)
                        out[k] = (ffi.sizeof(t), ffi.alignof(t))
                return out

            res = r.run(body)
            for x in res:
                for k, n in enumerate(names):
                    check(x[k] == expected[k], "%s: (sizeof, alignof) %r, expected %r",
                          n, x[k], expected[k])
            del res


@scenario(28, "s28_enum_ctype_identity", ["D5"], rounds=150)
def s28(threads, rounds, fx):
    """On a fresh ABI FFI + Lib each round, T threads realize 'enum e<i>' (16 enums), even
    threads through ffi.typeof/ffi.new("enum e *"), odd ones through the Lib function
    taking 'enum e<i> *', all starting each enum together; then pointers are passed
    across threads. Invariants: one enum ctype per enum, and cross-thread calls accept the
    pointers and read the right value."""
    N = fx.counts.N_S
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi, lib = fx.abi_lib()

            def realize(tid):
                out = []
                for i in range(N):
                    r.sync(JITTER)
                    if tid % 2 == 0:
                        t = ffi.typeof("enum e%d" % i)
                    else:
                        t = ffi.typeof(getattr(lib, "stress_enum_e%d" % i)).args[0].item
                    p = ffi.new("enum e%d *" % i, 1000 + i)
                    out.append((t, p))
                return out

            res = r.run(realize)
            for i in range(N):
                t = same_object([x[i][0] for x in res] + [ffi.typeof("enum e%d" % i)],
                                "enum e%d ctype" % i)
                for x in res:
                    check(ffi.typeof(x[i][1]).item is t, "pointer to another enum e%d", i)

            def cross(tid):
                other = (tid + 1) % threads
                for i in range(N):
                    got = getattr(lib, "stress_enum_e%d" % i)(res[other][i][1])
                    if got != 1000 + i:
                        raise AssertionError("stress_enum_e%d gave %r" % (i, got))
                return None

            r.run(cross)
            del res


def _fields(ffi, name):
    return [(n, f.offset, f.type.cname, f.bitshift, f.bitsize, f.flags)
            for n, f in ffi.typeof(name).fields]


def _lazy_ops():
    def op_fields(ffi, lib):
        return [_fields(ffi, n) for n in ("struct outer", "struct inner", "struct vsa")]

    def op_dir(ffi, lib):
        p = ffi.new("struct outer *")
        return sorted(dir(p)), sorted(dir(p.inr)), sorted(dir(ffi.new("struct bits *")))

    def op_attrs(ffi, lib):
        p = ffi.new("struct outer *")
        p.inr.x = 5
        p.arr[1].y = 2.5
        p.z = 1 << 40
        p.inr.tag = b"ab"
        return p.inr.x, p.arr[1].y, p.z, ffi.string(p.inr.tag), p.arr[0].x

    def op_offsetof(ffi, lib):
        return (ffi.offsetof("struct outer", "z"), ffi.offsetof("struct outer", "arr", 1),
                ffi.offsetof("struct outer", "inr", "y"), ffi.offsetof("struct bits", "d"),
                ffi.offsetof("struct vsa", "data"), ffi.offsetof("struct packd", "d"))

    def op_dict_init(ffi, lib):
        p = ffi.new("struct outer *", {"c": b"A", "inr": {"x": 3, "y": 1.5, "tag": b"ab"},
                                       "z": 7, "arr": [{"x": 1}, {"x": 2, "y": 4.0}]})
        return p.c, p.inr.x, p.inr.y, ffi.string(p.inr.tag), p.z, p.arr[1].x, p.arr[1].y

    def op_by_value(ffi, lib):
        p = ffi.new("struct outer *", {"c": b"\x01", "inr": {"x": 3, "y": 1.5, "tag": b"ab"},
                                       "z": 7, "arr": [{"x": 1}, {"x": 2, "y": 4.0}]})
        return lib.stress_outer_sum(p[0])

    def op_bits(ffi, lib):
        p = ffi.new("struct bits *", {"a": -3, "b": 17, "c": -1000, "d": b"x", "e": 5})
        return _fields(ffi, "struct bits"), (p.a, p.b, p.c, p.d, p.e)

    def op_vsa(ffi, lib):
        q = ffi.new("struct vsa *", {"n": 3, "last": {"x": 9}, "data": [1, 2, 3]})
        return q.n, q.last.x, q.data[0], q.data[2], ffi.sizeof("struct vsa"), ffi.sizeof(q[0])

    def op_packed(ffi, lib):
        p = ffi.new("struct packd *", [b"\x01", 2, 3, 4])
        return (ffi.sizeof("struct packd"), ffi.alignof("struct packd"),
                _fields(ffi, "struct packd"), lib.stress_packd_sum(p))

    return [op_fields, op_dir, op_attrs, op_offsetof, op_dict_init, op_by_value, op_bits,
            op_vsa, op_packed]


@scenario(29, "s29_lazy_struct_completion", ["D6"], rounds=400)
def s29(threads, rounds, fx):
    """On a fresh ABI FFI + Lib each round, T threads each start with a different operation
    on the same lazy structs (nested struct and array of structs, bitfields, var-sized
    array, packed): .fields, dir(p), p.field get/set, ffi.offsetof, ffi.new with a dict
    initializer, a struct-by-value call, ... then do all the others, all threads starting
    each step together. Invariant: every
    thread's results equal those of a single-threaded fresh FFI (complete field lists, no
    "opaque" error), no crash."""
    ops = _lazy_ops()
    ref_ffi, ref_lib = fx.abi_lib()
    expected = [op(ref_ffi, ref_lib) for op in ops]
    del ref_ffi, ref_lib
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi, lib = fx.abi_lib()

            def body(tid):
                out = [None] * len(ops)
                for j in range(len(ops)):
                    k = (tid + j) % len(ops)
                    r.sync(JITTER)
                    out[k] = ops[k](ffi, lib)
                return out

            res = r.run(body)
            for tid, x in enumerate(res):
                for k, op in enumerate(ops):
                    check(x[k] == expected[k], "thread %d, %s: %r, expected %r",
                          tid, op.__name__, x[k], expected[k])
            del res


def _outcome(f):
    try:
        v = f()
    except Exception as e:
        return (type(e).__name__, str(e))
    return ("ok", v if isinstance(v, (int, str, tuple)) else type(v).__name__)


@scenario(30, "s30_struct_completion_fails", ["D6"], rounds=120)
def s30(threads, rounds, fx):
    """Same as 29, but the struct's completion fails (API mode, the cdef disagrees with C
    on the size or on a field offset): T threads ffi.new / .fields / ffi.offsetof /
    ffi.sizeof 8 such structs per round. Invariant: every thread gets exactly the error
    (or value) of a single-threaded control struct, and later accesses keep failing the
    same way; no crash."""
    c = fx.counts
    api = fx.api("_stress_api_bad")
    ffi = api.ffi

    def ops_for(name):
        return [lambda: ffi.new(name + " *"), lambda: ffi.typeof(name).fields,
                lambda: ffi.offsetof(name, "a"), lambda: ffi.sizeof(name)]

    def expected_for(kind, n):
        ctrl = "struct %sctrl" % kind
        name = "struct %s%d" % (kind, n)
        out = []
        for o in [_outcome(op) for op in ops_for(ctrl)]:
            out.append(tuple(x.replace(ctrl, name) if isinstance(x, str) else x for x in o))
        return out

    per_round = 8
    with Racer(threads) as r:
        for rnd in range(rounds):
            batch = [("bad" if j % 2 == 0 else "badoff", (rnd * per_round + j) % c.NBAD)
                     for j in range(per_round)]
            exp = [expected_for(kind, n) for kind, n in batch]
            for e in exp:
                check(e[0][0] != "ok", "control struct did not fail: %r", e)

            def body(tid):
                out = []
                for kind, n in batch:
                    ops = ops_for("struct %s%d" % (kind, n))
                    r.sync(JITTER)
                    res = [None] * len(ops)
                    for j in range(len(ops)):
                        k = (tid + j) % len(ops)
                        res[k] = _outcome(ops[k])
                    out.append(res)
                return out

            res = r.run(body)
            for tid, x in enumerate(res):
                for b, (kind, n) in enumerate(batch):
                    check(x[b] == exp[b], "thread %d, struct %s%d: %r, expected %r",
                          tid, kind, n, x[b], exp[b])
            for b, (kind, n) in enumerate(batch):
                later = [_outcome(op) for op in ops_for("struct %s%d" % (kind, n))]
                check(later == exp[b], "struct %s%d later: %r", kind, n, later)


def _depth_limit(fx):
    """The deepest 'int **...*' that realizes, each probe on a fresh FFI (binary search
    over the typedefs deep<D>). Moves by k if the shared recursion counter is off by k."""
    c = fx.counts

    def ok(d):
        try:
            fx.abi("_stress_deep").typeof("deep%d" % d)
        except RuntimeError as e:
            check("recursion too deep" in str(e), "unexpected RuntimeError %r", e)
            return False
        return True

    lo, hi = c.DEEP_MIN, c.DEEP_MAX
    if not ok(lo):
        return "<%d" % lo
    if ok(hi):
        return ">%d" % hi
    while hi - lo > 1:              # ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


@scenario(31, "s31_recursion_counter", ["D7"], rounds=800)
def s31(threads, rounds, fx):
    """T threads realize 8 pointer chains 100 levels deep on a fresh FFI every round
    (about 5*10^4 chain realizations, 10^7 counter updates per run at the defaults: every
    level moves the shared recursion counter up and down). Invariants: no spurious
    "type-building recursion too deep", right names; and the exact depth at which that
    error starts (measured single-threaded before and after) has not moved: a lost update
    of the counter in either direction shows up as a different limit."""
    c = fx.counts
    exp = [b + " *" * c.CHAIN_DEPTH for b in c.CHAIN_BASES]
    limit0 = _depth_limit(fx)
    check(isinstance(limit0, int), "depth limit %s outside the probed range", limit0)
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = fx.abi("_stress_deep")

            def body(tid):
                for j in range(c.N_CHAINS):
                    k = (tid + j) % c.N_CHAINS
                    t = ffi.typeof("chain%d" % k)
                    if t.cname != exp[k]:
                        raise AssertionError("chain%d realized as %r" % (k, t.cname[:60]))
                return None

            r.run(body)
    limit1 = _depth_limit(fx)
    check(limit1 == limit0, "the recursion guard moved: 'int' with %s pointer levels is the "
          "deepest type that realizes after the stress, %d before (the shared counter "
          "drifted)", limit1, limit0)
    check(fx.abi("_stress_deep").typeof("chain0").cname == exp[0], "chain0 after the stress")


@scenario(32, "s32_fn_type_name_edit", ["D8"], rounds=120)
def s32(threads, rounds, fx):
    """T/2 threads loop ffi.typeof("int(long)") (expected error, which edits the shared
    function-pointer ctype's name in place) while T/2 threads derive new types from that
    ctype (new_pointer_type, new_array_type of fresh lengths) and repr() them.
    Invariant: names never truncated, the error message is always the right one, no crash."""
    B = backend()
    ITER = 400
    half = max(1, threads // 2)
    ref = bare_ffi()
    try:
        ref.typeof("int(long)")
    except ref.error as e:
        exp_err = str(e)
    else:
        raise AssertionError("typeof('int(long)') did not raise")
    with Racer(half * 2) as r:
        for rnd in range(rounds):
            ffi = bare_ffi()
            fn = ffi.typeof("int(*)(long)")
            PP = B.new_pointer_type(fn)

            def body(tid):
                if tid < half:
                    for _ in range(ITER * 2):
                        try:
                            ffi.typeof("int(long)")
                        except ffi.error as e:
                            if str(e) != exp_err:
                                raise AssertionError("error message %r" % str(e))
                        else:
                            raise AssertionError("typeof('int(long)') did not raise")
                    return None
                for it in range(ITER):
                    n = 3 + (rnd * half + tid - half) * ITER + it
                    a = B.new_array_type(PP, n)
                    p = B.new_pointer_type(fn)
                    ra, rp, rf = repr(a), repr(p), repr(fn)
                    if (ra != "<ctype 'int(*[%d])(long)'>" % n or
                            rp != "<ctype 'int(* *)(long)'>" or
                            rf != "<ctype 'int(*)(long)'>"):
                        raise AssertionError("names: %r %r %r" % (ra, rp, rf))
                return None

            r.run(body)


@scenario(33, "s33_pointer_slice_type", ["D9"], rounds=200)
def s33(threads, rounds, fx):
    """T threads slice p[0:3] on 15 fresh 'struct s<i> *' pointer ctypes (fresh ABI FFI
    each round; the 'T[]' type is cached lazily on the pointer ctype). Invariants: one
    result ctype per pointer type across threads, and its reference count equals that of a
    control pointer type sliced single-threaded (a lost race leaks a reference)."""
    N = fx.counts.N_S
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi = fx.abi()
            arrs = [ffi.new("struct s%d[4]" % i) for i in range(N)]
            ptrs = [ffi.cast("struct s%d *" % i, arrs[i]) for i in range(N)]
            ctrl = ptrs[N - 1][0:3]
            del ctrl

            def body(tid):
                out = []
                for i in range(N - 1):
                    r.sync(JITTER)
                    out.append(ffi.typeof(ptrs[i][0:3]))
                return out

            res = r.run(body)
            for i in range(N - 1):
                t = same_object([x[i] for x in res] + [ffi.typeof(ptrs[i][0:3])],
                                "slice type of struct s%d *" % i)
                check(t.cname == "struct s%d[]" % i, "slice type %r", t.cname)
            del res, t

            def refcount_splits():
                rc_ctrl = getrefcount(ffi.typeof(ptrs[N - 1][0:3]))
                rcs = [getrefcount(ffi.typeof(ptrs[i][0:3])) for i in range(N - 1)]
                return [(i, rc, rc_ctrl) for i, rc in enumerate(rcs) if rc != rc_ctrl]

            # the workers' result lists may still be on another thread's collection
            # work list (see SETTLE_S): only a count that stays off is a leak
            settled(lambda: not refcount_splits())
            for i, rc, rc_ctrl in refcount_splits():
                check(False, "round %d: refcount of 'struct s%d[]' is %d, control %d",
                      rnd, i, rc, rc_ctrl)


@scenario(34, "s34_include_mutual_structs", ["D10"], rounds=600)
def s34(threads, rounds, fx):
    """T threads realize structs of two fresh FFIs joined by ffi.include (ffi2's structs
    embed ffi1's by value, ffi2's refer to each other), starting from different ends.
    Invariants: no deadlock (the parent's timeout), one ctype per struct across threads and
    across the two FFIs, sizes equal to a single-threaded pair's."""
    names2 = ["struct id", "struct ic", "struct ib", "struct ia"]
    r1, r2 = fx.abi_included()
    expected = [r2.sizeof(n) for n in names2] + [r1.sizeof("struct ia")]
    del r1, r2
    with Racer(threads) as r:
        for rnd in range(rounds):
            ffi1, ffi2 = fx.abi_included()

            def body(tid):
                order = list(range(len(names2)))
                if tid % 2:
                    order.reverse()
                got = [None] * len(names2)
                for k in order:
                    r.sync(JITTER)
                    if tid % 3 == 0:
                        got[k] = ffi2.typeof(names2[k])
                        ffi2.sizeof(got[k])
                    elif tid % 3 == 1:
                        got[k] = ffi2.typeof(names2[k] + " *").item
                        [f for f in got[k].fields]
                    else:
                        p = ffi2.new(names2[k] + " *")
                        got[k] = ffi2.typeof(p).item
                ia = ffi1.typeof("struct ia")
                return got, ia, [ffi2.sizeof(t) for t in got] + [ffi1.sizeof(ia)]

            res = r.run(body)
            for k, n in enumerate(names2):
                same_object([x[0][k] for x in res] + [ffi2.typeof(n)], "%s (ffi2)" % n)
            same_object([x[1] for x in res] + [ffi2.typeof("struct ia")],
                        "struct ia (ffi1 and ffi2)")
            for x in res:
                all_equal([x[2]], expected, "sizes")
            del res
