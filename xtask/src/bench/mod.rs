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
//! Modules: `prepare` (a backend ready to measure: its Python, probe and modules; the
//! vanilla and 2.1.1 venvs come from `crate::backends`), `run` (one process of
//! bench_ops.py, one run of an op), `stats` (runs, aggregation, ratios per round, their
//! intervals and verdicts), `render` (the tables), `svg` (bench.svg), `json` (bench.json);
//! this file has the options and the run that ties them together.
//!
//! Layout: `target/cffi-ft/bench/<backend>-py<label>/` (venv, source copy, build.log and
//! a stamp for vanilla and 2.1.1), `bench/modules/<backend>-py<label>/` (the API-mode and
//! ABI modules the ops use), `bench/logs/` (stderr of failed runs).

mod json;
mod prepare;
mod render;
mod run;
mod stats;
mod svg;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use crate::backends::{self, select_families, BackendSpec, Family, KIT_CFFI, UPSTREAM_SHA256};
use crate::cell::{Plan, Suite};
use crate::python::{self, Interpreter};
use crate::series::Series;
use crate::upstream;
use crate::util::{self, status, warn};

use self::json::{json_results, json_verdicts, JsonBackend, JsonReport};
use self::prepare::{prepare_backend, Backend, Source};
use self::render::render_table;
use self::run::{run_one, threaded_round};
use self::stats::{aggregate, interval_level, spread_summary, Run, Summary, DEFAULT_THRESHOLD_PCT};
use self::svg::render_svg;

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
        Some(backends::upstream_source()?.tree)
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
        env: Vec::new(),
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

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(fmt_duration(Duration::from_secs(725)), "12 min 05 s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1 h 02 min");
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
        assert!(is_busy(1.5, 2) && !is_busy(0.9, 2));
    }
}

