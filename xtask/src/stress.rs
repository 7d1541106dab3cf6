//! `cargo xtask stress`: the threaded stress suite (`compat-tests/stress/`) run K times
//! per (step, interpreter) cell, judged against the expectations kept next to the
//! series (`shim-c/patches/<cffi>/stress-expectations`).
//!
//! Every scenario runs in its own subprocess (the suite's job), so a crash or a hang is
//! that scenario's result, not the run's. The cell gets `"suite": "stress"` and a
//! `"scenarios"` map `{name: {component, runs, passed, failed, crashed}}`.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cell::{self, Plan};
use crate::python::Interpreter;
use crate::report::{self, Cell, ScenarioTally};
use crate::util::{self, status, Step};

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
    /// Only these scenarios or components (comma-separated, pytest -k syntax is not used).
    #[arg(long, value_name = "LIST")]
    pub only: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Expectations

/// What a step is expected to pass, one rule per line, first match wins:
/// `<step|N+|*> <gil|t|*> <scenario|component|*> <pass|may-fail>`. `N+` matches step N
/// and every later one, so a component fixed at step N is required from then on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    steps: StepRange,
    free_threaded: Option<bool>,
    selector: String,
    must_pass: bool,
}

/// The steps a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StepRange {
    Any,
    Exactly(u32),
    From(u32),
}

impl StepRange {
    fn contains(self, step: u32) -> bool {
        match self {
            StepRange::Any => true,
            StepRange::Exactly(s) => step == s,
            StepRange::From(s) => step >= s,
        }
    }
}

pub fn parse_expectations(text: &str) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [step, flavour, selector, expect] = words[..] else {
            bail!("expectations line {}: want 4 fields, got {:?}", n + 1, line);
        };
        let bad_step = || anyhow::anyhow!("expectations line {}: bad step {step:?} (want N, N+ or *)", n + 1);
        let steps = match step {
            "*" => StepRange::Any,
            s => match s.strip_suffix('+') {
                Some(from) => StepRange::From(from.parse().map_err(|_| bad_step())?),
                None => StepRange::Exactly(s.parse().map_err(|_| bad_step())?),
            },
        };
        let free_threaded = match flavour {
            "*" => None,
            "gil" => Some(false),
            "t" => Some(true),
            f => bail!("expectations line {}: flavour {f:?} is not gil, t or *", n + 1),
        };
        let must_pass = match expect {
            "pass" => true,
            "may-fail" => false,
            e => bail!("expectations line {}: {e:?} is not pass or may-fail", n + 1),
        };
        rules.push(Rule { steps, free_threaded, selector: selector.to_string(), must_pass });
    }
    Ok(rules)
}

/// Whether `scenario` (of `component`) must pass at `step` on this flavour.
pub fn must_pass(rules: &[Rule], step: u32, free_threaded: bool, scenario: &str, component: &str) -> bool {
    rules
        .iter()
        .find(|r| {
            r.steps.contains(step)
                && r.free_threaded.is_none_or(|f| f == free_threaded)
                && (r.selector == "*" || r.selector == scenario || r.selector == component)
        })
        .is_none_or(|r| r.must_pass)
}

pub fn load_expectations(cffi_version: &str) -> Result<Vec<Rule>> {
    let path = util::workspace_root()
        .join("shim-c")
        .join("patches")
        .join(cffi_version)
        .join("stress-expectations");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_expectations(&text).with_context(|| path.display().to_string())
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
                && must_pass(rules, step, free_threaded, name, &t.component)
        })
        .map(|(name, t)| format!("{name} ({} failed, {} crashed of {})", t.failed, t.crashed, t.runs))
        .collect();
    if unexpected.is_empty() {
        ("ok".into(), None)
    } else {
        ("failed".into(), Some(format!("expected to pass: {}", unexpected.join(", "))))
    }
}

