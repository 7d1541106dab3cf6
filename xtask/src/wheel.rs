//! `cargo xtask wheel --step N [--python P]...`: wheels built from the step's sdist
//! (`dist::build_sdist`), one per interpreter (default: the kit's 3.13 and 3.13t
//! builds, giving `cp313-cp313` and `cp313-cp313t`, local `linux_x86_64` tags:
//! manylinux no longer covers 3.13t), into `target/cffi-ft/dist/`.
//!
//! Each wheel is built offline (`pip wheel --no-index --no-build-isolation`, an empty
//! CARGO_HOME, the network cut) and its `_cffi_backend` checked: dynamically linked
//! against nothing but glibc (libc, the dynamic loader ld-linux, and libpthread,
//! libdl, libm if they appear), libgcc_s (the Rust staticlib's unwinder) and libffi
//! (`readelf -d`), and no `cffi_ft_*` symbol in its dynamic symbol table (`nm -D`):
//! the kit's symbols stay private to the extension (`--exclude-libs`).
//!
//! `--check` installs each wheel into another fresh venv of its interpreter (no index),
//! imports it (steps, versions, the GIL off on 3.13t) and runs the kit's build suite.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::{self, StepKit};
use crate::offline;
use crate::python::{self, Interpreter};
use crate::series;
use crate::util::{self, status, Step};

#[derive(Args)]
pub struct WheelArgs {
    /// The step of the series the wheels carry.
    #[arg(long, value_name = "N")]
    pub step: u32,
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = series::DEFAULT_CFFI)]
    pub cffi_version: String,
    /// Interpreters to build for (repeatable; default: the kit's 3.13 and 3.13t builds).
    #[arg(long = "python", value_name = "PATH")]
    pub pythons: Vec<PathBuf>,
    /// Then install each wheel into a fresh venv and run the build suite.
    #[arg(long)]
    pub check: bool,
}

/// Shared libraries a wheel's backend may need: glibc's, the unwinder, libffi.
const ALLOWED_NEEDED: &[&str] =
    &["libc.so.6", "ld-linux-x86-64.so.2", "libpthread.so.0", "libdl.so.2", "libm.so.6", "libgcc_s.so.1"];

pub fn run(args: WheelArgs) -> Result<bool> {
    let kit = dist::resolve_step(&args.cffi_version, args.step)?;
    for p in &args.pythons {
        python::probe(p)?;
    }
    let interps = python::resolve(&args.pythons)?;
    let tarball = dist::build_sdist(&kit)?;
    let mut ok = true;
    let mut wheels = Vec::new();
    for interp in &interps {
        let (wheel, linked) = build_wheel(&kit, &tarball, interp)?;
        println!("{}\n    NEEDED: {}", wheel.display(), linked.join(" "));
        wheels.push((interp.clone(), wheel));
    }
    if args.check {
        for (interp, wheel) in &wheels {
            ok &= check_wheel(&kit, wheel, interp)?;
        }
    }
    Ok(ok)
}

/// The wheel tag an interpreter's build gets: `cp313-cp313t`.
fn abi_tag(interp: &Interpreter) -> String {
    let mut it = interp.version.split('.');
    let (major, minor) = (it.next().unwrap_or("3"), it.next().unwrap_or("13"));
    format!("cp{major}{minor}-cp{major}{minor}{}", if interp.free_threaded { "t" } else { "" })
}

/// Builds the wheel for `interp` offline, checks its backend's linking, and moves it
/// into the dist folder. Returns the wheel and the backend's NEEDED entries.
fn build_wheel(kit: &StepKit, tarball: &Path, interp: &Interpreter) -> Result<(PathBuf, Vec<String>)> {
    let label = interp.label();
    status(format!("wheel [{label}]: pip wheel {} (offline)", tarball.display()));
    let scratch = offline::outside_scratch("cffi-ft-wheel")?;
    let dir = scratch.path();
    let log = util::fresh_log(&format!("wheel-step{}-py{label}.log", kit.step));
    offline::ensure_build_packages(kit, &log)?;
    let python = offline::fresh_venv(interp, &dir.join("v"), &log)?;
    let cargo_home = offline::empty_cargo_home(dir)?;
    let out = dir.join("wheels");
    Step {
        label: format!("[{label}] pip wheel --no-index --no-build-isolation (empty CARGO_HOME)"),
        cmd: offline::build_command(&python, &cargo_home)
            .args(["-m", "pip", "wheel", "-v", "--disable-pip-version-check", "--no-index", "--no-build-isolation", "--no-deps", "-w"])
            .arg(&out)
            .arg(tarball)
            .current_dir(dir),
        log: &log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run_ok()?;
    let want = format!("cffi-{}-{}-", kit.dist_version(), abi_tag(interp));
    let wheel = fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&want) && n.to_string_lossy().ends_with(".whl")))
        .with_context(|| format!("pip wheel left no {want}*.whl in {}", out.display()))?;
    let unpacked = dir.join("unpacked");
    util::capture(Command::new(&python).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&unpacked))?;
    let backend = fs::read_dir(&unpacked)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("_cffi_backend") && n.to_string_lossy().ends_with(".so")))
        .context("the wheel has no _cffi_backend*.so")?;
    let linked = check_linking(&backend).with_context(|| format!("{}", wheel.file_name().unwrap_or_default().to_string_lossy()))?;
    fs::create_dir_all(dist::dist_dir())?;
    let dest = dist::dist_dir().join(wheel.file_name().context("wheel has no name")?);
    fs::copy(&wheel, dest.with_extension("whl.tmp"))?;
    fs::rename(dest.with_extension("whl.tmp"), &dest)?;
    Ok((dest, linked))
}

