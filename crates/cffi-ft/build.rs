//! Reads the target interpreter's configuration (from `PYO3_PYTHON`, through
//! pyo3-build-config) so the staticlib knows which ABI it was built for.

fn main() {
    // Emits `Py_3_x` and `Py_GIL_DISABLED` cfgs exactly as pyo3-ffi sees them.
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    println!(
        "cargo:rustc-env=CFFI_FT_PY_VERSION={}.{}",
        config.version.major, config.version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
