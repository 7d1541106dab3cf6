/* cffi-ft: the C view of the kit, included by the patched _cffi_backend.c.
 *
 * Functions named cffi_ft_shim_* live in shim-c/src/cffi_ft_shim.c and are compiled
 * with the backend's own flags and headers; functions named cffi_ft_* without "shim"
 * are exported by the Rust umbrella staticlib (crates/cffi-ft).  All of them must be
 * called on a thread attached to the interpreter, and return 0 on success or -1 with
 * a Python exception set.
 */
#ifndef CFFI_FT_H
#define CFFI_FT_H

#include <Python.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nothing of the kit is exported from _cffi_backend: the shim's functions are hidden
   here, and the staticlib's symbols are made local at link time (--exclude-libs). */
#if defined(__GNUC__) || defined(__clang__)
#  define CFFI_FT_PRIVATE __attribute__((visibility("hidden")))
#else
#  define CFFI_FT_PRIVATE
#endif

/* ThreadSanitizer (cargo xtask tsan). The staticlib is not instrumented (stable Rust
   has no TSan), so the synchronisation it does is invisible to TSan: an object built
   by C code on one thread and handed to another through Rust would show as a race.
   Under TSan the header therefore annotates the happens-before edges at the seam, and
   nowhere else: CFFI_FT_TSAN_RELEASE(p) before C hands what it wrote to Rust for
   publication, CFFI_FT_TSAN_ACQUIRE(p) after Rust hands it back on another thread.
   With CFFI_FT_TSAN_SEAMS=off in the environment at import the annotations do nothing
   (the check that removing them makes reports appear). Other builds: no code. */
#if defined(__SANITIZE_THREAD__)
#  define CFFI_FT_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define CFFI_FT_TSAN 1
#  endif
#endif

#ifdef CFFI_FT_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
/* 1 unless CFFI_FT_TSAN_SEAMS=off (read once, in cffi_ft_shim_backend_init). */
CFFI_FT_PRIVATE extern int cffi_ft_tsan_seams;
#  define CFFI_FT_TSAN_ACQUIRE(p) \
    (cffi_ft_tsan_seams ? __tsan_acquire((void *)(p)) : (void)0)
#  define CFFI_FT_TSAN_RELEASE(p) \
    (cffi_ft_tsan_seams ? __tsan_release((void *)(p)) : (void)0)
#else
#  define CFFI_FT_TSAN_ACQUIRE(p) ((void)0)
#  define CFFI_FT_TSAN_RELEASE(p) ((void)0)
#endif

/* Step 0, from PyInit__cffi_backend: ABI check between the backend and the staticlib,
   GIL-free declaration on free-threaded builds, and _cffi_backend.__cffi_ft__. */
CFFI_FT_PRIVATE int cffi_ft_shim_backend_init(PyObject *module, const char *cffi_version);

/* Step 0, for each API-mode module the backend creates: GIL-free declaration. */
CFFI_FT_PRIVATE int cffi_ft_module_declare_gil_free(PyObject *module);

/* Rust side of cffi_ft_shim_backend_init (crates/cffi-ft/src/edge.rs). */
CFFI_FT_PRIVATE int cffi_ft_backend_init(PyObject *module, const char *cffi_version,
                                         int c_free_threaded,
                                         unsigned int c_py_version_hex);

/* Step 1 (cargo feature ctype-intern): the unique ctype cache
   (crates/cffi-ft/src/unique_cache.rs over crates/ctype-intern).
   Keys are arrays of nwords machine words, as built by get_unique_type's callers. */

/* New reference to the live ctype cached under key, or NULL (no exception set). */
CFFI_FT_PRIVATE PyObject *cffi_ft_unique_lookup(const void *const *key, size_t nwords);

/* Steals 'candidate' (a fully built, unshared ctype). Returns a new reference to the
   canonical ctype: an equal live one (candidate released), or candidate itself after
   storing its token into *entry_slot (its ct_unique_entry field). NULL with an
   exception on failure. */
CFFI_FT_PRIVATE PyObject *cffi_ft_unique_intern(const void *const *key, size_t nwords,
                                                PyObject *candidate, void **entry_slot);

