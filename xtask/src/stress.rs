//! `cargo xtask stress`: the threaded stress suite (`compat-tests/stress/`) run K times
//! per (step, interpreter) cell, judged against the expectations kept next to the
//! series (`shim-c/patches/<cffi>/stress-expectations`).
//!
//! Every scenario runs in its own subprocess (the suite's job), so a crash or a hang is
//! that scenario's result, not the run's. The cell gets `"suite": "stress"` and a
//! `"scenarios"` map `{name: {component, runs, passed, failed, crashed, rounds, run_at}}`.
//!
//! `--only` names scenarios or components of the suite; the known names come from the
//! suite's own registry, read from its source (`known_scenarios`: every
//! `@scenario(number, name, hazards, ...)` of `compat-tests/stress/cffi_stress/`, the
//! component from the first hazard's letter, as `cffi_stress.COMPONENTS` says), so an
//! unknown name is refused before anything is built or run. A run with `--only` merges
//! its scenarios into the stress cells already in report.json (`merge_cell`): the
//! scenarios it ran replace theirs, the others keep their figures (each scenario carries
//! its own `runs` and `run_at`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backends::{self, BackendSpec, Family, PipSource};
use crate::cell::{self, BuiltCell, Plan};
use crate::expectations::{self, Rule};
use crate::python::Interpreter;
use crate::report::{self, Cell, ScenarioTally};
use crate::util::{self, status, Finished, Step};

#[derive(Args)]
pub struct StressArgs {
    /// Threads per scenario.
    #[arg(long, value_name = "T", default_value_t = 8)]
    pub threads: u32,
    /// Rounds for every scenario (default: each scenario's own, times --scale).
    #[arg(long, value_name = "R")]
    pub rounds: Option<u32>,
    /// Multiply each scenario's default rounds (e.g. 0.1 for a short run).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub scale: f64,
    /// Subprocess runs per scenario (each counted in the scenario's tallies).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub repeat: u32,
    /// Seconds before one scenario run counts as hung.
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout: u32,
    /// Only these scenarios or components, comma-separated: a component (unique-cache,
    /// library-registry, callbacks, type-realization, per-thread-state, misc), a scenario's
    /// full name (s07_close_lib_once) or its id (s07). Their results are merged into the
    /// stress cells of report.json; the other scenarios keep their figures.
    #[arg(long, value_name = "LIST")]
    pub only: Option<String>,
    /// Columns, comma-separated: kit (the steps, judged by stress-expectations), vanilla
    /// (cffi 1.17.1 unpatched, on 3.13t with PYTHON_GIL=0) and upstream (cffi 2.1.1
    /// forced onto 3.13t). vanilla and upstream run on the free-threaded interpreters only
    /// and are judged by nothing: they show the kit's steps against them, scenario by
    /// scenario; a run that ends with the GIL on fails their column.
    #[arg(long, value_name = "LIST", default_value = "kit")]
    pub backends: String,
}

// ---------------------------------------------------------------------------------------
// The suite's scenarios, and --only

/// A scenario of the stress suite, as its `@scenario(number, name, hazards, rounds)`
/// declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownScenario {
    pub number: u32,
    pub name: String,
    pub component: String,
}

/// The suite's Python package (its registry is `__init__.py`).
fn stress_package() -> PathBuf {
    util::workspace_root().join("compat-tests").join("stress").join("cffi_stress")
}

/// The first string literal of `text` (after optional spaces) and what follows it.
fn string_literal(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &text[1..];
    let end = rest.find(quote)?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// `COMPONENTS = {"A": "unique-cache", ...}` of the registry: hazard letter -> component.
fn parse_components(init_py: &str) -> Result<BTreeMap<char, String>> {
    let mut out = BTreeMap::new();
    let mut lines = init_py.lines().skip_while(|l| !l.starts_with("COMPONENTS = {"));
    lines.next().context("no `COMPONENTS = {` in the registry")?;
    for line in lines.take_while(|l| !l.trim_start().starts_with('}')) {
        let Some((letter, rest)) = string_literal(line) else { continue };
        let (name, _) = string_literal(rest.trim_start().trim_start_matches(':')).with_context(|| format!("unreadable component line {line:?}"))?;
        let mut chars = letter.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => out.insert(c, name.to_string()),
            _ => bail!("component letter {letter:?} is not one letter"),
        };
    }
    if out.is_empty() {
        bail!("no component in the registry's COMPONENTS");
    }
    Ok(out)
}

