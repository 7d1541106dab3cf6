//! Results: one cell per (step, interpreter, suite, parallel threads), the matrix that
//! shows them, and `target/cffi-ft/report.{json,md}`.
//!
//! Each command merges its cells into the existing report (a cell replaces the earlier
//! cell with the same key), so suites run by different commands share one report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::util;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub step: u32,
    /// "3.13.5"
    pub python: String,
    pub free_threaded: bool,
    /// "upstream" (cffi's own suite), "build" (compat-tests/test_build.py), ...
    pub suite: String,
    pub parallel_threads: u32,
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    /// Expected failures: upstream tests marked as hitting a known hazard that a
    /// later step fixes (the test-only patch's KNOWN_HAZARDS). Not in `skipped`.
    #[serde(default)]
    pub xfailed: u64,
    /// `sys._is_gil_enabled()` at the end of the run; None if the run did not finish.
    pub gil_enabled_after: Option<bool>,
    /// "ok", "failed", "crashed", "timed out" or "build failed".
    pub outcome: String,
    /// What went wrong, in one line (crash signal and site, build error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub duration_s: u64,
    pub log: String,
    pub run_at: u64,
    /// Suite `stress` only: per-scenario tallies over the K runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenarios: Option<BTreeMap<String, ScenarioTally>>,
    /// A comparison column (stress only): the backend that ran instead of the kit,
    /// "vanilla-1.17.1" (on 3.13t with PYTHON_GIL=0) or "upstream-2.1.1" (forced onto
    /// 3.13t); its `step` is 0 and means nothing. Judged by nothing: informational, so
    /// never bad (the exit status follows the kit's cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Suite `tsan` only: what ThreadSanitizer saw at this step (`cargo xtask tsan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsan: Option<TsanFindings>,
}

/// What ThreadSanitizer reported in one `tsan` cell: cffi's suite under
/// pytest-run-parallel and the stress suite at a reduced scale, on the TSan interpreter.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TsanFindings {
    /// Distinct unsuppressed reports per component ("unique-cache", …; "unattributed":
    /// cffi's or the kit's code but no hazard; "interpreter": no cffi or kit frame).
    pub races: BTreeMap<String, u64>,
    /// The distinct reports, most frequent first.
    pub reports: Vec<TsanReport>,
    /// Every suppression that matched, with its layer and reason.
    pub suppressions_used: Vec<TsanSuppressionUse>,
    /// What the instrumented runs themselves did, one line each ("upstream: 812 passed …").
    pub runs: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TsanReport {
    /// "data race: get_unique_type (_cffi_backend.c:4712) | ctypedescr_dealloc (…)": the
    /// report's kind and the top cffi/kit frame of each access stack.
    pub signature: String,
    pub hazard: Option<String>,
    pub component: String,
    /// Reports with this signature, over every process of both runs.
    pub count: u64,
    /// Which runs saw it: "upstream", "stress".
    pub seen_in: Vec<String>,
    /// The first such report, as TSan printed it (shortened).
    pub example: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TsanSuppressionUse {
    pub suppression: String,
    /// "cpython" or "kit".
    pub layer: String,
    pub hazard: Option<String>,
    pub reason: String,
    pub matches: u64,
}

/// One scenario's tallies over K runs (as written by the suite's --stress-json).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScenarioTally {
    pub component: String,
    #[serde(default)]
    pub hazards: Vec<String>,
    pub runs: u64,
    pub passed: u64,
    pub failed: u64,
    pub crashed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// Rounds per run (the suite's `rounds`, from --stress-rounds or --stress-scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
    /// When the run that gave these tallies ended (a stress cell merged from runs with
    /// `--only` holds scenarios of several runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<u64>,
}

impl Cell {
    pub fn key(&self) -> (u32, String, bool, String, u32, Option<String>) {
        (self.step, self.python.clone(), self.free_threaded, self.suite.clone(), self.parallel_threads, self.backend.clone())
    }

