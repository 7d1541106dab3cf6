//! # lib-registry: one owner of every dynamic-library handle, without Python
//!
//! cffi keeps the `void *` of `dlopen()` in two kinds of objects: the `CLibrary` of
//! `_cffi_backend.load_library()` (cffi0's `ffi.dlopen`) and the `Lib` of cffi1's
//! `ffi.dlopen()`. Both check "is the handle still there?" and then use it, with nothing
//! in between: two closers both call `dlclose` (the loader's count drops twice and a
//! library another handle still uses is unmapped), a reader calls `dlsym` on a handle
//! that was just closed, and code is unmapped under a thread that is calling it
//! (hazards B1–B3). This crate is the owner those objects hold instead of the raw
//! pointer, as plain Rust over a [`Loader`] (the OS calls), so that the protocol can be
//! unit-tested and model-checked with a fake loader.
//!
//! * [`Library`]: what a `CLibrary`/`Lib` holds. Its open handle lives in an
//!   [`arc_swap::ArcSwapOption`]; `None` means closed.
//! * [`Pin`]: a strong reference to the open handle ([`Library::pin`]). While a pin
//!   lives the library stays loaded: [`OpenHandle::symbol`] never runs on a closed
//!   handle, and code or data reached through a pinned address is not unmapped.
//!   [`Library::with_pinned`] pins for the length of a closure only, through an
//!   arc-swap guard: a lock-free load that bumps no shared counter in the common case.
//! * [`Library::close`]: exactly one caller wins (it takes the handle out of the slot);
//!   every other caller learns "already closed". The winner's [`Closing::finish`] runs
//!   the real close now if nobody else pins the handle, and otherwise leaves it to the
//!   last pin: the close is **deferred**, never skipped and never repeated.
//! * The **generation** ([`Library::generation`], [`Library::still_current`]): bumped
//!   by every successful close. A builder that pinned the library, built something from
//!   it and wants to cache the result checks that the generation it pinned at is still
//!   current, under the owner's lock that also covers "close, then forget the cache"
//!   (at the edge: a per-`Lib` `PyMutex` around the dictionary insert). Then nothing is
//!   cached after a close.
//! * [`PinTable`]: pins owned by foreign objects, keyed by the object's address (at the
//!   edge: function-pointer cdata made from a `dlsym` result keep their library loaded
//!   until they die, because the call through them can come at any time). Lock-free
//!   in the common case: a fixed array of slot groups, one CAS to attach, plain stores
//!   to detach (its own contract in the `pins` module doc).
//!
//! ## Concurrency contract
//! * **Ownership.** A [`Library`] owns one strong reference to its [`OpenHandle`] while
//!   open; each [`Pin`] (and each guard inside [`Library::with_pinned`]) owns another.
//!   The OS handle is closed by whoever drops the last strong reference, at most once,
//!   and only if the library was closed explicitly or opened with `auto_close`
//!   ([`Library::new`]). Dropping a still-open [`Library`] (its owner was deallocated)
//!   closes only an `auto_close` handle, after its last pin, as cffi always did.
//! * **Orderings.** The slot is an `ArcSwapOption`: `load`/`load_full`/`swap` are
//!   linearizable, and a reader that got the handle holds a reference the writer's
//!   `swap(None)` accounts for. The "close requested" flag is stored before the winner
//!   drops its reference and read by the last dropper; `Arc`'s release decrement and
//!   acquire fence order them. The generation is bumped (`Release`) *after* the slot is
//!   emptied and read (`Acquire`) *before* a pin is taken, so a pin that succeeded
//!   carries a generation that a later close makes stale.
//! * **Blocking.** Nothing here blocks except the mutex of [`PinTable`]'s overflow map
//!   (used only when an address's slot group is full), held for one hash-map insert or
//!   remove; what a detach returns is dropped by the caller, outside the table, so a
//!   deferred close never runs under a lock.
//! * **No panics across the edge.** The crate returns errors; the edge catches panics.
//!
//! ## Model checking
//! `arc-swap` does not run under loom (it uses its own thread-local debt lists over
//! `std` atomics). With `RUSTFLAGS="--cfg loom"` the slot is therefore modelled by a
//! loom mutex around an `Option<loom::sync::Arc<_>>`: the same linearizable
//! load/swap contract that `ArcSwapOption` documents, with loom's `Arc`, so loom
//! explores every interleaving of the protocol built on top of it (who wins the close,
//! who drops the last reference, when a builder checks the generation) but not
//! arc-swap's internals, which arc-swap tests itself. `tests/loom.rs` checks a pin
//! racing with a close, two closers, the last unpin doing the deferred close, and a
//! close racing with a builder's generation check, against a fake loader that fails
//! the run on a double close or a symbol lookup after close.

mod library;
mod pins;
mod slot;

#[cfg(any(test, loom))]
pub mod fake;

pub use library::{Close, Closing, Library, Loader, OpenHandle, Pin};
pub use pins::{OneWord, PinTable};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
    Arc,
};
// std's Mutex, annotated for ThreadSanitizer in the kit's TSan builds (tsan-sync)
#[cfg(not(loom))]
pub(crate) use tsan_sync::Mutex;
