//! `cargo xtask tsan`: the C side of each step under ThreadSanitizer.
//!
//! For each step, a cell on the TSan interpreter (`cargo xtask python --tsan`): the
//! interpreter's sysconfig carries `-fsanitize=thread`, so the patched `_cffi_backend`,
//! the shim and every module cffi's tests compile are instrumented; the Rust staticlib
//! is not (see MIGRATION.md: the shim annotates the seams). Then
//!
//! * cffi's own suite under pytest-run-parallel, skipping `thread_unsafe` tests (what
//!   cffi 2.x's own TSan job runs), and
//! * the stress suite at a reduced scale,
//!
//! with `TSAN_OPTIONS` writing every process's reports to files under
//! `target/cffi-ft/tsan/step<N>/`. The reports are read back (`parse`), deduplicated by
//! the top cffi/kit frame of each access and attributed to a hazard and component
//! (`attribute`); the suppressions are layered (`suppress`). A step's cell fails if a
//! report in cffi's or the kit's code is left whose hazard that step (or an earlier one)
//! claims to fix, or that no hazard explains.

pub mod attribute;
pub mod parse;
pub mod suppress;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cell::{self, Plan, Suite};
use crate::python::{self, Interpreter};
use crate::report::{self, Cell, TsanFindings, TsanReport, TsanSuppressionUse};
use crate::series::Series;
use crate::stress_suite::{self, StressArgs};
use crate::suite_run;
use crate::upstream::Upstream;
use crate::util::{self, status};
use attribute::{Attribution, INTERPRETER, UNATTRIBUTED};

#[derive(Args)]
pub struct TsanArgs {
    /// Steps: comma-separated numbers, `latest` or `all` (default: all steps).
    #[arg(long, value_name = "LIST")]
    pub steps: Option<String>,
    /// A free-threaded CPython built with --with-thread-sanitizer to use instead of the
    /// kit's (`cargo xtask python --tsan`, built when missing).
    #[arg(long = "python", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// What to run under TSan, comma-separated: upstream (cffi's suite, pytest-run-parallel,
    /// thread_unsafe tests skipped), stress (the stress suite at --scale).
    #[arg(long, value_name = "LIST", default_value = "upstream,stress")]
    pub suites: String,
    /// pytest-run-parallel threads for cffi's suite.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel_threads: u32,
    /// Stress runs per scenario.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub repeat: u32,
    /// Stress rounds: each scenario's default times F (TSan costs 5-15x).
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub scale: f64,
    /// Only these stress scenarios or components (as for `stress --only`).
    #[arg(long, value_name = "LIST")]
    pub only: Option<String>,
    /// `off`: run with the seam annotations (the shim's and tsan-sync's) disabled
    /// (CFFI_FT_TSAN_SEAMS=off), to show what TSan reports without them; the cells are
    /// `tsan-seams-off`, not judged.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    pub seams: String,
    /// Do not build or run anything: read the report files a previous run left under
    /// target/cffi-ft/tsan/ again (after a change to tsan-attribution, say).
    #[arg(long)]
    pub report_only: bool,
    /// Give up on one suite run after this many minutes.
    #[arg(long, value_name = "MIN", default_value_t = 60)]
    pub suite_timeout_min: u64,
}

impl TsanArgs {
    fn seams_off(&self) -> bool {
        self.seams == "off"
    }

    fn stress_args(&self) -> StressArgs {
        StressArgs {
            threads: 8,
            rounds: None,
            scale: self.scale,
            repeat: self.repeat,
            // TSan costs 5-15x: a scenario gets 5 minutes (at step 5 the 44 take 9.5 min
            // together; a scenario that hangs at an early step costs the whole timeout)
            timeout: 300,
            only: self.only.clone(),
            backends: "kit".into(),
        }
    }

    /// The cell's suite name and its folder under target/cffi-ft/tsan/.
    fn suite_name(&self) -> &'static str {
        if self.seams_off() {
            "tsan-seams-off"
        } else {
            "tsan"
        }
    }
}

/// The two things a step runs under TSan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Upstream,
    Stress,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Upstream => "upstream",
            Run::Stress => "stress",
        }
    }
}