    /// The row of the cell in its matrix: "step 2", or the comparison backend.
    pub fn row(&self) -> String {
        match &self.backend {
            Some(b) => b.clone(),
            None => format!("step {}", self.step),
        }
    }

    pub fn column(&self) -> String {
        format!("{}{}", self.python, if self.free_threaded { "t" } else { "" })
    }

    /// A cell is bad if anything failed, or the GIL came back on a free-threaded build.
    pub fn is_bad(&self) -> bool {
        if self.backend.is_some() {
            return false;
        }
        if self.scenarios.is_some() || self.tsan.is_some() {
            // stress cells are judged against the series' expectations (stress.rs), tsan
            // cells by what their step claims (tsan/mod.rs)
            return self.outcome != "ok";
        }
        self.outcome != "ok"
            || self.failed > 0
            || self.errors > 0
            || (self.free_threaded && self.gil_enabled_after != Some(false))
    }

    fn text(&self) -> String {
        if let Some(t) = &self.tsan {
            return tsan_text(self, t);
        }
        let gil = match self.gil_enabled_after {
            Some(true) => "GIL on",
            Some(false) => "GIL off",
            None => "GIL ?",
        };
        let mut s = format!(
            "{} passed / {} failed / {} errors / {} skipped",
            self.passed, self.failed, self.errors, self.skipped
        );
        if self.xfailed > 0 {
            s.push_str(&format!(" / {} xfail", self.xfailed));
        }
        s.push_str(&format!(" · {gil}"));
        if self.outcome != "ok" && self.outcome != "failed" {
            s = format!("**{}** · {s}", self.outcome.to_uppercase());
        }
        if self.is_bad() {
            s.push_str(" ✗");
        }
        s
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub cffi_version: String,
    pub kit_version: String,
    pub generated_at: u64,
    pub cells: Vec<Cell>,
}

pub fn report_paths() -> (PathBuf, PathBuf) {
    let dir = util::kit_target_dir();
    (dir.join("report.json"), dir.join("report.md"))
}

/// The report on disk for `cffi_version`, if there is a readable one.
fn read_report(cffi_version: &str) -> Option<Report> {
    let (json_path, _) = report_paths();
    fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Report>(&t).ok())
        .filter(|r| r.cffi_version == cffi_version)
}

/// The cells of the report on disk for `cffi_version` (none when there is none).
pub fn existing_cells(cffi_version: &str) -> Vec<Cell> {
    read_report(cffi_version).map(|r| r.cells).unwrap_or_default()
}

/// Merges `cells` into the report on disk and rewrites report.json and report.md.
pub fn merge_and_write(cffi_version: &str, cells: &[Cell]) -> Result<Report> {
    let (json_path, md_path) = report_paths();
    let mut report = read_report(cffi_version)
        .unwrap_or(Report {
            cffi_version: cffi_version.to_string(),
            kit_version: String::new(),
            generated_at: 0,
            cells: Vec::new(),
        });
    report.kit_version = env!("CARGO_PKG_VERSION").to_string();
    report.generated_at = util::unix_now();
    for cell in cells {
        report.cells.retain(|c| c.key() != cell.key());
        report.cells.push(cell.clone());
    }
    report.cells.sort_by_key(|c| c.key());
    util::write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let md = format!(
        "# cffi-ft report: cffi {}\n\nKit {}. Cells: passed / failed / errors / skipped \
         (/ xfail: upstream tests that hit a known hazard which a later step fixes), and \
         whether the GIL was enabled at the end of the run. ✗ marks a cell that fails the \
         run.\n\n{}{}",
        report.cffi_version,
        report.kit_version,
        render_matrix(&report.cells),
        render_scenarios(&report.cells),
    ) + &render_tsan(&report.cells);
    util::write_atomic(&md_path, md.as_bytes())?;
    Ok(report)
}

