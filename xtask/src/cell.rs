//! One (step, interpreter) cell: the patched cffi tree, the staticlib built with the
//! step's features, a venv with the patched backend installed. Every command that needs a
//! cell (test-upstream, stress, bench) builds or reuses it here, and never through
//! another command.
//!
//! Cell layout: `target/cffi-ft/cells/step<N>-py<label>/` holds the patched tree, the
//! staticlib, the venv, `build.log` and the stamp `cell-built.json`. `build_cell` rebuilds
//! it from scratch; `reuse_or_build_cell` keeps it while the stamp is newer than every
//! input (series, shim, crates, requirements, upstream tree) and names the same source.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::python::Interpreter;
use crate::report::Cell;
use crate::series::{self, Series};
use crate::upstream::Upstream;
use crate::util::{self, Step};

/// What a run is asked to do.
pub struct Plan {
    pub series: Series,
    pub upstream: Upstream,
    pub steps: Vec<u32>,
    pub interpreters: Vec<Interpreter>,
    pub suites: Vec<Suite>,
    pub parallel_threads: u32,
    pub jobs: usize,
    pub pytest_args: Vec<String>,
    pub suite_timeout: Duration,
    /// Added to the environment of every suite run (`cargo xtask tsan`: TSAN_OPTIONS).
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// cffi's own tests: `src/c/test_c.py` and `testing/`.
    Upstream,
    /// The kit's own checks: `compat-tests/test_build.py` (step 0: GIL stays off, kit
    /// linked), `test_unique_cache.py` (step 1: entries die with ctypes, identity) and
    /// `test_lib_registry.py` (step 3: closed libraries raise, the deferred dlclose).
    Build,
    /// A real client: xattr 1.3.0 built from its sdist against this cell's cffi, its
    /// own tests and `compat-tests/test_client_xattr.py` (8 threads).
    ClientXattr,
    /// A real client: brotlicffi 1.2.1.0 (API mode, bundled brotli C sources) built from
    /// its sdist against this cell's cffi, and `compat-tests/test_client_brotli.py`
    /// (round-trips of a fixed corpus, then 8 threads). The sdist's own tests need
    /// brotli test data it does not ship, so they are not run.
    ClientBrotli,
    /// A real client in ABI mode: cairocffi 1.7.1 (`ffi.dlopen`s the system's libcairo,
    /// Debian's `libcairo2`, installed when missing) built from its sdist against this
    /// cell's cffi; its own tests (`cairocffi/test_*.py`, through
    /// `compat-tests/client_cairo_plugin.py`) and `compat-tests/test_client_cairo.py`
    /// (pictures drawn by 8 threads, byte for byte against single-threaded ones).
    ClientCairo,
    /// A real client that calls back into Python from C: pycares 4.11.0 (API mode,
    /// bundled c-ares 1.34.5, `@ffi.def_extern` callbacks) built from its sdist against
    /// this cell's cffi; its own tests that need no DNS (`tests/test_all.py`, through
    /// `compat-tests/client_pycares_plugin.py`) and `compat-tests/test_client_pycares.py`
    /// (lookups from /etc/hosts and from a name server on 127.0.0.1, then a channel per
    /// thread in 8 threads, every callback counted).
    ClientPycares,
}

/// The files of `compat-tests/` that make the `build` suite ([`Suite::Build`]), in the
/// order they run: test-upstream's cells and the dist commands' `--check`s run the same.
pub const BUILD_SUITE_FILES: [&str; 3] = ["test_build.py", "test_unique_cache.py", "test_lib_registry.py"];

/// [`BUILD_SUITE_FILES`] as paths.
pub fn build_suite_files() -> Vec<PathBuf> {
    let tests = util::workspace_root().join("compat-tests");
    BUILD_SUITE_FILES.iter().map(|f| tests.join(f)).collect()
}

/// Every suite, in the order of the default `--suites`.
pub const ALL_SUITES: [Suite; 6] = [
    Suite::Upstream,
    Suite::Build,
    Suite::ClientXattr,
    Suite::ClientBrotli,
    Suite::ClientCairo,
    Suite::ClientPycares,
];

/// The default `--suites` of test-upstream, and what `cargo xtask ci` runs: all of them.
pub const DEFAULT_SUITES: &str = "upstream,build,client-xattr,client-brotli,client-cairo,client-pycares";

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Upstream => "upstream",
            Suite::Build => "build",
            Suite::ClientXattr => "client-xattr",
            Suite::ClientBrotli => "client-brotli",
            Suite::ClientCairo => "client-cairo",
            Suite::ClientPycares => "client-pycares",
        }
    }

    /// Debian packages the suite needs on the machine, installed before any cell runs.
    pub fn system_packages(self) -> &'static [&'static str] {
        match self {
            Suite::ClientCairo => &["libcairo2"],
            Suite::Upstream | Suite::Build | Suite::ClientXattr | Suite::ClientBrotli | Suite::ClientPycares => &[],
        }
    }

    pub fn parse(s: &str) -> Result<Suite> {
        match s {
            "upstream" => Ok(Suite::Upstream),
            "build" => Ok(Suite::Build),
            "client-xattr" => Ok(Suite::ClientXattr),
            "client-brotli" => Ok(Suite::ClientBrotli),
            "client-cairo" => Ok(Suite::ClientCairo),
            "client-pycares" => Ok(Suite::ClientPycares),
            other => bail!(
                "--suites: unknown suite {other:?} (known: {})",
                ALL_SUITES.map(Suite::name).join(", ")
            ),
        }
    }
}