fn parse_runs(list: &str) -> Result<Vec<Run>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let run = match name {
            "upstream" => Run::Upstream,
            "stress" => Run::Stress,
            other => bail!("--suites: unknown suite {other:?} (known: upstream, stress)"),
        };
        if !out.contains(&run) {
            out.push(run);
        }
    }
    if out.is_empty() {
        bail!("--suites: no suite selected");
    }
    Ok(out)
}

/// Everything that can be checked before anything is built: the suites, the steps, the
/// scale, the series' tables.
pub fn check_args(args: &TsanArgs, series: &Series) -> Result<Vec<u32>> {
    parse_runs(&args.suites)?;
    if args.parallel_threads == 0 {
        bail!("--parallel-threads must be at least 1");
    }
    if args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--scale must be positive");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    stress_suite::check_args(&args.stress_args())?;
    let attribution = Attribution::load(&series_file(series, "tsan-attribution"))?;
    kit_suppressions(series, &attribution)?;
    series.select_steps(args.steps.as_deref())
}

fn series_file(series: &Series, name: &str) -> PathBuf {
    util::workspace_root().join("shim-c").join("patches").join(&series.cffi_version).join(name)
}

fn kit_suppressions(series: &Series, attribution: &Attribution) -> Result<Vec<suppress::KitEntry>> {
    let path = series_file(series, "tsan-suppressions");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    suppress::parse_kit_file(&text, series, attribution).with_context(|| format!("{}", path.display()))
}

/// The TSan interpreter: the given one (which must be a TSan build) or the kit's.
pub fn interpreter(args: &TsanArgs) -> Result<Interpreter> {
    let interp = match &args.python {
        Some(path) => python::probe(path)?,
        None => python::ensure_tsan_build()?,
    };
    if !interp.tsan || !interp.free_threaded {
        bail!(
            "--python {}: not a free-threaded ThreadSanitizer build (configure --disable-gil --with-thread-sanitizer)",
            interp.executable.display()
        );
    }
    Ok(interp)
}

/// TSAN_OPTIONS for one run: reports to files under `log_dir`, the run goes on after a
/// report and keeps its own exit status, matched suppressions are printed at exit.
fn tsan_options(suppressions: &Path, log_dir: &Path, symbolizer: &Path) -> String {
    [
        format!("suppressions={}", suppressions.display()),
        format!("log_path={}", log_dir.join("tsan").display()),
        format!("external_symbolizer_path={}", symbolizer.display()),
        "halt_on_error=0".into(),
        "exitcode=0".into(),
        "print_suppressions=1".into(),
        // the suites end with threads of pytest-run-parallel and foreign-thread tests
        // still parked: not races
        "report_thread_leaks=0".into(),
        "history_size=4".into(),
    ]
    .join(" ")
}