/* First thing in the ctype's dealloc, before PyObject_ClearWeakRefs: removes the
   entry of 'dying' (whose ct_unique_entry is 'entry'; NULL: none). Never raises. */
CFFI_FT_PRIVATE void cffi_ft_unique_forget(void *entry, PyObject *dying);

/* Step 2 (cargo feature realize-once): the realization protocol
   (crates/cffi-ft/src/realize.rs over crates/realize-once).

   The realization lock is one re-entrant lock for the whole process. A thread that
   must wait for it detaches first (PyEval_SaveThread) and parks on a PyMutex, so it
   never blocks a stop-the-world collection, and never waits holding the GIL. It may
   be held across dict, weakref and unique-cache calls. cffi_ft_realize_lock() returns
   0, or -1 with an exception (a protocol error: a bug); cffi_ft_realize_unlock()
   returns 0, or -1 with an exception if this thread does not hold the lock. */
CFFI_FT_PRIVATE int cffi_ft_realize_lock(void);
CFFI_FT_PRIVATE int cffi_ft_realize_unlock(void);

/* The once-state word of a lazily completed object (a struct's field list). The C
   side stores NOT_LAZY or LAZY into it before the object is shared, and reads it only
   through cffi_ft_lazy_is_done(); every other word is BUILDING(thread). */
#define CFFI_FT_LAZY_NOT_LAZY 0
#define CFFI_FT_LAZY_LAZY 1
#define CFFI_FT_LAZY_DONE 2

static inline int cffi_ft_lazy_is_done(const uintptr_t *state)
{
    /* Under TSan this load (instrumented) pairs with the CFFI_FT_TSAN_RELEASE(state)
       that cffi_ft_tsan_lazy_force() does before Rust stores DONE. */
    return __atomic_load_n(state, __ATOMIC_ACQUIRE) == CFFI_FT_LAZY_DONE;
}

/* Completes a lazy object: if *state is DONE returns 1 at once (acquire, no lock).
   Otherwise takes the realization lock; if the object is LAZY, claims it and calls
   build(ctx) with the lock held (build returns 0, or -1 with an exception), then
   publishes DONE (release) or rolls back to LAZY. Returns 1: complete; 0: nothing to
   complete (NOT_LAZY); -1: the build failed (its exception is set) or a protocol
   error (SystemError); CFFI_FT_LAZY_RECURSIVE: this thread is completing it further
   up its stack (no exception set). */
#define CFFI_FT_LAZY_RECURSIVE (-2)
CFFI_FT_PRIVATE int cffi_ft_lazy_force(uintptr_t *state, int (*build)(void *ctx),
                                       void *ctx);

/* NOT_LAZY -> DONE (release), for an object completed directly by user code. 0, or
   -1 with a SystemError if the object was in another state. */
CFFI_FT_PRIVATE int cffi_ft_lazy_complete_eagerly(uintptr_t *state);

/* Realized type slots (_cffi_types[] and friends): acquire load, release store.
   Generated modules read the slots directly; the layout is unchanged. */
static inline void *cffi_ft_slot_load(void *const *slot)
{
    return __atomic_load_n(slot, __ATOMIC_ACQUIRE);
}

static inline void cffi_ft_slot_publish(void **slot, void *value)
{
    __atomic_store_n(slot, value, __ATOMIC_RELEASE);
}

/* Step 3 (cargo feature lib-registry): the library registry
   (crates/cffi-ft/src/lib_registry.rs over crates/lib-registry).

   A CLibrary (load_library) and a dlopen'd Lib own one cffi_ft_lib instead of the raw
   dlopen handle. Symbol lookups pin the handle; exactly one close wins; the OS
   dlclose runs when the last pin is released. A pin can be handed to the object made
   from a dlsym result (a global-variable object, a function-pointer cdata), which
   keeps the library mapped until that object dies. Every function may be called from
   any attached thread; none blocks. -1 means a Python exception is set (a panic of
   the kit: SystemError). */
typedef struct cffi_ft_lib cffi_ft_lib;
typedef struct cffi_ft_lib_pin cffi_ft_lib_pin;
typedef struct cffi_ft_lib_closing cffi_ft_lib_closing;

