//! The report as GitHub Actions workflow commands: `::error`, `::warning` and `::notice` lines
//! that GitHub shows as annotations on the files and lines of a pull request, followed by the
//! summary lines of the text report (which the log shows as they are).
//!
//! A denying violation is an `error`, a `Warn`-mode one a `warning`, an `Audit`-mode or excused
//! one a `notice`; each is annotated on its image string (`file`, `line`, `col`). An input that
//! could not be read is an `error` on its file; a skipped document is a `notice` (an `error`
//! under `--strict`, which fails the run for it). GitHub shows at most 10 annotations of each
//! level per step (and 50 per job); the log keeps every line.

use std::fmt::Write as _;

use super::{Location, Report, Severity};

/// Renders the report as workflow commands. `strict` says whether skipped documents fail the
/// run (`--strict`), which makes them errors.
pub fn render(report: &Report, strict: bool) -> String {
    let mut out = String::new();
    for r in &report.results {
        for f in &r.violations {
            let v = &f.violation;
            let command = match f.severity() {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "notice",
            };
            let object = if r.namespace.is_empty() {
                format!("{} {:?}", r.kind, r.name)
            } else {
                format!("{} {:?} in namespace {:?}", r.kind, r.name, r.namespace)
            };
            let excused = if v.excused {
                " (excused by a break-glass exception)"
            } else {
                ""
            };
            let title = format!("imagegate: {}/{}", v.policy, v.rule);
            let message = format!("{object}: {}{excused}", v.message);
            annotation(&mut out, command, f.location.as_ref(), &title, &message);
        }
    }
    for e in &report.errors {
        let message = match &e.location {
            Some(at) if at.file != e.source => format!("{}: {}", e.source, e.message),
            None => format!("{}: {}", e.source, e.message),
            Some(_) => e.message.clone(),
        };
        annotation(
            &mut out,
            "error",
            e.location.as_ref(),
            "imagegate: input not read",
            &message,
        );
    }
    for s in &report.skipped {
        let command = if strict { "error" } else { "notice" };
        let message = format!("{}: {}", s.source, s.message);
        annotation(
            &mut out,
            command,
            Some(&s.location),
            "imagegate: skipped",
            &message,
        );
    }
    out.push_str(&super::text::summary(report));
    out
}

/// One workflow command. Standard input names no file: its position goes into the message.
fn annotation(out: &mut String, command: &str, at: Option<&Location>, title: &str, message: &str) {
    let _ = write!(out, "::{command} ");
    let mut message = message.to_owned();
    if let Some(at) = at {
        match super::repository_path(&at.file) {
            Some(file) => {
                let _ = write!(out, "file={},line={},", property(&file), at.line);
                if let Some(column) = at.column {
                    let _ = write!(out, "col={column},");
                }
            }
            None => message = format!("{at}: {message}"),
        }
    }
    let _ = writeln!(out, "title={}::{}", property(title), data(&message));
}

/// A command's message: `%`, CR and LF are escaped, as GitHub's toolkit does.
fn data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A command's property value: as [`data`], and `:` and `,` too.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}
