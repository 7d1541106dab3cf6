//! `cargo xtask export --step N --to DIR`: what a distribution packager needs, in the
//! forms Debian and Fedora use.
//!
//! * `DIR/patches/`: a quilt `series` and the step's patches with DEP-3 headers
//!   (Description from Subject + Description + Why, Author and Last-Update from git,
//!   Forwarded: not-needed, plus Step, Kind, Hazards and Cargo-Feature).
//! * `DIR/cffi-ft-<ver>.tar.xz`: the step's minimal cargo workspace (see `dist.rs`),
//!   the C shim, and `tests/` (the stress suite and `run-stress`, the installed-package
//!   check). `<ver>` is `<kit version>-step<N>`.
//! * `DIR/cffi-ft-<ver>-vendor.tar.xz`: `cffi-ft-<ver>/vendor/`, every crate the
//!   workspace resolves to (`cargo vendor`).
//! * `DIR/PACKAGING.md`: the vendored route (by hand, and the Fedora spec lines), the
//!   unvendored Debian route (Build-Depends checked against the Debian archive), the
//!   installed-package check, and the license of every bundled crate.
//!
//! `--check` proves it with the real tools: Debian's `quilt push -a` onto a pristine
//! tree (quilt installed with apt-get when missing), the result compared with the
//! series applied by xtask; then the by-hand vendored route of PACKAGING.md run as
//! written (extracted from it), offline, into a fresh venv, the backend inspected, the
//! build suite and the installed-package check run against it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::{self, CrateInfo, DirectDep, StepKit};
use crate::expectations;
use crate::offline;
use crate::python::{self, Interpreter};
use crate::series::{self, Patch};
use crate::stress_suite;
use crate::upstream;
use crate::util::{self, status, Step};

#[derive(Args)]
pub struct ExportArgs {
    /// The step of the series to export.
    #[arg(long, value_name = "N")]
    pub step: u32,
    /// Where to write (a new or empty directory).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// cffi version (must have a patch series in shim-c/patches/).
    #[arg(long, value_name = "VERSION", default_value = series::DEFAULT_CFFI)]
    pub cffi_version: String,
    /// Then check it: quilt push -a on a pristine tree, and PACKAGING.md's vendored
    /// route run as written, offline, with the build suite and the stress check.
    #[arg(long)]
    pub check: bool,
    /// Interpreter for --check (default: the kit's free-threaded build).
    #[arg(long = "python", value_name = "PATH")]
    pub pythons: Vec<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<bool> {
    let kit = dist::resolve_step(&args.cffi_version, args.step)?;
    dist::ensure_empty_or_missing(&args.to, "--to")?;
    dist::ensure_clean_git(&util::workspace_root())?;
    for p in &args.pythons {
        python::probe(p)?;
    }
    let to = export(&kit, &args.to)?;
    println!("{}", to.display());
    if !args.check {
        return Ok(true);
    }
    let interps = python::resolve(&args.pythons)?;
    let interp = if args.pythons.is_empty() {
        interps.into_iter().find(|i| i.free_threaded).context("--check: no free-threaded interpreter")?
    } else {
        interps.into_iter().next().context("--check: no interpreter")?
    };
    check_export(&kit, &to, &interp)
}

/// Everything in the export that names the step's kit.
struct Names {
    kit: String,
}

impl Names {
    fn of(kit: &StepKit) -> Names {
        Names { kit: format!("cffi-ft-{}", kit.export_version()) }
    }
    fn kit_tarball(&self) -> String {
        format!("{}.tar.xz", self.kit)
    }
    fn vendor_tarball(&self) -> String {
        format!("{}-vendor.tar.xz", self.kit)
    }
}

/// Writes the export into a sibling scratch directory and renames it onto `to` at the
/// end. Returns `to`, absolute.
fn export(kit: &StepKit, to: &Path) -> Result<PathBuf> {
    let root = util::workspace_root();
    let to = if to.is_absolute() { to.to_path_buf() } else { std::env::current_dir()?.join(to) };
    let (commit, mtime) = dist::head_commit(&root)?;
    let names = Names::of(kit);
    status(format!("export: step {} of cffi {} from commit {} into {}", kit.step, kit.series.cffi_version, &commit[..12], to.display()));
    let scratch = dist::scratch_near(&to, "export")?;
    let log = util::fresh_log(&format!("export-step{}.log", kit.step));
    let out = scratch.path().join("out");
    fs::create_dir_all(out.join("patches"))?;
    write_dep3_patches(kit, &out.join("patches"), &commit)?;

    let work = scratch.path().join("kit");
    let kit_dir = work.join(&names.kit);
    dist::assemble_kit(kit, &kit_dir)?;
    add_stress_check(kit, &kit_dir)?;
    status("export: cargo vendor");
    let replacement = dist::vendor(&kit_dir, &log)?;
    fs::create_dir_all(kit_dir.join(".cargo"))?;
    fs::write(kit_dir.join(".cargo").join("config.toml"), &replacement)?;
    let crates = dist::crate_metadata(&kit_dir)?;
    util::remove_dir_if_exists(&kit_dir.join(".cargo"))?;
    let vendor_work = scratch.path().join("vendor");
    fs::create_dir_all(vendor_work.join(&names.kit))?;
    fs::rename(kit_dir.join("vendor"), vendor_work.join(&names.kit).join("vendor"))?;
    dist::tarball(&work, &names.kit, &out.join(names.kit_tarball()), mtime, "xz", &log)?;
    dist::tarball(&vendor_work, &names.kit, &out.join(names.vendor_tarball()), mtime, "xz", &log)?;

    status("export: Build-Depends of the Debian route, against the Debian archive");
    let debian = debian_availability(&crates, &log);
    let text = packaging_md(kit, &names, &crates, &debian, &commit);
    fs::write(out.join("PACKAGING.md"), text)?;
    dist::publish(&out, &to)?;
    Ok(to)
}

// ---------------------------------------------------------------------------------------
// DEP-3 patches

/// The `Key: value` fields of one of our patch headers (continuation lines kept, with
/// their leading space), in order, and the body after the `---` line.
fn split_header(text: &str) -> Result<(Vec<(String, Vec<String>)>, &str)> {
    let Some(end) = text.find("\n---\n") else { bail!("no `---` line ends the header") };
    let (head, body) = (&text[..end], &text[end + 5..]);
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') {
            let last = fields.last_mut().context("a continuation line before any field")?;
            last.1.push(line.to_string());
        } else if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            fields.push((k.to_string(), if v.is_empty() { vec![] } else { vec![format!(" {v}")] }));
        } else if !line.trim().is_empty() {
            bail!("header line {line:?} is not `Key: value`");
        }
    }
    Ok((fields, body))
}

