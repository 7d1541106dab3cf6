//! Bad input to any command gives one clear `error:` line and exit status 2, and a
//! user's checkout is never left half-patched.
//!
//! The checkout tests use the real cffi 1.17.1 sdist (`xtask fetch-upstream`, cached
//! after the first download and checked against its pinned sha256).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{assert_one_line_error, xtask};

fn pristine_sdist_tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let out = xtask(&["fetch-upstream"]);
        assert!(out.status.success(), "fetch-upstream: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.split(':').next().expect("fetch-upstream prints the tree first");
        PathBuf::from(path.trim())
    })
}

fn copy_of_sdist(dst: &Path) {
    let status = Command::new("cp").arg("-a").arg(pristine_sdist_tree()).arg(dst).status().unwrap();
    assert!(status.success());
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn unknown_cffi_version_is_refused() {
    let out = xtask(&["fetch-upstream", "--cffi-version", "1.16.0"]);
    assert_one_line_error(&out, "unknown cffi version 1.16.0: the kit has patch series for 1.17.1");
    let out = xtask(&["test-upstream", "--cffi-version", "9.9"]);
    assert_one_line_error(&out, "unknown cffi version 9.9");
}

#[test]
fn python_that_is_not_python_is_refused() {
    let out = xtask(&["test-upstream", "--python", "/bin/true"]);
    assert_one_line_error(&out, "/bin/true: not a Python interpreter");
    let out = xtask(&["python", "--python", "/no/such/python3.13"]);
    assert_one_line_error(&out, "no such file");
}

#[test]
fn python_older_than_3_13_is_refused() {
    // A real older interpreter from this machine (Debian images ship one as python3).
    let older = ["python3.11", "python3.12", "python3.10", "python3"].iter().find_map(|name| {
        let out = Command::new(name)
            .args(["-c", "import sys; print(sys.executable if sys.version_info < (3, 13) else '')"])
            .output()
            .ok()?;
        let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!exe.is_empty()).then_some(exe)
    });
    let Some(older) = older else {
        eprintln!("no Python < 3.13 on this machine; nothing to refuse");
        return;
    };
    let out = xtask(&["test-upstream", "--python", &older]);
    assert_one_line_error(&out, "the kit needs CPython 3.13 or newer");
}

#[test]
fn unknown_step_and_suite_are_refused() {
    let out = xtask(&["test-upstream", "--steps", "9"]);
    assert_one_line_error(&out, "step 9 does not exist for cffi 1.17.1");
    let out = xtask(&["test-upstream", "--suites", "upstream,nope"]);
    assert_one_line_error(&out, "unknown suite \"nope\"");
}

#[test]
fn checkout_with_a_conflicting_change_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("cffi");
    copy_of_sdist(&checkout);
    let file = checkout.join("src/c/cffi1_module.c");
    let text = fs::read_to_string(&file).unwrap();
    let edited = text.replacen("    m = _my_Py_InitModule(module_name);", "    m = my_local_init(module_name);", 1);
    assert_ne!(text, edited, "the sdist changed under the test");
    fs::write(&file, edited).unwrap();
    let before = snapshot(&checkout);

    let out = xtask(&["fetch-upstream", "--checkout", checkout.to_str().unwrap()]);
    assert_one_line_error(&out, "src/c/cffi1_module.c does not match 0003-api-modules-declare-gil-free.patch");
    let out = xtask(&["fetch-upstream", "--checkout", checkout.to_str().unwrap(), "--in-place"]);
    assert_one_line_error(&out, "src/c/cffi1_module.c does not match");
    assert!(before == snapshot(&checkout), "a failed --in-place changed the checkout");
}

#[test]
fn checkout_of_an_unknown_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("cffi");
    copy_of_sdist(&checkout);
    let setup = checkout.join("setup.py");
    let text = fs::read_to_string(&setup).unwrap().replace("version='1.17.1'", "version='1.15.1'");
    fs::write(&setup, text).unwrap();
    let out = xtask(&["test-upstream", "--checkout", checkout.to_str().unwrap()]);
    assert_one_line_error(&out, "unknown cffi version 1.15.1");
}

#[test]
fn in_place_patches_a_clean_checkout_once() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("cffi");
    copy_of_sdist(&checkout);
    let before = snapshot(&checkout);
    let out = xtask(&["fetch-upstream", "--checkout", checkout.to_str().unwrap(), "--in-place"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = snapshot(&checkout);
    let changed: Vec<&PathBuf> =
        after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.contains(&&PathBuf::from("setup.py")), "{changed:?}");
    assert!(changed.contains(&&PathBuf::from("conftest.py")), "{changed:?}");
    let backend = String::from_utf8(after[Path::new("src/c/_cffi_backend.c")].clone()).unwrap();
    assert!(backend.contains("cffi_ft_shim_backend_init(m, CFFI_VERSION)"));
    assert!(!after.keys().any(|k| k.to_string_lossy().ends_with(".rej") || k.to_string_lossy().ends_with(".orig")));

    let out = xtask(&["fetch-upstream", "--checkout", checkout.to_str().unwrap(), "--in-place"]);
    assert_one_line_error(&out, "already applied");
    assert!(after == snapshot(&checkout));
}

#[test]
fn unknown_stress_scenario_is_refused_before_anything_runs() {
    // `--python /bin/true` would be refused too, later: the --only check comes first,
    // before interpreters, the sdist or any cell; and nothing is written.
    let target = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env("CFFI_FT_TARGET_DIR", target.path())
            .output()
            .expect("xtask runs")
    };
    let out = run(&["stress", "--only", "s99", "--python", "/bin/true"]);
    assert_one_line_error(&out, "--only: unknown scenario or component \"s99\" (known components: callbacks, library-registry");
    assert_one_line_error(&out, "s07_close_lib_once");
    let out = run(&["stress", "--steps", "4", "--only", "s02,unique-cache,nope", "--repeat", "1"]);
    assert_one_line_error(&out, "unknown scenario or component \"nope\"");
    assert!(fs::read_dir(target.path()).unwrap().next().is_none(), "a refused stress run wrote into its target dir");
}

#[test]
fn tsan_refuses_bad_options_before_building_anything() {
    let out = xtask(&["tsan", "--suites", "clients"]);
    assert_one_line_error(&out, "--suites: unknown suite \"clients\" (known: upstream, stress)");
    let out = xtask(&["tsan", "--scale", "0"]);
    assert_one_line_error(&out, "--scale must be positive");
    let out = xtask(&["tsan", "--only", "s99"]);
    assert_one_line_error(&out, "s99");
    let out = xtask(&["tsan", "--steps", "99"]);
    assert_one_line_error(&out, "99");
    // a given interpreter that is no TSan build is refused in one line
    let python = std::env::var("HOME").map(|h| format!("{h}/.cache/cffi-ft/python/3.13.5-t/bin/python3.13t")).unwrap_or_default();
    if Path::new(&python).exists() {
        let out = xtask(&["tsan", "--python", &python, "--steps", "0"]);
        assert_one_line_error(&out, "not a free-threaded ThreadSanitizer build");
    }
}
