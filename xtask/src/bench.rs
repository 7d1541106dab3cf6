//! `cargo xtask bench`: thread safety must not be bought with speed. The same Python
//! micro-benchmarks (`compat-tests/bench/bench_ops.py`) run against every backend in one
//! run, interleaved round-robin, so machine noise hits all of them alike:
//!
//! - the kit at each selected step (the cells of `test-upstream`, reused when fresh),
//! - vanilla cffi 1.17.1, unpatched (on 3.13t with `PYTHON_GIL=0`: unsafe, the floor),
//! - upstream cffi 2.1.1 (on 3.13t built by removing its refusal: forced, unsupported),
//!
//! each on 3.13 and 3.13t. Absolute times on shared machines are noise; the ratios taken
//! within one run are what count: per round (the kit's run / the other's run of the same
//! round), then their median with an order-statistic interval and a verdict against a
//! threshold (see `Interval`, `Verdict`). Writes `target/cffi-ft/bench.{json,svg}` (the SVG:
//! the ratio chart first, the absolute ns/op bars below it).
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
use crate::cell::{self, Plan, Suite};
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
    ("sizeof", "ffi.sizeof(\"struct point\"), the struct already complete"),
    ("cast", "ffi.cast(\"long\", 12345)"),
    ("struct_first", "fresh FFI from an out-of-line ABI module + first realization of a struct"),
    ("lib_attr", "lib.bench_add attribute access (API mode)"),
    ("api_call", "call of an API-mode C function"),
    ("dlopen_call", "lib.bench_dl_add(1, 2) on an ffi.dlopen() Lib: cached attribute lookup + call"),
    ("dlopen_call_bound", "f(-5), f = ffi.dlopen(None).abs fetched once: the call alone (named dlopen_call before step 3)"),
    ("dlopen_attr_hit", "lib.bench_dl_add on an ffi.dlopen() Lib, already cached (no call)"),
    ("dlopen_new", "a fresh ffi.dlopen(path) Lib, dropped at once (the library stays loaded)"),
    ("dlopen_attr_first", "a fresh ffi.dlopen(path) Lib + first access of 8 functions, per Lib"),
    ("dl_read_variable", "_cffi_backend.load_library(path).read_variable(int, name): dlsym + read"),
    ("callback_from_c", "one call of an ffi.callback from C (a C loop calls it; shared2: the same callback)"),
    ("extern_python_from_c", "one call of an extern \"Python\" function from C (shared2: one binding; named extern_python before step 4)"),
    ("callback_new_free", "ffi.callback(\"int(int)\", f) dropped at once: closure allocation + free"),
    ("gc", "ffi.gc(p, C destructor) + its collection"),
];

/// The default run: enough rounds that the ratio intervals of single-thread ops are a
/// few percent wide on a 2-core machine (see `--help`).
const DEFAULT_ROUNDS: u32 = 90;
const DEFAULT_SECONDS: f64 = 0.1;
/// `--quick`: a smoke run; its intervals are wide (75% level with 3 rounds).
const DEFAULT_THREADED_ROUNDS: u32 = 4;
const QUICK_ROUNDS: u32 = 3;
const QUICK_SECONDS: f64 = 0.15;

#[derive(Args)]
#[command(after_help = "\
Each round runs every op once in every backend (backend order rotates per round); one run
is a fresh process measuring `single` (ns/op: median of ~1 ms batches) and, in the
threaded rounds, `own2` (2 threads, each on its own FFI/module/ctypes/Lib) and `shared2`
(2 threads, same objects: e.g. dlopen_call calls through one Lib, extern_python_from_c
calls one extern \"Python\" binding from C in both threads). A process that crashes fails
the mode it was in; the modes it did not reach run in a fresh process.

Ratios: in each round, kit ns/op / other ns/op of the two runs of that round (same op,
same interpreter, seconds apart; each run's fastest ~1 ms batch), for the kit against the
previous step measured, vanilla 1.17.1 and 2.1.1. Reported: the median of these per-round
ratios and a distribution-free interval of that median (order statistics, binomial
coverage of 95% or more: 90 rounds give [x_36, x_55] of the sorted ratios; 3 rounds only
min..max at 75%), with a verdict: `regression` when the whole interval is above
1 + --threshold (5%), `inconclusive` when only part of it is, `faster` when it is wholly
below 1 / (1 + threshold), else `ok`. Regressions and speed-ups need an interval level of
90% (5 rounds), so --quick never reports one. Each step is judged against its baseline:
the previous step measured, or vanilla for the first.

Modes: the default (90 rounds of 0.1 s, the 2-thread modes in 4 of them) is for
verdicts. Many short rounds, because on a shared 2-core VM the noise is per process (a
fresh process settles 3-10% faster or slower than the next and stays there), so only more
processes narrow the interval; longer runs do not. Steps 0 and 1 (8 backends, the 16 ops
of then) took 31.5 min on a shared 2-core VM (load average 5.2 at the start); the widths
(hi - lo) / median of its 150 single-thread intervals: median 2.4%, 71% at or below 3%,
max 6.2%. Each further op adds about 2 min (all 22 ops: about 44 min), each further step
2 backends (about 10 min); --ops narrows a run. --quick (3 rounds of 0.15 s, all
threaded; about 4.5 min) is a smoke run: its intervals are 10-15% wide, too wide for
verdicts.

Also reported: ns_per_op = min over rounds (ns_median too), scale2_own/_shared = the
median over the threaded rounds of 2-thread throughput / 1-thread throughput of the same
run. On GIL builds scaling is expected at or below 1. Per kit backend, that scaling is
also divided by vanilla's on the same interpreter, round by round (scale2_*_vs_vanilla;
on 3.13t vanilla runs with the GIL off: the scaling a step must keep).

Backends: kit-stepN (the test-upstream cells, reused when newer than their inputs),
vanilla-1.17.1 (unpatched; on 3.13t run with PYTHON_GIL=0: unsafe, the speed floor) and
upstream-2.1.1 (its sdist, sha256-pinned; on 3.13t its setup.py refusal is removed:
forced, unsupported upstream). Their venvs live in target/cffi-ft/bench/ and are reused.

Output: the tables on stdout (ns/op; per kit backend its ratios [interval] with R for a
regression and ? for inconclusive; the verdicts; the spread of the intervals; 2-thread
scaling, then the kit's over vanilla's) and the elapsed time; target/cffi-ft/bench.json
(per op and kit backend: `ratios` with ratio, lo, hi, level, spread, verdict, per_round,
and scale2_*_vs_vanilla; `verdicts` per kit backend) and target/cffi-ft/bench.svg: first the ratio chart (a panel per step, a plot
per interpreter, a dot per comparison at the median ratio with whiskers over its
interval, a line at 1 and the threshold band), below it the absolute ns/op bars.
Exit status: 0 measured (regressions are reported, not fatal: compare on a quiet
machine); 1 a kit backend failed to build or gave no single-thread number for some op;
2 bad input. Errors and crashes in 2-thread runs are reported, not fatal (earlier steps keep
hazards: at step 3 two threads creating and freeing callbacks crash, C1): the table says
ERR, and \"failed runs\" lists each op and backend with its failed modes and errors.
Run it on an idle machine: a load average above half the CPU count gets a
warning.")]
pub struct BenchArgs {
    /// Kit steps to measure: comma-separated numbers, `latest` or `all` (default: all).
    #[arg(long, value_name = "LIST")]
    steps: Option<String>,
    /// Interpreters to use instead of the default CPython 3.13.5 GIL and free-threaded
    /// builds (repeatable).
    #[arg(long = "python", value_name = "PATH")]
    pythons: Vec<PathBuf>,
    /// A smoke run: 3 rounds of 0.15 s per mode, all with the 2-thread modes (steps 0 and
    /// 1, both interpreters, all backends: about 4.5 minutes once built) instead of 90
    /// rounds of 0.1 s. Its intervals are too wide for verdicts.
    #[arg(long)]
    quick: bool,
    /// Rounds over all backends (default: 90, with --quick 3).
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// Measuring time per mode and run, in seconds (default: 0.1, with --quick 0.15).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Operations, comma-separated (default: all): typeof_hit, new_pointer_type,
    /// new_array_type, new_function_type, new_array_type_churn, new_array, new_struct,
    /// sizeof, cast, struct_first, lib_attr, api_call, dlopen_call, dlopen_call_bound,
    /// dlopen_attr_hit, dlopen_new, dlopen_attr_first, dl_read_variable, callback_from_c,
    /// extern_python_from_c, callback_new_free, gc.
    #[arg(long, value_name = "LIST")]
    ops: Option<String>,
    /// Backends, comma-separated: kit, vanilla, upstream.
    #[arg(long, value_name = "LIST", default_value = "kit,vanilla,upstream")]
    backends: String,
    /// Of the rounds, how many also run the 2-thread modes (default: 4; with --quick all),
    /// spread evenly; the others measure the single thread only.
    #[arg(long, value_name = "N")]
    threaded_rounds: Option<u32>,
    /// Regression threshold in percent: an op regresses when the whole interval of its
    /// ratio to the step's baseline is above 1 + PCT/100 (default: 5).
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
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
    let (built, reused) = cell::reuse_or_build_cell(plan, step, interp)?;
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
    /// Not asked for in this run (the 2-thread modes run in some rounds only).
    NotRun,
}

/// One process: one op in one backend, three modes.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub single: ModeResult,
    pub own2: ModeResult,
    pub shared2: ModeResult,
    /// Single thread: the run's fastest ~1 ms batch, ns/op.
    pub single_best: Option<f64>,
    pub gil_enabled: Option<bool>,
}

#[derive(Deserialize)]
struct ModeLine {
    mode: String,
    ns_per_op: Option<f64>,
    ns_min: Option<f64>,
    throughput: Option<f64>,
    error: Option<String>,
    skipped: Option<String>,
    gil_enabled: Option<bool>,
}

/// Turns the JSON lines of one run into a Run; the `asked` modes without a line failed
/// with `missing` (how the process ended), the others did not run.
pub fn parse_run(stdout: &str, missing: &str, asked: &[&str]) -> Run {
    let initial = |mode: &str| {
        if asked.contains(&mode) {
            ModeResult::Failed(missing.to_string())
        } else {
            ModeResult::NotRun
        }
    };
    let mut run = Run {
        single: initial("single"),
        own2: initial("own2"),
        shared2: initial("shared2"),
        single_best: None,
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
            "single" => {
                if matches!(result, ModeResult::Ok { .. }) {
                    run.single_best = l.ns_min.filter(|x| *x > 0.0 && x.is_finite());
                }
                run.single = result
            }
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
    /// Per round: the run's median ns/op (single thread); None where it failed.
    pub ns_runs: Vec<Option<f64>>,
    /// Per round: the run's fastest batch, ns/op.
    pub ns_best_runs: Vec<Option<f64>>,
    /// median over runs of (2-thread throughput / 1-thread throughput of the same run).
    pub scale2_own: Option<f64>,
    pub scale2_shared: Option<f64>,
    pub scale2_own_runs: Vec<Option<f64>>,
    pub scale2_shared_runs: Vec<Option<f64>>,
    /// shared2 does not apply (the op builds fresh objects each iteration).
    pub shared_skipped: bool,
    pub runs: usize,
    /// Runs that measured the 2-thread modes (the threaded rounds).
    pub runs_threaded: usize,
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
            ModeResult::Skipped | ModeResult::NotRun => {
                agg.ns_runs.push(None);
                None
            }
        };
        agg.ns_best_runs.push(if thr1.is_some() { run.single_best } else { None });
        if run.own2 != ModeResult::NotRun || run.shared2 != ModeResult::NotRun {
            agg.runs_threaded += 1;
        }
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
                ModeResult::NotRun => None,
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
    /// The regression criterion as a fraction (0.05: a ratio above 1.05).
    pub threshold: f64,
}