/// Our header turned into DEP-3: `Description:` = Subject, then the Description and
/// Why paragraphs (" ." between them); `Author`, `Forwarded: not-needed`,
/// `Last-Update`; our `Step`, `Kind`, `Hazards`, `Cargo-Feature` kept.
pub fn dep3(text: &str, author: &str, last_update: &str) -> Result<String> {
    let (fields, body) = split_header(text)?;
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let subject = get("Subject").and_then(|v| v.first().cloned()).context("no Subject")?;
    let mut out = format!("Description:{subject}\n");
    let mut paragraphs = Vec::new();
    if let Some(d) = get("Description") {
        paragraphs.push(d);
    }
    if let Some(w) = get("Why") {
        let mut why = vec![" Why:".to_string()];
        why.extend(w);
        paragraphs.push(why);
    }
    for (i, p) in paragraphs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(" .\n");
        }
        for line in p {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!("Author: {author}\nForwarded: not-needed\nLast-Update: {last_update}\n"));
    for key in ["Step", "Kind", "Hazards", "Cargo-Feature"] {
        if let Some(v) = get(key) {
            out.push_str(&format!("{key}:{}\n", v.join("\n")));
        }
    }
    for (k, _) in &fields {
        if !["Subject", "Description", "Why", "Step", "Kind", "Hazards", "Cargo-Feature"].contains(&k.as_str()) {
            bail!("header field {k:?} has no DEP-3 form here");
        }
    }
    out.push_str("---\n");
    out.push_str(body);
    Ok(out)
}

fn git_field(root: &Path, format: &str, extra: &[&str], path: &Path) -> Result<String> {
    let text = util::capture(
        Command::new("git").arg("log").arg(format!("--format={format}")).args(extra).arg("--").arg(path).current_dir(root),
    )?;
    text.lines().next().map(str::to_string).filter(|s| !s.is_empty()).with_context(|| format!("git log knows no {}", path.display()))
}

fn write_dep3_patches(kit: &StepKit, dir: &Path, commit: &str) -> Result<()> {
    let root = util::workspace_root();
    let patches: Vec<&Patch> = kit.series.up_to(kit.step);
    let mut series = format!(
        "# cffi-ft: the patches of step {} for cffi {} (quilt, -p1, in this order),\n# exported from commit {commit}\n",
        kit.step, kit.series.cffi_version
    );
    for p in &patches {
        let text = dist::committed_file(&root, &rel(&root, &p.file)?)?;
        let author = git_field(&root, "%an <%ae>", &["--diff-filter=A", "--reverse"], &p.file)?;
        let updated = git_field(&root, "%cs", &["-1"], &p.file)?;
        let converted = dep3(&text, &author, &updated).with_context(|| p.name.clone())?;
        fs::write(dir.join(&p.name), converted)?;
        series.push_str(&p.name);
        series.push('\n');
    }
    fs::write(dir.join("series"), series)?;
    Ok(())
}

fn rel(root: &Path, path: &Path) -> Result<String> {
    Ok(path.strip_prefix(root).with_context(|| format!("{} is outside the workspace", path.display()))?.display().to_string())
}

// ---------------------------------------------------------------------------------------
// The installed-package check

/// The stress selection of the installed-package check at `step`: s01 (the GIL stays
/// off: step 0) and every component the expectations require on 3.13t from then on.
pub fn stress_selection(cffi_version: &str, step: u32) -> Result<String> {
    let rules = expectations::load(cffi_version)?;
    // the suite's own component list: a component added to the registry is selected
    // as soon as the expectations say the step must pass it
    let components = stress_suite::known_components()?;
    let mut parts = vec!["s01_gil_stays_off".to_string()];
    parts.extend(components.into_iter().filter(|c| expectations::must_pass(&rules, step, true, "", c)));
    Ok(parts.join(" or "))
}