pub fn run(series: Series, upstream: Upstream, steps: Vec<u32>, interp: Interpreter, args: &TsanArgs) -> Result<bool> {
    let runs = parse_runs(&args.suites)?;
    let attribution = Attribution::load(&series_file(&series, "tsan-attribution"))?;
    let kit = kit_suppressions(&series, &attribution)?;
    let cpython_file = python::cpython_source_tree(&interp.version)?
        .join("Tools")
        .join("tsan")
        .join("suppressions_free_threading.txt");
    let cpython = suppress::parse_cpython_file(
        &fs::read_to_string(&cpython_file).with_context(|| format!("cannot read {}", cpython_file.display()))?,
    );
    let symbolizer = python::llvm_symbolizer()
        .context("no llvm-symbolizer (Debian: llvm): TSan reports would have no function names")?;
    let root = util::kit_target_dir().join("tsan");
    // Building a cell runs the TSan interpreter (pip, setup.py): its reports go here and
    // do not count. Set once, before any thread: every child inherits it.
    let build_logs = root.join("build-logs");
    fs::create_dir_all(&build_logs)?;
    std::env::set_var("TSAN_OPTIONS", format!("exitcode=0 log_path={}", build_logs.join("tsan").display()));
    status(format!(
        "tsan: cffi {} from {}; steps {steps:?}; {}; runs {}",
        upstream.version,
        upstream.origin,
        interp.label(),
        runs.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
    ));
    let mut plan = Plan {
        series,
        upstream,
        steps: steps.clone(),
        interpreters: vec![interp.clone()],
        suites: vec![Suite::Upstream],
        parallel_threads: args.parallel_threads,
        jobs: 1,
        // pytest-timeout's thread method ends a hung run (a heap corrupted by a race,
        // at early steps) with the stacks in the log, instead of waiting for the suite
        // timeout; what TSan wrote until then stays in the report files
        // and no faulthandler: dumping tracebacks from a signal handler while TSan
        // reports a race deadlocks inside TSan's report lock (a crashed step-2 run
        // hung 11 minutes); TSan's own SEGV handler reports the crash instead
        pytest_args: vec![
            "--skip-thread-unsafe=True".into(),
            "--timeout=600".into(),
            "--timeout-method=thread".into(),
            "-p".into(),
            "no:faulthandler".into(),
        ],
        suite_timeout: Duration::from_secs(args.suite_timeout_min.max(1) * 60),
        env: Vec::new(),
    };
    let mut cells = Vec::new();
    let suite = args.suite_name();
    let earlier = report::existing_cells(&plan.upstream.version);
    for &step in &steps {
        let out = root.join(format!("step{step}{}", if args.seams_off() { "-seams-off" } else { "" }));
        let layers = suppress::layered(&cpython, &kit, step);
        if args.report_only {
            let mut findings = gather(&out, &runs, &attribution, &layers)?;
            let before = earlier.iter().find(|c| c.step == step && c.suite == suite && c.python == interp.version);
            findings.runs = before.and_then(|c| c.tsan.as_ref()).map(|t| t.runs.clone()).unwrap_or_default();
            let duration = before.map_or(0, |c| c.duration_s);
            cells.push(tsan_cell(&plan.series, step, &interp, args, &out, findings, duration));
            continue;
        }
        util::remove_dir_if_exists(&out)?;
        fs::create_dir_all(&out)?;
        let supp_file = out.join("suppressions.txt");
        suppress::write_file(&supp_file, step, &layers)?;
        let started = Instant::now();
        let built = match cell::reuse_or_build_cell(&plan, step, &interp) {
            Ok((built, _)) => built,
            Err(err) => {
                util::warn(format!("[{}] step {step}: {err:#}", interp.label()));
                let mut failed = cell::failed_cell(step, &interp, suite, args.parallel_threads, &err);
                failed.tsan = Some(TsanFindings::default());
                cells.push(failed);
                continue;
            }
        };
        let mut lines = Vec::new();
        for &run in &runs {
            let dir = out.join(run.name());
            fs::create_dir_all(&dir)?;
            let mut env = vec![
                ("TSAN_OPTIONS".to_string(), tsan_options(&supp_file, &dir, &symbolizer)),
                // empty: faulthandler stays off (see pytest_args)
                ("PYTHONFAULTHANDLER".to_string(), String::new()),
            ];
            if args.seams_off() {
                env.push(("CFFI_FT_TSAN_SEAMS".into(), "off".into()));
            }
            let line = match run {
                Run::Upstream => {
                    plan.env = env;
                    let c = suite_run::run_suite(&plan, step, &interp, &built, Suite::Upstream)?;
                    format!(
                        "upstream (pytest-run-parallel × {}, thread_unsafe skipped): {} passed / {} failed / {} errors / {} skipped · {} · {} s",
                        args.parallel_threads, c.passed, c.failed, c.errors, c.skipped, c.outcome, c.duration_s
                    )
                }
                Run::Stress => {
                    let stress_args = args.stress_args();
                    let label = format!("[{}] step {step}", interp.label());
                    let r = stress_suite::run_plain(&built, &dir, label, env, &stress_args)?;
                    let clean = r.scenarios.values().filter(|t| t.runs > 0 && t.passed == t.runs).count();
                    format!(
                        "stress (scale {}, K={}{}): {clean} of {} scenarios passed every run · {} · {} s",
                        args.scale,
                        args.repeat,
                        args.only.as_ref().map(|o| format!(", only {o}")).unwrap_or_default(),
                        r.scenarios.len(),
                        r.ended,
                        r.duration_s
                    )
                }
            };
            lines.push(line);
        }
        let mut findings = gather(&out, &runs, &attribution, &layers)?;
        findings.runs = lines;
        let cell = tsan_cell(&plan.series, step, &interp, args, &out, findings, started.elapsed().as_secs());
        status(format!("[{}] step {step}: tsan {}", interp.label(), summary_line(&cell)));
        cells.push(cell);
    }
    report::merge_and_write(&plan.upstream.version, &cells)?;
    let (json, md) = report::report_paths();
    println!("\n{}", report::render_tsan(&cells));
    println!("report: {} and {}", md.display(), json.display());
    let bad: Vec<&Cell> = cells.iter().filter(|c| c.is_bad()).collect();
    for c in &bad {
        eprintln!("FAILED tsan cell: step {}: {}", c.step, c.detail.as_deref().unwrap_or(&c.outcome));
    }
    Ok(bad.is_empty())
}

