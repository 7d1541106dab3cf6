"""Builds the fixtures of the stress suite, once per pytest session, into a temporary dir.

What gets built (all from the text generated below, nothing is read from the source tree):

- ``libstresshelp.so`` (gcc): what the scenarios need from C: call a function pointer,
  spawn pthreads that call a callback, add 1 to errno, fputs to a ``FILE *``, a variadic
  sum, a counting destructor, plus the structs/enums/functions/globals of the ABI module.
- ``libstressclose.so`` (gcc): a tiny library that nothing else loads, for the close
  scenarios (7-10): closing it for real unmaps it, which /proc/self/maps shows.
- ``_stress_abi.py``, ``_stress_deep.py``, ``_stress_inc1.py``, ``_stress_inc2.py``:
  out-of-line ABI modules (``set_source(name, None)`` + ``emit_python_code``). The
  scenarios ``exec`` them every round to get a fresh ``ffi`` with fresh lazy state.
- ``_stress_api_lib``, ``_stress_api_xp``, ``_stress_api_bad``: API-mode modules
  (``ffi.compile``) with hundreds of distinct names, so that first-access races can be
  raced once per name. They are compiled in parallel sub-processes, with -O0 (the
  generated wrappers are not what is under test; the backend is).

``fixtures.json`` in the output dir lists the paths and the counts the scenarios use.
"""
import json
import os
import subprocess
import sys

# ---- sizes shared with the scenarios (also written to fixtures.json) -------------------
N_S = 16            # struct s{i}, enum e{i}, struct leaf{i}/wrap{i}
N_FN = 120          # stress_fn{i}   (ABI lib attributes, scenarios 11/12)
N_GV = 30           # stress_gv{i}
N_K = 30            # STRESS_K{i}    (int constants)
N_DC = 20           # stress_dc{i}   (non-int constants)
N_CLOSE_FN = 40     # close_fn{i} in libstressclose.so
N_CHAINS = 8        # pointer chains of _stress_deep
CHAIN_DEPTH = 100
DEEP_MIN, DEEP_MAX = 900, 1100   # typedefs deep<D> = int with D stars, around the
                                 # backend's recursion limit of 1000
CHAIN_BASES = ["int", "long", "short", "char", "float", "double", "unsigned int",
               "long long"]
# _stress_api_lib
NB11 = 48           # batches for scenario 11 (API part)
B11 = dict(f=12, k=6, d=2, g=2, x=2)
N13 = 960           # b_f{n} for scenario 13
N25 = 1000          # d_f{n} for scenario 25
# _stress_api_xp
NXP = 800
# _stress_api_bad
NBAD = 48


def s_value(i):
    return dict(fn_mul=i + 3, fn_add=i, gv=1000 + 7 * i, k=100000 + 13 * i, dc=i + 0.25)


# ---- text shared by C and cdef ---------------------------------------------------------

def struct_defs():
    out = []
    for i in range(N_S):
        out.append("struct s%d { int a; int b; long c; struct s%d *next; char tag[%d]; };"
                   % (i, i, i + 1))
        out.append("enum e%d { E%d_A = %d, E%d_B = %d, E%d_C = -%d };"
                   % (i, i, i, i, 1000 + i, i, i + 1))
        out.append("struct leaf%d { int v; short w[%d]; };" % (i, i % 3 + 1))
        out.append("struct wrap%d { long pad; struct leaf%d leaf; };" % (i, i))
    out.append("struct inner { short x; double y; char tag[3]; };")
    out.append("struct outer { char c; struct inner inr; long long z; "
               "struct inner arr[2]; };")
    out.append("struct bits { int a:3; unsigned int b:5; long c:17; char d; short e:4; };")
    out.append("struct vsa { int n; struct inner last; int data[]; };")
    return "\n".join(out)


PACKED_DEF = "struct packd { char a; int b; short c; long long d; };"


def helper_protos():
    out = [
        "int stress_call_int(int (*f)(int), int x);",
        "long long stress_call_n(int (*f)(int), int x, int n);",
        "long long stress_spawn_calls(int (*cb)(int), int total, int batch, int base);",
        "void stress_errno_inc(void);",
        "int stress_fputs(const char *s, FILE *f);",
        "int stress_vsum(int n, ...);",
        "void stress_count_free(void *p);",
        "long stress_free_count(void);",
        "long long stress_outer_sum(struct outer o);",
        "long long stress_packd_sum(struct packd *p);",
    ]
    for i in range(N_S):
        out.append("long stress_sum_s%d(struct s%d *p);" % (i, i))
        out.append("int stress_enum_e%d(enum e%d *p);" % (i, i))
    for i in range(N_FN):
        out.append("int stress_fn%d(int x);" % i)
    return "\n".join(out)


