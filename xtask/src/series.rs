//! The patch series in `shim-c/patches/<cffi-version>/`: quilt layout (`series` plus
//! numbered patches), each patch opening with a header of `Key: value` lines ended by a
//! line `---`. `Step:` (required) says which migration step a patch belongs to;
//! `Cargo-Feature:` (optional) names the umbrella-crate feature the step turns on.
//!
//! The harness knows nothing else about steps: they are whatever the headers say.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(Clone, Debug)]
pub struct Patch {
    pub file: PathBuf,
    pub name: String,
    pub subject: String,
    pub step: u32,
    pub kind: String,
    pub cargo_feature: Option<String>,
    /// Hazard IDs of the inventory the patch fixes (its `Hazards:` line, up to a
    /// parenthesised remark): "A1", "F14".
    pub hazards: Vec<String>,
    /// Files the patch touches (from its `+++ b/...` lines).
    pub touches: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub cffi_version: String,
    pub patches: Vec<Patch>,
}

/// The cffi version every command's `--cffi-version` defaults to.
pub const DEFAULT_CFFI: &str = "1.17.1";

/// cffi versions the kit has a series for (folders of `shim-c/patches/`).
pub fn known_versions() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(util::workspace_root().join("shim-c").join("patches"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("series").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl Series {
    pub fn load(cffi_version: &str) -> Result<Series> {
        let dir = util::workspace_root().join("shim-c").join("patches").join(cffi_version);
        if !dir.join("series").is_file() {
            bail!(
                "unknown cffi version {cffi_version}: the kit has patch series for {}",
                known_versions().join(", ")
            );
        }
        Series::load_dir(cffi_version, &dir)
    }

    pub fn load_dir(cffi_version: &str, dir: &Path) -> Result<Series> {
        let text = fs::read_to_string(dir.join("series"))
            .with_context(|| format!("cannot read {}", dir.join("series").display()))?;
        let mut patches = Vec::new();
        for line in text.lines() {
            let name = line.split('#').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            // quilt allows "-p1" style options after the name; the kit uses -p1 only
            let name = name.split_whitespace().next().unwrap_or(name);
            patches.push(parse_patch(&dir.join(name))?);
        }
        if patches.is_empty() {
            bail!("{}: the series is empty", dir.display());
        }
        for pair in patches.windows(2) {
            if pair[1].step < pair[0].step {
                bail!(
                    "{}: {} (step {}) comes after {} (step {}); steps must not go down",
                    dir.display(),
                    pair[1].name,
                    pair[1].step,
                    pair[0].name,
                    pair[0].step
                );
            }
        }
        Ok(Series { cffi_version: cffi_version.to_string(), patches })
    }

    /// The steps the series defines, ascending.
    pub fn steps(&self) -> Vec<u32> {
        self.patches.iter().map(|p| p.step).collect::<BTreeSet<_>>().into_iter().collect()
    }

    pub fn latest_step(&self) -> u32 {
        self.patches.last().map_or(0, |p| p.step)
    }

    /// The patches that make up `step` (all patches of steps up to it).
    pub fn up_to(&self, step: u32) -> Vec<&Patch> {
        self.patches.iter().filter(|p| p.step <= step).collect()
    }

    /// Cargo features of the umbrella crate that `step` turns on.
    pub fn features_up_to(&self, step: u32) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.up_to(step) {
            if let Some(f) = &p.cargo_feature {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        out
    }

    /// The first step whose patches fix `hazard` (their `Hazards:` lines), if any.
    pub fn fixing_step(&self, hazard: &str) -> Option<u32> {
        self.patches.iter().filter(|p| p.hazards.iter().any(|h| h == hazard)).map(|p| p.step).min()
    }

    /// Parses a `--steps` value ("0,1", "latest", "all") against the series.
    pub fn select_steps(&self, spec: Option<&str>) -> Result<Vec<u32>> {
        let all = self.steps();
        let Some(spec) = spec else { return Ok(all) };
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part {
                "all" => out.extend(all.iter().copied()),
                "latest" => out.push(self.latest_step()),
                n => {
                    let step: u32 = n
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--steps: {n:?} is not a step number"))?;
                    if !all.contains(&step) {
                        bail!(
                            "--steps: step {step} does not exist for cffi {} (steps: {})",
                            self.cffi_version,
                            all.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                        );
                    }
                    out.push(step);
                }
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            bail!("--steps: no step selected");
        }
        Ok(out)
    }
}

fn parse_patch(file: &Path) -> Result<Patch> {
    let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let text = fs::read_to_string(file)
        .with_context(|| format!("series names {name}, which cannot be read"))?;
    let mut subject = String::new();
    let mut step = None;
    let mut kind = String::new();
    let mut cargo_feature = None;
    let mut hazards = Vec::new();
    for line in text.lines() {
        if line == "---" {
            break;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        if key.starts_with(' ') {
            continue; // continuation line of a long field
        }
        let value = value.trim();
        match key {
            "Subject" => subject = value.to_string(),
            "Step" => {
                step = Some(value.parse::<u32>().map_err(|_| {
                    anyhow::anyhow!("{name}: header `Step: {value}` is not a step number")
                })?)
            }
            "Kind" => kind = value.to_string(),
            "Hazards" => hazards = hazard_ids(value),
            "Cargo-Feature" if !value.is_empty() && value != "none" => {
                cargo_feature = Some(value.to_string())
            }
            _ => {}
        }
    }
    let step = step.with_context(|| format!("{name}: the header has no `Step:` line"))?;
    let touches = text
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .map(|l| l.split('\t').next().unwrap_or(l).trim().to_string())
        .collect();
    Ok(Patch { file: file.to_path_buf(), name, subject, step, kind, cargo_feature, hazards, touches })
}

/// The hazard IDs of a `Hazards:` value: "B3 B4 B5" → B3, B4, B5; a parenthesised
/// remark ends the list ("F5 F14 (and C3 C5 of step 4)" → F5, F14); "none" → nothing.
fn hazard_ids(value: &str) -> Vec<String> {
    value
        .split('(')
        .next()
        .unwrap_or("")
        .split([' ', ','])
        .filter(|t| is_hazard_id(t))
        .map(str::to_string)
        .collect()
}

/// "A1".."F14": a letter A-F and a number.
pub fn is_hazard_id(token: &str) -> bool {
    let mut chars = token.chars();
    matches!(chars.next(), Some('A'..='F'))
        && !chars.as_str().is_empty()
        && chars.as_str().bytes().all(|b| b.is_ascii_digit())
}

/// Applies `patches` to `tree` with GNU patch, strictly (no fuzz, no rejects files).
/// On failure the error names the patch and the file that does not match; `tree` may
/// then be partly patched, so callers only ever apply to a scratch copy.
pub fn apply(tree: &Path, patches: &[&Patch]) -> Result<()> {
    for patch in patches {
        let out = Command::new("patch")
            .args(["-p1", "--fuzz=0", "--batch", "--forward", "--no-backup-if-mismatch", "-r", "-", "-i"])
            .arg(&patch.file)
            .current_dir(tree)
            .output()
            .context("cannot run `patch` (GNU patch is required: apt-get install patch)")?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            bail!("{}", explain_patch_failure(&patch.name, &text));
        }
    }
    Ok(())
}

/// Turns GNU patch's chatter into one line naming the patch and the file.
fn explain_patch_failure(patch: &str, output: &str) -> String {
    let mut current_file = None;
    for line in output.lines() {
        if let Some(f) = line.strip_prefix("patching file ").or_else(|| line.strip_prefix("checking file ")) {
            current_file = Some(f.trim().trim_matches('\'').to_string());
        }
        let file = current_file.as_deref().unwrap_or("?");
        if line.contains("Reversed (or previously applied) patch detected") {
            return format!("{patch} is already applied to {file} (the tree is already patched)");
        }
        if line.contains("FAILED") {
            return format!("{file} does not match {patch} ({}): a local change or another cffi version", line.trim());
        }
        if line.contains("can't find file to patch") || line.contains("No such file") {
            return format!("{patch}: a file it patches is missing from the tree");
        }
    }
    let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("patch failed");
    format!("{patch} does not apply: {}", last.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_series(dir: &Path, patches: &[(&str, &str)]) {
        let mut series = String::from("# test series\n");
        for (name, body) in patches {
            fs::write(dir.join(name), body).unwrap();
            series.push_str(name);
            series.push('\n');
        }
        fs::write(dir.join("series"), series).unwrap();
    }

    const P0: &str = "Subject: add a line\nStep: 0\nKind: test\n---\n--- a/f.txt\n+++ b/f.txt\n@@ -1,2 +1,3 @@\n one\n+inserted\n two\n";
    const P1: &str = "Subject: change two\nStep: 1\nKind: backend\nCargo-Feature: demo-feature\nDescription:\n long: text\n---\n--- a/f.txt\n+++ b/f.txt\n@@ -2,2 +2,2 @@\n inserted\n-two\n+TWO\n";

    #[test]
    fn hazard_lines_stop_at_a_remark() {
        assert_eq!(hazard_ids("B3 B4 B5"), ["B3", "B4", "B5"]);
        assert_eq!(hazard_ids("F5 F14 (and C3 C5 of step 4)"), ["F5", "F14"]);
        assert_eq!(hazard_ids("C8 (start-up spin lock)"), ["C8"]);
        assert!(hazard_ids("none (build plumbing)").is_empty());
        assert!(!is_hazard_id("G1") && !is_hazard_id("A") && !is_hazard_id("A1x"));
    }

    #[test]
    fn the_real_series_says_which_step_fixes_a_hazard() {
        let s = Series::load(DEFAULT_CFFI).unwrap();
        assert_eq!(s.fixing_step("A5"), Some(1));
        assert_eq!(s.fixing_step("D6"), Some(2));
        assert_eq!(s.fixing_step("B4"), Some(3));
        assert_eq!(s.fixing_step("C1"), Some(4));
        assert_eq!(s.fixing_step("F8"), Some(5));
        assert_eq!(s.fixing_step("Z1"), None);
    }

    #[test]
    fn parses_steps_features_and_selection() {
        let tmp = tempfile::tempdir().unwrap();
        write_series(tmp.path(), &[("0001-a.patch", P0), ("0002-b.patch", P1)]);
        let s = Series::load_dir("9.9", tmp.path()).unwrap();
        assert_eq!(s.steps(), vec![0, 1]);
        assert_eq!(s.latest_step(), 1);
        assert_eq!(s.up_to(0).len(), 1);
        assert_eq!(s.features_up_to(0), Vec::<String>::new());
        assert_eq!(s.features_up_to(1), vec!["demo-feature".to_string()]);
        assert_eq!(s.patches[1].touches, vec!["f.txt".to_string()]);
        assert_eq!(s.select_steps(None).unwrap(), vec![0, 1]);
        assert_eq!(s.select_steps(Some("latest")).unwrap(), vec![1]);
        assert_eq!(s.select_steps(Some("1,0,1")).unwrap(), vec![0, 1]);
        let err = s.select_steps(Some("7")).unwrap_err().to_string();
        assert!(err.contains("step 7 does not exist"), "{err}");
    }

    #[test]
    fn rejects_missing_step_and_decreasing_steps() {
        let tmp = tempfile::tempdir().unwrap();
        write_series(tmp.path(), &[("0001-a.patch", "Subject: x\n---\n")]);
        let err = Series::load_dir("9.9", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no `Step:` line"), "{err}");
        write_series(tmp.path(), &[("0001-b.patch", P1), ("0002-a.patch", P0)]);
        let err = Series::load_dir("9.9", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("steps must not go down"), "{err}");
    }

    #[test]
    fn applies_and_names_the_conflicting_file() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("p");
        fs::create_dir(&pdir).unwrap();
        write_series(&pdir, &[("0001-a.patch", P0), ("0002-b.patch", P1)]);
        let s = Series::load_dir("9.9", &pdir).unwrap();

        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("f.txt"), "one\ntwo\n").unwrap();
        apply(&tree, &s.up_to(1)).unwrap();
        assert_eq!(fs::read_to_string(tree.join("f.txt")).unwrap(), "one\ninserted\nTWO\n");

        fs::write(tree.join("f.txt"), "one\ntwo\n").unwrap();
        apply(&tree, &s.up_to(0)).unwrap();
        let err = apply(&tree, &s.up_to(0)).unwrap_err().to_string();
        assert!(err.contains("already applied"), "{err}");

        fs::write(tree.join("f.txt"), "one\nlocal edit\n").unwrap();
        let err = apply(&tree, &s.up_to(0)).unwrap_err().to_string();
        assert!(err.contains("f.txt does not match 0001-a.patch"), "{err}");
        assert!(!tree.join("f.txt.rej").exists() && !tree.join("f.txt.orig").exists());
    }

    #[test]
    fn the_real_series_parses() {
        for version in known_versions() {
            let s = Series::load(&version).unwrap();
            assert_eq!(s.steps().first(), Some(&0), "cffi {version}: step 0 comes first");
            for p in &s.patches {
                assert!(!p.subject.is_empty(), "{}: no Subject", p.name);
                assert!(!p.touches.is_empty(), "{}: touches no file", p.name);
            }
        }
        assert!(known_versions().contains(&"1.17.1".to_string()));
    }
}
