//! What `sdist`, `wheel` and `export` ship: the kit's Rust side for one step as a
//! minimal cargo workspace (the umbrella `crates/cffi-ft`, the step's component crates,
//! `shim-c/include` and `shim-c/src`), its dependencies vendored, the licenses of every
//! bundled crate, and the guards that keep bad input from writing anything.
//!
//! The minimal workspace is taken from the git commit (`git archive HEAD`), so only
//! committed files travel; the working tree must be clean. Its manifests are trimmed
//! with toml_edit: the umbrella keeps only the step's features and the optional
//! dependencies they turn on (a feature of a later step is then refused by cargo, and
//! its `cfg(feature = ..)` values are declared in `[lints]`, so no warning), and the
//! component crates lose their `cfg(loom)` dependency (the loom models are not part of
//! a packaged build; without it neither the vendor tarball nor a distribution's
//! registry needs loom and its dependencies). `Cargo.lock` is the workspace's own,
//! pruned by cargo to what the minimal workspace uses: the same versions as CI.
//!
//! The self-building sdist is assembled here too ([`build_sdist`]): the `sdist`
//! command's artefact, and what `wheel` builds its wheels from. Checking what was made
//! is `offline`'s job.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use toml_edit::{Array, DocumentMut, Item, Table, Value};

use crate::series::{self, Series};
use crate::upstream;
use crate::util::{self, status, Step};

/// One step of the series, as the distribution commands need it.
#[derive(Clone, Debug)]
pub struct StepKit {
    pub series: Series,
    pub step: u32,
    /// Features of the umbrella crate the step turns on, in series order.
    pub features: Vec<String>,
    /// Component crates (directory names under `crates/`) those features need.
    pub crates: Vec<String>,
    /// Whether the build runs bindgen (libclang at build time): step 4 on.
    pub needs_libclang: bool,
    /// `workspace.package.rust-version` of the workspace.
    pub rust_version: String,
    /// `workspace.package.version` (the kit's version).
    pub kit_version: String,
}

impl StepKit {
    /// `1.17.1+ft<N>`: the metadata version of the sdist and wheels.
    pub fn dist_version(&self) -> String {
        format!("{}+ft{}", self.series.cffi_version, self.step)
    }

    /// `<kit version>-step<N>`: the version in the export's tarball names.
    pub fn export_version(&self) -> String {
        format!("{}-step{}", self.kit_version, self.step)
    }
}

