//! The comparison backends: vanilla cffi 1.17.1 (unpatched; on 3.13t run with
//! `PYTHON_GIL=0`: unsafe, the floor) and upstream cffi 2.1.1 (on 3.13t built by removing
//! its refusal: forced, unsupported), each installed from its pristine sdist into its own
//! venv, beside the kit's cells (`cell`). The bench measures against them and the stress
//! suite runs in them (each in its own folder: `target/cffi-ft/bench/`, `compare/`);
//! nothing here knows a command.
//!
//! A backend is a `Family` on one interpreter (`BackendSpec`); `backend_command` runs its
//! Python with the environment the backend needs, `probe` says what `_cffi_backend` it
//! imports, `ensure_pip_backend` builds (or reuses, by its stamp) a vanilla or 2.1.1 venv.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::python::Interpreter;
use crate::upstream;
use crate::util::{self, Step};

/// The cffi the kit patches, and the vanilla baseline.
pub const KIT_CFFI: &str = "1.17.1";
/// The newest upstream cffi, the thread-safe reference (supports 3.14t, refuses 3.13t).
pub const UPSTREAM_VERSION: &str = "2.1.1";
/// sha256 of cffi-2.1.1.tar.gz, checked against PyPI's simple index.
pub const UPSTREAM_SHA256: &str = "dd31f52ea1086513bb9df30f8fcee9b8918323ae067a3d5b78bc826a000712be";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    Kit(u32),
    Vanilla,
    Upstream,
}

impl Family {
    /// "kit-step0", "vanilla-1.17.1", "upstream-2.1.1": the `backend` of bench.json.
    pub fn name(self) -> String {
        match self {
            Family::Kit(step) => format!("kit-step{step}"),
            Family::Vanilla => format!("vanilla-{KIT_CFFI}"),
            Family::Upstream => format!("upstream-{UPSTREAM_VERSION}"),
        }
    }
}

/// One column of the results: a family on one interpreter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub family: Family,
    /// "3.13.5"
    pub python: String,
    pub free_threaded: bool,
}

impl BackendSpec {
    pub fn py_label(&self) -> String {
        format!("{}{}", self.python, if self.free_threaded { "t" } else { "" })
    }

    /// Directory name: "kit-step0-py3.13.5t".
    pub fn id(&self) -> String {
        format!("{}-py{}", self.family.name(), self.py_label())
    }

    /// Vanilla 1.17.1 on a free-threaded build: GIL forced off, not thread-safe.
    pub fn unsafe_gil_off(&self) -> bool {
        self.family == Family::Vanilla && self.free_threaded
    }

    /// 2.1.1 on free-threaded 3.13: built against upstream's refusal.
    pub fn forced(&self) -> bool {
        self.family == Family::Upstream && self.free_threaded
    }

    pub fn marker(&self) -> &'static str {
        if self.unsafe_gil_off() {
            "*"
        } else if self.forced() {
            "!"
        } else {
            ""
        }
    }

    /// "kit-step1 3.13.5t", "vanilla-1.17.1 3.13.5t*": the label without the notes.
    pub fn label_short(&self) -> String {
        format!("{} {}{}", self.family.name(), self.py_label(), self.marker())
    }

    pub fn label(&self) -> String {
        let note = if self.unsafe_gil_off() {
            " (PYTHON_GIL=0, unsafe)"
        } else if self.forced() {
            " (forced, unsupported upstream)"
        } else {
            ""
        };
        format!("{} {}{note}", self.family.name(), self.py_label())
    }

    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if self.unsafe_gil_off() {
            env.insert("PYTHON_GIL".to_string(), "0".to_string());
        }
        env
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Probe {
    pub file: String,
    pub version: String,
    pub kit: Option<serde_json::Value>,
    pub gil_enabled: Option<bool>,
}

const PROBE: &str = "import json, sys, _cffi_backend as B\n\
print(json.dumps({'file': B.__file__, 'version': B.__version__, \
'kit': getattr(B, '__cffi_ft__', None), 'gil_enabled': sys._is_gil_enabled()}))";

/// The backend's Python, with `PYTHON_GIL` as the backend needs it (removed, or 0 for
/// vanilla on a free-threaded build) and no .pyc files written.
pub fn backend_command(python: &Path, spec: &BackendSpec) -> Command {
    let mut cmd = Command::new(python);
    cmd.env_remove("PYTHON_GIL").env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in spec.env() {
        cmd.env(k, v);
    }
    cmd
}