/// A `tsan` cell in the matrix: distinct unsuppressed reports per component.
fn tsan_text(cell: &Cell, t: &TsanFindings) -> String {
    let mut parts: Vec<String> = t.races.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n}")).collect();
    if parts.is_empty() {
        parts.push("no report".into());
    }
    let suppressed: u64 = t.suppressions_used.iter().map(|s| s.matches).sum();
    let mut s = format!("{} · suppressed {suppressed}", parts.join(" · "));
    if cell.outcome != "ok" && cell.outcome != "failed" {
        s = format!("**{}** · {s}", cell.outcome.to_uppercase());
    }
    if cell.is_bad() {
        s.push_str(" ✗");
    }
    s
}

/// Per-step TSan table: rows are steps, columns components; then each step's distinct
/// reports and the suppressions that matched.
pub fn render_tsan(cells: &[Cell]) -> String {
    let mut cols: Vec<&Cell> = cells.iter().filter(|c| c.tsan.is_some()).collect();
    if cols.is_empty() {
        return String::new();
    }
    cols.sort_by_key(|c| c.key());
    let mut components: Vec<String> = Vec::new();
    for c in &cols {
        for k in c.tsan.as_ref().into_iter().flat_map(|t| t.races.keys()) {
            if !components.contains(k) {
                components.push(k.clone());
            }
        }
    }
    components.sort();
    let mut out = String::from(
        "## ThreadSanitizer (`cargo xtask tsan`): distinct unsuppressed reports per component\n\n| step |",
    );
    for comp in &components {
        let _ = write!(out, " {comp} |");
    }
    out.push_str(" suppressed (matches) | outcome |\n|---|");
    out.push_str(&"---|".repeat(components.len() + 2));
    out.push('\n');
    for c in &cols {
        let t = c.tsan.as_ref().expect("filtered");
        let row = if c.suite == "tsan" { c.step.to_string() } else { format!("{} ({})", c.step, c.suite) };
        let _ = write!(out, "| {row} |");
        for comp in &components {
            let _ = write!(out, " {} |", t.races.get(comp).copied().unwrap_or(0));
        }
        let suppressed: u64 = t.suppressions_used.iter().map(|s| s.matches).sum();
        let _ = writeln!(out, " {suppressed} | {} |", c.outcome);
    }
    for c in &cols {
        let t = c.tsan.as_ref().expect("filtered");
        let _ = writeln!(out, "\n### step {}{}\n", c.step, if c.suite == "tsan" { String::new() } else { format!(" ({})", c.suite) });
        for run in &t.runs {
            let _ = writeln!(out, "- {run}");
        }
        if let Some(d) = &c.detail {
            let _ = writeln!(out, "- verdict: {d}");
        }
        if !t.reports.is_empty() {
            out.push_str("\n| component | hazard | × | signature |\n|---|---|---|---|\n");
            for r in &t.reports {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | `{}` |",
                    r.component,
                    r.hazard.as_deref().unwrap_or("—"),
                    r.count,
                    r.signature.replace('|', "\\|")
                );
            }
        }
        if !t.suppressions_used.is_empty() {
            out.push_str("\n| suppression | layer | hazard | matches | reason |\n|---|---|---|---|---|\n");
            for s in &t.suppressions_used {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} | {} |",
                    s.suppression,
                    s.layer,
                    s.hazard.as_deref().unwrap_or("—"),
                    s.matches,
                    s.reason.replace('|', "\\|")
                );
            }
        }
    }
    out
}

