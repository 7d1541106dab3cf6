//! Interpreters: probing a given `python`, or building CPython 3.13 twice (GIL and
//! `--disable-gil`) from Debian trixie's `python3.13` source package into the cache.
//!
//! The source is fetched with `apt-get source --download-only` through a private apt
//! configuration under the cache (a `deb-src` entry for trixie that reuses the URI and
//! keyring of this machine's own Debian source), so the system's apt setup is not
//! touched. Only the pristine upstream tarball of the source package is built: Debian's
//! own patches target the system layout (`/usr`, dist-packages) and are not applied.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::{self, status, Step};

/// The oldest interpreter the kit supports (cffi-ft targets 3.13).
const MIN_VERSION: (u32, u32) = (3, 13);

/// An interpreter the harness runs things with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interpreter {
    pub executable: PathBuf,
    /// `sys.version_info` as "3.13.5".
    pub version: String,
    pub free_threaded: bool,
    /// Built with ThreadSanitizer (`--with-thread-sanitizer`): `cargo xtask tsan` only.
    #[serde(default)]
    pub tsan: bool,
}

impl Interpreter {
    /// "3.13.5", "3.13.5t" or "3.13.5t-tsan": the column name in matrices and a path
    /// component (cells, cargo target dirs).
    pub fn label(&self) -> String {
        format!(
            "{}{}{}",
            self.version,
            if self.free_threaded { "t" } else { "" },
            if self.tsan { "-tsan" } else { "" }
        )
    }

    /// `<this python> -m venv dir`, its step labelled `[tag] venv` in `log`; returns the
    /// venv's python.
    pub fn create_venv(&self, dir: &Path, tag: &str, log: &Path) -> Result<PathBuf> {
        Step {
            label: format!("[{tag}] venv"),
            cmd: Command::new(&self.executable).arg("-m").arg("venv").arg(dir),
            log,
            timeout: Some(std::time::Duration::from_secs(300)),
        }
        .run_ok()?;
        Ok(dir.join("bin").join("python"))
    }
}

const PROBE: &str = r#"
import json, sys, sysconfig
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "executable": sys.executable,
    "implementation": sys.implementation.name,
    "tsan": "--with-thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or ""),
}))
"#;

#[derive(Deserialize)]
struct ProbeOutput {
    version: String,
    free_threaded: bool,
    executable: PathBuf,
    implementation: String,
    #[serde(default)]
    tsan: bool,
}

