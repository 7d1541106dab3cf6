"""Micro-benchmarks of cffi operations, run by `cargo xtask bench` with one backend's
venv python (the kit at a step, vanilla cffi 1.17.1, upstream cffi 2.1.1).

    python bench_ops.py --prepare DIR
        Builds, once per venv, what the operations need into DIR: two API-mode modules
        (_cffi_ft_bench_api0/1, with C helpers that call a callback and an extern
        "Python" function), two out-of-line ABI modules (_cffi_ft_bench_abi.py; and
        _cffi_ft_bench_dl.py, the cdef of the helper library) and the helper shared
        library the dlopen ops open (libcffi_ft_bench_dl.so, built with $CC or gcc).

    python bench_ops.py --modules DIR --op NAME --mode single|own2|shared2 --seconds S --json
        Measures one operation; prints one JSON line per mode (--op and --mode also take
        comma-separated lists). `single`: one thread, ns/op (median and min over ~1 ms
        batches) and throughput. `own2`: two threads, each on its own objects (its own
        FFI, module, ctypes, Lib). `shared2`: two threads on the same objects (one
        FFI, one Lib: dlopen_call calls through the same Lib from both, extern_python_from_c
        calls one extern "Python" binding from C in both). The 2-thread
        modes report total throughput; the driver divides it by the 1-thread throughput.

    python bench_ops.py --list
        Prints the operations as JSON.

The driver (xtask/src/bench.rs) interleaves backends and repeats rounds; this script only
measures. It never re-enables the GIL itself: `gil_enabled` in its output tells whether
anything did.
"""
import argparse
import json
import os
import statistics
import sys
import threading
import time
from itertools import repeat

API_MODULES = ("_cffi_ft_bench_api0", "_cffi_ft_bench_api1")
ABI_MODULE = "_cffi_ft_bench_abi"

API_CDEF = """
struct point { int x, y; };
int bench_add(int, int);
int bench_call_cb_n(int (*)(int), int);
extern "Python" int bench_py_cb(int);
int bench_call_extern_n(int);
void bench_free(void *);
"""

API_SOURCE = """
struct point { int x, y; };
static int bench_add(int a, int b) { return a + b; }
static int bench_call_cb_n(int (*cb)(int), int n)
{
    int i, s = 0;
    for (i = 0; i < n; i++)
        s += cb(i);
    return s;
}
static int bench_py_cb(int);
static int bench_call_extern_n(int n)
{
    int i, s = 0;
    for (i = 0; i < n; i++)
        s += bench_py_cb(i);
    return s;
}
static void bench_free(void *p) { (void)p; }
"""

ABI_CDEF = """
struct point { int x, y; };
int abs(int);
"""

# Calls of C helpers that loop in C count this many operations each.
C_LOOP = 64

# The helper shared library of the dlopen ops, and its out-of-line ABI module (kept apart
# from _cffi_ft_bench_abi so that struct_first's fresh FFI stays what it was).
DL_MODULE = "_cffi_ft_bench_dl"
DL_LIBRARY = "libcffi_ft_bench_dl.so"
# dlopen_attr_first touches this many functions of each fresh Lib.
DL_FIRST = 8

DL_CDEF = """
int bench_dl_add(int, int);
int bench_dl_counter;
""" + "".join("int bench_dl_f%d(int);\n" % i for i in range(DL_FIRST))

DL_SOURCE = """
int bench_dl_add(int a, int b) { return a + b; }
int bench_dl_counter = 42;
""" + "".join("int bench_dl_f%d(int x) { return x + %d; }\n" % (i, i) for i in range(DL_FIRST))


def build_dl_library(out_dir):
    """gcc (or $CC) -shared: the library the dlopen ops open, inside the prepared DIR."""
    import shlex
    import subprocess

    src = os.path.join(out_dir, "cffi_ft_bench_dl.c")
    with open(src, "w") as f:
        f.write(DL_SOURCE)
    cc = shlex.split(os.environ.get("CC") or "gcc")
    out = os.path.join(out_dir, DL_LIBRARY)
    subprocess.run(cc + ["-O2", "-shared", "-fPIC", "-o", out, src], check=True)
    return out