fn add_stress_check(kit: &StepKit, kit_dir: &Path) -> Result<()> {
    let root = util::workspace_root();
    let tests = kit_dir.join("tests");
    fs::create_dir_all(&tests)?;
    let archive = tests.join(".stress.tar");
    util::capture(
        Command::new("git").args(["archive", "--format=tar", "-o"]).arg(&archive).args(["HEAD", "--", "compat-tests/stress"]).current_dir(&root),
    )?;
    util::capture(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&tests).args(["--strip-components=1"]))?;
    fs::remove_file(&archive)?;
    let selection = stress_selection(&kit.series.cffi_version, kit.step)?;
    let script = format!(
        r#"#!/bin/sh
# cffi-ft installed-package check (step {step}): a short run of the stress scenarios
# that step {step} must pass on a free-threaded build (and every build), against the
# cffi that $PYTHON (default python3) imports. Needs pytest, gcc and the Python headers
# (the scenarios build a helper library and cffi modules in a temporary directory).
# Each scenario runs in its own subprocess; a crash fails that scenario.
set -e
here=$(cd "$(dirname "$0")" && pwd)
py=${{PYTHON:-python3}}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$py" -c 'import _cffi_backend, sys; print("cffi-ft steps", _cffi_backend.__cffi_ft__["steps"], "GIL enabled:", getattr(sys, "_is_gil_enabled", lambda: True)())'
"$py" -m pytest "$here/stress" -p no:cacheprovider -v -rfE \
    --stress-scale "${{CFFI_FT_STRESS_SCALE:-0.1}}" -k "{selection}" "$@"
"#,
        step = kit.step
    );
    let path = tests.join("run-stress");
    fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Debian: which librust-*-dev packages the unvendored route needs, and who ships them

fn direct_deps(crates: &[CrateInfo]) -> Vec<DirectDep> {
    let mut out: BTreeMap<String, DirectDep> = BTreeMap::new();
    for c in crates.iter().filter(|c| c.local) {
        for d in &c.deps {
            out.entry(d.name.clone()).or_insert_with(|| d.clone());
        }
    }
    out.into_values().collect()
}

fn debian_package(name: &str) -> String {
    format!("librust-{}-dev", name.replace('_', "-"))
}

/// Debian relations for a cargo requirement: `^1.7` -> `(>= 1.7), (<< 2~)`.
pub fn debian_relation(name: &str, req: &str) -> String {
    let pkg = debian_package(name);
    let (exact, v) = match req.strip_prefix('=') {
        Some(v) => (true, v),
        None => (false, req.trim_start_matches('^')),
    };
    let parts: Vec<u64> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    let upper = if exact {
        let mut p = parts.clone();
        if let Some(last) = p.last_mut() {
            *last += 1;
        }
        p.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
    } else {
        // the first non-zero component bumps (cargo's caret)
        let idx = parts.iter().position(|&x| x != 0).unwrap_or(parts.len().saturating_sub(1));
        let mut p: Vec<u64> = parts[..=idx.min(parts.len() - 1)].to_vec();
        if let Some(last) = p.last_mut() {
            *last += 1;
        }
        p.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
    };
    format!("{pkg} (>= {v}), {pkg} (<< {upper}~)")
}

/// Whether a Debian version (epoch and revision stripped) meets a cargo requirement.
pub fn satisfies(req: &str, debian_version: &str) -> bool {
    let upstream = debian_version.split_once(':').map_or(debian_version, |(_, v)| v);
    let upstream = upstream.rsplit_once('-').map_or(upstream, |(v, _)| v);
    let upstream = upstream.split(['+', '~']).next().unwrap_or(upstream);
    let num = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let have = num(upstream);
    let pad = |mut v: Vec<u64>| {
        v.resize(3, 0);
        v
    };
    if let Some(exact) = req.strip_prefix('=') {
        return pad(have) == pad(num(exact));
    }
    let want_raw = num(req.trim_start_matches('^'));
    let want = pad(want_raw.clone());
    let have = pad(have);
    if have < want {
        return false;
    }
    let idx = want_raw.iter().position(|&x| x != 0).unwrap_or(want_raw.len().saturating_sub(1));
    have[..=idx] == want[..=idx]
}

/// One Debian suite's candidate versions of the kit's Build-Depends.
struct Suite {
    name: String,
    how: String,
    versions: BTreeMap<String, Option<String>>,
}

/// Versions recorded by hand (research/anchors.md §6, checked 2026-12) for suites whose
/// lists cannot be fetched.
const PINNED: &[(&str, &[(&str, &str)])] = &[
    ("trixie", &[("pyo3-ffi", "0.22.6"), ("arc-swap", "1.7.1"), ("bindgen", "0.71.1")]),
    ("sid", &[("pyo3-ffi", "0.28.2"), ("arc-swap", "1.9.3"), ("bindgen", "0.72.1")]),
];

fn parse_policy(text: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(pkg), Some(v)) = (&current, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            out.insert(pkg.clone(), (v != "(none)").then(|| v.to_string()));
        }
    }
    out
}

fn debian_availability(crates: &[CrateInfo], log: &Path) -> Vec<Suite> {
    let deps = direct_deps(crates);
    let pkgs: Vec<String> = deps.iter().map(|d| debian_package(&d.name)).collect();
    let mut suites = Vec::new();
    if util::capture(Command::new("apt-cache").arg("--version")).is_ok() {
        let here = util::capture(Command::new("apt-cache").arg("policy").args(&pkgs)).map(|t| parse_policy(&t)).unwrap_or_default();
        let codename = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|s| s.trim_matches('"').to_string())))
            .unwrap_or_else(|| "this machine".into());
        suites.push(Suite { name: codename, how: "apt-cache policy, this machine's lists".into(), versions: here });
    }
    for (suite, pinned) in PINNED {
        match private_policy(suite, &pkgs, log) {
            Ok(versions) => suites.push(Suite {
                name: suite.to_string(),
                how: format!("apt-cache policy, private {suite} main amd64 lists (apt-get update)"),
                versions,
            }),
            Err(e) => {
                util::warn(format!("cannot read Debian {suite}'s lists ({e:#}); using the versions recorded by hand"));
                let versions = pkgs
                    .iter()
                    .map(|p| {
                        let v = pinned.iter().find(|(n, _)| debian_package(n) == *p).map(|(_, v)| v.to_string());
                        (p.clone(), v)
                    })
                    .collect();
                suites.push(Suite { name: suite.to_string(), how: "recorded by hand, 2026-12 (not all crates)".into(), versions });
            }
        }
    }
    suites
}