/// Asks `path` what it is. Fails with one clear line if it is not a usable CPython ≥ 3.13.
pub fn probe(path: &Path) -> Result<Interpreter> {
    if !path.exists() {
        bail!("--python {}: no such file", path.display());
    }
    let out = Command::new(path)
        .args(["-I", "-c", PROBE])
        .env_remove("PYTHON_GIL")
        // a ThreadSanitizer build exits 66 after any report; the probe only asks questions
        .env("TSAN_OPTIONS", "exitcode=0 report_bugs=0")
        .output()
        .map_err(|e| anyhow::anyhow!("--python {}: cannot run it ({e})", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<ProbeOutput> = out
        .status
        .success()
        .then(|| text.lines().rev().find_map(|l| serde_json::from_str(l).ok()))
        .flatten();
    let Some(p) = parsed else {
        bail!("--python {}: not a Python interpreter (it did not answer the probe)", path.display());
    };
    if p.implementation != "cpython" {
        bail!("--python {}: is {} {}, the kit needs CPython", path.display(), p.implementation, p.version);
    }
    let (major, minor) = major_minor(&p.version)?;
    if (major, minor) < MIN_VERSION {
        bail!(
            "--python {}: is Python {}, the kit needs CPython {}.{} or newer",
            path.display(),
            p.version,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    if (major, minor) != MIN_VERSION {
        util::warn(format!(
            "{} is Python {}: the kit is built and measured for 3.13; results may differ",
            path.display(),
            p.version
        ));
    }
    Ok(Interpreter { executable: p.executable, version: p.version, free_threaded: p.free_threaded, tsan: p.tsan })
}

fn major_minor(version: &str) -> Result<(u32, u32)> {
    let mut it = version.split('.');
    let major = it.next().and_then(|s| s.parse().ok());
    let minor = it.next().and_then(|s| s.parse().ok());
    match (major, minor) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("cannot read Python version {version:?}"),
    }
}

/// The interpreters to use: the ones given with `--python`, or the two default builds.
pub fn resolve(given: &[PathBuf]) -> Result<Vec<Interpreter>> {
    if given.is_empty() {
        return ensure_default_builds();
    }
    let mut out: Vec<Interpreter> = Vec::new();
    for path in given {
        let interp = probe(path)?;
        if out.iter().any(|i| i.executable == interp.executable) {
            continue;
        }
        out.push(interp);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Default builds from Debian's source package

/// The flavours the kit builds: the two default ones, and on request (`python --tsan`)
/// a free-threaded build with ThreadSanitizer for `cargo xtask tsan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Gil,
    FreeThreaded,
    /// `--disable-gil --with-thread-sanitizer`, built with clang, like CPython's own TSan
    /// CI job: a static interpreter (the TSan runtime lives in the executable, and
    /// extensions built with it get `-fsanitize=thread` from sysconfig's flags).
    FreeThreadedTsan,
}

impl Flavour {
    fn dir_suffix(self) -> &'static str {
        match self {
            Flavour::Gil => "gil",
            Flavour::FreeThreaded => "t",
            Flavour::FreeThreadedTsan => "t-tsan",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Flavour> {
        [Flavour::Gil, Flavour::FreeThreaded, Flavour::FreeThreadedTsan]
            .into_iter()
            .find(|f| f.dir_suffix() == suffix)
    }

    fn free_threaded(self) -> bool {
        self != Flavour::Gil
    }

    fn configure_args(self, prefix: &Path) -> Vec<String> {
        let mut args = vec![format!("--prefix={}", prefix.display())];
        if self == Flavour::FreeThreadedTsan {
            args.extend(["CC=clang", "CXX=clang++", "--with-thread-sanitizer"].map(String::from));
        } else {
            args.push("--enable-shared".to_string());
            args.push(format!("LDFLAGS=-Wl,-rpath,{}", prefix.join("lib").display()));
        }
        args.push("--with-ensurepip=install".to_string());
        if self.free_threaded() {
            args.push("--disable-gil".to_string());
        }
        args
    }

    /// Debian packages this flavour's build needs besides [`BUILD_DEPS`].
    fn extra_build_deps(self) -> &'static [&'static str] {
        match self {
            // llvm provides llvm-symbolizer, which TSan reports need for function names
            // (libclang-rt-dev: the TSan runtime itself)
            Flavour::FreeThreadedTsan => &["clang", "libclang-rt-dev", "llvm"],
            _ => &[],
        }
    }

    fn executable(self, prefix: &Path, version: &str) -> PathBuf {
        let mm = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        let t = if self.free_threaded() { "t" } else { "" };
        prefix.join("bin").join(format!("python{mm}{t}"))
    }
}

/// Written into an install prefix once it is complete; a prefix without it is rebuilt.
#[derive(Serialize, Deserialize)]
struct BuildStamp {
    version: String,
    debian_version: String,
    flavour: String,
    configure_args: Vec<String>,
}

const STAMP: &str = "cffi-ft-build.json";

fn python_root() -> Result<PathBuf> {
    Ok(util::cache_dir()?.join("python"))
}

/// Finds complete cached builds: (version, flavour) → interpreter.
fn cached_builds() -> Result<Vec<(Flavour, Interpreter)>> {
    let root = python_root()?;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(&root) else { return Ok(found) };
    for entry in entries.flatten() {
        let prefix = entry.path();
        let Ok(text) = fs::read_to_string(prefix.join(STAMP)) else { continue };
        let Ok(stamp) = serde_json::from_str::<BuildStamp>(&text) else { continue };
        let Some(flavour) = Flavour::from_suffix(&stamp.flavour) else { continue };
        let exe = flavour.executable(&prefix, &stamp.version);
        match probe(&exe) {
            Ok(interp)
                if interp.free_threaded == flavour.free_threaded()
                    && interp.tsan == (flavour == Flavour::FreeThreadedTsan) =>
            {
                found.push((flavour, interp))
            }
            _ => util::warn(format!("ignoring broken cached build {}", prefix.display())),
        }
    }
    // newest version first
    found.sort_by(|a, b| version_key(&b.1.version).cmp(&version_key(&a.1.version)));
    Ok(found)
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').filter_map(|p| p.parse().ok()).collect()
}

/// Returns the GIL and free-threaded builds, building what is missing.
pub fn ensure_default_builds() -> Result<Vec<Interpreter>> {
    let cached = cached_builds()?;
    let pick = |f: Flavour| cached.iter().find(|(fl, _)| *fl == f).map(|(_, i)| i.clone());
    if let (Some(gil), Some(t)) = (pick(Flavour::Gil), pick(Flavour::FreeThreaded)) {
        status(format!(
            "interpreters: CPython {} and {} (cached in {})",
            gil.label(),
            t.label(),
            python_root()?.display()
        ));
        return Ok(vec![gil, t]);
    }
    let source = fetch_debian_source()?;
    let mut out = Vec::new();
    for flavour in [Flavour::Gil, Flavour::FreeThreaded] {
        match pick(flavour) {
            Some(i) if i.version == source.version => out.push(i),
            _ => out.push(build(&source, flavour)?),
        }
    }
    Ok(out)
}

/// The free-threaded ThreadSanitizer build (`cargo xtask python --tsan`), built when
/// missing; never part of the default pair.
pub fn ensure_tsan_build() -> Result<Interpreter> {
    let cached = cached_builds()?;
    if let Some((_, interp)) = cached.iter().find(|(f, _)| *f == Flavour::FreeThreadedTsan) {
        status(format!("TSan interpreter: CPython {} (cached in {})", interp.label(), python_root()?.display()));
        return Ok(interp.clone());
    }
    let source = fetch_debian_source()?;
    build(&source, Flavour::FreeThreadedTsan)
}

/// Where TSan's symbolizer is (Debian's `llvm` puts it in /usr/bin, versioned ones in
/// /usr/lib/llvm-N/bin).
pub fn llvm_symbolizer() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/bin/llvm-symbolizer")];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        let mut versioned: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("llvm-")))
            .map(|p| p.join("bin").join("llvm-symbolizer"))
            .collect();
        versioned.sort();
        candidates.extend(versioned.into_iter().rev());
    }
    candidates.into_iter().find(|p| p.exists())
}

/// The source tree of the cached CPython build (its `Tools/tsan/` has the interpreter's
/// own suppressions).
pub fn cpython_source_tree(version: &str) -> Result<PathBuf> {
    let tree = util::cache_dir()?.join("src").join(format!("Python-{version}"));
    if tree.join("configure").exists() {
        Ok(tree)
    } else {
        Ok(fetch_debian_source()?.tree)
    }
}

/// An unpacked CPython source tree from Debian's source package.
struct DebianSource {
    tree: PathBuf,
    version: String,
    debian_version: String,
}

/// The URI and keyring of this machine's Debian archive entry, from apt's own config.
fn system_debian_archive() -> Result<(String, Option<String>)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else { continue };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            find_archive_deb822(&text)
        } else if name.ends_with(".list") {
            find_archive_one_line(&text)
        } else {
            None
        };
        if found.is_some() {
            return found.context("unreachable");
        }
    }
    bail!(
        "cannot find a Debian archive in /etc/apt/sources.list{{,.d}}: pass --python PATH \
         (twice: a GIL and a free-threaded CPython 3.13) instead of building them"
    )
}