/// What `_cffi_backend` the backend's Python imports, and the GIL state after it.
pub fn probe(python: &Path, spec: &BackendSpec) -> Result<Probe> {
    let out = util::capture(backend_command(python, spec).args(["-c", PROBE]))?;
    let line = out.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{}: unreadable probe output {line:?}", python.display()))
}
/// cffi 2.x refuses free-threaded 3.13 in setup.py; drop that `if` block (forced build).
pub fn remove_ft_refusal(setup_py: &str) -> Result<String> {
    let lines: Vec<&str> = setup_py.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("if FREE_THREADED_BUILD") && l.contains("(3, 14)"))
        .context("setup.py: cannot find the free-threaded 3.13 refusal to remove")?;
    let mut end = start + 1;
    while end < lines.len() && (lines[end].starts_with(' ') || lines[end].starts_with('\t')) {
        end += 1;
    }
    if !lines[start + 1..end].iter().any(|l| l.contains("raise")) {
        bail!("setup.py: the free-threaded check at line {} raises nothing; not removing it", start + 1);
    }
    let mut out: Vec<String> = lines[..start].iter().map(|s| s.to_string()).collect();
    out.push("# cffi-ft: the refusal of free-threaded 3.13 was removed here (forced, unsupported upstream)".into());
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    Ok(out.join("\n") + "\n")
}

/// A comparison backend's pristine source: the unpacked sdist and its sha256.
pub struct PipSource {
    pub tree: PathBuf,
    pub sha256: String,
}

/// The pristine cffi 1.17.1 sdist (the one the kit patches), for vanilla.
pub fn vanilla_source() -> Result<PipSource> {
    let up = upstream::fetch_sdist(KIT_CFFI)?;
    let sha256 = fs::read_to_string(up.tree.join(".cffi-ft-sdist-sha256")).unwrap_or_default().trim().to_string();
    Ok(PipSource { tree: up.tree, sha256 })
}

/// The cffi 2.1.1 sdist (sha256-pinned), unpacked beside 1.17.1's in target/cffi-ft/upstream/.
pub fn upstream_source() -> Result<PipSource> {
    let tree = upstream::fetch_pinned_sdist(UPSTREAM_VERSION, UPSTREAM_SHA256, &util::kit_target_dir().join("upstream"))?;
    Ok(PipSource { tree, sha256: UPSTREAM_SHA256.to_string() })
}

/// Which of kit, vanilla and upstream a `--backends` list names (bench and stress).
pub fn select_families(spec: &str) -> Result<(bool, bool, bool)> {
    let (mut kit, mut vanilla, mut up) = (false, false, false);
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match part {
            "kit" => kit = true,
            "vanilla" => vanilla = true,
            "upstream" => up = true,
            other => bail!("--backends: unknown backend {other:?} (known: kit, vanilla, upstream)"),
        }
    }
    if !(kit || vanilla || up) {
        bail!("--backends: no backend selected");
    }
    Ok((kit, vanilla, up))
}

/// Every line of compat-tests/requirements.txt (pytest and its plugins, pycparser,
/// setuptools): what a venv that runs the kit's Python tests needs, as the cells have.
pub fn test_requirements() -> Result<Vec<String>> {
    let path = util::workspace_root().join("compat-tests").join("requirements.txt");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The build requirements of the vanilla and 2.1.1 venvs, pinned like the kit's cells.
pub fn build_requirements() -> Vec<String> {
    let text = fs::read_to_string(util::workspace_root().join("compat-tests").join("requirements.txt")).unwrap_or_default();
    let mut out = Vec::new();
    for (name, fallback) in [("setuptools", "setuptools"), ("pycparser", "pycparser<3")] {
        let pinned = text.lines().map(str::trim).find(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['=', '<', '>', '~', '!']))
        });
        out.push(pinned.unwrap_or(fallback).to_string());
    }
    out
}

#[derive(Serialize, Deserialize, PartialEq)]
struct PipStamp {
    backend: String,
    sdist_sha256: String,
    interpreter: PathBuf,
    interpreter_version: String,
    free_threaded: bool,
    forced: bool,
    requirements: Vec<String>,
}

