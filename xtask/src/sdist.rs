//! `cargo xtask sdist --step N`: a self-building sdist `cffi-1.17.1+ft<N>.tar.gz` in
//! `target/cffi-ft/dist/`, assembled by `dist::build_sdist` (its layout, and why a hook
//! plus a small patch, are documented there).
//!
//! `--check` then installs it the way the done-criterion says: into a fresh
//! venv of a free-threaded interpreter, outside the repository, with the network cut
//! (`unshare -n`), `pip install --no-index --no-build-isolation`, `CARGO_NET_OFFLINE`
//! and an empty `CARGO_HOME` (setuptools, pycparser and pytest come from a local
//! wheelhouse filled beforehand; see `offline`), checks `__cffi_ft__`, the versions and
//! the GIL, runs the kit's build suite against it, and checks the refusals without
//! cargo and with an old rustc.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::{self, StepKit};
use crate::offline;
use crate::python::{self, Interpreter};
use crate::series;
use crate::util::{self, status, Step};

#[derive(Args)]
pub struct SdistArgs {
    /// The step of the series the sdist carries.
    #[arg(long, value_name = "N")]
    pub step: u32,
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = series::DEFAULT_CFFI)]
    pub cffi_version: String,
    /// Then install it offline into a fresh free-threaded venv and run the build suite.
    #[arg(long)]
    pub check: bool,
    /// Interpreters for --check (default: the kit's free-threaded build).
    #[arg(long = "python", value_name = "PATH")]
    pub pythons: Vec<PathBuf>,
}

pub fn run(args: SdistArgs) -> Result<bool> {
    let kit = dist::resolve_step(&args.cffi_version, args.step)?;
    if !args.pythons.is_empty() {
        for p in &args.pythons {
            python::probe(p)?;
        }
    }
    let sdist = dist::build_sdist(&kit)?;
    println!("{}", sdist.display());
    if !args.check {
        return Ok(true);
    }
    let interps: Vec<Interpreter> = python::resolve(&args.pythons)?;
    let interps: Vec<Interpreter> = if args.pythons.is_empty() {
        interps.into_iter().filter(|i| i.free_threaded).collect()
    } else {
        interps
    };
    if interps.is_empty() {
        bail!("--check: no free-threaded interpreter (give one with --python)");
    }
    let mut ok = true;
    for interp in &interps {
        ok &= check_sdist(&kit, &sdist, interp)?;
    }
    Ok(ok)
}

/// The done-criterion of the sdist: copied to a scratch dir outside the repository,
/// installed into a fresh venv with no network and an empty CARGO_HOME, then checked.
fn check_sdist(kit: &StepKit, sdist: &Path, interp: &Interpreter) -> Result<bool> {
    let label = interp.label();
    status(format!("sdist --check [{label}]: offline install of {} into a fresh venv", sdist.display()));
    let scratch = offline::outside_scratch("cffi-ft-sdist-check")?;
    let dir = scratch.path();
    let log = util::fresh_log(&format!("sdist-check-step{}-py{label}.log", kit.step));
    let tarball = dir.join(sdist.file_name().context("sdist has no file name")?);
    fs::copy(sdist, &tarball)?;
    offline::ensure_build_packages(kit, &log)?;
    let cargo_home = offline::empty_cargo_home(dir)?;
    let python = offline::fresh_venv(interp, &dir.join("v"), &log)?;
    let pip = dir.join("v").join("bin").join("pip");
    Step {
        label: format!("[{label}] pip install --no-index --no-build-isolation {} (offline, empty CARGO_HOME)", tarball.file_name().unwrap_or_default().to_string_lossy()),
        cmd: offline::build_command(&pip, &cargo_home)
            .args(["install", "-v", "--disable-pip-version-check", "--no-index", "--no-build-isolation"])
            .arg(&tarball)
            .current_dir(dir)
            .env_remove("PYO3_BUILD_EXTENSION_MODULE")
            .env_remove("PYO3_PYTHON"),
        log: &log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run_ok()?;
    let got = offline::inspect_installed(&python, kit, dir)?;
    println!("    installed [{label}]: {}", got.summary());
    let ok = offline::run_build_suite(&python, kit, &dir.join("tmp"), &label, &log)?;
    check_toolchain_refusals(kit, &pip, &tarball, dir, &log)?;
    Ok(ok)
}

/// Without cargo, and with a rustc older than the workspace's rust-version, the sdist
/// stops with the one line that says what to install (pip shows it in its report).
fn check_toolchain_refusals(kit: &StepKit, pip: &Path, tarball: &Path, dir: &Path, log: &Path) -> Result<()> {
    let line = format!("error: building cffi {} from source needs a Rust toolchain (cargo and rustc >= {})", kit.dist_version(), kit.rust_version);
    let old_rustc = dir.join("old-rustc");
    fs::write(&old_rustc, "#!/bin/sh\necho 'rustc 1.70.0 (90c541806 2023-05-31)'\n")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&old_rustc, fs::Permissions::from_mode(0o755))?;
    let cases: [(&str, Vec<(&str, String)>, &str); 2] = [
        ("no cargo on PATH", vec![("PATH", "/usr/bin:/bin".to_string())], "[no cargo on PATH]"),
        ("rustc 1.70", vec![("RUSTC", old_rustc.display().to_string())], "[found rustc 1.70.0"),
    ];
    for (what, env, detail) in cases {
        let mut cmd = offline::command(pip);
        cmd.args(["install", "--disable-pip-version-check", "--no-index", "--no-build-isolation", "--force-reinstall", "--no-deps"])
            .arg(tarball)
            .current_dir(dir)
            .env_remove("CARGO")
            .env_remove("CFFI_FT_STATICLIB");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().context("cannot run pip")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        fs::OpenOptions::new().append(true).create(true).open(log)?.write_all(text.as_bytes())?;
        let hit = text.lines().find(|l| l.trim_start().starts_with(&line) && l.contains(detail));
        match (out.status.success(), hit) {
            (false, Some(l)) => println!("    refused ({what}): {}", l.trim()),
            _ => bail!("sdist with {what}: expected pip to fail with `{line} ... {detail}` (log: {})", log.display()),
        }
    }
    Ok(())
}
