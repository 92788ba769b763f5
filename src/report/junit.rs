//! The report as JUnit XML, which GitLab (`artifacts:reports:junit`), Jenkins (`junit`) and
//! most CI systems show as test results. Written with `quick-junit`, the data model and
//! writer of cargo-nextest's JUnit reports, which escapes what XML cannot hold.
//!
//! The mapping:
//!
//! - one `<testsuite>` per file, named by the file, in name order; for objects that come
//!   from no file, one per namespace;
//! - one `<testcase>` per object: `name` is the object's name, `classname` is
//!   `NAMESPACE.Kind` (`Kind` for cluster-scoped objects), so Jenkins groups them as packages
//!   and classes; the `file` and `line` attributes (read by GitLab) say where it is;
//! - a denied object's test case has a `<failure>` whose message is the denial's first line,
//!   whose type is the first denying rule (`imagegate/allowedImages`), and whose text lists
//!   every denying violation with the `FILE:LINE:COLUMN` of its image;
//! - violations that do not deny (`Warn`, `Audit`, excused) go to the test case's
//!   `<system-out>` with where their images are, after the warnings that none of them repeats
//!   (a honoured break-glass);
//! - a skipped document is a `<testcase>` with `<skipped>` and the reason;
//! - an input that could not be read is a `<testcase>` with `<error>`.
//!
//! No times or timestamps are written: the report depends on its inputs alone.

use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

use super::{Finding, Location, ObjectResult, Report, Severity};

/// The name of the whole report (`<testsuites name=…>`).
const REPORT_NAME: &str = "imagegate check";

/// The suite of inputs that could not be listed at all (no file to name a suite after).
const NO_FILE_SUITE: &str = "(inputs)";

/// Renders the report as JUnit XML.
pub fn render(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut suites: Vec<TestSuite> = Vec::new();
    let mut suite = |name: &str| -> usize {
        match suites.iter().position(|s| s.name.as_str() == name) {
            Some(i) => i,
            None => {
                suites.push(TestSuite::new(name));
                suites.len() - 1
            }
        }
    };
    let mut cases: Vec<(usize, TestCase)> = Vec::new();
    for r in &report.results {
        let name = match &r.location {
            Some(at) => at.file.clone(),
            None if r.namespace.is_empty() => "(cluster)".to_owned(),
            None => r.namespace.clone(),
        };
        cases.push((suite(&name), object_case(r)));
    }
    for s in &report.skipped {
        let mut status = TestCaseStatus::skipped();
        status.set_message(s.message.as_str());
        status.set_type(s.reason.as_str());
        let mut case = TestCase::new(s.source.as_str(), status);
        case.set_classname("skipped");
        located(&mut case, Some(&s.location));
        cases.push((suite(&s.location.file), case));
    }
    for e in &report.errors {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(e.message.as_str());
        status.set_type("invalidInput");
        status.set_description(e.to_string());
        let mut case = TestCase::new(e.source.as_str(), status);
        case.set_classname("input");
        located(&mut case, e.location.as_ref());
        let name = e
            .location
            .as_ref()
            .map_or(NO_FILE_SUITE, |l| l.file.as_str());
        cases.push((suite(name), case));
    }
    for (i, case) in cases {
        suites[i].add_test_case(case);
    }
    // By file name, as CI systems list them.
    suites.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = JunitReport::new(REPORT_NAME);
    out.add_test_suites(suites);
    out.to_string()
}

fn object_case(r: &ObjectResult) -> TestCase {
    let status = match &r.denial {
        None => TestCaseStatus::success(),
        Some(denial) => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(denial.lines().next().unwrap_or_default());
            if let Some(first) = r.denials().next() {
                status.set_type(format!("imagegate/{}", first.violation.rule));
            }
            let lines: Vec<String> = r.denials().map(finding_line).collect();
            status.set_description(lines.join("\n"));
            status
        }
    };
    let mut case = TestCase::new(r.name.as_str(), status);
    case.set_classname(if r.namespace.is_empty() {
        r.kind.clone()
    } else {
        format!("{}.{}", r.namespace, r.kind)
    });
    located(&mut case, r.location.as_ref());
    // The warnings that no finding below repeats (a honoured break-glass), then the findings
    // that do not deny, with where their images are.
    let mut out: Vec<String> = r
        .warnings
        .iter()
        .filter(|w| {
            !r.violations
                .iter()
                .any(|f| w.strip_prefix("imagegate: ") == Some(&f.violation.to_string()))
        })
        .map(|w| format!("Warning: {w}"))
        .collect();
    out.extend(
        r.violations
            .iter()
            .filter(|f| f.severity() != Severity::Error)
            .map(|f| format!("{:?}: {}", f.severity(), finding_line(f))),
    );
    if !out.is_empty() {
        case.set_system_out(out.join("\n"));
    }
    case
}

/// `FILE:LINE:COLUMN: [policy/rule] message`.
fn finding_line(f: &Finding) -> String {
    match &f.location {
        Some(at) => format!("{at}: {}", f.violation),
        None => f.violation.to_string(),
    }
}

/// The `file` and `line` attributes GitLab reads.
fn located(case: &mut TestCase, at: Option<&Location>) {
    if let Some(at) = at {
        case.extra.insert("file".into(), at.file.as_str().into());
        case.extra.insert("line".into(), at.line.to_string().into());
    }
}
