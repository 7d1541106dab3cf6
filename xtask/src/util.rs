//! Shared plumbing: where things live, running programs with a log and a progress line,
//! and small file-system helpers that never leave half-written results behind.

use std::ffi::OsStr;
use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `target/cffi-ft/` (or `$CFFI_FT_TARGET_DIR`): everything the harness builds and
/// reports. A separate directory lets two runs proceed side by side.
pub fn kit_target_dir() -> PathBuf {
    match std::env::var_os("CFFI_FT_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("cffi-ft"),
    }
}

/// `target/cffi-ft/logs/<name>`, an older one removed: a log of this run only.
pub fn fresh_log(name: &str) -> PathBuf {
    let log = kit_target_dir().join("logs").join(name);
    let _ = fs::remove_file(&log);
    log
}

/// The cargo that runs xtask (`$CARGO`), else `cargo` from PATH.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The per-user cache that survives `cargo clean` and fresh clones: interpreter builds,
/// downloads. `$CFFI_FT_CACHE`, else `$XDG_CACHE_HOME/cffi-ft`, else `~/.cache/cffi-ft`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CFFI_FT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("cffi-ft"));
    }
    let home = std::env::var_os("HOME").context("neither CFFI_FT_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("cffi-ft"))
}

/// Prints a status line (to stderr, so stdout stays for reports).
pub fn status(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

pub fn warn(msg: impl AsRef<str>) {
    eprintln!("warning: {}", msg.as_ref());
}

/// How a finished program ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub timed_out: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// "exit code 3", "killed by signal 11 (SIGSEGV)" or "timed out".
    pub fn describe(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        if self.timed_out {
            return "timed out".into();
        }
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
            _ => "ended abnormally".into(),
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// A program run whose output goes to a log file while a progress line shows that it
/// is alive (a spinner on a terminal, a line every minute otherwise).
pub struct Step<'a> {
    pub label: String,
    pub cmd: &'a mut Command,
    pub log: &'a Path,
    pub timeout: Option<Duration>,
}

impl Step<'_> {
    /// Runs the program; its stdout and stderr are appended to the log.
    pub fn run(self) -> Result<Finished> {
        if let Some(dir) = self.log.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .with_context(|| format!("cannot open log {}", self.log.display()))?;
        writeln!(log, "\n$ {}", describe_command(self.cmd))?;
        let out = log.try_clone()?;
        let started = Instant::now();
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", program_name(self.cmd)))?;
        let done = Arc::new(AtomicBool::new(false));
        let ticker = progress_ticker(self.label.clone(), done.clone());
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if self.timeout.is_some_and(|t| started.elapsed() > t) {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        done.store(true, Ordering::Release);
        let _ = ticker.join();
        let finished = Finished { status, timed_out };
        let secs = started.elapsed().as_secs();
        eprintln!("    {} ... {} ({}m{:02}s)", self.label, if finished.success() { "ok".to_string() } else { finished.describe() }, secs / 60, secs % 60);
        Ok(finished)
    }

    /// Runs the program and fails with the log's last lines if it does not succeed.
    pub fn run_ok(self) -> Result<()> {
        let label = self.label.clone();
        let log = self.log.to_path_buf();
        let finished = self.run()?;
        if !finished.success() {
            bail!(
                "{label} failed ({}); log: {}\n{}",
                finished.describe(),
                log.display(),
                tail_of_file(&log, 15)
            );
        }
        Ok(())
    }
}

fn progress_ticker(label: String, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("    {spinner} {msg} {elapsed}")
                    .expect("static template"),
            );
            bar.set_message(label);
            while !done.load(Ordering::Acquire) {
                bar.tick();
                std::thread::sleep(Duration::from_millis(120));
            }
            bar.finish_and_clear();
        } else {
            let mut next = Duration::from_secs(60);
            while !done.load(Ordering::Acquire) {
                if started.elapsed() >= next {
                    eprintln!("    {label} ... still running ({}m)", next.as_secs() / 60);
                    next += Duration::from_secs(60);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

pub fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![program_name(cmd)];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a short program and returns its stdout; fails with its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program_name(cmd)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("`{}` failed: {}", describe_command(cmd), last.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last `n` lines of a file, indented, for error messages.
pub fn tail_of_file(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

/// Recursively copies `src` to `dst` (which must not exist), keeping symlinks as links
/// and skipping the names in `skip` at any depth (e.g. `.git`).
pub fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> Result<()> {
    fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for entry in fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to, skip)?;
        } else {
            fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Removes a directory tree if it exists.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Writes a file atomically: a sibling temporary file renamed over the target.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.cffi-ft-tmp",
        path.file_name().context("path has no file name")?.to_string_lossy()
    ));
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// A scratch directory, removed (with whatever is left in it) on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new_in(parent: &Path, prefix: &str) -> Result<ScratchDir> {
        fs::create_dir_all(parent)?;
        for attempt in 0..1000u32 {
            let path = parent.join(format!("{prefix}-{}-{attempt}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(ScratchDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        bail!("cannot create a scratch directory in {}", parent.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

/// Whether this machine has dpkg (Debian and its derivatives).
pub fn has_dpkg() -> bool {
    capture(Command::new("dpkg-query").arg("--version")).is_ok()
}

/// The packages of `packages` that `dpkg-query` does not report as installed (all of
/// them where there is no dpkg).
pub fn missing_debian_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|pkg| {
            capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect()
}

/// Makes sure the Debian packages `packages` are installed. Those that are missing are
/// installed with `apt-get update` and `apt-get install --no-install-recommends` when we
/// are root (output appended to `log`); otherwise it fails with one line naming them.
/// `what` says who needs them, for the messages ("build dependencies"). One call at a
/// time per process, and apt waits for a dpkg lock another program holds.
pub fn ensure_debian_packages(packages: &[&str], what: &str, log: &Path) -> Result<()> {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing = missing_debian_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing {what}: {} (install them with apt-get)", missing.join(" "));
    }
    status(format!("installing {what}: {}", missing.join(" ")));
    let wait_for_lock = ["-o", "DPkg::Lock::Timeout=600"];
    Step {
        label: "apt-get update".into(),
        cmd: Command::new("apt-get").args(wait_for_lock).arg("update"),
        log,
        timeout: Some(Duration::from_secs(600)),
    }
    .run_ok()?;
    Step {
        label: "apt-get install".into(),
        cmd: Command::new("apt-get")
            .args(wait_for_lock)
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        log,
        timeout: Some(Duration::from_secs(1200)),
    }
    .run_ok()?;
    let still = missing_debian_packages(&missing);
    if !still.is_empty() {
        bail!("apt-get install left {what} missing: {} (log: {})", still.join(" "), log.display());
    }
    Ok(())
}

/// The newest modification time of any file under `paths` (build outputs and caches
/// skipped): a cheap fingerprint of a build's inputs.
pub fn newest_mtime(paths: &[PathBuf]) -> std::time::SystemTime {
    fn walk(p: &Path, newest: &mut std::time::SystemTime) {
        let skip = ["target", ".git", "__pycache__"];
        if p.file_name().is_some_and(|n| skip.iter().any(|s| n == *s)) {
            return;
        }
        let Ok(meta) = fs::symlink_metadata(p) else { return };
        if let Ok(m) = meta.modified() {
            *newest = (*newest).max(m);
        }
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), newest);
                }
            }
        }
    }
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for p in paths {
        walk(p, &mut newest);
    }
    newest
}