// ---------------------------------------------------------------------------------------
// Ratios per round, their intervals and verdicts (Python-free, unit-tested)
//
// A round runs every backend once per op, one after the other (order rotated per round),
// so the kit's run and the other backend's run of the same round shared the machine's
// state of those few seconds: their quotient is one paired sample of the ratio. Over the
// rounds we report the median of these per-round ratios and a distribution-free
// confidence interval of that median from order statistics: [x_(k), x_(n+1-k)] covers the
// true median with probability P(k <= B <= n-k), B ~ Binomial(n, 1/2); k is the largest
// rank that keeps this at CI_LEVEL or more (min..max when none does, with its smaller
// level reported).

/// The coverage the ratio intervals aim at.
pub const CI_LEVEL: f64 = 0.95;

/// The regression threshold when --threshold is not given (5%: how the steps are judged).
pub const DEFAULT_THRESHOLD_PCT: f64 = 5.0;

/// P(k <= B <= n - k) for B ~ Binomial(n, 1/2): how often [x_(k), x_(n+1-k)] of n
/// samples covers their distribution's median. 0 when the interval does not exist.
pub fn order_stat_coverage(n: usize, k: usize) -> f64 {
    if k == 0 || 2 * k > n {
        return 0.0;
    }
    let ln_2n = n as f64 * std::f64::consts::LN_2;
    let mut ln_binom = 0.0; // ln C(n, i)
    let mut tail = 0.0; // P(B < k)
    for i in 0..k {
        tail += (ln_binom - ln_2n).exp();
        ln_binom += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (1.0 - 2.0 * tail).clamp(0.0, 1.0)
}

/// The rank k (1-based) of the interval [x_(k), x_(n+1-k)]: the largest k whose coverage
/// is at least `level`, or 1 (min..max) when none is.
pub fn median_ci_rank(n: usize, level: f64) -> usize {
    let mut k = 1;
    while 2 * (k + 1) <= n && order_stat_coverage(n, k + 1) >= level {
        k += 1;
    }
    k
}

/// The coverage of the interval used for n samples (n rounds).
pub fn interval_level(n: usize) -> f64 {
    order_stat_coverage(n, median_ci_rank(n, CI_LEVEL))
}

/// A median with its confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    /// Coverage of [lo, hi] as an interval of the median (order statistics).
    pub level: f64,
    /// Samples (rounds) it is made of.
    pub n: usize,
}

impl Interval {
    /// Over the finite values; None when there are none.
    pub fn of(values: &[f64]) -> Option<Interval> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let n = v.len();
        let k = median_ci_rank(n, CI_LEVEL);
        Some(Interval {
            median: median(&v).expect("not empty"),
            lo: v[k - 1],
            hi: v[n - k],
            level: order_stat_coverage(n, k),
            n,
        })
    }

    /// (hi - lo) / median: the interval's full width relative to the ratio.
    pub fn spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.hi - self.lo) / self.median
        } else {
            f64::INFINITY
        }
    }
}

/// What a ratio interval says against a threshold t (a fraction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval is above 1 + t: slower beyond the threshold.
    Regression,
    /// The interval reaches above 1 + t but not all of it, or it is above but its level
    /// is under MIN_VERDICT_LEVEL (fewer than 5 rounds): cannot tell.
    Inconclusive,
    /// The whole interval is at or below 1 + t: no regression beyond the threshold.
    Ok,
    /// The whole interval is below 1 / (1 + t) (at MIN_VERDICT_LEVEL or more): faster
    /// beyond the threshold.
    Faster,
}

/// The least interval level that may call a regression (or a speed-up): 5 rounds give
/// 94%, 3 rounds (--quick) only 75%, so a smoke run never reports a regression.
pub const MIN_VERDICT_LEVEL: f64 = 0.9;

impl Verdict {
    pub fn of(iv: &Interval, threshold: f64) -> Verdict {
        let up = 1.0 + threshold;
        let sure = iv.level >= MIN_VERDICT_LEVEL;
        if iv.hi > up {
            if iv.lo > up && sure {
                Verdict::Regression
            } else {
                Verdict::Inconclusive
            }
        } else if iv.hi < 1.0 / up && sure {
            Verdict::Faster
        } else {
            Verdict::Ok
        }
    }

    /// The table's mark after a ratio cell.
    fn mark(self) -> &'static str {
        match self {
            Verdict::Regression => "R",
            Verdict::Inconclusive => "?",
            Verdict::Ok | Verdict::Faster => "",
        }
    }
}

/// Round by round: a[r] / b[r] where both are known.
pub fn round_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<Option<f64>> {
    a.iter().zip(b).map(|(x, y)| ratio(*x, *y)).collect()
}

/// Per round, the geometric mean of the ops' ratios; only rounds where every op has one.
pub fn round_geomeans(per_op: &[Vec<Option<f64>>]) -> Vec<Option<f64>> {
    let rounds = per_op.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .map(|r| {
            let v: Option<Vec<f64>> = per_op.iter().map(|row| row.get(r).copied().flatten()).collect();
            v.filter(|v| !v.is_empty()).and_then(|v| geomean(&v))
        })
        .collect()
}

/// What a kit backend is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// The nearest lower kit step measured on the same interpreter.
    PrevStep(u32),
    Vanilla,
    Upstream,
}

impl Against {
    fn key(self) -> &'static str {
        match self {
            Against::PrevStep(_) => "previous_step",
            Against::Vanilla => "vanilla",
            Against::Upstream => "upstream",
        }
    }
}

/// kit / other on the same interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub kit: usize,
    pub other: usize,
    pub against: Against,
    /// The comparison the step is judged by: the previous step, or vanilla for the
    /// first step measured.
    pub baseline: bool,
}

/// For every kit backend, in column order: vs the previous measured step, vs vanilla,
/// vs 2.1.1, each on the same interpreter, where measured.
pub fn comparisons(backends: &[BackendSpec]) -> Vec<Comparison> {
    let same = |a: &BackendSpec, b: &BackendSpec| a.python == b.python && a.free_threaded == b.free_threaded;
    let mut out = Vec::new();
    for (k, kb) in backends.iter().enumerate() {
        let Family::Kit(step) = kb.family else { continue };
        let prev = backends
            .iter()
            .enumerate()
            .filter_map(|(j, b)| match b.family {
                Family::Kit(s) if s < step && same(b, kb) => Some((s, j)),
                _ => None,
            })
            .max();
        let find = |family| backends.iter().position(|b| b.family == family && same(b, kb));
        let mut mine = Vec::new();
        if let Some((s, j)) = prev {
            mine.push(Comparison { kit: k, other: j, against: Against::PrevStep(s), baseline: false });
        }
        if let Some(j) = find(Family::Vanilla) {
            mine.push(Comparison { kit: k, other: j, against: Against::Vanilla, baseline: false });
        }
        if let Some(j) = find(Family::Upstream) {
            mine.push(Comparison { kit: k, other: j, against: Against::Upstream, baseline: false });
        }
        if let Some(first) = mine.first_mut() {
            first.baseline = first.against != Against::Upstream;
        }
        out.extend(mine);
    }
    out
}

/// One comparison on one op (or on the geomean of all ops: op None).
#[derive(Clone, Debug, PartialEq)]
pub struct RatioStat {
    pub per_round: Vec<Option<f64>>,
    pub interval: Option<Interval>,
    pub verdict: Option<Verdict>,
}

impl RatioStat {
    fn new(per_round: Vec<Option<f64>>, threshold: f64) -> RatioStat {
        let interval = Interval::of(&per_round.iter().flatten().copied().collect::<Vec<_>>());
        let verdict = interval.as_ref().map(|iv| Verdict::of(iv, threshold));
        RatioStat { per_round, interval, verdict }
    }
}

impl Summary {
    /// The single-thread ratio of a comparison on op `oi`, round by round from each run's
    /// fastest batch (less noisy than the run's median on a shared machine: a batch that
    /// was preempted or disturbed only ever gets slower).
    pub fn ratio_stat(&self, c: &Comparison, oi: usize) -> RatioStat {
        RatioStat::new(round_ratios(&self.aggs[oi][c.kit].ns_best_runs, &self.aggs[oi][c.other].ns_best_runs), self.threshold)
    }

    /// The per-round geometric mean over all ops of a comparison.
    pub fn geomean_stat(&self, c: &Comparison) -> RatioStat {
        let per_op: Vec<Vec<Option<f64>>> = (0..self.ops.len()).map(|oi| self.ratio_stat(c, oi).per_round).collect();
        RatioStat::new(round_geomeans(&per_op), self.threshold)
    }

    /// The 2-thread scaling of a comparison on op `oi` (own objects, or shared ones), as
    /// kit scaling / other scaling: the median of the per-round ratios of the threaded
    /// rounds. Below 1: the kit scales worse than the other backend.
    pub fn scale_ratio(&self, c: &Comparison, oi: usize, shared: bool) -> Option<f64> {
        let (k, o) = (&self.aggs[oi][c.kit], &self.aggs[oi][c.other]);
        let (k, o) = if shared { (&k.scale2_shared_runs, &o.scale2_shared_runs) } else { (&k.scale2_own_runs, &o.scale2_own_runs) };
        median(&round_ratios(k, o).into_iter().flatten().collect::<Vec<_>>())
    }

    /// The label of a comparison's denominator: "kit-step0 3.13.5t", "vanilla 3.13.5t*".
    fn other_label(&self, c: &Comparison) -> String {
        let b = &self.backends[c.other];
        let name = match b.family {
            Family::Kit(step) => format!("kit-step{step}"),
            Family::Vanilla => "vanilla".into(),
            Family::Upstream => UPSTREAM_VERSION.into(),
        };
        format!("{name} {}{}", b.py_label(), b.marker())
    }
}

/// The spread of all single-thread ratio intervals: (median, max, where the max is).
pub fn spread_summary(s: &Summary) -> Option<(f64, f64, String)> {
    let mut all: Vec<(f64, String)> = Vec::new();
    for c in comparisons(&s.backends) {
        for (oi, op) in s.ops.iter().enumerate() {
            if let Some(iv) = s.ratio_stat(&c, oi).interval {
                let where_ = format!("{op}, {} / {}", s.backends[c.kit].label_short(), s.other_label(&c));
                all.push((iv.spread(), where_));
            }
        }
    }
    let med = median(&all.iter().map(|x| x.0).collect::<Vec<_>>())?;
    let (max, at) = all.into_iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some((med, max, at))
}

fn fmt_ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