/// The scenarios a component module registers: one `@scenario(number, "name",
/// ["hazard", ...], rounds=R)` per line.
fn parse_scenarios(module_py: &str, components: &BTreeMap<char, String>) -> Result<Vec<KnownScenario>> {
    let mut out = Vec::new();
    for (n, line) in module_py.lines().enumerate() {
        let Some(args) = line.trim_start().strip_prefix("@scenario(") else { continue };
        let bad = || anyhow::anyhow!("line {}: unreadable @scenario: {:?}", n + 1, line.trim());
        let (number, rest) = args.split_once(',').ok_or_else(bad)?;
        let number: u32 = number.trim().parse().map_err(|_| bad())?;
        let (name, rest) = string_literal(rest).ok_or_else(bad)?;
        let hazards = rest.trim_start().strip_prefix(',').ok_or_else(bad)?.trim_start().strip_prefix('[').ok_or_else(bad)?;
        let (hazard, _) = string_literal(hazards).ok_or_else(bad)?;
        let letter = hazard.chars().next().ok_or_else(bad)?;
        let component = components
            .get(&letter)
            .with_context(|| format!("line {}: hazard {hazard:?} names no component", n + 1))?;
        out.push(KnownScenario { number, name: name.to_string(), component: component.clone() });
    }
    Ok(out)
}

/// Every scenario of the suite, by number, read from its source (nothing is imported or
/// built): the registry's components and each module's `@scenario` lines.
pub fn known_scenarios() -> Result<Vec<KnownScenario>> {
    scan_package(&stress_package())
}

fn scan_package(dir: &Path) -> Result<Vec<KnownScenario>> {
    let init = dir.join("__init__.py");
    let text = fs::read_to_string(&init).with_context(|| format!("cannot read {}", init.display()))?;
    let components = parse_components(&text).with_context(|| init.display().to_string())?;
    let mut modules: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "py") && p.file_name().is_some_and(|n| n != "__init__.py"))
        .collect();
    modules.sort();
    let mut out: Vec<KnownScenario> = Vec::new();
    for path in modules {
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.extend(parse_scenarios(&text, &components).with_context(|| path.display().to_string())?);
    }
    out.sort_by_key(|s| s.number);
    if out.is_empty() {
        bail!("{}: no @scenario found", dir.display());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in out.iter().enumerate() {
        if !names.insert(s.name.as_str()) || (i > 0 && out[i - 1].number == s.number) {
            bail!("{}: scenario {} (number {}) is registered twice", dir.display(), s.name, s.number);
        }
    }
    Ok(out)
}

