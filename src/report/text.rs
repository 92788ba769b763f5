//! The readable report: one block per object as `kubectl` would show the outcome of applying
//! it, where each violation's image is written, the skipped documents, and a summary.

use std::fmt::Write as _;

use super::{Finding, ObjectResult, Report, Severity};
use crate::policy::Mode;

/// The webhook that would answer for a kind, as named in `kubectl` errors.
fn webhook_for(kind: &str) -> &'static str {
    if kind == "Pod" {
        "pods.imagegate.dev"
    } else {
        "workloads.imagegate.dev"
    }
}

/// Renders the whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.results {
        object(&mut out, r);
    }
    for s in &report.skipped {
        let _ = writeln!(out, "SKIPPED  {} ({}): {}", s.source, s.location, s.message);
    }
    for e in &report.errors {
        let _ = writeln!(out, "ERROR    {e}");
    }
    out.push('\n');
    out.push_str(&summary(report));
    out
}

/// The closing lines: what was checked, skipped and unreadable.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let summary = report.summary();
    let _ = write!(
        out,
        "{} object{} checked: {} admitted, {} denied ({} with warnings)",
        summary.objects,
        if summary.objects == 1 { "" } else { "s" },
        summary.admitted,
        summary.denied,
        summary.with_warnings,
    );
    if summary.without_images > 0 {
        let _ = write!(out, "; {} without images", summary.without_images);
    }
    out.push('\n');
    if summary.skipped > 0 {
        let reasons: Vec<String> = report
            .skipped_by_reason()
            .into_iter()
            .map(|(reason, n)| reason.counted(n))
            .collect();
        let _ = writeln!(
            out,
            "{} document{} skipped: {}",
            summary.skipped,
            if summary.skipped == 1 { "" } else { "s" },
            reasons.join(", ")
        );
    }
    if summary.errors > 0 {
        let _ = writeln!(
            out,
            "{} input{} could not be read; the run fails",
            summary.errors,
            if summary.errors == 1 { "" } else { "s" },
        );
    }
    out
}

fn object(out: &mut String, r: &ObjectResult) {
    let verdict = if r.denial.is_some() {
        "DENIED  "
    } else {
        "ADMITTED"
    };
    let _ = write!(out, "{verdict} {}", r.object());
    if !r.namespace.is_empty() {
        let _ = write!(out, " in {}", r.namespace);
    }
    let _ = write!(out, " ({})", r.source);
    if r.images == 0 {
        out.push_str(": no images");
    }
    out.push('\n');
    if let Some(denial) = &r.denial {
        let _ = writeln!(
            out,
            "  Error from server (Forbidden): admission webhook {:?} denied the request: {}",
            webhook_for(&r.kind),
            denial.replace('\n', "\n  ")
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "  Warning: {w}");
    }
    for f in &r.violations {
        let v = &f.violation;
        if v.mode == Mode::Audit && !v.excused {
            let _ = writeln!(out, "  Audit: {v}");
        }
    }
    let pods = if r.kind == "Pod" {
        ""
    } else {
        " (in its Pods)"
    };
    for m in &r.mutations {
        let made = if m.applied { "Mutated" } else { "Would mutate" };
        let _ = write!(out, "  {made}{pods}: [{}/{}] ", m.policy, m.change.rule());
        m.describe(out);
        out.push('\n');
    }
    where_lines(out, &r.violations);
}

/// One line per image with violations, in the order of the violations:
/// `  at FILE:LINE:COLUMN: container "web": image "nginx": production/allowedImages, …`, each
/// rule with the mode when it does not deny.
fn where_lines(out: &mut String, findings: &[Finding]) {
    let mut done = vec![false; findings.len()];
    for (i, f) in findings.iter().enumerate() {
        let Some(at) = f.location.as_ref().filter(|_| !done[i]) else {
            continue;
        };
        let v = &f.violation;
        let _ = write!(
            out,
            "  at {at}: {} {:?}: image {:?}:",
            v.container_type.noun(),
            v.container,
            v.image
        );
        let mut first = true;
        for (j, g) in findings.iter().enumerate().skip(i) {
            let w = &g.violation;
            let same = g.location.as_ref() == Some(at)
                && w.container_type == v.container_type
                && w.container == v.container
                && w.image == v.image;
            if !same || done[j] {
                continue;
            }
            done[j] = true;
            let _ = write!(
                out,
                "{} {}/{}",
                if first { "" } else { "," },
                w.policy,
                w.rule
            );
            first = false;
            match g.severity() {
                Severity::Error => {}
                _ if w.excused => out.push_str(" (excused by break-glass)"),
                _ => {
                    let _ = write!(out, " ({})", w.mode);
                }
            }
        }
        out.push('\n');
    }
}