def prepare(out_dir):
    import cffi

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name in API_MODULES:
        ffi = cffi.FFI()
        ffi.cdef(API_CDEF)
        # The same compile everywhere: no limited API (3.13t has none; vanilla 1.17.1
        # would still ask for it there).
        ffi.set_source(name, API_SOURCE, define_macros=[("_CFFI_NO_LIMITED_API", None)],
                       py_limited_api=False)
        ffi.compile(tmpdir=out_dir)
    ffi = cffi.FFI()
    ffi.cdef(ABI_CDEF)
    ffi.set_source(ABI_MODULE, None)
    ffi.compile(tmpdir=out_dir)
    ffi = cffi.FFI()
    ffi.cdef(DL_CDEF)
    ffi.set_source(DL_MODULE, None)
    ffi.compile(tmpdir=out_dir)
    build_dl_library(out_dir)
    info = environment()
    with open(os.path.join(out_dir, "prepared.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def environment():
    import _cffi_backend

    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "free_threaded": bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": True if is_enabled is None else bool(is_enabled()),
        "cffi": _cffi_backend.__version__,
        "kit": getattr(_cffi_backend, "__cffi_ft__", None),
    }


# ---------------------------------------------------------------------------------------
# Operations. Each `make(k)` builds the objects of one "owner" k (k = 0 is also what the
# single-thread and shared runs use) and returns step(n), which does the operation n times.


class Env:
    """The prepared modules, imported once per process."""

    def __init__(self, modules_dir):
        sys.path.insert(0, modules_dir)
        import importlib

        self.api = [importlib.import_module(m) for m in API_MODULES]
        self.abi = importlib.import_module(ABI_MODULE)
        with open(os.path.join(modules_dir, ABI_MODULE + ".py")) as f:
            self.abi_code = compile(f.read(), ABI_MODULE + ".py", "exec")
        self.dl = importlib.import_module(DL_MODULE)
        with open(os.path.join(modules_dir, DL_MODULE + ".py")) as f:
            self.dl_code = compile(f.read(), DL_MODULE + ".py", "exec")
        self.dl_path = os.path.join(modules_dir, DL_LIBRARY)

    def fresh_abi_ffi(self):
        ns = {}
        exec(self.abi_code, ns)
        return ns["ffi"]

    def abi_ffi(self, k):
        """k = 0: the imported module's FFI; otherwise a fresh FFI of the same module."""
        return self.abi.ffi if k == 0 else self.fresh_abi_ffi()

    def dl_ffi(self, k):
        """The helper library's out-of-line FFI: k = 0 the imported one, else a fresh one."""
        if k == 0:
            return self.dl.ffi
        ns = {}
        exec(self.dl_code, ns)
        return ns["ffi"]

    def dl_lib(self, k):
        """ffi.dlopen() of the helper library: a Lib of its own for each owner k."""
        return self.dl_ffi(k).dlopen(self.dl_path)

    def api_mod(self, k):
        return self.api[k % len(self.api)]


PRIMS = ("int", "long", "short", "char")


def op_typeof_hit(env, k):
    ffi = env.abi_ffi(k)
    typeof = ffi.typeof
    typeof("struct point *")

    def step(n):
        for _ in repeat(None, n):
            typeof("struct point *")
    return step


def op_new_pointer_type(env, k):
    import _cffi_backend as B

    t = B.new_primitive_type(PRIMS[k % len(PRIMS)])
    npt = B.new_pointer_type
    existing = npt(t)   # kept alive: every call below is a unique-cache hit

    def step(n, existing=existing):
        for _ in repeat(None, n):
            npt(t)
    return step


def op_new_array_type(env, k):
    import _cffi_backend as B

    p = B.new_pointer_type(B.new_primitive_type(PRIMS[k % len(PRIMS)]))
    length = 10 + k
    nat = B.new_array_type
    existing = nat(p, length)   # kept alive: every call below is a hit

    def step(n, existing=existing):
        for _ in repeat(None, n):
            nat(p, length)
    return step


def op_new_array_type_churn(env, k):
    import _cffi_backend as B

    p = B.new_pointer_type(B.new_primitive_type(PRIMS[k % len(PRIMS)]))
    length = 1000 + k
    nat = B.new_array_type

    def step(n):
        # the type dies after each call: every call is a miss, an insert and a removal
        for _ in repeat(None, n):
            nat(p, length)
    return step


def op_new_function_type(env, k):
    import _cffi_backend as B

    args = (B.new_primitive_type("int"), B.new_primitive_type("long"))
    res = B.new_primitive_type(PRIMS[k % len(PRIMS)])
    nft = B.new_function_type
    existing = nft(args, res)   # kept alive: every call below is a hit

    def step(n, existing=existing):
        for _ in repeat(None, n):
            nft(args, res)
    return step


def op_new_array(env, k):
    new = env.abi_ffi(k).new
    new("int[16]")

    def step(n):
        for _ in repeat(None, n):
            new("int[16]")
    return step


def op_new_struct(env, k):
    new = env.abi_ffi(k).new
    new("struct point *")

    def step(n):
        for _ in repeat(None, n):
            new("struct point *")
    return step


def op_sizeof(env, k):
    sizeof = env.abi_ffi(k).sizeof
    sizeof("struct point")

    def step(n):
        for _ in repeat(None, n):
            sizeof("struct point")
    return step


def op_cast(env, k):
    cast = env.abi_ffi(k).cast
    cast("long", 12345)

    def step(n):
        for _ in repeat(None, n):
            cast("long", 12345)
    return step


def op_struct_first(env, k):
    code = env.abi_code

    def step(n):
        for _ in repeat(None, n):
            ns = {}
            exec(code, ns)
            ns["ffi"].new("struct point *")
    return step


def op_lib_attr(env, k):
    lib = env.api_mod(k).lib
    lib.bench_add

    def step(n):
        for _ in repeat(None, n):
            lib.bench_add
    return step


def op_api_call(env, k):
    f = env.api_mod(k).lib.bench_add

    def step(n):
        for _ in repeat(None, n):
            f(1, 2)
    return step


def op_dlopen_call(env, k):
    lib = env.dl_lib(k)
    assert lib.bench_dl_add(1, 2) == 3

    def step(n):
        # as users call: the attribute lookup (a cached hit) and the call, each time
        for _ in repeat(None, n):
            lib.bench_dl_add(1, 2)
    return step


def op_dlopen_call_bound(env, k):
    libc = env.abi_ffi(k).dlopen(None)
    f = libc.abs
    assert f(-5) == 5

    def step(n):
        for _ in repeat(None, n):
            f(-5)
    return step


def op_dlopen_attr_hit(env, k):
    lib = env.dl_lib(k)
    lib.bench_dl_add

    def step(n):
        for _ in repeat(None, n):
            lib.bench_dl_add
    return step


def op_dlopen_new(env, k):
    ffi = env.dl_ffi(k)
    dlopen, path = ffi.dlopen, env.dl_path
    # keeps the library mapped: each fresh Lib only bumps (and its dealloc drops) the
    # loader's count instead of mapping and unmapping the file
    keep = dlopen(path)

    def step(n, keep=keep):
        for _ in repeat(None, n):
            dlopen(path)
    return step


def op_dlopen_attr_first(env, k):
    ffi = env.dl_ffi(k)
    dlopen, path = ffi.dlopen, env.dl_path
    keep = dlopen(path)   # the library stays mapped (see op_dlopen_new)
    # the FFI realizes the function type once; a fresh Lib only fetches and caches
    assert [getattr(keep, "bench_dl_f%d" % i)(1) for i in range(DL_FIRST)] == [1 + i for i in range(DL_FIRST)]
    assert DL_FIRST == 8, "step() spells out the DL_FIRST names"

    def step(n, keep=keep):
        for _ in repeat(None, n):
            lib = dlopen(path)
            lib.bench_dl_f0; lib.bench_dl_f1; lib.bench_dl_f2; lib.bench_dl_f3
            lib.bench_dl_f4; lib.bench_dl_f5; lib.bench_dl_f6; lib.bench_dl_f7
    return step


def op_dl_read_variable(env, k):
    import _cffi_backend as B

    lib = B.load_library(env.dl_path)   # its own handle per owner k
    BInt = B.new_primitive_type("int")
    read = lib.read_variable
    assert read(BInt, "bench_dl_counter") == 42

    def step(n):
        for _ in repeat(None, n):
            read(BInt, "bench_dl_counter")
    return step


def op_callback_from_c(env, k):
    mod = env.api_mod(k)
    cb = mod.ffi.callback("int(int)", lambda x: x)
    call = mod.lib.bench_call_cb_n
    assert call(cb, 4) == 6

    def step(n):
        # one Python call of the C loop = C_LOOP invocations of the callback from C
        for _ in repeat(None, n):
            call(cb, C_LOOP)
    return step


def op_extern_python_from_c(env, k):
    mod = env.api_mod(k)

    # the binding of module k: shared2 calls through it from both threads
    @mod.ffi.def_extern()
    def bench_py_cb(x):
        return x

    call = mod.lib.bench_call_extern_n
    assert call(4) == 6

    def step(n):
        for _ in repeat(None, n):
            call(C_LOOP)
    return step


def op_callback_new_free(env, k):
    callback = env.api_mod(k).ffi.callback

    def f(x):
        return x

    callback("int(int)", f)   # the type string is parsed and cached once

    def step(n):
        # each callback object dies at once: a closure from the allocator, freed back
        for _ in repeat(None, n):
            callback("int(int)", f)
    return step


def op_gc(env, k):
    mod = env.api_mod(k)
    gc, cast, free = mod.ffi.gc, mod.ffi.cast, mod.lib.bench_free
    p = cast("void *", 1)

    def step(n):
        for _ in repeat(None, n):
            gc(p, free)    # dropped at once: the destructor runs at deallocation
    return step


# name: (make, operations per step iteration, whether "shared" differs from "own", what)
OPS = {
    "typeof_hit": (op_typeof_hit, 1, True, 'ffi.typeof("struct point *"), already cached'),
    "new_pointer_type": (op_new_pointer_type, 1, True, "_cffi_backend.new_pointer_type(t), the type exists (unique cache)"),
    "new_array_type": (op_new_array_type, 1, True, "_cffi_backend.new_array_type(p, n), the type exists (unique cache)"),
    "new_function_type": (op_new_function_type, 1, True, "_cffi_backend.new_function_type((a, b), r), the type exists"),
    "new_array_type_churn": (op_new_array_type_churn, 1, True, "_cffi_backend.new_array_type(p, n) whose result dies at once (unique-cache miss + removal)"),
    "new_array": (op_new_array, 1, True, 'ffi.new("int[16]")'),
    "new_struct": (op_new_struct, 1, True, 'ffi.new("struct point *")'),
    "sizeof": (op_sizeof, 1, True, 'ffi.sizeof("struct point"), the struct already complete'),
    "cast": (op_cast, 1, True, 'ffi.cast("long", 12345)'),
    "struct_first": (op_struct_first, 1, False, "fresh FFI from an out-of-line ABI module + first realization of its struct"),
    "lib_attr": (op_lib_attr, 1, True, "lib.bench_add attribute access (API mode)"),
    "api_call": (op_api_call, 1, True, "call of an API-mode C function, lib.bench_add(1, 2)"),
    "dlopen_call": (op_dlopen_call, 1, True, "lib.bench_dl_add(1, 2) on an ffi.dlopen() Lib of the helper library: cached attribute lookup + call, as users call"),
    "dlopen_call_bound": (op_dlopen_call_bound, 1, True, "f(-5), f = ffi.dlopen(None).abs fetched once: the call alone (libc, ABI mode; named dlopen_call before step 3)"),
    "dlopen_attr_hit": (op_dlopen_attr_hit, 1, True, "lib.bench_dl_add, already cached, on an ffi.dlopen() Lib (no call)"),
    "dlopen_new": (op_dlopen_new, 1, False, "a fresh ffi.dlopen(path) Lib, dropped at once (dlopen + dlclose of a library kept loaded)"),
    "dlopen_attr_first": (op_dlopen_attr_first, 1, False, "a fresh ffi.dlopen(path) Lib + first access of %d functions, per Lib (minus dlopen_new, / %d: per name)" % (DL_FIRST, DL_FIRST)),
    "dl_read_variable": (op_dl_read_variable, 1, True, '_cffi_backend.load_library(path).read_variable(int, "bench_dl_counter"): dlsym + read'),
    "callback_from_c": (op_callback_from_c, C_LOOP, True, "one call of an ffi.callback from C (a C loop of %d calls, per call); shared2: the same callback from both threads" % C_LOOP),
    "extern_python_from_c": (op_extern_python_from_c, C_LOOP, True, 'one call of an extern "Python" function from C (a C loop of %d calls, per call); shared2: one binding (@ffi.def_extern) from both threads; named extern_python before step 4' % C_LOOP),
    "callback_new_free": (op_callback_new_free, 1, True, 'ffi.callback("int(int)", f) dropped at once: closure allocation + free'),
    "gc": (op_gc, 1, True, "ffi.gc(p, C destructor) + its collection when dropped"),
}


# ---------------------------------------------------------------------------------------
# Timing

BATCH_NS = 1_000_000  # one batch lasts about 1 ms


def calibrate(step):
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        step(n)
        dt = time.perf_counter_ns() - t0
        if dt >= BATCH_NS or n >= 1 << 22:
            return n
        n = n * 2 if dt * 8 > BATCH_NS else n * 8


def run_batches(step, n, seconds, samples):
    """Runs step(n) until `seconds` passed; appends ns per step-iteration of each batch."""
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    iters = 0
    while True:
        t0 = time.perf_counter_ns()
        step(n)
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / n)
        iters += n
        if t1 >= deadline:
            return iters, start, t1


