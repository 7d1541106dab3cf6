//! Reading ThreadSanitizer's output: the reports of a `log_path` file (one file per
//! process, `<prefix>.<pid>`) and the "Matched N suppressions" summary that
//! `print_suppressions=1` adds at exit. Pure text in, structures out.

use std::collections::BTreeMap;

/// One stack frame: `#3 get_unique_type /x/src/c/_cffi_backend.c:4712:13 (_cffi_backend…so+0x1a2b)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    /// "file:line:col" as symbolized, or "" when TSan had no location.
    pub location: String,
    /// The object file ("_cffi_backend.cpython-313t-x86_64-linux-gnu.so"), basename.
    pub module: String,
}

impl Frame {
    /// "get_unique_type (_cffi_backend.c:4712)": the function and the file's basename and line.
    pub fn short(&self) -> String {
        let file_line = self.location.rsplit('/').next().unwrap_or("");
        let mut parts = file_line.split(':');
        match (parts.next(), parts.next()) {
            (Some(file), Some(line)) if !file.is_empty() => format!("{} ({file}:{line})", self.function),
            _ => self.function.clone(),
        }
    }
}

/// One access or event of a report: its header line ("Write of size 8 at 0x… by thread T2")
/// and its stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    pub header: String,
    pub frames: Vec<Frame>,
}

/// One report: "data race", "heap-use-after-free", "thread leak", …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    /// The stacks of the accesses (for a data race: the current access, then the
    /// previous one), without the "Location is …" and "Thread … created" stacks.
    pub accesses: Vec<Stack>,
    /// The whole text between the `===` lines, for the example.
    pub text: String,
}

/// The reports in one TSan log file, in order.
pub fn reports(text: &str) -> Vec<Report> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(kind) = line.trim().strip_prefix("WARNING: ThreadSanitizer: ") else { continue };
        // "data race (pid=123)" -> "data race"
        let kind = kind.split(" (pid=").next().unwrap_or(kind).trim().to_string();
        let mut body = vec![line.to_string()];
        while let Some(next) = lines.peek() {
            if next.starts_with("==================") || next.trim().starts_with("WARNING: ThreadSanitizer: ") {
                break;
            }
            body.push(lines.next().unwrap_or_default().to_string());
        }
        out.push(Report { kind, accesses: access_stacks(&body), text: body.join("\n") });
    }
    out
}

/// The access stacks of a report's lines: a header line ending with ':' that opens a
/// stack, then its `#N` frames. Stacks of where memory came from, of thread creation
/// and of mutexes are left out: they say nothing about who raced.
fn access_stacks(body: &[String]) -> Vec<Stack> {
    let mut stacks: Vec<Stack> = Vec::new();
    let mut current: Option<Stack> = None;
    for line in body.iter().skip(1) {
        let trimmed = line.trim();
        if let Some(frame) = parse_frame(trimmed) {
            if let Some(stack) = current.as_mut() {
                stack.frames.push(frame);
            }
            continue;
        }
        if let Some(stack) = current.take() {
            stacks.push(stack);
        }
        if trimmed.ends_with(':') && !is_context_header(trimmed) {
            current = Some(Stack { header: trimmed.trim_end_matches(':').to_string(), frames: Vec::new() });
        }
    }
    stacks.extend(current);
    stacks.retain(|s| !s.frames.is_empty());
    stacks
}

fn is_context_header(header: &str) -> bool {
    header.starts_with("Location is")
        || header.starts_with("Thread T")
        || header.starts_with("Mutex M")
        || header.starts_with("Main thread")
        || header.contains("created by")
}

