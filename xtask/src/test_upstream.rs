//! `cargo xtask test-upstream`: for each step and interpreter, build the patched
//! backend into its own venv and run cffi's own suite (plus the kit's build checks).
//!
//! Cell layout: `target/cffi-ft/cells/step<N>-py<label>/` holds the patched tree, the
//! staticlib, the venv, junit XML, the GIL state and one log per phase. It is rebuilt
//! from scratch each run, so a result never depends on an earlier run's leftovers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::python::Interpreter;
use crate::report::{self, Cell};
use crate::series::{self, Series};
use crate::upstream::Upstream;
use crate::util::{self, status, Step};

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

/// A real cffi client package, pinned by the sha256 of its PyPI sdist.
struct Client {
    package: &'static str,
    version: &'static str,
    sha256: &'static str,
    /// Its build backend when that is not in `compat-tests/requirements.txt` (the build
    /// runs without isolation, so the backend must be in the venv), pinned.
    build_requires: &'static [&'static str],
}

/// The client of the `client-xattr` suite.
const XATTR: Client = Client {
    package: "xattr",
    version: "1.3.0",
    sha256: "30439fabd7de0787b27e9a6e1d569c5959854cb322f64ce7380fedbfa5035036",
    build_requires: &[],
};

/// The client of the `client-brotli` suite.
const BROTLICFFI: Client = Client {
    package: "brotlicffi",
    version: "1.2.1.0",
    sha256: "5d0b89e959f643aab4c58c15c06e1e87b6f6605e5e88c3c1c28f5ce1c58c4e5f",
    build_requires: &[],
};

/// The client of the `client-cairo` suite. Its sdist builds with flit_core (`>=3.2,<4`).
const CAIROCFFI: Client = Client {
    package: "cairocffi",
    version: "1.7.1",
    sha256: "2e48ee864884ec4a3a34bfa8c9ab9999f688286eb714a15a43ec9d068c36557b",
    build_requires: &["flit_core==3.12.0"],
};

/// The client of the `client-pycares` suite.
const PYCARES: Client = Client {
    package: "pycares",
    version: "4.11.0",
    sha256: "c863d9003ca0ce7df26429007859afd2a621d3276ed9fef154a9123db9252557",
    build_requires: &[],
};

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

fn ensure_feature_build_packages(features: &[String], log: &Path) -> Result<()> {
    util::ensure_debian_packages(&feature_build_packages(features), "build dependencies of the staticlib", log)
}

/// `cargo test -p cffi-ft` with the features of the latest step (the unit tests that
/// only exist behind them, e.g. step 4's struct layout), against the upstream tree.
pub fn test_umbrella_features(plan: &Plan) -> Result<()> {
    let features = plan.series.features_up_to(plan.series.latest_step());
    let dir = util::kit_target_dir();
    fs::create_dir_all(&dir)?;
    let log = dir.join("umbrella-features.log");
    ensure_feature_build_packages(&features, &log)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(util::workspace_root())
        .args(["test", "--package", "cffi-ft", "--features"])
        .arg(features.join(","))
        .env("CFFI_FT_CFFI_HEADERS", plan.upstream.tree.join("src").join("cffi"));
    Step { label: "cargo test cffi-ft (every step's features)".into(), cmd: &mut cmd, log: &log, timeout: None }
        .run_ok()
}