/// The scenario id `sNN` of a full name `sNN_...`.
fn scenario_id(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// The scenarios `--only` selects (full names, by number): each part names a component,
/// a scenario's full name or its id (`s07`). An unknown part is refused with the names
/// that are known.
pub fn select_only(spec: &str, known: &[KnownScenario]) -> Result<Vec<String>> {
    let mut components: Vec<&str> = known.iter().map(|s| s.component.as_str()).collect();
    components.sort_unstable();
    components.dedup();
    let mut picked: Vec<&KnownScenario> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let matching: Vec<&KnownScenario> =
            known.iter().filter(|s| s.component == part || s.name == part || scenario_id(&s.name) == part).collect();
        if matching.is_empty() {
            bail!(
                "--only: unknown scenario or component {part:?} (known components: {}; scenarios, by full name or id sNN: {})",
                components.join(", "),
                known.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        picked.extend(matching);
    }
    if picked.is_empty() {
        bail!("--only: no scenario selected");
    }
    picked.sort_by_key(|s| s.number);
    picked.dedup_by_key(|s| s.number);
    Ok(picked.into_iter().map(|s| s.name.clone()).collect())
}

/// The checks of the options that need no interpreter, no download and no build, so a
/// mistake is refused before anything runs. Returns the scenarios `--only` selects
/// (None: all of them).
pub fn check_args(args: &StressArgs) -> Result<Option<Vec<String>>> {
    if args.threads == 0 || args.repeat == 0 {
        bail!("--threads and --repeat must be at least 1");
    }
    if args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--scale must be positive");
    }
    backends::select_families(&args.backends)?;
    match &args.only {
        None => Ok(None),
        Some(spec) => Ok(Some(select_only(spec, &known_scenarios()?)?)),
    }
}

// ---------------------------------------------------------------------------------------

/// Judges a stress cell: bad only if a scenario that must pass did not pass every run.
pub fn judge(
    rules: &[Rule],
    step: u32,
    free_threaded: bool,
    scenarios: &BTreeMap<String, ScenarioTally>,
) -> (String, Option<String>) {
    let unexpected: Vec<String> = scenarios
        .iter()
        .filter(|(name, t)| {
            (t.failed > 0 || t.crashed > 0 || t.passed < t.runs)
                && expectations::must_pass(rules, step, free_threaded, name, &t.component)
        })
        .map(|(name, t)| format!("{name} ({} failed, {} crashed of {})", t.failed, t.crashed, t.runs))
        .collect();
    if unexpected.is_empty() {
        ("ok".into(), None)
    } else {
        ("failed".into(), Some(format!("expected to pass: {}", unexpected.join(", "))))
    }
}

/// Sets a stress cell's counts (of scenarios) from its tallies.
fn set_counts(cell: &mut Cell, scenarios: &BTreeMap<String, ScenarioTally>) {
    let count = |f: &dyn Fn(&ScenarioTally) -> bool| scenarios.values().filter(|t| f(t)).count() as u64;
    cell.passed = count(&|t| t.passed == t.runs && t.runs > 0);
    cell.failed = count(&|t| t.failed > 0 && t.crashed == 0);
    cell.errors = count(&|t| t.crashed > 0);
    cell.skipped = count(&|t| t.runs == 0);
}

/// Merges `new`, the stress cell of a run of only the scenarios `selected` (K = `repeat`
/// runs each), into `old`, the cell with the same key in the report: the selected
/// scenarios take this run's tallies (or go, when this run gave them none), the others
/// keep theirs with their own runs and run_at. Counts are recomputed over the merged
/// scenarios, the outcome too (`judge`) unless this run failed as a whole (no results:
/// then its outcome stands); the detail says what came from where.
pub fn merge_cell(
    old: &Cell,
    mut new: Cell,
    selected: &[String],
    repeat: u32,
    judge: impl Fn(&BTreeMap<String, ScenarioTally>) -> (String, Option<String>),
) -> Cell {
    let mut merged: BTreeMap<String, ScenarioTally> = old
        .scenarios
        .iter()
        .flatten()
        .filter(|(name, _)| !selected.contains(name))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let kept = merged.len();
    let fresh = new.scenarios.take().unwrap_or_default();
    let ran = fresh.len();
    merged.extend(fresh);
    set_counts(&mut new, &merged);
    if ran > 0 {
        let (outcome, detail) = judge(&merged);
        new.outcome = outcome;
        new.detail = detail;
    }
    let note = format!(
        "merged: {ran} scenario(s) from this run (--only, K={repeat}), {kept} kept from earlier runs (see each scenario's runs and run_at)"
    );
    new.detail = Some(match new.detail.take() {
        Some(d) => format!("{d}; {note}"),
        None => note,
    });
    new.scenarios = Some(merged);
    new
}

/// What one run of the stress suite needs: a venv's Python with the backend, the folder
/// its outputs go to, and the environment the backend runs in.
struct SuiteTarget<'a> {
    python: &'a Path,
    dir: &'a Path,
    /// "[3.13.5t] step 2", "[3.13.5t] vanilla-1.17.1"
    label: String,
    env: Vec<(String, String)>,
}

/// One run of the suite, read back.
struct SuiteRun {
    scenarios: BTreeMap<String, ScenarioTally>,
    gil_enabled_after: Option<bool>,
    finished: Finished,
    duration_s: u64,
    log: PathBuf,
    run_at: u64,
}

/// Runs the stress suite (the scenarios `only`, or all) in `target`.
fn run_suite(target: &SuiteTarget, args: &StressArgs, only: Option<&[String]>) -> Result<SuiteRun> {
    let json = target.dir.join("stress.json");
    let log = target.dir.join("stress.log");
    let junit = target.dir.join("stress.xml");
    let gil_file = target.dir.join("stress-gil.json");
    let tmp = target.dir.join("tmp-stress");
    fs::create_dir_all(&tmp)?;
    for f in [&json, &junit, &gil_file] {
        let _ = fs::remove_file(f);
    }
    let tests = util::workspace_root().join("compat-tests");
    let mut cmd = Command::new(target.python);
    cmd.args(["-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider"])
        .arg(tests.join("stress"))
        .arg(format!("--rootdir={}", tests.display()))
        .arg(format!("--junitxml={}", junit.display()))
        .arg(format!("--stress-json={}", json.display()))
        .arg(format!("--stress-threads={}", args.threads))
        .arg(format!("--stress-repeat={}", args.repeat))
        .arg(format!("--stress-timeout={}", args.timeout));
    match args.rounds {
        Some(r) => cmd.arg(format!("--stress-rounds={r}")),
        None => cmd.arg(format!("--stress-scale={}", args.scale)),
    };
    if let Some(only) = only {
        // full names: no scenario name is a part of another
        cmd.args(["-k", &only.join(" or ")]);
    }
    cmd.current_dir(&tmp)
        .env_remove("PYTHON_GIL")
        .env("PYTHONUNBUFFERED", "1")
        .env("CFFI_FT_GIL_STATE_FILE", &gil_file)
        .env("TMPDIR", &tmp);
    for (k, v) in &target.env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let finished = Step {
        label: format!("{}: stress suite (T={}, K={})", target.label, args.threads, args.repeat),
        cmd: &mut cmd,
        log: &log,
        timeout: Some(Duration::from_secs(6 * 3600)),
    }
    .run()?;
    let mut scenarios: BTreeMap<String, ScenarioTally> = fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("scenarios").cloned().or(Some(v)))
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let run_at = util::unix_now();
    for t in scenarios.values_mut() {
        t.run_at = Some(run_at);
    }
    Ok(SuiteRun {
        scenarios,
        gil_enabled_after: cell::read_gil_state(&gil_file),
        finished,
        duration_s: started.elapsed().as_secs(),
        log,
        run_at,
    })
}