/// `#0 func loc (module+0x12)` → a frame. Unsymbolized frames have `<null>` as the
/// function; frames of the runtime's interceptors keep their names ("memcpy").
fn parse_frame(line: &str) -> Option<Frame> {
    let rest = line.strip_prefix('#')?;
    let (num, rest) = rest.split_once(' ')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.trim();
    let (function, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim();
    let (location, module_part) = match rest.find('(') {
        Some(i) => (rest[..i].trim(), &rest[i + 1..]),
        None => (rest, ""),
    };
    let module = module_part.split(['+', ')']).next().unwrap_or("");
    let module = module.rsplit('/').next().unwrap_or(module).to_string();
    Some(Frame { function: function.to_string(), location: location.to_string(), module })
}

/// "ThreadSanitizer: Matched 2 suppressions (pid=7):" then "  5 race:foo" lines: the
/// count per suppression (`race:foo`), summed over every such block of the text.
pub fn matched_suppressions(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.contains("ThreadSanitizer: Matched") && line.contains("suppressions") {
            in_block = true;
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim();
        let parsed = trimmed.split_once(' ').and_then(|(n, what)| Some((n.parse::<u64>().ok()?, what.trim())));
        match parsed {
            Some((n, what)) if what.contains(':') => *out.entry(what.to_string()).or_insert(0) += n,
            _ => in_block = false,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = "==================
WARNING: ThreadSanitizer: data race (pid=4242)
  Write of size 8 at 0x7b0c0001a2c0 by thread T3:
    #0 ctypedescr_dealloc /c/cells/step0/cffi/src/c/_cffi_backend.c:422:9 (_cffi_backend.cpython-313t-x86_64-linux-gnu.so+0x3e1f5) (BuildId: 1)
    #1 _Py_Dealloc /py/Objects/object.c:2929:5 (python3.13t+0x2b9c43) (BuildId: 2)

  Previous read of size 8 at 0x7b0c0001a2c0 by thread T1:
    #0 get_unique_type /c/cells/step0/cffi/src/c/_cffi_backend.c:4712:13 (_cffi_backend.cpython-313t-x86_64-linux-gnu.so+0x51c08) (BuildId: 1)
    #1 new_pointer_type /c/cells/step0/cffi/src/c/_cffi_backend.c:4790:12 (_cffi_backend.cpython-313t-x86_64-linux-gnu.so+0x51f00) (BuildId: 1)

  Location is heap block of size 136 at 0x7b0c0001a280 allocated by thread T1:
    #0 malloc <null> (python3.13t+0xdb4a1) (BuildId: 2)

  Thread T3 (tid=4250, running) created by main thread at:
    #0 pthread_create <null> (python3.13t+0xc3f4e) (BuildId: 2)

SUMMARY: ThreadSanitizer: data race /c/cells/step0/cffi/src/c/_cffi_backend.c:422:9 in ctypedescr_dealloc
==================
==================
WARNING: ThreadSanitizer: heap-use-after-free (pid=4242)
  Read of size 4 at 0x7b0400000010 by thread T2:
    #0 dl_load_function /x/src/c/_cffi_backend.c:4300:5 (_cffi_backend.so+0x1)

  Previous write of size 8 at 0x7b0400000010 by thread T1:
    #0 free <null> (python3.13t+0x1)
    #1 dl_close_lib /x/src/c/_cffi_backend.c:4250:9 (_cffi_backend.so+0x2)

SUMMARY: ThreadSanitizer: heap-use-after-free in dl_load_function
==================
ThreadSanitizer: reported 2 warnings
ThreadSanitizer: Matched 2 suppressions (pid=4242):
3 race:get_allocator_unlocked
1 race_top:assign_version_tag
";

    #[test]
    fn reads_a_data_race_with_its_two_access_stacks() {
        let r = reports(SAMPLE);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, "data race");
        assert_eq!(r[0].accesses.len(), 2, "{:?}", r[0].accesses);
        assert!(r[0].accesses[0].header.starts_with("Write of size 8"));
        assert_eq!(r[0].accesses[0].frames[0].function, "ctypedescr_dealloc");
        assert_eq!(r[0].accesses[0].frames[0].module, "_cffi_backend.cpython-313t-x86_64-linux-gnu.so");
        assert_eq!(r[0].accesses[0].frames[0].short(), "ctypedescr_dealloc (_cffi_backend.c:422)");
        assert_eq!(r[0].accesses[1].frames[1].function, "new_pointer_type");
        assert_eq!(r[1].kind, "heap-use-after-free");
        assert_eq!(r[1].accesses[1].frames[1].function, "dl_close_lib");
        assert_eq!(r[1].accesses[1].frames[0].short(), "free");
    }

    #[test]
    fn reads_the_matched_suppressions() {
        let m = matched_suppressions(SAMPLE);
        assert_eq!(m.get("race:get_allocator_unlocked"), Some(&3));
        assert_eq!(m.get("race_top:assign_version_tag"), Some(&1));
        assert_eq!(m.len(), 2);
        let twice = format!("{SAMPLE}\nsome other line\n{SAMPLE}");
        assert_eq!(matched_suppressions(&twice).get("race:get_allocator_unlocked"), Some(&6));
    }

    #[test]
    fn a_text_without_reports_has_none() {
        assert!(reports("ThreadSanitizer: reported 0 warnings\n").is_empty());
        assert!(matched_suppressions("").is_empty());
    }
}

/// The sample report text of the tests, for the other modules' tests.
#[cfg(test)]
pub fn tests_sample() -> &'static str {
    tests::SAMPLE
}
