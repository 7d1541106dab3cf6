//! One pytest suite in a built cell (cffi's own, the kit's build checks, a real client
//! built from its pinned sdist), turned into a report cell. Below the commands that run
//! suites: `test-upstream` (every suite, every step) and `tsan` (cffi's suite under
//! ThreadSanitizer).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cell::{self, read_gil_state, BuiltCell, Plan, Suite};
use crate::python::Interpreter;
use crate::report::{self, Cell};
use crate::util::{self, Step};

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
            cmd.args(cell::build_suite_files())
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
    for (k, v) in &plan.env {
        cmd.env(k, v);
    }

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
        backend: None,
        tsan: None,
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

#[cfg(test)]
mod tests {
    use super::*;

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

}