/// vanilla 1.17.1 or upstream 2.1.1 installed from a scratch copy of its pristine tree
/// into its own venv `<root>/<spec id>/`, with `requirements` installed first (the build
/// needs setuptools and pycparser; a venv that runs tests needs pytest too); reused when
/// the stamp (backend, sdist, interpreter, requirements) matches.
pub fn ensure_pip_backend(
    root: &Path,
    spec: &BackendSpec,
    interp: &Interpreter,
    tree: &Path,
    sha: &str,
    requirements: &[String],
) -> Result<(PathBuf, &'static str)> {
    let dir = root.join(spec.id());
    let python = dir.join("venv").join("bin").join("python");
    let stamp_file = dir.join("cffi-ft-bench-stamp.json");
    let want = PipStamp {
        backend: spec.family.name(),
        sdist_sha256: sha.to_string(),
        interpreter: interp.executable.clone(),
        interpreter_version: interp.version.clone(),
        free_threaded: interp.free_threaded,
        forced: spec.forced(),
        requirements: requirements.to_vec(),
    };
    let have: Option<PipStamp> = fs::read_to_string(&stamp_file).ok().and_then(|t| serde_json::from_str(&t).ok());
    if have.as_ref() == Some(&want) && python.exists() {
        return Ok((python, "reused"));
    }
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir)?;
    let log = dir.join("build.log");
    let src = dir.join("src");
    util::copy_tree(tree, &src, &[".git"])?;
    if spec.forced() {
        let setup = src.join("setup.py");
        let patched = remove_ft_refusal(&fs::read_to_string(&setup)?)?;
        fs::write(&setup, patched)?;
    }
    let tag = spec.id();
    interp.create_venv(&dir.join("venv"), &tag, &log)?;
    Step {
        label: format!("[{tag}] pip install {}", want.requirements.join(" ")),
        cmd: Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(&want.requirements),
        log: &log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    Step {
        label: format!("[{tag}] pip install cffi{}", if spec.forced() { " (refusal removed)" } else { "" }),
        cmd: Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", "--no-deps", "-v"])
            .arg(&src)
            .env_remove("PYTHON_GIL"),
        log: &log,
        timeout: Some(Duration::from_secs(900)),
    }
    .run_ok()?;
    util::write_atomic(&stamp_file, serde_json::to_string_pretty(&want)?.as_bytes())?;
    Ok((python, "built"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(family: Family, t: bool) -> BackendSpec {
        BackendSpec { family, python: "3.13.5".into(), free_threaded: t }
    }

    #[test]
    fn refusal_is_removed_and_nothing_else() {
        let setup = "import sys\nFREE_THREADED_BUILD = True\n\nif FREE_THREADED_BUILD and sys.version_info < (3, 14):\n    raise RuntimeError(\"no \"\n                       \"3.13t\")\n\ndef f():\n    pass\n";
        let out = remove_ft_refusal(setup).unwrap();
        assert!(!out.contains("raise") && out.contains("forced, unsupported upstream"), "{out}");
        assert!(out.contains("FREE_THREADED_BUILD = True\n\n# cffi-ft") && out.contains("\n\ndef f():\n    pass\n"), "{out}");
        assert!(remove_ft_refusal("print(1)\n").is_err());
    }

    #[test]
    fn backends_lists_parse() {
        assert_eq!(select_families("kit,upstream").unwrap(), (true, false, true));
        assert_eq!(select_families(" vanilla ,kit").unwrap(), (true, true, false));
        assert!(select_families("kit,pypy").unwrap_err().to_string().contains("unknown backend \"pypy\""));
        assert!(select_families(",").is_err());
    }

    #[test]
    fn test_venvs_get_every_requirement_and_build_venvs_the_build_ones() {
        let all = test_requirements().unwrap();
        assert!(all.iter().any(|r| r.starts_with("pytest==")) && all.iter().any(|r| r.starts_with("pytest-timeout")), "{all:?}");
        for r in build_requirements() {
            assert!(all.contains(&r), "{r} of the build requirements is not pinned in requirements.txt");
        }
    }

    #[test]
    fn labels_mark_unsafe_and_forced() {
        assert_eq!(spec(Family::Vanilla, true).label(), "vanilla-1.17.1 3.13.5t (PYTHON_GIL=0, unsafe)");
        assert_eq!(spec(Family::Upstream, true).label(), "upstream-2.1.1 3.13.5t (forced, unsupported upstream)");
        assert_eq!(spec(Family::Kit(2), false).id(), "kit-step2-py3.13.5");
        assert_eq!(spec(Family::Vanilla, true).env().get("PYTHON_GIL").map(String::as_str), Some("0"));
        assert!(spec(Family::Kit(0), true).env().is_empty());
    }
}