/// Markdown tables: one per (suite, parallel threads); rows are steps, columns are
/// interpreters.
pub fn render_matrix(cells: &[Cell]) -> String {
    let groups: BTreeSet<(String, u32)> =
        cells.iter().map(|c| (c.suite.clone(), c.parallel_threads)).collect();
    let mut out = String::new();
    for (suite, threads) in groups {
        let in_group: Vec<&Cell> =
            cells.iter().filter(|c| c.suite == suite && c.parallel_threads == threads).collect();
        let mut columns: Vec<(String, bool, String)> = Vec::new();
        for c in &in_group {
            let col = (c.python.clone(), c.free_threaded, c.column());
            if !columns.contains(&col) {
                columns.push(col);
            }
        }
        columns.sort();
        // the kit's steps, then the comparison backends (None sorts first)
        let rows: BTreeSet<(Option<String>, u32)> = in_group.iter().map(|c| (c.backend.clone(), c.step)).collect();
        let threads_note = if suite == "stress" {
            // for stress cells the field holds the threads per scenario; counts are
            // scenarios, judged against the series' stress-expectations
            let compared = if rows.iter().any(|(b, _)| b.is_some()) {
                "; rows below the steps: comparison backends, not judged"
            } else {
                ""
            };
            format!(", T = {threads} threads per scenario; counts are scenarios (errors: crashed), judged by stress-expectations{compared}")
        } else if threads > 1 {
            format!(", pytest-run-parallel × {threads}")
        } else {
            String::new()
        };
        let _ = writeln!(out, "## suite `{suite}`{threads_note}\n");
        let _ = write!(out, "| step |");
        for (_, _, name) in &columns {
            let _ = write!(out, " {name} |");
        }
        let _ = write!(out, "\n|---|");
        for _ in &columns {
            let _ = write!(out, "---|");
        }
        out.push('\n');
        for (backend, step) in rows {
            match &backend {
                Some(b) => {
                    let _ = write!(out, "| {b} |");
                }
                None => {
                    let _ = write!(out, "| {step} |");
                }
            }
            for (python, ft, _) in &columns {
                let cell = in_group
                    .iter()
                    .find(|c| c.step == step && c.backend == backend && &c.python == python && c.free_threaded == *ft);
                let text = cell.map_or_else(|| "—".to_string(), |c| c.text());
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
        let mut notes: Vec<&&Cell> = in_group.iter().filter(|c| c.detail.is_some()).collect();
        // in the order of the rows
        notes.sort_by_key(|c| (c.backend.clone(), c.step, c.python.clone(), c.free_threaded));
        if !notes.is_empty() {
            out.push('\n');
            for c in notes {
                let _ = writeln!(out, "- {} / {}: {}", c.row(), c.column(), c.detail.as_deref().unwrap_or_default());
            }
        }
        out.push('\n');
    }
    out
}

/// Per-scenario table: rows are scenarios (grouped by component), columns are cells: the
/// kit's steps, then the comparison backends; the last row counts the scenarios that
/// passed every run.
pub fn render_scenarios(cells: &[Cell]) -> String {
    let mut cols: Vec<&Cell> = cells.iter().filter(|c| c.scenarios.is_some()).collect();
    if cols.is_empty() {
        return String::new();
    }
    cols.sort_by_key(|c| (c.backend.is_some(), c.backend.clone(), c.step, c.python.clone(), c.free_threaded, c.parallel_threads));
    let mut names: Vec<(String, String)> = Vec::new();
    for c in &cols {
        for (name, t) in c.scenarios.as_ref().into_iter().flatten() {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.clone(), t.component.clone()));
            }
        }
    }
    names.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let several_t = cols.iter().any(|c| c.parallel_threads != cols[0].parallel_threads);
    let mut out = String::from("## stress scenarios (passed / failed / crashed of runs)\n\n");
    if cols.iter().any(|c| c.backend.is_some()) {
        out.push_str(
            "Comparison columns, not judged: vanilla-1.17.1 is cffi 1.17.1 unpatched, run with PYTHON_GIL=0 on 3.13t; \
             upstream-2.1.1 is cffi 2.1.1 built for 3.13t against its refusal (forced). On 3.13t a run that ends \
             with the GIL enabled is a failure of their column.\n\n",
        );
    }
    out.push_str("| component | scenario |");
    for c in &cols {
        let t = if several_t { format!(" T={}", c.parallel_threads) } else { String::new() };
        out.push_str(&format!(" {} {}{t} |", c.row(), c.column()));
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
    out.push_str("| all | passed every run |");
    for c in &cols {
        let m = c.scenarios.as_ref().expect("columns have scenarios");
        let clean = m.values().filter(|t| t.runs > 0 && t.passed == t.runs).count();
        out.push_str(&format!(" {clean} of {} |", m.len()));
    }
    out.push('\n');
    out
}