/// "1.02 [0.99, 1.04]" and the verdict's mark.
fn ratio_cell(st: &RatioStat) -> String {
    match &st.interval {
        Some(iv) => format!(
            "{} [{}, {}]{}",
            fmt_ratio(iv.median),
            fmt_ratio(iv.lo),
            fmt_ratio(iv.hi),
            st.verdict.map(Verdict::mark).unwrap_or("")
        ),
        None => "-".into(),
    }
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
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

/// A cell of the kit-over-vanilla scaling table: the ratio ("~" when some runs of either
/// failed); without one, ERR when the kit has no scaling of that mode because its runs
/// failed, vERR when vanilla has none because its runs failed.
fn scale_vs_cell(s: &Summary, c: &Comparison, oi: usize, shared: bool) -> String {
    let failed = |a: &Agg| if shared { a.failed_shared2 } else { a.failed_own2 };
    let lost = |a: &Agg| {
        let runs = if shared { &a.scale2_shared_runs } else { &a.scale2_own_runs };
        failed(a) > 0 && runs.iter().all(Option::is_none)
    };
    let (kit, vanilla) = (&s.aggs[oi][c.kit], &s.aggs[oi][c.other]);
    match s.scale_ratio(c, oi, shared) {
        Some(x) if failed(kit) + failed(vanilla) > 0 => format!("{x:.2}~"),
        Some(x) => format!("{x:.2}"),
        None if lost(kit) => "ERR".into(),
        None if lost(vanilla) => "vERR".into(),
        None if shared && kit.shared_skipped => "n/a".into(),
        None => "-".into(),
    }
}

/// One line per (op, backend) with failed runs: how many of each mode's runs failed,
/// then each distinct error, indented.
pub fn failure_lines(s: &Summary, opw: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (oi, op) in s.ops.iter().enumerate() {
        for (bi, b) in s.backends.iter().enumerate() {
            let a = &s.aggs[oi][bi];
            let counts: Vec<String> = [
                ("single", a.failed_single, a.runs),
                ("own2", a.failed_own2, a.runs_threaded),
                ("shared2", a.failed_shared2, a.runs_threaded),
            ]
            .into_iter()
            .filter(|(_, failed, _)| *failed > 0)
            .map(|(mode, failed, of)| format!("{mode} failed in {failed} of {} runs", of.max(failed)))
            .collect();
            if counts.is_empty() {
                continue;
            }
            out.push(format!("  {op:<opw$} {:<24} {}", b.label_short(), counts.join(", ")));
            out.extend(a.errors.iter().map(|e| format!("      {e}")));
        }
    }
    out
}

const W: usize = 11;
/// Width of a ratio cell, "0.66 [0.64, 0.68]R".
const RW: usize = 20;

/// The ns/op table, the ratio tables (one per kit backend, with intervals and verdicts),
/// the verdicts against each step's baseline and the 2-thread scaling table.
pub fn render_table(s: &Summary) -> String {
    let opw = s.ops.iter().map(|o| o.len()).max().unwrap_or(2).max(8) + 2;
    let comps = comparisons(&s.backends);
    let mut out = String::new();
    let header = |out: &mut String| {
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
        let _ = writeln!(out, "{}\n{}", l1.trim_end(), l2.trim_end());
    };

    let _ = writeln!(
        out,
        "ns/op, single thread (min over {} round(s) of each run's median over {} s; lower is better)",
        s.rounds, s.seconds
    );
    header(&mut out);
    for (oi, op) in s.ops.iter().enumerate() {
        let mut line = format!("{op:<opw$}");
        for a in &s.aggs[oi] {
            let _ = write!(line, " {:>W$}", ns_cell(a));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let up = 1.0 + s.threshold;
    let mut verdict_lines = Vec::new();
    let kits: Vec<usize> = {
        let mut v: Vec<usize> = comps.iter().map(|c| c.kit).collect();
        v.dedup();
        v
    };
    if !kits.is_empty() {
        let _ = writeln!(
            out,
            "\nratio = kit ns/op / other ns/op, single thread, same interpreter, per round from each run's fastest ~1 ms batch: \
             median of the per-round ratios [{:.0}% interval of the median over {} round(s)]; below 1: the kit is faster.\n\
             R: the whole interval is above {up:.2} (slower by more than {:.0}%); ?: the interval reaches above {up:.2}",
            interval_level(s.rounds as usize) * 100.0,
            s.rounds,
            s.threshold * 100.0
        );
    }
    for &k in &kits {
        let mine: Vec<&Comparison> = comps.iter().filter(|c| c.kit == k).collect();
        let mut l1 = format!("{:<opw$}", s.backends[k].label_short());
        for c in &mine {
            let _ = write!(l1, " {:<RW$}", format!("/ {}", s.other_label(c)));
        }
        let _ = writeln!(out, "\n{}", l1.trim_end());
        for (oi, op) in s.ops.iter().enumerate() {
            let mut line = format!("{op:<opw$}");
            for c in &mine {
                let _ = write!(line, " {:<RW$}", ratio_cell(&s.ratio_stat(c, oi)));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let mut line = format!("{:<opw$}", "geomean");
        for c in &mine {
            let _ = write!(line, " {:<RW$}", ratio_cell(&s.geomean_stat(c)));
        }
        let _ = writeln!(out, "{}", line.trim_end());

        if let Some(c) = mine.iter().find(|c| c.baseline) {
            let mut by: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
            let mut unknown = 0;
            for (oi, op) in s.ops.iter().enumerate() {
                let st = s.ratio_stat(c, oi);
                let (Some(iv), Some(v)) = (&st.interval, st.verdict) else {
                    unknown += 1;
                    continue;
                };
                let what = format!("{op} {} [{}, {}]", pct(iv.median), pct(iv.lo), pct(iv.hi));
                match v {
                    Verdict::Regression => by.entry("regression").or_default().push(what),
                    Verdict::Inconclusive => by.entry("inconclusive").or_default().push(what),
                    Verdict::Faster => by.entry("faster").or_default().push(op.clone()),
                    Verdict::Ok => {}
                }
            }
            let mut line = format!("{} vs {}: ", s.backends[k].label_short(), s.other_label(c));
            match by.get("regression") {
                Some(r) => {
                    let _ = write!(line, "REGRESSION beyond {:.0}%: {}", s.threshold * 100.0, r.join(", "));
                }
                None => {
                    let _ = write!(line, "no op regresses beyond {:.0}%", s.threshold * 100.0);
                }
            }
            if let Some(r) = by.get("inconclusive") {
                let _ = write!(line, "; inconclusive: {}", r.join(", "));
            }
            if let Some(r) = by.get("faster") {
                let _ = write!(line, "; faster: {}", r.join(", "));
            }
            if unknown > 0 {
                let _ = write!(line, "; {unknown} op(s) without a ratio");
            }
            verdict_lines.push(line);
        }
    }
    if !verdict_lines.is_empty() {
        let _ = writeln!(
            out,
            "\nverdicts (each step against the previous step measured, or vanilla when it is the first; \
             change of ns/op [interval]):"
        );
        for l in verdict_lines {
            let _ = writeln!(out, "  {l}");
        }
    }
    if let Some((med, max, at)) = spread_summary(s) {
        let _ = writeln!(
            out,
            "spread of the ratio intervals ((hi - lo) / median): median {:.1}%, max {:.1}% ({at})",
            med * 100.0,
            max * 100.0
        );
    }

    let _ = writeln!(
        out,
        "\n2-thread throughput / 1-thread throughput, own objects / shared objects (median over rounds)"
    );
    header(&mut out);
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

    // the kit's scaling against vanilla's on the same interpreter (vanilla-t: the floor
    // with the GIL off), when both were measured
    let vs_vanilla: Vec<&Comparison> = comps.iter().filter(|c| c.against == Against::Vanilla).collect();
    let any_scaling = vs_vanilla.iter().any(|c| {
        (0..s.ops.len()).any(|oi| {
            s.aggs[oi][c.kit].runs_threaded > 0
                || s.aggs[oi][c.other].runs_threaded > 0
                || [false, true].into_iter().any(|shared| s.scale_ratio(c, oi, shared).is_some())
        })
    });
    if any_scaling {
        let _ = writeln!(
            out,
            "\n2-thread scaling of the kit / vanilla's scaling on the same interpreter, own objects / shared objects \
             (median of the per-round ratios; below 1: the kit scales worse)"
        );
        let mut l1 = format!("{:<opw$}", "op");
        let mut l2 = format!("{:<opw$}", "");
        for c in &vs_vanilla {
            let b = &s.backends[c.kit];
            let _ = write!(l1, " {:>W$}", b.family.name());
            let _ = write!(l2, " {:>W$}", format!("{}{}", b.py_label(), b.marker()));
        }
        let _ = writeln!(out, "{}\n{}", l1.trim_end(), l2.trim_end());
        for (oi, op) in s.ops.iter().enumerate() {
            let mut line = format!("{op:<opw$}");
            for c in &vs_vanilla {
                let part = |shared: bool| scale_vs_cell(s, c, oi, shared);
                let _ = write!(line, " {:>W$}", format!("{}/{}", part(false), part(true)));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }

    let failures = failure_lines(s, opw);
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\nfailed runs, per op and backend (each failure is recorded for its cell and mode and the bench goes on; \
             a crash ends only the mode it hit: the modes after it run in a fresh process; logs in {})",
            bench_dir().join("logs").display()
        );
        for l in failures {
            let _ = writeln!(out, "{l}");
        }
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
    notes.push(
        "ERR: every run failed; ~: some runs failed; n/a: no shared objects; vERR: vanilla's runs failed, no scaling \
         to divide by (the errors: under \"failed runs\" and in bench.json)"
            .into(),
    );
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

/// Text for SVG.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// bench.svg: the ratio chart first, the absolute chart below it, in one document.
pub fn render_svg(s: &Summary, path: &Path, subtitle: &str) -> Result<()> {
    let (ratio, rw, rh) = ratio_chart(s, subtitle);
    let (abs, aw, ah) = absolute_chart(s, subtitle)?;
    let gap = 30;
    let (width, height) = (rw.max(aw), rh + gap + ah);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n"
    );
    svg.push_str(&ratio);
    let _ = writeln!(
        svg,
        "<line x1=\"0\" y1=\"{y}\" x2=\"{width}\" y2=\"{y}\" stroke=\"#999\" stroke-width=\"1\"/>",
        y = rh + gap / 2
    );
    // plotters writes a whole document; nested, it becomes the lower part
    let abs = abs.trim_start_matches(|c: char| c != '<');
    let nested = abs.strip_prefix("<svg ").map(|rest| format!("<svg x=\"0\" y=\"{}\" {rest}", rh + gap));
    svg.push_str(&nested.context("the absolute chart is not an <svg> document")?);
    svg.push_str("\n</svg>\n");
    util::write_atomic(path, svg.as_bytes())
}

/// Colours of the comparisons and the verdicts.
fn against_color(a: Against) -> &'static str {
    match a {
        Against::PrevStep(_) => "#1f5fb4",
        Against::Vanilla => "#555555",
        Against::Upstream => "#dd7711",
    }
}

fn verdict_color(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Regression) => "#c0392b",
        Some(Verdict::Inconclusive) => "#b9770e",
        Some(Verdict::Faster) => "#1e8449",
        _ => "#333333",
    }
}

/// The log-scale x axis of the ratio chart: [lo, hi] on [x0, x0 + w].
struct RatioAxis {
    lo: f64,
    hi: f64,
    x0: f64,
    w: f64,
}

impl RatioAxis {
    /// The range: every interval, clamped to [0.5, 2] so that a few percent stay visible
    /// (beyond: a triangle and the value at the edge), never narrower than the band.
    fn range(values: &[f64], threshold: f64) -> (f64, f64) {
        let up = 1.0 + threshold;
        let lo = values.iter().copied().fold(1.0 / up, f64::min) / 1.03;
        let hi = values.iter().copied().fold(up, f64::max) * 1.03;
        (lo.clamp(0.5, 0.9), hi.clamp(1.1, 2.0))
    }

    fn x(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        self.x0 + (v / self.lo).ln() / (self.hi / self.lo).ln() * self.w
    }

    /// Tick values at least `min_px` apart: 1, then rounder values before others.
    fn ticks(&self, min_px: f64) -> Vec<f64> {
        const BY_PRIORITY: &[f64] = &[
            1.0, 0.5, 2.0, 0.25, 4.0, 0.8, 1.25, 0.9, 1.1, 1.5, 0.95, 1.05, 0.6, 0.7, 0.3, 0.4, 1.2, 1.3, 3.0, 2.5,
            0.85, 1.75,
        ];
        let mut out: Vec<f64> = Vec::new();
        for &v in BY_PRIORITY {
            if v >= self.lo && v <= self.hi && out.iter().all(|&t| (self.x(t) - self.x(v)).abs() >= min_px) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.total_cmp(b));
        out
    }
}

fn fmt_tick(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The first picture: for each kit step a panel, in it one plot per interpreter
/// (free-threaded first), one row per op (and the geomean) with kit / other for each
/// comparison: a dot at the median per-round ratio, whiskers over its interval, a line
/// at 1.0 and the threshold band. Right of each plot: the change against the step's
/// baseline, coloured by its verdict. Returns the SVG elements and their size.
pub fn ratio_chart(s: &Summary, subtitle: &str) -> (String, u32, u32) {
    const LX: f64 = 190.0; // op labels end here
    const PW: f64 = 420.0; // width of one plot
    const GAP: f64 = 120.0; // between plots: the verdict text of the left one
    const SUB: f64 = 12.0; // between the series of one row
    let comps = comparisons(&s.backends);
    let up = 1.0 + s.threshold;
    let level = interval_level(s.rounds as usize);
    let mut out = String::new();
    let width = (LX + 2.0 * PW + GAP + 110.0) as u32;
    let _ = writeln!(
        out,
        "<text x=\"12\" y=\"26\" font-size=\"19\" font-weight=\"bold\">cffi-ft bench: kit ns/op divided by another \
         backend's, single thread, same interpreter</text>\n\
         <text x=\"12\" y=\"46\" font-size=\"13\" fill=\"#444\">{}</text>",
        esc(&format!(
            "{subtitle}; dot: median of the per-round ratios; whiskers: its {:.0}% interval over {} rounds (order statistics)",
            level * 100.0,
            s.rounds
        ))
    );
    if comps.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"80\" font-size=\"14\">no ratios: measure a kit step together with vanilla or {UPSTREAM_VERSION} \
             (--backends kit,vanilla,upstream)</text>"
        );
        return (out, width, 100);
    }

    // legend
    let mut lx = 12.0;
    let ly = 70.0;
    let prev_name = "the previous step";
    let items: Vec<(String, String)> = [
        (Against::PrevStep(0), format!("vs {prev_name}")),
        (Against::Vanilla, format!("vs vanilla {KIT_CFFI} (on t: PYTHON_GIL=0, unsafe)")),
        (Against::Upstream, format!("vs {UPSTREAM_VERSION} (on t: forced, unsupported)")),
    ]
    .into_iter()
    .filter(|(a, _)| comps.iter().any(|c| std::mem::discriminant(&c.against) == std::mem::discriminant(a)))
    .map(|(a, t)| (against_color(a).to_string(), t))
    .collect();
    for (color, text) in &items {
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <circle cx=\"{:.1}\" cy=\"{ly}\" r=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\">{}</text>",
            lx,
            lx + 24.0,
            lx + 12.0,
            lx + 30.0,
            ly + 4.5,
            esc(text)
        );
        lx += 30.0 + text.len() as f64 * 6.9 + 24.0;
    }
    let _ = writeln!(
        out,
        "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"24\" height=\"12\" fill=\"#e3efe3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\">{}</text>",
        ly - 6.0,
        lx + 30.0,
        ly + 4.5,
        esc(&format!("{:.2} .. {up:.2}: within {:.0}%", 1.0 / up, s.threshold * 100.0))
    );
    for (i, line) in [
        "below 1: the kit is faster. Right of each plot: the change of ns/op against the step's baseline (the previous \
         step; vanilla for the first step measured),"
            .to_string(),
        format!(
            "coloured by its verdict: R: regression (the whole interval is above {up:.2}); ?: inconclusive (the interval \
             reaches above {up:.2}); green: faster (whole interval below {:.2})",
            1.0 / up
        ),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{:.1}\" font-size=\"13\" fill=\"#444\">{}</text>",
            ly + 24.0 + 17.0 * i as f64,
            esc(line)
        );
    }

    // one axis for all plots, so that they compare
    let mut values = Vec::new();
    for c in &comps {
        for oi in 0..s.ops.len() {
            if let Some(iv) = s.ratio_stat(c, oi).interval {
                values.extend([iv.lo, iv.hi]);
            }
        }
    }
    let (alo, ahi) = RatioAxis::range(&values, s.threshold);

    let mut steps: Vec<u32> = s
        .backends
        .iter()
        .filter_map(|b| match b.family {
            Family::Kit(step) => Some(step),
            _ => None,
        })
        .collect();
    steps.sort();
    steps.dedup();
    let n_rows = s.ops.len() + 1;
    let mut y = ly + 60.0;
    for step in steps {
        // free-threaded first: that is what the kit is for
        let mut kits: Vec<usize> = comps.iter().map(|c| c.kit).filter(|&k| s.backends[k].family == Family::Kit(step)).collect();
        kits.dedup();
        kits.sort_by_key(|&k| (!s.backends[k].free_threaded, s.backends[k].python.clone()));
        if kits.is_empty() {
            continue;
        }
        // the series of a row: the same slots in every plot of the panel
        let mut slots: Vec<Against> = Vec::new();
        for c in comps.iter().filter(|c| kits.contains(&c.kit)) {
            if !slots.iter().any(|a| std::mem::discriminant(a) == std::mem::discriminant(&c.against)) {
                slots.push(c.against);
            }
        }
        slots.sort_by_key(|a| match a {
            Against::PrevStep(_) => 0,
            Against::Vanilla => 1,
            Against::Upstream => 2,
        });
        let row_h = SUB * slots.len() as f64 + 12.0;
        let baseline_name = comps
            .iter()
            .find(|c| c.kit == kits[0] && c.baseline)
            .map(|c| s.backends[c.other].family.name())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{:.1}\" font-size=\"17\" font-weight=\"bold\">kit-step{step}</text>\
             <text x=\"110\" y=\"{:.1}\" font-size=\"13\" fill=\"#444\">{}</text>",
            y + 16.0,
            y + 16.0,
            esc(&format!("judged against {baseline_name} on the same interpreter"))
        );
        y += 26.0;
        let top = y + 20.0;
        let bottom = top + row_h * n_rows as f64;
        // rows: stripes and op labels
        for r in 0..n_rows {
            let ry = top + r as f64 * row_h;
            if r % 2 == 1 {
                let _ = writeln!(
                    out,
                    "<rect x=\"8\" y=\"{ry:.1}\" width=\"{:.1}\" height=\"{row_h:.1}\" fill=\"#f4f4f4\"/>",
                    width as f64 - 16.0
                );
            }
            let label = s.ops.get(r).map(String::as_str).unwrap_or("geomean");
            let weight = if r == s.ops.len() { " font-weight=\"bold\"" } else { "" };
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\"{weight}>{}</text>",
                LX - 10.0,
                ry + row_h / 2.0 + 4.5,
                esc(label)
            );
        }
        for (pi, &k) in kits.iter().enumerate() {
            let b = &s.backends[k];
            let axis = RatioAxis { lo: alo, hi: ahi, x0: LX + pi as f64 * (PW + GAP), w: PW };
            let x0 = axis.x0;
            let title = format!(
                "{} ({})",
                b.py_label(),
                if b.free_threaded { "free-threaded" } else { "GIL" }
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#444\">vs baseline</text>",
                x0 + PW / 2.0,
                top - 6.0,
                esc(&title),
                x0 + PW + 40.0,
                top - 6.0
            );
            // threshold band, grid, 1.0, frame
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#e3efe3\" fill-opacity=\"0.8\"/>",
                axis.x(1.0 / up),
                axis.x(up) - axis.x(1.0 / up),
                bottom - top
            );
            for t in axis.ticks(34.0) {
                let tx = axis.x(t);
                let (stroke, sw) = if t == 1.0 { ("#222", 1.5) } else { ("#ccc", 0.8) };
                let _ = writeln!(
                    out,
                    "<line x1=\"{tx:.1}\" y1=\"{top:.1}\" x2=\"{tx:.1}\" y2=\"{bottom:.1}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>\
                     <text x=\"{tx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                    bottom + 14.0,
                    fmt_tick(t)
                );
            }
            let _ = writeln!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{PW:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>\
                 <line x1=\"{x0:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">\
                 kit / other, log scale (below 1: the kit is faster)</text>",
                bottom - top,
                bottom - row_h,
                x0 + PW,
                bottom - row_h,
                x0 + PW / 2.0,
                bottom + 30.0
            );
            for r in 0..n_rows {
                let ry = top + r as f64 * row_h + 6.0 + SUB / 2.0;
                for c in comps.iter().filter(|c| c.kit == k) {
                    let Some(slot) = slots.iter().position(|a| std::mem::discriminant(a) == std::mem::discriminant(&c.against))
                    else {
                        continue;
                    };
                    let st = if r < s.ops.len() { s.ratio_stat(c, r) } else { s.geomean_stat(c) };
                    let Some(iv) = &st.interval else { continue };
                    let cy = ry + slot as f64 * SUB;
                    let color = against_color(c.against);
                    let (xl, xh, xm) = (axis.x(iv.lo), axis.x(iv.hi), axis.x(iv.median));
                    let _ = writeln!(
                        out,
                        "<line x1=\"{xl:.1}\" y1=\"{cy:.1}\" x2=\"{xh:.1}\" y2=\"{cy:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>\
                         <line x1=\"{xl:.1}\" y1=\"{:.1}\" x2=\"{xl:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>\
                         <line x1=\"{xh:.1}\" y1=\"{:.1}\" x2=\"{xh:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>",
                        cy - 3.5,
                        cy + 3.5,
                        cy - 3.5,
                        cy + 3.5
                    );
                    let off_lo = iv.median < axis.lo;
                    let off_hi = iv.median > axis.hi;
                    if off_lo || off_hi {
                        // a triangle at the edge pointing outwards, and the value
                        let (tip, base, anchor, tx) =
                            if off_lo { (x0 - 1.0, x0 + 8.0, "start", x0 + 11.0) } else { (x0 + PW + 1.0, x0 + PW - 8.0, "end", x0 + PW - 11.0) };
                        let _ = writeln!(
                            out,
                            "<polygon points=\"{tip:.1},{cy:.1} {base:.1},{:.1} {base:.1},{:.1}\" fill=\"{color}\"/>\
                             <text x=\"{tx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"{anchor}\" fill=\"{color}\">{}</text>",
                            cy - 4.5,
                            cy + 4.5,
                            cy + 3.5,
                            fmt_ratio(iv.median)
                        );
                    } else {
                        let ring = if c.baseline && st.verdict == Some(Verdict::Regression) {
                            " stroke=\"#c0392b\" stroke-width=\"2\""
                        } else {
                            ""
                        };
                        let _ = writeln!(out, "<circle cx=\"{xm:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"{color}\"{ring}/>");
                    }
                    if c.baseline {
                        let text = format!(
                            "{}{}",
                            pct(iv.median),
                            match st.verdict {
                                Some(Verdict::Regression) => " R",
                                Some(Verdict::Inconclusive) => " ?",
                                _ => "",
                            }
                        );
                        let _ = writeln!(
                            out,
                            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{}\">{}</text>",
                            x0 + PW + 8.0,
                            cy + 4.0,
                            verdict_color(st.verdict),
                            esc(&text)
                        );
                    }
                }
            }
        }
        y = bottom + 52.0;
    }
    (out, width, y as u32)
}

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

