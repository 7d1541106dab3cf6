//! # callback-dispatch: the Python-free core of cffi's callback dispatch
//!
//! Two things that C code reaches *without asking Python first* live here:
//!
//! * [`ClosurePool`]: the executable blocks that `ffi.callback()` turns into C function
//!   pointers (libffi closures). cffi 1.17.1 kept them in a singly linked free list with
//!   no lock: two threads popped the same block, so two callbacks shared one trampoline
//!   and C calls reached the other thread's function; a block pushed twice made a cycle
//!   (hazard C1). A freed block's first word became the free-list link, so a stale C
//!   pointer jumped into garbage (C7). The pool hands each block to one owner, parks
//!   freed blocks in a FIFO **quarantine** before reusing them, lets the owner redirect
//!   a freed block's trampoline to a "dead callback" target *before* it is parked, and
//!   reports a double free instead of corrupting itself.
//! * [`BindingSlot`]: the binding of one `extern "Python"` function (what
//!   `@ffi.def_extern()` attached to it). cffi 1.17.1 cached it in two raw fields of the
//!   generated module's `struct _cffi_externpy_s` and replaced them with unsynchronised
//!   decrements, so two first calls, or a call racing a re-registration, decremented
//!   the same objects twice and used a freed info tuple (C3, C4). Here the binding is
//!   one immutable value in an [`arc_swap::ArcSwapOption`]: readers take it lock-free,
//!   a re-registration is one swap, and the old value is released by whoever drops its
//!   last reference. [`BindingSlot::install`] puts one slot behind a C pointer field
//!   with a compare-and-swap from null, so C's "is it bound at all?" test (`field !=
//!   NULL`) stays valid.
//!
//! * [`at_thread_exit`]: a hook that runs on a thread when it ends, before the
//!   thread's `pthread` keys are cleared. At the edge it gives back the Python thread
//!   state that a callback in a foreign thread created, on that thread (hazard E3).
//!
//! None of them knows Python: the pool gets its memory from a [`PageSource`], and a binding
//! is any `T` whose `Drop` releases what it holds (at the edge: two strong references
//! released with `Py_DecRef`).
//!
//! ## Concurrency contract
//! * **Pool ownership.** A block is, at any time, *fresh* (never handed out), *live*
//!   (owned by exactly one caller of [`ClosurePool::alloc`], until it calls
//!   [`ClosurePool::free`]) or *quarantined*. Every transition happens under the pool's
//!   one mutex, so no block is handed out twice and a second free of the same block is
//!   seen as [`FreeError::DoubleFree`]. A freed block is reused only after `quarantine`
//!   later frees ([`PoolConfig::quarantine`]), oldest first. The `kill` callback of
//!   `free` runs under the mutex, before the block is parked, so no `alloc` can hand
//!   the block out while it is being redirected. The mutex covers a few vector and hash
//!   map operations, page growth (`mmap`) and `kill` (at the edge: libffi rewriting one
//!   trampoline); it is never held across a call into Python (seam rule R2), so a plain
//!   `std` mutex is right. Memory is never returned to the source, as in cffi.
//! * **Binding ownership.** A [`BindingSlot`] owns one strong reference (`Arc`) to the
//!   current binding; each reader inside [`BindingSlot::find`] holds another (an
//!   arc-swap guard) for the length of its closure. [`BindingSlot::bind`] swaps in a new
//!   value and returns the old reference to the caller, who drops it when it is safe
//!   (at the edge: after unlocking, on an attached thread — rules R3, R4). The value is
//!   dropped exactly once, by the last holder, whichever thread that is.
//! * **Orderings.** `ArcSwapOption` loads and swaps are linearizable; a reader holds a
//!   reference the writer's swap accounts for. [`BindingSlot::install`] publishes the
//!   slot with a `Release` CAS and readers find it with an `Acquire` load, so the slot's
//!   initial state is visible to everyone who sees the pointer. Slots are never freed
//!   (the struct they hang off lives in a loaded extension module, which CPython never
//!   unloads).
//! * **No panics across the edge.** Errors are values; the edge catches panics.
//!
//! ## Model checking
//! As in `lib-registry`, `arc-swap` cannot run under loom, so with `--cfg loom` the
//! binding cell is a loom mutex around `Option<Arc<T>>`, the linearizable load/swap
//! contract `ArcSwapOption` documents; the pool runs unchanged over loom's mutex.
//! `tests/loom.rs` checks that no block is handed out twice, that quarantine order
//! holds, that a double free is caught whatever the interleaving, that two installers
//! agree on one slot, and that a reader racing a rebind sees the old or the new binding
//! and every binding is released exactly once.

mod binding;
mod pool;
mod thread_exit;

pub use binding::BindingSlot;
pub use thread_exit::{at_thread_exit, AtThreadExit};
pub use pool::{ClosurePool, FreeError, PageSource, PoolConfig, PoolStats};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicPtr, Ordering},
    Arc, Mutex,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicPtr, Ordering},
    Arc,
};
// std's Mutex, annotated for ThreadSanitizer in the kit's TSan builds (tsan-sync)
#[cfg(not(loom))]
pub(crate) use tsan_sync::Mutex;