/// `apt-cache policy` against Debian `suite` (main, amd64) through private lists under
/// the cache (`python::private_apt`, as the interpreter builds' deb-src entry).
fn private_policy(suite: &str, pkgs: &[String], log: &Path) -> Result<BTreeMap<String, Option<String>>> {
    let apt = util::cache_dir()?.join(format!("apt-{suite}"));
    let (_, mut args) = python::private_apt(&apt, &format!("cffi-ft-{suite}.sources"), "deb", suite, "Architectures: amd64\n")?;
    // binary lists, read by apt-cache: an empty dpkg status and no preferences of the
    // system's, and no Contents indices
    fs::create_dir_all(apt.join("status.d"))?;
    let status_file = apt.join("status");
    if !status_file.exists() {
        fs::write(&status_file, "")?;
    }
    for o in [
        format!("Dir::State::status={}", status_file.display()),
        "Dir::Etc::Preferences=/dev/null".to_string(),
        "Dir::Etc::PreferencesParts=/dev/null".to_string(),
        "Acquire::IndexTargets::deb::Contents-deb::DefTarget=false".to_string(),
    ] {
        args.extend(["-o".to_string(), o]);
    }
    let fresh = fs::read_dir(apt.join("lists")).map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains("Packages"))).unwrap_or(false)
        && fs::metadata(apt.join("lists")).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(7 * 86400));
    if !fresh {
        Step {
            label: format!("apt-get update (Debian {suite} main amd64, private lists)"),
            cmd: Command::new("apt-get").args(&args).arg("update"),
            log,
            timeout: Some(Duration::from_secs(600)),
        }
        .run_ok()?;
    }
    let text = util::capture(Command::new("apt-cache").args(&args).arg("policy").args(pkgs))?;
    Ok(parse_policy(&text))
}

// ---------------------------------------------------------------------------------------
// PACKAGING.md

/// The shell block of PACKAGING.md that `--check` runs as written.
const BY_HAND_BEGIN: &str = "```sh\n# --- vendored route, by hand ---\n";

