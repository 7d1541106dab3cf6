//! `cargo xtask sdist --step N`: a self-building sdist `cffi-1.17.1+ft<N>.tar.gz`.
//!
//! The pristine cffi sdist with the series up to step N applied, then the sdist-only
//! series of `shim-c/sdist/<cffi>/` (setup.py builds the staticlib when
//! CFFI_FT_STATICLIB is not given, and the metadata version gets `+ft<N>`), the hook
//! `cffi_ft_sdist.py` at the tree root, and `cffi-ft/`: the step's minimal cargo
//! workspace (see `dist.rs`), its crates vendored with the source replacement in
//! `cffi-ft/.cargo/config.toml`, the C shim, and `sdist.json` (step, features,
//! rust-version, whether libclang is needed) for the hook.
//!
//! Why a hook file plus a small patch rather than one bigger patch: the build logic is
//! plain Python that can be read and tested on its own, and it is the same file for
//! every step and cffi version; the patch only has to call it (two hunks of setup.py
//! and MANIFEST.in), and the step-specific facts live in data (`sdist.json`) that xtask
//! writes. Distribution packagers never see either: their route is `export`.
//!
//! `--check` then installs it the way the issue's done-criterion says: into a fresh
//! venv of a free-threaded interpreter, outside the repository, with the network cut
//! (`unshare -n`), `pip install --no-index --no-build-isolation`, `CARGO_NET_OFFLINE`
//! and an empty `CARGO_HOME` (setuptools, pycparser and pytest come from a local
//! wheelhouse filled beforehand), checks `__cffi_ft__`, the versions and the GIL, and
//! runs the kit's build suite against it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::{self, StepKit};
use crate::python::{self, Interpreter};
use crate::series::{self, Series};
use crate::upstream;
use crate::util::{self, status, Step};

#[derive(Args)]
pub struct SdistArgs {
    /// The step of the series the sdist carries.
    #[arg(long, value_name = "N")]
    pub step: u32,
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = crate::DEFAULT_CFFI)]
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
    let sdist = build(&kit)?;
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

/// `target/cffi-ft/dist/`: the sdists and wheels.
pub fn dist_dir() -> PathBuf {
    util::kit_target_dir().join("dist")
}

