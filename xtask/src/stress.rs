//! `cargo xtask stress`: the threaded stress suite (`compat-tests/stress/`) run K times
//! per (step, interpreter) cell, judged against the expectations kept next to the
//! series (`shim-c/patches/<cffi>/stress-expectations`).
//!
//! Every scenario runs in its own subprocess (the suite's job), so a crash or a hang is
//! that scenario's result, not the run's. The cell gets `"suite": "stress"` and a
//! `"scenarios"` map `{name: {component, runs, passed, failed, crashed, rounds, run_at}}`.
//!
//! `--only` names scenarios or components of the suite (`stress_suite`, which also runs
//! it), refused before anything is built or run when unknown. A run with `--only` merges
//! its scenarios into the stress cells already in report.json (`merge_cell`): the
//! scenarios it ran replace theirs, the others keep their figures (each scenario carries
//! its own `runs` and `run_at`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::backends::{self, BackendSpec, Family, PipSource};
use crate::cell::{self, Plan};
use crate::expectations::{self, Rule};
use crate::python::Interpreter;
use crate::report::{self, Cell, ScenarioTally};
use crate::util::{self, status};

pub use crate::stress_suite::{check_args, StressArgs};
use crate::stress_suite::{run_suite, SuiteRun, SuiteTarget};

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
