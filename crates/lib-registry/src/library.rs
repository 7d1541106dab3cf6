//! [`Library`], its pins and its close.

use crate::slot::Slot;
use crate::{Arc, AtomicBool, AtomicU64, Ordering};
use std::ffi::{c_void, CStr};
use std::fmt;
use std::ops::Deref;

/// The OS side of a library handle: symbol lookup and close. The edge implements it
/// with `dlsym`/`dlclose`; tests and models use [`crate::fake::FakeLoader`].
pub trait Loader: Send + Sync {
    /// The OS handle (`dlopen`'s `void *`).
    type Raw: Send + Sync;

    /// The address of `name`, or the loader's error text. An address may be null
    /// (a symbol can resolve to 0); only `Err` means "not found".
    fn symbol(&self, raw: &Self::Raw, name: &CStr) -> Result<*mut c_void, String>;

    /// Closes the handle. Called at most once per handle, by this crate.
    fn close(&self, raw: &Self::Raw) -> Result<(), String>;

    /// A deferred close (run by the last pin, or by the owner's drop) failed; nobody
    /// is waiting for its result any more. The edge logs it.
    fn deferred_close_failed(&self, _name: &str, _error: String) {}
}

/// An open OS handle. Reached only through a [`Pin`] or [`Library::with_pinned`], so
/// whoever holds one knows the handle is not closed under it.
pub struct OpenHandle<L: Loader> {
    loader: L,
    raw: L::Raw,
    /// Only for a (rare) deferred-close report: kept inline, no allocation per handle.
    name: ShortName,
    /// Whether dropping the last reference must close the handle: `auto_close` at
    /// first, set by the winner of [`Library::close`].
    close_on_last_drop: AtomicBool,
}

impl<L: Loader> OpenHandle<L> {
    /// `dlsym` on the pinned handle.
    pub fn symbol(&self, name: &CStr) -> Result<*mut c_void, String> {
        self.loader.symbol(&self.raw, name)
    }

    /// Closes now: the caller holds the only reference.
    fn close_now(self) -> Result<(), String> {
        self.close_on_last_drop.store(false, Ordering::Relaxed);
        self.loader.close(&self.raw)
    }
}

impl<L: Loader> Drop for OpenHandle<L> {
    fn drop(&mut self) {
        // Relaxed is enough: the store that set it happened before the storing
        // thread dropped its reference, and `Arc` orders every drop before the last
        // one (release decrement, acquire fence) -- and the model's Arc likewise.
        if self.close_on_last_drop.load(Ordering::Relaxed) {
            if let Err(error) = self.loader.close(&self.raw) {
                self.loader.deferred_close_failed(&self.name.to_string(), error);
            }
        }
    }
}

/// A library's name as the report of a failed deferred close shows it: the last
/// [`ShortName::BYTES`] bytes (the informative end of a path), inline in the handle so
/// that opening a library allocates nothing for it.
struct ShortName {
    len: u8,
    truncated: bool,
    bytes: [u8; ShortName::BYTES],
}

impl ShortName {
    const BYTES: usize = 96;

    fn new(name: &CStr) -> ShortName {
        let all = name.to_bytes();
        let tail = &all[all.len().saturating_sub(ShortName::BYTES)..];
        let mut bytes = [0; ShortName::BYTES];
        bytes[..tail.len()].copy_from_slice(tail);
        ShortName { len: tail.len() as u8, truncated: tail.len() < all.len(), bytes }
    }
}

impl fmt::Display for ShortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes[..usize::from(self.len)]);
        if self.truncated {
            write!(f, "...{text}")
        } else {
            f.write_str(&text)
        }
    }
}

/// A strong reference to an open handle, with the generation it was taken at.
pub struct Pin<L: Loader> {
    open: Arc<OpenHandle<L>>,
    generation: u64,
}

impl<L: Loader> Pin<L> {
    /// The library's generation when this pin was taken.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pin as one pointer, for code that holds it across an FFI boundary (no
    /// allocation); the generation is the caller's to keep. [`Pin::from_raw`] undoes it.
    #[cfg(not(loom))]
    pub fn into_raw(self) -> *const OpenHandle<L> {
        Arc::into_raw(self.open)
    }

    /// Takes back a pin made by [`Pin::into_raw`].
    ///
    /// # Safety
    /// `raw` came from [`Pin::into_raw`] of this `L` and is taken back at most once.
    #[cfg(not(loom))]
    pub unsafe fn from_raw(raw: *const OpenHandle<L>, generation: u64) -> Pin<L> {
        // SAFETY: per the contract, `raw` is an `Arc::into_raw` result not yet taken back.
        Pin { open: unsafe { Arc::from_raw(raw) }, generation }
    }

    /// Runs `f` on a pin made by [`Pin::into_raw`] without taking it back.
    ///
    /// # Safety
    /// `raw` came from [`Pin::into_raw`] and has not been taken back.
    #[cfg(not(loom))]
    pub unsafe fn with_raw<R>(raw: *const OpenHandle<L>, f: impl FnOnce(&OpenHandle<L>) -> R) -> R {
        // SAFETY: per the contract, the Arc behind `raw` is alive while we borrow it.
        f(unsafe { &*raw })
    }
}

