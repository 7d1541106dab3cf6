//! `sdist`, `wheel` and `export` refuse bad input with one `error:` line and exit
//! status 2, before writing anything: an unknown step, and an export directory that is
//! not empty (left exactly as it was). The dirty-git-tree refusal is a unit test of
//! `dist::ensure_clean_git` (this test cannot dirty the workspace it runs from).

use std::fs;
use std::process::Output;

mod common;
use common::{assert_one_line_error, xtask};

/// The shared refusal check, and nothing printed on stdout as a result.
fn assert_refused(out: &Output, needle: &str) {
    assert_one_line_error(out, needle);
    assert!(out.stdout.is_empty(), "nothing printed as a result");
}

#[test]
fn an_unknown_step_is_refused_by_every_command() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cffi-ft/dist/cffi-1.17.1+ft99.tar.gz");
    for args in [
        vec!["sdist", "--step", "99"],
        vec!["wheel", "--step", "99"],
        vec!["export", "--step", "99", "--to", "/nonexistent/cffi-ft-export"],
    ] {
        let out = xtask(&args);
        assert_refused(&out, "--step 99 does not exist for cffi 1.17.1 (steps: 0, 1,");
    }
    assert!(!dist.exists());
    assert!(!std::path::Path::new("/nonexistent/cffi-ft-export").exists());
}

#[test]
fn an_unknown_cffi_version_is_refused() {
    let out = xtask(&["sdist", "--step", "1", "--cffi-version", "0.9"]);
    assert_refused(&out, "unknown cffi version 0.9");
}

#[test]
fn export_into_a_non_empty_directory_is_refused_and_it_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    let out = xtask(&["export", "--step", "1", "--to", tmp.path().to_str().unwrap()]);
    assert_refused(&out, "the directory is not empty");
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["keep.txt"]);
    assert_eq!(fs::read_to_string(tmp.path().join("keep.txt")).unwrap(), "mine");
    // and nothing was left beside it (the scratch directory lives next to --to)
    let parent = tmp.path().parent().unwrap();
    let stray = fs::read_dir(parent).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".export-"));
    assert!(!stray, "a scratch directory was left in {}", parent.display());
}

#[test]
fn export_to_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, "x").unwrap();
    let out = xtask(&["export", "--step", "1", "--to", file.to_str().unwrap()]);
    assert_refused(&out, "exists and is not a directory");
}