fn is_debian_archive_uri(uri: &str) -> bool {
    let trimmed = uri.trim_end_matches('/');
    trimmed.ends_with("/debian") && !trimmed.contains("security")
}

fn find_archive_deb822(text: &str) -> Option<(String, Option<String>)> {
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_string())
            })
        };
        let enabled = field("Enabled").map_or(true, |v| v != "no");
        let types = field("Types").unwrap_or_default();
        let Some(uris) = field("URIs") else { continue };
        if !enabled || !types.split_whitespace().any(|t| t == "deb" || t == "deb-src") {
            continue;
        }
        if let Some(uri) = uris.split_whitespace().find(|u| is_debian_archive_uri(u)) {
            return Some((uri.to_string(), field("Signed-By")));
        }
    }
    None
}

fn find_archive_one_line(text: &str) -> Option<(String, Option<String>)> {
    for line in text.lines() {
        let line = line.trim();
        if !(line.starts_with("deb ") || line.starts_with("deb-src ")) {
            continue;
        }
        let mut signed_by = None;
        let mut words = Vec::new();
        let mut rest = line.split_once(' ')?.1.trim();
        if rest.starts_with('[') {
            let end = rest.find(']')?;
            for opt in rest[1..end].split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = rest[end + 1..].trim();
        }
        words.extend(rest.split_whitespace());
        if let Some(uri) = words.first().filter(|u| is_debian_archive_uri(u)) {
            return Some((uri.to_string(), signed_by));
        }
    }
    None
}