fn run_cell(plan: &Plan, args: &StressArgs, rules: &[Rule], step: u32, interp: &Interpreter) -> Result<Cell> {
    let (built, reused) = cell::reuse_or_build_cell(plan, step, interp)?;
    if reused {
        status(format!("[{}] step {step}: reusing the built cell {}", interp.label(), built.dir.display()));
    }
    let json = built.dir.join("stress.json");
    let log = built.dir.join("stress.log");
    let junit = built.dir.join("stress.xml");
    let gil_file = built.dir.join("stress-gil.json");
    let tmp = built.dir.join("tmp-stress");
    fs::create_dir_all(&tmp)?;
    for f in [&json, &junit, &gil_file] {
        let _ = fs::remove_file(f);
    }
    let tests = util::workspace_root().join("compat-tests");
    let mut cmd = Command::new(&built.python);
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
    if let Some(only) = &args.only {
        let expr = only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" or ");
        cmd.args(["-k", &expr]);
    }
    cmd.current_dir(&tmp)
        .env_remove("PYTHON_GIL")
        .env("PYTHONUNBUFFERED", "1")
        .env("CFFI_FT_GIL_STATE_FILE", &gil_file)
        .env("TMPDIR", &tmp);
    let started = Instant::now();
    let finished = Step {
        label: format!("[{}] step {step}: stress suite (T={}, K={})", interp.label(), args.threads, args.repeat),
        cmd: &mut cmd,
        log: &log,
        timeout: Some(Duration::from_secs(6 * 3600)),
    }
    .run()?;
    let scenarios: BTreeMap<String, ScenarioTally> = fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("scenarios").cloned().or(Some(v)))
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let gil_enabled_after = cell::read_gil_state(&gil_file);
    let (mut outcome, mut detail) = judge(rules, step, interp.free_threaded, &scenarios);
    if scenarios.is_empty() {
        outcome = if finished.status.code().is_none() { "crashed".into() } else { "failed".into() };
        detail = Some(format!("the stress suite produced no results ({}; see {})", finished.describe(), log.display()));
    }
    let count = |f: &dyn Fn(&ScenarioTally) -> bool| scenarios.values().filter(|t| f(t)).count() as u64;
    Ok(Cell {
        step,
        python: interp.version.clone(),
        free_threaded: interp.free_threaded,
        suite: "stress".into(),
        parallel_threads: args.threads,
        passed: count(&|t| t.passed == t.runs && t.runs > 0),
        failed: count(&|t| t.failed > 0 && t.crashed == 0),
        errors: count(&|t| t.crashed > 0),
        skipped: count(&|t| t.runs == 0),
        xfailed: 0,
        gil_enabled_after,
        outcome,
        detail,
        duration_s: started.elapsed().as_secs(),
        log: log.display().to_string(),
        run_at: util::unix_now(),
        scenarios: Some(scenarios),
    })
}