// SAFETY: the word is the pin's raw form ([`Pin::into_raw`], a non-null `Arc` pointer)
// and [`Pin::from_raw`] takes it back. The generation is not kept: a pin taken back from
// its word reports generation 0, which only builders (who keep theirs) would read.
#[cfg(not(loom))]
unsafe impl<L: Loader> crate::OneWord for Pin<L> {
    fn into_word(self) -> std::ptr::NonNull<()> {
        // SAFETY: Arc::into_raw never returns null.
        unsafe { std::ptr::NonNull::new_unchecked(self.into_raw().cast_mut().cast()) }
    }

    unsafe fn from_word(word: std::ptr::NonNull<()>) -> Pin<L> {
        // SAFETY: per the contract, `word` is an unreturned `Pin::into_raw` of ours.
        unsafe { Pin::from_raw(word.as_ptr().cast_const().cast(), 0) }
    }
}

impl<L: Loader> Clone for Pin<L> {
    fn clone(&self) -> Pin<L> {
        Pin { open: Arc::clone(&self.open), generation: self.generation }
    }
}

impl<L: Loader> Deref for Pin<L> {
    type Target = OpenHandle<L>;
    fn deref(&self) -> &OpenHandle<L> {
        &self.open
    }
}

impl<L: Loader> fmt::Debug for Pin<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin").field("name", &self.open.name.to_string()).field("generation", &self.generation).finish()
    }
}

/// The owner of one opened library: what a `CLibrary` or a `Lib` holds.
pub struct Library<L: Loader> {
    slot: Slot<OpenHandle<L>>,
    generation: AtomicU64,
}

/// The winner's share of a close: the reference it took out of the slot.
#[must_use = "a Closing that is dropped still closes (deferred), but its result is lost"]
pub struct Closing<L: Loader> {
    open: Arc<OpenHandle<L>>,
}

/// What [`Closing::finish`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Close {
    /// The handle was closed now, successfully.
    Closed,
    /// Other pins were alive: the last of them closes the handle.
    Deferred,
    /// The handle was closed now, and the loader reported this error.
    Failed(String),
}

impl<L: Loader> Closing<L> {
    /// Drops the winner's reference: closes now if it was the last one, else leaves
    /// the close to the last pin.
    pub fn finish(self) -> Close {
        match Arc::try_unwrap(self.open) {
            Ok(open) => match open.close_now() {
                Ok(()) => Close::Closed,
                Err(e) => Close::Failed(e),
            },
            Err(shared) => {
                drop(shared);
                Close::Deferred
            }
        }
    }
}

impl<L: Loader> Library<L> {
    /// Takes ownership of an opened handle. With `auto_close`, dropping the
    /// [`Library`] while still open closes it (after its last pin); without it (a
    /// handle the user passed in), only an explicit [`Library::close`] does.
    pub fn new(loader: L, raw: L::Raw, auto_close: bool, name: &CStr) -> Library<L> {
        let open =
            OpenHandle { loader, raw, name: ShortName::new(name), close_on_last_drop: AtomicBool::new(auto_close) };
        Library { slot: Slot::new(Arc::new(open)), generation: AtomicU64::new(0) }
    }

    /// Pins the open handle, or `None` if the library is closed.
    pub fn pin(&self) -> Option<Pin<L>> {
        // The generation first: a close empties the slot before it bumps the
        // generation, so a pin that succeeds never carries a post-close generation.
        let generation = self.generation.load(Ordering::Acquire);
        self.slot.load_full().map(|open| Pin { open, generation })
    }

    /// Runs `f` with the handle pinned for its length only, or returns `None` if the
    /// library is closed. Lock-free; in the common case no shared counter is touched.
    pub fn with_pinned<R>(&self, f: impl FnOnce(&OpenHandle<L>) -> R) -> Option<R> {
        self.slot.with(|open| open.map(f))
    }

    /// The number of successful closes so far (0 or 1).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether no close has happened since `pin` was taken.
    pub fn still_current(&self, pin: &Pin<L>) -> bool {
        self.generation() == pin.generation
    }

    /// Closes the library. Exactly one caller gets `Some` (the others: already
    /// closed); from then on [`Library::pin`] fails and the generation is bumped.
    pub fn close(&self) -> Option<Closing<L>> {
        let open = self.slot.take()?;
        open.close_on_last_drop.store(true, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
        Some(Closing { open })
    }
}

// Dropping a `Library` (its owner was deallocated) drops the slot's reference: the
// handle closes with its last pin if it was opened with auto_close
// (close_on_last_drop), as cffi's dealloc always did. No explicit `Drop`: emptying the
// slot first would make arc-swap settle its readers' debts twice.

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::fake::FakeLoader;

    fn c(s: &str) -> std::ffi::CString {
        std::ffi::CString::new(s).unwrap()
    }