def measure(env, name, mode, seconds):
    make, unit, shared_differs, _ = OPS[name]
    if mode == "single":
        step = make(env, 0)
        n = calibrate(step)
        samples = []
        iters, start, end = run_batches(step, n, seconds, samples)
        return {
            "threads": 1,
            "ns_per_op": statistics.median(samples) / unit,
            "ns_min": min(samples) / unit,
            "throughput": iters * unit * 1e9 / (end - start),
            "ops": iters * unit,
            "batch": n,
            "batches": len(samples),
        }
    if mode not in ("own2", "shared2"):
        raise SystemExit("unknown --mode %r (known: single, own2, shared2)" % mode)
    if mode == "shared2" and not shared_differs:
        return {"threads": 2, "skipped": "no objects to share: each iteration builds its own"}
    if mode == "own2":
        steps = [make(env, 0), make(env, 1)]
    else:
        shared = make(env, 0)
        steps = [shared, shared]
    n = calibrate(steps[0])
    barrier = threading.Barrier(len(steps))
    results = [None] * len(steps)
    errors = []

    def worker(i):
        try:
            steps[i](n)  # warm this thread's objects
            samples = []
            barrier.wait()
            results[i] = run_batches(steps[i], n, seconds, samples) + (samples,)
        except BaseException as e:  # reported below, never swallowed
            errors.append("%s: %s" % (type(e).__name__, e))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    iters = sum(r[0] for r in results)
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    samples = [s for r in results for s in r[3]]
    return {
        "threads": len(steps),
        "ns_per_op": statistics.median(samples) / unit,  # per thread, wall clock
        "ns_min": min(samples) / unit,
        "throughput": iters * unit * 1e9 / (end - start),
        "ops": iters * unit,
        "batch": n,
        "batches": len(samples),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", metavar="DIR", help="build the benchmark modules into DIR")
    parser.add_argument("--modules", metavar="DIR", help="where --prepare built the modules")
    parser.add_argument("--op", help="operation(s), comma-separated (see --list)")
    parser.add_argument("--mode", default="single", help="single, own2, shared2 (comma-separated)")
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per mode")
    parser.add_argument("--json", action="store_true", help="one JSON line per (op, mode)")
    parser.add_argument("--list", action="store_true", help="print the operations as JSON")
    args = parser.parse_args(argv)

    if args.list:
        print(json.dumps([{"op": k, "unit": v[1], "shared": v[2], "what": v[3]} for k, v in OPS.items()]))
        return 0
    if args.prepare:
        prepare(args.prepare)
        return 0
    if not args.op or not args.modules:
        parser.error("--op and --modules are required (or --prepare DIR, --list)")
    names = [s for s in args.op.split(",") if s]
    modes = [s for s in args.mode.split(",") if s]
    for name in names:
        if name not in OPS:
            parser.error("unknown --op %r (known: %s)" % (name, ", ".join(OPS)))
    env = Env(os.path.abspath(args.modules))
    status = 0
    for name in names:
        for mode in modes:
            try:
                out = measure(env, name, mode, args.seconds)
            except Exception as e:
                out = {"error": "%s: %s" % (type(e).__name__, e)}
                status = 1
            out.update({"op": name, "mode": mode, "seconds": args.seconds})
            out.update(environment())
            if args.json:
                print(json.dumps(out), flush=True)
            else:
                ns = out.get("ns_per_op")
                print("%-18s %-8s %s" % (name, mode, "%.1f ns/op, %.0f ops/s" % (ns, out["throughput"])
                                         if ns is not None else out.get("error") or out.get("skipped")),
                      flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
