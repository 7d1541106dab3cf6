//! `cargo xtask`: the cffi-ft tooling. Plain Rust subcommands, no shell scripts.
//!
//! Exit status: 0 success; 1 a test cell failed (failures, errors, crash, or the GIL
//! came back on a free-threaded build); 2 bad input or an environment problem, reported
//! as one `error:` line.

mod backends;
mod bench;
mod cell;
mod dist;
mod expectations;
mod export;
mod offline;
mod python;
mod report;
mod sdist;
mod series;
mod stress;
mod stress_suite;
mod suite_run;
mod test_upstream;
mod tsan;
mod upstream;
mod util;
mod wheel;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::series::{Series, DEFAULT_CFFI};
use crate::cell::{Plan, Suite};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "cffi-ft: make cffi 1.17.1's _cffi_backend thread-safe on free-threaded CPython 3.13, step by step",
    after_help = "The main job is `cargo xtask test-upstream`: it provisions two CPython 3.13 builds (GIL and \
                  free-threaded), fetches the pinned cffi sdist, builds every step of the patch series for \
                  both and prints the step x interpreter matrix (also in target/cffi-ft/report.{md,json})."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision interpreters (build CPython 3.13 GIL + free-threaded from Debian's source
    /// package into ~/.cache/cffi-ft/python, reused when present) or check given ones.
    Python(PythonArgs),
    /// Download and verify the cffi sdist, or check (and optionally patch) a checkout.
    FetchUpstream(FetchArgs),
    /// Build each step for each interpreter and run cffi's own suite against it.
    TestUpstream(TestArgs),
    /// Run the threaded stress suite (compat-tests/stress) K times per step and
    /// interpreter, judged against shim-c/patches/<cffi>/stress-expectations.
    Stress(StressCmd),
    /// Model-check the concurrent cores with loom (RUSTFLAGS=--cfg loom, own target dir).
    Loom,
    /// List the patch series: each patch with its step, kind, cargo feature and subject.
    Series(SeriesArgs),
    /// What CI runs (the README's test command): cargo test --workspace, the loom models,
    /// then the latest step on both interpreters (cffi's suite, build checks, the real
    /// clients, short stress), then `sdist --step <latest> --check` on 3.13t.
    Ci(CiArgs),
    /// ThreadSanitizer for the C side: each step on the TSan interpreter (`python --tsan`),
    /// cffi's suite under pytest-run-parallel (thread_unsafe tests skipped) and the stress
    /// suite at a reduced scale; reports deduplicated and attributed to a component and
    /// hazard, with layered suppressions (CPython's, the series' tsan-suppressions).
    Tsan(TsanCmd),
    /// Micro-benchmarks: the kit at each step vs vanilla cffi 1.17.1 and upstream cffi 2.1.1,
    /// on 3.13 and 3.13t, interleaved in one run (ns/op, ratios with intervals and
    /// verdicts, 2-thread scaling).
    Bench(bench::BenchArgs),
    /// A self-building sdist target/cffi-ft/dist/cffi-1.17.1+ft<N>.tar.gz: the patched
    /// tree, the step's crates with their dependencies vendored, the C shim; setup.py
    /// builds the staticlib with cargo, offline (--check: install it offline and test).
    Sdist(sdist::SdistArgs),
    /// For distribution packagers: DIR/patches (quilt series, DEP-3 headers), the kit's
    /// sources and its vendored crates as .tar.xz, and PACKAGING.md (vendored and
    /// Debian routes, licenses, an installed-package check). --check: quilt push -a on
    /// a pristine tree and PACKAGING.md's vendored route run as written.
    Export(export::ExportArgs),
    /// Wheels from the step's sdist for cp313-cp313 and cp313-cp313t (local
    /// linux_x86_64 tags) into target/cffi-ft/dist/, built offline, their linking
    /// checked (readelf, nm -D); --check: install each into a fresh venv and test.
    Wheel(wheel::WheelArgs),
}

