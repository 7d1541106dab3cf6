//! `cargo xtask bench`: thread safety must not be bought with speed. The same Python
//! micro-benchmarks (`compat-tests/bench/bench_ops.py`) run against every backend in one
//! run, interleaved round-robin, so machine noise hits all of them alike:
//!
//! - the kit at each selected step (the cells of `test-upstream`, reused when fresh),
//! - vanilla cffi 1.17.1, unpatched (on 3.13t with `PYTHON_GIL=0`: unsafe, the floor),
//! - upstream cffi 2.1.1 (on 3.13t built by removing its refusal: forced, unsupported),
//!
//! each on 3.13 and 3.13t. Absolute times on shared machines are noise; the ratios taken
//! within one run are what count. Writes `target/cffi-ft/bench.{json,svg}`.
//!
//! Layout: `target/cffi-ft/bench/<backend>-py<label>/` (venv, source copy, build.log and
//! a stamp for vanilla and 2.1.1), `bench/modules/<backend>-py<label>/` (the API-mode and
//! ABI modules the ops use), `bench/logs/` (stderr of failed runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::python::{self, Interpreter};
use crate::series::Series;
use crate::test_upstream::{self, Plan, Suite};
use crate::upstream;
use crate::util::{self, status, warn, Finished, Step};

/// The cffi the kit patches, and the vanilla baseline.
const KIT_CFFI: &str = "1.17.1";
/// The newest upstream cffi, the thread-safe reference (supports 3.14t, refuses 3.13t).
const UPSTREAM_VERSION: &str = "2.1.1";
/// sha256 of cffi-2.1.1.tar.gz, checked against PyPI's simple index.
const UPSTREAM_SHA256: &str = "dd31f52ea1086513bb9df30f8fcee9b8918323ae067a3d5b78bc826a000712be";

/// The operations of bench_ops.py, in table order, with what each measures.
pub const OPS: &[(&str, &str)] = &[
    ("typeof_hit", "ffi.typeof(\"struct point *\"), already cached"),
    ("new_pointer_type", "_cffi_backend.new_pointer_type(t), equal type exists (unique cache)"),
    ("new_array_type", "_cffi_backend.new_array_type(p, n), equal type exists (unique cache)"),
    ("new_function_type", "_cffi_backend.new_function_type((a, b), r), equal type exists"),
    ("new_array_type_churn", "_cffi_backend.new_array_type(p, n) whose result dies at once (miss + removal)"),
    ("new_array", "ffi.new(\"int[16]\")"),
    ("new_struct", "ffi.new(\"struct point *\")"),
    ("cast", "ffi.cast(\"long\", 12345)"),
    ("struct_first", "fresh FFI from an out-of-line ABI module + first realization of a struct"),
    ("lib_attr", "lib.bench_add attribute access (API mode)"),
    ("api_call", "call of an API-mode C function"),
    ("dlopen_call", "ffi.dlopen(None).abs(-5), libc in ABI mode"),
    ("callback_from_c", "ffi.callback called from C"),
    ("extern_python", "extern \"Python\" function called from C"),
    ("gc", "ffi.gc(p, C destructor) + its collection"),
];

const MODES: &str = "single,own2,shared2";

#[derive(Args)]
#[command(after_help = "\
Each round runs every op once in every backend (backend order rotates per round); one run
is a fresh process measuring three modes: `single` (ns/op: median of ~1 ms batches),
`own2` (2 threads, each on its own FFI/module/ctypes) and `shared2` (2 threads, same
objects). Reported: ns_per_op = min over rounds (ns_median too), scale2_own/_shared = the
median over rounds of 2-thread throughput / 1-thread throughput. On GIL builds scaling is
expected at or below 1.

Backends: kit-stepN (the test-upstream cells, reused when newer than their inputs),
vanilla-1.17.1 (unpatched; on 3.13t run with PYTHON_GIL=0: unsafe, the speed floor) and
upstream-2.1.1 (its sdist, sha256-pinned; on 3.13t its setup.py refusal is removed:
forced, unsupported upstream). Their venvs live in target/cffi-ft/bench/ and are reused.

Output: the tables on stdout, target/cffi-ft/bench.json and target/cffi-ft/bench.svg.
Exit status: 0 measured; 1 a kit backend failed to build or gave no single-thread number
for some op; 2 bad input. Errors and crashes in 2-thread runs are reported, not fatal
(step 0 keeps the hazards). Run it on an idle machine: a load average above half the CPU
count gets a warning.")]
pub struct BenchArgs {
    /// Kit steps to measure: comma-separated numbers, `latest` or `all` (default: all).
    #[arg(long, value_name = "LIST")]
    steps: Option<String>,
    /// Interpreters to use instead of the default CPython 3.13.5 GIL and free-threaded
    /// builds (repeatable).
    #[arg(long = "python", value_name = "PATH")]
    pythons: Vec<PathBuf>,
    /// A short run: 3 rounds of 0.15 s per mode (step 0, both interpreters, all backends:
    /// a few minutes once built) instead of 5 rounds of 0.5 s.
    #[arg(long)]
    quick: bool,
    /// Rounds over all backends (default: 5, with --quick 3).
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// Measuring time per mode and run, in seconds (default: 0.5, with --quick 0.15).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Operations, comma-separated (default: all): typeof_hit, new_pointer_type,
    /// new_array_type, new_function_type, new_array_type_churn, new_array, new_struct,
    /// cast, struct_first, lib_attr, api_call, dlopen_call, callback_from_c,
    /// extern_python, gc.
    #[arg(long, value_name = "LIST")]
    ops: Option<String>,
    /// Backends, comma-separated: kit, vanilla, upstream.
    #[arg(long, value_name = "LIST", default_value = "kit,vanilla,upstream")]
    backends: String,
    /// Backends built at the same time (default: 2, at most the CPU count).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// Backends

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

