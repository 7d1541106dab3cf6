//! The threaded stress suite (`compat-tests/stress/`) itself, below the commands that
//! use it (`stress`, which judges it against the series' expectations, and `tsan`, which
//! runs it under ThreadSanitizer): its options, the registry of its scenarios (read
//! from the suite's source, for `--only`) and one run of it in a venv.
//!
//! `--only` names scenarios or components of the suite; the known names come from the
//! suite's own registry, read from its source (`known_scenarios`: every
//! `@scenario(number, name, hazards, ...)` of `compat-tests/stress/cffi_stress/`, the
//! component from the first hazard's letter, as `cffi_stress.COMPONENTS` says), so an
//! unknown name is refused before anything is built or run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backends;
use crate::cell::{self, BuiltCell};
use crate::report::ScenarioTally;
use crate::util::{self, Finished, Step};

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

/// The suite's components, in the registry's order of hazard letters (read from its
/// source, as [`known_scenarios`] is).
pub fn known_components() -> Result<Vec<String>> {
    Ok(read_components(&stress_package())?.into_values().collect())
}

/// The registry's `COMPONENTS` of the package in `dir` (its `__init__.py`).
fn read_components(dir: &Path) -> Result<BTreeMap<char, String>> {
    let init = dir.join("__init__.py");
    let text = fs::read_to_string(&init).with_context(|| format!("cannot read {}", init.display()))?;
    parse_components(&text).with_context(|| init.display().to_string())
}

/// Every scenario of the suite, by number, read from its source (nothing is imported or
/// built): the registry's components and each module's `@scenario` lines.
pub fn known_scenarios() -> Result<Vec<KnownScenario>> {
    scan_package(&stress_package())
}

fn scan_package(dir: &Path) -> Result<Vec<KnownScenario>> {
    let components = read_components(dir)?;
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


/// What one run of the stress suite needs: a venv's Python with the backend, the folder
/// its outputs go to, and the environment the backend runs in.
pub(crate) struct SuiteTarget<'a> {
    pub(crate) python: &'a Path,
    pub(crate) dir: &'a Path,
    /// "[3.13.5t] step 2", "[3.13.5t] vanilla-1.17.1"
    pub(crate) label: String,
    pub(crate) env: Vec<(String, String)>,
}

/// One run of the suite, read back.
pub(crate) struct SuiteRun {
    pub(crate) scenarios: BTreeMap<String, ScenarioTally>,
    pub(crate) gil_enabled_after: Option<bool>,
    pub(crate) finished: Finished,
    pub(crate) duration_s: u64,
    pub(crate) log: PathBuf,
    pub(crate) run_at: u64,
}

/// Runs the stress suite (the scenarios `only`, or all) in `target`.
pub(crate) fn run_suite(target: &SuiteTarget, args: &StressArgs, only: Option<&[String]>) -> Result<SuiteRun> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
