//! The upstream cffi source: the pinned sdist from PyPI, or a user's checkout.
//!
//! A user's checkout is only ever read, except with `--in-place`; then the series is
//! first applied to a scratch copy and only a fully patched result is written back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::series::{self, Series};
use crate::util::{self, status, Step};

/// sha256 of each sdist the kit has a series for (from PyPI's release files).
const PINNED_SDISTS: &[(&str, &str)] =
    &[("1.17.1", "1c39c6016c32bc48dd54561950ebd6836e1670f2ae46128f67cf49e789c52824")];

/// Pristine upstream sources to copy and patch.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub version: String,
    pub tree: PathBuf,
    /// "sdist cffi-1.17.1.tar.gz (sha256 ...)" or "checkout /path".
    pub origin: String,
}

fn pinned_sha(version: &str) -> Result<&'static str> {
    PINNED_SDISTS.iter().find(|(v, _)| *v == version).map(|(_, s)| *s).with_context(|| {
        format!(
            "unknown cffi version {version}: the kit has patch series for {}",
            series::known_versions().join(", ")
        )
    })
}

/// Downloads (or reuses) the sdist, checks its sha256 and unpacks it under `target/`.
pub fn fetch_sdist(version: &str) -> Result<Upstream> {
    let sha = pinned_sha(version)?;
    Series::load(version)?;
    let tree = fetch_pinned_sdist(version, sha, &util::kit_target_dir().join("upstream"))?;
    Ok(Upstream {
        version: version.to_string(),
        tree,
        origin: format!("sdist cffi-{version}.tar.gz (sha256 {sha})"),
    })
}

/// Any pinned cffi sdist (also versions without a series, e.g. for benchmarks).
pub fn fetch_pinned_sdist(version: &str, sha: &str, unpack_root: &Path) -> Result<PathBuf> {
    fetch_pinned_package_sdist("cffi", version, sha, unpack_root)
}