/// The stress cell of a run: counts of scenarios, the outcome from `judge` (or the
/// failure of a run that gave no results).
fn stress_cell(
    run: SuiteRun,
    step: u32,
    interp: &Interpreter,
    threads: u32,
    backend: Option<String>,
    judge: impl Fn(&BTreeMap<String, ScenarioTally>) -> (String, Option<String>),
) -> Cell {
    let (mut outcome, mut detail) = judge(&run.scenarios);
    if run.scenarios.is_empty() {
        outcome = if run.finished.status.code().is_none() { "crashed".into() } else { "failed".into() };
        detail = Some(format!(
            "the stress suite produced no results ({}; see {})",
            run.finished.describe(),
            run.log.display()
        ));
    }
    let mut cell = Cell {
        step,
        python: interp.version.clone(),
        free_threaded: interp.free_threaded,
        suite: "stress".into(),
        parallel_threads: threads,
        passed: 0,
        failed: 0,
        errors: 0,
        skipped: 0,
        xfailed: 0,
        gil_enabled_after: run.gil_enabled_after,
        outcome,
        detail,
        duration_s: run.duration_s,
        log: run.log.display().to_string(),
        run_at: run.run_at,
        scenarios: None,
        backend,
        tsan: None,
    };
    set_counts(&mut cell, &run.scenarios);
    cell.scenarios = Some(run.scenarios);
    cell
}

/// The kit at `step` on `interp` (its cell built or reused through `cell`), judged by
/// the series' expectations.
fn run_cell(
    plan: &Plan,
    args: &StressArgs,
    only: Option<&[String]>,
    rules: &[Rule],
    step: u32,
    interp: &Interpreter,
) -> Result<Cell> {
    let (built, reused) = cell::reuse_or_build_cell(plan, step, interp)?;
    if reused {
        status(format!("[{}] step {step}: reusing the built cell {}", interp.label(), built.dir.display()));
    }
    let target = SuiteTarget {
        python: &built.python,
        dir: &built.dir,
        label: format!("[{}] step {step}", interp.label()),
        env: Vec::new(),
    };
    let run = run_suite(&target, args, only)?;
    Ok(stress_cell(run, step, interp, args.threads, None, |m| judge(rules, step, interp.free_threaded, m)))
}

/// How an unjudged run of the stress suite in a built cell went (`cargo xtask tsan`).
pub struct PlainRun {
    pub scenarios: BTreeMap<String, ScenarioTally>,
    /// "exit code 0", "killed by SIGSEGV", …
    pub ended: String,
    pub duration_s: u64,
}

/// The stress suite in `built` with `env` added (each scenario's child inherits it),
/// outputs in `dir`; not judged. `args.only` selects scenarios as for `stress --only`.
pub fn run_plain(built: &BuiltCell, dir: &Path, label: String, env: Vec<(String, String)>, args: &StressArgs) -> Result<PlainRun> {
    fs::create_dir_all(dir)?;
    let only = check_args(args)?;
    let target = SuiteTarget { python: &built.python, dir, label, env };
    let run = run_suite(&target, args, only.as_deref())?;
    Ok(PlainRun { scenarios: run.scenarios, ended: run.finished.describe(), duration_s: run.duration_s })
}

// ---------------------------------------------------------------------------------------
// Comparison columns: vanilla 1.17.1 and cffi 2.1.1 on 3.13t, not judged

/// The comparison backends' venvs (with the test requirements, unlike the bench's).
fn compare_dir() -> PathBuf {
    util::kit_target_dir().join("compare")
}

/// What a comparison backend's stress run adds to the environment: its own (vanilla on
/// 3.13t: PYTHON_GIL=0), passed on to the scenarios' child processes (which drop
/// PYTHON_GIL unless told), and on a free-threaded build a run that ends with the GIL
/// enabled fails (compat-tests/stress/child.py). Vanilla's API-mode fixtures are compiled
/// without the limited API, which 1.17.1 asks for and 3.13t lacks (as the kit's step 0
/// and the bench's modules do).
fn compare_env(spec: &BackendSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec.env().into_iter().collect();
    if let Some(gil) = spec.env().get("PYTHON_GIL") {
        env.push(("CFFI_FT_STRESS_PYTHON_GIL".into(), gil.clone()));
    }
    if spec.family == Family::Vanilla && spec.free_threaded {
        env.push(("CFFI_FT_STRESS_NO_LIMITED_API".into(), "1".into()));
    }
    if spec.free_threaded {
        env.push(("CFFI_FT_STRESS_REQUIRE_GIL_OFF".into(), "1".into()));
    }
    env
}