#[derive(Args)]
struct PythonArgs {
    /// Use this interpreter instead of building (repeatable; e.g. Fedora's python3.13t).
    #[arg(long = "python", value_name = "PATH")]
    pythons: Vec<PathBuf>,
    /// Build (or show the cached) free-threaded CPython with ThreadSanitizer
    /// (3.13.5-t-tsan, clang) that `cargo xtask tsan` uses; not built otherwise.
    #[arg(long, conflicts_with = "pythons")]
    tsan: bool,
}

#[derive(Args)]
struct SourceArgs {
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = DEFAULT_CFFI)]
    cffi_version: String,
    /// Use an existing cffi checkout instead of the sdist (never modified).
    #[arg(long, value_name = "PATH")]
    checkout: Option<PathBuf>,
}

impl SourceArgs {
    fn resolve(&self) -> Result<upstream::Upstream> {
        match &self.checkout {
            Some(path) => upstream::use_checkout(path),
            None => upstream::fetch_sdist(&self.cffi_version),
        }
    }
}

#[derive(Args)]
struct FetchArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// With --checkout: apply the series to the checkout itself (all or nothing).
    #[arg(long, requires = "checkout")]
    in_place: bool,
    /// With --in-place: apply the series up to this step (default: the latest).
    #[arg(long, requires = "in_place")]
    step: Option<u32>,
}

/// Which cffi source, steps and interpreters a run covers (test-upstream and stress).
#[derive(Args)]
struct Selection {
    #[command(flatten)]
    source: SourceArgs,
    /// Steps: comma-separated numbers, `latest` or `all` (default: all steps).
    #[arg(long, value_name = "LIST")]
    steps: Option<String>,
    /// Interpreters to use instead of the default builds (repeatable).
    #[arg(long = "python", value_name = "PATH")]
    pythons: Vec<PathBuf>,
}

#[derive(Args)]
struct TestArgs {
    #[command(flatten)]
    selection: Selection,
    /// Suites to run, comma-separated: upstream (cffi's suite), build (the kit's own
    /// checks), client-xattr (xattr 1.3.0 built against this cffi, its tests + 8 threads),
    /// client-brotli (brotlicffi 1.2.1.0 built against this cffi, round-trips + 8 threads),
    /// client-cairo (cairocffi 1.7.1, ABI mode over the system's libcairo, installed with
    /// apt-get when missing: its tests + pictures from 8 threads), client-pycares (pycares
    /// 4.11.0, `extern "Python"` callbacks from c-ares: its tests that need no DNS + lookups
    /// of localhost from 8 threads).
    #[arg(long, value_name = "LIST", default_value = cell::DEFAULT_SUITES)]
    suites: String,
    /// Run each test N times at once with pytest-run-parallel (1: plain run).
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel_threads: u32,
    /// Interpreters tested at the same time (default: 2, at most the CPU count).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Give up on one suite run after this many minutes.
    #[arg(long, value_name = "MIN", default_value_t = 60)]
    suite_timeout_min: u64,
    /// Extra arguments for pytest (after `--`), e.g. `-- -k test_verify`.
    #[arg(last = true)]
    pytest_args: Vec<String>,
}

#[derive(Args)]
struct StressCmd {
    #[command(flatten)]
    selection: Selection,
    /// Interpreters run at the same time (default: 1; scenarios use many threads).
    #[arg(long, value_name = "N", default_value_t = 1)]
    jobs: usize,
    #[command(flatten)]
    stress: stress::StressArgs,
}

#[derive(Args)]
struct TsanCmd {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    tsan: tsan::TsanArgs,
}

#[derive(Args)]
struct SeriesArgs {
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = DEFAULT_CFFI)]
    cffi_version: String,
}