/// A pinned sdist of `package` from PyPI: `pip download`ed into the cache, refused
/// unless its sha256 is `sha`, and unpacked into `unpack_root/<package>-<version>/`
/// (reused while its marker matches).
pub fn fetch_pinned_package_sdist(package: &str, version: &str, sha: &str, unpack_root: &Path) -> Result<PathBuf> {
    let downloads = util::cache_dir()?.join("downloads");
    fs::create_dir_all(&downloads)?;
    let file_name = format!("{package}-{version}.tar.gz");
    let archive = downloads.join(&file_name);
    let have = archive.is_file() && util::sha256_file(&archive)? == sha;
    if !have {
        status(format!("downloading {package} {version} sdist from PyPI (pip download, no binary)"));
        let scratch = util::ScratchDir::new_in(&downloads, "pip")?;
        let log = util::kit_target_dir().join("logs").join("fetch-upstream.log");
        Step {
            label: format!("pip download {package}=={version}"),
            cmd: Command::new(download_python()?)
                .args(["-m", "pip", "download", "--disable-pip-version-check", "--no-deps"])
                .args(["--no-binary", ":all:", "-d"])
                .arg(scratch.path())
                .arg(format!("{package}=={version}")),
            log: &log,
            timeout: Some(std::time::Duration::from_secs(600)),
        }
        .run_ok()?;
        let got = scratch.path().join(&file_name);
        if !got.is_file() {
            bail!("pip download left no {file_name} (see {})", log.display());
        }
        let actual = util::sha256_file(&got)?;
        if actual != sha {
            bail!("{file_name}: sha256 {actual} does not match the pinned {sha}; refusing it");
        }
        fs::rename(&got, &archive)?;
    }
    let tree = unpack_root.join(format!("{package}-{version}"));
    let marker = tree.join(".cffi-ft-sdist-sha256");
    if fs::read_to_string(&marker).ok().as_deref() != Some(sha) {
        let scratch = util::ScratchDir::new_in(unpack_root, "unpack")?;
        let out = Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .current_dir(scratch.path())
            .output()
            .context("cannot run tar")?;
        if !out.status.success() {
            bail!("cannot unpack {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let unpacked = scratch.path().join(format!("{package}-{version}"));
        fs::write(unpacked.join(".cffi-ft-sdist-sha256"), sha)?;
        util::remove_dir_if_exists(&tree)?;
        fs::rename(&unpacked, &tree)?;
    }
    Ok(tree)
}

/// A Python with pip to run `pip download` (any version will do).
fn download_python() -> Result<PathBuf> {
    for candidate in ["python3", "python"] {
        if util::capture(Command::new(candidate).args(["-m", "pip", "--version"])).is_ok() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("no `python3` with pip on PATH to download the sdist with")
}

/// Reads the cffi version of a checkout (setup.py, else src/cffi/__init__.py).
pub fn checkout_version(tree: &Path) -> Result<String> {
    if !tree.is_dir() {
        bail!("--checkout {}: no such directory", tree.display());
    }
    let candidates = [("setup.py", "version="), ("src/cffi/__init__.py", "__version__")];
    for (file, key) in candidates {
        let Ok(text) = fs::read_to_string(tree.join(file)) else { continue };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(key) {
                let rest = rest.trim_start_matches([' ', '=']);
                let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"');
                if let Some(q) = quote {
                    if let Some(v) = rest[1..].split(q).next() {
                        return Ok(v.to_string());
                    }
                }
            }
        }
    }
    bail!("--checkout {}: not a cffi source tree (no version in setup.py or src/cffi/__init__.py)", tree.display())
}

/// Validates a checkout: known version, and the whole series applies to a copy of it.
pub fn use_checkout(tree: &Path) -> Result<Upstream> {
    let tree = tree
        .canonicalize()
        .map_err(|_| anyhow::anyhow!("--checkout {}: no such directory", tree.display()))?;
    let version = checkout_version(&tree)?;
    let series = Series::load(&version).map_err(|_| {
        anyhow::anyhow!(
            "--checkout {}: cffi {version} has no patch series in this kit (have: {})",
            tree.display(),
            series::known_versions().join(", ")
        )
    })?;
    let scratch = util::ScratchDir::new_in(&util::kit_target_dir().join("scratch"), "check")?;
    let copy = scratch.path().join("tree");
    util::copy_tree(&tree, &copy, &[".git"])?;
    series::apply(&copy, &series.up_to(series.latest_step()))
        .map_err(|e| anyhow::anyhow!("--checkout {}: {e}", tree.display()))?;
    Ok(Upstream { version, origin: format!("checkout {}", tree.display()), tree })
}

/// Applies the series up to `step` to the checkout itself, all or nothing.
pub fn patch_in_place(tree: &Path, step: Option<u32>) -> Result<Vec<String>> {
    let upstream = use_checkout(tree)?;
    let series = Series::load(&upstream.version)?;
    let step = match step {
        Some(s) if series.steps().contains(&s) => s,
        Some(s) => bail!("--step {s} does not exist for cffi {}", upstream.version),
        None => series.latest_step(),
    };
    let patches = series.up_to(step);
    let scratch = util::ScratchDir::new_in(&util::kit_target_dir().join("scratch"), "inplace")?;
    let copy = scratch.path().join("tree");
    util::copy_tree(&upstream.tree, &copy, &[".git"])?;
    series::apply(&copy, &patches)?;
    let mut touched: Vec<String> = patches.iter().flat_map(|p| p.touches.iter().cloned()).collect();
    touched.sort();
    touched.dedup();
    // Everything applied in the copy; now write each touched file back atomically.
    let mut contents = Vec::new();
    for rel in &touched {
        contents.push((rel.clone(), fs::read(copy.join(rel))?));
    }
    for (rel, bytes) in &contents {
        util::write_atomic(&upstream.tree.join(rel), bytes)?;
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_from_setup_py_or_init() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("setup.py"), "setup(\n    version='1.17.1',\n)\n").unwrap();
        assert_eq!(checkout_version(tmp.path()).unwrap(), "1.17.1");
        fs::remove_file(tmp.path().join("setup.py")).unwrap();
        fs::create_dir_all(tmp.path().join("src/cffi")).unwrap();
        fs::write(tmp.path().join("src/cffi/__init__.py"), "__version__ = \"1.16.0\"\n").unwrap();
        assert_eq!(checkout_version(tmp.path()).unwrap(), "1.16.0");
    }

    #[test]
    fn unknown_versions_are_refused() {
        let err = pinned_sha("0.9").unwrap_err().to_string();
        assert!(err.starts_with("unknown cffi version 0.9"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("setup.py"), "version='1.16.0'\n").unwrap();
        let err = use_checkout(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("cffi 1.16.0 has no patch series"), "{err}");
    }
}
