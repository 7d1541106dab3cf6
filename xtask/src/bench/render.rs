//! The tables on stdout: ns/op, the ratios of each kit backend with their intervals and
//! verdicts, the verdicts, the spread of the intervals, the 2-thread scaling and the
//! failed runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::backends::{Family, KIT_CFFI, UPSTREAM_VERSION};

use super::prepare::bench_dir;

use super::stats::{comparisons, interval_level, spread_summary, Against, Agg, Comparison, RatioStat, Summary, Verdict};

pub(super) fn fmt_ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

/// "1.02 [0.99, 1.04]" and the verdict's mark.
pub(super) fn ratio_cell(st: &RatioStat) -> String {
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

pub(super) fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
}

pub(super) fn fmt_ns(x: f64) -> String {
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
pub(super) fn scale_vs_cell(s: &Summary, c: &Comparison, oi: usize, shared: bool) -> String {
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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::json::json_results;
    use crate::bench::stats::fixtures::{spec, summary};

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
}

