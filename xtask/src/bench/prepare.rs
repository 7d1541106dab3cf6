//! Preparing a backend for measuring: its Python (the kit's cell through `cell`, or a
//! vanilla / 2.1.1 venv through `backends`), the probe of its `_cffi_backend` and the
//! modules the ops use.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::backends::{self, backend_command, BackendSpec, Probe};
use crate::cell::{self, Plan};
use crate::python::Interpreter;
use crate::util::{self, Step};

/// A backend ready to measure.
pub(super) struct Backend {
    pub(super) spec: BackendSpec,
    pub(super) python: PathBuf,
    pub(super) modules: PathBuf,
    pub(super) probe: Probe,
    pub(super) build: &'static str,
}

pub(super) fn bench_dir() -> PathBuf {
    util::kit_target_dir().join("bench")
}

pub(super) fn bench_script() -> PathBuf {
    util::workspace_root().join("compat-tests").join("bench").join("bench_ops.py")
}

/// The kit's cell for (step, interpreter), shared with test-upstream and stress.
fn ensure_kit(plan: &Plan, step: u32, interp: &Interpreter) -> Result<(PathBuf, &'static str)> {
    let (built, reused) = cell::reuse_or_build_cell(plan, step, interp)?;
    Ok((built.python, if reused { "reused" } else { "built" }))
}

/// Builds the modules the ops need (API-mode x2, out-of-line ABI) for one backend;
/// reused while bench_ops.py and the installed backend are unchanged.
fn ensure_modules(spec: &BackendSpec, python: &Path, probe: &Probe) -> Result<PathBuf> {
    let dir = bench_dir().join("modules").join(spec.id());
    let backend_mtime = fs::metadata(&probe.file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let inputs = format!(
        "{}\n{}\n{}\n{}\n",
        util::sha256_file(&bench_script())?,
        python.display(),
        probe.file,
        backend_mtime
    );
    let stamp = dir.join("inputs.txt");
    if dir.join("prepared.json").is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(inputs.as_str()) {
        return Ok(dir);
    }
    util::remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir)?;
    Step {
        label: format!("[{}] build the benchmark modules", spec.id()),
        cmd: backend_command(python, spec).arg(bench_script()).arg("--prepare").arg(&dir).current_dir(&dir),
        log: &dir.join("prepare.log"),
        timeout: Some(Duration::from_secs(600)),
    }
    .run_ok()?;
    fs::write(&stamp, inputs)?;
    Ok(dir)
}

pub(super) enum Source<'a> {
    Kit(&'a Plan, u32, &'a Interpreter),
    Pip(&'a Interpreter, &'a Path, &'a str),
}

pub(super) fn prepare_backend(spec: &BackendSpec, source: &Source) -> Result<Backend> {
    let (python, build) = match source {
        Source::Kit(plan, step, interp) => ensure_kit(plan, *step, interp)?,
        Source::Pip(interp, tree, sha) => {
            backends::ensure_pip_backend(&bench_dir(), spec, interp, tree, sha, &backends::build_requirements())?
        }
    };
    let probe = backends::probe(&python, spec).with_context(|| format!("{}: the backend does not import", spec.label()))?;
    let modules = ensure_modules(spec, &python, &probe)?;
    Ok(Backend { spec: spec.clone(), python, modules, probe, build })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::OPS;

    #[test]
    fn python_script_knows_every_op() {
        let script = fs::read_to_string(bench_script()).unwrap();
        for (name, _) in OPS {
            assert!(script.contains(&format!("\"{name}\": (op_")), "bench_ops.py lacks {name}");
        }
        // and the other way round: every op of the script can be selected
        for line in script.lines() {
            let Some(rest) = line.strip_prefix("    \"") else { continue };
            let Some((name, _)) = rest.split_once("\": (op_") else { continue };
            assert!(OPS.iter().any(|(n, _)| *n == name), "{name} of bench_ops.py is not in OPS");
        }
    }
}