/// The cell of one step: judged (see [`judge`]), except with the seams off, where
/// reports are what the run is for.
fn tsan_cell(
    series: &Series,
    step: u32,
    interp: &Interpreter,
    args: &TsanArgs,
    out: &Path,
    findings: TsanFindings,
    duration_s: u64,
) -> Cell {
    let verdict = if args.seams_off() { None } else { judge(series, step, &findings) };
    let outcome = if verdict.is_none() { "ok" } else { "failed" };
    let mut cell =
        cell::bare_cell(step, interp, args.suite_name(), args.parallel_threads, outcome, out.display().to_string());
    cell.detail = verdict;
    cell.duration_s = duration_s;
    cell.tsan = Some(findings);
    cell
}

fn summary_line(cell: &Cell) -> String {
    let t = cell.tsan.as_ref().expect("a tsan cell");
    let races: Vec<String> = t.races.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n}")).collect();
    format!("{} ({})", cell.outcome, if races.is_empty() { "no report".into() } else { races.join(", ") })
}

/// Reads every report file under `out/<run>/`, attributes and deduplicates the reports,
/// and counts the suppressions that matched.
fn gather(out: &Path, runs: &[Run], attribution: &Attribution, layers: &[suppress::Suppression]) -> Result<TsanFindings> {
    let mut by_signature: BTreeMap<String, TsanReport> = BTreeMap::new();
    let mut matched: BTreeMap<String, u64> = BTreeMap::new();
    for run in runs {
        let dir = out.join(run.name());
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tsan.")))
            .collect();
        files.sort();
        for file in files {
            let text = fs::read_to_string(&file).unwrap_or_default();
            for (k, n) in parse::matched_suppressions(&text) {
                *matched.entry(k).or_insert(0) += n;
            }
            for r in parse::reports(&text) {
                let v = attribution.judge(&r);
                let entry = by_signature.entry(v.signature.clone()).or_insert_with(|| TsanReport {
                    signature: v.signature.clone(),
                    hazard: v.hazard.clone(),
                    component: v.component.clone(),
                    count: 0,
                    seen_in: Vec::new(),
                    example: shorten(&r.text, 40),
                });
                entry.count += 1;
                if !entry.seen_in.iter().any(|s| s == run.name()) {
                    entry.seen_in.push(run.name().to_string());
                }
            }
        }
    }
    let mut reports: Vec<TsanReport> = by_signature.into_values().collect();
    reports.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.signature.cmp(&b.signature)));
    // every component has its count, zero included
    let mut races: BTreeMap<String, u64> =
        attribute::COMPONENTS.iter().map(|(_, c)| (c.to_string(), 0)).collect();
    for r in &reports {
        *races.entry(r.component.clone()).or_insert(0) += 1;
    }
    let suppressions_used = matched
        .into_iter()
        .map(|(pattern, matches)| {
            let known = layers.iter().find(|s| s.pattern == pattern);
            TsanSuppressionUse {
                layer: known.map_or("?".into(), |s| s.layer.to_string()),
                hazard: known.and_then(|s| s.hazard.clone()),
                reason: known.map_or(String::new(), |s| s.reason.clone()),
                suppression: pattern,
                matches,
            }
        })
        .collect();
    Ok(TsanFindings { races, reports, suppressions_used, runs: Vec::new() })
}

fn shorten(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max_lines {
        return text.to_string();
    }
    format!("{}\n    … ({} more lines)", lines[..max_lines].join("\n"), lines.len() - max_lines)
}

