//! # cffi-ft: the umbrella staticlib linked into cffi's `_cffi_backend`
//!
//! This is the only Rust library that is linked into the backend (one staticlib per
//! extension module: two would each embed `std` and collide). Every component crate of
//! the kit is a dependency of this crate behind one cargo feature per migration step;
//! the patch series in `shim-c/patches/<cffi-version>/` swaps the backend's call sites
//! over to what those features export.
//!
//! ## What step 0 exports
//! * [`edge::cffi_ft_backend_init`]: called once from `PyInit__cffi_backend` through the C
//!   shim. It checks that this staticlib and the backend were compiled for the same
//!   interpreter ABI (GIL vs free-threaded, same minor version), declares the module
//!   GIL-free on free-threaded builds, and publishes `_cffi_backend.__cffi_ft__`.
//! * [`edge::cffi_ft_module_declare_gil_free`]: called for every API-mode module that the
//!   backend creates (`cffi1_module.c`).
//!
//! ## What step 1 exports (feature `ctype-intern`)
//! * `unique_cache::cffi_ft_unique_{lookup,intern,forget}`: the unique ctype cache,
//!   a concurrent interning map of weak references (crate `ctype-intern`).
//!
//! ## What step 2 exports (feature `realize-once`)
//! * `realize::cffi_ft_realize_{lock,unlock}`: the process-wide re-entrant realization
//!   lock, whose waiters wait detached (crate `realize-once`).
//! * `realize::cffi_ft_lazy_force` / `cffi_ft_lazy_complete_eagerly`: the once-state
//!   machine of lazy structs.
//!
//! ## What step 3 exports (feature `lib-registry`)
//! * `lib_registry::cffi_ft_lib_*`: the owner of every `dlopen` handle of a `CLibrary`
//!   or `Lib` (crate `lib-registry`): pins, one winning close, the `dlclose` deferred
//!   to the last pin, the generation that builders check, and pins attached to the
//!   function-pointer cdata made from `dlsym` results.
//!
//! ## Concurrency contract
//! Step 0 holds no shared mutable state; the unique cache's contract is documented in
//! `unique_cache` and in the `ctype-intern` crate. Both entry points run on a thread that is
//! attached to the interpreter, during module initialisation (serialised by the import
//! machinery per module); they only create new objects and store them in the module
//! being initialised. Nothing here takes a lock, so the seam rules R1–R7 hold trivially.
//!
//! ## Panics
//! No panic crosses into C: every `extern "C"` entry runs its body under
//! [`panic_guard::catch_panic`] and turns a panic into a Python `SystemError`.
//!
//! ## Layout
//! * [`kit`]: Python-free facts about this build (version, steps, ABI) and the ABI check.
//! * [`panic_guard`]: Python-free panic capture.
//! * `edge` (not compiled into unit tests): the pyo3-ffi edge, the only code that touches
//!   CPython. Unit-test binaries do not link libpython, so the edge is exercised through
//!   the real interpreters by `cargo xtask test-upstream` (suite `compat-build`).

pub mod kit;
pub mod panic_guard;

#[cfg(not(test))]
pub mod edge;

/// Step 1: the unique ctype cache (feature `ctype-intern`).
#[cfg(all(feature = "ctype-intern", not(test)))]
pub mod unique_cache;

/// Step 2: the realization lock and lazy-struct completion (feature `realize-once`).
#[cfg(all(feature = "realize-once", not(test)))]
pub mod realize;

/// Step 3: the library registry (feature `lib-registry`).
#[cfg(all(feature = "lib-registry", not(test)))]
pub mod lib_registry;