    #[test]
    fn pinned_symbols_and_one_close() {
        let fake = FakeLoader::new();
        let lib = Library::new(fake.clone(), fake.open(), true, &c("libx.so"));
        let pin = lib.pin().expect("open");
        assert_eq!(pin.symbol(&c("f")).unwrap() as usize, fake.address_of("f"));
        assert!(pin.symbol(&c("missing")).is_err());
        assert_eq!(lib.with_pinned(|h| h.symbol(&c("g")).is_ok()), Some(true));
        drop(pin);
        assert_eq!(lib.close().expect("winner").finish(), Close::Closed);
        assert!(lib.close().is_none(), "a second close must learn 'already closed'");
        assert!(lib.pin().is_none());
        assert!(lib.with_pinned(|_| ()).is_none());
        assert_eq!(fake.closes(), 1);
        drop(lib);
        assert_eq!(fake.closes(), 1, "dropping a closed library closes nothing more");
    }

    #[test]
    fn close_is_deferred_to_the_last_pin() {
        let fake = FakeLoader::new();
        let lib = Library::new(fake.clone(), fake.open(), true, &c("libx.so"));
        let p1 = lib.pin().unwrap();
        let p2 = p1.clone();
        assert_eq!(lib.close().unwrap().finish(), Close::Deferred);
        assert_eq!(fake.closes(), 0);
        assert!(p1.symbol(&c("f")).is_ok(), "a pinned handle stays usable after close()");
        drop(p1);
        assert_eq!(fake.closes(), 0);
        drop(p2);
        assert_eq!(fake.closes(), 1);
    }

    #[test]
    fn generation_tells_builders_about_a_close() {
        let fake = FakeLoader::new();
        let lib = Library::new(fake.clone(), fake.open(), true, &c("libx.so"));
        let pin = lib.pin().unwrap();
        assert!(lib.still_current(&pin));
        let closing = lib.close().unwrap();
        assert!(!lib.still_current(&pin));
        drop(pin);
        assert_eq!(closing.finish(), Close::Closed);
    }

    #[test]
    fn auto_close_decides_what_the_owners_drop_does() {
        let fake = FakeLoader::new();
        drop(Library::new(fake.clone(), fake.open(), true, &c("auto")));
        assert_eq!(fake.closes(), 1);
        let lib = Library::new(fake.clone(), fake.open(), false, &c("borrowed"));
        let pin = lib.pin().unwrap();
        drop(lib);
        drop(pin);
        assert_eq!(fake.closes(), 1, "a handle without auto_close is not closed by a drop");
        // ... but an explicit close closes it (cffi's close_lib/dlclose ignore auto_close).
        let lib = Library::new(fake.clone(), fake.open(), false, &c("borrowed"));
        assert_eq!(lib.close().unwrap().finish(), Close::Closed);
        assert_eq!(fake.closes(), 2);
    }

    #[test]
    fn close_errors_are_returned_now_or_reported_later() {
        let fake = FakeLoader::new();
        fake.fail_closes("boom");
        let lib = Library::new(fake.clone(), fake.open(), true, &c("libx.so"));
        assert_eq!(lib.close().unwrap().finish(), Close::Failed("boom".into()));
        let lib = Library::new(fake.clone(), fake.open(), true, &c("liby.so"));
        let pin = lib.pin().unwrap();
        assert_eq!(lib.close().unwrap().finish(), Close::Deferred);
        drop(pin);
        assert_eq!(fake.deferred_failures(), vec![("liby.so".to_string(), "boom".to_string())]);
    }

    #[test]
    fn a_long_name_is_reported_by_its_end() {
        let fake = FakeLoader::new();
        fake.fail_closes("boom");
        let long = format!("/{}/libtail.so.1", "d".repeat(300));
        let lib = Library::new(fake.clone(), fake.open(), true, &c(&long));
        let pin = lib.pin().unwrap();
        assert_eq!(lib.close().unwrap().finish(), Close::Deferred);
        drop(pin);
        let (name, error) = fake.deferred_failures().pop().unwrap();
        assert!(name.starts_with("...d") && name.ends_with("/libtail.so.1"), "{name}");
        assert_eq!(name.len(), 3 + ShortName::BYTES);
        assert_eq!(error, "boom");
    }

    #[test]
    fn many_threads_many_closers() {
        for _ in 0..200 {
            let fake = FakeLoader::new();
            let lib = Library::new(fake.clone(), fake.open(), true, &c("libx.so"));
            let winners = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for t in 0..8 {
                    let (lib, winners) = (&lib, &winners);
                    s.spawn(move || {
                        if t % 2 == 0 {
                            if let Some(closing) = lib.close() {
                                winners.fetch_add(1, Ordering::Relaxed);
                                let _ = closing.finish();
                            }
                        } else {
                            for _ in 0..100 {
                                let _ = lib.with_pinned(|h| h.symbol(&c("f")).unwrap());
                                if let Some(p) = lib.pin() {
                                    p.symbol(&c("g")).unwrap();
                                }
                            }
                        }
                    });
                }
            });
            assert_eq!(winners.into_inner(), 1);
            assert_eq!(fake.closes(), 1);
        }
    }
}
