//! A fake [`Loader`] for tests and models: it records every open and close and fails
//! the test (panics) on a double close or on a symbol lookup after close.

use crate::{Arc, Loader, Mutex};
#[cfg(loom)]
use loom::sync::MutexGuard;
#[cfg(not(loom))]
use tsan_sync::MutexGuard;
use std::ffi::{c_void, CStr};

#[derive(Default)]
struct Record {
    /// Per handle: closed yet?
    closed: Vec<bool>,
    closes: usize,
    fail_closes: Option<String>,
    deferred_failures: Vec<(String, String)>,
}

/// Cheap to clone: clones share one record.
#[derive(Clone, Default)]
pub struct FakeLoader(Arc<Mutex<Record>>);

/// A handle of the fake loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeHandle(usize);

impl FakeLoader {
    pub fn new() -> FakeLoader {
        FakeLoader::default()
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// "dlopen": a fresh open handle.
    pub fn open(&self) -> FakeHandle {
        let mut r = self.record();
        r.closed.push(false);
        FakeHandle(r.closed.len() - 1)
    }

    /// How many handles were closed.
    pub fn closes(&self) -> usize {
        self.record().closes
    }

    /// From now on every close fails with `error` (the handle counts as closed).
    pub fn fail_closes(&self, error: &str) {
        self.record().fail_closes = Some(error.to_string());
    }

    /// The (name, error) pairs reported by [`Loader::deferred_close_failed`].
    pub fn deferred_failures(&self) -> Vec<(String, String)> {
        self.record().deferred_failures.clone()
    }

    /// The address the fake resolves `name` to (any name but "missing").
    pub fn address_of(&self, name: &str) -> usize {
        0x1000 + name.bytes().map(usize::from).sum::<usize>() * 16
    }
}

impl Loader for FakeLoader {
    type Raw = FakeHandle;

    fn symbol(&self, raw: &FakeHandle, name: &CStr) -> Result<*mut c_void, String> {
        let r = self.record();
        assert!(!r.closed[raw.0], "symbol lookup of {name:?} on a closed handle");
        let name = name.to_str().unwrap();
        if name == "missing" {
            return Err(format!("undefined symbol: {name}"));
        }
        drop(r);
        Ok(self.address_of(name) as *mut c_void)
    }

    fn close(&self, raw: &FakeHandle) -> Result<(), String> {
        let mut r = self.record();
        assert!(!r.closed[raw.0], "handle {} closed twice", raw.0);
        r.closed[raw.0] = true;
        r.closes += 1;
        match &r.fail_closes {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn deferred_close_failed(&self, name: &str, error: String) {
        self.record().deferred_failures.push((name.to_string(), error));
    }
}