HELPER_C_HEAD = r"""
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
"""

HELPER_C_BODY = r"""
int stress_call_int(int (*f)(int), int x) { return f(x); }

long long stress_call_n(int (*f)(int), int x, int n)
{
    long long s = 0;
    int i;
    for (i = 0; i < n; i++)
        s += f(x + i);
    return s;
}

struct spawn_arg { int (*cb)(int); int x; int result; };

static void *spawn_main(void *p)
{
    struct spawn_arg *a = (struct spawn_arg *)p;
    a->result = a->cb(a->x);
    return NULL;
}

/* Spawns 'total' short-lived pthreads, at most 'batch' alive at a time; thread k calls
   cb(base + k) once.  Returns the sum of the results, or -1 if a thread could not be
   created. */
long long stress_spawn_calls(int (*cb)(int), int total, int batch, int base)
{
    struct spawn_arg *args;
    pthread_t *tids;
    long long sum = 0;
    int done = 0, i, n, err = 0;

    if (batch < 1) batch = 1;
    args = calloc(batch, sizeof(*args));
    tids = calloc(batch, sizeof(*tids));
    if (!args || !tids) { free(args); free(tids); return -1; }
    while (done < total && !err) {
        n = total - done < batch ? total - done : batch;
        for (i = 0; i < n; i++) {
            args[i].cb = cb;
            args[i].x = base + done + i;
            args[i].result = 0;
            if (pthread_create(&tids[i], NULL, spawn_main, &args[i]) != 0) {
                err = 1;
                n = i;
                break;
            }
        }
        for (i = 0; i < n; i++) {
            pthread_join(tids[i], NULL);
            sum += args[i].result;
        }
        done += n;
    }
    free(args);
    free(tids);
    return err ? -1 : sum;
}

void stress_errno_inc(void) { errno += 1; }

int stress_fputs(const char *s, FILE *f)
{
    if (fputs(s, f) < 0)
        return -1;
    if (fflush(f) != 0)
        return -2;
    return 0;
}

int stress_vsum(int n, ...)
{
    va_list ap;
    int i, s = 0;
    va_start(ap, n);
    for (i = 0; i < n; i++)
        s += va_arg(ap, int);
    va_end(ap);
    return s;
}

static long stress_free_counter;
void stress_count_free(void *p) { (void)p; __atomic_fetch_add(&stress_free_counter, 1, __ATOMIC_SEQ_CST); }
long stress_free_count(void) { return __atomic_load_n(&stress_free_counter, __ATOMIC_SEQ_CST); }

long long stress_outer_sum(struct outer o)
{
    return o.c + o.inr.x + (long long)o.inr.y + o.inr.tag[2] + o.z
           + o.arr[0].x + o.arr[1].x + (long long)o.arr[1].y;
}

long long stress_packd_sum(struct packd *p) { return p->a + p->b + p->c + p->d; }
"""


def helper_c():
    out = [HELPER_C_HEAD, struct_defs(),
           "struct __attribute__((packed)) packd { char a; int b; short c; long long d; };",
           HELPER_C_BODY]
    for i in range(N_S):
        out.append("long stress_sum_s%d(struct s%d *p) { return p->a + p->b + p->c; }"
                   % (i, i))
        out.append("int stress_enum_e%d(enum e%d *p) { return (int)*p; }" % (i, i))
    for i in range(N_FN):
        v = s_value(i)
        out.append("int stress_fn%d(int x) { return x * %d + %d; }"
                   % (i, v["fn_mul"], v["fn_add"]))
    for i in range(N_GV):
        out.append("int stress_gv%d = %d;" % (i, s_value(i)["gv"]))
    for i in range(N_DC):
        out.append("const double stress_dc%d = %r;" % (i, s_value(i)["dc"]))
    return "\n".join(out) + "\n"


def close_c():
    out = ["int close_var = 4242;"]
    for i in range(N_CLOSE_FN):
        out.append("int close_fn%d(int x) { return x + %d; }" % (i, i))
    return "\n".join(out) + "\n"


