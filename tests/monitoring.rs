//! The chart's alerting rules (`charts/imagegate/templates/_alerts.tpl`, rendered by helm) and its
//! Grafana dashboard (`charts/imagegate/dashboards/imagegate.json`), held against the real
//! things: `promtool` checks the rules and runs their unit tests
//! (`tests/data/prometheus/alerts.test.yaml`); every metric they name must be one a running
//! `imagegate serve` exports; and a real `prometheus` on 127.0.0.1 scrapes `serve`, evaluates the
//! rules and answers every panel's queries with data.
//!
//! Needs helm (`.ci/install-helm.sh`) and Debian's `prometheus` package (`promtool`,
//! `prometheus`); without them these tests say why they are skipped, except in CI, where they fail.

mod common;
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, fixture, pod_review, policy};
use promql_parser::parser::{self, Expr};
use serde_json::{Value, json};
use tools::{NAMESPACE, chart_dir, one_helm, prometheus_tool, read, render, root};

/// Metrics of the Kubernetes API server that the rules read (the `imagegate-apiserver` group):
/// what imagegate cannot see itself. Every other metric must be one imagegate exports.
const KUBERNETES_METRICS: &[&str] = &[
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_rejection_count",
    "apiserver_request_total",
];

/// Metric families that `imagegate serve` registers but never counts (ones that only
/// `imagegate run` sets, say), with their type: their names are known from it (a labelled family
/// has no `# TYPE` line until its first series), and their panels are not expected to have data
/// in the Prometheus test. Every other family must have samples after `exercise()`.
///
/// The registry adapter's families are counted only when a signature entry governs an image and
/// a registry is asked; this test runs no registry (tests/registry.rs runs a real one, and
/// `metrics::tests::registry_metrics` checks their exposition).
const NOT_COUNTED_BY_SERVE: &[(&str, &str)] = &[
    ("imagegate_signature_verifications", "counter"),
    ("imagegate_registry_request_duration_seconds", "histogram"),
    ("imagegate_registry_cache_entries", "gauge"),
    // The audit of running Pods runs in `imagegate run` only.
    ("imagegate_audit_violating_pods", "gauge"),
    ("imagegate_audit_last_pass_timestamp_seconds", "gauge"),
];

/// Grafana's own variables that the dashboard uses; the test gives them values that suit a short
/// test run.
const GRAFANA_VARIABLES: &[&str] = &["$__rate_interval", "$__range"];

/// How often the test's Prometheus scrapes and evaluates: short, so a test run has data within
/// seconds.
const SCRAPE_INTERVAL: &str = "1s";
/// `$__rate_interval` in the test: several scrapes wide, and wide enough to hold every request
/// the test makes.
const TEST_RATE_INTERVAL: &str = "1m";
/// `$__range` in the test (the dashboard's time range).
const TEST_RANGE: &str = "5m";
/// How long Prometheus may take to start, to scrape, and to have every panel's data. Generous:
/// CI shares two cores among many test processes.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);
/// Between two polls of Prometheus's API.
const POLL: Duration = Duration::from_millis(250);
/// Ports tried for Prometheus: one taken between the probe and Prometheus's bind is rare, two in
/// a row rarer still.
const PORT_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------------
// The rules and the dashboard

/// `spec` of the PrometheusRule that helm renders with `extra` values (and the rule enabled).
fn rendered_rules(bin: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--set", "metrics.prometheusRule.enabled=true"];
    args.extend_from_slice(extra);
    let r = render(bin, &args);
    r.only("PrometheusRule")["spec"].clone()
}