/// Runs the stress suite for every (step, interpreter) of the plan.
pub fn run(plan: &Plan, args: &StressArgs) -> Result<bool> {
    if args.threads == 0 || args.repeat == 0 {
        bail!("--threads and --repeat must be at least 1");
    }
    if !(args.scale > 0.0) {
        bail!("--scale must be positive");
    }
    let rules = load_expectations(&plan.upstream.version)?;
    status(format!(
        "stress: steps {:?}; interpreters {}; T={} K={} {}",
        plan.steps,
        plan.interpreters.iter().map(Interpreter::label).collect::<Vec<_>>().join(", "),
        args.threads,
        args.repeat,
        match args.rounds {
            Some(r) => format!("rounds={r}"),
            None => format!("scale={}", args.scale),
        }
    ));
    let mut cells = Vec::new();
    for chunk in plan.interpreters.chunks(plan.jobs.max(1)) {
        let results: Vec<Vec<Cell>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|interp| {
                    let rules = &rules;
                    scope.spawn(move || {
                        plan.steps
                            .iter()
                            .map(|&step| {
                                run_cell(plan, args, rules, step, interp).unwrap_or_else(|err| {
                                    util::warn(format!("[{}] step {step} stress: {err:#}", interp.label()));
                                    cell::failed_cell(step, interp, "stress", args.threads, &err)
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("stress runner panicked")).collect()
        });
        cells.extend(results.into_iter().flatten());
    }
    cells.sort_by_key(|c| c.key());
    report::merge_and_write(&plan.upstream.version, &cells)?;
    println!("\n{}", report::render_matrix(&cells));
    println!("{}", render_scenarios(&cells));
    let (json, md) = report::report_paths();
    println!("report: {} and {}", md.display(), json.display());
    Ok(cells.iter().all(|c| !c.is_bad()))
}


/// Per-scenario table: rows are scenarios (grouped by component), columns are cells.
pub fn render_scenarios(cells: &[Cell]) -> String {
    let cols: Vec<&Cell> = cells.iter().filter(|c| c.scenarios.is_some()).collect();
    if cols.is_empty() {
        return String::new();
    }
    let mut names: Vec<(String, String)> = Vec::new();
    for c in &cols {
        for (name, t) in c.scenarios.as_ref().into_iter().flatten() {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.clone(), t.component.clone()));
            }
        }
    }
    names.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let mut out = String::from("## stress scenarios (passed / failed / crashed of runs)\n\n| component | scenario |");
    for c in &cols {
        out.push_str(&format!(" step {} {} |", c.step, c.column()));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(cols.len()));
    out.push('\n');
    for (name, component) in &names {
        out.push_str(&format!("| {component} | {name} |"));
        for c in &cols {
            let cell = c.scenarios.as_ref().and_then(|m| m.get(name));
            let text = cell.map_or("—".to_string(), |t| {
                let mark = if t.failed + t.crashed > 0 { " ✗" } else { "" };
                format!("{}/{}/{} of {}{mark}", t.passed, t.failed, t.crashed, t.runs)
            });
            out.push_str(&format!(" {text} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "# step flavour selector expect\n\
                         * gil * pass\n\
                         1 t unique-cache pass\n\
                         1 t s05_primitives may-fail   # a comment\n\
                         * t * may-fail\n";

    fn tally(component: &str, passed: u64, failed: u64, crashed: u64) -> ScenarioTally {
        ScenarioTally {
            component: component.into(),
            hazards: vec![],
            runs: passed + failed + crashed,
            passed,
            failed,
            crashed,
            details: vec![],
        }
    }

    #[test]
    fn first_matching_rule_wins_and_unknown_means_pass() {
        let rules = parse_expectations(RULES).unwrap();
        assert!(must_pass(&rules, 0, false, "s02", "unique-cache"));
        assert!(!must_pass(&rules, 0, true, "s02", "unique-cache"));
        assert!(must_pass(&rules, 1, true, "s02", "unique-cache"));
        assert!(!must_pass(&rules, 1, true, "s14", "callbacks"));
        assert!(must_pass(&[], 3, true, "x", "y"), "no rule: must pass");
    }

    #[test]
    fn a_step_plus_rule_holds_from_that_step_on() {
        let rules = parse_expectations("2+ t type-realization pass\n* t * may-fail\n").unwrap();
        assert!(!must_pass(&rules, 1, true, "s26", "type-realization"));
        assert!(must_pass(&rules, 2, true, "s26", "type-realization"));
        assert!(must_pass(&rules, 5, true, "s26", "type-realization"));
        assert!(!must_pass(&rules, 5, true, "s14", "callbacks"));
    }

    #[test]
    fn bad_expectation_lines_are_refused() {
        assert!(parse_expectations("0 t *").is_err());
        assert!(parse_expectations("x t * pass").is_err());
        assert!(parse_expectations("+ t * pass").is_err());
        assert!(parse_expectations("1++ t * pass").is_err());
        assert!(parse_expectations("0 nogil * pass").is_err());
        assert!(parse_expectations("0 t * maybe").is_err());
    }

    #[test]
    fn judge_flags_only_unexpected_failures() {
        let rules = parse_expectations(RULES).unwrap();
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

    #[test]
    fn the_real_expectations_parse() {
        for version in crate::series::known_versions() {
            load_expectations(&version).unwrap();
        }
    }
}