def abi_cdef():
    out = [struct_defs(), helper_protos()]
    for i in range(N_GV):
        out.append("extern int stress_gv%d;" % i)
    for i in range(N_K):
        out.append("#define STRESS_K%d %d" % (i, s_value(i)["k"]))
    for i in range(N_DC):
        out.append("static const double stress_dc%d;" % i)
    out.append("extern int close_var;")
    for i in range(N_CLOSE_FN):
        out.append("int close_fn%d(int x);" % i)
    return "\n".join(out)


def deep_cdef():
    out = []
    for k, base in enumerate(CHAIN_BASES[:N_CHAINS]):
        out.append("typedef %s %s chain%d;" % (base, "*" * CHAIN_DEPTH, k))
    for d in range(DEEP_MIN, DEEP_MAX + 1):
        out.append("typedef int %s deep%d;" % ("*" * d, d))
    return "\n".join(out)


INC1_CDEF = "struct ia { struct ia *self; int x; long y; };"
# ib and ic point to each other; id embeds both by value; all embed ffi1's 'struct ia'.
# (cffi 1.17.1 cannot complete a struct that embeds by value a struct pointing back to it
# when the pointing one is realized first, even single-threaded: not used here.)
INC2_CDEF = ("struct ib { struct ia a; struct ic *pc; char z; };\n"
             "struct ic { struct ia a; struct ib *pb; short w; struct ia arr[2]; };\n"
             "struct id { struct ib b; struct ic c[2]; struct ia *pa; struct id *self; };")


# ---- API-mode modules ------------------------------------------------------------------

def api_lib_source():
    cdef, c = [], []
    for b in range(NB11):
        for j in range(B11["f"]):
            cdef.append("int a%d_f%d(int);" % (b, j))
            c.append("static int a%d_f%d(int x) { return x * %d + %d; }" % (b, j, j + 2, b))
        for j in range(B11["k"]):
            cdef.append("#define A%d_K%d %d" % (b, j, 200000 + 100 * b + j))
            c.append("#define A%d_K%d %d" % (b, j, 200000 + 100 * b + j))
        for j in range(B11["d"]):
            cdef.append("static const double a%d_d%d;" % (b, j))
            c.append("static const double a%d_d%d = %r;" % (b, j, b + 0.5 + j))
        for j in range(B11["g"]):
            cdef.append("extern int a%d_g%d;" % (b, j))
            c.append("int a%d_g%d = %d;" % (b, j, 10 * b + j))
        for j in range(B11["x"]):
            cdef.append('extern "Python" int a%d_x%d(int);' % (b, j))
    for n in range(N13):
        cdef.append("int b_f%d(int);" % n)
        c.append("static int b_f%d(int x) { return x + %d; }" % (n, n))
    for n in range(N25):
        cdef.append("int d_f%d(int, int (*)[%d]);" % (n, n + 2))
        c.append("static int d_f%d(int x, int (*p)[%d]) { return x * %d + (p ? (*p)[%d] : 7); }"
                 % (n, n + 2, n + 1, n + 1))
    return "\n".join(cdef), "\n".join(c)