/// Builds `target/cffi-ft/dist/cffi-<ver>+ft<N>.tar.gz` (replacing an older one only
/// once the new one is complete). The git tree must be clean.
pub fn build(kit: &StepKit) -> Result<PathBuf> {
    let root = util::workspace_root();
    dist::ensure_clean_git(&root)?;
    let (commit, mtime) = dist::head_commit(&root)?;
    let version = kit.dist_version();
    let name = format!("cffi-{version}");
    let out = dist_dir().join(format!("{name}.tar.gz"));
    status(format!(
        "sdist: cffi {} + series up to step {} (features: {}) from commit {}",
        kit.series.cffi_version,
        kit.step,
        if kit.features.is_empty() { "none".to_string() } else { kit.features.join(",") },
        &commit[..12]
    ));
    let up = upstream::fetch_sdist(&kit.series.cffi_version)?;
    let scratch = dist::scratch_near(&out, "sdist")?;
    let log = util::kit_target_dir().join("logs").join(format!("sdist-step{}.log", kit.step));
    let _ = fs::remove_file(&log);
    let tree = scratch.path().join(&name);
    util::copy_tree(&up.tree, &tree, &[".git", ".cffi-ft-sdist-sha256"])?;
    series::apply(&tree, &kit.series.up_to(kit.step))?;
    let sdist_series = sdist_series(&kit.series.cffi_version)?;
    series::apply(&tree, &sdist_series.patches.iter().collect::<Vec<_>>())?;
    let hook = util::capture(Command::new("git").args(["show", "HEAD:shim-c/sdist/cffi_ft_sdist.py"]).current_dir(&root))?;
    fs::write(tree.join("cffi_ft_sdist.py"), hook)?;

    let kit_dir = tree.join("cffi-ft");
    dist::assemble_kit(kit, &kit_dir)?;
    status("sdist: cargo vendor (the step's dependencies, for an offline build)");
    let replacement = dist::vendor(&kit_dir, &log)?;
    fs::create_dir_all(kit_dir.join(".cargo"))?;
    fs::write(
        kit_dir.join(".cargo").join("config.toml"),
        format!(
            "# Written by `cargo xtask sdist`: build offline from vendor/ (cargo vendor's lines).\n\
             {replacement}\n\
             [env]\n\
             # the staticlib is linked into an extension module: never link libpython\n\
             PYO3_BUILD_EXTENSION_MODULE = \"1\"\n"
        ),
    )?;
    let config = serde_json::json!({
        "cffi_version": kit.series.cffi_version,
        "step": kit.step,
        "local_version": format!("+ft{}", kit.step),
        "features": kit.features,
        "rust_version": kit.rust_version,
        "needs_libclang": kit.needs_libclang,
        "kit_commit": commit,
    });
    fs::write(kit_dir.join("sdist.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    for pkg_info in [tree.join("PKG-INFO"), tree.join("src").join("cffi.egg-info").join("PKG-INFO")] {
        set_pkg_info_version(&pkg_info, &kit.series.cffi_version, &version)?;
    }
    let tmp_out = scratch.path().join("out.tar.gz");
    dist::tarball(scratch.path(), &name, &tmp_out, mtime, "gzip", &log)?;
    fs::create_dir_all(dist_dir())?;
    fs::rename(&tmp_out, &out).with_context(|| format!("cannot write {}", out.display()))?;
    let size = fs::metadata(&out)?.len();
    status(format!("sdist: {} ({:.1} MiB)", out.display(), size as f64 / 1048576.0));
    Ok(out)
}

/// The sdist-only patches (`shim-c/sdist/<cffi>/series`).
fn sdist_series(cffi_version: &str) -> Result<Series> {
    let dir = util::workspace_root().join("shim-c").join("sdist").join(cffi_version);
    if !dir.join("series").is_file() {
        bail!("cffi {cffi_version} has no sdist patches (shim-c/sdist/{cffi_version}/series)");
    }
    Series::load_dir(cffi_version, &dir)
}

/// Rewrites the `Version:` line of a PKG-INFO from `from` to `to`.
fn set_pkg_info_version(path: &Path, from: &str, to: &str) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(()) };
    let old = format!("\nVersion: {from}\n");
    if !text.contains(&old) {
        bail!("{}: no `Version: {from}` line", path.display());
    }
    fs::write(path, text.replacen(&old, &format!("\nVersion: {to}\n"), 1))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The offline checks (also used by `wheel --check` and `export --check`)

/// `target/cffi-ft/wheelhouse/`: the pinned test requirements as wheels (downloaded
/// once, with the network), so the checks' venvs install with `--no-index`.
pub fn wheelhouse(interp: &Interpreter, log: &Path) -> Result<PathBuf> {
    let dir = util::kit_target_dir().join("wheelhouse");
    let requirements = util::workspace_root().join("compat-tests").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements)?;
    let stamp = dir.join(format!("requirements-{}.txt", interp.label()));
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    Step {
        label: format!("[{}] pip download the test requirements into the wheelhouse", interp.label()),
        cmd: Command::new(&interp.executable)
            .args(["-m", "pip", "download", "--disable-pip-version-check", "--only-binary", ":all:", "-d"])
            .arg(&dir)
            .arg("-r")
            .arg(&requirements),
        log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    fs::write(&stamp, wanted)?;
    Ok(dir)
}

/// A command run with the network cut: `unshare -n` (a new, empty network namespace)
/// where it works (root, or user namespaces); otherwise proxies that lead nowhere.
pub fn offline(program: &Path) -> Command {
    static UNSHARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let unshare = *UNSHARE.get_or_init(|| {
        Command::new("unshare").args(["-n", "true"]).output().is_ok_and(|o| o.status.success())
    });
    let mut cmd = if unshare {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(program);
        c
    } else {
        util::warn("unshare -n does not work here: cutting the network with dead proxies only");
        let mut c = Command::new(program);
        for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            c.env(var, "http://127.0.0.1:9");
        }
        c
    };
    cmd.env("PIP_NO_INDEX", "1").env("CARGO_NET_OFFLINE", "true");
    cmd
}

