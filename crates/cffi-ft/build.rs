//! Reads the target interpreter's configuration (from `PYO3_PYTHON`, through
//! pyo3-build-config) so the staticlib knows which ABI it was built for. With the
//! `callback-dispatch` feature (step 4) it also generates the Rust layout of cffi's
//! `struct _cffi_externpy_s` from the cffi tree's own `parse_c_type.h` with bindgen:
//! the edge writes fields of that struct, which lives in generated C modules, so its
//! layout must come from the header those modules are compiled with, never a copy.

fn main() {
    // Emits `Py_3_x` and `Py_GIL_DISABLED` cfgs exactly as pyo3-ffi sees them.
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    println!(
        "cargo:rustc-env=CFFI_FT_PY_VERSION={}.{}",
        config.version.major, config.version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    #[cfg(feature = "callback-dispatch")]
    externpy_layout::generate();
}

#[cfg(feature = "callback-dispatch")]
mod externpy_layout {
    use std::path::PathBuf;

    /// The directory of the cffi tree's `parse_c_type.h` (`<tree>/src/cffi`).
    const HEADERS_VAR: &str = "CFFI_FT_CFFI_HEADERS";

    pub fn generate() {
        println!("cargo:rerun-if-env-changed={HEADERS_VAR}");
        let Some(dir) = std::env::var_os(HEADERS_VAR).map(PathBuf::from) else {
            fail(&format!(
                "the callback-dispatch feature needs {HEADERS_VAR}=<cffi tree>/src/cffi \
                 (the directory of cffi's parse_c_type.h; `cargo xtask` sets it)"
            ));
        };
        let header = dir.join("parse_c_type.h");
        if !header.is_file() {
            fail(&format!("{HEADERS_VAR}={}: no parse_c_type.h there", dir.display()));
        }
        println!("cargo:rerun-if-changed={}", header.display());
        // parse_c_type.h expects <stddef.h> from its includer; clang predefines the type.
        let wrapper = format!("typedef __SIZE_TYPE__ size_t;\n#include \"{}\"\n", header.display());
        let bindings = bindgen::Builder::default()
            .header_contents("cffi_ft_externpy.h", &wrapper)
            .allowlist_type("_cffi_externpy_s")
            .layout_tests(true)
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen on {}: {e} (is libclang installed?)", header.display())));
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("externpy.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| fail(&format!("writing {}: {e}", out.display())));
    }

    fn fail(message: &str) -> ! {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
