//! bench.json: every backend, every result with its ratios, intervals and verdicts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::backends::Family;

use super::stats::{comparisons, round_ratios, Against, Agg, Comparison, Interval, RatioStat, Summary, Verdict};

#[derive(Serialize)]
pub(super) struct JsonResult {
    pub(super) backend: String,
    pub(super) step: Option<u32>,
    pub(super) python: String,
    pub(super) free_threaded: bool,
    pub(super) label: String,
    pub(super) forced: bool,
    pub(super) unsafe_gil_off: bool,
    pub(super) op: String,
    pub(super) ns_per_op: Option<f64>,
    pub(super) scale2_own: Option<f64>,
    pub(super) scale2_shared: Option<f64>,
    pub(super) ratio_vs_vanilla_t: Option<f64>,
    pub(super) ratio_vs_upstream_t: Option<f64>,
    pub(super) ratio_vs_vanilla_same_python: Option<f64>,
    /// Kit backends: scale2_own / scale2_shared over vanilla's on the same interpreter
    /// (median of the per-round ratios; below 1: the kit scales worse).
    pub(super) scale2_own_vs_vanilla: Option<f64>,
    pub(super) scale2_shared_vs_vanilla: Option<f64>,
    /// Kit backends: each comparison with its interval and verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) ratios: Vec<JsonRatio>,
    #[serde(flatten)]
    pub(super) agg: Agg,
}

#[derive(Serialize)]
pub(super) struct JsonBackend {
    pub(super) backend: String,
    pub(super) label: String,
    pub(super) python: String,
    pub(super) free_threaded: bool,
    pub(super) python_executable: PathBuf,
    pub(super) env: BTreeMap<String, String>,
    pub(super) forced: bool,
    pub(super) unsafe_gil_off: bool,
    pub(super) cffi_version: String,
    pub(super) kit: Option<serde_json::Value>,
    pub(super) gil_enabled_at_import: Option<bool>,
    pub(super) build: String,
}

#[derive(Serialize)]
pub(super) struct JsonReport {
    pub(super) method: String,
    pub(super) started_at: u64,
    pub(super) duration_s: f64,
    pub(super) quick: bool,
    pub(super) rounds: u32,
    pub(super) seconds_per_mode: f64,
    pub(super) cpus: usize,
    pub(super) load_avg_start: Option<[f64; 3]>,
    pub(super) load_avg_end: Option<[f64; 3]>,
    pub(super) busy: bool,
    /// The regression criterion: a ratio interval wholly above 1 + threshold_pct / 100.
    pub(super) threshold_pct: f64,
    /// The coverage of the ratio intervals with this many rounds.
    pub(super) interval_level: f64,
    /// Median and max of (hi - lo) / median over all single-thread ratio intervals.
    pub(super) spread_median: Option<f64>,
    pub(super) spread_max: Option<f64>,
    pub(super) spread_max_at: Option<String>,
    /// Per kit backend, against its baseline (the previous step, or vanilla).
    pub(super) verdicts: Vec<JsonVerdict>,
    pub(super) ops: Vec<BTreeMap<&'static str, String>>,
    pub(super) backends: Vec<JsonBackend>,
    pub(super) build_failures: Vec<BTreeMap<&'static str, String>>,
    pub(super) results: Vec<JsonResult>,
}

/// One comparison of a kit result in bench.json.
#[derive(Serialize)]
pub(super) struct JsonRatio {
    /// "kit-step0", "vanilla-1.17.1", "upstream-2.1.1" on the same interpreter.
    pub(super) vs: String,
    pub(super) vs_label: String,
    /// "previous_step", "vanilla" or "upstream".
    pub(super) against: &'static str,
    /// The comparison the step is judged by.
    pub(super) baseline: bool,
    /// Median of the per-round ratios, and its interval.
    pub(super) ratio: Option<f64>,
    pub(super) lo: Option<f64>,
    pub(super) hi: Option<f64>,
    pub(super) level: Option<f64>,
    /// (hi - lo) / ratio.
    pub(super) spread: Option<f64>,
    pub(super) rounds_paired: usize,
    pub(super) verdict: Option<Verdict>,
    pub(super) per_round: Vec<Option<f64>>,
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
pub(super) struct JsonVerdict {
    pub(super) backend: String,
    pub(super) python: String,
    pub(super) free_threaded: bool,
    pub(super) baseline: String,
    pub(super) regressions: Vec<String>,
    pub(super) inconclusive: Vec<String>,
    pub(super) faster: Vec<String>,
    pub(super) geomean: JsonRatio,
}

pub(super) fn json_verdicts(s: &Summary) -> Vec<JsonVerdict> {
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

pub(super) fn json_results(s: &Summary) -> Vec<JsonResult> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::fixtures::summary;

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
}