XP_C = r"""
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
%(decls)s
static int (*xp_table[%(n)d])(int) = { %(table)s };

int xp_call(int which, int x) { return xp_table[which](x); }

struct race_arg { pthread_barrier_t *bar; int *arrived; int n, which, warm, x; int *out; };
static void *race_main(void *p)
{
    struct race_arg *a = (struct race_arg *)p;
    if (a->warm >= 0)
        (void)xp_table[a->warm](0);   /* this thread gets its Python thread state now */
    pthread_barrier_wait(a->bar);
    /* then spin, so that the threads on a CPU leave at the same instant */
    __atomic_fetch_add(a->arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(a->arrived, __ATOMIC_SEQ_CST) < a->n)
        sched_yield();
    *a->out = xp_table[a->which](a->x);
    return NULL;
}

/* nthreads C threads wait on one barrier, then each calls the extern "Python" function
   'which' once with x + i; results[i] gets the result.  If warm >= 0, each thread first
   calls function 'warm' (so that it already has a Python thread state at the barrier). */
int xp_race(int which, int warm, int nthreads, int x, int *results)
{
    pthread_barrier_t bar;
    int arrived = 0;
    pthread_t *t = calloc(nthreads, sizeof(pthread_t));
    struct race_arg *a = calloc(nthreads, sizeof(struct race_arg));
    int i, made = 0, err = 0;
    if (!t || !a) { free(t); free(a); return -1; }
    pthread_barrier_init(&bar, NULL, nthreads);
    for (i = 0; i < nthreads; i++) {
        a[i].bar = &bar; a[i].arrived = &arrived; a[i].n = nthreads;
        a[i].which = which; a[i].warm = warm; a[i].x = x + i;
        a[i].out = &results[i];
        if (pthread_create(&t[i], NULL, race_main, &a[i]) != 0) { err = -2; break; }
        made++;
    }
    if (err) { /* cannot release a partial barrier safely: abort the process */ abort(); }
    for (i = 0; i < made; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
    free(t); free(a);
    return err;
}

struct loop_arg { int which, iters, base, a1, b1, a2, b2; int *bad; };
static void *loop_main(void *p)
{
    struct loop_arg *a = (struct loop_arg *)p;
    int k, bad = 0;
    for (k = 0; k < a->iters; k++) {
        int x = a->base + k;
        int r = xp_table[a->which](x);
        if (r != a->a1 * x + a->b1 && r != a->a2 * x + a->b2)
            bad++;
    }
    __atomic_fetch_add(a->bad, bad, __ATOMIC_SEQ_CST);
    return NULL;
}

/* The number of thread states of the main interpreter (s16: the states of ended
   foreign threads must not linger).  cffi's wrapper calls this detached; the list is
   stable because no thread starts or ends while s16 counts.  -1 where the limited API
   hides the list. */
int xp_thread_states(void)
{
#ifdef Py_LIMITED_API
    return -1;
#else
    int n = 0;
    PyThreadState *t = PyInterpreterState_ThreadHead(PyInterpreterState_Main());
    for (; t != NULL; t = PyThreadState_Next(t))
        n++;
    return n;
#endif
}

/* nthreads C threads each call extern "Python" 'which' iters times; every result must
   be a1*x+b1 or a2*x+b2.  Returns the number of other results (or -1). */
int xp_loop(int which, int nthreads, int iters, int a1, int b1, int a2, int b2)
{
    pthread_t *t = calloc(nthreads, sizeof(pthread_t));
    struct loop_arg *a = calloc(nthreads, sizeof(struct loop_arg));
    int i, made = 0, bad = 0;
    if (!t || !a) { free(t); free(a); return -1; }
    for (i = 0; i < nthreads; i++) {
        a[i].which = which; a[i].iters = iters; a[i].base = i * 1000;
        a[i].a1 = a1; a[i].b1 = b1; a[i].a2 = a2; a[i].b2 = b2; a[i].bad = &bad;
        if (pthread_create(&t[i], NULL, loop_main, &a[i]) != 0) break;
        made++;
    }
    for (i = 0; i < made; i++)
        pthread_join(t[i], NULL);
    free(t); free(a);
    return made == nthreads ? bad : -1;
}
"""


def api_xp_source():
    cdef = ['extern "Python" int xp%d(int);' % n for n in range(NXP)]
    cdef += ["int xp_call(int which, int x);",
             "int xp_race(int which, int warm, int nthreads, int x, int *results);",
             "int xp_loop(int which, int nthreads, int iters, int a1, int b1, int a2, int b2);",
             "int xp_thread_states(void);"]
    decls = "\n".join("static int xp%d(int);" % n for n in range(NXP))
    table = ", ".join("xp%d" % n for n in range(NXP))
    return "\n".join(cdef), XP_C % dict(decls=decls, n=NXP, table=table)


def api_bad_source():
    cdef, c = [], []
    names = ["ctrl"] + [str(n) for n in range(NBAD)]
    for n in names:
        cdef.append("struct bad%s { int a; };" % n)
        c.append("struct bad%s { int a; int extra; };" % n)
        cdef.append("struct badoff%s { int a; int b; };" % n)
        c.append("struct badoff%s { int a; short pad; int b; };" % n)
        cdef.append("int bad_get%s(struct bad%s *p);" % (n, n))
        c.append("static int bad_get%s(struct bad%s *p) { return p->a; }" % (n, n))
    return "\n".join(cdef), "\n".join(c)