/// Seconds since the Unix epoch, for report timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_skips_names_and_keeps_links() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join(".git")).unwrap();
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f.txt"), "x").unwrap();
        fs::write(src.join(".git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("a/b/f.txt", src.join("link")).unwrap();
        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst, &[".git"]).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f.txt")).unwrap(), "x");
        assert!(!dst.join(".git").exists());
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/b/f.txt"));
    }

    #[test]
    fn step_reports_failure_with_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first; echo second >&2; exit 3"]);
        let err = Step { label: "demo".into(), cmd: &mut cmd, log: &log, timeout: None }
            .run_ok()
            .unwrap_err()
            .to_string();
        assert!(err.contains("demo failed (exit code 3)"), "{err}");
        assert!(err.contains("| second"), "{err}");
    }

    #[test]
    fn step_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.log");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let finished = Step {
            label: "sleeper".into(),
            cmd: &mut cmd,
            log: &log,
            timeout: Some(Duration::from_millis(300)),
        }
        .run()
        .unwrap();
        assert!(finished.timed_out && !finished.success());
        assert_eq!(finished.describe(), "timed out");
    }

    #[test]
    fn sha256_of_known_content() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("abc");
        fs::write(&f, "abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_package_that_does_not_exist_is_missing() {
        let pkgs = ["cffi-ft-no-such-package-a", "cffi-ft-no-such-package-b"];
        assert_eq!(missing_debian_packages(&pkgs), pkgs);
        assert!(missing_debian_packages(&[]).is_empty());
    }

    #[test]
    fn newest_mtime_skips_build_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("crate");
        fs::create_dir_all(src.join("src")).unwrap();
        fs::write(src.join("src/lib.rs"), "").unwrap();
        let before = newest_mtime(std::slice::from_ref(&src));
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::create_dir_all(src.join("target/debug")).unwrap();
        fs::write(src.join("target/debug/out"), "x").unwrap();
        assert_eq!(newest_mtime(std::slice::from_ref(&src)), before.max(fs::metadata(&src).unwrap().modified().unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(src.join("src/lib.rs"), "// changed").unwrap();
        assert!(newest_mtime(std::slice::from_ref(&src)) > before);
        assert_eq!(newest_mtime(&[tmp.path().join("missing")]), std::time::SystemTime::UNIX_EPOCH);
    }
}