/// A scratch directory outside the repository (so no `.cargo/config.toml` of the kit
/// applies), removed on drop.
pub fn outside_scratch(prefix: &str) -> Result<util::ScratchDir> {
    util::ScratchDir::new_in(&std::env::temp_dir(), prefix)
}

/// A fresh venv with the test requirements from the wheelhouse (no index).
pub fn fresh_venv(interp: &Interpreter, dir: &Path, log: &Path) -> Result<PathBuf> {
    let house = wheelhouse(interp, log)?;
    Step {
        label: format!("[{}] venv", interp.label()),
        cmd: Command::new(&interp.executable).arg("-m").arg("venv").arg(dir),
        log,
        timeout: Some(Duration::from_secs(300)),
    }
    .run_ok()?;
    let python = dir.join("bin").join("python");
    Step {
        label: format!("[{}] pip install setuptools, pycparser, pytest (wheelhouse, no index)", interp.label()),
        cmd: offline(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--find-links"])
            .arg(&house)
            .arg("-r")
            .arg(util::workspace_root().join("compat-tests").join("requirements.txt")),
        log,
        timeout: Some(Duration::from_secs(600)),
    }
    .run_ok()?;
    Ok(python)
}

/// What the installed cffi says about itself.
#[derive(Debug, serde::Deserialize)]
pub struct Installed {
    pub gil: bool,
    pub free_threaded: bool,
    pub steps: Vec<u32>,
    pub backend_version: String,
    pub cffi_version: String,
    pub metadata_version: String,
}

const INSPECT: &str = r#"
import json, sys, sysconfig, importlib.metadata
import _cffi_backend, cffi
print(json.dumps({"gil": sys._is_gil_enabled(),
                  "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                  "steps": _cffi_backend.__cffi_ft__["steps"],
                  "backend_version": _cffi_backend.__version__,
                  "cffi_version": cffi.__version__,
                  "metadata_version": importlib.metadata.version("cffi")}))
"#;

/// Imports the installed cffi in a fresh process (PYTHON_GIL unset, offline) and checks
/// the step, the versions and the GIL; returns what it said.
pub fn inspect_installed(python: &Path, kit: &StepKit, cwd: &Path) -> Result<Installed> {
    inspect_installed_as(python, kit, cwd, &kit.dist_version())
}

/// [`inspect_installed`] for an install whose metadata version is `metadata` (a
/// distribution's build keeps the plain upstream version).
pub fn inspect_installed_as(python: &Path, kit: &StepKit, cwd: &Path, metadata: &str) -> Result<Installed> {
    let text = util::capture(offline(python).args(["-c", INSPECT]).current_dir(cwd).env_remove("PYTHON_GIL"))?;
    let got: Installed = serde_json::from_str(text.lines().last().unwrap_or(""))
        .with_context(|| format!("cannot read what the installed cffi said: {text}"))?;
    let mut wrong = Vec::new();
    if got.steps.last() != Some(&kit.step) {
        wrong.push(format!("__cffi_ft__ steps {:?} do not end at step {}", got.steps, kit.step));
    }
    if got.free_threaded && got.gil {
        wrong.push("the GIL is enabled on a free-threaded build".to_string());
    }
    let cffi = &kit.series.cffi_version;
    if &got.backend_version != cffi || &got.cffi_version != cffi {
        wrong.push(format!("versions: backend {}, cffi {} (want {cffi})", got.backend_version, got.cffi_version));
    }
    if got.metadata_version != metadata {
        wrong.push(format!("metadata version {} (want {metadata})", got.metadata_version));
    }
    if !wrong.is_empty() {
        bail!("the installed cffi is wrong: {}", wrong.join("; "));
    }
    Ok(got)
}

/// The kit's build suite (the same files as test-upstream's `build` suite) against the
/// cffi installed in `python`'s venv, offline. Returns whether it passed.
pub fn run_build_suite(python: &Path, kit: &StepKit, tmp: &Path, label: &str, log: &Path) -> Result<bool> {
    let tests = util::workspace_root().join("compat-tests");
    fs::create_dir_all(tmp)?;
    let finished = Step {
        label: format!("[{label}] build suite (test_build, test_unique_cache, test_lib_registry)"),
        cmd: offline(python)
            .args(["-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "--timeout=900"])
            .arg(tests.join("test_build.py"))
            .arg(tests.join("test_unique_cache.py"))
            .arg(tests.join("test_lib_registry.py"))
            .arg(format!("--rootdir={}", tests.display()))
            .current_dir(tmp)
            .env_remove("PYTHON_GIL")
            .env("CFFI_FT_EXPECT_STEP", kit.step.to_string())
            .env("TMPDIR", tmp),
        log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run()?;
    let summary = fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.starts_with('=') && (l.contains(" passed") || l.contains(" failed") || l.contains(" error")))
        .unwrap_or("")
        .trim_matches(|c| c == '=' || c == ' ')
        .to_string();
    println!("    build suite [{label}]: {} ({summary})", if finished.success() { "ok" } else { "FAILED" });
    Ok(finished.success())
}

/// The done-criterion of the sdist: copied to a scratch dir outside the repository,
/// installed into a fresh venv with no network and an empty CARGO_HOME, then checked.
fn check_sdist(kit: &StepKit, sdist: &Path, interp: &Interpreter) -> Result<bool> {
    let label = interp.label();
    status(format!("sdist --check [{label}]: offline install of {} into a fresh venv", sdist.display()));
    let scratch = outside_scratch("cffi-ft-sdist-check")?;
    let dir = scratch.path();
    let log = util::kit_target_dir().join("logs").join(format!("sdist-check-step{}-py{label}.log", kit.step));
    let _ = fs::remove_file(&log);
    let tarball = dir.join(sdist.file_name().context("sdist has no file name")?);
    fs::copy(sdist, &tarball)?;
    let cargo_home = dir.join("cargo-home");
    fs::create_dir_all(&cargo_home)?;
    let python = fresh_venv(interp, &dir.join("v"), &log)?;
    let pip = dir.join("v").join("bin").join("pip");
    Step {
        label: format!("[{label}] pip install --no-index --no-build-isolation {} (offline, empty CARGO_HOME)", tarball.file_name().unwrap_or_default().to_string_lossy()),
        cmd: offline(&pip)
            .args(["install", "-v", "--disable-pip-version-check", "--no-index", "--no-build-isolation"])
            .arg(&tarball)
            .current_dir(dir)
            .env("CARGO_HOME", &cargo_home)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CFFI_FT_STATICLIB")
            .env_remove("CFFI_FT_SHIM_DIR")
            .env_remove("PYO3_BUILD_EXTENSION_MODULE")
            .env_remove("PYO3_PYTHON"),
        log: &log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run_ok()?;
    let got = inspect_installed(&python, kit, dir)?;
    println!(
        "    installed [{label}]: cffi {} (metadata {}), __cffi_ft__ steps {:?}, GIL enabled: {}",
        got.cffi_version, got.metadata_version, got.steps, got.gil
    );
    let ok = run_build_suite(&python, kit, &dir.join("tmp"), &label, &log)?;
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
        let mut cmd = offline(pip);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_info_gets_the_local_version() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("PKG-INFO");
        fs::write(&p, "Metadata-Version: 2.1\nName: cffi\nVersion: 1.17.1\nSummary: x\n").unwrap();
        set_pkg_info_version(&p, "1.17.1", "1.17.1+ft1").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "Metadata-Version: 2.1\nName: cffi\nVersion: 1.17.1+ft1\nSummary: x\n");
        assert!(set_pkg_info_version(&p, "1.17.1", "x").is_err());
        set_pkg_info_version(&tmp.path().join("missing"), "1.17.1", "x").unwrap();
    }

    #[test]
    fn the_sdist_series_parses_and_touches_setup_py() {
        let s = sdist_series("1.17.1").unwrap();
        assert_eq!(s.patches.len(), 1);
        assert_eq!(s.patches[0].touches, ["setup.py", "MANIFEST.in"]);
    }
}
