//! Panic capture for `extern "C"` entry points.
//!
//! Rust aborts the process when a panic reaches an `extern "C"` boundary. The edge wraps
//! each entry body in [`catch_panic`] and reports the message as a Python exception
//! instead, so a bug in the kit surfaces as an error at the call site, not a crash.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, turning a panic into `Err(message)`.
///
/// `AssertUnwindSafe` is sound here because the edge never observes state that a panicking
/// body may have left half-updated: after an `Err`, the entry point only raises.
#[inline]
pub fn catch_panic<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|payload| panic_message(&*payload))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let detail = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    };
    format!("cffi-ft internal error (Rust panic): {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_passes_through() {
        assert_eq!(catch_panic(|| 41 + 1), Ok(42));
    }

    #[test]
    fn panic_becomes_message() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let str_panic = catch_panic(|| -> u8 { panic!("boom") });
        let fmt_panic = catch_panic(|| -> u8 { panic!("code {}", 7) });
        std::panic::set_hook(prev);
        assert_eq!(str_panic.unwrap_err(), "cffi-ft internal error (Rust panic): boom");
        assert!(fmt_panic.unwrap_err().ends_with("code 7"));
    }
}