/// A patched backend installed in a venv, ready for tests.
pub struct BuiltCell {
    pub dir: PathBuf,
    pub tree: PathBuf,
    pub python: PathBuf,
    pub site_packages: PathBuf,
}

pub fn cell_dir(step: u32, interp: &Interpreter) -> PathBuf {
    util::kit_target_dir().join("cells").join(format!("step{step}-py{}", interp.label()))
}

/// Debian packages that building the staticlib with a cargo feature needs: bindgen
/// (step 4's layout of `struct _cffi_externpy_s`) loads libclang at build time.
const FEATURE_BUILD_PACKAGES: &[(&str, &[&str])] = &[("callback-dispatch", &["libclang1"])];

/// The Debian packages that building the staticlib with `features` needs.
fn feature_build_packages(features: &[String]) -> Vec<&'static str> {
    FEATURE_BUILD_PACKAGES
        .iter()
        .filter(|(feature, _)| features.iter().any(|f| f == feature))
        .flat_map(|(_, packages)| packages.iter().copied())
        .collect()
}

pub fn ensure_feature_build_packages(features: &[String], log: &Path) -> Result<()> {
    util::ensure_debian_packages(&feature_build_packages(features), "build dependencies of the staticlib", log)
}

/// Builds the staticlib for `interp` with the features of `step`, against the cffi tree
/// `tree` (step 4 reads its `src/cffi/parse_c_type.h`); returns the archive.
pub fn build_staticlib(series: &Series, step: u32, interp: &Interpreter, tree: &Path, log: &Path) -> Result<PathBuf> {
    let target_dir = util::kit_target_dir().join("cargo").join(format!("py{}", interp.label()));
    let features = series.features_up_to(step);
    ensure_feature_build_packages(&features, log)?;
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(util::workspace_root())
        .args(["build", "--release", "--package", "cffi-ft", "--target-dir"])
        .arg(&target_dir)
        .env("PYO3_PYTHON", &interp.executable)
        .env("PYO3_BUILD_EXTENSION_MODULE", "1")
        .env("CFFI_FT_CFFI_HEADERS", tree.join("src").join("cffi"))
        // cargo passes these to build scripts of the xtask itself; keep them out
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    if interp.tsan {
        // the kit's locks tell ThreadSanitizer what they order (crates/tsan-sync)
        cmd.env("RUSTFLAGS", "--cfg cffi_ft_tsan");
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    Step { label: format!("[{}] cargo build cffi-ft (step {step})", interp.label()), cmd: &mut cmd, log, timeout: None }
        .run_ok()?;
    Ok(target_dir.join("release").join("libcffi_ft.a"))
}

/// Copies and patches the tree, builds the staticlib, creates the venv and installs
/// the patched cffi into it.
pub fn build_cell(plan: &Plan, step: u32, interp: &Interpreter) -> Result<BuiltCell> {
    let dir = cell_dir(step, interp);
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir)?;
    let log = dir.join("build.log");
    let label = interp.label();

    let tree = dir.join("cffi");
    util::copy_tree(&plan.upstream.tree, &tree, &[".git"])?;
    series::apply(&tree, &plan.series.up_to(step))?;

    let built = build_staticlib(&plan.series, step, interp, &tree, &log)?;
    let staticlib = dir.join("libcffi_ft.a");
    fs::copy(&built, &staticlib).with_context(|| format!("cargo built no {}", built.display()))?;

    let python = interp.create_venv(&dir.join("venv"), &label, &log)?;
    let requirements = util::workspace_root().join("compat-tests").join("requirements.txt");
    Step {
        label: format!("[{label}] pip install test requirements"),
        cmd: Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        log: &log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    Step {
        label: format!("[{label}] pip install patched cffi (step {step})"),
        cmd: Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", "--no-deps", "-v"])
            .arg(&tree)
            .env("CFFI_FT_STATICLIB", &staticlib)
            .env("CFFI_FT_SHIM_DIR", util::workspace_root().join("shim-c")),
        log: &log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    let site_packages = PathBuf::from(
        util::capture(Command::new(&python).args(["-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]))?
            .trim(),
    );
    fs::write(dir.join(CELL_STAMP), &plan.upstream.origin)?;
    Ok(BuiltCell { dir, tree, python, site_packages })
}

/// Written into a cell once its backend is installed; see [`reuse_or_build_cell`].
const CELL_STAMP: &str = "cell-built.json";

/// Files whose change makes a built cell stale.
fn cell_inputs(plan: &Plan) -> Vec<PathBuf> {
    let root = util::workspace_root();
    vec![
        root.join("shim-c"),
        root.join("crates"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
        root.join("compat-tests").join("requirements.txt"),
        plan.upstream.tree.clone(),
    ]
}

/// The cell for (step, interpreter), reused when it was built from the same upstream
/// source after the last change to any input (series, shim, crates, requirements);
/// built from scratch otherwise. Returns the cell and whether it was reused.
pub fn reuse_or_build_cell(plan: &Plan, step: u32, interp: &Interpreter) -> Result<(BuiltCell, bool)> {
    let dir = cell_dir(step, interp);
    let stamp = dir.join(CELL_STAMP);
    let fresh = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built > util::newest_mtime(&cell_inputs(plan)));
    let same_source = fs::read_to_string(&stamp).ok().as_deref() == Some(plan.upstream.origin.as_str());
    let python = dir.join("venv").join("bin").join("python");
    if fresh && same_source && python.exists() {
        if let Ok(site) = util::capture(Command::new(&python).args(["-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])) {
            let built = BuiltCell { tree: dir.join("cffi"), python, site_packages: PathBuf::from(site.trim()), dir };
            return Ok((built, true));
        }
    }
    Ok((build_cell(plan, step, interp)?, false))
}

/// `gil_enabled_after` from the file the suites' conftest writes at session end
/// (`$CFFI_FT_GIL_STATE_FILE`); None if the run did not get that far.
pub fn read_gil_state(path: &Path) -> Option<bool> {
    let text = fs::read_to_string(path).ok()?;
    let value = serde_json::from_str::<serde_json::Value>(&text).ok()?;
    value.get("gil_enabled_after")?.as_bool()
}

/// A cell of `suite` for (step, interpreter) with no test counts yet: what a failed
/// build and a tsan run both start from.
pub fn bare_cell(step: u32, interp: &Interpreter, suite: &str, parallel_threads: u32, outcome: &str, log: String) -> Cell {
    Cell {
        step,
        python: interp.version.clone(),
        free_threaded: interp.free_threaded,
        suite: suite.to_string(),
        parallel_threads,
        passed: 0,
        failed: 0,
        errors: 0,
        skipped: 0,
        xfailed: 0,
        gil_enabled_after: None,
        outcome: outcome.into(),
        detail: None,
        duration_s: 0,
        log,
        run_at: util::unix_now(),
        scenarios: None,
        backend: None,
        tsan: None,
    }
}

/// A cell for a (step, interpreter, suite) whose backend could not be built or run.
pub fn failed_cell(step: u32, interp: &Interpreter, suite: &str, parallel_threads: u32, err: &anyhow::Error) -> Cell {
    let log = cell_dir(step, interp).join("build.log").display().to_string();
    let mut cell = bare_cell(step, interp, suite, parallel_threads, "build failed", log);
    cell.detail = Some(format!("{err:#}").lines().next().unwrap_or("").to_string());
    cell
}

/// A failed cell for each suite of the plan, when the backend of (step, interpreter)
/// could not be built.
pub fn failed_build_cells(plan: &Plan, step: u32, interp: &Interpreter, err: &anyhow::Error) -> Vec<Cell> {
    plan.suites
        .iter()
        .map(|suite| failed_cell(step, interp, suite.name(), plan.parallel_threads, err))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_name_parses_back() {
        for suite in ALL_SUITES {
            assert_eq!(Suite::parse(suite.name()).unwrap(), suite);
        }
        let err = Suite::parse("client-zlib").unwrap_err().to_string();
        assert!(err.contains("upstream, build, client-xattr, client-brotli, client-cairo, client-pycares)"), "{err}");
    }

    #[test]
    fn the_default_suites_are_all_suites() {
        assert_eq!(DEFAULT_SUITES, ALL_SUITES.map(Suite::name).join(","));
    }

    #[test]
    fn the_build_suite_files_exist() {
        for file in build_suite_files() {
            assert!(file.is_file(), "{}", file.display());
        }
    }

    #[test]
    fn only_steps_with_bindgen_need_libclang() {
        let features = |list: &[&str]| list.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        assert!(feature_build_packages(&features(&[])).is_empty());
        assert!(feature_build_packages(&features(&["ctype-intern", "lib-registry"])).is_empty());
        assert_eq!(feature_build_packages(&features(&["lib-registry", "callback-dispatch"])), vec!["libclang1"]);
        // the real series: step 4 is the first whose features need it
        let series = Series::load("1.17.1").unwrap();
        assert!(feature_build_packages(&series.features_up_to(3)).is_empty());
        assert_eq!(feature_build_packages(&series.features_up_to(4)), vec!["libclang1"]);
    }

    #[test]
    fn only_the_cairo_suite_needs_system_packages() {
        for suite in ALL_SUITES {
            let expected: &[&str] = if suite == Suite::ClientCairo { &["libcairo2"] } else { &[] };
            assert_eq!(suite.system_packages(), expected, "{}", suite.name());
        }
    }
}
