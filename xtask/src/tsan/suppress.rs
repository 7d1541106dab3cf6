//! Suppressions, in two honest layers:
//!
//! 1. CPython's own file for the interpreter (`Tools/tsan/suppressions_free_threading.txt`
//!    of the source the TSan build was made from): races inside CPython, not ours. Each
//!    entry's reason is the comment block above it in that file.
//! 2. The kit's file next to the series (`shim-c/patches/<cffi>/tsan-suppressions`), per
//!    step like `stress-expectations`:
//!    `<steps> <suppression> <hazard|interpreter>  # reason`, where `<steps>` is `N`,
//!    `N-M` or `*`. An entry that names a hazard may only cover steps before the one whose
//!    patches fix that hazard (their `Hazards:` lines): nothing in cffi's or the kit's code
//!    is suppressed at the step that claims to fix it. An `interpreter` entry is for a race
//!    inside CPython that its 3.13 file lacks; it may not name a function of cffi or the kit.
//!
//! The layers are written into one file per run, which TSAN_OPTIONS points at.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::attribute::{is_ours, Attribution};
use super::parse::Frame;
use crate::series::{is_hazard_id, Series};

/// One suppression with where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// "race:get_allocator_unlocked", as TSan prints it when it matches.
    pub pattern: String,
    /// "cpython" or "kit".
    pub layer: &'static str,
    /// The hazard a kit entry stands for ("interpreter" for CPython's own races).
    pub hazard: Option<String>,
    pub reason: String,
}

/// An entry of the kit's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KitEntry {
    pub first: u32,
    /// Inclusive; u32::MAX for `*`.
    pub last: u32,
    pub pattern: String,
    /// A hazard ID, or "interpreter".
    pub owner: String,
    pub reason: String,
}

impl KitEntry {
    fn covers(&self, step: u32) -> bool {
        (self.first..=self.last).contains(&step)
    }
}

const KINDS: [&str; 8] =
    ["race", "race_top", "thread", "mutex", "signal", "deadlock", "called_from_lib", "src"];

fn check_pattern(pattern: &str) -> Result<()> {
    match pattern.split_once(':') {
        Some((kind, what)) if KINDS.contains(&kind) && !what.is_empty() => Ok(()),
        _ => bail!("{pattern:?} is not a TSan suppression (`race:function`, `race_top:…`, …)"),
    }
}

/// Parses the kit's file and checks every entry against the series.
pub fn parse_kit_file(text: &str, series: &Series, attribution: &Attribution) -> Result<Vec<KitEntry>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let (body, reason) = line.split_once('#').unwrap_or((line, ""));
        let body = body.trim();
        if body.is_empty() {
            continue;
        }
        let at = |msg: String| anyhow::anyhow!("line {}: {msg}", n + 1);
        let words: Vec<&str> = body.split_whitespace().collect();
        let [steps, pattern, owner] = words[..] else {
            return Err(at(format!("expected `<steps> <suppression> <hazard|interpreter>  # reason`, got {body:?}")));
        };
        let (first, last) = parse_steps(steps).map_err(|e| at(e.to_string()))?;
        check_pattern(pattern).map_err(|e| at(e.to_string()))?;
        let reason = reason.trim().to_string();
        if reason.is_empty() {
            return Err(at(format!("{pattern}: every suppression needs its reason after '#'")));
        }
        let function = pattern.split_once(':').map_or("", |(_, f)| f);
        if owner == "interpreter" {
            let frame = Frame { function: function.to_string(), location: String::new(), module: String::new() };
            if attribution.names(function) || is_ours(&frame) {
                return Err(at(format!(
                    "{pattern} names a function of cffi or the kit: suppress it under its hazard, not as the interpreter's"
                )));
            }
        } else if is_hazard_id(owner) {
            if let Some(fixed) = series.fixing_step(owner) {
                if last >= fixed {
                    return Err(at(format!(
                        "{pattern} ({owner}) is suppressed at step {}, but step {fixed} fixes {owner}: \
                         a hazard may be suppressed only at the steps before its fix",
                        if last == u32::MAX { "* (every step)".to_string() } else { last.to_string() }
                    )));
                }
            }
        } else {
            return Err(at(format!("{owner:?} is neither a hazard ID nor `interpreter`")));
        }
        out.push(KitEntry { first, last, pattern: pattern.to_string(), owner: owner.to_string(), reason });
    }
    Ok(out)
}

fn parse_steps(s: &str) -> Result<(u32, u32)> {
    if s == "*" {
        return Ok((0, u32::MAX));
    }
    let num = |t: &str| t.parse::<u32>().map_err(|_| anyhow::anyhow!("{s:?} is not `N`, `N-M` or `*`"));
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                bail!("{s:?}: the range is empty");
            }
            Ok((a, b))
        }
        None => {
            let n = num(s)?;
            Ok((n, n))
        }
    }
}