/// The second picture: grouped horizontal bars, one group per op, one bar per backend,
/// log-scale ns/op. Returns the SVG document and its size.
fn absolute_chart(s: &Summary, subtitle: &str) -> Result<(String, u32, u32)> {
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

    let mut buf = String::new();
    {
    let root = SVGBackend::with_string(&mut buf, (width, height)).into_drawing_area();
    let draw_err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw the absolute chart: {e:?}");
    root.fill(&WHITE).map_err(draw_err)?;
    let (plot, legend) = root.split_vertically(plot_px);
    // Op i (top to bottom) is centred on y = n_ops - 1 - i; integer key points label it.
    let ops = s.ops.clone();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("absolute: ns/op, single thread, min over rounds (log scale, lower is better) - {subtitle}"),
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
        .x_label_formatter(&|x| {
            // label 1, 2 and 5 of each decade only: the others crowd on a log axis
            let m = x / 10f64.powf(x.log10().floor());
            if [1.0, 2.0, 5.0, 10.0].iter().any(|k| (m - k).abs() < 1e-6) {
                if *x >= 1.0 {
                    format!("{x:.0}")
                } else {
                    fmt_ns(*x)
                }
            } else {
                String::new()
            }
        })
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
    }
    Ok((buf, width, height))
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

/// The modes of `asked` (in the order the script runs them) that a process which ended
/// early never started: those after the first mode without a JSON line, the one it ended
/// in. Empty when every mode has its line.
pub fn modes_not_reached<'a>(stdout: &str, asked: &[&'a str]) -> Vec<&'a str> {
    let done: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<ModeLine>(l.trim()).ok())
        .map(|l| l.mode)
        .collect();
    match asked.iter().position(|m| !done.iter().any(|d| d == m)) {
        Some(i) => asked[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

impl Run {
    /// Takes the results of `modes` from `later`, a process that ran only those.
    pub fn take_modes(&mut self, later: Run, modes: &[&str]) {
        for &m in modes {
            match m {
                "single" => {
                    self.single = later.single.clone();
                    self.single_best = later.single_best;
                }
                "own2" => self.own2 = later.own2.clone(),
                "shared2" => self.shared2 = later.shared2.clone(),
                _ => {}
            }
        }
        if let Some(g) = later.gil_enabled {
            self.gil_enabled = Some(self.gil_enabled.unwrap_or(false) || g);
        }
    }
}

/// One process of bench_ops.py: `op` in `b`, the given modes. Returns what it printed
/// and, when it did not end well, how it ended; failed processes leave a log.
fn run_process(b: &Backend, op: &str, modes: &[&str], seconds: f64, tag: &str) -> (String, Option<String>) {
    let runs_dir = bench_dir().join("runs");
    let _ = fs::create_dir_all(&runs_dir);
    let out_path = runs_dir.join(format!("{}.out", b.spec.id()));
    let err_path = runs_dir.join(format!("{}.err", b.spec.id()));
    let spawn = || -> Result<Finished> {
        let mut cmd = backend_command(&b.python, &b.spec);
        cmd.arg(bench_script())
            .args(["--modules"])
            .arg(&b.modules)
            .args(["--op", op, "--mode", &modes.join(","), "--seconds", &format!("{seconds}"), "--json"])
            .current_dir(&b.modules)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", b.python.display()))?;
        // the modes of `seconds` plus start-up and calibration; a hang (a deadlock in an
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
    let ended = match &finished {
        Err(e) => Some(format!("{e:#}")),
        Ok(f) if f.success() => None,
        Ok(f) => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let shown: String = last.chars().take(160).collect();
            Some(format!("process {}{}", f.describe(), if shown.is_empty() { String::new() } else { format!(": {shown}") }))
        }
    };
    let errors = stdout.lines().any(|l| serde_json::from_str::<ModeLine>(l.trim()).is_ok_and(|l| l.error.is_some()));
    if ended.is_some() || errors && !stderr.trim().is_empty() {
        let logs = bench_dir().join("logs");
        let _ = fs::create_dir_all(&logs);
        let _ = fs::write(logs.join(format!("{}-{op}-{tag}.log", b.spec.id())), format!("{stdout}\n--- stderr ---\n{stderr}"));
    }
    (stdout, ended)
}

/// One run: `op` in `b`, the single thread and, in threaded rounds, the 2-thread modes.
/// A process that dies (a crash of an unsafe backend) fails the mode it was in; the
/// modes it never reached run in a fresh process, so each mode's failure is its own
/// (their scaling then divides by the single-thread throughput of the first process).
fn run_one(b: &Backend, op: &str, seconds: f64, threaded: bool, tag: &str) -> Run {
    let asked: &[&str] = if threaded { &["single", "own2", "shared2"] } else { &["single"] };
    let (stdout, ended) = run_process(b, op, asked, seconds, tag);
    let mut run = parse_run(&stdout, ended.as_deref().unwrap_or("no result"), asked);
    let mut left = if ended.is_some() { modes_not_reached(&stdout, asked) } else { Vec::new() };
    let mut attempt = 1;
    while !left.is_empty() {
        let (stdout, ended) = run_process(b, op, &left, seconds, &format!("{tag}-{attempt}"));
        run.take_modes(parse_run(&stdout, ended.as_deref().unwrap_or("no result"), &left), &left);
        left = if ended.is_some() { modes_not_reached(&stdout, &left) } else { Vec::new() };
        attempt += 1;
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
    /// Kit backends: scale2_own / scale2_shared over vanilla's on the same interpreter
    /// (median of the per-round ratios; below 1: the kit scales worse).
    scale2_own_vs_vanilla: Option<f64>,
    scale2_shared_vs_vanilla: Option<f64>,
    /// Kit backends: each comparison with its interval and verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ratios: Vec<JsonRatio>,
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
    /// The regression criterion: a ratio interval wholly above 1 + threshold_pct / 100.
    threshold_pct: f64,
    /// The coverage of the ratio intervals with this many rounds.
    interval_level: f64,
    /// Median and max of (hi - lo) / median over all single-thread ratio intervals.
    spread_median: Option<f64>,
    spread_max: Option<f64>,
    spread_max_at: Option<String>,
    /// Per kit backend, against its baseline (the previous step, or vanilla).
    verdicts: Vec<JsonVerdict>,
    ops: Vec<BTreeMap<&'static str, String>>,
    backends: Vec<JsonBackend>,
    build_failures: Vec<BTreeMap<&'static str, String>>,
    results: Vec<JsonResult>,
}

/// One comparison of a kit result in bench.json.
#[derive(Serialize)]
struct JsonRatio {
    /// "kit-step0", "vanilla-1.17.1", "upstream-2.1.1" on the same interpreter.
    vs: String,
    vs_label: String,
    /// "previous_step", "vanilla" or "upstream".
    against: &'static str,
    /// The comparison the step is judged by.
    baseline: bool,
    /// Median of the per-round ratios, and its interval.
    ratio: Option<f64>,
    lo: Option<f64>,
    hi: Option<f64>,
    level: Option<f64>,
    /// (hi - lo) / ratio.
    spread: Option<f64>,
    rounds_paired: usize,
    verdict: Option<Verdict>,
    per_round: Vec<Option<f64>>,
}

fn json_ratio(s: &Summary, c: &Comparison, st: RatioStat) -> JsonRatio {
    let iv = st.interval.as_ref();
    JsonRatio {
        vs: s.backends[c.other].family.name(),
        vs_label: s.backends[c.other].label(),
        against: c.against.key(),
        baseline: c.baseline,
        ratio: iv.map(|i| i.median),
        lo: iv.map(|i| i.lo),
        hi: iv.map(|i| i.hi),
        level: iv.map(|i| i.level),
        spread: iv.map(Interval::spread),
        rounds_paired: iv.map(|i| i.n).unwrap_or(0),
        verdict: st.verdict,
        per_round: st.per_round,
    }
}

/// Per kit backend: the verdict against its baseline over all ops.
#[derive(Serialize)]
struct JsonVerdict {
    backend: String,
    python: String,
    free_threaded: bool,
    baseline: String,
    regressions: Vec<String>,
    inconclusive: Vec<String>,
    faster: Vec<String>,
    geomean: JsonRatio,
}

fn json_verdicts(s: &Summary) -> Vec<JsonVerdict> {
    let mut out = Vec::new();
    for c in comparisons(&s.backends).iter().filter(|c| c.baseline) {
        let b = &s.backends[c.kit];
        let mut v = JsonVerdict {
            backend: b.family.name(),
            python: b.python.clone(),
            free_threaded: b.free_threaded,
            baseline: s.backends[c.other].family.name(),
            regressions: Vec::new(),
            inconclusive: Vec::new(),
            faster: Vec::new(),
            geomean: json_ratio(s, c, s.geomean_stat(c)),
        };
        for (oi, op) in s.ops.iter().enumerate() {
            match s.ratio_stat(c, oi).verdict {
                Some(Verdict::Regression) => v.regressions.push(op.clone()),
                Some(Verdict::Inconclusive) => v.inconclusive.push(op.clone()),
                Some(Verdict::Faster) => v.faster.push(op.clone()),
                _ => {}
            }
        }
        out.push(v);
    }
    out
}

fn json_results(s: &Summary) -> Vec<JsonResult> {
    let comps = comparisons(&s.backends);
    let mut out = Vec::new();
    for (oi, op) in s.ops.iter().enumerate() {
        for (bi, b) in s.backends.iter().enumerate() {
            let agg = s.aggs[oi][bi].clone();
            let mine: Vec<&Comparison> = comps.iter().filter(|c| c.kit == bi).collect();
            let median_vs = |j: usize| {
                Interval::of(&round_ratios(&agg.ns_best_runs, &s.aggs[oi][j].ns_best_runs).into_iter().flatten().collect::<Vec<_>>())
                    .map(|iv| iv.median)
            };
            let kit_t_vs = |a: Against| {
                mine.iter().find(|c| c.against == a && b.free_threaded).and_then(|c| median_vs(c.other))
            };
            let vs_vanilla = mine.iter().copied().find(|c| c.against == Against::Vanilla);
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
                ratio_vs_vanilla_t: kit_t_vs(Against::Vanilla),
                ratio_vs_upstream_t: kit_t_vs(Against::Upstream),
                ratio_vs_vanilla_same_python: vanilla_same.and_then(median_vs),
                scale2_own_vs_vanilla: vs_vanilla.and_then(|c| s.scale_ratio(c, oi, false)),
                scale2_shared_vs_vanilla: vs_vanilla.and_then(|c| s.scale_ratio(c, oi, true)),
                ratios: mine.iter().map(|c| json_ratio(s, c, s.ratio_stat(c, oi))).collect(),
                agg,
            });
        }
    }
    out
}

/// Whether round r of `rounds` runs the 2-thread modes: `threaded` of them, spread evenly
/// (the first round always when any).
pub fn threaded_round(r: u32, rounds: u32, threaded: u32) -> bool {
    let (r, n, k) = (r as u64, rounds.max(1) as u64, threaded.min(rounds) as u64);
    (r * k).div_ceil(n) != ((r + 1) * k).div_ceil(n)
}

/// "1 h 02 min", "12 min 05 s", "42 s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

pub fn report_paths() -> (PathBuf, PathBuf) {
    let dir = util::kit_target_dir();
    (dir.join("bench.json"), dir.join("bench.svg"))
}

pub fn run(args: BenchArgs) -> Result<bool> {
    let started_at = util::unix_now();
    let t0 = Instant::now();
    // Everything cheap is validated before any provisioning starts.
    let rounds = args.rounds.unwrap_or(if args.quick { QUICK_ROUNDS } else { DEFAULT_ROUNDS });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let seconds = args.seconds.unwrap_or(if args.quick { QUICK_SECONDS } else { DEFAULT_SECONDS });
    if !(seconds > 0.0 && seconds <= 60.0) {
        bail!("--seconds must be above 0 and at most 60");
    }
    let threaded_rounds = args
        .threaded_rounds
        .unwrap_or(if args.quick { rounds } else { DEFAULT_THREADED_ROUNDS.min(rounds) })
        .min(rounds);
    let threshold_pct = args.threshold.unwrap_or(DEFAULT_THRESHOLD_PCT);
    if !(threshold_pct > 0.0 && threshold_pct < 100.0) {
        bail!("--threshold must be above 0 and below 100 (percent)");
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
    // a run: start-up and calibration, then `seconds` per mode
    let per_round = |threaded: bool| (ops.len() * n_b) as f64 * (if threaded { 3.0 * seconds + 0.1 } else { seconds + 0.07 });
    let estimates: Vec<f64> = (0..rounds).map(|r| per_round(threaded_round(r, rounds, threaded_rounds))).collect();
    let estimate: f64 = estimates.iter().sum();
    status(format!(
        "bench: {rounds} rounds ({threaded_rounds} with the 2-thread modes) x {} ops x {n_b} backends, {seconds} s per mode \
         (about {})",
        ops.len(),
        fmt_duration(Duration::from_secs_f64(estimate))
    ));
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); n_b]; ops.len()];
    let measure_start = Instant::now();
    for round in 0..rounds {
        let rt = Instant::now();
        for (oi, op) in ops.iter().enumerate() {
            for k in 0..n_b {
                let bi = (k + round as usize) % n_b;
                let threaded = threaded_round(round, rounds, threaded_rounds);
                let run = run_one(&backends[bi], op, seconds, threaded, &format!("r{round}"));
                runs[oi][bi].push(run);
            }
        }
        // the estimate of the rounds left, scaled by how the rounds so far compared with theirs
        let r = round as usize + 1;
        let left = measure_start.elapsed().mul_f64(estimates[r..].iter().sum::<f64>() / estimates[..r].iter().sum::<f64>());
        eprintln!(
            "    round {}/{rounds} ... done ({:.0}s{})",
            round + 1,
            rt.elapsed().as_secs_f64(),
            if round + 1 < rounds { format!(", about {} left", fmt_duration(left)) } else { String::new() }
        );
    }
    let measuring = measure_start.elapsed();
    let load_end = load_average();

    let summary = Summary {
        backends: backends.iter().map(|b| b.spec.clone()).collect(),
        ops: ops.clone(),
        aggs: runs.iter().map(|row| row.iter().map(|r| aggregate(r)).collect()).collect(),
        rounds,
        seconds,
        threshold: threshold_pct / 100.0,
    };
    let table = render_table(&summary);
    let spread = spread_summary(&summary);
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
                 ratios: per round, the kit run's fastest-batch ns/op (ns_best_runs) / the other backend's in the same \
                 round (a round runs every backend once per op, order rotated); ratio = median over rounds, [lo, hi] = order-statistic interval of \
                 that median ([x_(k), x_(n+1-k)], the largest k with binomial coverage >= 95%, else min..max with \
                 `level` its coverage); verdict: regression if lo > 1 + threshold, inconclusive if only hi is (or under \
                 3 rounds), faster if hi < 1 / (1 + threshold), else ok; ratio_vs_* = the median per-round ratio; \
                 scale2_*_vs_vanilla = median over the threaded rounds of (kit scale2_* / vanilla scale2_* of the same \
                 round, same interpreter)"
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
        threshold_pct,
        interval_level: interval_level(rounds as usize),
        spread_median: spread.as_ref().map(|x| x.0),
        spread_max: spread.as_ref().map(|x| x.1),
        spread_max_at: spread.as_ref().map(|x| x.2.clone()),
        verdicts: json_verdicts(&summary),
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
    println!("results: {} and {} (the ratio chart, then the absolute one)", json_path.display(), svg_path.display());
    println!("elapsed: {} (measuring {})", fmt_duration(t0.elapsed()), fmt_duration(measuring));

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
        let single_best = match single {
            ModeResult::Ok { ns, .. } => Some(ns * 0.9),
            _ => None,
        };
        Run { single, own2, shared2, single_best, gil_enabled: Some(false) }
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
        assert_eq!((a.runs, a.runs_threaded), (3, 3));
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
        assert_eq!(a.ns_best_runs, vec![Some(45.0), None, Some(63.0)]);
    }

    #[test]
    fn rounds_without_threads_count_for_nothing_in_scaling() {
        let runs = vec![
            run3(ok(100.0, 1e7), ok(60.0, 1.8e7), ok(80.0, 1.2e7)),
            run3(ok(90.0, 1.1e7), ModeResult::NotRun, ModeResult::NotRun),
            run3(ok(120.0, 0.8e7), ok(60.0, 1.2e7), ok(80.0, 0.8e7)),
        ];
        let a = aggregate(&runs);
        assert_eq!(a.ns_runs, vec![Some(100.0), Some(90.0), Some(120.0)]);
        assert_eq!(a.scale2_own_runs, vec![Some(1.8), None, Some(1.5)]);
        assert!((a.scale2_own.unwrap() - 1.65).abs() < 1e-9);
        assert_eq!((a.failed_own2, a.failed_shared2, a.shared_skipped), (0, 0, false));
        assert_eq!((a.runs, a.runs_threaded), (3, 2));
        assert!(a.errors.is_empty());
    }

    #[test]
    fn threaded_rounds_are_spread_evenly() {
        let pick = |rounds, k| (0..rounds).filter(|&r| threaded_round(r, rounds, k)).collect::<Vec<u32>>();
        assert_eq!(pick(3, 3), vec![0, 1, 2]);
        assert_eq!(pick(20, 4), vec![0, 5, 10, 15]);
        assert_eq!(pick(10, 3), vec![0, 3, 6]);
        assert_eq!(pick(5, 0), Vec::<u32>::new());
        assert_eq!(pick(2, 9), vec![0, 1]);
        assert_eq!(pick(1, 1), vec![0]);
    }

    #[test]
    fn parse_run_reads_lines_and_fills_missing_modes() {
        let out = r#"{"op":"cast","mode":"single","ns_per_op":70.5,"throughput":1.4e7,"gil_enabled":false}
not json
{"op":"cast","mode":"own2","error":"RuntimeError: boom","gil_enabled":false}
"#;
        let all = ["single", "own2", "shared2"];
        let run = parse_run(out, "process killed by signal 11 (SIGSEGV)", &all);
        assert_eq!(run.single, ok(70.5, 1.4e7));
        assert_eq!(run.single_best, None);
        assert_eq!(run.own2, ModeResult::Failed("RuntimeError: boom".into()));
        assert_eq!(run.shared2, ModeResult::Failed("process killed by signal 11 (SIGSEGV)".into()));
        assert_eq!(run.gil_enabled, Some(false));
        let skipped = parse_run(r#"{"mode":"shared2","skipped":"no objects","gil_enabled":true}"#, "x", &all);
        assert_eq!(skipped.shared2, ModeResult::Skipped);
        assert_eq!(skipped.gil_enabled, Some(true));
        // a single-thread-only round: the 2-thread modes did not run, they did not fail
        let single = parse_run(r#"{"mode":"single","ns_per_op":10.0,"ns_min":9.5,"throughput":1e8}"#, "gone", &["single"]);
        assert_eq!((single.single, single.single_best), (ok(10.0, 1e8), Some(9.5)));
        assert_eq!((single.own2, single.shared2), (ModeResult::NotRun, ModeResult::NotRun));
        let lost = parse_run("", "process timed out", &["single"]);
        assert_eq!((lost.single, lost.own2), (ModeResult::Failed("process timed out".into()), ModeResult::NotRun));
    }

    #[test]
    fn a_crash_ends_only_its_mode_and_the_rest_runs_again() {
        let all = ["single", "own2", "shared2"];
        let single = r#"{"op":"callback_new_free","mode":"single","ns_per_op":290.0,"ns_min":280.0,"throughput":3.4e6,"gil_enabled":false}"#;
        // died in own2: shared2 never started
        assert_eq!(modes_not_reached(&format!("{single}\n"), &all), vec!["shared2"]);
        // died in single: neither 2-thread mode started
        assert_eq!(modes_not_reached("Fatal Python error\n", &all), vec!["own2", "shared2"]);
        // died after its last line, or in its last mode: nothing left to run
        let own2 = r#"{"mode":"own2","error":"RuntimeError: x"}"#;
        let shared2 = r#"{"mode":"shared2","skipped":"no objects"}"#;
        assert!(modes_not_reached(&format!("{single}\n{own2}\n{shared2}\n"), &all).is_empty());
        assert!(modes_not_reached(&format!("{single}\n{own2}\n"), &all).is_empty());
        assert!(modes_not_reached("", &["single"]).is_empty());
        // a retry of the modes left: only they come from it
        let crash = "process killed by signal 11 (SIGSEGV)";
        let mut run = parse_run(single, crash, &all);
        assert_eq!(run.own2, ModeResult::Failed(crash.into()));
        let later = parse_run(r#"{"mode":"shared2","ns_per_op":300.0,"throughput":5e6,"gil_enabled":true}"#, "gone", &["shared2"]);
        run.take_modes(later, &["shared2"]);
        assert_eq!(run.single, ok(290.0, 3.4e6));
        assert_eq!(run.single_best, Some(280.0));
        assert_eq!(run.own2, ModeResult::Failed(crash.into()));
        assert_eq!(run.shared2, ok(300.0, 5e6));
        assert_eq!(run.gil_enabled, Some(true));
        // a retry that crashes too fails its own mode with its own message
        let mut run = parse_run("", crash, &all);
        run.take_modes(parse_run("", "process timed out", &["own2", "shared2"]), &["own2", "shared2"]);
        assert_eq!(run.single, ModeResult::Failed(crash.into()));
        assert_eq!(run.shared2, ModeResult::Failed("process timed out".into()));
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
        let agg = |ns: f64| Agg {
            ns_min: Some(ns),
            ns_runs: vec![Some(ns); 6],
            // the ratios come from the fastest batches (halved here, so that a ratio of
            // medians would not pass for one)
            ns_best_runs: vec![Some(ns * 0.5); 6],
            scale2_own: Some(1.9),
            scale2_shared: Some(1.2),
            ..Agg::default()
        };
        let failed = Agg { failed_single: 3, failed_own2: 3, failed_shared2: 3, ns_runs: vec![None; 6], ns_best_runs: vec![None; 6], ..Agg::default() };
        Summary {
            backends,
            ops: vec!["typeof_hit".into(), "new_function_type".into()],
            aggs: vec![
                vec![agg(20.0), agg(40.0), agg(20.0), agg(32.0), agg(25.0), agg(50.0)],
                vec![agg(180.0), agg(300.0), agg(210.0), agg(250.0), agg(190.0), failed],
            ],
            rounds: 6,
            seconds: 0.15,
            threshold: 0.05,
        }
    }

    #[test]
    fn order_statistic_coverage_is_binomial() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(order_stat_coverage(5, 1), 1.0 - 2.0 / 32.0));
        assert!(close(order_stat_coverage(6, 1), 1.0 - 2.0 / 64.0));
        assert!(close(order_stat_coverage(10, 2), 1.0 - 2.0 * 11.0 / 1024.0));
        assert!(close(order_stat_coverage(10, 3), 1.0 - 2.0 * 56.0 / 1024.0));
        assert!(close(order_stat_coverage(2, 1), 0.5));
        assert_eq!(order_stat_coverage(1, 1), 0.0);
        assert_eq!(order_stat_coverage(4, 3), 0.0);
        assert_eq!(order_stat_coverage(4, 0), 0.0);
        // large n stays finite and sane
        let c = order_stat_coverage(400, 180);
        assert!(c > 0.9 && c < 1.0, "{c}");
    }

    #[test]
    fn median_interval_rank_is_the_widest_level_keeping_one() {
        // n <= 5: even min..max is below 95%, so min..max
        for n in 1..=6 {
            assert_eq!(median_ci_rank(n, CI_LEVEL), 1, "n = {n}");
        }
        assert_eq!(median_ci_rank(9, CI_LEVEL), 2); // 0.961; k = 3 would be 0.820
        assert_eq!(median_ci_rank(10, CI_LEVEL), 2); // 0.979; k = 3: 0.891
        assert_eq!(median_ci_rank(12, CI_LEVEL), 3); // 0.961; k = 4: 0.854
        assert_eq!(median_ci_rank(20, CI_LEVEL), 6); // 0.959; k = 7: 0.885
        assert!((interval_level(3) - 0.75).abs() < 1e-12);
        assert!(interval_level(12) >= CI_LEVEL);
    }

    #[test]
    fn interval_is_median_and_order_statistics() {
        let iv = Interval::of(&[1.10, 1.00, f64::NAN, 1.02, 0.98, 1.05, 1.01]).unwrap();
        assert_eq!((iv.n, iv.lo, iv.hi), (6, 0.98, 1.10));
        assert!((iv.median - 1.015).abs() < 1e-12);
        assert!((iv.level - 0.96875).abs() < 1e-12);
        assert!((iv.spread() - 0.12 / 1.015).abs() < 1e-12);
        // 12 values: [x_3, x_10] of the sorted ones
        let v: Vec<f64> = (1..=12).map(|i| i as f64).collect();
        let iv = Interval::of(&v).unwrap();
        assert_eq!((iv.lo, iv.median, iv.hi), (3.0, 6.5, 10.0));
        assert_eq!(Interval::of(&[]), None);
        assert_eq!(Interval::of(&[f64::INFINITY]), None);
    }

    #[test]
    fn verdict_needs_the_whole_interval_beyond_the_threshold() {
        let iv = |lo: f64, hi: f64, n: usize| Interval { median: (lo + hi) / 2.0, lo, hi, level: 0.95, n };
        assert_eq!(Verdict::of(&iv(1.06, 1.20, 12), 0.05), Verdict::Regression);
        assert_eq!(Verdict::of(&iv(1.04, 1.20, 12), 0.05), Verdict::Inconclusive);
        assert_eq!(Verdict::of(&iv(0.97, 1.05, 12), 0.05), Verdict::Ok);
        assert_eq!(Verdict::of(&iv(0.90, 0.96, 12), 0.05), Verdict::Ok); // 0.96 > 1 / 1.05
        assert_eq!(Verdict::of(&iv(0.60, 0.95, 12), 0.05), Verdict::Faster);
        // the issue's quick-mode case: 1.54x in one run is no verdict when the interval is wide
        assert_eq!(Verdict::of(&iv(0.98, 1.54, 3), 0.05), Verdict::Inconclusive);
        // 3 rounds (75%) never call a regression or a speed-up, even when all agree
        let quick = |lo: f64, hi: f64| Interval { median: (lo + hi) / 2.0, lo, hi, level: 0.75, n: 3 };
        assert_eq!(Verdict::of(&quick(1.2, 1.3), 0.05), Verdict::Inconclusive);
        assert_eq!(Verdict::of(&quick(0.5, 0.6), 0.05), Verdict::Ok);
        assert_eq!(Verdict::of(&quick(0.97, 1.02), 0.05), Verdict::Ok);
        let one = Interval { median: 1.5, lo: 1.5, hi: 1.5, level: 0.0, n: 1 };
        assert_eq!(Verdict::of(&one, 0.05), Verdict::Inconclusive);
        assert_eq!(Verdict::of(&iv(1.06, 1.08, 12), 0.10), Verdict::Ok);
    }

    #[test]
    fn ratios_pair_rounds_and_geomeans_need_every_op() {
        let kit = [Some(100.0), Some(110.0), None, Some(105.0)];
        let other = [Some(100.0), Some(100.0), Some(90.0), Some(0.0)];
        assert_eq!(round_ratios(&kit, &other), vec![Some(1.0), Some(1.1), None, None]);
        let per_op = vec![vec![Some(2.0), Some(1.0), None], vec![Some(0.5), Some(4.0), Some(1.0)]];
        let g = round_geomeans(&per_op);
        assert!((g[0].unwrap() - 1.0).abs() < 1e-12 && (g[1].unwrap() - 2.0).abs() < 1e-12, "{g:?}");
        assert_eq!(g[2], None);
        assert!(round_geomeans(&[]).is_empty());
    }

    #[test]
    fn comparisons_pick_previous_step_then_vanilla_as_baseline() {
        let backends = vec![
            spec(Family::Kit(0), false),
            spec(Family::Kit(0), true),
            spec(Family::Kit(2), true),
            spec(Family::Vanilla, true),
            spec(Family::Upstream, false),
            spec(Family::Upstream, true),
        ];
        let c = comparisons(&backends);
        let of = |k: usize| c.iter().filter(|c| c.kit == k).map(|c| (c.other, c.against, c.baseline)).collect::<Vec<_>>();
        // GIL step 0: no vanilla on GIL here, so only 2.1.1, which is never a baseline
        assert_eq!(of(0), vec![(4, Against::Upstream, false)]);
        assert_eq!(of(1), vec![(3, Against::Vanilla, true), (5, Against::Upstream, false)]);
        // step 2's previous measured step is 0
        assert_eq!(
            of(2),
            vec![(1, Against::PrevStep(0), true), (3, Against::Vanilla, false), (5, Against::Upstream, false)]
        );
    }

    #[test]
    fn ratio_stats_come_from_paired_rounds() {
        let mut s = summary();
        s.rounds = 6;
        // kit-t vs vanilla-t on typeof_hit: one round of kit-t failed
        s.aggs[0][1].ns_best_runs = vec![Some(40.0), Some(44.0), None, Some(42.0), Some(41.0), Some(60.0)];
        s.aggs[0][3].ns_best_runs = vec![Some(40.0), Some(40.0), Some(40.0), Some(40.0), Some(40.0), Some(40.0)];
        let c = comparisons(&s.backends).into_iter().find(|c| c.kit == 1 && c.against == Against::Vanilla).unwrap();
        let st = s.ratio_stat(&c, 0);
        assert_eq!(st.per_round, vec![Some(1.0), Some(1.1), None, Some(1.05), Some(1.025), Some(1.5)]);
        let iv = st.interval.unwrap();
        assert_eq!((iv.n, iv.lo, iv.median, iv.hi), (5, 1.0, 1.05, 1.5));
        assert_eq!(st.verdict, Some(Verdict::Inconclusive));
    }

    #[test]
    fn kit_results_carry_ratios_intervals_and_verdicts() {
        let s = summary();
        let json = json_results(&s);
        let kit_t = json.iter().find(|r| r.backend == "kit-step0" && r.free_threaded && r.op == "typeof_hit").unwrap();
        assert_eq!(kit_t.ratio_vs_vanilla_t, Some(1.25));
        assert_eq!(kit_t.ratio_vs_upstream_t, Some(0.8));
        assert_eq!(kit_t.ratio_vs_vanilla_same_python, Some(1.25));
        let kit_gil = json.iter().find(|r| r.backend == "kit-step0" && !r.free_threaded && r.op == "typeof_hit").unwrap();
        assert_eq!(kit_gil.ratio_vs_vanilla_t, None);
        assert_eq!(kit_gil.ratio_vs_vanilla_same_python, Some(1.0));
        let v = serde_json::to_value(kit_t).unwrap();
        for key in ["backend", "python", "free_threaded", "op", "ns_per_op", "scale2_own", "scale2_shared", "ns_median", "errors"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let ratios = v["ratios"].as_array().unwrap();
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios[0]["vs"], "vanilla-1.17.1");
        assert_eq!(ratios[0]["against"], "vanilla");
        assert_eq!(ratios[0]["baseline"], true);
        assert_eq!(ratios[0]["ratio"], 1.25);
        assert_eq!(ratios[0]["lo"], 1.25);
        assert_eq!(ratios[0]["verdict"], "regression");
        assert_eq!(ratios[1]["verdict"], "faster");
        assert_eq!(ratios[1]["per_round"], serde_json::json!(vec![0.8; 6]));
        // 2.1.1 t failed every run of new_function_type: no ratio, no verdict
        let nft = json.iter().find(|r| r.backend == "kit-step0" && r.free_threaded && r.op == "new_function_type").unwrap();
        let v = serde_json::to_value(nft).unwrap();
        assert_eq!(v["ratios"][1]["ratio"], serde_json::Value::Null);
        assert_eq!(v["ratios"][1]["verdict"], serde_json::Value::Null);
        // other backends have no ratios list
        let vanilla = serde_json::to_value(json.iter().find(|r| r.backend == "vanilla-1.17.1").unwrap()).unwrap();
        assert!(vanilla.get("ratios").is_none());

        let verdicts = json_verdicts(&s);
        assert_eq!(verdicts.len(), 2);
        let t = verdicts.iter().find(|v| v.free_threaded).unwrap();
        assert_eq!(t.baseline, "vanilla-1.17.1");
        assert_eq!(t.regressions, vec!["typeof_hit", "new_function_type"]); // 1.25 and 1.2
        let gil = verdicts.iter().find(|v| !v.free_threaded).unwrap();
        assert!(gil.regressions.is_empty() && gil.faster == vec!["new_function_type"], "{:?}", gil.faster);
        assert!((gil.geomean.ratio.unwrap() - (180.0f64 / 210.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn table_shows_values_ratio_intervals_verdicts_and_failures() {
        let t = render_table(&summary());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("op") && lines[1].contains("kit-step0"), "{t}");
        assert!(lines[2].contains("3.13.5t*") && lines[2].contains("3.13.5t!"), "{t}");
        let nft = lines.iter().find(|l| l.starts_with("new_function_type")).unwrap();
        assert!(nft.contains("ERR"), "{nft}");
        // the ratio table of kit-step0 on t: 40 / 32 = 1.25 (regression), 40 / 50 = 0.80
        let head = lines.iter().position(|l| l.starts_with("kit-step0-py") || l.starts_with("kit-step0 3.13.5t ")).unwrap();
        assert!(lines[head].contains("/ vanilla 3.13.5t*") && lines[head].contains("/ 2.1.1 3.13.5t!"), "{}", lines[head]);
        let row = lines[head + 1];
        assert!(row.starts_with("typeof_hit") && row.contains("1.25 [1.25, 1.25]R") && row.contains("0.80 [0.80, 0.80]"), "{row}");
        let nft = lines[head + 2];
        assert!(nft.contains("1.20 [1.20, 1.20]R") && nft.trim_end().ends_with('-'), "{nft}");
        let geo = lines[head + 3];
        // vanilla: geomean(1.25, 1.2) ; 2.1.1: rounds without every op count for nothing
        assert!(geo.starts_with("geomean") && geo.contains("1.22 [1.22, 1.22]R") && geo.trim_end().ends_with('-'), "{geo}");
        assert!(t.contains("97% interval of the median over 6 round(s)"), "{t}");
        let verdict = lines.iter().find(|l| l.trim_start().starts_with("kit-step0 3.13.5t vs")).unwrap();
        assert!(verdict.contains("REGRESSION beyond 5%: typeof_hit +25.0% [+25.0%, +25.0%]"), "{verdict}");
        let verdict = lines.iter().find(|l| l.trim_start().starts_with("kit-step0 3.13.5 vs")).unwrap();
        assert!(verdict.contains("no op regresses beyond 5%") && verdict.contains("faster: new_function_type"), "{verdict}");
        assert!(t.contains("spread of the ratio intervals") && t.contains("max 0.0%"), "{t}");
        assert!(t.contains("1.90/1.20") && t.contains("ERR/ERR"), "{t}");
        assert!(t.contains("PYTHON_GIL=0") && t.contains("forced, unsupported upstream"), "{t}");
    }

    #[test]
    fn scaling_is_reported_against_vanilla_round_by_round() {
        let mut s = summary();
        // op 0, per round (3 threaded rounds of 6): kit-t 0.75, 1.0, 0.5 ; vanilla-t 1.5, 1.25, 0.25
        let runs = |v: [f64; 3]| vec![Some(v[0]), None, Some(v[1]), None, Some(v[2]), None];
        s.aggs[0][1].scale2_own_runs = runs([0.75, 1.0, 0.5]);
        s.aggs[0][3].scale2_own_runs = runs([1.5, 1.25, 0.25]);
        s.aggs[0][1].scale2_shared_runs = runs([0.5, 0.5, 0.5]);
        s.aggs[0][3].scale2_shared_runs = runs([1.0, 1.0, 1.0]);
        let c = comparisons(&s.backends).into_iter().find(|c| c.kit == 1 && c.against == Against::Vanilla).unwrap();
        // per round 0.5, 0.8, 2.0: the median of the ratios (not 0.75 / 1.25, the ratio of the medians)
        assert_eq!(s.scale_ratio(&c, 0, false), Some(0.8));
        assert_eq!(s.scale_ratio(&c, 0, true), Some(0.5));
        assert_eq!(s.scale_ratio(&c, 1, false), None);
        let t = render_table(&s);
        let head = t.lines().position(|l| l.starts_with("2-thread scaling of the kit / vanilla")).expect(&t);
        let lines: Vec<&str> = t.lines().skip(head).collect();
        assert!(lines[1].contains("kit-step0") && lines[2].trim_end().ends_with("3.13.5t"), "{t}");
        assert!(lines[3].starts_with("typeof_hit") && lines[3].contains("-/-") && lines[3].trim_end().ends_with("0.80/0.50"), "{t}");
        let json = json_results(&s);
        let r = json.iter().find(|r| r.op == "typeof_hit" && r.step == Some(0) && r.free_threaded).unwrap();
        assert_eq!((r.scale2_own_vs_vanilla, r.scale2_shared_vs_vanilla), (Some(0.8), Some(0.5)));
        // without threaded rounds there is no such table
        assert!(!render_table(&summary()).contains("scaling of the kit / vanilla"));
    }

    #[test]
    fn failed_2_thread_runs_get_a_line_and_err_cells() {
        let mut s = summary();
        s.ops = vec!["callback_new_free".into(), "extern_python_from_c".into()];
        let threaded = |scale: Option<f64>| vec![scale, None, scale, None, scale, None];
        for row in s.aggs.iter_mut() {
            for a in row.iter_mut() {
                a.runs = 6;
                a.runs_threaded = 3;
                a.scale2_own_runs = threaded(Some(1.8));
                a.scale2_shared_runs = threaded(Some(1.5));
            }
        }
        let crash = "process killed by signal 11 (SIGSEGV)";
        // callback_new_free: the kit-t's own2 crashed in every threaded round, its shared2
        // in one; vanilla-t's shared2 in all
        let kit = &mut s.aggs[0][1];
        kit.failed_own2 = 3;
        kit.scale2_own_runs = vec![None; 6];
        kit.failed_shared2 = 1;
        kit.scale2_shared_runs = vec![Some(1.2), None, None, None, Some(1.2), None];
        kit.errors = vec![format!("own2: {crash}"), format!("shared2: {crash}")];
        let vanilla = &mut s.aggs[0][3];
        vanilla.failed_shared2 = 3;
        vanilla.scale2_shared_runs = vec![None; 6];
        vanilla.errors = vec![format!("shared2: {crash}")];
        // extern_python_from_c: vanilla-t's own2 crashed in every round
        s.aggs[1][3] = Agg { failed_own2: 3, scale2_own_runs: vec![None; 6], errors: vec![format!("own2: {crash}")], ..s.aggs[1][3].clone() };
        // (and summary()'s 2.1.1-t failed every run of op 1)

        let lines = failure_lines(&s, 22);
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {lines:#?}"));
        let kit = at("callback_new_free      kit-step0 3.13.5t ");
        assert!(lines[kit].ends_with("own2 failed in 3 of 3 runs, shared2 failed in 1 of 3 runs"), "{}", lines[kit]);
        assert_eq!(lines[kit + 1], format!("      own2: {crash}"));
        assert_eq!(lines[kit + 2], format!("      shared2: {crash}"));
        let van = at("callback_new_free      vanilla-1.17.1 3.13.5t*");
        assert!(lines[van].ends_with("shared2 failed in 3 of 3 runs"), "{}", lines[van]);
        assert!(lines[at("extern_python_from_c   vanilla-1.17.1 3.13.5t*")].ends_with("own2 failed in 3 of 3 runs"));
        let up = at("extern_python_from_c   upstream-2.1.1 3.13.5t!");
        assert!(lines[up].ends_with("single failed in 3 of 6 runs, own2 failed in 3 of 3 runs, shared2 failed in 3 of 3 runs"), "{}", lines[up]);
        assert_eq!(lines.len(), 3 + 2 + 2 + 1);
        // the GIL cells without failures have no line
        assert!(!lines.iter().any(|l| l.contains("3.13.5 ")), "{lines:#?}");

        let t = render_table(&s);
        let failed_at = t.find("\nfailed runs, per op and backend").expect(&t);
        let notes_at = t.find("ERR: every run failed").expect(&t);
        assert!(failed_at < notes_at && t[failed_at..].contains(&lines[kit]), "{t}");
        // the kit-t over vanilla-t scaling: own ERR (the kit failed), shared vERR (vanilla
        // failed, nothing to divide by); extern_python_from_c: vERR/shared 1.00
        let head = t.lines().position(|l| l.starts_with("2-thread scaling of the kit / vanilla")).expect(&t);
        let rows: Vec<&str> = t.lines().skip(head + 3).take(2).collect();
        assert!(rows[0].starts_with("callback_new_free") && rows[0].trim_end().ends_with("ERR/vERR"), "{t}");
        assert!(rows[1].starts_with("extern_python_from_c") && rows[1].trim_end().ends_with("vERR/1.00"), "{t}");
        // a ratio over the rounds where both worked is marked
        s.aggs[0][3].failed_shared2 = 1;
        s.aggs[0][3].scale2_shared_runs = vec![Some(1.5), None, None, None, Some(1.5), None];
        let c = comparisons(&s.backends).into_iter().find(|c| c.kit == 1 && c.against == Against::Vanilla).unwrap();
        assert_eq!(scale_vs_cell(&s, &c, 0, true), "0.80~");
        assert_eq!(scale_vs_cell(&s, &c, 0, false), "ERR");
        // summary() has 2.1.1-t failing op 1; without that: no section
        let mut clean = summary();
        clean.aggs[1][5] = clean.aggs[1][4].clone();
        let section = "\nfailed runs, per op";
        assert!(render_table(&summary()).contains(section) && !render_table(&clean).contains(section));
    }

    #[test]
    fn table_without_a_kit_has_no_ratio_tables() {
        let mut s = summary();
        s.backends = vec![spec(Family::Vanilla, true)];
        s.aggs = vec![vec![Agg::default()], vec![Agg { ns_min: Some(5.0), failed_single: 1, ..Agg::default() }]];
        let t = render_table(&s);
        assert!(!t.contains("ratio =") && !t.contains("geomean") && !t.contains("verdicts"), "{t}");
        assert!(t.contains("5.00~"), "{t}");
    }

    #[test]
    fn svg_has_the_ratio_chart_first_then_the_absolute_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bench.svg");
        let mut s = summary();
        s.backends.push(spec(Family::Kit(1), true));
        for (row, ns) in s.aggs.iter_mut().zip([41.0, 100.0]) {
            row.push(Agg { ns_min: Some(ns), ns_best_runs: vec![Some(ns * 0.5); 6], ..Agg::default() });
        }
        render_svg(&s, &path, "test").unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..200.min(svg.len())]);
        let ratio_at = svg.find("divided by another").unwrap();
        let abs_at = svg.find("absolute: ns/op").unwrap();
        assert!(ratio_at < abs_at);
        for panel in ["kit-step0</text>", "kit-step1</text>", "judged against kit-step0", "judged against vanilla-1.17.1"] {
            assert!(svg.contains(panel), "no {panel}");
        }
        assert!(svg.contains(">3.13.5t (free-threaded)<") && svg.contains(">3.13.5 (GIL)<") && svg.contains(">geomean<"));
        // step 1 vs step 0 on typeof_hit: 41 / 40 = +2.5%; step 0 t vs vanilla t: +25% regression
        assert!(svg.contains(">+2.5%<") && svg.contains(">+25.0% R<"), "verdict texts");
        // step 1 t on new_function_type: 100 / 300 (step 0) and 100 / 250 (vanilla) are off
        // the scale (0.5 ..): triangles at the edge with their values; 0.8 and 1.25 fit
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert!(svg.contains(">0.33</text>") && svg.contains(">0.40</text>"));
        for op in ["typeof_hit", "new_function_type"] {
            assert!(svg.contains(&format!(">{op}</text>")), "no ratio label {op}");
            assert!(svg.contains(&format!("\n{op}\n")), "no absolute label {op}");
        }
        // the nested absolute chart sits below the ratio chart
        assert_eq!(svg.matches("<svg").count(), 2);
        assert!(svg.contains("<svg x=\"0\" y=\""));
    }

    #[test]
    fn ratio_axis_clamps_and_ticks_do_not_crowd() {
        let (lo, hi) = RatioAxis::range(&[0.03, 1.2], 0.05);
        assert_eq!((lo, hi), (0.5, 1.2 * 1.03));
        assert_eq!(RatioAxis::range(&[0.7, 9.0], 0.05), (0.7 / 1.03, 2.0));
        let (lo, hi) = RatioAxis::range(&[0.99, 1.01], 0.05);
        assert!(lo < 1.0 / 1.05 && hi > 1.05 && lo >= 0.9 - 1e-12 && hi <= 1.1 + 1e-12, "{lo} {hi}");
        let axis = RatioAxis { lo: 0.25, hi: 4.0, x0: 100.0, w: 400.0 };
        assert_eq!(axis.x(0.01), 100.0);
        assert!((axis.x(1.0) - 300.0).abs() < 1e-9);
        let ticks = axis.ticks(34.0);
        assert!(ticks.contains(&1.0) && ticks.contains(&0.25) && ticks.contains(&4.0), "{ticks:?}");
        for w in ticks.windows(2) {
            assert!(axis.x(w[1]) - axis.x(w[0]) >= 34.0, "{ticks:?}");
        }
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(1.0), "1");
        assert_eq!(fmt_tick(1.5), "1.5");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(fmt_duration(Duration::from_secs(725)), "12 min 05 s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1 h 02 min");
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
        assert_eq!(
            select_ops(Some("callback_new_free,extern_python_from_c,callback_from_c")).unwrap(),
            vec!["callback_from_c", "extern_python_from_c", "callback_new_free"]
        );
        // renamed at step 4
        assert!(select_ops(Some("extern_python")).unwrap_err().to_string().contains("extern_python_from_c"));
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
        // and the other way round: every op of the script can be selected
        for line in script.lines() {
            let Some(rest) = line.strip_prefix("    \"") else { continue };
            let Some((name, _)) = rest.split_once("\": (op_") else { continue };
            assert!(OPS.iter().any(|(n, _)| *n == name), "{name} of bench_ops.py is not in OPS");
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
