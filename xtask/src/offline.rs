//! The checks of what `sdist`, `wheel` and `export` make: a fresh venv outside the
//! repository, its test requirements from a local wheelhouse (downloaded once, with the
//! network), then everything run with the network cut (`unshare -n`, or dead proxies
//! where that does not work) and `pip --no-index`; what the installed cffi says about
//! itself (step, versions, the GIL), and the kit's build suite against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cell;
use crate::dist::StepKit;
use crate::python::Interpreter;
use crate::util::{self, Step};

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
pub fn command(program: &Path) -> Command {
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

/// `dir/cargo-home`, created empty: the CARGO_HOME of a build from source, so nothing
/// of this machine's cargo registry or config helps it.
pub fn empty_cargo_home(dir: &Path) -> Result<PathBuf> {
    let cargo_home = dir.join("cargo-home");
    fs::create_dir_all(&cargo_home)?;
    Ok(cargo_home)
}

/// A [`command`] that builds the kit from source as a user's machine would: with
/// `cargo_home` (see [`empty_cargo_home`]) and without xtask's own cargo settings
/// (CARGO_TARGET_DIR, RUSTFLAGS) or a prebuilt staticlib (CFFI_FT_STATICLIB,
/// CFFI_FT_SHIM_DIR).
pub fn build_command(program: &Path, cargo_home: &Path) -> Command {
    let mut cmd = command(program);
    cmd.env("CARGO_HOME", cargo_home)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CFFI_FT_STATICLIB")
        .env_remove("CFFI_FT_SHIM_DIR");
    cmd
}

/// A scratch directory outside the repository (so no `.cargo/config.toml` of the kit
/// applies), removed on drop.
pub fn outside_scratch(prefix: &str) -> Result<util::ScratchDir> {
    util::ScratchDir::new_in(&std::env::temp_dir(), prefix)
}

/// What building the kit from its sdist needs on this machine besides Rust and a C
/// compiler: libclang from step 4 on (bindgen), installed as the cells' builds install
/// it (apt-get, where the machine has it and it is missing).
pub fn ensure_build_packages(kit: &StepKit, log: &Path) -> Result<()> {
    cell::ensure_feature_build_packages(&kit.features, log)
}

/// A fresh venv with the test requirements from the wheelhouse (no index).
pub fn fresh_venv(interp: &Interpreter, dir: &Path, log: &Path) -> Result<PathBuf> {
    let house = wheelhouse(interp, log)?;
    let python = interp.create_venv(dir, &interp.label(), log)?;
    Step {
        label: format!("[{}] pip install setuptools, pycparser, pytest (wheelhouse, no index)", interp.label()),
        cmd: command(&python)
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

impl Installed {
    /// `cffi 1.17.1 (metadata 1.17.1+ft5), __cffi_ft__ steps [0, 1, ...], GIL enabled: false`
    pub fn summary(&self) -> String {
        format!(
            "cffi {} (metadata {}), __cffi_ft__ steps {:?}, GIL enabled: {}",
            self.cffi_version, self.metadata_version, self.steps, self.gil
        )
    }
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
    let text = util::capture(command(python).args(["-c", INSPECT]).current_dir(cwd).env_remove("PYTHON_GIL"))?;
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

/// The kit's build suite (test-upstream's `build` suite: [`cell::BUILD_SUITE_FILES`])
/// against the cffi installed in `python`'s venv, offline. Returns whether it passed.
pub fn run_build_suite(python: &Path, kit: &StepKit, tmp: &Path, label: &str, log: &Path) -> Result<bool> {
    let tests = util::workspace_root().join("compat-tests");
    fs::create_dir_all(tmp)?;
    let names: Vec<&str> = cell::BUILD_SUITE_FILES.iter().map(|f| f.trim_end_matches(".py")).collect();
    let finished = Step {
        label: format!("[{label}] build suite ({})", names.join(", ")),
        cmd: command(python)
            .args(["-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "--timeout=900"])
            .args(cell::build_suite_files())
            .arg(format!("--rootdir={}", tests.display()))
            .current_dir(tmp)
            .env_remove("PYTHON_GIL")
            .env("CFFI_FT_EXPECT_STEP", kit.step.to_string())
            .env("TMPDIR", tmp),
        log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run()?;
    println!("    build suite [{label}]: {} ({})", if finished.success() { "ok" } else { "FAILED" }, pytest_summary(log));
    Ok(finished.success())
}

/// pytest's last summary line in `log` (`13 passed in 5.98s`), without its `=` rule;
/// empty when there is none.
pub fn pytest_summary(log: &Path) -> String {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.starts_with('=') && (l.contains(" passed") || l.contains(" failed") || l.contains(" error")))
        .unwrap_or("")
        .trim_matches(|c| c == '=' || c == ' ')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_pytest_summary_line() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        fs::write(&log, "==== test session starts ====\nx.py::t PASSED\n===== 2 passed in 0.5s =====\nlater\n== 1 failed, 3 passed in 2.01s ==\n").unwrap();
        assert_eq!(pytest_summary(&log), "1 failed, 3 passed in 2.01s");
        fs::write(&log, "== 1 error in 0.1s ==\n").unwrap();
        assert_eq!(pytest_summary(&log), "1 error in 0.1s");
        assert_eq!(pytest_summary(&tmp.path().join("missing")), "");
    }

    #[test]
    fn the_installed_summary() {
        let got = Installed {
            gil: false,
            free_threaded: true,
            steps: vec![0, 1],
            backend_version: "1.17.1".into(),
            cffi_version: "1.17.1".into(),
            metadata_version: "1.17.1+ft1".into(),
        };
        assert_eq!(got.summary(), "cffi 1.17.1 (metadata 1.17.1+ft1), __cffi_ft__ steps [0, 1], GIL enabled: false");
    }
}