/// A comparison column: the stress suite in the venv of `spec` (built or reused through
/// `backends`), counted like a kit cell and judged by nothing. If the GIL was on at the
/// end of the suite's own process on 3.13t, the column says so.
fn run_compare_cell(args: &StressArgs, only: Option<&[String]>, spec: &BackendSpec, source: &PipSource, interp: &Interpreter) -> Result<Cell> {
    let requirements = backends::test_requirements()?;
    let (python, how) = backends::ensure_pip_backend(&compare_dir(), spec, interp, &source.tree, &source.sha256, &requirements)?;
    let probe = backends::probe(&python, spec).with_context(|| format!("{}: the backend does not import", spec.label()))?;
    status(format!("[{}] {}: {how}, cffi {} ({})", interp.label(), spec.label(), probe.version, probe.file));
    if interp.free_threaded && probe.gil_enabled != Some(false) {
        bail!("{}: the GIL is enabled after importing _cffi_backend", spec.label());
    }
    let dir = compare_dir().join(spec.id());
    let target = SuiteTarget {
        python: &python,
        dir: &dir,
        label: format!("[{}] {}", interp.label(), spec.family.name()),
        env: compare_env(spec),
    };
    let run = run_suite(&target, args, only)?;
    let mut cell = stress_cell(run, 0, interp, args.threads, Some(spec.family.name()), |_| ("ok".into(), None));
    if interp.free_threaded && cell.gil_enabled_after == Some(true) && cell.outcome == "ok" {
        cell.outcome = "failed".into();
        cell.detail = Some("the GIL was enabled at the end of the suite's process".into());
    }
    Ok(cell)
}

/// A comparison column whose backend could not be built or run.
fn failed_compare_cell(args: &StressArgs, spec: &BackendSpec, interp: &Interpreter, err: &anyhow::Error) -> Cell {
    let mut cell = cell::failed_cell(0, interp, "stress", args.threads, err);
    cell.log = compare_dir().join(spec.id()).join("build.log").display().to_string();
    cell.backend = Some(spec.family.name());
    cell
}

/// The comparison columns `--backends` asks for, on the free-threaded interpreters (on a
/// GIL build every backend is serialised by the GIL: nothing to compare).
fn compare_columns(plan: &Plan, vanilla: bool, upstream: bool) -> Result<Vec<(BackendSpec, PipSource, Interpreter)>> {
    if !(vanilla || upstream) {
        return Ok(Vec::new());
    }
    let ft: Vec<&Interpreter> = plan.interpreters.iter().filter(|i| i.free_threaded).collect();
    if ft.is_empty() {
        bail!("--backends vanilla/upstream: the comparison columns run on free-threaded interpreters, and none is selected");
    }
    let mut out = Vec::new();
    for (wanted, family) in [(vanilla, Family::Vanilla), (upstream, Family::Upstream)] {
        if !wanted {
            continue;
        }
        let source = if family == Family::Vanilla { backends::vanilla_source()? } else { backends::upstream_source()? };
        for interp in &ft {
            let spec = BackendSpec { family, python: interp.version.clone(), free_threaded: true };
            out.push((spec, PipSource { tree: source.tree.clone(), sha256: source.sha256.clone() }, (*interp).clone()));
        }
    }
    Ok(out)
}

