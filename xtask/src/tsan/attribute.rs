//! Whose race is it: a report's frames in cffi's or the kit's code, its signature (for
//! deduplication) and its hazard and component, from the series' `tsan-attribution`.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::parse::{Frame, Report};
use crate::series::is_hazard_id;

/// The components of the inventory, by the letter of their hazards (the stress suite's
/// names, compat-tests/stress/cffi_stress/__init__.py).
pub const COMPONENTS: [(char, &str); 6] = [
    ('A', "unique-cache"),
    ('B', "library-registry"),
    ('C', "callbacks"),
    ('D', "type-realization"),
    ('E', "per-thread-state"),
    ('F', "misc"),
];

/// A report in no component: in cffi's or the kit's code, but no entry names its frames.
pub const UNATTRIBUTED: &str = "unattributed";
/// A report with no cffi or kit frame at all: the interpreter's (or a test's) own.
pub const INTERPRETER: &str = "interpreter";

pub fn component_of_hazard(hazard: &str) -> Option<&'static str> {
    let letter = hazard.chars().next()?;
    COMPONENTS.iter().find(|(l, _)| *l == letter).map(|(_, c)| *c)
}

/// What an entry of the table points at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Hazard(String),
    Component(&'static str),
}

/// The series' `tsan-attribution` table.
#[derive(Debug)]
pub struct Attribution {
    entries: Vec<(String, Target)>,
}

/// Where a report belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The top cffi/kit frame of each access stack, "func (file:line)" (or "-" for a
    /// stack with none), joined by " | ": the deduplication key.
    pub signature: String,
    pub hazard: Option<String>,
    pub component: String,
}

impl Attribution {
    pub fn load(path: &Path) -> Result<Attribution> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Attribution::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Attribution> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(function), Some(what), None) = (words.next(), words.next(), words.next()) else {
                bail!("line {}: expected `<function> <hazard|component>`, got {line:?}", n + 1);
            };
            let target = if is_hazard_id(what) {
                if component_of_hazard(what).is_none() {
                    bail!("line {}: hazard {what} has no component", n + 1);
                }
                Target::Hazard(what.to_string())
            } else {
                match COMPONENTS.iter().find(|(_, c)| *c == what) {
                    Some((_, c)) => Target::Component(c),
                    None => bail!("line {}: {what:?} is neither a hazard ID nor a component", n + 1),
                }
            };
            entries.push((function.to_string(), target));
        }
        Ok(Attribution { entries })
    }

    /// The entry for `function`; `inner` are the functions it called on the way to the
    /// access (CPython's inline helpers, e.g. `Py_SET_REFCNT`). `specific`: only
    /// `caller>callee` entries, which name the access more precisely than `caller`.
    fn lookup(&self, function: &str, inner: &[&str], specific: bool) -> Option<&Target> {
        let name_matches = |pattern: &str, name: &str| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        self.entries.iter().find_map(|(pattern, target)| {
            let hit = match pattern.split_once('>') {
                Some((caller, callee)) => {
                    specific && name_matches(caller, function) && inner.iter().any(|f| name_matches(callee, f))
                }
                None => !specific && name_matches(pattern, function),
            };
            hit.then_some(target)
        })
    }

    /// Whether `function` is named by the table (so, cffi's or the kit's).
    pub fn names(&self, function: &str) -> bool {
        self.lookup(function, &[], false).is_some()
    }

    /// The entry of the first frame of `frames` (innermost first) that has one, with
    /// the frames above it as its `inner`.
    fn first_entry(&self, frames: &[Frame], specific: bool) -> Option<&Target> {
        frames.iter().enumerate().filter(|(_, f)| is_ours(f)).find_map(|(i, f)| {
            let inner: Vec<&str> = frames[..i].iter().map(|f| f.function.as_str()).collect();
            self.lookup(&f.function, &inner, specific)
        })
    }

    pub fn judge(&self, report: &Report) -> Verdict {
        let ours: Vec<Vec<&Frame>> =
            report.accesses.iter().map(|s| s.frames.iter().filter(|f| is_ours(f)).collect()).collect();
        let signature = {
            let mut tops: Vec<String> =
                ours.iter().take(2).map(|frames| frames.first().map_or("-".to_string(), |f| f.short())).collect();
            if report.accesses.len() == 1 {
                // one stack (a use after free's free, a signal report): its two top frames
                tops = ours[0].iter().take(2).map(|f| f.short()).collect();
            }
            format!("{}: {}", report.kind, tops.join(" | "))
        };
        if !is_our_report(report) {
            return Verdict { signature, hazard: None, component: INTERPRETER.into() };
        }
        // a `caller>callee` entry in either access first, then the plain ones
        let found = [true, false]
            .into_iter()
            .find_map(|specific| report.accesses.iter().take(2).find_map(|s| self.first_entry(&s.frames, specific)));
        let (hazard, component) = match found {
            Some(Target::Hazard(h)) => (Some(h.clone()), component_of_hazard(h).unwrap_or(UNATTRIBUTED).to_string()),
            Some(Target::Component(c)) => (None, c.to_string()),
            None => (None, UNATTRIBUTED.to_string()),
        };
        Verdict { signature, hazard, component }
    }
}