/// A private apt setup in `apt` (the system's apt configuration is not touched): lists
/// and a cache of its own, and one sources entry, the file `name` of its
/// `sources.list.d`, for the system's Debian archive: `Types: {types}`, the archive's
/// URI, `Suites: {suite}`, `Components: main`, the `extra` fields and the archive's key.
/// Returns the URI and the `-o` options that point apt-get and apt-cache at the setup.
pub(crate) fn private_apt(apt: &Path, name: &str, types: &str, suite: &str, extra: &str) -> Result<(String, Vec<String>)> {
    let (uri, signed_by) = system_debian_archive()?;
    let parts = apt.join("sources.list.d");
    fs::create_dir_all(&parts)?;
    fs::create_dir_all(apt.join("lists").join("partial"))?;
    fs::create_dir_all(apt.join("cache").join("archives").join("partial"))?;
    let mut entry = format!("Types: {types}\nURIs: {uri}\nSuites: {suite}\nComponents: main\n{extra}");
    if let Some(key) = signed_by {
        entry.push_str(&format!("Signed-By: {key}\n"));
    }
    util::write_atomic(&parts.join(name), entry.as_bytes())?;
    let options = [
        "Dir::Etc::SourceList=/dev/null".to_string(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "APT::Sandbox::User=root".to_string(),
    ];
    Ok((uri, options.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()))
}

/// `apt-get source --download-only python3.13` from trixie, through a private apt config.
fn fetch_debian_source() -> Result<DebianSource> {
    let cache = util::cache_dir()?;
    let (uri, apt_opts) = private_apt(&cache.join("apt"), "cffi-ft-trixie-src.sources", "deb-src", "trixie", "")?;
    let log = cache.join("logs").join("debian-source.log");
    status(format!("fetching Debian trixie's python3.13 source package (from {uri})"));
    Step {
        label: "apt-get update (trixie deb-src, private lists)".into(),
        cmd: Command::new("apt-get").args(&apt_opts).arg("update"),
        log: &log,
        timeout: Some(std::time::Duration::from_secs(600)),
    }
    .run_ok()
    .context("cannot read trixie's source index (is apt-get available and the archive reachable?)")?;
    let downloads = cache.join("downloads").join("python3.13");
    util::remove_dir_if_exists(&downloads)?;
    fs::create_dir_all(&downloads)?;
    Step {
        label: "apt-get source --download-only python3.13".into(),
        cmd: Command::new("apt-get")
            .args(&apt_opts)
            .args(["source", "--download-only", "python3.13"])
            .current_dir(&downloads),
        log: &log,
        timeout: Some(std::time::Duration::from_secs(1200)),
    }
    .run_ok()?;
    let mut dsc = None;
    let mut orig = None;
    for e in fs::read_dir(&downloads)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dsc") {
            dsc = Some(name);
        } else if name.contains(".orig.tar.") && !name.ends_with(".asc") {
            orig = Some(e.path());
        }
    }
    let (Some(dsc), Some(orig)) = (dsc, orig) else {
        bail!("apt-get source left no .dsc and orig tarball in {}", downloads.display());
    };
    // python3.13_3.13.5-2+deb13u5.dsc
    let debian_version = dsc
        .trim_end_matches(".dsc")
        .split_once('_')
        .map(|(_, v)| v.to_string())
        .context("unexpected .dsc name")?;
    let version = debian_version.split(['-', '+', '~']).next().unwrap_or("").to_string();
    let src_root = cache.join("src");
    let tree = src_root.join(format!("Python-{version}"));
    if !tree.join("configure").exists() {
        let scratch = util::ScratchDir::new_in(&src_root, "unpack")?;
        Step {
            label: format!("unpacking {}", orig.file_name().unwrap_or_default().to_string_lossy()),
            cmd: Command::new("tar").arg("xf").arg(&orig).current_dir(scratch.path()),
            log: &log,
            timeout: None,
        }
        .run_ok()?;
        let unpacked = scratch.path().join(format!("Python-{version}"));
        if !unpacked.join("configure").exists() {
            bail!("{} did not contain Python-{version}/configure", orig.display());
        }
        util::remove_dir_if_exists(&tree)?;
        fs::rename(&unpacked, &tree)?;
    }
    Ok(DebianSource { tree, version, debian_version })
}