/// Every rule of a rules `spec`, as (group, rule).
fn rules(spec: &Value) -> Vec<(String, Value)> {
    spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| {
            let name = g["name"].as_str().expect("group name").to_owned();
            g["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect()
}

fn alert_name(rule: &Value) -> &str {
    rule["alert"].as_str().expect("every rule is an alert")
}

fn dashboard() -> Value {
    serde_json::from_str(&read(chart_dir().join("dashboards/imagegate.json")))
        .expect("dashboards/imagegate.json is JSON")
}

/// The panels of the dashboard, rows excluded (rows are flat: their panels follow them).
fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// (panel title, refId, expr) of every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        title.clone(),
                        t["refId"].as_str().unwrap_or_default().to_owned(),
                        t["expr"].as_str().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect()
}

/// A dashboard query with its variables given values, as Grafana sends it.
fn as_sent(expr: &str, rate_interval: &str, range: &str) -> String {
    let sent = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$__range", range)
        .replace("$namespace", ".*");
    assert!(
        !sent.contains('$'),
        "{expr:?} uses a variable the dashboard does not define (it has $namespace, and \
         Grafana's {GRAFANA_VARIABLES:?})"
    );
    sent
}

/// The metric names an expression selects. Panics, naming the expression, when it does not
/// parse or selects series without naming their metric.
fn metric_names(expr: &str) -> BTreeSet<String> {
    fn walk(e: &Expr, names: &mut BTreeSet<String>, expr: &str) {
        match e {
            Expr::Aggregate(a) => {
                walk(&a.expr, names, expr);
                if let Some(p) = &a.param {
                    walk(p, names, expr);
                }
            }
            Expr::Unary(u) => walk(&u.expr, names, expr),
            Expr::Binary(b) => {
                walk(&b.lhs, names, expr);
                walk(&b.rhs, names, expr);
            }
            Expr::Paren(p) => walk(&p.expr, names, expr),
            Expr::Subquery(s) => walk(&s.expr, names, expr),
            Expr::VectorSelector(vs) => {
                names.insert(
                    vs.name
                        .clone()
                        .unwrap_or_else(|| panic!("a selector without a metric name in {expr:?}")),
                );
            }
            Expr::MatrixSelector(ms) => {
                names.insert(
                    ms.vs
                        .name
                        .clone()
                        .unwrap_or_else(|| panic!("a selector without a metric name in {expr:?}")),
                );
            }
            Expr::Call(c) => {
                for a in &c.args.args {
                    walk(a, names, expr);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("not valid PromQL: {e}\n{expr}"));
    let mut names = BTreeSet::new();
    walk(&parsed, &mut names, expr);
    names
}

/// The metric names the dashboard uses: its queries and its variables' `label_values(…)`.
fn dashboard_metric_names(dashboard: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = dashboard_queries(dashboard)
        .iter()
        .flat_map(|(_, _, expr)| metric_names(&as_sent(expr, "5m", "1h")))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .expect("a query variable's query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split_once(','))
                .map(|(selector, _)| selector.trim())
                .unwrap_or_else(|| {
                    panic!("variable query {q:?} is not label_values(METRIC, LABEL)")
                });
            names.extend(metric_names(inner));
        }
    }
    names
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn operations_doc() -> String {
    read(root().join("docs/operations.md"))
}

// ---------------------------------------------------------------------------------------------
// A running `imagegate serve`, made to count something in every metric

const STRICT: &str = "mode: Enforce\ndeniedTags: [latest]\nbreakGlass:\n  allowedGroups: [sre]\n  ticketPattern: \"INC-[0-9]+\"\n  maxDuration: 2h";
const ADVICE: &str = "mode: Warn\nrequireDigest: true";
const WATCH: &str = "mode: Audit\ndeniedImages: [\"docker.io/**\"]";
const ALWAYS: &str = "setPullPolicyAlways: true";

async fn serve() -> TestServer {
    let policies = [
        policy("strict", STRICT),
        policy("advice", ADVICE),
        policy("watch", WATCH),
        policy("always", ALWAYS),
    ]
    .join("---\n");
    TestServer::start(&policies, &[]).await
}

/// Requests that every metric family counts: allowed, denied, warned, audited and excused
/// decisions, violations, a break-glass use, a mutated Pod, a bad request, and an ImageReview.
async fn exercise(server: &TestServer) {
    let pod = |annotations: Value, image: &str| {
        pod_review(
            "team-a",
            "alice",
            &["sre"],
            annotations,
            json!([{"name": "app", "image": image}]),
        )
    };
    let r = server.review(&pod(json!({}), "reg.example/app:1.0")).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = server
        .review(&pod(json!({}), "reg.example/app:latest"))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let r = server
        .review(&pod(
            json!({
                "imagegate.image-policy.k8s.io/break-glass": "INC-7",
                "imagegate.image-policy.k8s.io/break-glass-until": until,
            }),
            "reg.example/app:latest",
        ))
        .await;
    assert_eq!(r["auditAnnotations"]["decision"], "excused", "{r}");
    let r = server.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
    // The mutating webhook: the `always` policy sets the pull policy of the captured Pod.
    let (status, r) = server
        .post(
            "/mutate",
            serde_json::to_vec(&fixture("pod-create.json")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["response"]["patchType"], "JSONPatch", "{r}");
    let (status, _) = server.post("/validate", "this is not a review").await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post(
            "/imagereview",
            serde_json::to_vec(&fixture("imagereview-pod-create.json")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
}

async fn metrics_text(server: &TestServer) -> String {
    let addr = server
        .metrics_addr
        .expect("the test server has a metrics port");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// One metric family of an exposition: its `# TYPE` and the sample names seen.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    seen: BTreeSet<String>,
}

impl Family {
    /// The names its samples have: those seen, and those its type gives it (OpenMetrics: a
    /// counter `c` has samples `c_total`, a histogram `h` has `h_bucket`, `h_sum`, `h_count`).
    fn names(&self, family: &str) -> BTreeSet<String> {
        let suffixes: &[&str] = match self.kind.as_str() {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            other => panic!("{family}: teach Family::names the samples of a {other}"),
        };
        let mut names = self.seen.clone();
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        names
    }
}

/// The metric families of an exposition (`# TYPE` lines) with the sample names seen of each.
fn exported(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(f, kind)| {
            let kind = kind.trim().to_owned();
            let family = Family {
                kind,
                seen: BTreeSet::new(),
            };
            (f.to_owned(), family)
        })
        .collect();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line
            .split(['{', ' '])
            .next()
            .expect("a sample line starts with its name");
        let family = families
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE line"));
        families
            .get_mut(&family)
            .expect("family")
            .seen
            .insert(name.to_owned());
    }
    families
}

/// Whether a metric name belongs to a family that `serve` never counts.
fn not_counted_by_serve(name: &str) -> bool {
    NOT_COUNTED_BY_SERVE
        .iter()
        .any(|(f, _)| name.starts_with(f))
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus on 127.0.0.1

/// A `prometheus` process with its own configuration and storage in a temporary folder,
/// listening on a free port of 127.0.0.1; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (labelled with the release namespace, as a
    /// ServiceMonitor scrape would be) and evaluating `rules` (a rules file's content), and
    /// waits until it is ready.
    async fn start(bin: &Path, target: SocketAddr, rules: Option<&Value>) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rule_files = match rules {
            Some(spec) => {
                std::fs::write(
                    dir.path().join("rules.yaml"),
                    serde_json::to_string_pretty(spec).expect("rules as JSON"),
                )
                .expect("write rules");
                json!(["rules.yaml"])
            }
            None => json!([]),
        };
        // JSON is YAML: the configuration needs no YAML writer.
        let config = json!({
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "imagegate",
                "static_configs": [{
                    "targets": [target.to_string()],
                    "labels": {"namespace": NAMESPACE},
                }],
            }],
        });
        std::fs::write(dir.path().join("prometheus.yml"), config.to_string()).expect("config");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        // The port is free when probed, but another process may take it before Prometheus
        // binds it; Prometheus then exits at once, and the next attempt takes another port.
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::spawn_ready(bin, dir.path(), &http).await {
                Ok((child, addr)) => {
                    return Prometheus {
                        child,
                        addr,
                        dir,
                        http,
                    };
                }
                Err(log) if log.contains("address already in use") => failures.push(log),
                Err(log) => panic!("{log}"),
            }
        }
        panic!("prometheus found no free port:\n{}", failures.join("\n"));
    }

    /// Starts Prometheus in `dir` on a free port and waits until it is ready; on failure, stops
    /// it and returns what went wrong with its log.
    async fn spawn_ready(
        bin: &Path,
        dir: &Path,
        http: &reqwest::Client,
    ) -> Result<(Child, SocketAddr), String> {
        let addr = free_port();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(bin)
            .current_dir(dir)
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Err(format!("prometheus exited ({status}):\n{}", log()));
            }
            let ready = http
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok((child, addr));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "prometheus not ready within {PROMETHEUS_DEADLINE:?}:\n{}",
                    log()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .http
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .query(query)
            .send()
            .await
            .expect("Prometheus API request")
            .json()
            .await
            .expect("Prometheus API answers JSON");
        assert_eq!(
            body["status"], "success",
            "/api/v1/{path} {query:?}: {body}"
        );
        body["data"].clone()
    }

    /// The samples an instant query returns (a vector's elements; a scalar as one element).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]).await;
        match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![json!({"metric": {}, "value": data["result"]})],
            other => panic!("{promql}: unexpected result type {other:?}"),
        }
    }

    /// Waits until `check` holds, failing with `what` and Prometheus's log after the deadline.
    async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        loop {
            match check().await {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    panic!(
                        "{what} within {PROMETHEUS_DEADLINE:?}: {why}\n{}",
                        self.log()
                    )
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// Whether a sample holds a number (NaN is what a ratio of no requests gives).
fn has_number(sample: &Value) -> bool {
    sample["value"][1]
        .as_str()
        .is_some_and(|v| v.parse::<f64>().is_ok_and(|v| !v.is_nan()))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let (Some(helm), Some(promtool)) = (one_helm(), prometheus_tool("promtool")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::copy(
        root().join("tests/data/prometheus/alerts.test.yaml"),
        &tests,
    )
    .expect("copy the rule tests");
    // The defaults (which the unit tests expect), and other values that change the expressions.
    for values in [
        vec![],
        vec![
            "--set",
            "metrics.prometheusRule.apiServerAlerts=false",
            // --set makes "0.05" a string; numbers other than integers need --set-json.
            "--set-json",
            "metrics.prometheusRule.thresholds.latencyP99Seconds=0.05",
            "--set-json",
            "metrics.prometheusRule.thresholds.denialSpikeMinPerMinute=0.5",
            "--set",
            "replicaCount=1",
        ],
    ] {
        let spec = rendered_rules(&helm, &values);
        let file = dir.path().join("imagegate-rules.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(&spec).expect("JSON"))
            .expect("write rules");
        let out = Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&file)
            .output()
            .expect("run promtool check rules");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "promtool check rules {values:?}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let count = rules(&spec).len();
        assert!(
            stdout.contains(&format!("SUCCESS: {count} rules found")),
            "{stdout}"
        );
        if values.is_empty() {
            let out = Command::new(&promtool)
                .arg("test")
                .arg("rules")
                .arg(&tests)
                .output()
                .expect("run promtool test rules");
            assert!(
                out.status.success(),
                "promtool test rules tests/data/prometheus/alerts.test.yaml failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn every_alert_is_tested_documented_and_says_what_it_is_about() {
    let Some(helm) = one_helm() else { return };
    let spec = rendered_rules(&helm, &[]);
    let all = rules(&spec);
    let names: BTreeSet<&str> = all.iter().map(|(_, r)| alert_name(r)).collect();
    assert_eq!(names.len(), all.len(), "alert names are unique");
    let groups: BTreeSet<&str> = all.iter().map(|(g, _)| g.as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["imagegate", "imagegate-apiserver"]));

    // The promtool cases, by alert: whether each fires.
    let test_file: Value =
        serde_saphyr::from_str(&read(root().join("tests/data/prometheus/alerts.test.yaml")))
            .expect("alerts.test.yaml is YAML");
    let mut cases: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for test in test_file["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let alert = case["alertname"].as_str().expect("alertname").to_owned();
            cases.entry(alert).or_default().push(case);
        }
    }

    let doc = operations_doc();
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .map(anchor)
        .collect();

    for (_, rule) in &all {
        let name = alert_name(rule);
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let annotations = &rule["annotations"];
        let text = format!("{} {}", annotations["summary"], annotations["description"]);
        assert!(
            annotations["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && annotations["description"]
                    .as_str()
                    .is_some_and(|s| s.len() > 80),
            "{name}: a summary and a description that explains"
        );
        let url = annotations["runbook_url"].as_str().unwrap_or_default();
        let lower = name.to_lowercase();
        assert!(
            url.ends_with(&format!("#{lower}")),
            "{name}: runbook_url {url}"
        );
        assert!(
            anchors.contains(&lower),
            "{name}: docs/operations.md has no section \"#### {name}\" (its runbook)"
        );

        let mine = cases.get(name).map(Vec::as_slice).unwrap_or_default();
        let firing: Vec<&&Value> = mine
            .iter()
            .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
            .collect();
        assert!(
            !firing.is_empty(),
            "{name}: tests/data/prometheus/alerts.test.yaml has no case where it fires"
        );
        assert!(
            mine.len() > firing.len(),
            "{name}: tests/data/prometheus/alerts.test.yaml has no case where it must not fire"
        );
        // The annotations name what the alert is about: each label it carries.
        for case in firing {
            for alert in case["exp_alerts"].as_array().expect("exp_alerts") {
                for label in alert["exp_labels"].as_object().expect("exp_labels").keys() {
                    if label == "severity" || label == "job" {
                        continue;
                    }
                    assert!(
                        text.contains(&format!("$labels.{label}")),
                        "{name}: its annotations do not say its label {label}"
                    );
                }
            }
        }
    }
    for alert in cases.keys() {
        assert!(
            names.contains(alert.as_str()),
            "alerts.test.yaml tests unknown alert {alert}"
        );
    }

    // values.schema.json lists exactly these names for disabledAlerts.
    let schema: Value =
        serde_json::from_str(&read(chart_dir().join("values.schema.json"))).expect("schema");
    let enumerated: BTreeSet<&str> = schema["properties"]["metrics"]["properties"]
        ["prometheusRule"]["properties"]["disabledAlerts"]["items"]["enum"]
        .as_array()
        .expect("disabledAlerts enum")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    assert_eq!(
        enumerated, names,
        "values.schema.json's enum of metrics.prometheusRule.disabledAlerts lists every alert"
    );

    // Each one can be left out.
    let spec = rendered_rules(
        &helm,
        &[
            "--set",
            "metrics.prometheusRule.disabledAlerts={ImagegateWebhookSlow,ImagegateFailingOpen}",
        ],
    );
    let kept: BTreeSet<String> = rules(&spec)
        .iter()
        .map(|(_, r)| alert_name(r).to_owned())
        .collect();
    assert_eq!(kept.len(), names.len() - 2);
    assert!(!kept.contains("ImagegateWebhookSlow") && !kept.contains("ImagegateFailingOpen"));
}

#[test]
fn dashboard_is_grafana_json_with_its_data_source_as_a_variable() {
    let d = dashboard();
    assert_eq!(
        d["uid"], "imagegate",
        "a fixed uid keeps links to it stable"
    );
    assert!(d.get("id").is_none_or(Value::is_null), "no database id");
    assert!(
        d.get("__inputs").is_none(),
        "no import-time inputs: the sidecar does not resolve them"
    );
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(d["title"].is_string() && d["time"]["from"].is_string());

    let variables = d["templating"]["list"].as_array().expect("variables");
    let ds = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let ns = variables
        .iter()
        .find(|v| v["name"] == "namespace")
        .expect("a namespace variable");
    assert_eq!(ns["includeAll"], true);
    assert_eq!(
        ns["allValue"], ".*",
        "All also matches series without a namespace label"
    );

    // Every data source reference is the variable, never a fixed uid.
    fn data_sources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "datasource" {
                        out.push(v);
                    }
                    data_sources(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| data_sources(i, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    data_sources(&d, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        assert_eq!(r, &json!({"type": "prometheus", "uid": "${datasource}"}));
    }

    // Panels: unique ids, on the 24-column grid without overlapping, each with a description,
    // queries with unique refIds that parse as PromQL.
    let all = d["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = all.iter().map(|p| p["id"].as_u64().expect("id")).collect();
    assert_eq!(ids.len(), all.len(), "panel ids are unique");
    let mut cells = BTreeSet::new();
    for p in all {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{}: gridPos {g}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
    }
    let doc = operations_doc();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("title");
        assert!(
            ["timeseries", "stat", "bargauge", "gauge", "table"]
                .contains(&p["type"].as_str().unwrap_or_default()),
            "{title}: panel type {}",
            p["type"]
        );
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 40),
            "{title}: a description (shown as the panel's info)"
        );
        assert!(
            doc.contains(&format!("**{title}**")),
            "{title}: docs/operations.md does not describe the panel (as **{title}**)"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().expect("refId"))
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds are unique");
    }
    for (title, ref_id, expr) in dashboard_queries(&d) {
        assert!(
            expr.contains("namespace=~\"$namespace\""),
            "{title}/{ref_id}: select by the namespace variable: {expr}"
        );
        // Parses (metric_names panics on invalid PromQL).
        metric_names(&as_sent(&expr, "5m", "1h"));
    }
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_one_imagegate_exports() {
    let server = serve().await;
    exercise(&server).await;
    let mut families = exported(&metrics_text(&server).await);
    for (family, kind) in NOT_COUNTED_BY_SERVE {
        families
            .entry((*family).to_owned())
            .or_insert_with(|| Family {
                kind: (*kind).to_owned(),
                seen: BTreeSet::new(),
            });
    }
    server.stop().await;
    for (family, f) in &families {
        assert!(
            !f.seen.is_empty() || not_counted_by_serve(family),
            "metric family {family} has no sample: make exercise() count something in it (or, \
             if serve never counts it, list it in NOT_COUNTED_BY_SERVE)"
        );
    }
    let names: BTreeMap<&str, BTreeSet<String>> = families
        .iter()
        .map(|(family, f)| (family.as_str(), f.names(family)))
        .collect();
    let samples: BTreeSet<&str> = names.values().flatten().map(String::as_str).collect();

    let dashboard_names = dashboard_metric_names(&dashboard());
    let mut used = dashboard_names.clone();
    let rule_names: BTreeSet<String> = match one_helm() {
        Some(helm) => rules(&rendered_rules(&helm, &[]))
            .iter()
            .flat_map(|(_, r)| metric_names(r["expr"].as_str().expect("expr")))
            .collect(),
        None => BTreeSet::new(),
    };
    used.extend(rule_names.iter().cloned());
    for name in &used {
        if name.starts_with("imagegate_") {
            assert!(
                samples.contains(name.as_str()),
                "{name} is used by the dashboard or the alerts but imagegate does not export \
                 it; it exports {samples:?}"
            );
        } else {
            assert!(
                KUBERNETES_METRICS.contains(&name.as_str()),
                "{name} is neither imagegate's nor a listed Kubernetes API server metric"
            );
        }
    }
    if !rule_names.is_empty() {
        for name in KUBERNETES_METRICS {
            assert!(
                rule_names.contains(*name),
                "{name} is listed but no rule uses it"
            );
        }
    }
    // Operators look at everything imagegate exports: each family has a panel.
    for (family, names) in &names {
        assert!(
            names.iter().any(|n| dashboard_names.contains(n)),
            "no panel of dashboards/imagegate.json shows {family}: add one, and describe it in \
             docs/operations.md#dashboard"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_serve_evaluates_the_rules_and_fills_every_panel() {
    let Some(bin) = prometheus_tool("prometheus") else {
        return;
    };
    // The rules too, when helm is here to render them (always in CI).
    let rules_spec = one_helm().map(|helm| rendered_rules(&helm, &[]));
    let server = serve().await;
    // A series appears with its first count, so Prometheus's first sample of it already holds
    // that count: requests before the first scrape create the series, requests after it are
    // what rates see.
    exercise(&server).await;
    let target = server
        .metrics_addr
        .expect("the test server has a metrics port");
    let prometheus = Prometheus::start(&bin, target, rules_spec.as_ref()).await;
    prometheus
        .wait_for("Prometheus scraping imagegate serve", || async {
            let up = prometheus.query("up{job=\"imagegate\"} == 1").await;
            if up.is_empty() {
                Err("up is not 1".into())
            } else {
                Ok(())
            }
        })
        .await;
    exercise(&server).await;

    let d = dashboard();
    let queries = dashboard_queries(&d);
    // Panels that only show families serve never counts.
    let counted_by_serve = |expr: &str| {
        metric_names(&as_sent(expr, TEST_RATE_INTERVAL, TEST_RANGE))
            .iter()
            .any(|n| !not_counted_by_serve(n))
    };
    let quiet_in_serve: BTreeSet<&String> = queries
        .iter()
        .map(|(title, _, _)| title)
        .filter(|title| {
            !queries
                .iter()
                .any(|(t, _, expr)| t == *title && counted_by_serve(expr))
        })
        .collect();
    prometheus
        .wait_for("every dashboard panel has data", || async {
            let mut with_data = BTreeSet::new();
            for (title, _, expr) in &queries {
                let samples = prometheus
                    .query(&as_sent(expr, TEST_RATE_INTERVAL, TEST_RANGE))
                    .await;
                if samples.iter().any(has_number) {
                    with_data.insert(title.clone());
                }
            }
            let empty: Vec<&String> = queries
                .iter()
                .map(|(t, _, _)| t)
                .filter(|t| !with_data.contains(*t) && !quiet_in_serve.contains(t))
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(format!("no data in {empty:?}"))
            }
        })
        .await;

    // The data is this server's: the decisions panel shows each policy and what it made of the
    // requests.
    let (_, _, decisions) = queries
        .iter()
        .find(|(t, _, _)| t == "Decisions by policy and result")
        .expect("the decisions panel");
    let shown: BTreeSet<(String, String)> = prometheus
        .query(&as_sent(decisions, TEST_RATE_INTERVAL, TEST_RANGE))
        .await
        .iter()
        .map(|s| {
            (
                s["metric"]["policy"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                s["metric"]["result"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for expected in [
        ("strict", "allowed"),
        ("strict", "denied"),
        ("strict", "excused"),
        ("advice", "warned"),
        ("watch", "audited"),
    ] {
        assert!(
            shown.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {shown:?}"
        );
    }

    if rules_spec.is_some() {
        // Prometheus evaluates every rule without an error, and the break-glass use fires.
        prometheus
            .wait_for("every rule evaluated without error", || async {
                let data = prometheus.api("rules", &[]).await;
                let rules: Vec<&Value> = data["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                    .collect();
                if rules.is_empty() {
                    return Err("no rules loaded".into());
                }
                for r in rules {
                    if r["health"] != "ok" {
                        return Err(format!(
                            "{} is {}: {}",
                            r["name"], r["health"], r["lastError"]
                        ));
                    }
                }
                Ok(())
            })
            .await;
        prometheus
            .wait_for(
                "ImagegateBreakGlassUsed firing for policy strict",
                || async {
                    let data = prometheus.api("alerts", &[]).await;
                    let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
                    let names: Vec<&str> = alerts
                        .iter()
                        .filter_map(|a| a["labels"]["alertname"].as_str())
                        .collect();
                    assert!(
                        !names.contains(&"ImagegateMetricsAbsent")
                            && !names.contains(&"ImagegateCertificateExpiresSoon"),
                        "{names:?}"
                    );
                    let fired = alerts.iter().any(|a| {
                        a["labels"]["alertname"] == "ImagegateBreakGlassUsed"
                            && a["labels"]["policy"] == "strict"
                            && a["state"] == "firing"
                    });
                    if fired {
                        Ok(())
                    } else {
                        Err(format!("alerts: {names:?}"))
                    }
                },
            )
            .await;
    }

    drop(prometheus);
    server.stop().await;
}

/// The test's own parts: the PromQL reader and the GitHub anchors.
#[test]
fn metric_names_and_anchors_are_read_as_prometheus_and_github_do() {
    assert_eq!(
        metric_names(
            "sum by (policy) (rate(a_total{x=\"y\"}[5m] offset 1h)) > 3 * (b or absent(c)) \
             and on () histogram_quantile(0.9, d_bucket)"
        ),
        ["a_total", "b", "c", "d_bucket"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(anchor("ImagegateWebhookSlow"), "imagegatewebhookslow");
    assert_eq!(
        anchor(" Alerts and the dashboard "),
        "alerts-and-the-dashboard"
    );
    let text = "# HELP imagegate_x X.\n# TYPE imagegate_x counter\nimagegate_x_total{a=\"b\"} 1\n\
                # TYPE imagegate_x_y gauge\nimagegate_x_y 2\n# EOF\n";
    let families = exported(text);
    assert_eq!(
        families["imagegate_x"].seen,
        BTreeSet::from(["imagegate_x_total".to_owned()])
    );
    assert_eq!(
        families["imagegate_x_y"].seen,
        BTreeSet::from(["imagegate_x_y".to_owned()])
    );
    // A family without samples still has its names, from its type.
    let families = exported("# TYPE imagegate_h histogram\n# EOF\n");
    let h = &families["imagegate_h"];
    assert!(h.seen.is_empty());
    assert_eq!(
        h.names("imagegate_h"),
        ["imagegate_h_bucket", "imagegate_h_count", "imagegate_h_sum"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