#[derive(Args)]
struct CiArgs {
    /// Interpreters to use instead of the default builds (repeatable).
    #[arg(long = "python", value_name = "PATH")]
    pythons: Vec<PathBuf>,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns a closed stdout (`cargo xtask series | head`)
    // into a panic in println!. Like other command-line tools, end quietly instead.
    // Children are unaffected: Command resets SIGPIPE for them either way.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread is spawned; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            let text = format!("{err:#}");
            let mut lines = text.lines();
            eprintln!("error: {}", lines.next().unwrap_or("unknown error"));
            for line in lines {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::Python(args) => {
            let interps = if args.tsan { vec![python::ensure_tsan_build()?] } else { python::resolve(&args.pythons)? };
            for interp in interps {
                println!(
                    "{}\t{}\t{}",
                    interp.label(),
                    if interp.free_threaded { "free-threaded" } else { "GIL" },
                    interp.executable.display()
                );
            }
            Ok(true)
        }
        Cmd::FetchUpstream(args) => fetch_upstream(args),
        Cmd::Tsan(cmd) => {
            let version = match &cmd.source.checkout {
                Some(path) => upstream::checkout_version(path)?,
                None => cmd.source.cffi_version.clone(),
            };
            let series = Series::load(&version)?;
            // refuse bad options before building an interpreter
            let steps = tsan::check_args(&cmd.tsan, &series)?;
            let interp = tsan::interpreter(&cmd.tsan)?;
            let upstream = cmd.source.resolve()?;
            tsan::run(series, upstream, steps, interp, &cmd.tsan)
        }
        Cmd::TestUpstream(args) => test_upstream(args),
        Cmd::Series(args) => {
            let series = Series::load(&args.cffi_version)?;
            println!("cffi {}: steps {:?}", series.cffi_version, series.steps());
            for p in &series.patches {
                let feature = p.cargo_feature.as_deref().unwrap_or("-");
                println!("step {}  {:<8} {:<14} {}\n         {}", p.step, p.kind, feature, p.name, p.subject);
            }
            Ok(true)
        }
        Cmd::Stress(cmd) => {
            // refuse bad options (an unknown --only name) before any provisioning
            stress::check_args(&cmd.stress)?;
            let test_args = TestArgs {
                selection: cmd.selection,
                suites: "upstream".into(),
                parallel_threads: 1,
                jobs: Some(cmd.jobs),
                suite_timeout_min: 60,
                pytest_args: Vec::new(),
            };
            let plan = plan_from(&test_args)?;
            stress::run(&plan, &cmd.stress)
        }
        Cmd::Loom => loom(),
        Cmd::Ci(args) => ci(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Sdist(args) => sdist::run(args),
        Cmd::Export(args) => export::run(args),
        Cmd::Wheel(args) => wheel::run(args),
    }
}

fn fetch_upstream(args: FetchArgs) -> Result<bool> {
    if args.in_place {
        let path = args.source.checkout.as_ref().expect("clap requires --checkout");
        let touched = upstream::patch_in_place(path, args.step)?;
        println!("patched {} in place: {}", path.display(), touched.join(", "));
        return Ok(true);
    }
    let up = args.source.resolve()?;
    if args.source.checkout.is_some() {
        println!("{}: cffi {} and the patch series applies cleanly", up.tree.display(), up.version);
    } else {
        println!("{}: cffi {} from {}", up.tree.display(), up.version, up.origin);
    }
    Ok(true)
}

fn plan_from(args: &TestArgs) -> Result<Plan> {
    if args.parallel_threads == 0 {
        bail!("--parallel-threads must be at least 1");
    }
    // Validate everything cheap before any long provisioning starts.
    let selection = &args.selection;
    let version = match &selection.source.checkout {
        Some(path) => upstream::checkout_version(path)?,
        None => selection.source.cffi_version.clone(),
    };
    let series = Series::load(&version)?;
    let steps = series.select_steps(selection.steps.as_deref())?;
    let suites = args
        .suites
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Suite::parse)
        .collect::<Result<Vec<_>>>()?;
    if suites.is_empty() {
        bail!("--suites: no suite selected");
    }
    let interpreters = python::resolve(&selection.pythons)?;
    let upstream = selection.source.resolve()?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let jobs = args.jobs.unwrap_or(2).clamp(1, cpus.max(1));
    Ok(Plan {
        series,
        upstream,
        steps,
        interpreters,
        suites,
        parallel_threads: args.parallel_threads,
        jobs,
        pytest_args: args.pytest_args.clone(),
        suite_timeout: Duration::from_secs(args.suite_timeout_min.max(1) * 60),
        env: Vec::new(),
    })
}

