//! Running: one process of bench_ops.py for an op in a backend, and one run (the modes
//! a crash did not reach run again in a fresh process).

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::backends::backend_command;
use crate::util::Finished;

use super::prepare::{bench_dir, bench_script, Backend};
use super::stats::{parse_run, ModeLine, Run};

/// The modes of `asked` (in the order the script runs them) that a process which ended
/// early never started: those after the first mode without a JSON line, the one it ended
/// in. Empty when every mode has its line.
pub fn modes_not_reached<'a>(stdout: &str, asked: &[&'a str]) -> Vec<&'a str> {
    let done: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<ModeLine>(l.trim()).ok())
        .map(|l| l.mode)
        .collect();
    match asked.iter().position(|m| !done.iter().any(|d| d == m)) {
        Some(i) => asked[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

impl Run {
    /// Takes the results of `modes` from `later`, a process that ran only those.
    pub fn take_modes(&mut self, later: Run, modes: &[&str]) {
        for &m in modes {
            match m {
                "single" => {
                    self.single = later.single.clone();
                    self.single_best = later.single_best;
                }
                "own2" => self.own2 = later.own2.clone(),
                "shared2" => self.shared2 = later.shared2.clone(),
                _ => {}
            }
        }
        if let Some(g) = later.gil_enabled {
            self.gil_enabled = Some(self.gil_enabled.unwrap_or(false) || g);
        }
    }
}

/// One process of bench_ops.py: `op` in `b`, the given modes. Returns what it printed
/// and, when it did not end well, how it ended; failed processes leave a log.
fn run_process(b: &Backend, op: &str, modes: &[&str], seconds: f64, tag: &str) -> (String, Option<String>) {
    let runs_dir = bench_dir().join("runs");
    let _ = fs::create_dir_all(&runs_dir);
    let out_path = runs_dir.join(format!("{}.out", b.spec.id()));
    let err_path = runs_dir.join(format!("{}.err", b.spec.id()));
    let spawn = || -> Result<Finished> {
        let mut cmd = backend_command(&b.python, &b.spec);
        cmd.arg(bench_script())
            .args(["--modules"])
            .arg(&b.modules)
            .args(["--op", op, "--mode", &modes.join(","), "--seconds", &format!("{seconds}"), "--json"])
            .current_dir(&b.modules)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", b.python.display()))?;
        // the modes of `seconds` plus start-up and calibration; a hang (a deadlock in an
        // unsafe backend) costs at most this
        let limit = Duration::from_secs_f64(seconds * 10.0 + 30.0);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Finished { status, timed_out: false });
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                return Ok(Finished { status: child.wait()?, timed_out: true });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let finished = spawn();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let ended = match &finished {
        Err(e) => Some(format!("{e:#}")),
        Ok(f) if f.success() => None,
        Ok(f) => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let shown: String = last.chars().take(160).collect();
            Some(format!("process {}{}", f.describe(), if shown.is_empty() { String::new() } else { format!(": {shown}") }))
        }
    };
    let errors = stdout.lines().any(|l| serde_json::from_str::<ModeLine>(l.trim()).is_ok_and(|l| l.error.is_some()));
    if ended.is_some() || errors && !stderr.trim().is_empty() {
        let logs = bench_dir().join("logs");
        let _ = fs::create_dir_all(&logs);
        let _ = fs::write(logs.join(format!("{}-{op}-{tag}.log", b.spec.id())), format!("{stdout}\n--- stderr ---\n{stderr}"));
    }
    (stdout, ended)
}

/// One run: `op` in `b`, the single thread and, in threaded rounds, the 2-thread modes.
/// A process that dies (a crash of an unsafe backend) fails the mode it was in; the
/// modes it never reached run in a fresh process, so each mode's failure is its own
/// (their scaling then divides by the single-thread throughput of the first process).
pub(super) fn run_one(b: &Backend, op: &str, seconds: f64, threaded: bool, tag: &str) -> Run {
    let asked: &[&str] = if threaded { &["single", "own2", "shared2"] } else { &["single"] };
    let (stdout, ended) = run_process(b, op, asked, seconds, tag);
    let mut run = parse_run(&stdout, ended.as_deref().unwrap_or("no result"), asked);
    let mut left = if ended.is_some() { modes_not_reached(&stdout, asked) } else { Vec::new() };
    let mut attempt = 1;
    while !left.is_empty() {
        let (stdout, ended) = run_process(b, op, &left, seconds, &format!("{tag}-{attempt}"));
        run.take_modes(parse_run(&stdout, ended.as_deref().unwrap_or("no result"), &left), &left);
        left = if ended.is_some() { modes_not_reached(&stdout, &left) } else { Vec::new() };
        attempt += 1;
    }
    run
}


/// Whether round r of `rounds` runs the 2-thread modes: `threaded` of them, spread evenly
/// (the first round always when any).
pub fn threaded_round(r: u32, rounds: u32, threaded: u32) -> bool {
    let (r, n, k) = (r as u64, rounds.max(1) as u64, threaded.min(rounds) as u64);
    (r * k).div_ceil(n) != ((r + 1) * k).div_ceil(n)
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::fixtures::ok;
    use crate::bench::stats::ModeResult;

    #[test]
    fn threaded_rounds_are_spread_evenly() {
        let pick = |rounds, k| (0..rounds).filter(|&r| threaded_round(r, rounds, k)).collect::<Vec<u32>>();
        assert_eq!(pick(3, 3), vec![0, 1, 2]);
        assert_eq!(pick(20, 4), vec![0, 5, 10, 15]);
        assert_eq!(pick(10, 3), vec![0, 3, 6]);
        assert_eq!(pick(5, 0), Vec::<u32>::new());
        assert_eq!(pick(2, 9), vec![0, 1]);
        assert_eq!(pick(1, 1), vec![0]);
    }

    #[test]
    fn a_crash_ends_only_its_mode_and_the_rest_runs_again() {
        let all = ["single", "own2", "shared2"];
        let single = r#"{"op":"callback_new_free","mode":"single","ns_per_op":290.0,"ns_min":280.0,"throughput":3.4e6,"gil_enabled":false}"#;
        // died in own2: shared2 never started
        assert_eq!(modes_not_reached(&format!("{single}\n"), &all), vec!["shared2"]);
        // died in single: neither 2-thread mode started
        assert_eq!(modes_not_reached("Fatal Python error\n", &all), vec!["own2", "shared2"]);
        // died after its last line, or in its last mode: nothing left to run
        let own2 = r#"{"mode":"own2","error":"RuntimeError: x"}"#;
        let shared2 = r#"{"mode":"shared2","skipped":"no objects"}"#;
        assert!(modes_not_reached(&format!("{single}\n{own2}\n{shared2}\n"), &all).is_empty());
        assert!(modes_not_reached(&format!("{single}\n{own2}\n"), &all).is_empty());
        assert!(modes_not_reached("", &["single"]).is_empty());
        // a retry of the modes left: only they come from it
        let crash = "process killed by signal 11 (SIGSEGV)";
        let mut run = parse_run(single, crash, &all);
        assert_eq!(run.own2, ModeResult::Failed(crash.into()));
        let later = parse_run(r#"{"mode":"shared2","ns_per_op":300.0,"throughput":5e6,"gil_enabled":true}"#, "gone", &["shared2"]);
        run.take_modes(later, &["shared2"]);
        assert_eq!(run.single, ok(290.0, 3.4e6));
        assert_eq!(run.single_best, Some(280.0));
        assert_eq!(run.own2, ModeResult::Failed(crash.into()));
        assert_eq!(run.shared2, ok(300.0, 5e6));
        assert_eq!(run.gil_enabled, Some(true));
        // a retry that crashes too fails its own mode with its own message
        let mut run = parse_run("", crash, &all);
        run.take_modes(parse_run("", "process timed out", &["own2", "shared2"]), &["own2", "shared2"]);
        assert_eq!(run.single, ModeResult::Failed(crash.into()));
        assert_eq!(run.shared2, ModeResult::Failed("process timed out".into()));
    }
}