/// `readelf -d` NEEDED and `nm -D` of an extension: only the allowed libraries and
/// libffi, and no `cffi_ft_` symbol exported or imported. Returns the NEEDED list.
pub fn check_linking(so: &Path) -> Result<Vec<String>> {
    let dynamic = util::capture(Command::new("readelf").arg("-d").arg(so)).context("readelf -d (binutils)")?;
    let needed = needed_libraries(&dynamic);
    let foreign: Vec<&String> = needed.iter().filter(|n| !allowed(n)).collect();
    if !foreign.is_empty() {
        bail!(
            "{} links dynamically against {} (allowed: {}, libffi)",
            so.display(),
            foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            ALLOWED_NEEDED.join(", ")
        );
    }
    let symbols = util::capture(Command::new("nm").arg("-D").arg(so)).context("nm -D (binutils)")?;
    let leaked: Vec<&str> = symbols.lines().filter_map(|l| l.split_whitespace().last()).filter(|s| s.contains("cffi_ft_")).collect();
    if !leaked.is_empty() {
        bail!("{} has cffi_ft_ symbols in its dynamic symbol table: {}", so.display(), leaked.join(", "));
    }
    Ok(needed)
}

fn needed_libraries(readelf: &str) -> Vec<String> {
    readelf
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(n, _)| n.to_string()))
        .collect()
}

fn allowed(lib: &str) -> bool {
    ALLOWED_NEEDED.contains(&lib) || lib.starts_with("libffi.so.")
}

fn check_wheel(kit: &StepKit, wheel: &Path, interp: &Interpreter) -> Result<bool> {
    let label = interp.label();
    status(format!("wheel --check [{label}]: {} into a fresh venv", wheel.display()));
    let scratch = offline::outside_scratch("cffi-ft-wheel-check")?;
    let dir = scratch.path();
    let log = util::fresh_log(&format!("wheel-check-step{}-py{label}.log", kit.step));
    let python = offline::fresh_venv(interp, &dir.join("v"), &log)?;
    Step {
        label: format!("[{label}] pip install --no-index {}", wheel.file_name().unwrap_or_default().to_string_lossy()),
        cmd: offline::command(&python).args(["-m", "pip", "install", "--disable-pip-version-check", "--no-index"]).arg(wheel),
        log: &log,
        timeout: Some(Duration::from_secs(600)),
    }
    .run_ok()?;
    let got = offline::inspect_installed(&python, kit, dir)?;
    println!("    installed [{label}]: {}", got.summary());
    offline::run_build_suite(&python, kit, &dir.join("tmp"), &label, &log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_both_builds() {
        let i = |ft| Interpreter { executable: "/x".into(), version: "3.13.5".into(), free_threaded: ft, tsan: false };
        assert_eq!(abi_tag(&i(true)), "cp313-cp313t");
        assert_eq!(abi_tag(&i(false)), "cp313-cp313");
    }

    #[test]
    fn only_glibc_the_unwinder_and_libffi_are_allowed() {
        let readelf = " 0x0000000000000001 (NEEDED)             Shared library: [libffi.so.8]\n \
                       0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
                       0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                       0x000000000000000e (SONAME)             Library soname: [x.so]\n";
        let needed = needed_libraries(readelf);
        assert_eq!(needed, ["libffi.so.8", "libgcc_s.so.1", "libc.so.6"]);
        assert!(needed.iter().all(|n| allowed(n)));
        assert!(!allowed("libpython3.13t.so.1.0"));
        assert!(!allowed("libutil.so.1"));
        assert!(!allowed("librt.so.1"));
    }
}