/// None if the step is clean for what it claims; else what is wrong, in one line. A
/// report fails the step if it is in cffi's or the kit's code and its hazard is fixed at
/// this step or before (a hazard no patch names: at every step), or it is the kit's own
/// code, or it is unattributed at the last step.
/// Reports of hazards that later steps fix are expected; the interpreter's own are shown
/// but do not count (CPython's file suppresses what CPython knows).
fn judge(series: &Series, step: u32, findings: &TsanFindings) -> Option<String> {
    let bad: Vec<&TsanReport> = findings
        .reports
        .iter()
        .filter(|r| r.component != INTERPRETER)
        .filter(|r| match &r.hazard {
            Some(h) => series.fixing_step(h).is_none_or(|fixed| fixed <= step),
            // a finding the inventory lacks: before the last step, an unfixed hazard can
            // corrupt memory and make reports anywhere; the last step claims everything
            None if r.component == UNATTRIBUTED => step >= series.latest_step(),
            // the kit's own code (it exists only from the step that brings it)
            None => true,
        })
        .collect();
    if bad.is_empty() {
        return None;
    }
    let first = bad[0];
    Some(format!(
        "{} report(s) in what step {step} claims to be race-free, e.g. [{}{}] {}",
        bad.len(),
        first.component,
        first.hazard.as_ref().map(|h| format!(" {h}")).unwrap_or_default(),
        first.signature
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct TsanArgsOnly {
        #[command(flatten)]
        args: TsanArgs,
    }

    impl TsanArgs {
        fn parse_from(argv: [&str; 1]) -> TsanArgs {
            TsanArgsOnly::parse_from(argv).args
        }
    }

    fn report(component: &str, hazard: Option<&str>) -> TsanReport {
        TsanReport {
            signature: format!("data race: {component}"),
            hazard: hazard.map(str::to_string),
            component: component.into(),
            count: 1,
            seen_in: vec!["upstream".into()],
            example: String::new(),
        }
    }

    #[test]
    fn a_step_fails_on_what_it_claims_only() {
        let series = Series::load(crate::series::DEFAULT_CFFI).unwrap();
        let findings = |reports: Vec<TsanReport>| TsanFindings { reports, ..Default::default() };
        // F8 is fixed at step 5: expected at 4, a failure at 5
        let f8 = findings(vec![report("misc", Some("F8"))]);
        assert!(judge(&series, 4, &f8).is_none());
        assert!(judge(&series, 5, &f8).unwrap().contains("[misc F8]"));
        // the interpreter's own never count; unattributed and kit reports always do
        assert!(judge(&series, 5, &findings(vec![report(INTERPRETER, None)])).is_none());
        // unattributed: expected while hazards are left (they corrupt memory), a failure
        // at the last step
        assert!(judge(&series, 0, &findings(vec![report(UNATTRIBUTED, None)])).is_none());
        assert!(judge(&series, series.latest_step(), &findings(vec![report(UNATTRIBUTED, None)])).is_some());
        assert!(judge(&series, 1, &findings(vec![report("unique-cache", None)])).is_some());
    }

    #[test]
    fn a_clean_tsan_cell_is_not_bad() {
        let series = Series::load(crate::series::DEFAULT_CFFI).unwrap();
        let interp = Interpreter { executable: "/x".into(), version: "3.13.5".into(), free_threaded: true, tsan: true };
        let args = TsanArgs::parse_from(["tsan"]);
        let cell = tsan_cell(&series, 5, &interp, &args, Path::new("/out"), TsanFindings::default(), 1);
        assert_eq!(cell.outcome, "ok");
        assert!(!cell.is_bad(), "no GIL state is asked of a tsan cell");
        let bad = TsanFindings { reports: vec![report("misc", Some("F8"))], ..Default::default() };
        assert!(tsan_cell(&series, 5, &interp, &args, Path::new("/out"), bad, 1).is_bad());
    }

    #[test]
    fn suites_are_checked() {
        assert_eq!(parse_runs("upstream, stress,upstream").unwrap(), [Run::Upstream, Run::Stress]);
        assert!(parse_runs("clients").unwrap_err().to_string().contains("known: upstream, stress"));
        assert!(parse_runs(",").is_err());
    }

    #[test]
    fn options_send_reports_to_files_and_keep_going() {
        let o = tsan_options(Path::new("/s.txt"), Path::new("/out/upstream"), Path::new("/usr/bin/llvm-symbolizer"));
        for part in ["suppressions=/s.txt", "log_path=/out/upstream/tsan", "halt_on_error=0", "exitcode=0", "print_suppressions=1"] {
            assert!(o.split(' ').any(|p| p == part), "{part} missing from {o}");
        }
    }
}
