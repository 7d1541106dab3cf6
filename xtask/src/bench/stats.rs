//! Runs and their aggregation, ratios per round, their intervals and verdicts
//! (Python-free, unit-tested).

use serde::{Deserialize, Serialize};

use crate::backends::{BackendSpec, Family, UPSTREAM_VERSION};

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
pub(super) struct ModeLine {
    pub(super) mode: String,
    ns_per_op: Option<f64>,
    ns_min: Option<f64>,
    throughput: Option<f64>,
    pub(super) error: Option<String>,
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
    pub(super) fn mark(self) -> &'static str {
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
    pub(super) fn key(self) -> &'static str {
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
    pub(super) fn other_label(&self, c: &Comparison) -> String {
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


#[cfg(test)]
pub(super) mod fixtures {
    //! Runs and a summary of six backends, for the tests of bench's modules.
    use super::*;
    use crate::backends::{BackendSpec, Family};

    pub(in crate::bench) fn ok(ns: f64, throughput: f64) -> ModeResult {
        ModeResult::Ok { ns, throughput }
    }

    pub(in crate::bench) fn run3(single: ModeResult, own2: ModeResult, shared2: ModeResult) -> Run {
        let single_best = match single {
            ModeResult::Ok { ns, .. } => Some(ns * 0.9),
            _ => None,
        };
        Run { single, own2, shared2, single_best, gil_enabled: Some(false) }
    }

    pub(in crate::bench) fn spec(family: Family, t: bool) -> BackendSpec {
        BackendSpec { family, python: "3.13.5".into(), free_threaded: t }
    }

    pub(in crate::bench) fn summary() -> Summary {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

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
    fn ratios_and_geomean() {
        assert_eq!(ratio(Some(50.0), Some(100.0)), Some(0.5));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert!((geomean(&[0.5, 2.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
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
}

