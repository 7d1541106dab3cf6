//! What each step of a series must pass in the stress suite:
//! `shim-c/patches/<cffi>/stress-expectations`, kept next to the series. `stress` judges
//! its cells by these rules; `export` picks the installed-package check's scenarios
//! with them.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::util;

/// What a step is expected to pass, one rule per line, first match wins:
/// `<step|N+|*> <gil|t|*> <scenario|component|*> <pass|may-fail>`. `N+` matches step N
/// and every later one, so a component fixed at step N is required from then on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    steps: StepRange,
    free_threaded: Option<bool>,
    selector: String,
    must_pass: bool,
}

/// The steps a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StepRange {
    Any,
    Exactly(u32),
    From(u32),
}

impl StepRange {
    fn contains(self, step: u32) -> bool {
        match self {
            StepRange::Any => true,
            StepRange::Exactly(s) => step == s,
            StepRange::From(s) => step >= s,
        }
    }
}

/// Parses the rules of an expectations file (`#` starts a comment).
pub fn parse(text: &str) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [step, flavour, selector, expect] = words[..] else {
            bail!("expectations line {}: want 4 fields, got {:?}", n + 1, line);
        };
        let bad_step = || anyhow::anyhow!("expectations line {}: bad step {step:?} (want N, N+ or *)", n + 1);
        let steps = match step {
            "*" => StepRange::Any,
            s => match s.strip_suffix('+') {
                Some(from) => StepRange::From(from.parse().map_err(|_| bad_step())?),
                None => StepRange::Exactly(s.parse().map_err(|_| bad_step())?),
            },
        };
        let free_threaded = match flavour {
            "*" => None,
            "gil" => Some(false),
            "t" => Some(true),
            f => bail!("expectations line {}: flavour {f:?} is not gil, t or *", n + 1),
        };
        let must_pass = match expect {
            "pass" => true,
            "may-fail" => false,
            e => bail!("expectations line {}: {e:?} is not pass or may-fail", n + 1),
        };
        rules.push(Rule { steps, free_threaded, selector: selector.to_string(), must_pass });
    }
    Ok(rules)
}

/// Whether `scenario` (of `component`) must pass at `step` on this flavour.
pub fn must_pass(rules: &[Rule], step: u32, free_threaded: bool, scenario: &str, component: &str) -> bool {
    rules
        .iter()
        .find(|r| {
            r.steps.contains(step)
                && r.free_threaded.is_none_or(|f| f == free_threaded)
                && (r.selector == "*" || r.selector == scenario || r.selector == component)
        })
        .is_none_or(|r| r.must_pass)
}

/// `shim-c/patches/<cffi_version>/stress-expectations`, next to the series.
fn path(cffi_version: &str) -> PathBuf {
    util::workspace_root().join("shim-c").join("patches").join(cffi_version).join("stress-expectations")
}

/// The rules of [`path`]`(cffi_version)`.
pub fn load(cffi_version: &str) -> Result<Vec<Rule>> {
    let path = path(cffi_version);
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "# step flavour selector expect\n\
                         * gil * pass\n\
                         1 t unique-cache pass\n\
                         1 t s05_primitives may-fail   # a comment\n\
                         * t * may-fail\n";

    #[test]
    fn first_matching_rule_wins_and_unknown_means_pass() {
        let rules = parse(RULES).unwrap();
        assert!(must_pass(&rules, 0, false, "s02", "unique-cache"));
        assert!(!must_pass(&rules, 0, true, "s02", "unique-cache"));
        assert!(must_pass(&rules, 1, true, "s02", "unique-cache"));
        assert!(!must_pass(&rules, 1, true, "s14", "callbacks"));
        assert!(!must_pass(&rules, 1, true, "s05_primitives", "misc"));
        assert!(must_pass(&[], 3, true, "x", "y"), "no rule: must pass");
    }

    #[test]
    fn a_step_plus_rule_holds_from_that_step_on() {
        let rules = parse("2+ t type-realization pass\n* t * may-fail\n").unwrap();
        assert!(!must_pass(&rules, 1, true, "s26", "type-realization"));
        assert!(must_pass(&rules, 2, true, "s26", "type-realization"));
        assert!(must_pass(&rules, 5, true, "s26", "type-realization"));
        assert!(!must_pass(&rules, 5, true, "s14", "callbacks"));
    }

    #[test]
    fn bad_expectation_lines_are_refused() {
        assert!(parse("0 t *").is_err());
        assert!(parse("x t * pass").is_err());
        assert!(parse("+ t * pass").is_err());
        assert!(parse("1++ t * pass").is_err());
        assert!(parse("0 nogil * pass").is_err());
        assert!(parse("0 t * maybe").is_err());
    }

    /// Every series folder of `shim-c/patches/` (the versions `series::known_versions`
    /// lists) has expectations that parse.
    #[test]
    fn the_real_expectations_parse() {
        let patches = util::workspace_root().join("shim-c").join("patches");
        let mut versions = 0;
        for entry in fs::read_dir(&patches).unwrap().flatten().filter(|e| e.path().join("series").is_file()) {
            load(&entry.file_name().to_string_lossy()).unwrap();
            versions += 1;
        }
        assert!(versions > 0, "no series in {}", patches.display());
    }
}