/// A frame in cffi's C code (the backend, its generated modules) or the kit's (the
/// shim, the staticlib linked into the backend).
/// Whether a report is cffi's or the kit's rather than the interpreter's: one of its
/// accesses is made by our code (its first frame past TSan's interceptors is in the
/// backend, CPython's inline helpers compiled into it included), or every access stack
/// goes through our code (two kit calls into CPython ordered by a kit lock TSan cannot
/// see, say). A race inside CPython that only one of our calls leads to (a hook of the
/// interpreter's that races with a test's thread) is the interpreter's.
pub fn is_our_report(report: &Report) -> bool {
    let stacks: Vec<&[Frame]> = report.accesses.iter().take(2).map(|s| s.frames.as_slice()).collect();
    let site_ours = stacks.iter().any(|frames| {
        frames
            .iter()
            .find(|f| !is_interceptor(f))
            .is_some_and(|f| is_ours(f) || (f.module.starts_with("_cffi_backend") && f.location.contains("/include/python3")))
    });
    site_ours || (!stacks.is_empty() && stacks.iter().all(|frames| frames.iter().any(is_ours)))
}

/// A frame of TSan's runtime standing for a libc call (`memcpy`, `malloc`, `mmap`):
/// no source, in the executable that links the runtime.
fn is_interceptor(frame: &Frame) -> bool {
    frame.location == "<null>" && !frame.module.starts_with("_cffi_backend")
}

/// CPython's inline helpers compiled into the backend (`Py_DECREF`, `Py_SET_REFCNT`:
/// their location is in CPython's headers) are not: a report is placed at the cffi
/// function that called them.
pub fn is_ours(frame: &Frame) -> bool {
    if frame.location.contains("/include/python3") {
        return false;
    }
    frame.module.starts_with("_cffi_backend")
        || frame.location.contains("/src/c/")
        || frame.location.contains("/src/cffi/")
        || frame.location.contains("/shim-c/")
        || frame.function.starts_with("cffi_ft")
        || frame.function.starts_with("_cffi_")
}

#[cfg(test)]
mod tests {
    use super::super::parse::reports;
    use super::*;

    const TABLE: &str = "get_unique_type A5\nctypedescr_dealloc A9\ncffi_ft_lib_* library-registry\n";

    #[test]
    fn the_series_table_parses_and_names_every_component() {
        let path = crate::util::workspace_root().join("shim-c/patches/1.17.1/tsan-attribution");
        let table = Attribution::load(&path).unwrap();
        for (letter, component) in COMPONENTS {
            let any = table.entries.iter().any(|(_, t)| match t {
                Target::Hazard(h) => h.starts_with(letter),
                Target::Component(c) => *c == component,
            });
            assert!(any, "no entry for {component}");
        }
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(Attribution::parse("get_unique_type").is_err());
        assert!(Attribution::parse("get_unique_type Z9").is_err());
        assert!(Attribution::parse("get_unique_type G1").is_err());
        assert!(Attribution::parse("f A1 extra").is_err());
    }