/// Runs the stress suite for every (step, interpreter) of the plan, and the comparison
/// columns of `--backends`. Returns whether every kit cell of this run is good (with
/// `--only`: judged on the scenarios it ran); comparison columns do not count.
pub fn run(plan: &Plan, args: &StressArgs) -> Result<bool> {
    let only = check_args(args)?;
    let (with_kit, with_vanilla, with_upstream) = backends::select_families(&args.backends)?;
    let rules = expectations::load(&plan.upstream.version)?;
    let compare = compare_columns(plan, with_vanilla, with_upstream)?;
    status(format!(
        "stress: {}; interpreters {}; T={} K={} {}",
        if with_kit { format!("steps {:?}", plan.steps) } else { "no kit steps".into() },
        plan.interpreters.iter().map(Interpreter::label).collect::<Vec<_>>().join(", "),
        args.threads,
        args.repeat,
        match args.rounds {
            Some(r) => format!("rounds={r}"),
            None => format!("scale={}", args.scale),
        }
    ));
    if !compare.is_empty() {
        status(format!(
            "stress: comparison columns (not judged): {}",
            compare.iter().map(|(s, _, _)| s.label()).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(only) = &only {
        status(format!("stress: only {} (merged into the stress cells of the report)", only.join(", ")));
    }
    let steps: &[u32] = if with_kit { &plan.steps } else { &[] };
    let mut cells = Vec::new();
    for chunk in plan.interpreters.chunks(plan.jobs.max(1)) {
        let results: Vec<Vec<Cell>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|interp| {
                    let (rules, only, compare) = (&rules, only.as_deref(), &compare);
                    scope.spawn(move || {
                        let mut out: Vec<Cell> = steps
                            .iter()
                            .map(|&step| {
                                run_cell(plan, args, only, rules, step, interp).unwrap_or_else(|err| {
                                    util::warn(format!("[{}] step {step} stress: {err:#}", interp.label()));
                                    cell::failed_cell(step, interp, "stress", args.threads, &err)
                                })
                            })
                            .collect();
                        for (spec, source, _) in compare.iter().filter(|(_, _, i)| i.executable == interp.executable) {
                            out.push(run_compare_cell(args, only, spec, source, interp).unwrap_or_else(|err| {
                                util::warn(format!("[{}] {} stress: {err:#}", interp.label(), spec.label()));
                                failed_compare_cell(args, spec, interp, &err)
                            }));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("stress runner panicked")).collect()
        });
        cells.extend(results.into_iter().flatten());
    }
    cells.sort_by_key(|c| c.key());
    let good = cells.iter().all(|c| !c.is_bad());
    if let Some(selected) = &only {
        let existing = report::existing_cells(&plan.upstream.version);
        cells = cells
            .into_iter()
            .map(|new| match existing.iter().find(|old| old.key() == new.key() && old.scenarios.is_some()) {
                Some(old) => {
                    let (step, ft, compared) = (new.step, new.free_threaded, new.backend.is_some());
                    merge_cell(old, new, selected, args.repeat, |m| {
                        if compared {
                            ("ok".into(), None)
                        } else {
                            judge(&rules, step, ft, m)
                        }
                    })
                }
                None => new,
            })
            .collect();
    }
    report::merge_and_write(&plan.upstream.version, &cells)?;
    println!("\n{}", report::render_matrix(&cells));
    println!("{}", report::render_scenarios(&cells));
    let (json, md) = report::report_paths();
    println!("report: {} and {}", md.display(), json.display());
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(component: &str, passed: u64, failed: u64, crashed: u64) -> ScenarioTally {
        ScenarioTally {
            component: component.into(),
            hazards: vec![],
            runs: passed + failed + crashed,
            passed,
            failed,
            crashed,
            details: vec![],
            rounds: None,
            run_at: None,
        }
    }

    #[test]
    fn judge_flags_only_unexpected_failures() {
        let rules = expectations::parse("* gil * pass\n1 t unique-cache pass\n* t * may-fail\n").unwrap();
        let mut m = BTreeMap::new();
        m.insert("s02".to_string(), tally("unique-cache", 3, 0, 0));
        m.insert("s14".to_string(), tally("callbacks", 0, 1, 2));
        assert_eq!(judge(&rules, 1, true, &m).0, "ok");
        m.insert("s03".to_string(), tally("unique-cache", 2, 0, 1));
        let (outcome, detail) = judge(&rules, 1, true, &m);
        assert_eq!(outcome, "failed");
        assert!(detail.unwrap().contains("s03 (0 failed, 1 crashed of 3)"));
        assert_eq!(judge(&rules, 1, false, &m).0, "failed", "GIL builds must pass everything");
    }

    fn known() -> Vec<KnownScenario> {
        known_scenarios().unwrap()
    }

    #[test]
    fn an_unknown_only_name_is_refused_with_the_known_ones() {
        let known = known();
        for bad in ["s99", "s0", "S02", "unique_cache", "s02,nope", "test_scenario"] {
            let err = select_only(bad, &known).unwrap_err().to_string();
            assert!(err.starts_with("--only: unknown scenario or component"), "{bad}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            for name in ["unique-cache", "per-thread-state", "misc", "s01_gil_stays_off", "s07_close_lib_once", "s44_freed_callback_pointer"] {
                assert!(err.contains(name), "{bad}: {name} not listed in {err}");
            }
        }
        assert!(select_only("s99", &known).unwrap_err().to_string().contains("\"s99\""));
        assert!(select_only(" , ", &known).unwrap_err().to_string().contains("no scenario selected"));
        assert!(check_args(&StressArgs { threads: 8, rounds: None, scale: 0.1, repeat: 1, timeout: 120, only: Some("s99".into()), backends: "kit".into() }).is_err());
    }

    #[test]
    fn only_takes_ids_full_names_and_components() {
        let known = known();
        assert_eq!(select_only("s02", &known).unwrap(), ["s02_array_type_churn"]);
        assert_eq!(select_only("s07_close_lib_once", &known).unwrap(), ["s07_close_lib_once"]);
        let registry = select_only("library-registry", &known).unwrap();
        assert_eq!(registry.iter().map(|n| scenario_id(n)).collect::<Vec<_>>(), ["s07", "s08", "s09", "s10", "s11", "s12", "s13", "s43"]);
        // by number, each once
        assert_eq!(select_only("s35, per-thread-state,s01", &known).unwrap(), ["s01_gil_stays_off", "s35_errno_per_thread"]);
        let all: usize = ["unique-cache", "library-registry", "callbacks", "type-realization", "per-thread-state", "misc"]
            .iter()
            .map(|c| select_only(c, &known).unwrap().len())
            .sum();
        assert_eq!(all, known.len());
    }

    #[test]
    fn the_suite_registry_is_read_from_its_source() {
        let known = known();
        assert_eq!(known.len(), 44, "{known:#?}");
        for (i, s) in known.iter().enumerate() {
            assert_eq!(s.number as usize, i + 1);
            assert!(s.name.starts_with(&format!("s{:02}_", s.number)), "{s:?}");
        }
        let s16 = known.iter().find(|s| s.number == 16).unwrap();
        assert_eq!((s16.name.as_str(), s16.component.as_str()), ("s16_foreign_pthread_callbacks", "callbacks"));
        let components = parse_components("X = 1\nCOMPONENTS = {\n    \"A\": \"unique-cache\",\n    'B': 'library-registry',\n}\n").unwrap();
        let module = "@scenario(3, \"s03_x\", [\"A1\", \"B2\"], rounds=5)\ndef s03(t, r, fx):\n    pass\n\n  @scenario(43, 's43_y', ['B2'], rounds=1)\n";
        let got = parse_scenarios(module, &components).unwrap();
        assert_eq!(got[0], KnownScenario { number: 3, name: "s03_x".into(), component: "unique-cache".into() });
        assert_eq!(got[1].component, "library-registry");
        assert!(parse_scenarios("@scenario(7, \"s07\", [\"Z1\"], rounds=1)", &components).unwrap_err().to_string().contains("Z1"));
        assert!(parse_scenarios("@scenario(seven, \"s07\", [\"A1\"])", &components).is_err());
        assert!(parse_scenarios("@scenario(\n    7, \"s07\", [\"A1\"])", &components).is_err(), "a decorator over lines is refused, not skipped");
    }

    /// The scan agrees with the suite's own registry (`cffi_stress.load_all()`), when a
    /// python3 is at hand (the registry imports no cffi).
    #[test]
    fn the_source_scan_agrees_with_the_python_registry() {
        let code = "import json, sys; sys.path.insert(0, sys.argv[1]); import cffi_stress; \
                    print(json.dumps([[s.number, s.name, s.component] for s in cffi_stress.load_all()]))";
        let dir = stress_package().parent().unwrap().to_path_buf();
        let Ok(out) = Command::new("python3").args(["-B", "-c", code]).arg(&dir).output() else {
            eprintln!("no python3 here: the scan is checked against the source only");
            return;
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let registry: Vec<(u32, String, String)> = serde_json::from_slice(&out.stdout).unwrap();
        let scanned: Vec<(u32, String, String)> = known().into_iter().map(|s| (s.number, s.name, s.component)).collect();
        assert_eq!(scanned, registry);
    }

    fn stress_cell(scenarios: &[(&str, ScenarioTally)]) -> Cell {
        let mut cell = Cell {
            step: 3,
            python: "3.13.5".into(),
            free_threaded: true,
            suite: "stress".into(),
            parallel_threads: 8,
            passed: 0,
            failed: 0,
            errors: 0,
            skipped: 0,
            xfailed: 0,
            gil_enabled_after: Some(false),
            outcome: "ok".into(),
            detail: None,
            duration_s: 1,
            log: "stress.log".into(),
            run_at: 0,
            scenarios: None,
            backend: None,
            tsan: None,
        };
        let map: BTreeMap<String, ScenarioTally> = scenarios.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        set_counts(&mut cell, &map);
        cell.scenarios = Some(map);
        cell
    }

    #[test]
    fn an_only_run_merges_into_the_existing_cell() {
        let rules = expectations::parse("* t unique-cache pass\n* t callbacks may-fail\n").unwrap();
        let judge = |m: &BTreeMap<String, ScenarioTally>| judge(&rules, 3, true, m);
        let with_run_at = |mut t: ScenarioTally, at| {
            t.run_at = Some(at);
            t
        };
        // a K=20 run of everything, earlier
        let old = stress_cell(&[
            ("s02_array_type_churn", with_run_at(tally("unique-cache", 20, 0, 0), 100)),
            ("s03_pointer_type_churn", with_run_at(tally("unique-cache", 20, 0, 0), 100)),
            ("s14_callback_create_call_drop", with_run_at(tally("callbacks", 17, 3, 0), 100)),
        ]);
        // now a K=1 run of s02 only, which fails
        let selected = vec!["s02_array_type_churn".to_string()];
        let mut new = stress_cell(&[("s02_array_type_churn", with_run_at(tally("unique-cache", 0, 1, 0), 200))]);
        new.outcome = "failed".into();
        new.run_at = 200;
        let merged = merge_cell(&old, new, &selected, 1, judge);
        let m = merged.scenarios.as_ref().unwrap();
        assert_eq!(m.len(), 3, "the other scenarios keep their figures");
        assert_eq!((m["s03_pointer_type_churn"].runs, m["s03_pointer_type_churn"].run_at), (20, Some(100)));
        assert_eq!((m["s14_callback_create_call_drop"].failed, m["s14_callback_create_call_drop"].runs), (3, 20));
        assert_eq!((m["s02_array_type_churn"].runs, m["s02_array_type_churn"].failed, m["s02_array_type_churn"].run_at), (1, 1, Some(200)));
        assert_eq!((merged.passed, merged.failed, merged.errors), (1, 2, 0));
        assert_eq!(merged.outcome, "failed");
        let detail = merged.detail.as_deref().unwrap();
        assert!(detail.starts_with("expected to pass: s02_array_type_churn (1 failed, 0 crashed of 1)"), "{detail}");
        assert!(detail.contains("merged: 1 scenario(s) from this run (--only, K=1), 2 kept from earlier runs"), "{detail}");
        assert_eq!(merged.run_at, 200);

        // s02 passes again: the merged cell is judged over all, and s14 may fail
        let new = stress_cell(&[("s02_array_type_churn", tally("unique-cache", 1, 0, 0))]);
        let again = merge_cell(&merged, new, &selected, 1, judge);
        assert_eq!(again.outcome, "ok");
        assert_eq!((again.passed, again.failed), (2, 1));

        // a run of s02 that gave no results (the suite crashed) drops s02's old figures,
        // keeps the others and keeps its own failure
        let mut broken = stress_cell(&[]);
        broken.outcome = "crashed".into();
        broken.detail = Some("the stress suite produced no results".into());
        let after = merge_cell(&old, broken, &selected, 1, judge);
        assert_eq!(after.outcome, "crashed");
        assert!(after.detail.as_deref().unwrap().starts_with("the stress suite produced no results; merged: 0 scenario(s)"));
        assert_eq!(after.scenarios.as_ref().unwrap().keys().collect::<Vec<_>>(), ["s03_pointer_type_churn", "s14_callback_create_call_drop"]);
    }

    #[test]
    fn comparison_columns_keep_the_gil_off_in_every_child() {
        let spec = |family, t| BackendSpec { family, python: "3.13.5".into(), free_threaded: t };
        let env = |family, t| compare_env(&spec(family, t)).into_iter().collect::<BTreeMap<_, _>>();
        let vanilla = env(Family::Vanilla, true);
        assert_eq!(vanilla.get("PYTHON_GIL").map(String::as_str), Some("0"));
        // the suite's children drop PYTHON_GIL unless told to set it
        assert_eq!(vanilla.get("CFFI_FT_STRESS_PYTHON_GIL").map(String::as_str), Some("0"));
        assert_eq!(vanilla.get("CFFI_FT_STRESS_REQUIRE_GIL_OFF").map(String::as_str), Some("1"));
        assert_eq!(vanilla.get("CFFI_FT_STRESS_NO_LIMITED_API").map(String::as_str), Some("1"));
        let upstream = env(Family::Upstream, true);
        for key in ["PYTHON_GIL", "CFFI_FT_STRESS_PYTHON_GIL", "CFFI_FT_STRESS_NO_LIMITED_API"] {
            assert!(!upstream.contains_key(key), "{key}: {upstream:?}");
        }
        assert_eq!(upstream.get("CFFI_FT_STRESS_REQUIRE_GIL_OFF").map(String::as_str), Some("1"));
        assert!(env(Family::Vanilla, false).is_empty());
        let args = |backends: &str| StressArgs { threads: 8, rounds: None, scale: 1.0, repeat: 1, timeout: 120, only: None, backends: backends.into() };
        assert!(check_args(&args("kit,vanilla,upstream")).is_ok());
        assert!(check_args(&args("kit,2.1.1")).unwrap_err().to_string().contains("unknown backend \"2.1.1\""));
    }
}