fn packaging_md(kit: &StepKit, names: &Names, crates: &[CrateInfo], debian: &[Suite], commit: &str) -> String {
    let cffi = &kit.series.cffi_version;
    let step = kit.step;
    let features_csv = kit.features.join(",");
    let feature_args = if kit.features.is_empty() { String::new() } else { format!(" --features {features_csv}") };
    let ft_feature_args = if kit.features.is_empty() {
        String::new()
    } else {
        format!(" -f {}", kit.features.iter().map(|f| format!("cffi-ft/{f}")).collect::<Vec<_>>().join(","))
    };
    let k = &names.kit;
    let bundled: Vec<&CrateInfo> = crates.iter().filter(|c| !c.local).collect();
    let license = dist::spdx_and(std::iter::once("MIT".to_string()).chain(crates.iter().map(|c| c.license.clone())));
    let patches = kit.series.up_to(step);
    let libclang = if kit.needs_libclang {
"\nFrom step 4 on the build runs bindgen: **libclang** must be installed at build time \
         (Debian: `libclang1`; Fedora: `clang-libs`; or point `LIBCLANG_PATH` at it).\n"
    } else {
        ""
    };
    let mut md = String::new();
    md.push_str(&format!(
        "# Packaging cffi {cffi} with cffi-ft step {step}\n\n\
         Exported by `cargo xtask export --step {step}` from commit `{commit}`.\n\n\
         Step {step} applies {n} patches (`patches/`, a quilt series with DEP-3 headers) to the \
         pristine cffi {cffi} sdist and links one Rust staticlib, `libcffi_ft.a`, built from \
         `{kt}` (the kit's crates for this step: {crates_list}; the C shim in `shim-c/`), \
         into `_cffi_backend`. Cargo features of the umbrella crate `cffi-ft`: \
         `{features}`. The backend's `__version__` stays `{cffi}` and its ABI range \
         (`CFFI_VERSION_MIN`/`MAX`, 0x2601-0x28FF) is unchanged, so Debian's \
         `python3-cffi-backend-api-*` Provides stay as they are.\n\n\
         What every route does, in order:\n\n\
         1. apply `patches/series` (`-p1`) to the pristine tree;\n\
         2. build the staticlib for the interpreter you package for: \
         `cargo build --release -p cffi-ft{fa}` in the kit's directory, with \
         `PYO3_PYTHON=<that interpreter>`, `PYO3_BUILD_EXTENSION_MODULE=1` (never link \
         libpython) and `CFFI_FT_CFFI_HEADERS=<cffi tree>/src/cffi`;\n\
         3. build cffi as usual with `CFFI_FT_STATICLIB=<…>/libcffi_ft.a` and \
         `CFFI_FT_SHIM_DIR=<kit>/shim-c` in the environment (setup.py stops with one line \
         without them). One staticlib per interpreter: a staticlib built for another \
         interpreter is refused at import with an ImportError.\n\
         {libclang}\n\
         Toolchain: Rust (cargo, rustc) >= {rv}, gcc, libffi.\n\n",
        n = patches.len(),
        kt = names.kit_tarball(),
        crates_list = if kit.crates.is_empty() { "none besides the umbrella".to_string() } else { kit.crates.join(", ") },
        features = if kit.features.is_empty() { "(none)".into() } else { features_csv.clone() },
        fa = feature_args,
        rv = kit.rust_version,
    ));

    md.push_str("## Files\n\n| file | what |\n|---|---|\n");
    md.push_str("| `patches/series`, `patches/*.patch` | the quilt series: DEP-3 headers (Description, Author, Forwarded, Last-Update) plus `Step`, `Kind`, `Hazards`, `Cargo-Feature` |\n");
    md.push_str(&format!("| `{}` | `{k}/`: the minimal cargo workspace (`Cargo.toml`, `Cargo.lock`, `crates/`), `shim-c/`, `tests/` (stress suite + `run-stress`) |\n", names.kit_tarball()));
    md.push_str(&format!("| `{}` | `{k}/vendor/`: {} crates, `cargo vendor` of that workspace |\n\n", names.vendor_tarball(), bundled.len()));

    md.push_str("## Route 1: vendored (Fedora with bundled crates, RHEL, Ubuntu main, by hand)\n\n");
    md.push_str(&format!(
        "By hand, in an empty directory holding `cffi-{cffi}.tar.gz` (PyPI, sha256 \
         `1c39c6016c32bc48dd54561950ebd6836e1670f2ae46128f67cf49e789c52824`), with \
         `EXPORT` = this directory and `PYTHON` = the interpreter to build for (a venv's \
         python with setuptools and pycparser, or the system one); needs no network \
         (`cargo --offline`, `pip --no-index`). `cargo xtask export --check` runs exactly \
         this block.\n\n"
    ));
    md.push_str(BY_HAND_BEGIN);
    md.push_str(&format!(
        "set -e\n\
         tar xzf cffi-{cffi}.tar.gz\n\
         cd cffi-{cffi}\n\
         cp -r \"$EXPORT/patches\" patches && quilt push -a -q && rm -rf patches .pc\n\
         tar xJf \"$EXPORT/{kt}\"\n\
         tar xJf \"$EXPORT/{vt}\"\n\
         cd {k}\n\
         mkdir -p .cargo\n\
         printf '[source.crates-io]\\nreplace-with = \"vendored-sources\"\\n\\n[source.vendored-sources]\\ndirectory = \"vendor\"\\n' > .cargo/config.toml\n\
         PYO3_PYTHON=\"$PYTHON\" PYO3_BUILD_EXTENSION_MODULE=1 CFFI_FT_CFFI_HEADERS=\"$PWD/../src/cffi\" \\\n    \
         cargo build --offline --locked --release -p cffi-ft{fa}\n\
         cd ..\n\
         CFFI_FT_STATICLIB=\"$PWD/{k}/target/release/libcffi_ft.a\" CFFI_FT_SHIM_DIR=\"$PWD/{k}/shim-c\" \\\n    \
         \"$PYTHON\" -m pip install --no-index --no-build-isolation --no-deps .\n\
         \"$PYTHON\" -c 'import _cffi_backend, sys; print(_cffi_backend.__cffi_ft__, sys._is_gil_enabled())'\n\
         ```\n\n",
        kt = names.kit_tarball(),
        vt = names.vendor_tarball(),
        fa = feature_args,
    ));
    md.push_str(&format!(
        "### Fedora spec (vendored)\n\n\
         Fedora builds python-cffi for the main `python3` only; for a free-threaded build \
         use `%{{python3}}` = `python3.13t` (`python3.13-freethreading`). Not run here (no \
         rpmbuild on the kit's machines); the macros are those of `cargo-rpm-macros`.\n\n\
         ```spec\n\
         Source0:        %{{pypi_source cffi {cffi}}}\n\
         Source1:        {kt}\n\
         Source2:        {vt}\n\
         # the export's patches/, in series order\n",
        kt = names.kit_tarball(),
        vt = names.vendor_tarball(),
    ));
    for (i, p) in patches.iter().enumerate() {
        md.push_str(&format!("Patch{:04}:      {}\n", i + 1, p.name));
    }
    md.push_str(&format!(
        "\n\
         # cffi is MIT; the rest is the staticlib's crates (the kit is MIT), from %cargo_license_summary\n\
         License:        {license}\n\
         BuildRequires:  cargo-rpm-macros >= 26\n\
         BuildRequires:  gcc\n\
         BuildRequires:  libffi-devel\n{clang}\
         \n\
         %prep\n\
         %autosetup -p1 -a1 -a2 -n cffi-{cffi}\n\
         cd {k}\n\
         %cargo_prep -v vendor\n\
         cd ..\n\
         \n\
         %build\n\
         cd {k}\n\
         export PYO3_PYTHON=%{{python3}} PYO3_BUILD_EXTENSION_MODULE=1 CFFI_FT_CFFI_HEADERS=$PWD/../src/cffi\n\
         %cargo_build{ffa}\n\
         %{{cargo_license_summary}}\n\
         %{{cargo_license}} > LICENSE.dependencies\n\
         %{{cargo_vendor_manifest}}\n\
         cd ..\n\
         export CFFI_FT_STATICLIB=$(find $PWD/{k}/target -name libcffi_ft.a -path '*/rpm/*' -print -quit)\n\
         export CFFI_FT_SHIM_DIR=$PWD/{k}/shim-c\n\
         %pyproject_wheel\n\
         \n\
         %check\n\
         %pytest\n\
         %{{py3_test_envvars}} PYTHON=%{{python3}} sh {k}/tests/run-stress\n\
         \n\
         %files -n python3-cffi -f %{{pyproject_files}}\n\
         %license LICENSE {k}/LICENSE.dependencies {k}/cargo-vendor.txt\n\
         ```\n\n\
         `%cargo_vendor_manifest` writes `cargo-vendor.txt`, from which the bundled() \
         Provides are generated.\n\n",
        clang = if kit.needs_libclang { "BuildRequires:  clang-libs\n" } else { "" },
        ffa = ft_feature_args,
    ));

    md.push_str("### Bundled crates and their licenses (`cargo metadata`)\n\n| crate | version | license |\n|---|---|---|\n");
    for c in &bundled {
        md.push_str(&format!("| {} | {} | {} |\n", c.name, c.version, c.license));
    }
    for c in crates.iter().filter(|c| c.local) {
        md.push_str(&format!("| {} (the kit) | {} | {} |\n", c.name, c.version, c.license));
    }
    md.push('\n');

    md.push_str("## Route 2: unvendored (Debian: librust-*-dev from the archive)\n\n");
    let deps = direct_deps(crates);
    let rels: Vec<String> = deps.iter().map(|d| debian_relation(&d.name, &d.req)).collect();
    md.push_str(&format!(
        "Debian policy discourages embedded copies: build against the Rust team's \
         `librust-*-dev` packages (the system registry under `/usr/share/cargo/registry`, \
         set up by `dh-cargo`'s `cargo prepare-debian`). The kit's tarball becomes a second \
         orig component (`python-cffi_{cffi}.orig-cffi-ft.tar.xz`, unpacked as `cffi-ft/`); \
         its `Cargo.lock` is ignored there (Debian's versions decide). The patches go to \
         `debian/patches/` with their `series`. Debian ships no free-threaded \
         interpreter, so there this route builds for the GIL `python3` (the patched backend \
         behaves as 1.17.1 there); the same rules serve a site's own `python3.13t`.\n\n\
         ```\n\
         Build-Depends: debhelper-compat (= 13), dh-python, dh-cargo, pybuild-plugin-pyproject,\n \
         cargo (>= {rv}), rustc (>= {rv}), python3-all-dev, python3-setuptools, libffi-dev,{clang}\n {rels}\n\
         ```\n\n",
        rv = kit.rust_version,
        clang = if kit.needs_libclang { " libclang1," } else { "" },
        rels = rels.join(",\n "),
    ));
    md.push_str("What Debian ships (a direct dependency of the kit's crates each; `yes` = the candidate meets the kit's requirement):\n\n");
    md.push_str("| crate | kit requires | package |");
    for s in debian {
        md.push_str(&format!(" {} |", s.name));
    }
    md.push_str("\n|---|---|---|");
    for _ in debian {
        md.push_str("---|");
    }
    md.push('\n');
    let mut unmet: Vec<String> = Vec::new();
    for d in &deps {
        let pkg = debian_package(&d.name);
        md.push_str(&format!("| {}{} | `{}` | {} |", d.name, if d.build { " (build)" } else { "" }, d.req, pkg));
        for s in debian {
            let cell = match s.versions.get(&pkg) {
                Some(Some(v)) if satisfies(&d.req, v) => format!("{v} yes"),
                Some(Some(v)) => {
                    unmet.push(format!("{} {} in {} (kit: `{}`)", d.name, v, s.name, d.req));
                    format!("{v} **no**")
                }
                Some(None) => "none".to_string(),
                None => "not recorded".to_string(),
            };
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
    md.push('\n');
    for s in debian {
        md.push_str(&format!("* {}: {}\n", s.name, s.how));
    }
    if !unmet.is_empty() {
        md.push_str(&format!(
            "\nNot met: {}. Where the kit pins an exact version (pyo3-ffi: `=0.28.3`, \
             the last series that builds for 3.13t) and the archive has another patch \
             release of the same series, relax the pin in `debian/patches` \
             (`pyo3-ffi = \"0.28\"`, `pyo3-build-config = \"0.28\"`) after running the \
             kit's checks against that version; a missing major series has to be \
             packaged (debcargo) first.\n",
            unmet.join("; ")
        ));
    }
    md.push_str(&format!(
        "\n`debian/rules` (the staticlib is built per interpreter before pybuild builds \
         the extension for it):\n\n\
         ```make\n\
         export PYBUILD_NAME = cffi\n\
         export CARGO_HOME = $(CURDIR)/debian/cargo_home\n\
         export CFFI_FT_SHIM_DIR = $(CURDIR)/cffi-ft/shim-c\n\
         export PYO3_BUILD_EXTENSION_MODULE = 1\n\
         export CFFI_FT_CFFI_HEADERS = $(CURDIR)/src/cffi\n\
         CFFI_FT_FEATURES = {features}\n\
         \n\
         %:\n\
         \tdh $@ --buildsystem=pybuild\n\
         \n\
         override_dh_auto_configure:\n\
         \t/usr/share/cargo/bin/cargo prepare-debian $(CURDIR)/debian/cargo_registry --link-from-system\n\
         \trm -f cffi-ft/Cargo.lock\n\
         \tdh_auto_configure\n\
         \n\
         override_dh_auto_build:\n\
         \tset -e; for v in $$(py3versions -sv); do \\\n\
         \t  (cd cffi-ft && PYO3_PYTHON=python$$v cargo build --offline --release -p cffi-ft \\\n\
         \t     {dfa}--target-dir $(CURDIR)/debian/cargo-target/$$v); \\\n\
         \t  CFFI_FT_STATICLIB=$(CURDIR)/debian/cargo-target/$$v/release/libcffi_ft.a \\\n\
         \t    dh_auto_build --buildsystem=pybuild -- --pyver $$v; \\\n\
         \tdone\n\
         ```\n\n\
         Not run here: this machine has no sid build chroot (and sid's versions above \
         decide whether it builds as is).\n\n",
        features = if kit.features.is_empty() { "".into() } else { features_csv.clone() },
        dfa = if kit.features.is_empty() { String::new() } else { "--features $(CFFI_FT_FEATURES) ".to_string() },
    ));

    md.push_str(&format!(
        "## Installed-package check (both routes)\n\n\
         `{k}/tests/run-stress` runs a short stress run (`--stress-scale 0.1`) of the \
         scenarios step {step} must pass (`-k \"{sel}\"`; each in its own subprocess, a \
         crash fails that scenario) against the cffi that `$PYTHON` imports. It needs \
         pytest, gcc and the Python headers.\n\n\
         Debian, `debian/tests/control` (autopkgtest, against the installed python3-cffi):\n\n\
         ```\n\
         Test-Command: for v in $(py3versions -sv); do PYTHON=python$v sh cffi-ft/tests/run-stress; done\n\
         Depends: python3-all-dev, python3-cffi, python3-pytest, gcc, libffi-dev\n\
         Restrictions: allow-stderr\n\
         ```\n\n\
         Fedora, in `%check` (shown above):\n\n\
         ```spec\n\
         %{{py3_test_envvars}} PYTHON=%{{python3}} sh {k}/tests/run-stress\n\
         ```\n",
        sel = stress_selection(cffi, step).unwrap_or_default(),
    ));
    md
}

/// The by-hand block of a PACKAGING.md.
fn by_hand_block(md: &str) -> Result<String> {
    let start = md.find(BY_HAND_BEGIN).context("PACKAGING.md has no by-hand block")? + "```sh\n".len();
    let len = md[start..].find("```\n").context("the by-hand block is not closed")?;
    Ok(md[start..start + len].to_string())
}

// ---------------------------------------------------------------------------------------
// --check

fn check_export(kit: &StepKit, to: &Path, interp: &Interpreter) -> Result<bool> {
    let label = interp.label();
    let log = util::fresh_log(&format!("export-check-step{}.log", kit.step));
    util::ensure_debian_packages(&["quilt"], "the export check's tools", &log)?;
    let up = upstream::fetch_sdist(&kit.series.cffi_version)?;
    let scratch = offline::outside_scratch("cffi-ft-export-check")?;
    let dir = scratch.path();

    // 1. Debian's quilt onto a pristine tree, compared with xtask's own application.
    status("export --check: quilt push -a onto a pristine tree");
    let quilted = dir.join("quilt").join(format!("cffi-{}", kit.series.cffi_version));
    util::copy_tree(&up.tree, &quilted, &[".cffi-ft-sdist-sha256"])?;
    util::copy_tree(&to.join("patches"), &quilted.join("patches"), &[])?;
    let out = Command::new("quilt")
        .args(["push", "-a"])
        .current_dir(&quilted)
        .env("QUILT_PATCHES", "patches")
        .env("QUILT_PUSH_ARGS", "")
        .env("HOME", dir)
        .output()
        .context("cannot run quilt")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    fs::write(dir.join("quilt.log"), &text)?;
    let last = kit.series.up_to(kit.step).last().map(|p| p.name.clone()).unwrap_or_default();
    if !out.status.success() || !text.contains(&format!("Now at patch patches/{last}")) {
        bail!("quilt push -a failed on a pristine tree:\n{}", text.lines().rev().take(8).collect::<Vec<_>>().join("\n"));
    }
    // dpkg-source and Fedora's %autosetup apply with fuzz 0: a fuzzy hunk is a failure
    let fuzz = text.lines().filter(|l| l.contains("with fuzz")).count();
    let offsets = text.lines().filter(|l| l.contains("(offset")).count();
    if fuzz > 0 {
        bail!("quilt push -a needed fuzz for {fuzz} hunk(s) (see {}/quilt.log)", dir.display());
    }
    println!(
        "    quilt push -a: {} patches applied, now at {last} (no fuzz; {offsets} hunk(s) at a line offset)",
        kit.series.up_to(kit.step).len()
    );
    let reference = dir.join("reference");
    util::copy_tree(&up.tree, &reference, &[".cffi-ft-sdist-sha256"])?;
    series::apply(&reference, &kit.series.up_to(kit.step))?;
    let diff = Command::new("diff")
        .args(["-r", "-q", "-x", ".pc", "-x", "patches"])
        .arg(&reference)
        .arg(&quilted)
        .output()?;
    if !diff.status.success() {
        bail!("quilt's tree differs from the series applied by xtask: {}", String::from_utf8_lossy(&diff.stdout).trim());
    }
    println!("    quilt's tree is identical to the series applied by xtask");

    // 2. PACKAGING.md's vendored route, as written, offline.
    status(format!("export --check [{label}]: PACKAGING.md's vendored route, run as written, offline"));
    let md = fs::read_to_string(to.join("PACKAGING.md"))?;
    let block = by_hand_block(&md)?;
    let work = dir.join("by-hand");
    fs::create_dir_all(&work)?;
    fs::copy(upstream_archive(&kit.series.cffi_version)?, work.join(format!("cffi-{}.tar.gz", kit.series.cffi_version)))?;
    fs::write(work.join("route.sh"), &block)?;
    let python = offline::fresh_venv(interp, &dir.join("v"), &log)?;
    let cargo_home = offline::empty_cargo_home(dir)?;
    Step {
        label: format!("[{label}] sh route.sh (PACKAGING.md's by-hand block)"),
        cmd: offline::build_command(Path::new("sh"), &cargo_home)
            .arg("route.sh")
            .current_dir(&work)
            .env("EXPORT", to)
            .env("PYTHON", &python)
            .env("HOME", dir),
        log: &log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run_ok()?;
    let got = offline::inspect_installed_as(&python, kit, dir, &kit.series.cffi_version)?;
    println!("    by hand [{label}]: {}", got.summary());
    let mut ok = offline::run_build_suite(&python, kit, &dir.join("tmp"), &label, &log)?;

    // 3. The installed-package check, from the kit tarball, against that install.
    let run_stress = work.join(format!("cffi-{}", kit.series.cffi_version)).join(&Names::of(kit).kit).join("tests").join("run-stress");
    let finished = Step {
        label: format!("[{label}] {} (installed-package check)", run_stress.display()),
        cmd: offline::command(Path::new("sh")).arg(&run_stress).env("PYTHON", &python).env_remove("PYTHON_GIL"),
        log: &log,
        timeout: Some(Duration::from_secs(1800)),
    }
    .run()?;
    let summary = offline::pytest_summary(&log);
    println!("    installed-package check [{label}]: {} ({summary})", if finished.success() { "ok" } else { "FAILED" });
    ok &= finished.success();
    Ok(ok)
}

/// The cached pristine sdist archive (downloaded and verified by upstream.rs).
fn upstream_archive(version: &str) -> Result<PathBuf> {
    let path = util::cache_dir()?.join("downloads").join(format!("cffi-{version}.tar.gz"));
    if !path.is_file() {
        bail!("{} is missing (run `cargo xtask fetch-upstream`)", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "Subject: do a thing\nStep: 1\nKind: backend\nCargo-Feature: ctype-intern\nHazards: A1 A2\nDescription:\n first line\n second line\nWhy:\n because\n---\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n";

    #[test]
    fn headers_become_dep3() {
        let got = dep3(OURS, "A Person <a@example.org>", "2026-11-24").unwrap();
        let want = "Description: do a thing\n first line\n second line\n .\n Why:\n because\n\
                    Author: A Person <a@example.org>\nForwarded: not-needed\nLast-Update: 2026-11-24\n\
                    Step: 1\nKind: backend\nHazards: A1 A2\nCargo-Feature: ctype-intern\n---\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(got, want);
        assert!(dep3("Subject: x\nStep: 0\n", "a", "b").unwrap_err().to_string().contains("no `---`"));
    }

    #[test]
    fn every_real_patch_converts() {
        let series = crate::series::Series::load("1.17.1").unwrap();
        for p in &series.patches {
            let text = fs::read_to_string(&p.file).unwrap();
            let got = dep3(&text, "a <b@c>", "2026-01-01").unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(got.starts_with(&format!("Description: {}\n", p.subject)), "{}", p.name);
            assert!(got.contains(&format!("\nStep: {}\n", p.step)), "{}", p.name);
            assert!(got.contains("\nHazards: "), "{}", p.name);
            // the diff is untouched
            assert!(got.ends_with(text.split_once("\n---\n").unwrap().1), "{}", p.name);
        }
    }

    #[test]
    fn cargo_requirements_as_debian_relations() {
        assert_eq!(debian_relation("arc-swap", "^1.7"), "librust-arc-swap-dev (>= 1.7), librust-arc-swap-dev (<< 2~)");
        assert_eq!(debian_relation("hashbrown", "^0.15"), "librust-hashbrown-dev (>= 0.15), librust-hashbrown-dev (<< 0.16~)");
        assert_eq!(debian_relation("pyo3-ffi", "=0.28.3"), "librust-pyo3-ffi-dev (>= 0.28.3), librust-pyo3-ffi-dev (<< 0.28.4~)");
        assert_eq!(debian_relation("rustc-hash", "^2"), "librust-rustc-hash-dev (>= 2), librust-rustc-hash-dev (<< 3~)");
    }

    #[test]
    fn debian_versions_against_cargo_requirements() {
        assert!(satisfies("^1.7", "1.9.3-1"));
        assert!(!satisfies("^1.7", "1.5.1-1"));
        assert!(!satisfies("^0.70", "0.72.1-2"));
        assert!(satisfies("^0.70", "0.70.1-1+b1"));
        assert!(!satisfies("=0.28.3", "0.28.2-1"));
        assert!(satisfies("=0.28.3", "0.28.3-1"));
        assert!(satisfies("^2", "2.1.1-1"));
        assert!(!satisfies("^2", "1.1.0-1"));
        assert!(satisfies("^0.2", "1:0.2.172-1"));
    }

    #[test]
    fn apt_cache_policy_output() {
        let text = "librust-arc-swap-dev:\n  Installed: (none)\n  Candidate: 1.5.1-1\n  Version table:\n     1.5.1-1 500\nlibrust-nothing-dev:\n  Installed: (none)\n  Candidate: (none)\n";
        let got = parse_policy(text);
        assert_eq!(got["librust-arc-swap-dev"].as_deref(), Some("1.5.1-1"));
        assert_eq!(got["librust-nothing-dev"], None);
    }

    #[test]
    fn the_stress_check_selects_what_the_step_must_pass() {
        assert_eq!(stress_selection("1.17.1", 0).unwrap(), "s01_gil_stays_off");
        assert_eq!(stress_selection("1.17.1", 1).unwrap(), "s01_gil_stays_off or unique-cache");
        assert_eq!(
            stress_selection("1.17.1", 4).unwrap(),
            "s01_gil_stays_off or unique-cache or library-registry or callbacks or type-realization"
        );
    }

    #[test]
    fn the_by_hand_block_is_found() {
        let md = format!("intro\n{BY_HAND_BEGIN}echo hi\n```\n\nmore\n```sh\nother\n```\n");
        assert_eq!(by_hand_block(&md).unwrap(), "# --- vendored route, by hand ---\necho hi\n");
    }
}