/// Builds the staticlib for `interp` with the features of `step`, against the cffi tree
/// `tree` (step 4 reads its `src/cffi/parse_c_type.h`); returns the archive.
pub fn build_staticlib(series: &Series, step: u32, interp: &Interpreter, tree: &Path, log: &Path) -> Result<PathBuf> {
    let target_dir = util::kit_target_dir().join("cargo").join(format!("py{}", interp.label()));
    let features = series.features_up_to(step);
    ensure_feature_build_packages(&features, log)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(util::workspace_root())
        .args(["build", "--release", "--package", "cffi-ft", "--target-dir"])
        .arg(&target_dir)
        .env("PYO3_PYTHON", &interp.executable)
        .env("PYO3_BUILD_EXTENSION_MODULE", "1")
        .env("CFFI_FT_CFFI_HEADERS", tree.join("src").join("cffi"))
        // cargo passes these to build scripts of the xtask itself; keep them out
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
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

    let venv = dir.join("venv");
    Step {
        label: format!("[{label}] venv"),
        cmd: Command::new(&interp.executable).arg("-m").arg("venv").arg(&venv),
        log: &log,
        timeout: Some(Duration::from_secs(300)),
    }
    .run_ok()?;
    let python = venv.join("bin").join("python");
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

/// Runs one pytest suite in a built cell and turns the outcome into a cell.
pub fn run_suite(plan: &Plan, step: u32, interp: &Interpreter, built: &BuiltCell, suite: Suite) -> Result<Cell> {
    let name = suite.name();
    let junit = built.dir.join(format!("{name}.xml"));
    let gil_file = built.dir.join(format!("{name}-gil.json"));
    let log = built.dir.join(format!("{name}.log"));
    let tmp = built.dir.join(format!("tmp-{name}"));
    fs::create_dir_all(&tmp)?;
    let _ = fs::remove_file(&junit);
    let _ = fs::remove_file(&gil_file);

    let mut cmd = Command::new(&built.python);
    cmd.args(["-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "--timeout=900"])
        .arg(format!("--junitxml={}", junit.display()));
    // Embedded interpreters (testing/embedding) start from the base prefix; let them
    // find the patched cffi of this venv.
    let mut pythonpath = vec![built.site_packages.clone()];
    match suite {
        Suite::Upstream => {
            cmd.args(["src/c/test_c.py", "testing"]).current_dir(&built.tree);
        }
        Suite::ClientXattr => {
            let client = install_client(built, &XATTR, &log)?;
            let tests = util::workspace_root().join("compat-tests");
            cmd.arg(client.join("tests"))
                .arg(tests.join("test_client_xattr.py"))
                .arg(format!("--rootdir={}", tests.display()))
                .current_dir(&tmp);
        }
        Suite::ClientBrotli => {
            install_client(built, &BROTLICFFI, &log)?;
            let tests = util::workspace_root().join("compat-tests");
            cmd.arg(tests.join("test_client_brotli.py"))
                .arg(format!("--rootdir={}", tests.display()))
                .current_dir(&tmp);
        }
        Suite::ClientCairo => {
            install_client(built, &CAIROCFFI, &log)?;
            // cairocffi's tests live in the package: run the installed copy (the sdist's
            // would shadow it on sys.path). The plugin lets them run without pikepdf,
            // numpy or gdk-pixbuf (see its docstring).
            let installed = built.site_packages.join("cairocffi");
            with_client_tests(&mut cmd, &mut pythonpath, "client_cairo_plugin", "test_client_cairo.py", &installed);
            cmd.current_dir(&tmp);
        }
        Suite::ClientPycares => {
            let client = install_client(built, &PYCARES, &log)?;
            // The plugin runs those of pycares's tests that need no DNS (see its docstring).
            let theirs = client.join("tests").join("test_all.py");
            with_client_tests(&mut cmd, &mut pythonpath, "client_pycares_plugin", "test_client_pycares.py", &theirs);
            cmd.current_dir(&tmp);
        }
        Suite::Build => {
            let tests = util::workspace_root().join("compat-tests");
            cmd.arg(tests.join("test_build.py"))
                .arg(tests.join("test_unique_cache.py"))
                .arg(tests.join("test_lib_registry.py"))
                .arg(format!("--rootdir={}", tests.display()))
                .current_dir(&tmp);
        }
    }
    if plan.parallel_threads > 1 {
        cmd.arg(format!("--parallel-threads={}", plan.parallel_threads));
    }
    cmd.args(&plan.pytest_args)
        // The point of the run is to see whether the GIL stays off by itself.
        .env_remove("PYTHON_GIL")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONFAULTHANDLER", "1")
        .env("PYTHONPATH", std::env::join_paths(&pythonpath)?)
        .env("CFFI_FT_GIL_STATE_FILE", &gil_file)
        .env("CFFI_FT_EXPECT_STEP", step.to_string())
        .env("TMPDIR", &tmp);

    let started = Instant::now();
    let finished = Step {
        label: format!("[{}] step {step}: {name} suite", interp.label()),
        cmd: &mut cmd,
        log: &log,
        timeout: Some(plan.suite_timeout),
    }
    .run()?;
    let counts = fs::read_to_string(&junit).ok().and_then(|x| report::parse_junit(&x).ok());
    let gil_enabled_after = read_gil_state(&gil_file);
    let code = finished.status.code();
    let (outcome, detail) = match (&counts, code) {
        _ if finished.timed_out => ("timed out".to_string(), Some(format!("no result after {}s; last test: {}", plan.suite_timeout.as_secs(), last_test_in_log(&log)))),
        (Some(_), Some(0)) => ("ok".to_string(), None),
        (Some(_), Some(1)) => ("failed".to_string(), None),
        (_, None) => (
            "crashed".to_string(),
            Some(format!("pytest {}; last test: {}", finished.describe(), last_test_in_log(&log))),
        ),
        (_, Some(c)) => ("failed".to_string(), Some(format!("pytest exit code {c} (see {})", log.display()))),
    };
    let counts = counts.unwrap_or_default();
    Ok(Cell {
        step,
        python: interp.version.clone(),
        free_threaded: interp.free_threaded,
        suite: name.to_string(),
        parallel_threads: plan.parallel_threads,
        passed: counts.passed,
        failed: counts.failed,
        errors: counts.errors,
        skipped: counts.skipped,
        xfailed: counts.xfailed,
        gil_enabled_after,
        outcome,
        detail,
        duration_s: started.elapsed().as_secs(),
        log: log.display().to_string(),
        run_at: util::unix_now(),
        scenarios: None,
    })
}

/// Adds to a client suite's pytest `compat-tests/<ours>`, the client's own tests
/// (`theirs`) and `-p <plugin>`, a plugin in compat-tests (found through PYTHONPATH) that
/// says which of theirs can run in a cell and skips the others with the reason. pytest
/// garbles the node ids of files outside its rootdir, so the rootdir holds both.
fn with_client_tests(cmd: &mut Command, pythonpath: &mut Vec<PathBuf>, plugin: &str, ours: &str, theirs: &Path) {
    let tests = util::workspace_root().join("compat-tests");
    pythonpath.push(tests.clone());
    cmd.args(["-p", plugin, "-rfEs"]) // -rfEs: the reasons of the skips in the log
        .arg(tests.join(ours))
        .arg(theirs)
        .arg(format!("--rootdir={}", common_ancestor(&tests, theirs).display()));
}

/// The deepest folder that holds both `a` and `b` (absolute paths).
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.ancestors().find(|dir| b.starts_with(dir)).unwrap_or(Path::new("/")).to_path_buf()
}

/// Builds `client` from its pinned sdist into the cell's venv, against the patched
/// cffi installed there (`--no-build-isolation`, so pip cannot pull another cffi).
/// Returns the cell's copy of the source tree (for suites that run its `tests/`).
fn install_client(built: &BuiltCell, client: &Client, log: &Path) -> Result<PathBuf> {
    let Client { package, version, sha256, build_requires } = *client;
    let pristine =
        crate::upstream::fetch_pinned_package_sdist(package, version, sha256, &util::kit_target_dir().join("clients"))?;
    let tree = built.dir.join(format!("{package}-{version}"));
    util::remove_dir_if_exists(&tree)?;
    util::copy_tree(&pristine, &tree, &[])?;
    if !build_requires.is_empty() {
        Step {
            label: format!("pip install the build backend of {package} ({})", build_requires.join(" ")),
            cmd: Command::new(&built.python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-deps"])
                .args(build_requires),
            log,
            timeout: Some(Duration::from_secs(900)),
        }
        .run_ok()?;
    }
    Step {
        label: format!("pip install {package} {version} (against this cell's cffi)"),
        cmd: Command::new(&built.python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", "--no-deps", "-v"])
            .arg(&tree),
        log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    Ok(tree)
}

/// `gil_enabled_after` from the file the suites' conftest writes at session end
/// (`$CFFI_FT_GIL_STATE_FILE`); None if the run did not get that far.
pub fn read_gil_state(path: &Path) -> Option<bool> {
    let text = fs::read_to_string(path).ok()?;
    let value = serde_json::from_str::<serde_json::Value>(&text).ok()?;
    value.get("gil_enabled_after")?.as_bool()
}

/// The node id of the last test pytest -v announced, for crash reports.
fn last_test_in_log(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|l| {
            let first = l.split_whitespace().next()?;
            first.contains("::").then(|| first.to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// A cell for a (step, interpreter, suite) whose backend could not be built or run.
pub fn failed_cell(step: u32, interp: &Interpreter, suite: &str, parallel_threads: u32, err: &anyhow::Error) -> Cell {
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
        outcome: "build failed".into(),
        detail: Some(format!("{err:#}").lines().next().unwrap_or("").to_string()),
        duration_s: 0,
        log: cell_dir(step, interp).join("build.log").display().to_string(),
        run_at: util::unix_now(),
        scenarios: None,
    }
}

fn failed_build_cells(plan: &Plan, step: u32, interp: &Interpreter, err: &anyhow::Error) -> Vec<Cell> {
    plan.suites
        .iter()
        .map(|suite| failed_cell(step, interp, suite.name(), plan.parallel_threads, err))
        .collect()
}

/// All steps for one interpreter, in order.
fn run_interpreter(plan: &Plan, interp: &Interpreter) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &step in &plan.steps {
        match build_cell(plan, step, interp) {
            Err(err) => {
                util::warn(format!("[{}] step {step}: {err:#}", interp.label()));
                cells.extend(failed_build_cells(plan, step, interp, &err));
            }
            Ok(built) => {
                for &suite in &plan.suites {
                    match run_suite(plan, step, interp, &built, suite) {
                        Ok(cell) => cells.push(cell),
                        Err(err) => {
                            util::warn(format!("[{}] step {step} {}: {err:#}", interp.label(), suite.name()));
                            let mut failed = failed_build_cells(plan, step, interp, &err);
                            failed.retain(|c| c.suite == suite.name());
                            cells.extend(failed);
                        }
                    }
                }
            }
        }
    }
    cells
}

/// Runs the plan (interpreters in parallel, up to `jobs` at a time), writes the
/// report and prints the matrix. Returns whether every cell is good.
pub fn run(plan: &Plan) -> Result<bool> {
    status(format!(
        "test-upstream: cffi {} from {}; steps {:?}; interpreters {}; suites {}{}",
        plan.upstream.version,
        plan.upstream.origin,
        plan.steps,
        plan.interpreters.iter().map(Interpreter::label).collect::<Vec<_>>().join(", "),
        plan.suites.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        if plan.parallel_threads > 1 { format!("; pytest-run-parallel × {}", plan.parallel_threads) } else { String::new() }
    ));
    let mut packages: Vec<&str> = plan.suites.iter().flat_map(|s| s.system_packages().iter().copied()).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() {
        let needing: Vec<&str> =
            plan.suites.iter().filter(|s| !s.system_packages().is_empty()).map(|s| s.name()).collect();
        let what = format!("Debian packages for --suites {}", needing.join(","));
        if util::has_dpkg() {
            let log = util::kit_target_dir().join("logs").join("system-packages.log");
            util::ensure_debian_packages(&packages, &what, &log)?;
        } else {
            util::warn(format!("no dpkg here: not checking the {what} ({}); install their equivalents", packages.join(" ")));
        }
    }
    let mut cells = Vec::new();
    for chunk in plan.interpreters.chunks(plan.jobs.max(1)) {
        let results: Vec<Vec<Cell>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                chunk.iter().map(|interp| scope.spawn(move || run_interpreter(plan, interp))).collect();
            handles.into_iter().map(|h| h.join().expect("cell runner panicked")).collect()
        });
        cells.extend(results.into_iter().flatten());
    }
    cells.sort_by_key(|c| c.key());
    report::merge_and_write(&plan.upstream.version, &cells)?;
    let (json, md) = report::report_paths();
    println!("\n{}", report::render_matrix(&cells));
    println!("report: {} and {}", md.display(), json.display());
    let bad: Vec<&Cell> = cells.iter().filter(|c| c.is_bad()).collect();
    for c in &bad {
        eprintln!(
            "FAILED cell: step {} / {} / {}: {} (log: {})",
            c.step,
            c.column(),
            c.suite,
            c.detail.clone().unwrap_or_else(|| format!(
                "{} failed, {} errors, GIL after: {:?}",
                c.failed, c.errors, c.gil_enabled_after
            )),
            c.log
        );
    }
    Ok(bad.is_empty())
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
    fn common_ancestor_of_two_trees() {
        let root = Path::new("/work/kit");
        let site = root.join("target/cffi-ft/cells/step2-py3.13.5t/venv/lib/python3.13t/site-packages/cairocffi");
        assert_eq!(common_ancestor(&root.join("compat-tests"), &site), root);
        assert_eq!(common_ancestor(&site, &root.join("compat-tests")), root);
        assert_eq!(common_ancestor(root, &site), root);
        assert_eq!(common_ancestor(Path::new("/a/b"), Path::new("/c")), Path::new("/"));
    }

    #[test]
    fn client_tests_run_beside_ours_under_one_rootdir() {
        let tests = util::workspace_root().join("compat-tests");
        let theirs = util::workspace_root().join("target/cffi-ft/cells/step4-py3.13.5t/pycares-4.11.0/tests/test_all.py");
        let mut cmd = Command::new("python");
        let mut pythonpath = vec![PathBuf::from("/site")];
        with_client_tests(&mut cmd, &mut pythonpath, "client_pycares_plugin", "test_client_pycares.py", &theirs);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let expected = [
            "-p".to_string(),
            "client_pycares_plugin".to_string(),
            "-rfEs".to_string(),
            tests.join("test_client_pycares.py").display().to_string(),
            theirs.display().to_string(),
            format!("--rootdir={}", util::workspace_root().display()),
        ];
        assert_eq!(args, expected);
        assert_eq!(pythonpath, [PathBuf::from("/site"), tests]);
    }

    #[test]
    fn the_default_suites_are_all_suites() {
        assert_eq!(DEFAULT_SUITES, ALL_SUITES.map(Suite::name).join(","));
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