    fn short(self) -> String {
        match self {
            Family::Kit(step) => format!("kit{step}"),
            Family::Vanilla => "vanilla".into(),
            Family::Upstream => UPSTREAM_VERSION.into(),
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
    fn py_label(&self) -> String {
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

    fn marker(&self) -> &'static str {
        if self.unsafe_gil_off() {
            "*"
        } else if self.forced() {
            "!"
        } else {
            ""
        }
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

    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if self.unsafe_gil_off() {
            env.insert("PYTHON_GIL".to_string(), "0".to_string());
        }
        env
    }
}

/// A backend ready to measure.
struct Backend {
    spec: BackendSpec,
    python: PathBuf,
    modules: PathBuf,
    probe: Probe,
    build: &'static str,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Probe {
    file: String,
    version: String,
    kit: Option<serde_json::Value>,
    gil_enabled: Option<bool>,
}

const PROBE: &str = "import json, sys, _cffi_backend as B\n\
print(json.dumps({'file': B.__file__, 'version': B.__version__, \
'kit': getattr(B, '__cffi_ft__', None), 'gil_enabled': sys._is_gil_enabled()}))";

fn backend_command(python: &Path, spec: &BackendSpec) -> Command {
    let mut cmd = Command::new(python);
    cmd.env_remove("PYTHON_GIL").env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in spec.env() {
        cmd.env(k, v);
    }
    cmd
}

fn probe(python: &Path, spec: &BackendSpec) -> Result<Probe> {
    let out = util::capture(backend_command(python, spec).args(["-c", PROBE]))?;
    let line = out.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{}: unreadable probe output {line:?}", python.display()))
}

fn bench_dir() -> PathBuf {
    util::kit_target_dir().join("bench")
}

fn bench_script() -> PathBuf {
    util::workspace_root().join("compat-tests").join("bench").join("bench_ops.py")
}

/// The kit's cell for (step, interpreter), shared with test-upstream and stress.
fn ensure_kit(plan: &Plan, step: u32, interp: &Interpreter) -> Result<(PathBuf, &'static str)> {
    let (built, reused) = test_upstream::reuse_or_build_cell(plan, step, interp)?;
    Ok((built.python, if reused { "reused" } else { "built" }))
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
    out.push("# cffi-ft bench: the refusal of free-threaded 3.13 was removed here (forced, unsupported upstream)".into());
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    Ok(out.join("\n") + "\n")
}

/// The build requirements of the vanilla and 2.1.1 venvs, pinned like the kit's cells.
fn build_requirements() -> Vec<String> {
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
/// into its own venv; reused when the stamp matches.
fn ensure_pip_backend(spec: &BackendSpec, interp: &Interpreter, tree: &Path, sha: &str) -> Result<(PathBuf, &'static str)> {
    let dir = bench_dir().join(spec.id());
    let python = dir.join("venv").join("bin").join("python");
    let stamp_file = dir.join("cffi-ft-bench-stamp.json");
    let want = PipStamp {
        backend: spec.family.name(),
        sdist_sha256: sha.to_string(),
        interpreter: interp.executable.clone(),
        interpreter_version: interp.version.clone(),
        free_threaded: interp.free_threaded,
        forced: spec.forced(),
        requirements: build_requirements(),
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
    let venv = dir.join("venv");
    Step {
        label: format!("[{tag}] venv"),
        cmd: Command::new(&interp.executable).arg("-m").arg("venv").arg(&venv),
        log: &log,
        timeout: Some(Duration::from_secs(300)),
    }
    .run_ok()?;
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

enum Source<'a> {
    Kit(&'a Plan, u32, &'a Interpreter),
    Pip(&'a Interpreter, &'a Path, &'a str),
}

fn prepare_backend(spec: &BackendSpec, source: &Source) -> Result<Backend> {
    let (python, build) = match source {
        Source::Kit(plan, step, interp) => ensure_kit(plan, *step, interp)?,
        Source::Pip(interp, tree, sha) => ensure_pip_backend(spec, interp, tree, sha)?,
    };
    let probe = probe(&python, spec).with_context(|| format!("{}: the backend does not import", spec.label()))?;
    let modules = ensure_modules(spec, &python, &probe)?;
    Ok(Backend { spec: spec.clone(), python, modules, probe, build })
}

// ---------------------------------------------------------------------------------------
// Runs and their aggregation (Python-free, unit-tested)

/// One mode of one run.
#[derive(Clone, Debug, PartialEq)]
pub enum ModeResult {
    Ok { ns: f64, throughput: f64 },
    Skipped,
    Failed(String),
}

/// One process: one op in one backend, three modes.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub single: ModeResult,
    pub own2: ModeResult,
    pub shared2: ModeResult,
    pub gil_enabled: Option<bool>,
}

#[derive(Deserialize)]
struct ModeLine {
    mode: String,
    ns_per_op: Option<f64>,
    throughput: Option<f64>,
    error: Option<String>,
    skipped: Option<String>,
    gil_enabled: Option<bool>,
}

/// Turns the JSON lines of one run into a Run; modes without a line failed with
/// `missing` (how the process ended).
pub fn parse_run(stdout: &str, missing: &str) -> Run {
    let mut run = Run {
        single: ModeResult::Failed(missing.to_string()),
        own2: ModeResult::Failed(missing.to_string()),
        shared2: ModeResult::Failed(missing.to_string()),
        gil_enabled: None,
    };
    for line in stdout.lines() {
        let Ok(l) = serde_json::from_str::<ModeLine>(line.trim()) else { continue };
        let result = match (l.ns_per_op, l.throughput, l.error, l.skipped) {
            (_, _, Some(e), _) => ModeResult::Failed(e),
            (_, _, None, Some(_)) => ModeResult::Skipped,
            (Some(ns), Some(throughput), None, None) if ns > 0.0 && throughput > 0.0 => ModeResult::Ok { ns, throughput },
            _ => ModeResult::Failed("incomplete result".into()),
        };
        if l.gil_enabled.is_some() {
            run.gil_enabled = Some(run.gil_enabled.unwrap_or(false) || l.gil_enabled == Some(true));
        }
        match l.mode.as_str() {
            "single" => run.single = result,
            "own2" => run.own2 = result,
            "shared2" => run.shared2 = result,
            _ => {}
        }
    }
    run
}

/// One (backend, op) over all rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Agg {
    /// min over runs of each run's median ns/op (single thread); the headline number.
    pub ns_min: Option<f64>,
    pub ns_median: Option<f64>,
    pub ns_runs: Vec<Option<f64>>,
    /// median over runs of (2-thread throughput / 1-thread throughput of the same run).
    pub scale2_own: Option<f64>,
    pub scale2_shared: Option<f64>,
    pub scale2_own_runs: Vec<Option<f64>>,
    pub scale2_shared_runs: Vec<Option<f64>>,
    /// shared2 does not apply (the op builds fresh objects each iteration).
    pub shared_skipped: bool,
    pub runs: usize,
    pub failed_single: usize,
    pub failed_own2: usize,
    pub failed_shared2: usize,
    /// Distinct error messages with their mode, e.g. "shared2: KeyError: ...".
    pub errors: Vec<String>,
    pub gil_enabled: Option<bool>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub fn aggregate(runs: &[Run]) -> Agg {
    let mut agg = Agg { runs: runs.len(), ..Agg::default() };
    let note = |agg: &mut Agg, mode: &str, e: &str| {
        let short: String = e.chars().take(200).collect();
        let msg = format!("{mode}: {short}");
        if !agg.errors.contains(&msg) {
            agg.errors.push(msg);
        }
    };
    for run in runs {
        let thr1 = match &run.single {
            ModeResult::Ok { ns, throughput } => {
                agg.ns_runs.push(Some(*ns));
                Some(*throughput)
            }
            ModeResult::Failed(e) => {
                agg.ns_runs.push(None);
                agg.failed_single += 1;
                note(&mut agg, "single", e);
                None
            }
            ModeResult::Skipped => {
                agg.ns_runs.push(None);
                None
            }
        };
        for (mode, result) in [("own2", &run.own2), ("shared2", &run.shared2)] {
            let scale = match result {
                ModeResult::Ok { throughput, .. } => thr1.map(|t1| throughput / t1),
                ModeResult::Failed(e) => {
                    if mode == "own2" {
                        agg.failed_own2 += 1;
                    } else {
                        agg.failed_shared2 += 1;
                    }
                    note(&mut agg, mode, e);
                    None
                }
                ModeResult::Skipped => {
                    if mode == "shared2" {
                        agg.shared_skipped = true;
                    }
                    None
                }
            };
            if mode == "own2" {
                agg.scale2_own_runs.push(scale);
            } else {
                agg.scale2_shared_runs.push(scale);
            }
        }
        if let Some(g) = run.gil_enabled {
            agg.gil_enabled = Some(agg.gil_enabled.unwrap_or(false) || g);
        }
    }
    let ns: Vec<f64> = agg.ns_runs.iter().flatten().copied().collect();
    agg.ns_min = ns.iter().copied().reduce(f64::min);
    agg.ns_median = median(&ns);
    agg.scale2_own = median(&agg.scale2_own_runs.iter().flatten().copied().collect::<Vec<_>>());
    agg.scale2_shared = median(&agg.scale2_shared_runs.iter().flatten().copied().collect::<Vec<_>>());
    agg
}

/// a / b when both are known and positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn geomean(values: &[f64]) -> Option<f64> {
    let v: Vec<f64> = values.iter().copied().filter(|x| *x > 0.0 && x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// Everything measured: aggs[op][backend].
pub struct Summary {
    pub backends: Vec<BackendSpec>,
    pub ops: Vec<String>,
    pub aggs: Vec<Vec<Agg>>,
    pub rounds: u32,
    pub seconds: f64,
}

/// For each kit column on a free-threaded build: (kit index, vanilla-t index, 2.1.1-t
/// index) with the same Python version.
pub fn kit_t_comparisons(backends: &[BackendSpec]) -> Vec<(usize, Option<usize>, Option<usize>)> {
    let find = |family: Family, python: &str| {
        backends.iter().position(|b| b.family == family && b.python == python && b.free_threaded)
    };
    backends
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.family, Family::Kit(_)) && b.free_threaded)
        .map(|(i, b)| (i, find(Family::Vanilla, &b.python), find(Family::Upstream, &b.python)))
        .collect()
}

fn fmt_ns(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn ns_cell(a: &Agg) -> String {
    match a.ns_min {
        Some(ns) if a.failed_single > 0 => format!("{}~", fmt_ns(ns)),
        Some(ns) => fmt_ns(ns),
        None if a.failed_single > 0 => "ERR".into(),
        None => "-".into(),
    }
}

fn scale_part(v: Option<f64>, failed: usize, skipped: bool) -> String {
    match v {
        Some(x) if failed > 0 => format!("{x:.2}~"),
        Some(x) => format!("{x:.2}"),
        None if failed > 0 => "ERR".into(),
        None if skipped => "n/a".into(),
        None => "-".into(),
    }
}

const W: usize = 11;

/// The ns/op table (with the kit-t ratios) and the 2-thread scaling table.
pub fn render_table(s: &Summary) -> String {
    let opw = s.ops.iter().map(|o| o.len()).max().unwrap_or(2).max(8) + 2;
    let comps = kit_t_comparisons(&s.backends);
    let mut out = String::new();
    let header = |out: &mut String, extra: &[(String, String)]| {
        let mut l1 = format!("{:<opw$}", "op");
        let mut l2 = format!("{:<opw$}", "");
        for b in &s.backends {
            let name = match b.family {
                Family::Kit(step) => format!("kit-step{step}"),
                Family::Vanilla => "vanilla".into(),
                Family::Upstream => UPSTREAM_VERSION.into(),
            };
            let _ = write!(l1, " {name:>W$}");
            let _ = write!(l2, " {:>W$}", format!("{}{}", b.py_label(), b.marker()));
        }
        if !extra.is_empty() {
            l1.push_str(" |");
            l2.push_str(" |");
        }
        for (a, b) in extra {
            let _ = write!(l1, " {a:>W$}");
            let _ = write!(l2, " {b:>W$}");
        }
        let _ = writeln!(out, "{}\n{}", l1.trim_end(), l2.trim_end());
    };

    let _ = writeln!(
        out,
        "ns/op, single thread (min over {} round(s) of each run's median over {} s; lower is better)",
        s.rounds, s.seconds
    );
    let mut extra = Vec::new();
    for &(k, v, u) in &comps {
        let short = s.backends[k].family.short();
        if v.is_some() {
            extra.push((format!("{short} t /"), "vanilla t".to_string()));
        }
        if u.is_some() {
            extra.push((format!("{short} t /"), format!("{UPSTREAM_VERSION} t")));
        }
    }
    header(&mut out, &extra);
    let mut ratio_cols: Vec<Vec<f64>> = vec![Vec::new(); extra.len()];
    for (oi, op) in s.ops.iter().enumerate() {
        let mut line = format!("{op:<opw$}");
        for a in &s.aggs[oi] {
            let _ = write!(line, " {:>W$}", ns_cell(a));
        }
        if !extra.is_empty() {
            line.push_str(" |");
        }
        let mut col = 0;
        for &(k, v, u) in &comps {
            for other in [v, u].into_iter().flatten() {
                let r = ratio(s.aggs[oi][k].ns_min, s.aggs[oi][other].ns_min);
                if let Some(r) = r {
                    ratio_cols[col].push(r);
                }
                let _ = write!(line, " {:>W$}", fmt_opt(r, 2));
                col += 1;
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !extra.is_empty() {
        let mut line = format!("{:<opw$}", "geomean");
        for _ in &s.backends {
            let _ = write!(line, " {:>W$}", "");
        }
        line.push_str(" |");
        for col in &ratio_cols {
            let _ = write!(line, " {:>W$}", fmt_opt(geomean(col), 2));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let _ = writeln!(
        out,
        "\n2-thread throughput / 1-thread throughput, own objects / shared objects (median over rounds)"
    );
    header(&mut out, &[]);
    for (oi, op) in s.ops.iter().enumerate() {
        let mut line = format!("{op:<opw$}");
        for a in &s.aggs[oi] {
            let cell = format!(
                "{}/{}",
                scale_part(a.scale2_own, a.failed_own2, false),
                scale_part(a.scale2_shared, a.failed_shared2, a.shared_skipped)
            );
            let _ = write!(line, " {cell:>W$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let mut notes = Vec::new();
    if s.backends.iter().any(|b| b.unsafe_gil_off()) {
        notes.push(format!("*  vanilla cffi {KIT_CFFI} on a free-threaded build, run with PYTHON_GIL=0: unsafe, the speed floor"));
    }
    if s.backends.iter().any(|b| b.forced()) {
        notes.push(format!(
            "!  cffi {UPSTREAM_VERSION} on free-threaded 3.13, built by removing its setup.py refusal: forced, unsupported upstream"
        ));
    }
    if !comps.is_empty() {
        notes.push("ratios: the kit's t ns/op divided by the other t ns/op (below 1: the kit is faster)".into());
    }
    notes.push("ERR: every run failed; ~: some runs failed; n/a: no shared objects (see bench.json for the errors)".into());
    for (bi, b) in s.backends.iter().enumerate() {
        if b.free_threaded && s.aggs.iter().any(|row| row[bi].gil_enabled == Some(true)) {
            notes.push(format!("WARNING: the GIL was enabled during {} runs", b.label()));
        }
    }
    out.push('\n');
    for n in notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

// ---------------------------------------------------------------------------------------
// The chart

fn palette(spec: &BackendSpec) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    let (gil, t) = match spec.family {
        Family::Kit(step) => {
            let shade = (step.min(6) * 18) as u8;
            (RGBColor(110 + shade / 2, 170, 230), RGBColor(20 + shade, 90 + shade, 180))
        }
        Family::Vanilla => (RGBColor(190, 190, 190), RGBColor(100, 100, 100)),
        Family::Upstream => (RGBColor(250, 190, 120), RGBColor(220, 110, 20)),
    };
    if spec.free_threaded {
        t
    } else {
        gil
    }
}

/// Grouped horizontal bars: one group per op, one bar per backend, log-scale ns/op.
pub fn render_svg(s: &Summary, path: &Path, subtitle: &str) -> Result<()> {
    use plotters::prelude::*;

    let n_ops = s.ops.len().max(1);
    let n_b = s.backends.len().max(1);
    let bar_px = 11u32;
    let group_px = bar_px * n_b as u32 + 14;
    let legend_px = 24 * (n_b as u32).div_ceil(2) + 20;
    let plot_px = group_px * n_ops as u32 + 90;
    let (width, height) = (1100u32, plot_px + legend_px);

    let values: Vec<f64> = s.aggs.iter().flatten().filter_map(|a| a.ns_min).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi) = if values.is_empty() {
        (1.0, 1000.0)
    } else {
        (10f64.powf((lo * 0.7).log10().floor()), hi * 2.5)
    };

    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let draw_err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw_err)?;
    let (plot, legend) = root.split_vertically(plot_px);
    // Op i (top to bottom) is centred on y = n_ops - 1 - i; integer key points label it.
    let ops = s.ops.clone();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("cffi-ft bench: ns/op, single thread (log scale, lower is better) - {subtitle}"),
            ("sans-serif", 21),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..n_ops as f64 - 0.5)
        .map_err(draw_err)?;
    let label_of = move |y: &f64| {
        if (y - y.round()).abs() > 1e-6 {
            return String::new();
        }
        let i = n_ops as i64 - 1 - y.round() as i64;
        usize::try_from(i).ok().and_then(|i| ops.get(i)).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n_ops + 1)
        .y_label_formatter(&label_of)
        .x_label_formatter(&|x| fmt_ns(*x))
        .x_desc("ns per operation (log scale)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(draw_err)?;

    let band = 1.0 - 14.0 / group_px as f64;
    let bar_h = band / n_b as f64;
    for (bi, spec) in s.backends.iter().enumerate() {
        let color = palette(spec);
        let mut bars = Vec::new();
        let mut texts = Vec::new();
        for (oi, row) in s.aggs.iter().enumerate() {
            let Some(ns) = row[bi].ns_min else { continue };
            let top = (n_ops - 1 - oi) as f64 + 0.5 - (1.0 - band) / 2.0 - bi as f64 * bar_h;
            let bottom = top - bar_h * 0.9;
            bars.push(Rectangle::new([(lo, bottom), (ns, top)], color.filled()));
            let a = &row[bi];
            let failed_2t = a.failed_own2 + a.failed_shared2 > 0;
            let text = format!(" {}{}", fmt_ns(ns), if failed_2t { "  (2-thread runs failed)" } else { "" });
            let color = if failed_2t { RED } else { BLACK };
            texts.push(Text::new(text, (ns, top - bar_h * 0.05), ("sans-serif", 12).into_font().color(&color)));
        }
        chart.draw_series(bars).map_err(draw_err)?;
        chart.draw_series(texts).map_err(draw_err)?;
    }

    for (bi, spec) in s.backends.iter().enumerate() {
        let (col, row) = ((bi % 2) as i32, (bi / 2) as i32);
        let x = 160 + col * 460;
        let y = 8 + row * 24;
        legend
            .draw(&Rectangle::new([(x, y), (x + 16, y + 14)], palette(spec).filled()))
            .map_err(draw_err)?;
        legend
            .draw(&Text::new(spec.label(), (x + 22, y), ("sans-serif", 16).into_font().color(&BLACK)))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The run

fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Whether a 1-minute load average makes timings unreliable on `cpus` CPUs.
pub fn is_busy(load1: f64, cpus: usize) -> bool {
    load1 > 0.5 * cpus as f64
}

pub fn select_ops(spec: Option<&str>) -> Result<Vec<String>> {
    let Some(spec) = spec else { return Ok(OPS.iter().map(|(n, _)| n.to_string()).collect()) };
    let mut out: Vec<String> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !OPS.iter().any(|(n, _)| *n == part) {
            bail!(
                "--ops: unknown operation {part:?} (known: {})",
                OPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
        }
        if !out.iter().any(|o| o == part) {
            out.push(part.to_string());
        }
    }
    if out.is_empty() {
        bail!("--ops: no operation selected");
    }
    // table order
    out.sort_by_key(|o| OPS.iter().position(|(n, _)| n == o));
    Ok(out)
}

/// (kit, vanilla, upstream) selected by --backends.
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

/// One process: `op` in `b`, three modes.
fn run_one(b: &Backend, op: &str, seconds: f64, tag: &str) -> Run {
    let runs_dir = bench_dir().join("runs");
    let _ = fs::create_dir_all(&runs_dir);
    let out_path = runs_dir.join(format!("{}.out", b.spec.id()));
    let err_path = runs_dir.join(format!("{}.err", b.spec.id()));
    let spawn = || -> Result<Finished> {
        let mut cmd = backend_command(&b.python, &b.spec);
        cmd.arg(bench_script())
            .args(["--modules"])
            .arg(&b.modules)
            .args(["--op", op, "--mode", MODES, "--seconds", &format!("{seconds}"), "--json"])
            .current_dir(&b.modules)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", b.python.display()))?;
        // three modes of `seconds` plus start-up and calibration; a hang (a deadlock in an
        // unsafe backend) costs at most this
        let limit = Duration::from_secs_f64(seconds * 10.0 + 30.0);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Finished { status, timed_out: false });
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                return Ok(Finished { status: child.wait()?, timed_out: true });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let finished = spawn();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let missing = match &finished {
        Err(e) => format!("{e:#}"),
        Ok(f) if f.success() => "no result".to_string(),
        Ok(f) => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let shown: String = last.chars().take(160).collect();
            format!("process {}{}", f.describe(), if shown.is_empty() { String::new() } else { format!(": {shown}") })
        }
    };
    let run = parse_run(&stdout, &missing);
    let failed = !matches!(&finished, Ok(f) if f.success());
    if failed || !stderr.trim().is_empty() && [&run.single, &run.own2, &run.shared2].iter().any(|m| matches!(m, ModeResult::Failed(_))) {
        let logs = bench_dir().join("logs");
        let _ = fs::create_dir_all(&logs);
        let _ = fs::write(logs.join(format!("{}-{op}-{tag}.log", b.spec.id())), format!("{stdout}\n--- stderr ---\n{stderr}"));
    }
    run
}

#[derive(Serialize)]
struct JsonResult {
    backend: String,
    step: Option<u32>,
    python: String,
    free_threaded: bool,
    label: String,
    forced: bool,
    unsafe_gil_off: bool,
    op: String,
    ns_per_op: Option<f64>,
    scale2_own: Option<f64>,
    scale2_shared: Option<f64>,
    ratio_vs_vanilla_t: Option<f64>,
    ratio_vs_upstream_t: Option<f64>,
    ratio_vs_vanilla_same_python: Option<f64>,
    #[serde(flatten)]
    agg: Agg,
}

#[derive(Serialize)]
struct JsonBackend {
    backend: String,
    label: String,
    python: String,
    free_threaded: bool,
    python_executable: PathBuf,
    env: BTreeMap<String, String>,
    forced: bool,
    unsafe_gil_off: bool,
    cffi_version: String,
    kit: Option<serde_json::Value>,
    gil_enabled_at_import: Option<bool>,
    build: String,
}

#[derive(Serialize)]
struct JsonReport {
    method: String,
    started_at: u64,
    duration_s: f64,
    quick: bool,
    rounds: u32,
    seconds_per_mode: f64,
    cpus: usize,
    load_avg_start: Option<[f64; 3]>,
    load_avg_end: Option<[f64; 3]>,
    busy: bool,
    ops: Vec<BTreeMap<&'static str, String>>,
    backends: Vec<JsonBackend>,
    build_failures: Vec<BTreeMap<&'static str, String>>,
    results: Vec<JsonResult>,
}

fn json_results(s: &Summary) -> Vec<JsonResult> {
    let comps = kit_t_comparisons(&s.backends);
    let mut out = Vec::new();
    for (oi, op) in s.ops.iter().enumerate() {
        for (bi, b) in s.backends.iter().enumerate() {
            let agg = s.aggs[oi][bi].clone();
            let comp = comps.iter().find(|c| c.0 == bi);
            let vs = |idx: Option<usize>| idx.and_then(|j| ratio(agg.ns_min, s.aggs[oi][j].ns_min));
            let vanilla_same = s
                .backends
                .iter()
                .position(|o| o.family == Family::Vanilla && o.python == b.python && o.free_threaded == b.free_threaded)
                .filter(|&j| j != bi);
            out.push(JsonResult {
                backend: b.family.name(),
                step: match b.family {
                    Family::Kit(step) => Some(step),
                    _ => None,
                },
                python: b.python.clone(),
                free_threaded: b.free_threaded,
                label: b.label(),
                forced: b.forced(),
                unsafe_gil_off: b.unsafe_gil_off(),
                op: op.clone(),
                ns_per_op: agg.ns_min,
                scale2_own: agg.scale2_own,
                scale2_shared: agg.scale2_shared,
                ratio_vs_vanilla_t: comp.and_then(|c| vs(c.1)),
                ratio_vs_upstream_t: comp.and_then(|c| vs(c.2)),
                ratio_vs_vanilla_same_python: vs(vanilla_same),
                agg,
            });
        }
    }
    out
}

pub fn report_paths() -> (PathBuf, PathBuf) {
    let dir = util::kit_target_dir();
    (dir.join("bench.json"), dir.join("bench.svg"))
}

pub fn run(args: BenchArgs) -> Result<bool> {
    let started_at = util::unix_now();
    let t0 = Instant::now();
    // Everything cheap is validated before any provisioning starts.
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let seconds = args.seconds.unwrap_or(if args.quick { 0.15 } else { 0.5 });
    if !(seconds > 0.0 && seconds <= 60.0) {
        bail!("--seconds must be above 0 and at most 60");
    }
    let ops = select_ops(args.ops.as_deref())?;
    let (with_kit, with_vanilla, with_upstream) = select_families(&args.backends)?;
    let series = Series::load(KIT_CFFI)?;
    let steps = series.select_steps(args.steps.as_deref())?;

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load_start = load_average();
    let busy = load_start.is_some_and(|l| is_busy(l[0], cpus));
    if let Some(l) = load_start {
        status(format!("bench: {cpus} CPUs, load average {:.2} {:.2} {:.2}", l[0], l[1], l[2]));
    }
    if busy {
        warn(format!(
            "the machine is busy (1-minute load average {:.2} on {cpus} CPUs): absolute times are noise, compare ratios only",
            load_start.map(|l| l[0]).unwrap_or(0.0)
        ));
    }

    let interpreters = python::resolve(&args.pythons)?;
    let kit_upstream = upstream::fetch_sdist(KIT_CFFI)?;
    let up_tree = if with_upstream {
        Some(upstream::fetch_pinned_sdist(UPSTREAM_VERSION, UPSTREAM_SHA256, &bench_dir().join("upstream"))?)
    } else {
        None
    };
    let kit_sha = fs::read_to_string(kit_upstream.tree.join(".cffi-ft-sdist-sha256")).unwrap_or_default();
    let plan = Plan {
        series,
        upstream: kit_upstream.clone(),
        steps: steps.clone(),
        interpreters: interpreters.clone(),
        suites: vec![Suite::Build],
        parallel_threads: 1,
        jobs: 1,
        pytest_args: Vec::new(),
        suite_timeout: Duration::from_secs(3600),
    };

    // What to build, in column order.
    let mut tasks: Vec<(BackendSpec, Source)> = Vec::new();
    let spec = |family, i: &Interpreter| BackendSpec { family, python: i.version.clone(), free_threaded: i.free_threaded };
    if with_kit {
        for &step in &steps {
            for i in &interpreters {
                tasks.push((spec(Family::Kit(step), i), Source::Kit(&plan, step, i)));
            }
        }
    }
    if with_vanilla {
        for i in &interpreters {
            tasks.push((spec(Family::Vanilla, i), Source::Pip(i, &kit_upstream.tree, kit_sha.trim())));
        }
    }
    if let Some(tree) = &up_tree {
        for i in &interpreters {
            tasks.push((spec(Family::Upstream, i), Source::Pip(i, tree, UPSTREAM_SHA256)));
        }
    }
    status(format!(
        "bench: preparing {} backends: {}",
        tasks.len(),
        tasks.iter().map(|(s, _)| s.label()).collect::<Vec<_>>().join(", ")
    ));
    let jobs = args.jobs.unwrap_or(2).clamp(1, cpus.max(1));
    let results: Mutex<Vec<Option<Result<Backend>>>> = Mutex::new((0..tasks.len()).map(|_| None).collect());
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().expect("queue");
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some((spec, source)) = tasks.get(i) else { break };
                let r = prepare_backend(spec, source);
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    let mut backends = Vec::new();
    let mut build_failures = Vec::new();
    let mut kit_failed = false;
    for ((spec, _), r) in tasks.iter().zip(results.into_inner().expect("results")) {
        match r.expect("every task ran") {
            Ok(b) => backends.push(b),
            Err(e) => {
                let text = format!("{e:#}");
                warn(format!("{}: not measured: {text}", spec.label()));
                kit_failed |= matches!(spec.family, Family::Kit(_));
                build_failures.push(BTreeMap::from([
                    ("backend", spec.family.name()),
                    ("label", spec.label()),
                    ("error", text.lines().next().unwrap_or("").to_string()),
                ]));
            }
        }
    }
    if backends.is_empty() {
        bail!("no backend could be built (see the warnings above)");
    }
    for b in &backends {
        if b.spec.free_threaded && b.probe.gil_enabled == Some(true) {
            warn(format!("{}: the GIL is enabled after importing _cffi_backend", b.spec.label()));
        }
    }

    // Interleaved measuring: per round, per op, every backend (order rotates per round).
    let n_b = backends.len();
    let per_run = seconds * 3.0 + 0.4;
    status(format!(
        "bench: {rounds} rounds x {} ops x {n_b} backends, {seconds} s per mode (about {:.0} min)",
        ops.len(),
        (rounds as f64 * ops.len() as f64 * n_b as f64 * per_run / 60.0).ceil()
    ));
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); n_b]; ops.len()];
    for round in 0..rounds {
        let rt = Instant::now();
        for (oi, op) in ops.iter().enumerate() {
            for k in 0..n_b {
                let bi = (k + round as usize) % n_b;
                let run = run_one(&backends[bi], op, seconds, &format!("r{round}"));
                runs[oi][bi].push(run);
            }
        }
        eprintln!("    round {}/{rounds} ... done ({:.0}s)", round + 1, rt.elapsed().as_secs_f64());
    }
    let load_end = load_average();

    let summary = Summary {
        backends: backends.iter().map(|b| b.spec.clone()).collect(),
        ops: ops.clone(),
        aggs: runs.iter().map(|row| row.iter().map(|r| aggregate(r)).collect()).collect(),
        rounds,
        seconds,
    };
    let table = render_table(&summary);
    let load_text = |l: Option<[f64; 3]>| l.map(|l| format!("{:.2}", l[0])).unwrap_or_else(|| "?".into());
    println!(
        "\ncffi-ft bench: {rounds} round(s) x {seconds} s per mode; {cpus} CPUs; load average {} at start, {} at end{}\n",
        load_text(load_start),
        load_text(load_end),
        if busy { " (BUSY: absolute times are noise, compare ratios)" } else { "" }
    );
    println!("{table}");

    let (json_path, svg_path) = report_paths();
    let report = JsonReport {
        method: "ns_per_op = ns_min = min over rounds of each run's median ns/op over ~1 ms batches (single thread); \
                 scale2_* = median over rounds of (2-thread throughput / 1-thread throughput of the same run); \
                 ratio_* = ns_per_op / the other backend's ns_per_op"
            .into(),
        started_at,
        duration_s: t0.elapsed().as_secs_f64(),
        quick: args.quick,
        rounds,
        seconds_per_mode: seconds,
        cpus,
        load_avg_start: load_start,
        load_avg_end: load_end,
        busy,
        ops: OPS
            .iter()
            .filter(|(n, _)| ops.iter().any(|o| o == n))
            .map(|(n, w)| BTreeMap::from([("op", n.to_string()), ("what", w.to_string())]))
            .collect(),
        backends: backends
            .iter()
            .map(|b| JsonBackend {
                backend: b.spec.family.name(),
                label: b.spec.label(),
                python: b.spec.python.clone(),
                free_threaded: b.spec.free_threaded,
                python_executable: b.python.clone(),
                env: b.spec.env(),
                forced: b.spec.forced(),
                unsafe_gil_off: b.spec.unsafe_gil_off(),
                cffi_version: b.probe.version.clone(),
                kit: b.probe.kit.clone(),
                gil_enabled_at_import: b.probe.gil_enabled,
                build: b.build.to_string(),
            })
            .collect(),
        build_failures,
        results: json_results(&summary),
    };
    util::write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let subtitle = format!(
        "{} rounds x {seconds} s, {cpus} CPUs, load {}{}",
        rounds,
        load_text(load_start),
        if busy { " (busy)" } else { "" }
    );
    render_svg(&summary, &svg_path, &subtitle)?;
    println!("results: {} and {} ({:.0}s in all)", json_path.display(), svg_path.display(), t0.elapsed().as_secs_f64());

    let kit_missing: Vec<String> = summary
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.family, Family::Kit(_)))
        .flat_map(|(bi, b)| {
            let aggs = &summary.aggs;
            summary
                .ops
                .iter()
                .enumerate()
                .filter(move |(oi, _)| aggs[*oi][bi].ns_min.is_none())
                .map(move |(_, op)| format!("{} / {op}", b.label()))
        })
        .collect();
    for m in &kit_missing {
        eprintln!("FAILED: no single-thread result for {m}");
    }
    Ok(!kit_failed && kit_missing.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ns: f64, throughput: f64) -> ModeResult {
        ModeResult::Ok { ns, throughput }
    }

    fn run3(single: ModeResult, own2: ModeResult, shared2: ModeResult) -> Run {
        Run { single, own2, shared2, gil_enabled: Some(false) }
    }

    fn spec(family: Family, t: bool) -> BackendSpec {
        BackendSpec { family, python: "3.13.5".into(), free_threaded: t }
    }

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn aggregate_takes_min_median_and_per_run_scaling() {
        let runs = vec![
            run3(ok(100.0, 1e7), ok(60.0, 1.8e7), ok(80.0, 1.2e7)),
            run3(ok(90.0, 1.1e7), ok(60.0, 2.2e7), ok(80.0, 1.1e7)),
            run3(ok(120.0, 0.8e7), ok(60.0, 1.2e7), ok(80.0, 0.8e7)),
        ];
        let a = aggregate(&runs);
        assert_eq!(a.ns_min, Some(90.0));
        assert_eq!(a.ns_median, Some(100.0));
        // per-run ratios 1.8, 2.0, 1.5 -> median 1.8
        assert!((a.scale2_own.unwrap() - 1.8).abs() < 1e-9);
        // per-run ratios 1.2, 1.0, 1.0 -> median 1.0
        assert!((a.scale2_shared.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(a.runs, 3);
        assert!(a.errors.is_empty());
        assert_eq!(a.gil_enabled, Some(false));
    }

    #[test]
    fn aggregate_records_failures_and_skips() {
        let runs = vec![
            run3(ok(50.0, 2e7), ok(40.0, 3e7), ModeResult::Failed("KeyError: x".into())),
            run3(ModeResult::Failed("process killed by signal 11 (SIGSEGV)".into()), ok(40.0, 3e7), ModeResult::Skipped),
            run3(ok(70.0, 1e7), ok(40.0, 3e7), ModeResult::Failed("KeyError: x".into())),
        ];
        let a = aggregate(&runs);
        assert_eq!(a.ns_min, Some(50.0));
        assert_eq!(a.ns_runs, vec![Some(50.0), None, Some(70.0)]);
        assert_eq!(a.failed_single, 1);
        assert_eq!(a.failed_shared2, 2);
        assert_eq!(a.scale2_shared, None);
        // run 2 has no single throughput: its own2 ratio is unknown
        assert_eq!(a.scale2_own_runs, vec![Some(1.5), None, Some(3.0)]);
        assert_eq!(a.errors, vec!["shared2: KeyError: x", "single: process killed by signal 11 (SIGSEGV)"]);
        assert!(a.shared_skipped);
    }

    #[test]
    fn parse_run_reads_lines_and_fills_missing_modes() {
        let out = r#"{"op":"cast","mode":"single","ns_per_op":70.5,"throughput":1.4e7,"gil_enabled":false}
not json
{"op":"cast","mode":"own2","error":"RuntimeError: boom","gil_enabled":false}
"#;
        let run = parse_run(out, "process killed by signal 11 (SIGSEGV)");
        assert_eq!(run.single, ok(70.5, 1.4e7));
        assert_eq!(run.own2, ModeResult::Failed("RuntimeError: boom".into()));
        assert_eq!(run.shared2, ModeResult::Failed("process killed by signal 11 (SIGSEGV)".into()));
        assert_eq!(run.gil_enabled, Some(false));
        let skipped = parse_run(r#"{"mode":"shared2","skipped":"no objects","gil_enabled":true}"#, "x");
        assert_eq!(skipped.shared2, ModeResult::Skipped);
        assert_eq!(skipped.gil_enabled, Some(true));
    }

    #[test]
    fn ratios_and_geomean() {
        assert_eq!(ratio(Some(50.0), Some(100.0)), Some(0.5));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert!((geomean(&[0.5, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
    }

    fn summary() -> Summary {
        let backends = vec![
            spec(Family::Kit(0), false),
            spec(Family::Kit(0), true),
            spec(Family::Vanilla, false),
            spec(Family::Vanilla, true),
            spec(Family::Upstream, false),
            spec(Family::Upstream, true),
        ];
        let agg = |ns: f64| Agg { ns_min: Some(ns), scale2_own: Some(1.9), scale2_shared: Some(1.2), ..Agg::default() };
        let failed = Agg { failed_single: 3, failed_own2: 3, failed_shared2: 3, ..Agg::default() };
        Summary {
            backends,
            ops: vec!["typeof_hit".into(), "new_function_type".into()],
            aggs: vec![
                vec![agg(20.0), agg(40.0), agg(20.0), agg(32.0), agg(25.0), agg(50.0)],
                vec![agg(200.0), agg(300.0), agg(210.0), agg(250.0), agg(190.0), failed],
            ],
            rounds: 3,
            seconds: 0.15,
        }
    }

    #[test]
    fn kit_t_is_compared_with_vanilla_t_and_upstream_t() {
        let s = summary();
        assert_eq!(kit_t_comparisons(&s.backends), vec![(1, Some(3), Some(5))]);
        let json = json_results(&s);
        let kit_t = json.iter().find(|r| r.backend == "kit-step0" && r.free_threaded && r.op == "typeof_hit").unwrap();
        assert_eq!(kit_t.ratio_vs_vanilla_t, Some(1.25));
        assert_eq!(kit_t.ratio_vs_upstream_t, Some(0.8));
        assert_eq!(kit_t.ratio_vs_vanilla_same_python, Some(1.25));
        let kit_gil = json.iter().find(|r| r.backend == "kit-step0" && !r.free_threaded && r.op == "typeof_hit").unwrap();
        assert_eq!(kit_gil.ratio_vs_vanilla_t, None);
        assert_eq!(kit_gil.ratio_vs_vanilla_same_python, Some(1.0));
        let v = serde_json::to_value(&json[0]).unwrap();
        for key in ["backend", "python", "free_threaded", "op", "ns_per_op", "scale2_own", "scale2_shared", "ns_median", "errors"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn table_shows_values_ratios_markers_and_failures() {
        let t = render_table(&summary());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("op") && lines[1].contains("kit-step0") && lines[1].contains("kit0 t /"), "{t}");
        assert!(lines[2].contains("3.13.5t*") && lines[2].contains("3.13.5t!") && lines[2].contains("vanilla t"), "{t}");
        let typeof_row = lines.iter().find(|l| l.starts_with("typeof_hit")).unwrap();
        // 40 / 32 = 1.25 and 40 / 50 = 0.80
        assert!(typeof_row.ends_with("1.25        0.80"), "{typeof_row}");
        let nft = lines.iter().find(|l| l.starts_with("new_function_type")).unwrap();
        assert!(nft.contains("ERR") && nft.trim_end().ends_with('-'), "{nft}");
        let geo = lines.iter().find(|l| l.starts_with("geomean")).unwrap();
        // vanilla: geomean(1.25, 1.2) ; upstream: only 0.8
        assert!(geo.contains("1.22") && geo.trim_end().ends_with("0.80"), "{geo}");
        assert!(t.contains("1.90/1.20") && t.contains("ERR/ERR"), "{t}");
        assert!(t.contains("PYTHON_GIL=0") && t.contains("forced, unsupported upstream"), "{t}");
    }

    #[test]
    fn table_without_free_threaded_kit_has_no_ratio_columns() {
        let mut s = summary();
        s.backends.truncate(1);
        s.aggs = vec![vec![Agg::default()], vec![Agg { ns_min: Some(5.0), failed_single: 1, ..Agg::default() }]];
        let t = render_table(&s);
        assert!(!t.contains(" |") && !t.contains("geomean"), "{t}");
        assert!(t.contains("5.00~"), "{t}");
    }

    #[test]
    fn svg_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bench.svg");
        render_svg(&summary(), &path, "test").unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("forced"), "{}", &svg[..200.min(svg.len())]);
        for op in ["typeof_hit", "new_function_type"] {
            assert!(svg.contains(&format!("\n{op}\n")), "no label {op}");
        }
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
    fn option_parsing() {
        assert_eq!(select_ops(Some("gc, cast,gc")).unwrap(), vec!["cast", "gc"]);
        assert_eq!(select_ops(None).unwrap().len(), OPS.len());
        assert!(select_ops(Some("nope")).unwrap_err().to_string().contains("unknown operation"));
        assert_eq!(select_families("kit,upstream").unwrap(), (true, false, true));
        assert!(select_families("kit,pypy").is_err());
        assert!(is_busy(1.5, 2) && !is_busy(0.9, 2));
    }

    #[test]
    fn python_script_knows_every_op() {
        let script = fs::read_to_string(bench_script()).unwrap();
        for (name, _) in OPS {
            assert!(script.contains(&format!("\"{name}\": (op_")), "bench_ops.py lacks {name}");
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