API_MODULES = {
    "_stress_api_lib": api_lib_source,
    "_stress_api_xp": api_xp_source,
    "_stress_api_bad": api_bad_source,
}


def build_api(name, outdir):
    """Compiles one API-mode module into outdir (run in a sub-process by build_all)."""
    import cffi
    cdef, csrc = API_MODULES[name]()
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    extra = {}
    if os.environ.get("CFFI_FT_STRESS_NO_LIMITED_API") == "1":
        # `xtask stress --backends vanilla`: vanilla cffi 1.17.1 asks for the limited API,
        # which 3.13t lacks (the kit stops asking at step 0); compile as the kit would
        extra = {"define_macros": [("_CFFI_NO_LIMITED_API", None)], "py_limited_api": False}
    ffi.set_source(name, csrc, extra_compile_args=["-O0", "-w"], **extra)
    tmp = os.path.join(outdir, "build-" + name)
    os.makedirs(tmp, exist_ok=True)
    path = ffi.compile(tmpdir=tmp, verbose=False)
    target = os.path.join(outdir, os.path.basename(path))
    os.replace(path, target)
    return target


def _emit_abi(name, cdef, outdir, packed=None, include=None):
    import cffi
    ffi = cffi.FFI()
    if include is not None:
        ffi.include(include)
    ffi.cdef(cdef)
    if packed:
        ffi.cdef(packed, packed=True)
    ffi.set_source(name, None)
    path = os.path.join(outdir, name + ".py")
    ffi.emit_python_code(path)
    return ffi, path


def _gcc(src_text, out, workdir):
    src = out[:-3] + ".c"
    with open(src, "w") as f:
        f.write(src_text)
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-pthread", "-o", out, src]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("gcc failed: %s\n%s" % (" ".join(cmd), proc.stderr))


def build_all(outdir):
    """Builds every fixture into outdir; returns the manifest (also in fixtures.json)."""
    outdir = os.path.abspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # API modules: in parallel sub-processes (setuptools is not thread-safe)
    procs = {}
    for name in API_MODULES:
        code = ("import sys; sys.path.insert(0, %r); from cffi_stress import _build; "
                "_build.build_api(%r, %r)" % (pkg_parent, name, outdir))
        log = open(os.path.join(outdir, "build-%s.log" % name), "w")
        procs[name] = (subprocess.Popen([sys.executable, "-c", code], cwd=outdir, env=env,
                                        stdout=log, stderr=subprocess.STDOUT), log)
    helper = os.path.join(outdir, "libstresshelp.so")
    close = os.path.join(outdir, "libstressclose.so")
    _gcc(helper_c(), helper, outdir)
    _gcc(close_c(), close, outdir)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _emit_abi("_stress_abi", abi_cdef(), outdir, packed=PACKED_DEF)
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 20000))
        try:
            _emit_abi("_stress_deep", deep_cdef(), outdir)
        finally:
            sys.setrecursionlimit(old)
        inc1, _ = _emit_abi("_stress_inc1", INC1_CDEF, outdir)
        _emit_abi("_stress_inc2", INC2_CDEF, outdir, include=inc1)
    failed = []
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            with open(log.name) as f:
                failed.append("%s (exit %s):\n%s" % (name, rc, f.read()[-4000:]))
    if failed:
        raise RuntimeError("building the API-mode stress modules failed:\n" + "\n".join(failed))
    manifest = dict(
        dir=outdir, helper=helper, close=close,
        abi=["_stress_abi", "_stress_deep", "_stress_inc1", "_stress_inc2"],
        api=sorted(API_MODULES),
        counts=dict(N_S=N_S, N_FN=N_FN, N_GV=N_GV, N_K=N_K, N_DC=N_DC,
                    N_CLOSE_FN=N_CLOSE_FN, N_CHAINS=N_CHAINS, CHAIN_DEPTH=CHAIN_DEPTH,
                    DEEP_MIN=DEEP_MIN, DEEP_MAX=DEEP_MAX, CHAIN_BASES=CHAIN_BASES[:N_CHAINS], NB11=NB11,
                    B11=B11, N13=N13, N25=N25, NXP=NXP, NBAD=NBAD),
    )
    with open(os.path.join(outdir, "fixtures.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


if __name__ == "__main__":
    print(json.dumps(build_all(sys.argv[1]), indent=1))