/// Counts from a pytest junit XML file.
#[derive(Debug, Default, PartialEq)]
pub struct JunitCounts {
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    pub xfailed: u64,
}

pub fn parse_junit(xml: &str) -> Result<JunitCounts> {
    let doc = roxmltree::Document::parse(xml)?;
    let mut counts = JunitCounts::default();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let has = |tag: &str| case.children().any(|c| c.has_tag_name(tag));
        let (failure, error, skipped) = (has("failure"), has("error"), has("skipped"));
        let xfail = case
            .children()
            .any(|c| c.has_tag_name("skipped") && c.attribute("type") == Some("pytest.xfail"));
        if failure {
            counts.failed += 1;
        }
        if error {
            counts.errors += 1;
        }
        if skipped && !failure && !error {
            if xfail {
                counts.xfailed += 1;
            } else {
                counts.skipped += 1;
            }
        }
        if !failure && !error && !skipped {
            counts.passed += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(step: u32, ft: bool, failed: u64, gil: Option<bool>) -> Cell {
        Cell {
            step,
            python: "3.13.5".into(),
            free_threaded: ft,
            suite: "upstream".into(),
            parallel_threads: 1,
            passed: 10,
            failed,
            errors: 0,
            skipped: 1,
            xfailed: 0,
            gil_enabled_after: gil,
            outcome: if failed > 0 { "failed".into() } else { "ok".into() },
            detail: None,
            duration_s: 1,
            log: "x.log".into(),
            run_at: 0,
            scenarios: None,
            backend: None,
            tsan: None,
        }
    }

    #[test]
    fn junit_counts_each_outcome_once() {
        let xml = r#"<testsuites><testsuite>
            <testcase name="a"/>
            <testcase name="b"><failure message="x"/></testcase>
            <testcase name="c"><skipped message="s"/></testcase>
            <testcase name="d"><error message="e"/></testcase>
            <testcase name="e"><failure/><error/></testcase>
            <testcase name="f"/>
            <testcase name="g"><skipped type="pytest.xfail" message="known hazard"/></testcase>
        </testsuite></testsuites>"#;
        assert_eq!(
            parse_junit(xml).unwrap(),
            JunitCounts { passed: 2, failed: 2, errors: 2, skipped: 1, xfailed: 1 }
        );
        assert!(parse_junit("<not closed").is_err());
    }

    #[test]
    fn bad_cells() {
        assert!(!cell(0, false, 0, Some(true)).is_bad(), "the GIL is on in a GIL build");
        assert!(!cell(0, true, 0, Some(false)).is_bad());
        assert!(cell(0, true, 0, Some(true)).is_bad(), "GIL came back on t");
        assert!(cell(0, true, 0, None).is_bad(), "unknown GIL state on t");
        assert!(cell(0, false, 1, Some(true)).is_bad());
        let mut crashed = cell(0, false, 0, None);
        crashed.outcome = "crashed".into();
        assert!(crashed.is_bad());
    }

    fn stress(step: u32, backend: Option<&str>, passed: u64, failed: u64) -> Cell {
        let tally = |component: &str, ok: bool| ScenarioTally {
            component: component.into(),
            hazards: vec![],
            runs: 3,
            passed: if ok { 3 } else { 1 },
            failed: if ok { 0 } else { 2 },
            crashed: 0,
            details: vec![],
            rounds: Some(10),
            run_at: Some(5),
        };
        let mut scenarios = BTreeMap::new();
        for i in 0..passed {
            scenarios.insert(format!("s{:02}_ok", i + 1), tally("unique-cache", true));
        }
        for i in 0..failed {
            scenarios.insert(format!("s{:02}_bad", i + 20), tally("callbacks", false));
        }
        Cell {
            suite: "stress".into(),
            parallel_threads: 8,
            step,
            free_threaded: true,
            passed,
            failed,
            skipped: 0,
            outcome: "ok".into(),
            gil_enabled_after: Some(false),
            scenarios: Some(scenarios),
            backend: backend.map(str::to_string),
            ..cell(step, true, 0, Some(false))
        }
    }

    #[test]
    fn comparison_columns_come_after_the_steps_and_are_never_bad() {
        let mut vanilla = stress(0, Some("vanilla-1.17.1"), 1, 2);
        vanilla.detail = Some("the GIL was enabled at the end of the suite's process".into());
        let cells = vec![stress(0, None, 3, 0), vanilla.clone(), stress(4, None, 3, 0), stress(0, Some("upstream-2.1.1"), 2, 1)];
        assert!(!vanilla.is_bad(), "comparison columns are judged by nothing");
        let mut failed_kit = stress(4, None, 3, 0);
        failed_kit.outcome = "failed".into();
        assert!(failed_kit.is_bad());
        assert_ne!(cells[0].key(), cells[1].key(), "a comparison column has its own key");

        let md = render_matrix(&cells);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| step")).collect();
        assert!(rows[0].starts_with("| 0 | 3 passed") && rows[1].starts_with("| 4 |"), "{md}");
        assert!(rows[2].starts_with("| upstream-2.1.1 | 2 passed / 1 failed") && rows[3].starts_with("| vanilla-1.17.1 |"), "{md}");
        assert!(!md.contains('✗'), "{md}");
        assert!(md.contains("rows below the steps: comparison backends, not judged"), "{md}");
        assert!(md.contains("- vanilla-1.17.1 / 3.13.5t: the GIL was enabled"), "{md}");

        let table = render_scenarios(&cells);
        let head = table.lines().find(|l| l.starts_with("| component")).unwrap();
        assert_eq!(
            head,
            "| component | scenario | step 0 3.13.5t | step 4 3.13.5t | upstream-2.1.1 3.13.5t | vanilla-1.17.1 3.13.5t |"
        );
        assert!(table.contains("PYTHON_GIL=0") && table.contains("forced"), "{table}");
        let bad = table.lines().find(|l| l.contains("| s20_bad |")).unwrap();
        assert!(bad.ends_with("| — | — | 1/2/0 of 3 ✗ | 1/2/0 of 3 ✗ |"), "{bad}");
        assert!(table.lines().last().unwrap().ends_with("| 3 of 3 | 3 of 3 | 2 of 3 | 1 of 3 |"), "{table}");
        // report.json of before (no backend field) still reads, as kit cells
        let mut old = serde_json::to_value(stress(1, None, 1, 0)).unwrap();
        old.as_object_mut().unwrap().remove("backend");
        assert_eq!(serde_json::from_value::<Cell>(old).unwrap().backend, None);
    }

    #[test]
    fn matrix_has_a_row_per_step_and_a_column_per_interpreter() {
        let cells = vec![cell(0, false, 0, Some(true)), cell(0, true, 0, Some(false)), cell(1, true, 2, Some(false))];
        let md = render_matrix(&cells);
        assert!(md.contains("| step | 3.13.5 | 3.13.5t |"), "{md}");
        assert!(md.contains("| 0 | 10 passed / 0 failed / 0 errors / 1 skipped · GIL on | 10 passed"), "{md}");
        assert!(md.contains("| 1 | — | 10 passed / 2 failed"), "{md}");
        assert!(md.contains("✗"), "{md}");
    }
}
