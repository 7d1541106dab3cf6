//! Facts about this build of the kit, independent of any running interpreter.

use std::fmt;

/// Version of the kit (the workspace version).
pub const KIT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Migration steps compiled into this staticlib. Step 0 (the build itself) is always
/// present; each later step adds itself here behind its cargo feature.
pub const ENABLED_STEPS: &[u32] = &[
    0,
    #[cfg(feature = "ctype-intern")]
    1,
    #[cfg(feature = "realize-once")]
    2,
    #[cfg(feature = "lib-registry")]
    3,
    #[cfg(feature = "callback-dispatch")]
    4,
    #[cfg(feature = "exactly-once")]
    5,
];

/// Step 3: what `cffi_ft_lib_with_symbol` returns when the library is closed, and when
/// `dlsym` failed (`CFFI_FT_LIB_CLOSED`, `CFFI_FT_LIB_NOT_FOUND` in `cffi_ft.h`).
pub const LIB_CLOSED: i32 = -2;
pub const LIB_NOT_FOUND: i32 = -3;

/// Step 4: what `cffi_ft_closure_free` returns for a block that was already freed, and
/// for a pointer the pool never handed out (`CFFI_FT_CLOSURE_*` in `cffi_ft.h`).
pub const CLOSURE_DOUBLE_FREE: i32 = -4;
pub const CLOSURE_FOREIGN: i32 = -5;

/// The interpreter ABI one side of the link was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abi {
    pub major: u32,
    pub minor: u32,
    pub free_threaded: bool,
}

impl Abi {
    /// The ABI this staticlib was compiled for (from `PYO3_PYTHON` at build time).
    pub fn of_this_build() -> Abi {
        let (major, minor) = parse_major_minor(env!("CFFI_FT_PY_VERSION"))
            .expect("build.rs always emits a X.Y version");
        Abi {
            major,
            minor,
            free_threaded: cfg!(Py_GIL_DISABLED),
        }
    }

    /// The ABI seen by C code: `PY_VERSION_HEX` and whether `Py_GIL_DISABLED` was defined.
    pub fn from_c(py_version_hex: u32, free_threaded: bool) -> Abi {
        Abi {
            major: (py_version_hex >> 24) & 0xff,
            minor: (py_version_hex >> 16) & 0xff,
            free_threaded,
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = if self.free_threaded { "t" } else { "" };
        write!(f, "CPython {}.{}{}", self.major, self.minor, t)
    }
}

fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Refuses a link between objects compiled for different interpreters. Object layouts
/// (reference-count fields above all) differ between GIL and free-threaded builds, so a
/// mismatch would corrupt memory silently instead of failing at import.
pub fn check_abi(staticlib: Abi, backend: Abi) -> Result<(), String> {
    if staticlib == backend {
        Ok(())
    } else {
        Err(format!(
            "cffi-ft: the Rust staticlib was built for {staticlib} but _cffi_backend was \
             compiled for {backend}; rebuild the staticlib with PYO3_PYTHON pointing at the \
             interpreter that builds cffi"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_from_c_decodes_py_version_hex() {
        // 3.13.5 final: 0x030D05F0
        assert_eq!(
            Abi::from_c(0x030D_05F0, true),
            Abi { major: 3, minor: 13, free_threaded: true }
        );
    }

    #[test]
    fn abi_check_accepts_same_and_rejects_flavour_or_version_mismatch() {
        let gil = Abi { major: 3, minor: 13, free_threaded: false };
        let t = Abi { free_threaded: true, ..gil };
        let other = Abi { minor: 14, ..gil };
        assert!(check_abi(gil, gil).is_ok());
        let err = check_abi(gil, t).unwrap_err();
        assert!(err.contains("CPython 3.13 but") && err.contains("CPython 3.13t"), "{err}");
        assert!(check_abi(t, other).is_err());
    }

    #[test]
    fn this_build_reports_a_parsable_version_and_step_zero() {
        let abi = Abi::of_this_build();
        assert_eq!(abi.major, 3);
        assert_eq!(ENABLED_STEPS.first(), Some(&0));
        assert!(ENABLED_STEPS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn status_codes_match_the_c_header() {
        let header = include_str!("../../../shim-c/include/cffi_ft.h");
        for (name, value) in [
            ("LIB_CLOSED", LIB_CLOSED),
            ("LIB_NOT_FOUND", LIB_NOT_FOUND),
            ("CLOSURE_DOUBLE_FREE", CLOSURE_DOUBLE_FREE),
            ("CLOSURE_FOREIGN", CLOSURE_FOREIGN),
        ] {
            let line = format!("#define CFFI_FT_{name} ({value})");
            assert!(header.contains(&line), "cffi_ft.h must say {line:?}");
        }
    }

    #[test]
    fn parse_major_minor_rejects_garbage() {
        assert_eq!(parse_major_minor("3.13"), Some((3, 13)));
        assert_eq!(parse_major_minor("3"), None);
        assert_eq!(parse_major_minor("a.b"), None);
    }
}