/* Takes ownership of os_handle: 0 and *out, or -1. With auto_close, freeing the entry
   while it is still open closes the handle (after its last pin). */
CFFI_FT_PRIVATE int cffi_ft_lib_new(void *os_handle, int auto_close, const char *name,
                                    cffi_ft_lib **out);
/* From the owner's dealloc. NULL: no-op. */
CFFI_FT_PRIVATE void cffi_ft_lib_free(cffi_ft_lib *lib);
/* 1 and *out: this call won the close (finish it with cffi_ft_lib_close_finish);
   0: already closed; -1. From the 1 on, pins fail and the generation is bumped. */
CFFI_FT_PRIVATE int cffi_ft_lib_close(cffi_ft_lib *lib, cffi_ft_lib_closing **out);
/* 0: closed now; 1: deferred to the last pin; 2: closed now, dlclose failed (message
   in err); -1. Consumes closing. */
CFFI_FT_PRIVATE int cffi_ft_lib_close_finish(cffi_ft_lib_closing *closing, char *err,
                                             size_t errlen);
CFFI_FT_PRIVATE uint64_t cffi_ft_lib_generation(const cffi_ft_lib *lib);
/* 1 and *out, *generation: pinned; 0: closed; -1. */
CFFI_FT_PRIVATE int cffi_ft_lib_pin_new(const cffi_ft_lib *lib, cffi_ft_lib_pin **out,
                                        uint64_t *generation);
/* NULL: no-op. The last pin of a closed library runs dlclose. */
CFFI_FT_PRIVATE void cffi_ft_lib_unpin(cffi_ft_lib_pin *pin);
/* dlsym on a pinned handle: 0 and *address (may be NULL); 1: not found, the loader's
   message in err; -1. */
CFFI_FT_PRIVATE int cffi_ft_lib_symbol(const cffi_ft_lib_pin *pin, const char *name,
                                       void **address, char *err, size_t errlen);
/* Looks name up and calls use(address, ctx) with the handle pinned for that call
   only (no shared counter). Returns use's result (0, or -1 with an exception),
   CFFI_FT_LIB_CLOSED, CFFI_FT_LIB_NOT_FOUND (message in err), or -1. */
#define CFFI_FT_LIB_CLOSED (-2)
#define CFFI_FT_LIB_NOT_FOUND (-3)
CFFI_FT_PRIVATE int cffi_ft_lib_with_symbol(const cffi_ft_lib *lib, const char *name,
                                            int (*use)(void *address, void *ctx),
                                            void *ctx, char *err, size_t errlen);
/* Hands pin to the object at owner (consumed either way): 0, or -1. The owner's
   dealloc must call cffi_ft_lib_pin_detach(owner). */
CFFI_FT_PRIVATE int cffi_ft_lib_pin_attach(const void *owner, cffi_ft_lib_pin *pin);
/* From a dealloc: releases the pin attached to owner, if any. Never raises. */
CFFI_FT_PRIVATE void cffi_ft_lib_pin_detach(const void *owner);

/* Step 4 (cargo feature callback-dispatch): callback dispatch
   (crates/cffi-ft/src/callbacks.rs over crates/callback-dispatch).

   The closure pool replaces malloc_closure.h's free list where cffi uses its own
   allocator (every platform but NetBSD, macOS >= 10.15 and Emscripten, where libffi's
   ffi_closure_alloc is used and left alone). Each block has one owner; a freed block
   is first redirected by the caller's kill() (under the pool's lock: kill must only
   rewrite the trampoline) and then waits in a FIFO quarantine of 1024 blocks before
   reuse. The pool functions call no CPython API and may run on any thread. */
#define CFFI_FT_CLOSURE_DOUBLE_FREE (-4)
#define CFFI_FT_CLOSURE_FOREIGN (-5)
/* Once, at module init: block_size = sizeof(ffi_closure); executable = 0 when the
   pages must not be PROT_EXEC (PaX EMUTRAMP). 0, or -1 with an exception. */