fn test_upstream(args: TestArgs) -> Result<bool> {
    let plan = plan_from(&args)?;
    test_upstream::run(&plan)
}

/// Crates whose concurrent core has loom models (tests/loom.rs).
const LOOM_CRATES: &[&str] = &["ctype-intern", "realize-once", "lib-registry", "callback-dispatch"];

fn loom() -> Result<bool> {
    let cargo = util::cargo();
    for krate in LOOM_CRATES {
        util::status(format!("loom: model-checking {krate}"));
        let ok = Command::new(&cargo)
            .current_dir(util::workspace_root())
            .args(["test", "--release", "--package", krate, "--test", "loom", "--target-dir"])
            .arg(util::workspace_root().join("target").join("loom"))
            .env("RUSTFLAGS", "--cfg loom")
            .status()?
            .success();
        if !ok {
            bail!("loom models of {krate} failed");
        }
    }
    Ok(true)
}

fn ci(args: CiArgs) -> Result<bool> {
    util::status("ci: cargo test --workspace");
    let ok = Command::new(util::cargo())
        .current_dir(util::workspace_root())
        .args(["test", "--workspace"])
        .status()?
        .success();
    if !ok {
        bail!("cargo test --workspace failed");
    }
    loom()?;
    util::status("ci: test-upstream, latest step, both interpreters");
    let test_args = TestArgs {
        selection: Selection {
            source: SourceArgs { cffi_version: DEFAULT_CFFI.into(), checkout: None },
            steps: Some("latest".into()),
            pythons: args.pythons,
        },
        suites: cell::DEFAULT_SUITES.into(),
        parallel_threads: 1,
        jobs: None,
        suite_timeout_min: 30,
        pytest_args: Vec::new(),
    };
    let plan = plan_from(&test_args)?;
    util::status("ci: cargo test cffi-ft with every step's features");
    test_upstream::test_umbrella_features(&plan)?;
    let upstream_ok = test_upstream::run(&plan)?;
    util::status("ci: stress suite, short (scale 0.1, one run), latest step, both interpreters");
    let short = stress::StressArgs { threads: 8, rounds: None, scale: 0.1, repeat: 1, timeout: 120, only: None, backends: "kit".into() };
    let stress_ok = stress::run(&plan, &short)?;
    let sdist_ok = ci_sdist_check(&plan)?;
    Ok(upstream_ok && stress_ok && sdist_ok)
}

/// ci's last step: `sdist --step <latest> --check` on the plan's free-threaded
/// interpreters only (the route the sdist exists for), the latest step read from the
/// series. It needs the tree committed (the sdist is built from HEAD), cargo vendor's
/// and the wheelhouse's downloads (once), and libclang from step 4 on, which the
/// umbrella-features step above has installed.
fn ci_sdist_check(plan: &Plan) -> Result<bool> {
    let latest = plan.series.latest_step();
    let pythons: Vec<PathBuf> =
        plan.interpreters.iter().filter(|i| i.free_threaded).map(|i| i.executable.clone()).collect();
    if pythons.is_empty() {
        util::warn(format!("ci: no free-threaded interpreter: sdist --step {latest} --check skipped"));
        return Ok(true);
    }
    util::status(format!("ci: sdist --step {latest} --check (offline install into a fresh venv), free-threaded only"));
    let args = sdist::SdistArgs { step: latest, cffi_version: plan.series.cffi_version.clone(), check: true, pythons };
    sdist::run(args).context("ci: sdist --check")
}