    #[test]
    fn a_caller_callee_entry_is_more_specific() {
        let table = Attribution::parse("ctypedescr_dealloc A9\nctypedescr_dealloc>Py_SET_REFCNT A3\n").unwrap();
        let frame = |function: &str, location: &str| Frame {
            function: function.into(),
            location: location.into(),
            module: "_cffi_backend.so".into(),
        };
        let through_header = [
            frame("Py_SET_REFCNT", "/py/include/python3.13t/object.h:413:20"),
            frame("ctypedescr_dealloc", "/t/src/c/_cffi_backend.c:464:9"),
        ];
        assert!(!is_ours(&through_header[0]), "CPython's inline helpers are not cffi's code");
        assert_eq!(table.first_entry(&through_header, true), Some(&Target::Hazard("A3".into())));
        assert_eq!(table.first_entry(&through_header[1..], true), None);
        assert_eq!(table.first_entry(&through_header[1..], false), Some(&Target::Hazard("A9".into())));
    }

    #[test]
    fn a_report_goes_to_the_hazard_of_its_first_named_frame() {
        let table = Attribution::parse(TABLE).unwrap();
        let r = &reports(super::super::parse::tests_sample())[0];
        let v = table.judge(r);
        assert_eq!(v.hazard.as_deref(), Some("A9"));
        assert_eq!(v.component, "unique-cache");
        assert_eq!(
            v.signature,
            "data race: ctypedescr_dealloc (_cffi_backend.c:422) | get_unique_type (_cffi_backend.c:4712)"
        );
        // no entry for either frame: ours, but unattributed
        let v = Attribution::parse("x A1").unwrap().judge(r);
        assert_eq!((v.hazard, v.component.as_str()), (None, UNATTRIBUTED));
    }

    #[test]
    fn a_race_inside_cpython_that_one_cffi_call_reaches_is_the_interpreters() {
        let text = "WARNING: ThreadSanitizer: data race (pid=1)\n  Read of size 8 at 0x1 by thread T1:\n    #0 _PyVectorcall_FunctionInline /py/Include/internal/pycore_call.h:129:5 (python3.13t+0x1)\n    #1 PyErr_FormatUnraisable /py/Python/errors.c:1706:5 (python3.13t+0x2)\n    #2 general_invoke_callback /t/src/c/_cffi_backend.c:6476:9 (_cffi_backend.so+0x3)\n\n  Previous write of size 8 at 0x1 by thread T2:\n    #0 partial_vectorcall_fallback /py/Modules/_functoolsmodule.c:224:21 (python3.13t+0x4)\n";
        let v = Attribution::parse("general_invoke_callback C7").unwrap().judge(&reports(text)[0]);
        assert_eq!(v.component, INTERPRETER);
        // the same race, but both sides inside kit calls (a lock TSan cannot see): ours
        let both = text.replace("(python3.13t+0x4)\n", "(python3.13t+0x4)\n    #1 cffi_ft_lib_pin_new <null> (_cffi_backend.so+0x5)\n");
        let v = Attribution::parse("general_invoke_callback C7").unwrap().judge(&reports(&both)[0]);
        assert_eq!(v.hazard.as_deref(), Some("C7"));
        // an access made by cffi's code itself, past an interceptor: ours
        let memcpy = "WARNING: ThreadSanitizer: data race (pid=1)\n  Write of size 8 at 0x1 by thread T1:\n    #0 memcpy <null> (python3.13t+0x1)\n    #1 cdata_setattro /t/src/c/_cffi_backend.c:10:1 (_cffi_backend.so+0x2)\n\n  Previous read of size 8 at 0x1 by thread T2:\n    #0 dict_lookup /py/Objects/dictobject.c:20:2 (python3.13t+0x2)\n";
        assert!(is_our_report(&reports(memcpy)[0]));
    }

    #[test]
    fn a_report_without_our_frames_is_the_interpreters() {
        let text = "WARNING: ThreadSanitizer: data race (pid=1)\n  Write of size 8 at 0x1 by thread T1:\n    #0 dict_resize /py/Objects/dictobject.c:10:2 (python3.13t+0x1)\n\n  Previous read of size 8 at 0x1 by thread T2:\n    #0 dict_lookup /py/Objects/dictobject.c:20:2 (python3.13t+0x2)\n";
        let v = Attribution::parse(TABLE).unwrap().judge(&reports(text)[0]);
        assert_eq!(v.component, INTERPRETER);
        assert_eq!(v.hazard, None);
    }
}