CFFI_FT_PRIVATE int cffi_ft_closure_pool_init(size_t block_size, int executable);
/* A block, or NULL (out of memory; no exception set). */
CFFI_FT_PRIVATE void *cffi_ft_closure_alloc(void);
/* kill(block), then quarantine: 0, CFFI_FT_CLOSURE_DOUBLE_FREE or
   CFFI_FT_CLOSURE_FOREIGN (nothing done), -1 (kit bug, on stderr). Never raises. */
CFFI_FT_PRIVATE int cffi_ft_closure_free(void *block, void (*kill)(void *block));

/* Foreign threads: release() runs on this thread when it ends, before its pthread
   keys are cleared (a Rust thread-local destructor). 1: registered now; 0: this
   thread has it already; -1: the thread is ending. No CPython API. */
CFFI_FT_PRIVATE int cffi_ft_thread_at_exit(void (*release)(void));

/* The binding of an extern "Python" function: reserved1 of its struct
   _cffi_externpy_s is NULL until the first binding, then points to a lock-free slot
   (reserved2 is unused). All on attached threads. */
struct _cffi_externpy_s;
/* If xp is bound for interp_key: invoke(infotuple, ctx) with the binding held for the
   call (borrowed tuple, no lock), and 1; else 0 (no exception). */
CFFI_FT_PRIVATE int cffi_ft_xpy_call(struct _cffi_externpy_s *xp, PyObject *interp_key,
                                     void (*invoke)(PyObject *infotuple, void *ctx),
                                     void *ctx);
/* Binds (both borrowed; the binding keeps its own references); returns the previous
   binding for cffi_ft_xpy_release, to be called after unlocking (may be NULL). */
CFFI_FT_PRIVATE void *cffi_ft_xpy_bind(struct _cffi_externpy_s *xp, PyObject *interp_key,
                                       PyObject *infotuple);
CFFI_FT_PRIVATE void cffi_ft_xpy_release(void *old_binding);
/* At module init: 0 if the C compiler's layout of struct _cffi_externpy_s is the
   staticlib's (bindgen over parse_c_type.h), else -1 with ImportError. */
CFFI_FT_PRIVATE int cffi_ft_xpy_check_layout(size_t size, size_t reserved1_offset,
                                             size_t reserved2_offset);


#ifdef CFFI_FT_TSAN
/* The seams, annotated (see CFFI_FT_TSAN above). Static inline, so that a step only
   instantiates the wrappers of the kit functions its patches call; the macros below
   send the patched backend's calls through them. The sync objects are the addresses
   the two sides share: the ctype, the once-state word, the closure block, the
   extern "Python" struct, and one shim word for the realization lock (whose fast path
   is a CAS in Rust that TSan cannot see). */
CFFI_FT_PRIVATE extern char cffi_ft_tsan_realize_lock_sync;   /* in the shim */

static inline PyObject *cffi_ft_tsan_unique_lookup(const void *const *key, size_t nwords)
{
    PyObject *found = cffi_ft_unique_lookup(key, nwords);
    if (found != NULL)
        CFFI_FT_TSAN_ACQUIRE(found);
    return found;
}

static inline PyObject *cffi_ft_tsan_unique_intern(const void *const *key, size_t nwords,
                                                   PyObject *candidate, void **entry_slot)
{
    PyObject *canonical;
    CFFI_FT_TSAN_RELEASE(candidate);
    canonical = cffi_ft_unique_intern(key, nwords, candidate, entry_slot);
    if (canonical != NULL)
        CFFI_FT_TSAN_ACQUIRE(canonical);
    return canonical;
}

static inline int cffi_ft_tsan_realize_lock(void)
{
    int rc = cffi_ft_realize_lock();
    if (rc == 0)
        CFFI_FT_TSAN_ACQUIRE(&cffi_ft_tsan_realize_lock_sync);
    return rc;
}

static inline int cffi_ft_tsan_realize_unlock(void)
{
    CFFI_FT_TSAN_RELEASE(&cffi_ft_tsan_realize_lock_sync);
    return cffi_ft_realize_unlock();
}

struct cffi_ft_tsan_build {
    int (*build)(void *ctx);
    void *ctx;
    uintptr_t *state;
};

