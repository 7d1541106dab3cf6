//! `cargo xtask test-upstream`: for each step and interpreter, build the patched
//! backend into its own venv (a cell, see `cell`) and run cffi's own suite (plus the
//! kit's build checks and the real clients) against it.
//!
//! test-upstream rebuilds every cell from scratch (`cell::build_cell`), so a result never
//! depends on an earlier run's leftovers; each suite adds its junit XML, GIL state and log
//! to the cell's directory.

use std::fs;
use std::process::Command;

use anyhow::Result;

use crate::cell::{self, build_cell, failed_build_cells, Plan};
use crate::python::Interpreter;
use crate::report::{self, Cell};
use crate::suite_run::run_suite;
use crate::util::{self, status, Step};

/// `cargo test -p cffi-ft` with the features of the latest step (the unit tests that
/// only exist behind them, e.g. step 4's struct layout), against the upstream tree.
pub fn test_umbrella_features(plan: &Plan) -> Result<()> {
    let features = plan.series.features_up_to(plan.series.latest_step());
    let dir = util::kit_target_dir();
    fs::create_dir_all(&dir)?;
    let log = dir.join("umbrella-features.log");
    cell::ensure_feature_build_packages(&features, &log)?;
    let mut cmd = Command::new(util::cargo());
    cmd.current_dir(util::workspace_root())
        .args(["test", "--package", "cffi-ft", "--features"])
        .arg(features.join(","))
        .env("CFFI_FT_CFFI_HEADERS", plan.upstream.tree.join("src").join("cffi"));
    Step { label: "cargo test cffi-ft (every step's features)".into(), cmd: &mut cmd, log: &log, timeout: None }
        .run_ok()
}

/// All steps for one interpreter, in order.
fn run_interpreter(plan: &Plan, interp: &Interpreter) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &step in &plan.steps {
        match build_cell(plan, step, interp) {
            Err(err) => {
                util::warn(format!("[{}] step {step}: {err:#}", interp.label()));
                cells.extend(failed_build_cells(plan, step, interp, &err));
            }
            Ok(built) => {
                for &suite in &plan.suites {
                    match run_suite(plan, step, interp, &built, suite) {
                        Ok(cell) => cells.push(cell),
                        Err(err) => {
                            util::warn(format!("[{}] step {step} {}: {err:#}", interp.label(), suite.name()));
                            let mut failed = failed_build_cells(plan, step, interp, &err);
                            failed.retain(|c| c.suite == suite.name());
                            cells.extend(failed);
                        }
                    }
                }
            }
        }
    }
    cells
}

/// Runs the plan (interpreters in parallel, up to `jobs` at a time), writes the
/// report and prints the matrix. Returns whether every cell is good.
pub fn run(plan: &Plan) -> Result<bool> {
    status(format!(
        "test-upstream: cffi {} from {}; steps {:?}; interpreters {}; suites {}{}",
        plan.upstream.version,
        plan.upstream.origin,
        plan.steps,
        plan.interpreters.iter().map(Interpreter::label).collect::<Vec<_>>().join(", "),
        plan.suites.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        if plan.parallel_threads > 1 { format!("; pytest-run-parallel × {}", plan.parallel_threads) } else { String::new() }
    ));
    let mut packages: Vec<&str> = plan.suites.iter().flat_map(|s| s.system_packages().iter().copied()).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() {
        let needing: Vec<&str> =
            plan.suites.iter().filter(|s| !s.system_packages().is_empty()).map(|s| s.name()).collect();
        let what = format!("Debian packages for --suites {}", needing.join(","));
        if util::has_dpkg() {
            let log = util::kit_target_dir().join("logs").join("system-packages.log");
            util::ensure_debian_packages(&packages, &what, &log)?;
        } else {
            util::warn(format!("no dpkg here: not checking the {what} ({}); install their equivalents", packages.join(" ")));
        }
    }
    let mut cells = Vec::new();
    for chunk in plan.interpreters.chunks(plan.jobs.max(1)) {
        let results: Vec<Vec<Cell>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                chunk.iter().map(|interp| scope.spawn(move || run_interpreter(plan, interp))).collect();
            handles.into_iter().map(|h| h.join().expect("cell runner panicked")).collect()
        });
        cells.extend(results.into_iter().flatten());
    }
    cells.sort_by_key(|c| c.key());
    report::merge_and_write(&plan.upstream.version, &cells)?;
    let (json, md) = report::report_paths();
    println!("\n{}", report::render_matrix(&cells));
    println!("report: {} and {}", md.display(), json.display());
    let bad: Vec<&Cell> = cells.iter().filter(|c| c.is_bad()).collect();
    for c in &bad {
        eprintln!(
            "FAILED cell: step {} / {} / {}: {} (log: {})",
            c.step,
            c.column(),
            c.suite,
            c.detail.clone().unwrap_or_else(|| format!(
                "{} failed, {} errors, GIL after: {:?}",
                c.failed, c.errors, c.gil_enabled_after
            )),
            c.log
        );
    }
    Ok(bad.is_empty())
}