/// Debian packages CPython's build needs (modules pip and the cffi suite use).
const BUILD_DEPS: &[&str] = &[
    "gcc", "make", "pkg-config", "libffi-dev", "libssl-dev", "zlib1g-dev", "libbz2-dev",
    "liblzma-dev", "libsqlite3-dev", "libreadline-dev", "libexpat1-dev", "uuid-dev",
];

fn build(source: &DebianSource, flavour: Flavour) -> Result<Interpreter> {
    let cache = util::cache_dir()?;
    let name = format!("{}-{}", source.version, flavour.dir_suffix());
    let prefix = python_root()?.join(&name);
    let build_dir = cache.join("build").join(&name);
    let log = cache.join("logs").join(format!("python-{name}.log"));
    let deps: Vec<&str> = BUILD_DEPS.iter().chain(flavour.extra_build_deps()).copied().collect();
    util::ensure_debian_packages(&deps, "build dependencies", &log)?;
    let _ = fs::remove_file(&log);
    util::remove_dir_if_exists(&prefix)?;
    util::remove_dir_if_exists(&build_dir)?;
    fs::create_dir_all(&build_dir)?;
    let t = match flavour {
        Flavour::Gil => "",
        Flavour::FreeThreaded => "t",
        Flavour::FreeThreadedTsan => "t (ThreadSanitizer)",
    };
    status(format!(
        "building CPython {}{t} from Debian {} into {} (several minutes; log: {})",
        source.version,
        source.debian_version,
        prefix.display(),
        log.display()
    ));
    let args = flavour.configure_args(&prefix);
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut steps: [(&str, Command); 3] = [
        ("configure", {
            let mut c = Command::new(source.tree.join("configure"));
            c.args(&args);
            c
        }),
        ("make", {
            let mut c = Command::new("make");
            c.arg(format!("-j{jobs}"));
            c
        }),
        ("make install", {
            let mut c = Command::new("make");
            c.arg("install");
            c
        }),
    ];
    if flavour == Flavour::FreeThreadedTsan {
        // the build runs the new interpreter (ensurepip, sysconfig): CPython's own races
        // there are not ours, and must not fail the build
        let supp = source.tree.join("Tools").join("tsan").join("suppressions_free_threading.txt");
        let opts = format!("suppressions={} exitcode=0 halt_on_error=0", supp.display());
        for (_, cmd) in steps.iter_mut() {
            cmd.env("TSAN_OPTIONS", &opts);
        }
    }
    for (what, mut cmd) in steps {
        Step {
            label: format!("CPython {}{t}: {what}", source.version),
            cmd: cmd.current_dir(&build_dir),
            log: &log,
            timeout: None,
        }
        .run_ok()?;
    }
    let exe = flavour.executable(&prefix, &source.version);
    let interp = probe(&exe)?;
    if interp.free_threaded != flavour.free_threaded() {
        bail!("{} built with the wrong flavour (Py_GIL_DISABLED mismatch)", exe.display());
    }
    let stamp = BuildStamp {
        version: source.version.clone(),
        debian_version: source.debian_version.clone(),
        flavour: flavour.dir_suffix().into(),
        configure_args: args,
    };
    util::write_atomic(&prefix.join(STAMP), serde_json::to_string_pretty(&stamp)?.as_bytes())?;
    util::remove_dir_if_exists(&build_dir)?;
    Ok(interp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_apt_setup_has_one_entry_and_points_apt_at_it() {
        let Ok((uri, key)) = system_debian_archive() else {
            eprintln!("no Debian archive in this machine's apt config: nothing to point at");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let apt = tmp.path().join("apt-sid");
        let (got_uri, opts) = private_apt(&apt, "cffi-ft-sid.sources", "deb", "sid", "Architectures: amd64\n").unwrap();
        assert_eq!(got_uri, uri);
        let entry = fs::read_to_string(apt.join("sources.list.d").join("cffi-ft-sid.sources")).unwrap();
        let mut want = format!("Types: deb\nURIs: {uri}\nSuites: sid\nComponents: main\nArchitectures: amd64\n");
        if let Some(key) = key {
            want.push_str(&format!("Signed-By: {key}\n"));
        }
        assert_eq!(entry, want);
        assert!(apt.join("lists").join("partial").is_dir() && apt.join("cache").join("archives").join("partial").is_dir());
        assert!(opts.len() == 10 && opts.iter().step_by(2).all(|o| o == "-o"), "{opts:?}");
        assert_eq!(opts[1], "Dir::Etc::SourceList=/dev/null");
        assert_eq!(opts[3], format!("Dir::Etc::SourceParts={}", apt.join("sources.list.d").display()));
    }

    #[test]
    fn finds_archive_in_deb822_and_skips_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n\
                    Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\
                    Signed-By: /usr/share/keyrings/k.gpg\n";
        assert_eq!(
            find_archive_deb822(text),
            Some(("http://mirror.example/debian".into(), Some("/usr/share/keyrings/k.gpg".into())))
        );
    }

    #[test]
    fn finds_archive_in_one_line_format() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main\n";
        assert_eq!(
            find_archive_one_line(text),
            Some(("http://m.example/debian/".into(), Some("/k.gpg".into())))
        );
        assert_eq!(find_archive_one_line("deb http://m.example/ubuntu jammy main"), None);
    }

    #[test]
    fn flavour_paths_and_args() {
        let p = Path::new("/c/python/3.13.5-t");
        assert_eq!(Flavour::FreeThreaded.executable(p, "3.13.5"), p.join("bin/python3.13t"));
        assert_eq!(Flavour::Gil.executable(p, "3.13.5"), p.join("bin/python3.13"));
        assert!(Flavour::FreeThreaded.configure_args(p).contains(&"--disable-gil".to_string()));
        assert!(!Flavour::Gil.configure_args(p).contains(&"--disable-gil".to_string()));
        let tsan = Flavour::FreeThreadedTsan.configure_args(p);
        for arg in ["--disable-gil", "--with-thread-sanitizer", "CC=clang"] {
            assert!(tsan.contains(&arg.to_string()), "{arg} missing from {tsan:?}");
        }
        assert_eq!(Flavour::FreeThreadedTsan.executable(p, "3.13.5"), p.join("bin/python3.13t"));
        for f in [Flavour::Gil, Flavour::FreeThreaded, Flavour::FreeThreadedTsan] {
            assert_eq!(Flavour::from_suffix(f.dir_suffix()), Some(f));
        }
    }

    #[test]
    fn probe_rejects_a_non_python() {
        let err = probe(Path::new("/bin/true")).unwrap_err().to_string();
        assert!(err.contains("not a Python interpreter"), "{err}");
        let err = probe(Path::new("/nonexistent/python")).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