/// Loads the series and checks the step exists (the one-line refusal of a bad `--step`).
pub fn resolve_step(cffi_version: &str, step: u32) -> Result<StepKit> {
    let series = Series::load(cffi_version)?;
    let steps = series.steps();
    if !steps.contains(&step) {
        bail!(
            "--step {step} does not exist for cffi {cffi_version} (steps: {})",
            steps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let features = series.features_up_to(step);
    let root = util::workspace_root();
    let umbrella = read_toml(&root.join("crates/cffi-ft/Cargo.toml"))?;
    let crates = component_crates(&umbrella, &features)?;
    let needs_libclang = trimmed_umbrella(&umbrella, &features)?
        .get("build-dependencies")
        .and_then(Item::as_table_like)
        .is_some_and(|t| t.contains_key("bindgen"));
    let workspace = read_toml(&root.join("Cargo.toml"))?;
    let package = &workspace["workspace"]["package"];
    let rust_version = package["rust-version"].as_str().context("Cargo.toml: no workspace.package.rust-version")?;
    let kit_version = package["version"].as_str().context("Cargo.toml: no workspace.package.version")?;
    Ok(StepKit {
        series,
        step,
        features,
        crates,
        needs_libclang,
        rust_version: rust_version.to_string(),
        kit_version: kit_version.to_string(),
    })
}

fn read_toml(path: &Path) -> Result<DocumentMut> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<DocumentMut>().with_context(|| format!("{}: not valid TOML", path.display()))
}

/// The optional dependencies (`dep:X`, `X/feature` or a plain `X`) that `features` turn on.
fn enabled_optional_deps(umbrella: &DocumentMut, features: &[String]) -> Result<BTreeSet<String>> {
    let table = umbrella.get("features").and_then(Item::as_table_like).context("crates/cffi-ft: no [features]")?;
    let mut out = BTreeSet::new();
    for feature in features {
        let entries = table
            .get(feature)
            .and_then(Item::as_array)
            .with_context(|| format!("the series names feature {feature:?}, which crates/cffi-ft does not have"))?;
        for entry in entries.iter().filter_map(Value::as_str) {
            let name = entry.strip_prefix("dep:").unwrap_or(entry);
            let name = name.split('/').next().unwrap_or(name).trim_end_matches('?');
            out.insert(name.to_string());
        }
    }
    Ok(out)
}

/// The component crates (path dependencies of the umbrella) that `features` need.
fn component_crates(umbrella: &DocumentMut, features: &[String]) -> Result<Vec<String>> {
    let enabled = enabled_optional_deps(umbrella, features)?;
    let deps = umbrella.get("dependencies").and_then(Item::as_table_like).context("crates/cffi-ft: no [dependencies]")?;
    let mut out = Vec::new();
    for (name, spec) in deps.iter() {
        let Some(path) = spec.as_table_like().and_then(|t| t.get("path")).and_then(Item::as_str) else { continue };
        let optional = spec.as_table_like().and_then(|t| t.get("optional")).and_then(Item::as_bool).unwrap_or(false);
        if optional && !enabled.contains(name) {
            continue;
        }
        let dir = path.strip_prefix("../").with_context(|| format!("crates/cffi-ft: dependency {name} is not a sibling crate"))?;
        out.push(dir.to_string());
    }
    // and the sibling crates those depend on (tsan-sync), after them
    let mut i = 0;
    while i < out.len() {
        let manifest = read_toml(&util::workspace_root().join("crates").join(&out[i]).join("Cargo.toml"))?;
        if let Some(deps) = manifest.get("dependencies").and_then(Item::as_table_like) {
            for (name, spec) in deps.iter() {
                let Some(path) = spec.as_table_like().and_then(|t| t.get("path")).and_then(Item::as_str) else { continue };
                let dir = path
                    .strip_prefix("../")
                    .with_context(|| format!("crates/{}: dependency {name} is not a sibling crate", out[i]))?;
                if !out.iter().any(|c| c == dir) {
                    out.push(dir.to_string());
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The umbrella's manifest for a step: the step's features only, the optional
/// dependencies no kept feature turns on removed, and the removed features declared as
/// known `cfg(feature)` values (their code is compiled out; enabling one is refused).
fn trimmed_umbrella(umbrella: &DocumentMut, features: &[String]) -> Result<DocumentMut> {
    let mut doc = umbrella.clone();
    let enabled = enabled_optional_deps(umbrella, features)?;
    let table = doc["features"].as_table_mut().context("crates/cffi-ft: [features] is not a table")?;
    let dropped: Vec<String> =
        table.iter().map(|(k, _)| k.to_string()).filter(|k| k != "default" && !features.contains(k)).collect();
    for name in &dropped {
        table.remove(name);
    }
    for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
        let Some(deps) = doc.get_mut(section).and_then(Item::as_table_like_mut) else { continue };
        let unused: Vec<String> = deps
            .iter()
            .filter(|(name, spec)| {
                let optional =
                    spec.as_table_like().and_then(|t| t.get("optional")).and_then(Item::as_bool).unwrap_or(false);
                optional && !enabled.contains(*name)
            })
            .map(|(name, _)| name.to_string())
            .collect();
        for name in unused {
            deps.remove(&name);
        }
    }
    if !dropped.is_empty() {
        let values = dropped.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
        let mut check = Array::new();
        check.push(format!("cfg(feature, values({values}))"));
        let mut lint = toml_edit::InlineTable::new();
        lint.insert("level", "warn".into());
        lint.insert("check-cfg", Value::Array(check));
        let mut rust = Table::new();
        rust.insert("unexpected_cfgs", Item::Value(Value::InlineTable(lint)));
        let mut lints = Table::new();
        lints.set_implicit(true);
        lints.insert("rust", Item::Table(rust));
        doc.insert("lints", Item::Table(lints));
    }
    Ok(doc)
}

/// A component crate's manifest without its `cfg(loom)` dependencies.
fn trimmed_component(doc: &DocumentMut) -> DocumentMut {
    let mut doc = doc.clone();
    if let Some(target) = doc.get_mut("target").and_then(Item::as_table_like_mut) {
        target.remove("cfg(loom)");
        if target.is_empty() {
            doc.remove("target");
        }
    }
    doc
}

/// The minimal workspace manifest: the real one with only the given members.
fn minimal_workspace(root_manifest: &DocumentMut, members: &[String]) -> Result<DocumentMut> {
    let mut doc = root_manifest.clone();
    let mut list = Array::new();
    for m in members {
        list.push(m.as_str());
    }
    doc["workspace"]["members"] = toml_edit::value(list);
    if let Some(ws) = doc["workspace"].as_table_mut() {
        ws.remove("exclude");
        ws.remove("default-members");
    }
    Ok(doc)
}

/// Fails with one line unless the git tree at `root` has no uncommitted change
/// (untracked files count: they would not be in `git archive HEAD` either).
pub fn ensure_clean_git(root: &Path) -> Result<()> {
    let out = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=normal"])
        .current_dir(root)
        .output()
        .context("cannot run git (needed to take the kit's sources from the commit)")?;
    if !out.status.success() {
        bail!("{} is not a git checkout (the kit's sources are taken from its commit)", root.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dirty: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !dirty.is_empty() {
        let first: Vec<&str> = dirty.iter().take(3).map(|l| l[3.min(l.len())..].trim()).collect();
        bail!(
            "the git tree has {} uncommitted change(s) ({}{}): commit or stash them, a release is built from a commit",
            dirty.len(),
            first.join(", "),
            if dirty.len() > 3 { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// The text of `path` (relative to `root`) as committed at HEAD: what travels.
pub fn committed_file(root: &Path, path: &str) -> Result<String> {
    util::capture(Command::new("git").arg("show").arg(format!("HEAD:{path}")).current_dir(root))
}

/// The commit the kit's sources come from, and its time (for reproducible tarballs).
pub fn head_commit(root: &Path) -> Result<(String, u64)> {
    let text = util::capture(Command::new("git").args(["log", "-1", "--format=%H %ct"]).current_dir(root))?;
    let mut it = text.split_whitespace();
    let hash = it.next().context("git log printed nothing")?.to_string();
    let time = it.next().and_then(|t| t.parse().ok()).context("git log printed no commit time")?;
    Ok((hash, time))
}

/// Fails with one line unless `dir` does not exist or is an empty directory.
pub fn ensure_empty_or_missing(dir: &Path, flag: &str) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{flag} {}: the directory is not empty (give a new or an empty one)", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("{flag} {}: exists and is not a directory", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("{flag} {}: cannot read it", dir.display())),
    }
}

/// Writes the step's minimal workspace into `dst` (created): crates, shim, manifests,
/// Cargo.lock. Returns the workspace members.
pub fn assemble_kit(kit: &StepKit, dst: &Path) -> Result<Vec<String>> {
    let root = util::workspace_root();
    fs::create_dir_all(dst)?;
    let mut members = vec!["crates/cffi-ft".to_string()];
    members.extend(kit.crates.iter().map(|c| format!("crates/{c}")));
    let mut paths = members.clone();
    paths.extend(["shim-c/include".to_string(), "shim-c/src".to_string()]);
    // git archive HEAD <paths> | tar -x -C dst
    let archive = dst.join(".kit.tar");
    let out = Command::new("git")
        .arg("archive")
        .arg("--format=tar")
        .arg("-o")
        .arg(&archive)
        .arg("HEAD")
        .arg("--")
        .args(&paths)
        .current_dir(&root)
        .output()
        .context("cannot run git archive")?;
    if !out.status.success() {
        bail!("git archive HEAD {}: {}", paths.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    util::capture(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(dst))?;
    fs::remove_file(&archive)?;

    let umbrella = read_toml(&dst.join("crates/cffi-ft/Cargo.toml"))?;
    fs::write(dst.join("crates/cffi-ft/Cargo.toml"), trimmed_umbrella(&umbrella, &kit.features)?.to_string())?;
    for c in &kit.crates {
        let path = dst.join("crates").join(c).join("Cargo.toml");
        let doc = read_toml(&path)?;
        fs::write(&path, trimmed_component(&doc).to_string())?;
    }
    let workspace = minimal_workspace(&read_toml(&root.join("Cargo.toml"))?, &members)?;
    fs::write(dst.join("Cargo.toml"), workspace.to_string())?;
    let lock = committed_file(&root, "Cargo.lock")?;
    fs::write(dst.join("Cargo.lock"), lock)?;
    Ok(members)
}

/// Runs `cargo vendor` in the minimal workspace `kit_dir` (which also prunes its
/// Cargo.lock to the crates it uses) into `kit_dir/vendor`; returns the source
/// replacement it printed, for `.cargo/config.toml`.
pub fn vendor(kit_dir: &Path, log: &Path) -> Result<String> {
    let config = kit_dir.join(".vendor-config.toml");
    let out = fs::File::create(&config)?;
    let mut cmd = Command::new(util::cargo());
    cmd.args(["vendor", "--versioned-dirs", "vendor"])
        .current_dir(kit_dir)
        .env_remove("CARGO_TARGET_DIR")
        .stdout(out);
    // Step writes stdout to the log; run it by hand to keep stdout (the config).
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    let status = cmd.stderr(logf).status().context("cannot run cargo vendor")?;
    if !status.success() {
        bail!("cargo vendor failed in {} (log: {})\n{}", kit_dir.display(), log.display(), util::tail_of_file(log, 15));
    }
    let text = fs::read_to_string(&config)?;
    fs::remove_file(&config)?;
    if !text.contains("[source.vendored-sources]") {
        bail!("cargo vendor printed no source replacement (log: {})", log.display());
    }
    Ok(text)
}

/// One crate of the resolved minimal workspace (from `cargo metadata`).
#[derive(Clone, Debug, PartialEq)]
pub struct CrateInfo {
    pub name: String,
    pub version: String,
    pub license: String,
    /// A member of the kit's workspace (not a vendored dependency).
    pub local: bool,
    /// For members: their crates.io dependencies (normal and build, not dev).
    pub deps: Vec<DirectDep>,
}

/// A crates.io dependency of one of the kit's crates.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectDep {
    pub name: String,
    /// cargo's requirement, e.g. `^1.7` or `=0.28.3`.
    pub req: String,
    /// Only a build dependency (build.rs).
    pub build: bool,
}

/// Every package in the kit's resolve with all its features on (the trimmed umbrella has
/// only the step's): members and vendored crates, sorted by name.
pub fn crate_metadata(kit_dir: &Path) -> Result<Vec<CrateInfo>> {
    let text = util::capture(
        Command::new(util::cargo())
            .args(["metadata", "--format-version", "1", "--offline", "--locked", "--all-features"])
            .current_dir(kit_dir)
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    let value: serde_json::Value = serde_json::from_str(&text).context("cargo metadata: not JSON")?;
    let mut out = Vec::new();
    for p in value["packages"].as_array().context("cargo metadata: no packages")? {
        let local = p["source"].is_null();
        let mut deps = Vec::new();
        if local {
            for d in p["dependencies"].as_array().into_iter().flatten() {
                if d.get("path").is_some_and(|v| !v.is_null()) || d["kind"].as_str() == Some("dev") {
                    continue;
                }
                deps.push(DirectDep {
                    name: d["name"].as_str().unwrap_or("?").to_string(),
                    req: d["req"].as_str().unwrap_or("*").to_string(),
                    build: d["kind"].as_str() == Some("build"),
                });
            }
        }
        out.push(CrateInfo {
            name: p["name"].as_str().unwrap_or("?").to_string(),
            version: p["version"].as_str().unwrap_or("?").to_string(),
            license: p["license"].as_str().unwrap_or("UNKNOWN").to_string(),
            local,
            deps,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

/// A Fedora `License:` expression covering `licenses` (SPDX, each compound in
/// parentheses, joined with AND, duplicates once).
pub fn spdx_and(licenses: impl IntoIterator<Item = String>) -> String {
    let mut set = BTreeSet::new();
    for l in licenses {
        let l = l.replace(" / ", " OR ").replace('/', " OR ");
        let l = l.trim().to_string();
        // `MIT OR Apache-2.0` and `Apache-2.0 OR MIT` are one choice: sort the operands
        let l = if l.contains(" OR ") && !l.contains(" AND ") && !l.contains('(') {
            let mut ops: Vec<&str> = l.split(" OR ").map(str::trim).collect();
            ops.sort_unstable();
            ops.join(" OR ")
        } else {
            l
        };
        if l.contains(" OR ") || l.contains(" AND ") {
            set.insert(format!("({l})"));
        } else {
            set.insert(l);
        }
    }
    set.into_iter().collect::<Vec<_>>().join(" AND ")
}

/// A reproducible tarball of `dir_name` (a directory in `parent`): sorted names,
/// owner root, every mtime `mtime`. `compress` is `gzip` or `xz`.
pub fn tarball(parent: &Path, dir_name: &str, out: &Path, mtime: u64, compress: &str, log: &Path) -> Result<()> {
    let flag = match compress {
        "gzip" => "--use-compress-program=gzip -n -9",
        "xz" => "--use-compress-program=xz -T1 -6",
        other => bail!("unknown compression {other}"),
    };
    Step {
        label: format!("tar {}", out.file_name().unwrap_or_default().to_string_lossy()),
        cmd: Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--format=pax"])
            .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")
            .arg(format!("--mtime=@{mtime}"))
            .arg(flag)
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(parent)
            .arg(dir_name),
        log,
        timeout: Some(std::time::Duration::from_secs(1200)),
    }
    .run_ok()
}

/// Renames `from` onto `to` (a directory or file that must not exist yet, or an empty
/// directory), the last step of every command: until then nothing is visible at `to`.
pub fn publish(from: &Path, to: &Path) -> Result<()> {
    if to.is_dir() {
        fs::remove_dir(to).with_context(|| format!("{} is not empty", to.display()))?;
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(from, to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

/// A scratch directory on the same file system as `near` (so [`publish`] is a rename).
pub fn scratch_near(near: &Path, prefix: &str) -> Result<util::ScratchDir> {
    let parent = near.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(&parent)?;
    util::ScratchDir::new_in(&parent, &format!(".{prefix}"))
}

// ---------------------------------------------------------------------------------------
// The self-building sdist (`sdist`; `wheel` builds its wheels from it)

/// `target/cffi-ft/dist/`: the sdists and wheels.
pub fn dist_dir() -> PathBuf {
    util::kit_target_dir().join("dist")
}

/// Builds `target/cffi-ft/dist/cffi-<ver>+ft<N>.tar.gz` (replacing an older one only
/// once the new one is complete). The git tree must be clean.
///
/// The sdist is the pristine cffi sdist with the series up to step N applied, then the
/// sdist-only series of `shim-c/sdist/<cffi>/` (setup.py builds the staticlib when
/// CFFI_FT_STATICLIB is not given, and the metadata version gets `+ft<N>`), the hook
/// `cffi_ft_sdist.py` at the tree root, and `cffi-ft/`: the step's minimal cargo
/// workspace ([`assemble_kit`]), its crates vendored with the source replacement in
/// `cffi-ft/.cargo/config.toml`, the C shim, and `sdist.json` (step, features,
/// rust-version, whether libclang is needed) for the hook.
///
/// Why a hook file plus a small patch rather than one bigger patch: the build logic is
/// plain Python that can be read and tested on its own, and it is the same file for
/// every step and cffi version; the patch only has to call it (two hunks of setup.py
/// and MANIFEST.in), and the step-specific facts live in data (`sdist.json`) that xtask
/// writes. Distribution packagers never see either: their route is `export`.
pub fn build_sdist(kit: &StepKit) -> Result<PathBuf> {
    let root = util::workspace_root();
    ensure_clean_git(&root)?;
    let (commit, mtime) = head_commit(&root)?;
    let version = kit.dist_version();
    let name = format!("cffi-{version}");
    let out = dist_dir().join(format!("{name}.tar.gz"));
    status(format!(
        "sdist: cffi {} + series up to step {} (features: {}) from commit {}",
        kit.series.cffi_version,
        kit.step,
        if kit.features.is_empty() { "none".to_string() } else { kit.features.join(",") },
        &commit[..12]
    ));
    let up = upstream::fetch_sdist(&kit.series.cffi_version)?;
    let scratch = scratch_near(&out, "sdist")?;
    let log = util::fresh_log(&format!("sdist-step{}.log", kit.step));
    let tree = scratch.path().join(&name);
    util::copy_tree(&up.tree, &tree, &[".git", ".cffi-ft-sdist-sha256"])?;
    series::apply(&tree, &kit.series.up_to(kit.step))?;
    let sdist_series = sdist_series(&kit.series.cffi_version)?;
    series::apply(&tree, &sdist_series.patches.iter().collect::<Vec<_>>())?;
    let hook = committed_file(&root, "shim-c/sdist/cffi_ft_sdist.py")?;
    fs::write(tree.join("cffi_ft_sdist.py"), hook)?;

    let kit_dir = tree.join("cffi-ft");
    assemble_kit(kit, &kit_dir)?;
    status("sdist: cargo vendor (the step's dependencies, for an offline build)");
    let replacement = vendor(&kit_dir, &log)?;
    fs::create_dir_all(kit_dir.join(".cargo"))?;
    fs::write(
        kit_dir.join(".cargo").join("config.toml"),
        format!(
            "# Written by `cargo xtask sdist`: build offline from vendor/ (cargo vendor's lines).\n\
             {replacement}\n\
             [env]\n\
             # the staticlib is linked into an extension module: never link libpython\n\
             PYO3_BUILD_EXTENSION_MODULE = \"1\"\n"
        ),
    )?;
    let config = serde_json::json!({
        "cffi_version": kit.series.cffi_version,
        "step": kit.step,
        "local_version": format!("+ft{}", kit.step),
        "features": kit.features,
        "rust_version": kit.rust_version,
        "needs_libclang": kit.needs_libclang,
        "kit_commit": commit,
    });
    fs::write(kit_dir.join("sdist.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    for pkg_info in [tree.join("PKG-INFO"), tree.join("src").join("cffi.egg-info").join("PKG-INFO")] {
        set_pkg_info_version(&pkg_info, &kit.series.cffi_version, &version)?;
    }
    let tmp_out = scratch.path().join("out.tar.gz");
    tarball(scratch.path(), &name, &tmp_out, mtime, "gzip", &log)?;
    fs::create_dir_all(dist_dir())?;
    fs::rename(&tmp_out, &out).with_context(|| format!("cannot write {}", out.display()))?;
    let size = fs::metadata(&out)?.len();
    status(format!("sdist: {} ({:.1} MiB)", out.display(), size as f64 / 1048576.0));
    Ok(out)
}

/// The sdist-only patches (`shim-c/sdist/<cffi>/series`).
fn sdist_series(cffi_version: &str) -> Result<Series> {
    let dir = util::workspace_root().join("shim-c").join("sdist").join(cffi_version);
    if !dir.join("series").is_file() {
        bail!("cffi {cffi_version} has no sdist patches (shim-c/sdist/{cffi_version}/series)");
    }
    Series::load_dir(cffi_version, &dir)
}

/// Rewrites the `Version:` line of a PKG-INFO from `from` to `to`.
fn set_pkg_info_version(path: &Path, from: &str, to: &str) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else { return Ok(()) };
    let old = format!("\nVersion: {from}\n");
    if !text.contains(&old) {
        bail!("{}: no `Version: {from}` line", path.display());
    }
    fs::write(path, text.replacen(&old, &format!("\nVersion: {to}\n"), 1))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn umbrella() -> DocumentMut {
        read_toml(&util::workspace_root().join("crates/cffi-ft/Cargo.toml")).unwrap()
    }

    #[test]
    fn step_one_needs_ctype_intern_only_and_step_four_needs_bindgen() {
        let one = resolve_step("1.17.1", 1).unwrap();
        assert_eq!(one.features, ["ctype-intern"]);
        assert_eq!(one.crates, ["ctype-intern", "tsan-sync"], "ctype-intern's own sibling dependency comes along");
        assert!(!one.needs_libclang);
        assert_eq!(one.dist_version(), "1.17.1+ft1");
        let zero = resolve_step("1.17.1", 0).unwrap();
        assert!(zero.crates.is_empty() && zero.features.is_empty());
        let four = resolve_step("1.17.1", 4).unwrap();
        assert_eq!(four.crates, ["ctype-intern", "realize-once", "lib-registry", "callback-dispatch", "tsan-sync"]);
        assert!(four.needs_libclang);
    }

    #[test]
    fn an_unknown_step_is_refused_in_one_line() {
        let err = resolve_step("1.17.1", 99).unwrap_err().to_string();
        assert!(err.starts_with("--step 99 does not exist for cffi 1.17.1 (steps: 0, 1,"), "{err}");
        assert!(!err.contains('\n'));
        let err = resolve_step("0.9", 1).unwrap_err().to_string();
        assert!(err.starts_with("unknown cffi version 0.9"), "{err}");
    }

    #[test]
    fn the_trimmed_umbrella_keeps_only_the_steps_features() {
        let doc = trimmed_umbrella(&umbrella(), &["ctype-intern".to_string()]).unwrap();
        let features: Vec<&str> = doc["features"].as_table().unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(features, ["default", "ctype-intern"]);
        let deps: Vec<&str> = doc["dependencies"].as_table().unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(deps, ["pyo3-ffi", "ctype-intern"]);
        assert!(!doc["build-dependencies"].as_table().unwrap().contains_key("bindgen"));
        let text = doc.to_string();
        assert!(text.contains(r#"check-cfg = ['cfg(feature, values("realize-once", "lib-registry", "callback-dispatch", "exactly-once"))']"#), "{text}");
        // the whole series (its last step): nothing dropped, no lint table added
        let last = crate::series::Series::load("1.17.1").unwrap().latest_step();
        let all: Vec<String> = resolve_step("1.17.1", last).unwrap().features;
        let doc = trimmed_umbrella(&umbrella(), &all).unwrap();
        assert!(doc.get("lints").is_none());
        assert!(doc["build-dependencies"].as_table().unwrap().contains_key("bindgen"));
    }

    #[test]
    fn components_lose_loom_only() {
        let path = util::workspace_root().join("crates/lib-registry/Cargo.toml");
        let doc = trimmed_component(&read_toml(&path).unwrap());
        assert!(doc.get("target").is_none());
        assert!(doc["dependencies"].as_table().unwrap().contains_key("arc-swap"));
        assert!(doc.to_string().contains("cfg(loom)"), "the check-cfg lint stays");
    }

    #[test]
    fn the_minimal_workspace_lists_only_its_members() {
        let root = read_toml(&util::workspace_root().join("Cargo.toml")).unwrap();
        let doc = minimal_workspace(&root, &["crates/cffi-ft".into(), "crates/ctype-intern".into()]).unwrap();
        let members: Vec<&str> = doc["workspace"]["members"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(members, ["crates/cffi-ft", "crates/ctype-intern"]);
        assert_eq!(doc["workspace"]["dependencies"]["pyo3-ffi"].as_str(), Some("=0.28.3"));
    }

    #[test]
    fn output_dirs_must_be_new_or_empty() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_empty_or_missing(&tmp.path().join("new"), "--to").unwrap();
        ensure_empty_or_missing(tmp.path(), "--to").unwrap();
        fs::write(tmp.path().join("f"), "x").unwrap();
        let err = ensure_empty_or_missing(tmp.path(), "--to").unwrap_err().to_string();
        assert!(err.starts_with("--to ") && err.ends_with("the directory is not empty (give a new or an empty one)"), "{err}");
        let err = ensure_empty_or_missing(&tmp.path().join("f"), "--to").unwrap_err().to_string();
        assert!(err.contains("exists and is not a directory"), "{err}");
    }

    #[test]
    fn a_dirty_git_tree_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .current_dir(tmp.path())
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        fs::write(tmp.path().join("a"), "1").unwrap();
        git(&["add", "a"]);
        git(&["commit", "-q", "-m", "one"]);
        ensure_clean_git(tmp.path()).unwrap();
        fs::write(tmp.path().join("a"), "2").unwrap();
        let err = ensure_clean_git(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("the git tree has 1 uncommitted change(s) (a)"), "{err}");
        git(&["checkout", "-q", "a"]);
        fs::write(tmp.path().join("new"), "x").unwrap();
        assert!(ensure_clean_git(tmp.path()).is_err(), "untracked files count");
        let not_git = tempfile::tempdir().unwrap();
        assert!(ensure_clean_git(not_git.path()).unwrap_err().to_string().contains("not a git checkout"));
    }

    #[test]
    fn license_expressions() {
        let l = spdx_and(["MIT".into(), "MIT OR Apache-2.0".into(), "MIT/Apache-2.0".into(), "MIT".into(), "BSD-3-Clause".into()]);
        assert_eq!(l, "(Apache-2.0 OR MIT) AND BSD-3-Clause AND MIT");
        let l = spdx_and(["Apache-2.0 OR MIT".into(), "MIT OR Apache-2.0".into(), "Apache-2.0 WITH LLVM-exception".into()]);
        assert_eq!(l, "(Apache-2.0 OR MIT) AND Apache-2.0 WITH LLVM-exception");
        let l = spdx_and(["(MIT OR Apache-2.0) AND Unicode-3.0".into(), "ISC".into()]);
        assert_eq!(l, "((MIT OR Apache-2.0) AND Unicode-3.0) AND ISC");
    }

    #[test]
    fn pkg_info_gets_the_local_version() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("PKG-INFO");
        fs::write(&p, "Metadata-Version: 2.1\nName: cffi\nVersion: 1.17.1\nSummary: x\n").unwrap();
        set_pkg_info_version(&p, "1.17.1", "1.17.1+ft1").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "Metadata-Version: 2.1\nName: cffi\nVersion: 1.17.1+ft1\nSummary: x\n");
        assert!(set_pkg_info_version(&p, "1.17.1", "x").is_err());
        set_pkg_info_version(&tmp.path().join("missing"), "1.17.1", "x").unwrap();
    }

    #[test]
    fn the_sdist_series_parses_and_touches_setup_py() {
        let s = sdist_series("1.17.1").unwrap();
        assert_eq!(s.patches.len(), 1);
        assert_eq!(s.patches[0].touches, ["setup.py", "MANIFEST.in"]);
    }
}