/* Runs under the realization lock, taken inside Rust. */
static inline int cffi_ft_tsan_build_annotated(void *p)
{
    struct cffi_ft_tsan_build *b = (struct cffi_ft_tsan_build *)p;
    int rc;
    CFFI_FT_TSAN_ACQUIRE(&cffi_ft_tsan_realize_lock_sync);
    rc = b->build(b->ctx);
    if (rc == 0)
        CFFI_FT_TSAN_RELEASE(b->state);   /* before Rust publishes DONE */
    CFFI_FT_TSAN_RELEASE(&cffi_ft_tsan_realize_lock_sync);
    return rc;
}

static inline int cffi_ft_tsan_lazy_force(uintptr_t *state, int (*build)(void *ctx),
                                          void *ctx)
{
    struct cffi_ft_tsan_build b = { build, ctx, state };
    int rc = cffi_ft_lazy_force(state, cffi_ft_tsan_build_annotated, &b);
    if (rc == 1)
        CFFI_FT_TSAN_ACQUIRE(state);      /* completed here, or by the builder */
    return rc;
}

static inline int cffi_ft_tsan_lazy_complete_eagerly(uintptr_t *state)
{
    CFFI_FT_TSAN_RELEASE(state);
    return cffi_ft_lazy_complete_eagerly(state);
}

static inline void *cffi_ft_tsan_closure_alloc(void)
{
    void *block = cffi_ft_closure_alloc();
    if (block != NULL)
        CFFI_FT_TSAN_ACQUIRE(block);
    return block;
}

/* kill() runs inside the call, on this thread: the release covers its writes. The
   block waits in a quarantine of 1024 frees before another thread can get it. */
static inline int cffi_ft_tsan_closure_free(void *block, void (*kill)(void *block))
{
    int rc = cffi_ft_closure_free(block, kill);
    CFFI_FT_TSAN_RELEASE(block);
    return rc;
}

struct cffi_ft_tsan_invoke {
    void (*invoke)(PyObject *infotuple, void *ctx);
    void *ctx;
    struct _cffi_externpy_s *xp;
};

static inline void cffi_ft_tsan_invoke_annotated(PyObject *infotuple, void *p)
{
    struct cffi_ft_tsan_invoke *i = (struct cffi_ft_tsan_invoke *)p;
    CFFI_FT_TSAN_ACQUIRE(i->xp);          /* the binder's writes, through Rust */
    i->invoke(infotuple, i->ctx);
}

static inline int cffi_ft_tsan_xpy_call(struct _cffi_externpy_s *xp, PyObject *interp_key,
                                        void (*invoke)(PyObject *infotuple, void *ctx),
                                        void *ctx)
{
    struct cffi_ft_tsan_invoke i = { invoke, ctx, xp };
    return cffi_ft_xpy_call(xp, interp_key, cffi_ft_tsan_invoke_annotated, &i);
}

static inline void *cffi_ft_tsan_xpy_bind(struct _cffi_externpy_s *xp, PyObject *interp_key,
                                          PyObject *infotuple)
{
    CFFI_FT_TSAN_RELEASE(xp);
    return cffi_ft_xpy_bind(xp, interp_key, infotuple);
}

#  define cffi_ft_unique_lookup cffi_ft_tsan_unique_lookup
#  define cffi_ft_unique_intern cffi_ft_tsan_unique_intern
#  define cffi_ft_realize_lock cffi_ft_tsan_realize_lock
#  define cffi_ft_realize_unlock cffi_ft_tsan_realize_unlock
#  define cffi_ft_lazy_force cffi_ft_tsan_lazy_force
#  define cffi_ft_lazy_complete_eagerly cffi_ft_tsan_lazy_complete_eagerly
#  define cffi_ft_closure_alloc cffi_ft_tsan_closure_alloc
#  define cffi_ft_closure_free cffi_ft_tsan_closure_free
#  define cffi_ft_xpy_call cffi_ft_tsan_xpy_call
#  define cffi_ft_xpy_bind cffi_ft_tsan_xpy_bind
#endif /* CFFI_FT_TSAN */

#ifdef __cplusplus
}
#endif

#endif /* CFFI_FT_H */