/// CPython's entries, each with the comment block above it as its reason.
pub fn parse_cpython_file(text: &str) -> Vec<Suppression> {
    let mut out = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    // a comment block covers the entries after it, up to the next comment that follows
    // an entry or a blank line
    let mut block_ended = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            block_ended = true;
            continue;
        }
        if let Some(c) = trimmed.strip_prefix('#') {
            if block_ended {
                comment.clear();
                block_ended = false;
            }
            comment.push(c.trim().to_string());
            continue;
        }
        block_ended = true;
        let why = comment.iter().filter(|c| !c.is_empty()).cloned().collect::<Vec<_>>().join(" ");
        out.push(Suppression {
            pattern: trimmed.to_string(),
            layer: "cpython",
            hazard: Some("interpreter".into()),
            reason: if why.is_empty() { "CPython's own suppression".into() } else { format!("CPython: {why}") },
        });
    }
    out
}

/// Both layers for `step`, in the order they are written.
pub fn layered(cpython: &[Suppression], kit: &[KitEntry], step: u32) -> Vec<Suppression> {
    let mut out = cpython.to_vec();
    for e in kit.iter().filter(|e| e.covers(step)) {
        out.push(Suppression { pattern: e.pattern.clone(), layer: "kit", hazard: Some(e.owner.clone()), reason: e.reason.clone() });
    }
    out
}

/// Writes the layered file that TSAN_OPTIONS' `suppressions=` names.
pub fn write_file(path: &Path, step: u32, layers: &[Suppression]) -> Result<()> {
    let mut text = format!("# cffi-ft: TSan suppressions for step {step}, written by cargo xtask tsan\n");
    for layer in ["cpython", "kit"] {
        text.push_str(&format!("\n# layer: {layer}\n"));
        for s in layers.iter().filter(|s| s.layer == layer) {
            text.push_str(&format!("# {}\n{}\n", s.reason.replace('\n', " "), s.pattern));
        }
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Series {
        Series::load(crate::series::DEFAULT_CFFI).unwrap()
    }

    fn table() -> Attribution {
        Attribution::load(&crate::util::workspace_root().join("shim-c/patches/1.17.1/tsan-attribution")).unwrap()
    }

    #[test]
    fn a_hazard_may_be_suppressed_before_its_fix_only() {
        let (s, t) = (series(), table());
        // F8 is fixed by step 5 (0026)
        let ok = parse_kit_file("0-4 race:cdata_dealloc F8  # formal race on the weakref list\n", &s, &t).unwrap();
        assert!(ok[0].covers(4) && !ok[0].covers(5));
        let err = parse_kit_file("0-5 race:cdata_dealloc F8  # too far\n", &s, &t).unwrap_err().to_string();
        assert!(err.contains("step 5 fixes F8"), "{err}");
        let err = parse_kit_file("* race:cdata_dealloc F8  # everywhere\n", &s, &t).unwrap_err().to_string();
        assert!(err.contains("every step"), "{err}");
    }

    #[test]
    fn interpreter_entries_cannot_hide_our_functions() {
        let (s, t) = (series(), table());
        assert!(parse_kit_file("* race:dict_resize interpreter  # inside CPython\n", &s, &t).is_ok());
        for ours in ["race:get_unique_type", "race_top:cffi_ft_lib_pin_new", "race:_cffi_f_foo"] {
            let err = parse_kit_file(&format!("* {ours} interpreter  # no\n"), &s, &t).unwrap_err().to_string();
            assert!(err.contains("names a function of cffi or the kit"), "{err}");
        }
    }

    #[test]
    fn malformed_entries_are_refused() {
        let (s, t) = (series(), table());
        for bad in [
            "0-4 race:cdata_dealloc F8\n",         // no reason
            "4-0 race:cdata_dealloc F8  # empty\n", // empty range
            "x race:cdata_dealloc F8  # steps\n",
            "0 cdata_dealloc F8  # no kind\n",
            "0 race:cdata_dealloc Q1  # owner\n",
            "0 race:cdata_dealloc  # two words\n",
        ] {
            assert!(parse_kit_file(bad, &s, &t).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_series_kit_file_is_valid() {
        let path = crate::util::workspace_root().join("shim-c/patches/1.17.1/tsan-suppressions");
        let text = fs::read_to_string(path).unwrap();
        let entries = parse_kit_file(&text, &series(), &table()).unwrap();
        // nothing of cffi's or the kit's code is suppressed at the latest step
        let latest = series().latest_step();
        assert!(entries.iter().filter(|e| e.covers(latest)).all(|e| e.owner == "interpreter"));
    }

    #[test]
    fn cpython_entries_carry_the_comment_above_them() {
        let text = "# header\n\n# gh-1: a race\nrace:foo\nrace:bar\n\n# These trigger directly\nrace_top:baz\n";
        let got = parse_cpython_file(text);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].pattern, "race:foo");
        assert!(got[0].reason.contains("gh-1: a race"));
        assert!(got[2].reason.contains("These trigger directly"));
        let layers = layered(&got, &[KitEntry { first: 0, last: 1, pattern: "race:x".into(), owner: "A1".into(), reason: "r".into() }], 2);
        assert_eq!(layers.len(), 3, "a kit entry for steps 0-1 is not in step 2's file");
    }
}
