//! The seam annotations of `shim-c/include/cffi_ft.h` do what MIGRATION.md says: TSan
//! cannot see the staticlib's synchronisation, so without the annotations a lazy struct
//! completed through `cffi_ft_lazy_force()` and read after `cffi_ft_lazy_is_done()` is a
//! reported data race, and with them it is not. The test compiles
//! `shim-c/tests/tsan-seam/lazy_struct.c` with `-fsanitize=thread` against the real header
//! and links it with an uninstrumented stand-in for the staticlib's protocol.
//!
//! It needs clang with the TSan runtime and a CPython 3.13 free-threaded include dir (the
//! kit's builds in ~/.cache/cffi-ft/python): `cargo xtask python --tsan` provides both.
//! Without them it says so on stderr and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python_include() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let root = Path::new(&home).join(".cache/cffi-ft/python");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join("include").join("python3.13t"))
        .filter(|p| p.join("Python.h").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn run(binary: &Path, seams: &str) -> (bool, String) {
    let out = Command::new(binary)
        .env("CFFI_FT_TSAN_SEAMS", seams)
        .env("TSAN_OPTIONS", "exitcode=66 halt_on_error=0")
        .output()
        .expect("the seam test binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn removing_the_lazy_struct_annotation_makes_a_report_appear() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let Some(include) = python_include() else {
        eprintln!("skipped: no CPython 3.13t include dir in ~/.cache/cffi-ft/python (cargo xtask python --tsan)");
        return;
    };
    if Command::new("clang").arg("--version").output().is_err() {
        eprintln!("skipped: no clang (cargo xtask python --tsan installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = root.join("shim-c/tests/tsan-seam");
    let stand_in = tmp.path().join("stand_in.o");
    let status = Command::new("clang")
        .args(["-O1", "-c"])
        .arg(dir.join("stand_in_staticlib.c"))
        .arg("-o")
        .arg(&stand_in)
        .status()
        .unwrap();
    assert!(status.success(), "the uninstrumented stand-in does not compile");
    let binary = tmp.path().join("lazy_struct");
    let out = Command::new("clang")
        .args(["-O1", "-g", "-fsanitize=thread"])
        .arg(format!("-I{}", root.join("shim-c/include").display()))
        .arg(format!("-I{}", include.display()))
        .arg(dir.join("lazy_struct.c"))
        .arg(&stand_in)
        .arg("-o")
        .arg(&binary)
        .arg("-lpthread")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("libclang_rt.tsan") {
        eprintln!("skipped: clang has no TSan runtime (Debian: libclang-rt-dev)");
        return;
    }
    assert!(out.status.success(), "lazy_struct.c does not build with -fsanitize=thread: {stderr}");

    let (ok, text) = run(&binary, "on");
    assert!(ok && text.contains("values right"), "annotated: {text}");
    assert!(!text.contains("WARNING: ThreadSanitizer"), "a report with the annotations on: {text}");

    // TSan judges by happens-before, not by timing, so every run should report it; the
    // tries only cover a report lost to TSan's bounded access history
    let mut seen = String::new();
    for _ in 0..5 {
        let (_, text) = run(&binary, "off");
        if text.contains("WARNING: ThreadSanitizer: data race") {
            seen = text;
            break;
        }
    }
    assert!(seen.contains("reader") && seen.contains("fill"), "no report without the annotations: {seen}");
}
